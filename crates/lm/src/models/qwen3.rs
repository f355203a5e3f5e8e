//! Qwen3 (`model_type = "qwen3"`): Llama layers with an RMSNorm over each head of the
//! queries and keys before RoPE (`q_norm`, `k_norm`), explicit `head_dim`, no biases.

use super::{llama::Llama, CausalLm};
use crate::error::LlmError;
use mlx_common::Weights;
use serde_json::Value as Json;
use std::path::Path;

/// Architecture-table entry point.
pub fn load(cfg: &Json, file: &Path, w: &mut Weights) -> Result<Box<dyn CausalLm>, LlmError> {
    if !w.contains("model.layers.0.self_attn.q_norm.weight") {
        return Err(LlmError::Weights {
            file: w.source().into(),
            msg: "qwen3 expects `model.layers.0.self_attn.q_norm.weight`".into(),
        });
    }
    Ok(Box::new(Llama::load(cfg, file, w)?))
}
