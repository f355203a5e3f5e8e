//! MLXEngine's MLX language models, shared by the `llm` and `vlm` plugins: the
//! architecture table (one file each under [`models`]), the KV cache, the loader
//! (Hugging Face layouts, MLX-quantized checkpoints, lone GGUF files), tokenizers and
//! chat templates, and the one generation loop ([`generate`]: chunked prefill,
//! continuous batching, sampling, stop strings, streaming with cancellation), with the
//! prompt cache, LoRA adapters, scoring and the memory estimate.
//!
//! A plugin crate wraps these behind the ABI; this crate exports no plugin itself.

pub mod adapters;
pub mod batch;
pub mod encoder;
mod error;
pub mod estimate;
pub mod generate;
pub mod loader;
pub mod media;
pub mod models;
pub mod prompt_cache;
pub mod sampling;
pub mod score;
pub mod tokenizer;

pub use error::LlmError;
pub use loader::{LoadOptions, Loaded};

use mlx_common::parse_dtype;
use mlx_rs::Dtype;
use plugin_api::{ErrorKind, PluginError};

/// Load-time dtype policy: the registry's `dtype` if set; else float32 on CPU (MLX's f32
/// matmul goes through BLAS, its f16/bf16/quantized kernels are scalar on x86) and
/// bfloat16 on GPU. Quantized layers are dequantized on CPU.
pub fn load_options(requested: Option<&str>, backend: &str) -> Result<LoadOptions, PluginError> {
    let cpu = backend == "mlx-cpu";
    let dtype = match requested {
        None => {
            if cpu {
                Dtype::Float32
            } else {
                Dtype::Bfloat16
            }
        }
        Some(name) => parse_dtype(name).ok_or_else(|| {
            PluginError::new(
                ErrorKind::INVALID_REQUEST,
                format!("dtype `{name}` is not supported by the MLX language models (float32, float16, bfloat16)"),
            )
        })?,
    };
    Ok(LoadOptions {
        dtype,
        dequantize: cpu,
    })
}
