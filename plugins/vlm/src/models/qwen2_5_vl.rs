//! Qwen2.5-VL (`model_type = "qwen2_5_vl"`): Qwen2.5-VL 3B/7B/32B/72B. Qwen2-VL's
//! processor, prompt and multimodal RoPE (the temporal spacing by `tokens_per_second`
//! only moves video frames; an image is one frame) with the Qwen2.5 tower: RMSNorm,
//! gated SiLU MLPs, window attention but for `fullatt_block_indexes`, an RMSNorm merger
//! into `out_hidden_size`.

use crate::vision::qwen_vit::Variant;
use lm::LlmError;
use mlx_common::Weights;
use mlx_rs::Dtype;
use serde_json::Value as Json;
use std::path::Path;

/// Builds the language model and the media side from `dir`'s config and weights.
pub fn load(
    cfg: &Json,
    dir: &Path,
    weights: Weights,
    dtype: Dtype,
) -> Result<super::Built, LlmError> {
    super::qwen2_vl::load_with(cfg, dir, weights, dtype, Variant::Qwen25)
}
