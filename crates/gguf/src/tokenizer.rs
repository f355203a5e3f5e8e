//! A Hugging Face tokenizer (`tokenizer.json`, `tokenizer_config.json`) from a GGUF's
//! `tokenizer.ggml.*` metadata.

use crate::{Gguf, GgufError};
use serde_json::{json, Value as Json};

/// Regex of Llama 3's pre-tokenizer (also used by several `llama-bpe` GGUFs).
const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Regex of Qwen2's pre-tokenizer.
const QWEN2_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

/// Build a Hugging Face `tokenizer.json` from a GGUF's `tokenizer.ggml.*` metadata.
/// Supports byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`) and
/// SentencePiece BPE ones (`"llama"`: Llama 2, Mistral, Gemma).
pub fn tokenizer_json_from_gguf(g: &Gguf) -> Result<Json, GgufError> {
    let file = g.path.clone();
    let bad = |msg: String| GgufError::Invalid {
        file: file.clone(),
        msg,
    };
    let model = g
        .str("tokenizer.ggml.model")
        .ok_or_else(|| bad("missing metadata `tokenizer.ggml.model`".into()))?;
    let tokens = g
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("missing metadata `tokenizer.ggml.tokens`".into()))?;
    let types = g
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array());
    match model {
        "gpt2" => {}
        "llama" => return sentencepiece(g, tokens, types),
        _ => {
            return Err(bad(format!(
                "GGUF tokenizer model `{model}` is not supported yet (supported: gpt2 \
                 byte-level BPE, llama SentencePiece BPE); use the model's Hugging Face \
                 files (tokenizer.json) instead"
            )))
        }
    }
    let merges = g
        .get("tokenizer.ggml.merges")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("missing metadata `tokenizer.ggml.merges`".into()))?;
    let (vocab, added) = vocabulary(g, tokens, types)?;
    let merges: Vec<Json> = merges
        .iter()
        .filter_map(|m| m.as_str())
        .map(|m| json!(m))
        .collect();
    let pre = g.str("tokenizer.ggml.pre").unwrap_or("default");
    let pre_tokenizer = match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        "smollm" | "starcoder" | "refact" => {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]})
        }
        "llama3" | "llama-bpe" | "llama-v3" | "dbrx" | "smaug-bpe" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_RE), byte_level(false)]})
        }
        "qwen2" | "deepseek-r1-qwen" => {
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_RE), byte_level(false)]})
        }
        other => {
            return Err(bad(format!(
                "GGUF pre-tokenizer `{other}` is not supported (default, smollm, llama-bpe, qwen2)"
            )))
        }
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": with_bos(g, tokens, json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})),
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
}

/// `post` followed by prepending BOS where the GGUF says llama.cpp adds it
/// (`tokenizer.ggml.add_bos_token`), so `tokenizer.json` users that add special tokens
/// (transformers) start sequences as llama.cpp does.
fn with_bos(g: &Gguf, tokens: &[crate::Value], post: Json) -> Json {
    let add = g
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.as_i64())
        .is_some_and(|b| b != 0);
    let bos = g
        .get("tokenizer.ggml.bos_token_id")
        .and_then(|v| v.as_i64())
        .and_then(|id| Some((id, tokens.get(usize::try_from(id).ok()?)?.as_str()?)));
    let (true, Some((id, piece))) = (add, bos) else {
        return post;
    };
    let template = json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": piece, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": piece, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": piece, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {piece: {"id": piece, "ids": [id], "tokens": [piece]}},
    });
    if post.is_null() {
        template
    } else {
        json!({"type": "Sequence", "processors": [post, template]})
    }
}

/// Token types of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_attr` order).
const NORMAL: i64 = 1;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The vocabulary (piece → id) and the added tokens: control (3) and user-defined (4)
/// tokens are matched whole, never split by the model.
fn vocabulary(
    g: &Gguf,
    tokens: &[crate::Value],
    types: Option<&[crate::Value]>,
) -> Result<(serde_json::Map<String, Json>, Vec<Json>), GgufError> {
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        let t = t.as_str().ok_or_else(|| GgufError::Invalid {
            file: g.path.clone(),
            msg: format!("`tokenizer.ggml.tokens`: token {id} is not a string"),
        })?;
        vocab.insert(t.to_owned(), json!(id));
        let ty = token_type(types, id);
        if ty == CONTROL || ty == USER_DEFINED {
            added.push(json!({
                "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == CONTROL,
            }));
        }
    }
    Ok((vocab, added))
}

