//! Hugging Face BERT (`model_type = "bert"`: BertModel and sentence-transformers
//! checkpoints) → a GGUF llama.cpp runs as `bert`, for embeddings.
//!
//! Inputs: `config.json`, `model.safetensors`, `tokenizer.json` (its vocabulary becomes
//! `tokenizer.ggml.tokens`, so llama.cpp's vocabulary matches the embedding table; callers
//! tokenize with `tokenizer.json` itself). Loading is strict: every checkpoint tensor is
//! named in [`TABLE`] (or is one of the few that carry no weights, [`IGNORED`]), every
//! tensor the table needs is present with the shape the config implies.

use crate::{
    writer::{stored_type, write_model, Meta, NewTensor, TensorType},
    GgufError,
};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;
use std::path::Path;

/// Checkpoint name (after the `bert.` prefix is removed; `{i}` = layer) → GGUF name.
pub const TABLE: &[(&str, &str)] = &[
    ("embeddings.word_embeddings.weight", "token_embd.weight"),
    (
        "embeddings.position_embeddings.weight",
        "position_embd.weight",
    ),
    (
        "embeddings.token_type_embeddings.weight",
        "token_types.weight",
    ),
    ("embeddings.LayerNorm.weight", "token_embd_norm.weight"),
    ("embeddings.LayerNorm.bias", "token_embd_norm.bias"),
    (
        "encoder.layer.{i}.attention.self.query.weight",
        "blk.{i}.attn_q.weight",
    ),
    (
        "encoder.layer.{i}.attention.self.query.bias",
        "blk.{i}.attn_q.bias",
    ),
    (
        "encoder.layer.{i}.attention.self.key.weight",
        "blk.{i}.attn_k.weight",
    ),
    (
        "encoder.layer.{i}.attention.self.key.bias",
        "blk.{i}.attn_k.bias",
    ),
    (
        "encoder.layer.{i}.attention.self.value.weight",
        "blk.{i}.attn_v.weight",
    ),
    (
        "encoder.layer.{i}.attention.self.value.bias",
        "blk.{i}.attn_v.bias",
    ),
    (
        "encoder.layer.{i}.attention.output.dense.weight",
        "blk.{i}.attn_output.weight",
    ),
    (
        "encoder.layer.{i}.attention.output.dense.bias",
        "blk.{i}.attn_output.bias",
    ),
    (
        "encoder.layer.{i}.attention.output.LayerNorm.weight",
        "blk.{i}.attn_output_norm.weight",
    ),
    (
        "encoder.layer.{i}.attention.output.LayerNorm.bias",
        "blk.{i}.attn_output_norm.bias",
    ),
    (
        "encoder.layer.{i}.intermediate.dense.weight",
        "blk.{i}.ffn_up.weight",
    ),
    (
        "encoder.layer.{i}.intermediate.dense.bias",
        "blk.{i}.ffn_up.bias",
    ),
    (
        "encoder.layer.{i}.output.dense.weight",
        "blk.{i}.ffn_down.weight",
    ),
    (
        "encoder.layer.{i}.output.dense.bias",
        "blk.{i}.ffn_down.bias",
    ),
    (
        "encoder.layer.{i}.output.LayerNorm.weight",
        "blk.{i}.layer_output_norm.weight",
    ),
    (
        "encoder.layer.{i}.output.LayerNorm.bias",
        "blk.{i}.layer_output_norm.bias",
    ),
];

/// Checkpoint entries an encoder's embeddings do not use: position ids (a buffer), the
/// pooler (sentence-transformers pools the token vectors itself) and the
/// masked-language-model head of pre-training checkpoints (`cls.`).
pub const IGNORED: &[&str] = &["embeddings.position_ids", "pooler.", "cls."];

/// Most layers llama.cpp loads (`LLAMA_MAX_LAYERS`; more abort the process).
pub const MAX_LAYERS: usize = 512;

/// llama.cpp's `bert.pooling_type` codes.
pub mod pooling {
    pub const NONE: u32 = 0;
    pub const MEAN: u32 = 1;
    pub const CLS: u32 = 2;
    pub const LAST: u32 = 3;
    pub const RANK: u32 = 4;
}

