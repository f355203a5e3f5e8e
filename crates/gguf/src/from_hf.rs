//! Hugging Face layout → GGUF, the inverse of [`crate::hf`] on the same architecture table,
//! so llama.cpp (its quantizer, the ggml provider) can take a Hub model: `config.json`
//! fields become `<arch>.*` metadata, HF tensor names GGUF ones, Q/K rows are permuted
//! and norm weights shifted as llama.cpp's own converter does, and the tokenizer
//! (`tokenizer.json`, byte-level BPE) becomes `tokenizer.ggml.*`.
//!
//! Loading is strict: every checkpoint tensor maps to a GGUF name (or is one llama.cpp
//! does not read: rotary caches, a tied `lm_head`), every tensor the config implies is
//! there with its shape. Written whole or not at all ([`write_model`]).

use crate::{
    hf::{gguf_tensor_name, permute, Arch, ARCHITECTURES, COMMON},
    tokenizer::gguf_tokenizer,
    writer::{stored_type, write_model, Meta, NewTensor, TensorType},
    GgufError,
};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value as Json;
use std::{collections::BTreeMap, path::Path};

/// HF `model_type`s this converter writes (the table's byte-level BPE architectures).
pub const MODEL_TYPES: &[&str] = &["llama"];

/// Most layers llama.cpp loads (`LLAMA_MAX_LAYERS`; more abort the process).
const MAX_LAYERS: u64 = 512;
/// Largest vocabulary accepted (the biggest Hub vocabularies are ~262k).
const MAX_VOCAB: u64 = 1 << 22;

fn invalid(file: &Path, msg: impl Into<String>) -> GgufError {
    GgufError::Invalid {
        file: file.into(),
        msg: msg.into(),
    }
}

/// The shapes the config implies, checked once.
struct Shape {
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
}

fn read_config(file: &Path, cfg: &Json) -> Result<Shape, GgufError> {
    let int = |key: &str| -> Result<u64, GgufError> {
        cfg.get(key)
            .and_then(Json::as_u64)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                invalid(
                    file,
                    format!("`{key}` is missing or not a positive integer"),
                )
            })
    };
    let capped = |key: &str, max: u64| -> Result<usize, GgufError> {
        let n = int(key)?;
        if n > max {
            return Err(invalid(file, format!("`{key}` = {n}: at most {max}")));
        }
        Ok(n as usize)
    };
    let hidden = capped("hidden_size", 1 << 20)?;
    let heads = capped("num_attention_heads", 1 << 12)?;
    let kv_heads = match cfg.get("num_key_value_heads") {
        None | Some(Json::Null) => heads,
        Some(_) => capped("num_key_value_heads", heads as u64)?,
    };
    let head_dim = match cfg.get("head_dim") {
        None | Some(Json::Null) => hidden / heads,
        Some(_) => capped("head_dim", 1 << 14)?,
    };
    if !heads.is_multiple_of(kv_heads) || !head_dim.is_multiple_of(2) || head_dim == 0 {
        return Err(invalid(
            file,
            format!("{heads} heads of {head_dim} over {kv_heads} KV heads do not fit RoPE"),
        ));
    }
    Ok(Shape {
        hidden,
        inter: capped("intermediate_size", 1 << 22)?,
        layers: capped("num_hidden_layers", MAX_LAYERS)?,
        heads,
        kv_heads,
        head_dim,
        vocab: capped("vocab_size", MAX_VOCAB)?,
    })
}

impl Shape {
    /// The shape of a GGUF tensor (row-major, as the HF checkpoint stores it).
    fn of(&self, gguf: &str) -> Option<Vec<usize>> {
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let tail = match gguf.strip_prefix("blk.") {
            Some(rest) => rest.split_once('.')?.1,
            None => gguf,
        };
        Some(match tail {
            "token_embd.weight" | "output.weight" => vec![self.vocab, self.hidden],
            "attn_q.weight" => vec![q, self.hidden],
            "attn_k.weight" | "attn_v.weight" => vec![kv, self.hidden],
            "attn_output.weight" => vec![self.hidden, q],
            "ffn_gate.weight" | "ffn_up.weight" => vec![self.inter, self.hidden],
            "ffn_down.weight" => vec![self.hidden, self.inter],
            "attn_q_norm.weight" | "attn_k_norm.weight" => vec![self.head_dim],
            t if t.ends_with("norm.weight") => vec![self.hidden],
            _ => return None,
        })
    }
}

