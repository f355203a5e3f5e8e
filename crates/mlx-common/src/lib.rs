//! Shared MLX plumbing for MLXEngine plugins.
//!
//! - [`Weights`]: strict loading of safetensors checkpoints (single or sharded), tensors
//!   taken by checkpoint name with their expected shape, leftovers reported.
//! - [`Linear`]: a dense layer named after its checkpoint path, full precision or MLX
//!   affine-quantized, so `quant` and `lora` plugins can find and replace it.
//! - [`mlx_backend`]: which MLX backend this process runs on.

mod linear;
mod weights;

pub use linear::{Linear, Quantized};
pub use weights::{Weights, WeightsError};

/// `"mlx-cuda"` / `"mlx-metal"` when MLX sees a GPU, else `"mlx-cpu"`.
pub fn mlx_backend() -> &'static str {
    let mut n = 0;
    // SAFETY: plain C call writing an int.
    let rc = unsafe { mlx_sys::mlx_device_count(&mut n, mlx_sys::mlx_device_type__MLX_GPU) };
    if rc != 0 || n == 0 {
        "mlx-cpu"
    } else if cfg!(target_os = "macos") {
        "mlx-metal"
    } else {
        "mlx-cuda"
    }
}

/// Parse a dtype name as used in registries and configs.
pub fn parse_dtype(name: &str) -> Option<mlx_rs::Dtype> {
    use mlx_rs::Dtype;
    match name {
        "float32" | "f32" => Some(Dtype::Float32),
        "float16" | "f16" => Some(Dtype::Float16),
        "bfloat16" | "bf16" => Some(Dtype::Bfloat16),
        _ => None,
    }
}

/// Lowercase dtype name (`"float32"`).
pub fn dtype_name(d: mlx_rs::Dtype) -> String {
    format!("{d:?}").to_lowercase()
}