/// The `config.json` values the GGUF needs, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub vocab: usize,
    pub layer_norm_eps: f32,
}

fn config_error(file: &Path, msg: impl Into<String>) -> GgufError {
    GgufError::Invalid {
        file: file.into(),
        msg: msg.into(),
    }
}

impl BertConfig {
    /// Read `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self, GgufError> {
        let file = dir.join("config.json");
        let text = std::fs::read_to_string(&file).map_err(|e| GgufError::Io {
            file: file.clone(),
            msg: e.to_string(),
        })?;
        let v: Json =
            serde_json::from_str(&text).map_err(|e| config_error(&file, e.to_string()))?;
        match v.get("model_type").and_then(Json::as_str) {
            Some("bert") => {}
            other => {
                return Err(GgufError::Architecture {
                    arch: other.unwrap_or("(none)").to_owned(),
                    supported: "bert".into(),
                })
            }
        }
        let at_most = |key: &str, most: u64| -> Result<usize, GgufError> {
            v.get(key)
                .and_then(Json::as_u64)
                .filter(|n| (1..=most).contains(n))
                .map(|n| n as usize)
                .ok_or_else(|| {
                    config_error(&file, format!("`{key}`: missing or not in 1..={most}"))
                })
        };
        let size = |key: &str| at_most(key, 1 << 24);
        match v.get("hidden_act").and_then(Json::as_str).unwrap_or("gelu") {
            // llama.cpp's BERT feed-forward is GELU in its tanh form, through an f16 table on
            // the CPU: it differs from exact GELU by up to ~5e-4 per activation.
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => {}
            other => {
                return Err(config_error(
                    &file,
                    format!("`hidden_act` = {other:?} is not supported (gelu, gelu_new)"),
                ))
            }
        }
        if let Some(p) = v
            .get("position_embedding_type")
            .and_then(Json::as_str)
            .filter(|p| *p != "absolute")
        {
            return Err(config_error(
                &file,
                format!("`position_embedding_type` = {p:?} is not supported (absolute)"),
            ));
        }
        let cfg = BertConfig {
            hidden: size("hidden_size")?,
            // llama.cpp refuses more than LLAMA_MAX_LAYERS (512) layers with an abort.
            layers: at_most("num_hidden_layers", MAX_LAYERS as u64)?,
            heads: size("num_attention_heads")?,
            intermediate: size("intermediate_size")?,
            max_positions: size("max_position_embeddings")?,
            type_vocab: v
                .get("type_vocab_size")
                .map_or(Ok(2), |_| size("type_vocab_size"))?,
            vocab: size("vocab_size")?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(Json::as_f64)
                .unwrap_or(1e-12) as f32,
        };
        if !cfg.hidden.is_multiple_of(cfg.heads) {
            return Err(config_error(
                &file,
                format!(
                    "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                    cfg.hidden, cfg.heads
                ),
            ));
        }
        Ok(cfg)
    }

    /// Row-major shape of a checkpoint tensor (name without `bert.`), `None` if unknown.
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (h, f) = (self.hidden, self.intermediate);
        let layer = name
            .strip_prefix("encoder.layer.")
            .and_then(|r| r.split_once('.'))
            .map(|(_, rest)| rest);
        Some(match (name, layer) {
            ("embeddings.word_embeddings.weight", _) => vec![self.vocab, h],
            ("embeddings.position_embeddings.weight", _) => vec![self.max_positions, h],
            ("embeddings.token_type_embeddings.weight", _) => vec![self.type_vocab, h],
            (_, Some("intermediate.dense.weight")) => vec![f, h],
            (_, Some("intermediate.dense.bias")) => vec![f],
            (_, Some("output.dense.weight")) => vec![h, f],
            (_, Some(l)) if l.ends_with(".weight") && !l.contains("LayerNorm") => vec![h, h],
            _ => vec![h],
        })
    }
}

/// What to write besides the weights.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Float type of the matrices (norms and biases stay F32).
    pub ty: TensorType,
    /// `bert.pooling_type` ([`pooling`]).
    pub pooling: u32,
}

