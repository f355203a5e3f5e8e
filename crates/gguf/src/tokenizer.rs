//! A Hugging Face tokenizer (`tokenizer.json`, `tokenizer_config.json`) from a GGUF's
//! `tokenizer.ggml.*` metadata, and the way back for byte-level BPE tokenizers
//! ([`gguf_tokenizer`]); one pre-tokenizer table serves both directions.

use crate::{writer::Meta, Gguf, GgufError};
use serde_json::{json, Value as Json};
use std::path::Path;

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

/// llama.cpp's pre-tokenizer names (`tokenizer.ggml.pre`) and the `tokenizer.json`
/// pre-tokenizer each stands for; the first name is the one a GGUF is written with.
fn pre_tokenizers() -> [(&'static [&'static str], Json); 4] {
    [
        (&["gpt-2", "default", "gpt2"], byte_level(true)),
        (
            &["smollm", "starcoder", "refact"],
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        ),
        (
            &["llama-bpe", "llama3", "llama-v3", "dbrx", "smaug-bpe"],
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_RE), byte_level(false)]}),
        ),
        (
            &["qwen2", "deepseek-r1-qwen"],
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_RE), byte_level(false)]}),
        ),
    ]
}

/// What of a pre-tokenizer changes how text splits (types, patterns, flags), so that
/// files which differ in offsets bookkeeping compare equal.
fn pre_essence(v: &Json) -> Json {
    match v {
        Json::Object(m) => Json::Object(
            m.iter()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "type"
                            | "pretokenizers"
                            | "individual_digits"
                            | "use_regex"
                            | "add_prefix_space"
                            | "pattern"
                            | "behavior"
                            | "invert"
                            | "Regex"
                            | "String"
                    )
                })
                .map(|(k, v)| (k.clone(), pre_essence(v)))
                .collect(),
        ),
        Json::Array(a) => Json::Array(a.iter().map(pre_essence).collect()),
        other => other.clone(),
    }
}

/// The llama.cpp pre-tokenizer name of a `tokenizer.json` pre-tokenizer, if it is one
/// llama.cpp has.
pub(crate) fn pre_tokenizer_name(pre: &Json) -> Option<&'static str> {
    let want = pre_essence(pre);
    pre_tokenizers()
        .into_iter()
        .find(|(_, json)| pre_essence(json) == want)
        .map(|(names, _)| names[0])
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
    let pre_tokenizer = pre_tokenizers()
        .into_iter()
        .find(|(names, _)| names.contains(&pre))
        .map(|(_, json)| json)
        .ok_or_else(|| {
            bad(format!(
                "GGUF pre-tokenizer `{pre}` is not supported (default, smollm, llama-bpe, qwen2)"
            ))
        })?;
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

// ---- Hugging Face → GGUF -------------------------------------------------------------

/// A token of `tokenizer_config.json` (`"<s>"` or `{"content": "<s>", …}`).
fn config_token(v: Option<&Json>) -> Option<&str> {
    match v? {
        Json::String(s) => Some(s),
        Json::Object(m) => m.get("content")?.as_str(),
        _ => None,
    }
}

/// The chat template of a Hub folder: `chat_template.jinja`, or `tokenizer_config.json`'s
/// `chat_template` (a string, or named templates of which `default` is taken).
fn chat_template(dir: &Path, tok_cfg: &Json) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(t);
    }
    match tok_cfg.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
        _ => None,
    }
}

