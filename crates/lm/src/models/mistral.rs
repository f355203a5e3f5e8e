//! Mistral (`model_type = "mistral"`): Mistral 7B v0.2+, Ministral. Same layers as Llama
//! (grouped-query attention, SwiGLU, RMSNorm); v0.1's sliding window is not applied (the
//! window equals the context of v0.2+ checkpoints, which set `sliding_window: null`).

use super::{llama::Llama, CausalLm};
use crate::error::LlmError;
use mlx_common::Weights;
use serde_json::Value as Json;
use std::path::Path;

/// Architecture-table entry point.
pub fn load(cfg: &Json, file: &Path, w: &mut Weights) -> Result<Box<dyn CausalLm>, LlmError> {
    if let Some(win) = cfg.get("sliding_window").and_then(Json::as_i64) {
        let ctx = cfg
            .get("max_position_embeddings")
            .and_then(Json::as_i64)
            .unwrap_or(0);
        if win < ctx {
            return Err(LlmError::Config {
                file: file.into(),
                msg: format!(
                    "`sliding_window` {win} below the context {ctx} is not supported for mistral"
                ),
            });
        }
    }
    Ok(Box::new(Llama::load(cfg, file, w)?))
}
