//! This plugin's memory estimate (API 2's `estimate` entry).
//!
//! Weights in the load dtype (float32 unless the registry asks otherwise); per batch of
//! texts (up to 256 per MLX call): hidden states, the 4×hidden feed-forward activations
//! and the freed ones MLX keeps cached for reuse (the batches of a request run in
//! parallel on the CPU), and attention scores. No KV cache. Constants calibrated against
//! measured peak resident memory (docs/device-fit.md, tests/fit.rs).

use crate::load_dtype;
use mlx_common::{
    dtype_name,
    estimate::{request_facts, requested_dtype, MLX_BASE_BYTES},
};
use mlx_rs::Dtype;
use plugin_api::{EstimateRequest, MemoryEstimate, PluginError};

pub fn estimate(req: &EstimateRequest) -> Result<MemoryEstimate, PluginError> {
    let f = request_facts(req)?;
    let dtype = load_dtype(requested_dtype(req))?;
    let elt = if dtype == Dtype::Float32 { 4 } else { 2 };
    let context = u64::from(req.context.max(1));
    let batch = u64::from(req.batch.max(1));
    let rows = batch.min(256) * context;
    let act = rows * (f.hidden * 72 + context * 48);
    let name = dtype_name(dtype);
    Ok(MemoryEstimate {
        weights_as: name.clone().into(),
        dtype: Some(name.into()).into(),
        weights_bytes: f.parameters * elt,
        kv_cache_bytes: 0,
        runtime_bytes: MLX_BASE_BYTES + act,
        context: context as u32,
        batch: batch as u32,
        ..Default::default()
    })
}