/// `tokenizer.ggml.*` and `tokenizer.chat_template` metadata for the byte-level BPE
/// tokenizer of the Hub folder `dir` (`tokenizer.json`, `tokenizer_config.json`), over
/// `vocab_size` ids (the embedding table's rows): ids the tokenizer leaves unnamed become
/// `[PAD<id>]` user-defined tokens, as llama.cpp's converter writes them. `config` is the
/// model's `config.json` (its `bos_token_id`/`eos_token_id` when the tokenizer config
/// names none).
pub(crate) fn gguf_tokenizer(
    dir: &Path,
    vocab_size: usize,
    config: &Json,
) -> Result<Vec<(String, Meta)>, GgufError> {
    let file = dir.join("tokenizer.json");
    let bad = |msg: String| GgufError::Invalid {
        file: file.clone(),
        msg,
    };
    let text = std::fs::read_to_string(&file).map_err(|e| GgufError::Io {
        file: file.clone(),
        msg: e.to_string(),
    })?;
    let tok: Json = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let model = &tok["model"];
    let is_byte_level = |v: &Json| {
        v.get("type").and_then(Json::as_str) == Some("ByteLevel")
            || v.get("decoders")
                .and_then(Json::as_array)
                .is_some_and(|d| d.iter().any(|x| x["type"] == "ByteLevel"))
    };
    if model["type"] != "BPE" || !is_byte_level(&tok["decoder"]) {
        return Err(bad(format!(
            "model `{}` with decoder `{}`: only byte-level BPE tokenizers (GPT-2 style) are \
             converted to GGUF",
            model["type"].as_str().unwrap_or("?"),
            tok["decoder"]["type"].as_str().unwrap_or("none")
        )));
    }
    if !tok["normalizer"].is_null() {
        return Err(bad(format!(
            "`normalizer` `{}`: llama.cpp's BPE tokenizer applies none",
            tok["normalizer"]["type"].as_str().unwrap_or("?")
        )));
    }
    let pre = pre_tokenizer_name(&tok["pre_tokenizer"]).ok_or_else(|| {
        bad(format!(
            "`pre_tokenizer` {} is not one llama.cpp has (GPT-2, SmolLM, Llama 3, Qwen2 forms)",
            tok["pre_tokenizer"]
        ))
    })?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![NORMAL as i32; vocab_size];
    let mut place = |id: Option<u64>, piece: &str, ty: i64| -> Result<(), GgufError> {
        let slot = id
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| tokens.get_mut(i).map(|t| (i, t)));
        let Some((i, t)) = slot else {
            return Err(bad(format!(
                "token {piece:?} has id {id:?}, outside the model's {vocab_size} embeddings"
            )));
        };
        *t = Some(piece.to_owned());
        types[i] = ty as i32;
        Ok(())
    };
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad("`model.vocab` is not a table".into()))?;
    for (piece, id) in vocab {
        place(id.as_u64(), piece, NORMAL)?;
    }
    for t in tok["added_tokens"].as_array().into_iter().flatten() {
        let piece = t["content"]
            .as_str()
            .ok_or_else(|| bad(format!("added token {t} has no `content`")))?;
        let ty = if t["special"] == true {
            CONTROL
        } else {
            USER_DEFINED
        };
        place(t["id"].as_u64(), piece, ty)?;
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = USER_DEFINED as i32;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad("`model.merges` is missing".into()))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 && p.iter().all(Json::is_string) => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap(),
                p[1].as_str().unwrap()
            )),
            other => Err(bad(format!("merge {other} is not a pair"))),
        })
        .collect::<Result<Vec<_>, _>>()?;

    let cfg_file = dir.join("tokenizer_config.json");
    let tok_cfg: Json = std::fs::read_to_string(&cfg_file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Json::Null);
    let id_of = |piece: &str| tokens.iter().position(|t| t == piece).map(|i| i as u32);
    let special = |key: &str, cfg_key: &str| -> Option<u32> {
        config_token(tok_cfg.get(key))
            .and_then(id_of)
            .or_else(|| {
                let v = config.get(cfg_key)?;
                let id = v.as_u64().or_else(|| v.as_array()?.first()?.as_u64())?;
                u32::try_from(id).ok()
            })
            .filter(|&i| (i as usize) < vocab_size)
    };
    // BOS is added where the tokenizer config says so, or where the post-processor's
    // single-sequence template starts with a special token.
    let add_bos = tok_cfg
        .get("add_bos_token")
        .and_then(Json::as_bool)
        .unwrap_or_else(|| {
            let procs = |p: &Json| -> Vec<Json> {
                match p["type"].as_str() {
                    Some("Sequence") => p["processors"].as_array().cloned().unwrap_or_default(),
                    _ => vec![p.clone()],
                }
            };
            procs(&tok["post_processor"]).iter().any(|p| {
                p["type"] == "TemplateProcessing" && p["single"][0].get("SpecialToken").is_some()
            })
        });
    let mut meta = vec![
        ("tokenizer.ggml.model".to_owned(), Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre".to_owned(), Meta::Str(pre.into())),
        (
            "tokenizer.ggml.tokens".to_owned(),
            Meta::Strs(tokens.clone()),
        ),
        ("tokenizer.ggml.token_type".to_owned(), Meta::I32s(types)),
        ("tokenizer.ggml.merges".to_owned(), Meta::Strs(merges)),
    ];
    for (key, tk, ck) in [
        ("tokenizer.ggml.bos_token_id", "bos_token", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token", "eos_token_id"),
        (
            "tokenizer.ggml.unknown_token_id",
            "unk_token",
            "unk_token_id",
        ),
        (
            "tokenizer.ggml.padding_token_id",
            "pad_token",
            "pad_token_id",
        ),
    ] {
        if let Some(id) = special(tk, ck) {
            meta.push((key.to_owned(), Meta::U32(id)));
        }
    }
    meta.push((
        "tokenizer.ggml.add_bos_token".to_owned(),
        Meta::Bool(add_bos),
    ));
    if let Some(t) = chat_template(dir, &tok_cfg) {
        meta.push(("tokenizer.chat_template".to_owned(), Meta::Str(t)));
    }
    Ok(meta)
}