/// The safetensors files of a Hub folder: `model.safetensors`, or the shards its index names.
fn weight_files(dir: &Path) -> Result<Vec<std::path::PathBuf>, GgufError> {
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Ok(vec![dir.join("model.safetensors")]);
    }
    let text = std::fs::read_to_string(&index).map_err(|e| GgufError::Io {
        file: index.clone(),
        msg: e.to_string(),
    })?;
    let v: Json = serde_json::from_str(&text).map_err(|e| invalid(&index, e.to_string()))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| invalid(&index, "`weight_map` is missing"))?;
    let mut files: Vec<String> = map
        .values()
        .map(|f| f.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| invalid(&index, "`weight_map` values must be file names"))?;
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            plain_file(dir, &f).ok_or_else(|| invalid(&index, format!("`{f}` leaves the folder")))
        })
        .collect()
}

/// `dir/name` when `name` is a plain file name (no separators, not `..`).
fn plain_file(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    let p = Path::new(name);
    (p.components().count() == 1 && p.file_name().is_some()).then(|| dir.join(p))
}

/// The architecture entry for a `model_type` this converter writes.
fn arch_of(file: &Path, model_type: &str) -> Result<&'static Arch, GgufError> {
    ARCHITECTURES
        .iter()
        .find(|a| a.model_type == model_type && MODEL_TYPES.contains(&a.model_type))
        .ok_or_else(|| {
            invalid(
                file,
                format!(
                    "`model_type` `{model_type}`: this converter writes {} to GGUF (for others, \
                     start from a GGUF made by llama.cpp's convert_hf_to_gguf.py)",
                    MODEL_TYPES.join(", ")
                ),
            )
        })
}

