//! This provider's memory estimate (API 2's `estimate` entry), from the GGUF's header.
//!
//! The GGUF is memory-mapped as is (every page is read while decoding); the context holds
//! a KV cache of the registry's `kv_type` (f16 by default) with at least
//! [`MIN_KV_CELLS`] cells shared by all sequences (sliding-window layers get full-size
//! caches too with unified sequences); llama.cpp keeps ~300 bytes of tables per
//! vocabulary token, and the compute buffers of a prefill chunk. Constants calibrated
//! against measured peak resident memory on x86-64 Linux (docs/device-fit.md,
//! tests/fit.rs).

use crate::{
    compute_threads, err, settings::Settings, GPU_BUILD, MAX_SEQS, MIN_KV_CELLS, PREFILL_CHUNK,
};
use plugin_api::{ErrorKind, EstimateRequest, MemoryEstimate, PluginError};
use std::path::Path;

/// llama.cpp's fixed overhead (library state, small buffers).
const BASE: u64 = 13_500_000;
/// llama.cpp's vocabulary tables per token.
const PER_VOCAB: u64 = 294;
/// Weight bytes per second streamed while decoding one sequence on the 2-core x86-64
/// reference machine (SmolLM2-135M: ~65 tok/s from its 98 MB GGUF), per 2 physical cores.
const CPU_DECODE_BYTES_PER_S_2_CORES: f64 = 6.4e9;

pub fn estimate(req: &EstimateRequest) -> Result<MemoryEstimate, PluginError> {
    let id = req.model.id.as_str();
    let f = model_facts::facts(Path::new(req.model.path.as_str()))
        .map_err(|e| err(ErrorKind::LOAD, id, e))?;
    let threads = compute_threads(&req.device);
    let settings = Settings::device_default(GPU_BUILD, threads)
        .with_options(req.model.options.as_str())
        .map_err(|e| {
            err(
                ErrorKind::INVALID_REQUEST,
                id,
                format!("registry options: {e}"),
            )
        })?;
    let context = u64::from(req.context.max(1));
    let batch = u64::from(req.batch.max(1));
    let elements_per_cell = kv_elements_per_cell(&f);
    let cells = (context * batch)
        .div_ceil(256)
        .saturating_mul(256)
        .max(MIN_KV_CELLS as u64);
    let (num, den) = settings.kv_bytes_per_element();
    let tokens = (context * batch).min((PREFILL_CHUNK + MAX_SEQS) as u64);
    // A vision-language model's projector is loaded beside it.
    let mmproj = gguf::mmproj_file(Path::new(req.model.path.as_str()))
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    Ok(MemoryEstimate {
        weights_as: format!("{} (memory-mapped GGUF)", f.quantization).into(),
        weights_bytes: f.file_bytes.saturating_add(mmproj),
        kv_cache_bytes: cells.saturating_mul(elements_per_cell).saturating_mul(num) / den,
        runtime_bytes: BASE + PER_VOCAB * f.vocab + tokens * f.hidden * 48,
        context: context as u32,
        batch: batch as u32,
        decode_bytes_per_s: if GPU_BUILD {
            0.0
        } else {
            CPU_DECODE_BYTES_PER_S_2_CORES * (threads as f64 / 2.0).min(4.0)
        },
        ..Default::default()
    })
}

/// KV-cache elements of one cell (a token of one sequence): keys and values of every
/// layer. Saturating: the factors are the model file's claims.
pub(crate) fn kv_elements_per_cell(f: &model_facts::Facts) -> u64 {
    f.layers
        .saturating_mul(2)
        .saturating_mul(f.kv_heads)
        .saturating_mul(f.head_dim)
}
