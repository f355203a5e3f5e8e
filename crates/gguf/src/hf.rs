//! GGUF → Hugging Face layout: `config.json` from the metadata, HF tensor names, and the
//! undoing of llama.cpp's rotary permutation of Q/K weights.

use crate::{tokenizer_config_from_gguf, tokenizer_json_from_gguf, Gguf, GgufError};
use serde_json::{json, Value as Json};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// How one GGUF architecture maps onto its Hugging Face layout.
pub struct Arch {
    /// `general.architecture`.
    pub gguf: &'static str,
    /// HF `model_type`.
    pub model_type: &'static str,
    /// HF `architectures[0]`.
    hf_class: &'static str,
    /// Per-block tensor names (GGUF → HF, after `model.layers.N.`) beyond [`COMMON`].
    pub(crate) blocks: &'static [(&'static str, &'static str)],
    /// llama.cpp interleaves the rotary pairs of Q/K rows (its Llama converter does).
    pub(crate) permuted_qk: bool,
    /// llama.cpp stores RMSNorm weights as `w + shift` (Gemma applies `1 + w`).
    pub(crate) norm_shift: f32,
    /// Architecture-specific `config.json` fields.
    extra: fn(&Gguf, &mut Json) -> Result<(), GgufError>,
}

/// Per-block tensors every architecture here shares.
pub(crate) const COMMON: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// The GGUF architectures this conversion knows.
pub const ARCHITECTURES: &[Arch] = &[
    Arch {
        gguf: "llama",
        model_type: "llama",
        hf_class: "LlamaForCausalLM",
        blocks: &[("ffn_norm", "post_attention_layernorm")],
        permuted_qk: true,
        norm_shift: 0.0,
        extra: llama_config,
    },
    Arch {
        gguf: "gemma3",
        model_type: "gemma3_text",
        hf_class: "Gemma3ForCausalLM",
        blocks: &[
            ("post_attention_norm", "post_attention_layernorm"),
            ("ffn_norm", "pre_feedforward_layernorm"),
            ("post_ffw_norm", "post_feedforward_layernorm"),
            ("attn_q_norm", "self_attn.q_norm"),
            ("attn_k_norm", "self_attn.k_norm"),
        ],
        permuted_qk: false,
        // convert_hf_to_gguf.py's Gemma3Model: `norm_shift = 1.0` on every `*norm.weight`.
        norm_shift: 1.0,
        extra: gemma3_config,
    },
];

