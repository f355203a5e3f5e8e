//! This plugin's memory estimate (API 2's `estimate` entry) and its load-dtype policy.
//!
//! Weights are converted to the load dtype (float32 on CPU, where MLX's f32 path goes
//! through BLAS; bfloat16 on GPU, where MLX-quantized weights also stay packed); the KV
//! cache grows in steps of 256 tokens in that dtype (or as the `kv_cache` option stores
//! it: another float type, or 8/4 bits with a scale and bias per 32); a GGUF is converted one tensor at a
//! time, so its largest tensor (the embedding table) exists once more in float32 at the
//! peak; activations of one prefill chunk and its logits. On CPU, when float32 does not
//! fit what the host can give, bfloat16 is chosen (half the weights). Constants
//! calibrated against measured peak resident memory (docs/device-fit.md, tests/fit.rs).

use crate::{
    generate::{PREFILL_CHUNK, PREFILL_CHUNK_ALONE},
    load_options,
    models::KvStore,
};
use mlx_common::{
    dtype_name,
    estimate::{request_facts, requested_dtype, MLX_BASE_BYTES},
    mlx_backend,
};
use mlx_rs::Dtype;
use plugin_api::{ErrorKind, EstimateRequest, MemoryEstimate, PluginError};

/// Weight bytes per second streamed while decoding one sequence on MLX's CPU path on the
/// 2-core x86-64 reference machine (SmolLM2-135M: ~10 tok/s from 538 MB of f32), per 2
/// physical cores. Not measured on GPUs (0).
const CPU_DECODE_BYTES_PER_S_2_CORES: f64 = 5.4e9;

pub fn estimate(req: &EstimateRequest) -> Result<MemoryEstimate, PluginError> {
    let f = request_facts(req)?;
    let backend = mlx_backend();
    let requested = requested_dtype(req);
    let dtype = load_options(requested, backend)?.dtype;
    let kv_store = KvStore::from_options(req.model.options.as_str()).map_err(|e| {
        PluginError::new(ErrorKind::INVALID_REQUEST, format!("registry options: {e}"))
    })?;
    let first = of_dtype(&f, req, backend, dtype, kv_store);
    if requested.is_some()
        || dtype != Dtype::Float32
        || req.memory_available == 0
        || first.total_bytes() <= req.memory_available
    {
        return Ok(first);
    }
    let mut half = of_dtype(&f, req, backend, Dtype::Bfloat16, kv_store);
    half.note = format!(
        "float32 would need {:.0} MB; bfloat16 chosen",
        first.total_bytes() as f64 / 1e6
    )
    .into();
    Ok(half)
}

fn of_dtype(
    f: &model_facts::Facts,
    req: &EstimateRequest,
    backend: &str,
    dt: Dtype,
    kv_store: KvStore,
) -> MemoryEstimate {
    let context = u64::from(req.context.max(1));
    let batch = u64::from(req.batch.max(1));
    let elt: u64 = if dt == Dtype::Float32 { 4 } else { 2 };
    let quantized_kept = backend != "mlx-cpu" && f.quantization.starts_with("mlx-");
    let weights = if quantized_kept {
        f.file_bytes
    } else {
        f.parameters * elt
    };
    let kv_per_token = kv_elements_per_token(f);
    let kv = (kv_per_token
        .saturating_mul(context.div_ceil(256) * 256)
        .saturating_mul(batch) as f64
        * kv_store.bytes_per_element(dt))
    .ceil() as u64;
    let transient = if f.format == "gguf" {
        f.vocab * f.hidden * 4
    } else {
        0
    };
    // A GPU reads a lone prompt in longer chunks (the plugin's prefill policy).
    let per_pass = if backend == "mlx-cpu" {
        PREFILL_CHUNK
    } else {
        PREFILL_CHUNK_ALONE
    };
    let chunk = (per_pass as u64).min(context) * batch;
    let act = chunk * (f.hidden * 48 + f.vocab * 4);
    let name = dtype_name(dt);
    let cores = u64::from(req.device.physical_cores.max(1)) as f64;
    MemoryEstimate {
        weights_as: (if quantized_kept {
            f.quantization.clone()
        } else {
            name.clone()
        })
        .into(),
        dtype: Some(abi_stable::std_types::RString::from(name)).into(),
        weights_bytes: weights,
        kv_cache_bytes: kv,
        runtime_bytes: MLX_BASE_BYTES + transient + act,
        context: context as u32,
        batch: batch as u32,
        decode_bytes_per_s: if backend == "mlx-cpu" {
            CPU_DECODE_BYTES_PER_S_2_CORES * (cores / 2.0).min(4.0)
        } else {
            0.0
        },
        ..Default::default()
    }
}

/// KV-cache elements of one token of one sequence: keys and values of every layer.
/// Saturating: the factors are the model files' claims.
pub fn kv_elements_per_token(f: &model_facts::Facts) -> u64 {
    f.layers
        .saturating_mul(2)
        .saturating_mul(f.kv_heads)
        .saturating_mul(f.head_dim)
}
