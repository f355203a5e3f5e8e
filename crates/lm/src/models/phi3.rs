//! Phi-3 (`model_type = "phi3"`): Llama layers with fused projections in the checkpoint
//! (`qkv_proj` = q | k | v rows, `gate_up_proj` = gate | up rows). `sanitize` splits them
//! into the Llama names (quantized scales/biases split the same way), then the Llama
//! model loads them. RoPE may be partial (`partial_rotary_factor`); `longrope` scaling
//! (128k variants) is refused by the RoPE reader.

use super::{cfg_i32, llama::Llama, CausalLm};
use crate::error::LlmError;
use mlx_common::Weights;
use serde_json::Value as Json;
use std::path::Path;

/// Split each fused tensor of `prefix` (weight, and scales/biases when quantized) by rows.
fn split_rows(w: &mut Weights, fused: &str, parts: &[(&str, i32)]) -> Result<(), LlmError> {
    for suffix in ["weight", "scales", "biases", "bias"] {
        let name = format!("{fused}.{suffix}");
        if !w.contains(&name) {
            continue;
        }
        let t = w.take_raw(&name)?;
        let mut start = 0;
        let base = fused.rsplit_once('.').map_or("", |(b, _)| b);
        for (part, rows) in parts {
            let piece = t.index(start..start + rows);
            w.insert(&format!("{base}.{part}.{suffix}"), piece);
            start += rows;
        }
        if start != t.shape()[0] {
            return Err(LlmError::Weights {
                file: w.source().into(),
                msg: format!("`{name}` has {} rows, expected {start}", t.shape()[0]),
            });
        }
    }
    Ok(())
}

use mlx_rs::ops::indexing::IndexOp;

/// Architecture-table entry point.
pub fn load(cfg: &Json, file: &Path, w: &mut Weights) -> Result<Box<dyn CausalLm>, LlmError> {
    let hidden = cfg_i32(cfg, "hidden_size", file)?;
    let heads = cfg_i32(cfg, "num_attention_heads", file)?;
    let kv = cfg
        .get("num_key_value_heads")
        .and_then(Json::as_i64)
        .map_or(heads, |v| v as i32);
    let d = cfg
        .get("head_dim")
        .and_then(Json::as_i64)
        .map_or(hidden / heads, |v| v as i32);
    let inter = cfg_i32(cfg, "intermediate_size", file)?;
    let layers = cfg_i32(cfg, "num_hidden_layers", file)?;
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        split_rows(
            w,
            &format!("{p}.self_attn.qkv_proj"),
            &[
                ("q_proj", heads * d),
                ("k_proj", kv * d),
                ("v_proj", kv * d),
            ],
        )?;
        split_rows(
            w,
            &format!("{p}.mlp.gate_up_proj"),
            &[("gate_proj", inter), ("up_proj", inter)],
        )?;
    }
    Ok(Box::new(Llama::load(cfg, file, w)?))
}
