//! What the MLX plugins' memory estimates (API 2's `estimate` entry) share.

use plugin_api::{ErrorKind, EstimateRequest, PluginError};

/// MLX's fixed overhead (library state, allocator, BLAS buffers), calibrated against
/// measured peak resident memory (docs/device-fit.md, tests/fit.rs).
pub const MLX_BASE_BYTES: u64 = 20_000_000;

/// The facts of the model an estimate request names, or a `LOAD` error naming it.
pub fn request_facts(req: &EstimateRequest) -> Result<model_facts::Facts, PluginError> {
    model_facts::facts(std::path::Path::new(req.model.path.as_str()))
        .map_err(|e| PluginError::new(ErrorKind::LOAD, format!("model `{}`: {e}", req.model.id)))
}

/// The load dtype the request's model names (the registry's or `--dtype`), if any.
pub fn requested_dtype(req: &EstimateRequest) -> Option<&str> {
    req.model.dtype.as_ref().map(|d| d.as_str()).into_option()
}
