//! Shared MLX plumbing for MLXEngine plugins.
//!
//! - [`Weights`]: strict loading of safetensors checkpoints (single or sharded), tensors
//!   taken by checkpoint name with their expected shape, leftovers reported.
//! - [`Linear`]: a dense layer named after its checkpoint path, full precision or MLX
//!   affine-quantized, so `quant` and `lora` plugins can find and replace it.
//! - [`activation`]: GELU forms that stay fast on MLX's CPU backend.
//! - [`blas`]: keep BLAS single-threaded while work runs on several MLX streams.
//! - [`mlx_backend`]: which MLX backend this process runs on.

pub mod activation;
pub mod blas;
mod error;
pub mod estimate;
mod linear;
pub mod qmode;
/// Tokenizer files checked against a model ([`sentence::tokens`]).
pub use sentence::tokens;
mod weights;

pub use error::ModelError;
pub use linear::{Embedding, Linear, LoraDelta, Quantized};
pub use qmode::{QuantMode, QUANT_MODES};
pub use weights::{QuantConfig, Weights, WeightsError, AFFINE_BITS, AFFINE_GROUPS};

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

/// Whether MLX computes on a GPU here ([`mlx_backend`] other than `mlx-cpu`), asked once.
pub fn on_gpu() -> bool {
    static GPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GPU.get_or_init(|| mlx_backend() != "mlx-cpu")
}

/// Apply the host's memory budget (bytes for all loaded models; 0 = none) to MLX, which
/// is shared by every MLX plugin of the process: the memory limit is lowered to the
/// budget and the buffer cache (freed memory kept for reuse) to a tenth of it. Limits
/// are only ever lowered (MLX's CPU default keeps no cache at all).
pub fn apply_memory_budget(budget: u64) {
    if budget == 0 || budget == u64::MAX {
        return;
    }
    use mlx_rs::memory::{set_cache_limit, set_memory_limit};
    for (set, limit) in [
        (
            set_memory_limit as fn(usize) -> mlx_rs::error::Result<usize>,
            budget as usize,
        ),
        (set_cache_limit, (budget / 10) as usize),
    ] {
        if let Ok(prev) = set(limit) {
            if prev < limit {
                let _ = set(prev);
            }
        }
    }
}

/// Let MLX keep up to `bytes` of freed buffers for reuse, within a tenth of the memory
/// `budget` (0 = none); the limit is only ever raised here. MLX's CPU default (32 MB) is
/// smaller than one layer's activations of a batched encoder: each op then faulted in
/// fresh pages (measured: 15–20% of an all-MiniLM batch of 256).
pub fn reserve_buffer_cache(bytes: u64, budget: u64) {
    let cap = if budget == 0 { u64::MAX } else { budget / 10 };
    let want = bytes.min(cap) as usize;
    if let Ok(prev) = mlx_rs::memory::set_cache_limit(want) {
        if prev > want {
            let _ = mlx_rs::memory::set_cache_limit(prev);
        }
    }
}

/// Return MLX's cached buffers to the system (after a model is dropped).
pub fn release_cache() {
    let _ = mlx_rs::memory::clear_cache();
}

/// Calls [`release_cache`] when dropped: the last field of a loaded model, so its arrays
/// are freed first.
pub struct ReleaseCacheOnDrop;

impl Drop for ReleaseCacheOnDrop {
    fn drop(&mut self) {
        release_cache();
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

/// `dir/rel` for a file name a model's own files give (a shard of a safetensors index, a
/// module folder of `modules.json`): `rel` must be relative and stay inside `dir` (no
/// `..`, no root), since model files come from someone else's upload.
pub use sentence::inside;

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn names_from_model_files_stay_inside_the_folder() {
        let d = Path::new("/models/m");
        assert_eq!(inside(d, "1_Pooling").unwrap(), d.join("1_Pooling"));
        assert_eq!(
            inside(d, "shards/a.safetensors").unwrap(),
            d.join("shards/a.safetensors")
        );
        for bad in ["", "..", "../x", "a/../../x", "/etc/passwd"] {
            assert!(inside(d, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_safetensors_index_cannot_name_a_file_outside_the_model() {
        let dir = std::env::temp_dir().join(format!("mlx-common-index-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            br#"{"weight_map": {"w": "../outside.safetensors"}}"#,
        )
        .unwrap();
        let e = Weights::load(&dir, mlx_rs::Dtype::Float32)
            .err()
            .expect("refused")
            .to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.contains("model.safetensors.index.json") && e.contains("`weight_map`"),
            "{e}"
        );
    }
}