/// Convert the Hub-layout model in `dir` into the GGUF `dst`, matrices stored as `ty`
/// (F32 or F16; 1-D tensors stay F32).
pub fn convert(dir: &Path, dst: &Path, ty: TensorType) -> Result<(), GgufError> {
    let cfg_file = dir.join("config.json");
    let cfg: Json = std::fs::read_to_string(&cfg_file)
        .map_err(|e| GgufError::Io {
            file: cfg_file.clone(),
            msg: e.to_string(),
        })
        .and_then(|t| serde_json::from_str(&t).map_err(|e| invalid(&cfg_file, e.to_string())))?;
    let model_type = cfg["model_type"].as_str().unwrap_or_default();
    let a = arch_of(&cfg_file, model_type)?;
    let shape = read_config(&cfg_file, &cfg)?;
    let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);
    let mut meta = metadata(&cfg_file, &cfg, a, &shape, dir, ty)?;
    meta.extend(gguf_tokenizer(dir, shape.vocab, &cfg)?);

    let files = weight_files(dir)?;
    let mut maps = Vec::with_capacity(files.len());
    for f in &files {
        let io = |e: std::io::Error| GgufError::Io {
            file: f.clone(),
            msg: e.to_string(),
        };
        let file = std::fs::File::open(f).map_err(io)?;
        // SAFETY: read-only map of a model file, as every mmap-based loader does.
        maps.push(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?);
    }
    let sts = maps
        .iter()
        .zip(&files)
        .map(|(m, f)| SafeTensors::deserialize(m).map_err(|e| invalid(f, e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;

    // Every checkpoint tensor named and shaped before anything is written.
    let mut found: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (i, st) in sts.iter().enumerate() {
        for name in st.names() {
            if name.contains("rotary_emb.inv_freq") || (tied && name == "lm_head.weight") {
                continue;
            }
            let g = gguf_tensor_name(a, name).ok_or_else(|| {
                invalid(
                    &files[i],
                    format!("tensor `{name}` is not part of a `{model_type}` model this converter knows"),
                )
            })?;
            if let Some((j, _)) = found.insert(g, (i, name.to_owned())) {
                return Err(invalid(
                    &files[i],
                    format!("tensor `{name}` is also in {}", files[j].display()),
                ));
            }
        }
    }
    let mut wanted = vec![
        "token_embd.weight".to_owned(),
        "output_norm.weight".to_owned(),
    ];
    if !tied {
        wanted.push("output.weight".into());
    }
    for l in 0..shape.layers {
        for (t, _) in COMMON.iter().chain(a.blocks) {
            wanted.push(format!("blk.{l}.{t}.weight"));
        }
    }
    if let Some(extra) = found.keys().find(|g| !wanted.contains(g)) {
        let (i, name) = &found[extra];
        return Err(invalid(
            &files[*i],
            format!("tensor `{name}` is not part of a `{model_type}` model this converter knows"),
        ));
    }
    let mut tensors = Vec::with_capacity(wanted.len());
    for g in wanted {
        let (i, name) = found
            .get(&g)
            .ok_or_else(|| invalid(dir, format!("tensor `{}` is missing", hf_name(a, &g))))?;
        let view = sts[*i]
            .tensor(name)
            .map_err(|e| invalid(&files[*i], format!("`{name}`: {e}")))?;
        let want = shape.of(&g).expect("wanted tensors have shapes");
        if view.shape() != want.as_slice() {
            return Err(invalid(
                &files[*i],
                format!(
                    "tensor `{name}` has shape {:?}, the config implies {want:?}",
                    view.shape()
                ),
            ));
        }
        let dtype = view.dtype();
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(invalid(
                &files[*i],
                format!("tensor `{name}`: dtype {dtype:?} (F32, F16 or BF16; quantized checkpoints are not converted)"),
            ));
        }
        let data = view.data();
        let heads = if !a.permuted_qk {
            None
        } else if g.ends_with("attn_q.weight") {
            Some(shape.heads)
        } else if g.ends_with("attn_k.weight") {
            Some(shape.kv_heads)
        } else {
            None
        };
        let shift = if g.ends_with("norm.weight") {
            a.norm_shift
        } else {
            0.0
        };
        let rows_cols = (want[0], want.get(1).copied().unwrap_or(1));
        tensors.push(NewTensor {
            name: g.clone(),
            ty: stored_type(ty, &want),
            shape: want,
            data: Box::new(move || {
                let mut v = crate::bert::to_f32(dtype, data);
                if shift != 0.0 {
                    v.iter_mut().for_each(|x| *x += shift);
                }
                Ok(match heads {
                    Some(h) => permute(&v, rows_cols.0, rows_cols.1, h),
                    None => v,
                })
            }),
        });
    }
    let meta: Vec<(&str, Meta)> = meta.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_model(dst, &meta, tensors)
}

/// The HF name of a GGUF tensor (for messages).
fn hf_name(a: &Arch, g: &str) -> String {
    crate::hf::hf_tensor_name(a, g).unwrap_or_else(|| g.to_owned())
}

/// `general.*` and `<arch>.*` metadata from `config.json`.
fn metadata(
    file: &Path,
    cfg: &Json,
    a: &Arch,
    s: &Shape,
    dir: &Path,
    ty: TensorType,
) -> Result<Vec<(String, Meta)>, GgufError> {
    let k = |key: &str| format!("{}.{key}", a.gguf);
    let f = |key: &str, default: f64| -> Result<f32, GgufError> {
        match cfg.get(key) {
            None | Some(Json::Null) => Ok(default as f32),
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| invalid(file, format!("`{key}` is not a number"))),
        }
    };
    let name = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut meta = vec![
        ("general.architecture".to_owned(), Meta::Str(a.gguf.into())),
        ("general.type".to_owned(), Meta::Str("model".into())),
        ("general.name".to_owned(), Meta::Str(name)),
        ("general.file_type".to_owned(), Meta::U32(ty.file_type())),
        ("general.quantization_version".to_owned(), Meta::U32(2)),
        (
            k("context_length"),
            Meta::U32(
                cfg["max_position_embeddings"]
                    .as_u64()
                    .unwrap_or(2048)
                    .min(u32::MAX as u64) as u32,
            ),
        ),
        (k("embedding_length"), Meta::U32(s.hidden as u32)),
        (k("feed_forward_length"), Meta::U32(s.inter as u32)),
        (k("block_count"), Meta::U32(s.layers as u32)),
        (k("attention.head_count"), Meta::U32(s.heads as u32)),
        (k("attention.head_count_kv"), Meta::U32(s.kv_heads as u32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Meta::F32(f("rms_norm_eps", 1e-6)?),
        ),
        (k("rope.freq_base"), Meta::F32(f("rope_theta", 10_000.0)?)),
        (k("rope.dimension_count"), Meta::U32(s.head_dim as u32)),
        (k("vocab_size"), Meta::U32(s.vocab as u32)),
    ];
    if s.head_dim != s.hidden / s.heads {
        meta.push((k("attention.key_length"), Meta::U32(s.head_dim as u32)));
        meta.push((k("attention.value_length"), Meta::U32(s.head_dim as u32)));
    }
    match &cfg.get("rope_scaling") {
        None | Some(Json::Null) => {}
        Some(r) => {
            let kind = r
                .get("rope_type")
                .or_else(|| r.get("type"))
                .and_then(Json::as_str)
                .unwrap_or("?");
            match (kind, r.get("factor").and_then(Json::as_f64)) {
                ("linear", Some(factor)) => {
                    meta.push((k("rope.scaling.type"), Meta::Str("linear".into())));
                    meta.push((k("rope.scaling.factor"), Meta::F32(factor as f32)));
                }
                ("default", _) => {}
                _ => {
                    return Err(invalid(
                        file,
                        format!("`rope_scaling` of type `{kind}` is not converted (linear only)"),
                    ))
                }
            }
        }
    }
    for key in ["attention_bias", "mlp_bias"] {
        if cfg.get(key).and_then(Json::as_bool) == Some(true) {
            return Err(invalid(file, format!("`{key}` = true is not converted")));
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Gguf;
    use serde_json::json;

    use crate::test_util::Tensors;
    /// An edit of the tiny model's config, tokenizer and tensors.
    type Edit = Box<dyn FnOnce(&mut Json, &mut Json, &mut Tensors)>;

    /// A one-layer Llama (hidden 16, 2 heads and 1 KV head of 8, vocab 8, untied head)
    /// with a byte-level BPE tokenizer of SmolLM's pre-tokenizer, edited before saving.
    fn tiny(dir: &Path, edit: impl FnOnce(&mut Json, &mut Json, &mut Tensors)) {
        let mut config = json!({
            "model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "vocab_size": 8, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "max_position_embeddings": 64, "tie_word_embeddings": false,
            "bos_token_id": 4, "eos_token_id": 5,
        });
        let mut tokenizer = json!({
            "version": "1.0", "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "added_tokens": [{"id": 4, "content": "<s>", "special": true},
                             {"id": 5, "content": "</s>", "special": true}],
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3, "<s>": 4, "</s>": 5},
                      "merges": ["a b", ["Ġ", "a"]]},
        });
        let shapes: [(&str, Vec<usize>); 12] = [
            ("model.embed_tokens.weight", vec![8, 16]),
            ("model.norm.weight", vec![16]),
            ("lm_head.weight", vec![8, 16]),
            ("model.layers.0.input_layernorm.weight", vec![16]),
            ("model.layers.0.post_attention_layernorm.weight", vec![16]),
            ("model.layers.0.self_attn.q_proj.weight", vec![16, 16]),
            ("model.layers.0.self_attn.k_proj.weight", vec![8, 16]),
            ("model.layers.0.self_attn.v_proj.weight", vec![8, 16]),
            ("model.layers.0.self_attn.o_proj.weight", vec![16, 16]),
            ("model.layers.0.mlp.gate_proj.weight", vec![32, 16]),
            ("model.layers.0.mlp.up_proj.weight", vec![32, 16]),
            ("model.layers.0.mlp.down_proj.weight", vec![16, 32]),
        ];
        let mut tensors: Tensors = shapes
            .into_iter()
            .enumerate()
            .map(|(k, (name, shape))| {
                let n: usize = shape.iter().product();
                let v = (0..n)
                    .map(|i| ((i * 7 + k * 13) % 17) as f32 / 16.0 - 0.5)
                    .collect();
                (name.to_owned(), (shape, v))
            })
            .collect();
        tensors.insert(
            "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
            (vec![4], vec![1.0; 4]),
        );
        edit(&mut config, &mut tokenizer, &mut tensors);
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        let cfg = json!({"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": true,
                         "chat_template": "{{ messages[0].content }}"});
        std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
        crate::test_util::write_f32_safetensors(&dir.join("model.safetensors"), tensors);
    }

    #[test]
    fn a_hub_llama_round_trips_through_gguf_value_for_value() {
        let dir = tempfile::tempdir().unwrap();
        let mut original = Tensors::new();
        tiny(dir.path(), |_, _, t| original = t.clone());
        let out = dir.path().join("m.gguf");
        convert(dir.path(), &out, TensorType::F32).unwrap();
        let g = Gguf::open(&out).unwrap();
        assert_eq!(g.str("general.architecture"), Some("llama"));
        assert_eq!(g.str("tokenizer.ggml.pre"), Some("smollm"));
        for (key, want) in [
            ("llama.attention.head_count", 2),
            ("llama.attention.head_count_kv", 1),
            ("llama.rope.dimension_count", 8),
            ("llama.block_count", 1),
            ("tokenizer.ggml.bos_token_id", 4),
            ("tokenizer.ggml.eos_token_id", 5),
            ("tokenizer.ggml.add_bos_token", 1),
        ] {
            assert_eq!(g.int(key).unwrap(), want, "{key}");
        }
        let array = |key: &str| g.get(key).unwrap().as_array().unwrap().to_vec();
        let strs = |key: &str| -> Vec<String> {
            array(key)
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            strs("tokenizer.ggml.tokens"),
            ["a", "b", "ab", "Ġ", "<s>", "</s>", "[PAD6]", "[PAD7]"]
        );
        let types: Vec<i64> = array("tokenizer.ggml.token_type")
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect();
        assert_eq!(types, [1, 1, 1, 1, 3, 3, 4, 4]);
        assert_eq!(strs("tokenizer.ggml.merges"), ["a b", "Ġ a"]);
        assert_eq!(
            g.str("tokenizer.chat_template"),
            Some("{{ messages[0].content }}")
        );
        // Back to HF names: the same values (Q/K permuted there and back), the rotary
        // cache dropped, norms and matrices untouched.
        let (cfg, back) = crate::hf::to_hf(&g).unwrap();
        assert_eq!(cfg["num_key_value_heads"], 1);
        assert_eq!(back.len(), original.len() - 1);
        for t in back {
            let (shape, values) = &original[&t.name];
            assert_eq!((&t.shape, &t.data), (shape, values), "{}", t.name);
        }
        // And the tokenizer back: the same pre-tokenizer, vocabulary and merges.
        let tok = crate::tokenizer_json_from_gguf(&g).unwrap();
        assert_eq!(tok["model"]["vocab"]["ab"], 2);
        assert_eq!(
            crate::tokenizer::pre_tokenizer_name(&tok["pre_tokenizer"]),
            Some("smollm")
        );
    }

    fn refusal(edit: impl FnOnce(&mut Json, &mut Json, &mut Tensors)) -> String {
        let dir = tempfile::tempdir().unwrap();
        tiny(dir.path(), edit);
        let out = dir.path().join("m.gguf");
        let e = convert(dir.path(), &out, TensorType::F16)
            .unwrap_err()
            .to_string();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("gguf"))
            .collect();
        assert!(left.is_empty(), "{e}: left {left:?}");
        e
    }

    #[test]
    fn what_it_cannot_convert_is_refused_by_name_and_nothing_is_written() {
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|_, _, t| { t.insert("model.layers.0.self_attn.q_proj.bias".into(), (vec![16], vec![0.0; 16])); }),
             "tensor `model.layers.0.self_attn.q_proj.bias` is not part of a `llama` model"),
            (Box::new(|_, _, t| { t.remove("model.norm.weight"); }), "tensor `model.norm.weight` is missing"),
            (Box::new(|_, _, t| { t.insert("model.layers.0.mlp.up_proj.weight".into(), (vec![16, 16], vec![0.0; 256])); }),
             "tensor `model.layers.0.mlp.up_proj.weight` has shape [16, 16], the config implies [32, 16]"),
            (Box::new(|c, _, _| c["model_type"] = json!("qwen2")), "`model_type` `qwen2`"),
            (Box::new(|c, _, _| c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0})),
             "`rope_scaling` of type `llama3`"),
            (Box::new(|c, _, _| c["num_hidden_layers"] = json!(100_000)), "`num_hidden_layers` = 100000: at most 512"),
            (Box::new(|_, k, _| k["model"]["type"] = json!("WordPiece")), "only byte-level BPE tokenizers"),
            (Box::new(|_, k, _| k["pre_tokenizer"] = json!({"type": "Whitespace"})), "`pre_tokenizer`"),
            (Box::new(|_, k, _| k["model"]["vocab"]["c"] = json!(99)), "token \"c\" has id Some(99), outside the model's 8 embeddings"),
        ];
        for (edit, want) in cases {
            let e = refusal(edit);
            assert!(e.contains(want), "want {want:?} in: {e}");
        }
    }
}