/// The vocabulary of `tokenizer.json` as `vocab` token strings by id (gaps filled with
/// `[unusedN]`-style placeholders) and their llama.cpp token types (3 = control for the
/// special added tokens, 1 = normal).
fn vocabulary(dir: &Path, vocab: usize) -> Result<(Vec<String>, Vec<i32>), GgufError> {
    let file = dir.join("tokenizer.json");
    let bytes = std::fs::read(&file).map_err(|e| GgufError::Io {
        file: file.clone(),
        msg: e.to_string(),
    })?;
    let v: Json = serde_json::from_slice(&bytes).map_err(|e| config_error(&file, e.to_string()))?;
    let mut tokens: Vec<Option<String>> = vec![None; vocab];
    let mut types = vec![1i32; vocab];
    let mut put = |id: u64, text: &str| -> Result<(), GgufError> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            config_error(
                &file,
                format!("token {text:?} has id {id}, outside the {vocab}-row embedding table"),
            )
        })?;
        *slot = Some(text.to_owned());
        Ok(())
    };
    let words = v
        .pointer("/model/vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| config_error(&file, "`model.vocab` is not a map of tokens to ids"))?;
    for (text, id) in words {
        let id = id
            .as_u64()
            .ok_or_else(|| config_error(&file, format!("token {text:?}: id is not a number")))?;
        put(id, text)?;
    }
    for t in v
        .get("added_tokens")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(text)) = (t.get("id").and_then(Json::as_u64), t["content"].as_str())
        else {
            return Err(config_error(
                &file,
                "an `added_tokens` entry lacks `id` or `content`",
            ));
        };
        put(id, text)?;
        if t.get("special").and_then(Json::as_bool).unwrap_or(false) {
            types[id as usize] = 3;
        }
    }
    let tokens = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[unused-id-{i}]")))
        .collect();
    Ok((tokens, types))
}

/// The id `tokenizer.json` gives `text`, if any.
fn token_id(tokens: &[String], text: &str) -> Option<u32> {
    tokens.iter().position(|t| t == text).map(|i| i as u32)
}