/// A dequantized tensor under its HF name.
pub struct HfTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The conversion of a GGUF file's `general.architecture`.
pub fn arch(g: &Gguf) -> Result<&'static Arch, GgufError> {
    let arch = g.architecture()?;
    ARCHITECTURES
        .iter()
        .find(|a| a.gguf == arch)
        .ok_or_else(|| GgufError::Architecture {
            arch: arch.to_owned(),
            supported: ARCHITECTURES
                .iter()
                .map(|a| a.gguf)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// HF `model_type` of a GGUF file's `general.architecture`.
pub fn model_type(g: &Gguf) -> Result<&'static str, GgufError> {
    Ok(arch(g)?.model_type)
}

/// llama.cpp's Q/K row order: within each head, HF keeps the two rotary halves apart
/// (rows `j·half + i`), llama.cpp's converter interleaves them (rows `2i + j`).
/// `to_gguf` permutes HF rows into llama.cpp's order, else back.
fn reorder(data: &[f32], rows: usize, cols: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    let per_head = rows / heads;
    let half = per_head / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let gguf = (h * per_head + i * 2 + j) * cols;
                let hf = (h * per_head + j * half + i) * cols;
                let (src, dst) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    out
}

/// Undo llama.cpp's Q/K row permutation.
fn unpermute(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    reorder(data, rows, cols, heads, false)
}

/// llama.cpp's Q/K row permutation of HF rows (its Llama converter's `permute`).
pub(crate) fn permute(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    reorder(data, rows, cols, heads, true)
}

/// Whole-model tensors (GGUF name, HF name).
const FIXED: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

pub(crate) fn hf_tensor_name(a: &Arch, gguf: &str) -> Option<String> {
    if let Some((_, hf)) = FIXED.iter().find(|(g, _)| *g == gguf) {
        return Some((*hf).to_owned());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (base, suffix) = tail.rsplit_once('.')?;
    let (_, hf) = COMMON.iter().chain(a.blocks).find(|(g, _)| *g == base)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The GGUF name of an HF tensor (the inverse of the table above), if `a` has one.
pub(crate) fn gguf_tensor_name(a: &Arch, hf: &str) -> Option<String> {
    if let Some((g, _)) = FIXED.iter().find(|(_, h)| *h == hf) {
        return Some((*g).to_owned());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (base, suffix) = tail.rsplit_once('.')?;
    let (g, _) = COMMON.iter().chain(a.blocks).find(|(_, h)| *h == base)?;
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Where the weight of the Hugging Face linear layer `layer` (`model.layers.0.self_attn.q_proj`)
/// lies in the GGUF model `g`: its tensor name, and the head count its rows are permuted
/// by (llama.cpp's Q/K order, see [`permute_rows`]) when they are. `None`: no such tensor
/// in this architecture's table.
pub fn linear_in_gguf(g: &Gguf, layer: &str) -> Result<Option<(String, Option<usize>)>, GgufError> {
    let a = arch(g)?;
    let Some(name) = gguf_tensor_name(a, &format!("{layer}.weight")) else {
        return Ok(None);
    };
    let prefix = g.architecture()?.to_owned();
    let heads = if !a.permuted_qk {
        None
    } else if name.ends_with("attn_q.weight") {
        Some(g.int(&format!("{prefix}.attention.head_count"))? as usize)
    } else if name.ends_with("attn_k.weight") {
        let kv = format!("{prefix}.attention.head_count_kv");
        Some(match g.get(&kv) {
            Some(_) => g.int(&kv)?,
            None => g.int(&format!("{prefix}.attention.head_count"))?,
        } as usize)
    } else {
        None
    };
    Ok(Some((name, heads)))
}

/// llama.cpp's Q/K row permutation of a (rows, cols) row-major matrix in HF row order, for
/// `heads` heads (what its converter applies to Q/K weights, and to a LoRA's `B`).
pub fn permute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    permute(data, rows, cols, heads)
}

/// `config.json` (HF field names) of a GGUF model.
pub fn config(g: &Gguf) -> Result<Json, GgufError> {
    let a = arch(g)?;
    let k = |s: &str| format!("{}.{s}", a.gguf);
    let heads = g.int(&k("attention.head_count"))?;
    let kv_heads = g
        .get(&k("attention.head_count_kv"))
        .and_then(|v| v.as_i64())
        .unwrap_or(heads);
    let vocab = g
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map(|t| t.len() as i64)
        .or_else(|| g.get(&k("vocab_size")).and_then(|v| v.as_i64()))
        .ok_or_else(|| GgufError::Invalid {
            file: g.path.clone(),
            msg: "missing vocabulary size".into(),
        })?;
    if g.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
        return Err(GgufError::Invalid {
            file: g.path.clone(),
            msg: "`rope_freqs.weight` (Llama 3.1 RoPE scaling) is not supported yet".into(),
        });
    }
    let mut cfg = json!({
        "model_type": a.model_type,
        "architectures": [a.hf_class],
        "hidden_size": g.int(&k("embedding_length"))?,
        "intermediate_size": g.int(&k("feed_forward_length"))?,
        "num_hidden_layers": g.int(&k("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": g.get(&k("attention.layer_norm_rms_epsilon")).and_then(|v| v.as_f64()).unwrap_or(1e-5),
        "rope_theta": g.get(&k("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10_000.0),
        "max_position_embeddings": g.get(&k("context_length")).and_then(|v| v.as_i64()).unwrap_or(2048),
        "vocab_size": vocab,
        "tie_word_embeddings": !g.tensors.iter().any(|t| t.name == "output.weight"),
        "torch_dtype": "float32",
    });
    if let Some(d) = g.get(&k("attention.key_length")).and_then(|v| v.as_i64()) {
        cfg["head_dim"] = json!(d);
    }
    for (key, meta) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
    ] {
        if let Some(id) = g.get(meta).and_then(|v| v.as_i64()) {
            cfg[key] = json!(id);
        }
    }
    if g.str(&k("rope.scaling.type")) == Some("linear") {
        if let Some(f) = g.get(&k("rope.scaling.factor")).and_then(|v| v.as_f64()) {
            cfg["rope_scaling"] = json!({"type": "linear", "factor": f});
        }
    }
    (a.extra)(g, &mut cfg)?;
    Ok(cfg)
}

fn llama_config(_: &Gguf, _: &mut Json) -> Result<(), GgufError> {
    Ok(())
}

/// Gemma 3 fields llama.cpp does not store but fixes in code (llama-model.cpp, `LLM_ARCH_GEMMA3`):
/// every 6th layer global, local layers' RoPE base 10 000, attention scaled by
/// 1/√head_dim (1/√(hidden/heads) for the 62-layer 27B), GELU(tanh) gating.
fn gemma3_config(g: &Gguf, cfg: &mut Json) -> Result<(), GgufError> {
    let pattern = g
        .get("gemma3.attention.sliding_window_pattern")
        .and_then(|v| v.as_i64())
        .unwrap_or(6);
    let layers = cfg["num_hidden_layers"].as_i64().unwrap_or(0);
    let head_dim = cfg.get("head_dim").and_then(Json::as_i64).unwrap_or(256);
    let scalar = if layers == 62 {
        cfg["hidden_size"].as_i64().unwrap_or(0)
            / cfg["num_attention_heads"].as_i64().unwrap_or(1).max(1)
    } else {
        head_dim
    };
    cfg["head_dim"] = json!(head_dim);
    cfg["sliding_window_pattern"] = json!(pattern);
    cfg["sliding_window"] = json!(g
        .get("gemma3.attention.sliding_window")
        .and_then(|v| v.as_i64())
        .unwrap_or(512));
    cfg["rope_local_base_freq"] = json!(10_000.0);
    cfg["query_pre_attn_scalar"] = json!(scalar);
    cfg["hidden_activation"] = json!("gelu_pytorch_tanh");
    if let Some(c) = g
        .get("gemma3.final_logit_softcapping")
        .and_then(|v| v.as_f64())
    {
        cfg["final_logit_softcapping"] = json!(c);
    }
    Ok(())
}

/// The HF names and shapes of a GGUF's tensors, in file order, without reading them.
pub fn hf_names(g: &Gguf) -> Result<Vec<(String, Vec<usize>)>, GgufError> {
    let a = arch(g)?;
    g.tensors
        .iter()
        .map(|t| {
            hf_tensor_name(a, &t.name)
                .map(|n| (n, t.shape.clone()))
                .ok_or_else(|| unexpected(g, &t.name))
        })
        .collect()
}

fn unexpected(g: &Gguf, tensor: &str) -> GgufError {
    GgufError::Invalid {
        file: g.path.clone(),
        msg: format!(
            "unexpected tensor `{tensor}` for architecture `{}`",
            g.architecture().unwrap_or("?")
        ),
    }
}

/// `config.json` and the dequantized tensors under HF names.
pub fn to_hf(g: &Gguf) -> Result<(Json, Vec<HfTensor>), GgufError> {
    let mut out = Vec::with_capacity(g.tensors.len());
    let cfg = for_each_hf_tensor(g, |t| {
        out.push(t);
        Ok::<(), GgufError>(())
    })?;
    Ok((cfg, out))
}

/// As [`to_hf`], handing each tensor to `f` as soon as it is converted, so a loader
/// holds one float32 tensor at a time instead of the whole model.
pub fn for_each_hf_tensor<E: From<GgufError>>(
    g: &Gguf,
    mut f: impl FnMut(HfTensor) -> Result<(), E>,
) -> Result<Json, E> {
    if let Some((ty, tensor)) = g.unsupported_types().into_iter().next() {
        return Err(GgufError::UnsupportedQuant {
            file: g.path.clone(),
            tensor,
            ty,
        }
        .into());
    }
    let a = arch(g)?;
    let cfg = config(g)?;
    let heads = cfg["num_attention_heads"].as_u64().unwrap_or(1) as usize;
    let kv_heads = cfg["num_key_value_heads"].as_u64().unwrap_or(1) as usize;
    for t in &g.tensors {
        let name = hf_tensor_name(a, &t.name).ok_or_else(|| unexpected(g, &t.name))?;
        let mut data = g.to_f32(t)?;
        if a.norm_shift != 0.0 && t.name.ends_with("norm.weight") {
            data.iter_mut().for_each(|x| *x -= a.norm_shift);
        }
        let n_heads = if !a.permuted_qk {
            None
        } else if t.name.ends_with("attn_q.weight") {
            Some(heads)
        } else if t.name.ends_with("attn_k.weight") {
            Some(kv_heads)
        } else {
            None
        };
        if let (Some(h), [rows, cols]) = (n_heads, t.shape.as_slice()) {
            if h == 0 || !rows.is_multiple_of(2 * h) {
                return Err(GgufError::Invalid {
                    file: g.path.clone(),
                    msg: format!(
                        "tensor `{}`: {rows} rows do not split into {h} heads of an even size",
                        t.name
                    ),
                }
                .into());
            }
            data = unpermute(&data, *rows, *cols, h);
        }
        f(HfTensor {
            name,
            shape: t.shape.clone(),
            data,
        })?;
    }
    Ok(cfg)
}

/// Write a GGUF model as an HF-layout directory `dst` (float32 `model.safetensors`,
/// `config.json`, `tokenizer.json`, `tokenizer_config.json`). It is written under a
/// temporary name and renamed at the end, so a failure leaves nothing half-written.
pub fn import(src: &Path, dst: &Path) -> Result<Vec<PathBuf>, GgufError> {
    let io = |p: &Path, e: std::io::Error| GgufError::Io {
        file: p.into(),
        msg: e.to_string(),
    };
    if dst.exists() {
        return Err(GgufError::Io {
            file: dst.into(),
            msg: "already exists; choose a new directory".into(),
        });
    }
    let g = Gguf::open(src)?;
    let (cfg, tensors) = to_hf(&g)?;
    let tok = tokenizer_json_from_gguf(&g)?;
    let tok_cfg = tokenizer_config_from_gguf(&g);
    let name = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import".into());
    let tmp = dst.with_file_name(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    let result = (|| -> Result<(), GgufError> {
        for (file, v) in [
            ("config.json", &cfg),
            ("tokenizer.json", &tok),
            ("tokenizer_config.json", &tok_cfg),
        ] {
            let p = tmp.join(file);
            std::fs::write(&p, serde_json::to_string_pretty(v).expect("json"))
                .map_err(|e| io(&p, e))?;
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|t| {
                let bytes: &[u8] = bytemuck_cast(&t.data);
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    t.shape.clone(),
                    bytes,
                )
                .expect("shape matches data");
                (t.name.clone(), view)
            })
            .collect();
        let st = tmp.join("model.safetensors");
        let meta = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        safetensors::serialize_to_file(views, Some(meta), &st).map_err(|e| GgufError::Io {
            file: st.clone(),
            msg: e.to_string(),
        })?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dst).map_err(|e| io(dst, e))?;
    Ok([
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    .iter()
    .map(|f| dst.join(f))
    .collect())
}

fn bytemuck_cast(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; the length is exact.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}
