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
/// Supports byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`).
pub fn tokenizer_json_from_gguf(g: &Gguf) -> Result<Json, GgufError> {
    let file = g.path.clone();
    let bad = |msg: String| GgufError::Invalid {
        file: file.clone(),
        msg,
    };
    let model = g
        .str("tokenizer.ggml.model")
        .ok_or_else(|| bad("missing metadata `tokenizer.ggml.model`".into()))?;
    if model != "gpt2" {
        return Err(bad(format!(
            "GGUF tokenizer model `{model}` is not supported yet (supported: gpt2 byte-level BPE); \
             use the model's Hugging Face files (tokenizer.json) instead"
        )));
    }
    let tokens = g
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("missing metadata `tokenizer.ggml.tokens`".into()))?;
    let types = g
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array());
    let merges = g
        .get("tokenizer.ggml.merges")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("missing metadata `tokenizer.ggml.merges`".into()))?;
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        let t = t
            .as_str()
            .ok_or_else(|| bad(format!("token {id} is not a string")))?;
        vocab.insert(t.to_owned(), json!(id));
        // 3 = control, 4 = user-defined: matched whole, never split by the BPE.
        let ty = types
            .and_then(|ts| ts.get(id))
            .and_then(|v| v.as_i64())
            .unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == 3,
            }));
        }
    }
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
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
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