/// Convert the BERT checkpoint in `dir` into the GGUF `dst` (written whole or not at all).
pub fn convert(dir: &Path, dst: &Path, opts: Options) -> Result<(), GgufError> {
    let cfg = BertConfig::read(dir)?;
    let file = dir.join("model.safetensors");
    let io = |e: std::io::Error| GgufError::Io {
        file: file.clone(),
        msg: e.to_string(),
    };
    let f = std::fs::File::open(&file).map_err(io)?;
    // SAFETY: read-only map of a model file, as every mmap-based loader does.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
    let st = SafeTensors::deserialize(&map).map_err(|e| config_error(&file, e.to_string()))?;
    let bad = |msg: String| config_error(&file, msg);

    // Checkpoint names without the `bert.` prefix of task models, checked against the
    // table before anything is written.
    let mut names: std::collections::BTreeMap<String, String> = Default::default();
    for name in st.names() {
        let short = name.strip_prefix("bert.").unwrap_or(name);
        names.insert(short.to_owned(), name.to_owned());
    }
    if let Some(head) = names.keys().find(|n| n.starts_with("classifier.")) {
        return Err(bad(format!(
            "tensor `{}`: sequence-classification heads (cross-encoders) are not converted; \
             this converter writes encoders for embeddings",
            names[head]
        )));
    }
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (from, to) in TABLE {
        if from.contains("{i}") {
            for i in 0..cfg.layers {
                let i = i.to_string();
                wanted.push((from.replace("{i}", &i), to.replace("{i}", &i)));
            }
        } else {
            wanted.push((from.to_string(), to.to_string()));
        }
    }
    for short in names.keys() {
        let known = wanted.iter().any(|(w, _)| w == short)
            || IGNORED
                .iter()
                .any(|i| short == i || (i.ends_with('.') && short.starts_with(i)));
        if !known {
            return Err(bad(format!(
                "tensor `{}` is not part of a BERT encoder this converter knows",
                names[short]
            )));
        }
    }
    let mut tensors = Vec::with_capacity(wanted.len());
    for (short, gguf_name) in &wanted {
        let full = names
            .get(short)
            .ok_or_else(|| bad(format!("tensor `{short}` is missing")))?;
        let view = st.tensor(full).map_err(|e| bad(format!("`{full}`: {e}")))?;
        let want = cfg.shape(short).expect("table names have shapes");
        if view.shape() != want.as_slice() {
            return Err(bad(format!(
                "tensor `{full}` has shape {:?}, the config implies {want:?}",
                view.shape()
            )));
        }
        let dtype = view.dtype();
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(bad(format!(
                "tensor `{full}`: dtype {dtype:?} (F32, F16, BF16)"
            )));
        }
        let data = view.data();
        // The position and token-type tables stay F32: llama.cpp adds a view of the type
        // table's first row to the hidden states, which a quantized row cannot be.
        let ty = match gguf_name.as_str() {
            "position_embd.weight" | "token_types.weight" => TensorType::F32,
            _ => stored_type(opts.ty, &want),
        };
        tensors.push(NewTensor {
            name: gguf_name.clone(),
            ty,
            shape: want,
            data: Box::new(move || Ok(to_f32(dtype, data))),
        });
    }
    let tensors = fuse_qkv(tensors);

    let (tokens, types) = vocabulary(dir, cfg.vocab)?;
    let special = |text: &str| token_id(&tokens, text);
    let mut meta: Vec<(&str, Meta)> = vec![
        ("general.architecture", Meta::Str("bert".into())),
        ("general.type", Meta::Str("model".into())),
        (
            "general.name",
            Meta::Str(
                dir.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into()),
            ),
        ),
        ("general.file_type", Meta::U32(opts.ty.file_type())),
        ("general.quantization_version", Meta::U32(2)),
        ("bert.block_count", Meta::U32(cfg.layers as u32)),
        ("bert.context_length", Meta::U32(cfg.max_positions as u32)),
        ("bert.embedding_length", Meta::U32(cfg.hidden as u32)),
        (
            "bert.feed_forward_length",
            Meta::U32(cfg.intermediate as u32),
        ),
        ("bert.attention.head_count", Meta::U32(cfg.heads as u32)),
        (
            "bert.attention.layer_norm_epsilon",
            Meta::F32(cfg.layer_norm_eps),
        ),
        ("bert.attention.causal", Meta::Bool(false)),
        ("bert.pooling_type", Meta::U32(opts.pooling)),
        ("tokenizer.ggml.model", Meta::Str("bert".into())),
        (
            "tokenizer.ggml.token_type_count",
            Meta::U32(cfg.type_vocab as u32),
        ),
    ];
    for (key, text) in [
        ("tokenizer.ggml.bos_token_id", "[CLS]"),
        ("tokenizer.ggml.eos_token_id", "[SEP]"),
        ("tokenizer.ggml.seperator_token_id", "[SEP]"),
        ("tokenizer.ggml.unknown_token_id", "[UNK]"),
        ("tokenizer.ggml.padding_token_id", "[PAD]"),
        ("tokenizer.ggml.mask_token_id", "[MASK]"),
    ] {
        if let Some(id) = special(text) {
            meta.push((key, Meta::U32(id)));
        }
    }
    meta.push(("tokenizer.ggml.tokens", Meta::Strs(tokens)));
    meta.push(("tokenizer.ggml.token_type", Meta::I32s(types)));
    write_model(dst, &meta, tensors)
}

