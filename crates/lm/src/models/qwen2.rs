//! Qwen2 / Qwen2.5 (`model_type = "qwen2"`): Llama layers with biases on the query, key
//! and value projections (loaded because the checkpoint has them), tied embeddings on the
//! small models.

use super::{llama::Llama, CausalLm};
use crate::error::LlmError;
use mlx_common::Weights;
use serde_json::Value as Json;
use std::path::Path;

/// Architecture-table entry point.
pub fn load(cfg: &Json, file: &Path, w: &mut Weights) -> Result<Box<dyn CausalLm>, LlmError> {
    if cfg.get("use_sliding_window").and_then(Json::as_bool) == Some(true) {
        return Err(LlmError::Config {
            file: file.into(),
            msg: "`use_sliding_window: true` is not supported for qwen2".into(),
        });
    }
    for proj in ["q_proj", "k_proj", "v_proj"] {
        if !w.contains(&format!("model.layers.0.self_attn.{proj}.bias")) {
            return Err(LlmError::Weights {
                file: w.source().into(),
                msg: format!("qwen2 expects `model.layers.0.self_attn.{proj}.bias`"),
            });
        }
    }
    Ok(Box::new(Llama::load(cfg, file, w)?))
}