fn token_type(types: Option<&[crate::Value]>, id: usize) -> i64 {
    types
        .and_then(|ts| ts.get(id))
        .and_then(|v| v.as_i64())
        .unwrap_or(NORMAL)
}

/// A SentencePiece BPE vocabulary (`tokenizer.ggml.model = "llama"`) as a `tokenizers`
/// BPE: llama.cpp's SPM tokenizer repeatedly joins the adjacent pair whose concatenation
/// is the highest-scoring piece, which is BPE whose merges are every split of every
/// normal piece into two pieces, ranked by the joined piece's score (as transformers'
/// `SentencePieceExtractor` derives them); unknown bytes fall back to `<0xXX>` pieces.
fn sentencepiece(
    g: &Gguf,
    tokens: &[crate::Value],
    types: Option<&[crate::Value]>,
) -> Result<Json, GgufError> {
    let scores = g
        .get("tokenizer.ggml.scores")
        .and_then(|v| v.as_array())
        .filter(|s| s.len() == tokens.len())
        .ok_or_else(|| GgufError::Invalid {
            file: g.path.clone(),
            msg: "`tokenizer.ggml.scores` is missing or not one score per token".into(),
        })?;
    let (vocab, added) = vocabulary(g, tokens, types)?;
    let piece_id = |p: &str| vocab.get(p).and_then(Json::as_u64).map(|i| i as usize);
    let normal = |id: usize| token_type(types, id) == NORMAL;
    // (score of the joined piece, its id, left id, right id, left, right)
    let mut merges: Vec<(f64, usize, usize, usize, &str, &str)> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        let Some(piece) = t.as_str().filter(|_| normal(id)) else {
            continue;
        };
        let score = scores[id].as_f64().unwrap_or(0.0);
        for (i, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(i);
            if let (Some(li), Some(ri)) = (piece_id(l), piece_id(r)) {
                if normal(li) && normal(ri) {
                    merges.push((score, id, li, ri, l, r));
                }
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then((a.1, a.2, a.3).cmp(&(b.1, b.2, b.3)))
    });
    let merges: Vec<Json> = merges.iter().map(|m| json!([m.4, m.5])).collect();
    let unk = g
        .get("tokenizer.ggml.unknown_token_id")
        .and_then(|v| v.as_i64())
        .and_then(|id| tokens.get(id as usize))
        .and_then(|t| t.as_str());
    // llama.cpp prepends a space to the text unless the model says not to.
    let prefix = g
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.as_i64())
        .is_none_or(|b| b != 0);
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if prefix {
        json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": with_bos(g, tokens, Json::Null),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
}

/// `tokenizer_config.json` content for a GGUF (special tokens, chat template).
pub fn tokenizer_config_from_gguf(g: &Gguf) -> Json {
    let tokens = g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array());
    let tok = |key: &str| -> Json {
        g.get(key)
            .and_then(|v| v.as_i64())
            .and_then(|id| tokens.and_then(|t| t.get(id as usize)))
            .and_then(|t| t.as_str())
            .map_or(Json::Null, |s| json!(s))
    };
    json!({
        "bos_token": tok("tokenizer.ggml.bos_token_id"),
        "eos_token": tok("tokenizer.ggml.eos_token_id"),
        "pad_token": tok("tokenizer.ggml.padding_token_id"),
        "unk_token": tok("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": g.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_i64()).map(|b| b != 0).unwrap_or(false),
        "chat_template": g.str("tokenizer.chat_template"),
        "model_max_length": g.get(&format!("{}.context_length", g.architecture().unwrap_or("llama"))).and_then(|v| v.as_i64()),
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
}