/// Each layer's query, key and value projections as one (`attn_qkv`, rows Q then K then
/// V), which llama.cpp multiplies in one product instead of three.
fn fuse_qkv(tensors: Vec<NewTensor<'_>>) -> Vec<NewTensor<'_>> {
    const PARTS: [&str; 3] = [".attn_q.", ".attn_k.", ".attn_v."];
    let mut out = Vec::with_capacity(tensors.len());
    let mut pending: std::collections::BTreeMap<String, [Option<NewTensor<'_>>; 3]> =
        Default::default();
    for t in tensors {
        let Some(j) = PARTS.iter().position(|p| t.name.contains(p)) else {
            out.push(t);
            continue;
        };
        let name = t.name.replacen(PARTS[j], ".attn_qkv.", 1);
        let slots = pending.entry(name.clone()).or_default();
        slots[j] = Some(t);
        if slots.iter().all(Option::is_some) {
            let parts: Vec<NewTensor<'_>> = pending
                .remove(&name)
                .into_iter()
                .flatten()
                .flatten()
                .collect();
            let mut shape = parts[0].shape.clone();
            shape[0] = parts.iter().map(|p| p.shape[0]).sum();
            out.push(NewTensor {
                name,
                shape,
                ty: parts[0].ty,
                data: Box::new(move || {
                    let mut all = Vec::new();
                    for p in parts {
                        all.extend((p.data)()?);
                    }
                    Ok(all)
                }),
            });
        }
    }
    out
}

/// Little-endian F32/F16/BF16 bytes as f32.
pub(crate) fn to_f32(dtype: Dtype, data: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Gguf;
    use std::collections::BTreeMap;

    const H: usize = 32;
    const F: usize = 64;

    /// Deterministic values for tensor number `seed`.
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 16.0 - 0.5)
            .collect()
    }

    /// A one-layer BERT (hidden 32, 2 heads, vocab 8) in `dir`: config, tokenizer, weights
    /// (names prefixed `bert.` as task checkpoints write them), with `edit` applied to the
    /// tensor map before it is saved.
    fn tiny(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>)) {
        let config = serde_json::json!({
            "model_type": "bert", "hidden_size": H, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": F, "max_position_embeddings": 16,
            "type_vocab_size": 2, "vocab_size": 8, "layer_norm_eps": 1e-12,
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let tokenizer = serde_json::json!({
            "model": {"type": "WordPiece", "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2,
                "[SEP]": 3, "[MASK]": 4, "a": 5, "b": 6}},
            "added_tokens": [{"id": 2, "content": "[CLS]", "special": true},
                             {"id": 3, "content": "[SEP]", "special": true}],
        });
        std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        let cfg = BertConfig::read(dir).unwrap();
        let mut tensors = BTreeMap::new();
        let mut names: Vec<String> = TABLE.iter().map(|(n, _)| n.replace("{i}", "0")).collect();
        names.push("embeddings.position_ids".into());
        names.push("pooler.dense.weight".into());
        for (k, name) in names.into_iter().enumerate() {
            let shape = cfg.shape(&name).unwrap_or(vec![16]);
            let n = shape.iter().product();
            tensors.insert(format!("bert.{name}"), (shape, values(n, k)));
        }
        edit(&mut tensors);
        crate::test_util::write_f32_safetensors(&dir.join("model.safetensors"), tensors);
    }

    fn opts(ty: TensorType) -> Options {
        Options {
            ty,
            pooling: pooling::MEAN,
        }
    }

    #[test]
    fn a_bert_checkpoint_becomes_the_gguf_llama_cpp_reads() {
        let dir = tempfile::tempdir().unwrap();
        tiny(dir.path(), |_| {});
        let out = dir.path().join("m.gguf");
        convert(dir.path(), &out, opts(TensorType::F32)).unwrap();
        let g = Gguf::open(&out).unwrap();
        assert_eq!(g.str("general.architecture"), Some("bert"));
        assert_eq!(g.int("bert.block_count").unwrap(), 1);
        assert_eq!(g.int("bert.embedding_length").unwrap(), H as i64);
        assert_eq!(g.int("bert.pooling_type").unwrap(), pooling::MEAN as i64);
        assert_eq!(g.int("tokenizer.ggml.bos_token_id").unwrap(), 2);
        let tokens = g.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
        assert_eq!(tokens.len(), 8, "one token per embedding row, gaps filled");
        assert_eq!(tokens[5].as_str(), Some("a"));
        let types = g
            .get("tokenizer.ggml.token_type")
            .unwrap()
            .as_array()
            .unwrap();
        assert_eq!((types[2].as_i64(), types[5].as_i64()), (Some(3), Some(1)));
        let names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&"blk.0.attn_qkv.weight") && names.contains(&"blk.0.attn_qkv.bias"));
        assert!(
            !names
                .iter()
                .any(|n| n.contains("attn_q.") || n.contains("cls")),
            "{names:?}"
        );
        assert_eq!(names.len(), 5 + 12, "{names:?}");
        // The fused projection is Q's rows, then K's, then V's.
        let src = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&src).unwrap();
        let rows = |n: &str| to_f32(Dtype::F32, st.tensor(n).unwrap().data());
        let qkv = g
            .tensors
            .iter()
            .find(|t| t.name == "blk.0.attn_qkv.weight")
            .unwrap();
        assert_eq!(qkv.shape, [3 * H, H]);
        let want: Vec<f32> = ["query", "key", "value"]
            .iter()
            .flat_map(|p| rows(&format!("bert.encoder.layer.0.attention.self.{p}.weight")))
            .collect();
        assert_eq!(g.to_f32(qkv).unwrap(), want);
        let up = g
            .tensors
            .iter()
            .find(|t| t.name == "blk.0.ffn_up.weight")
            .unwrap();
        assert_eq!(up.shape, [F, H]);
        assert_eq!(
            g.to_f32(up).unwrap(),
            rows("bert.encoder.layer.0.intermediate.dense.weight")
        );

        // F16: matrices in F16, vectors and the position/type tables in F32.
        let half = dir.path().join("h.gguf");
        convert(dir.path(), &half, opts(TensorType::F16)).unwrap();
        let g = Gguf::open(&half).unwrap();
        let ty = |n: &str| g.tensors.iter().find(|t| t.name == n).unwrap().ggml_type;
        assert_eq!(ty("blk.0.ffn_up.weight"), 1);
        assert_eq!(ty("token_embd.weight"), 1);
        assert_eq!(ty("blk.0.ffn_up.bias"), 0);
        assert_eq!(ty("position_embd.weight"), 0);
        assert_eq!(ty("token_types.weight"), 0);
    }

    /// The conversion error for a checkpoint edited by `edit`; nothing is written.
    fn refusal(edit: impl FnOnce(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>)) -> String {
        let dir = tempfile::tempdir().unwrap();
        tiny(dir.path(), edit);
        let out = dir.path().join("m.gguf");
        let e = convert(dir.path(), &out, opts(TensorType::F32)).unwrap_err();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|f| f.file_name().to_string_lossy().contains("gguf"))
            .collect();
        assert!(left.is_empty(), "{left:?} written for a refused checkpoint");
        e.to_string()
    }

    #[test]
    fn unknown_missing_and_misshapen_tensors_are_refused_by_name() {
        let e = refusal(|t| {
            t.insert(
                "bert.encoder.layer.0.adapter.weight".into(),
                (vec![H], vec![0.0; H]),
            );
        });
        assert!(
            e.contains("model.safetensors") && e.contains("`bert.encoder.layer.0.adapter.weight`"),
            "{e}"
        );
        let e = refusal(|t| {
            t.remove("bert.encoder.layer.0.output.dense.bias");
        });
        assert!(
            e.contains("`encoder.layer.0.output.dense.bias` is missing"),
            "{e}"
        );
        let e = refusal(|t| {
            t.insert(
                "bert.embeddings.word_embeddings.weight".into(),
                (vec![7, H], vec![0.0; 7 * H]),
            );
        });
        assert!(
            e.contains("has shape [7, 32], the config implies [8, 32]"),
            "{e}"
        );
    }

    #[test]
    fn configs_it_cannot_convert_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        tiny(dir.path(), |_| {});
        let original: Json =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        // Each case edits the original config, so each refusal is its own.
        let cfg = |edit: &dyn Fn(&mut Json)| {
            let mut v = original.clone();
            edit(&mut v);
            std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
            BertConfig::read(dir.path()).unwrap_err().to_string()
        };
        let e = cfg(&|v| v["num_attention_heads"] = 3.into());
        assert!(
            e.contains("config.json") && e.contains("not a multiple"),
            "{e}"
        );
        let e = cfg(&|v| v["hidden_size"] = 0.into());
        assert!(e.contains("`hidden_size`"), "{e}");
        let e = cfg(&|v| v["hidden_act"] = "relu".into());
        assert!(e.contains("`hidden_act`"), "{e}");
        let e = cfg(&|v| v["num_hidden_layers"] = 513.into());
        assert!(
            e.contains("`num_hidden_layers`: missing or not in 1..=512"),
            "{e}"
        );
        let e = cfg(&|v| v["model_type"] = "roberta".into());
        assert!(e.contains("`roberta`"), "{e}");
    }
}
