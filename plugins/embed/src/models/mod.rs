//! Architectures of the embed plugin, one file each, and the shared weight loading.
//!
//! Loading follows one path for every architecture (`mlx_common::Weights`): read the
//! safetensors (single file or sharded), `sanitize` (drop unused tensors, strip task
//! prefixes), build the model taking each tensor by name with its expected shape, then
//! fail if any tensor is left over. A missing, misshapen or extra tensor is an error
//! naming the tensor and the file.

pub mod bert;

pub use mlx_common::{Linear, Weights};

/// The architecture table: `model_type` values this plugin can load.
pub const ARCHITECTURES: &[&str] = &["bert"];

/// Whether `model_type` is in [`ARCHITECTURES`] (checked before anything is downloaded).
pub fn supports(model_type: &str) -> bool {
    ARCHITECTURES.contains(&model_type)
}
