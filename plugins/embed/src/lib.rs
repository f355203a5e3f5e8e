//! MLXEngine embed plugin: sentence embeddings from BERT-family encoders, computed with
//! MLX through mlx-rs. Loads safetensors + `config.json` + `tokenizer.json` and honours
//! the sentence-transformers files (pooling, normalization, maximum length).
//!
//! Built as a `cdylib` the host loads at run time; the `rlib` is for this crate's tests
//! and examples only.

mod encoder;
mod error;
mod estimate;
pub mod models;
mod pool;

pub use encoder::Encoder;
pub use error::EmbedError;

use abi_stable::std_types::{RString, RVec};
use mlx_rs::Dtype;
use plugin_api::{
    embed::{EmbedRequest, EmbedResponse},
    DeviceInfo, ErrorKind, EstimateRequest, Features, LoadRequest, MemoryEstimate, ModelInfo,
    ModelKind, PluginDescriptor, PluginError, Probe, ProbeRequest,
};
use plugin_sdk::{LoadedModel, Plugin};
use std::path::Path;

/// The plugin type exported through the ABI.
pub struct EmbedPlugin;

pub use mlx_common::mlx_backend;

/// Load-time dtype: the registry's `dtype` if given, else float32 (on x86 CPU, MLX's f32
/// matmul goes through BLAS while f16/bf16 kernels are scalar).
fn load_dtype(requested: Option<&str>) -> Result<Dtype, PluginError> {
    match requested {
        None | Some("float32") | Some("f32") => Ok(Dtype::Float32),
        Some("float16") | Some("f16") => Ok(Dtype::Float16),
        Some("bfloat16") | Some("bf16") => Ok(Dtype::Bfloat16),
        Some(other) => Err(PluginError::new(
            ErrorKind::INVALID_REQUEST,
            format!(
                "dtype `{other}` is not supported by the embed plugin (float32, float16, bfloat16)"
            ),
        )),
    }
}

impl Plugin for EmbedPlugin {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor {
            name: "mlx-embed".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Sentence embeddings (BERT family) on MLX".into(),
            kinds: RVec::from(vec![ModelKind::EMBED]),
            architectures: models::ARCHITECTURES
                .iter()
                .map(|a| RString::from(*a))
                .collect(),
            formats: plugin_sdk::rstrings(&["safetensors"]),
            features: Features::EMBEDDINGS.union(Features::BATCHING),
        }
    }

    fn probe(req: &ProbeRequest) -> Probe {
        let backend = mlx_backend();
        if let Some(m) = req.model.as_ref().into_option() {
            if !models::supports(&m.architecture) {
                return Probe {
                    score: 0,
                    backend: backend.into(),
                    reason: format!("architecture `{}` not supported", m.architecture).into(),
                };
            }
        }
        let (score, reason) = match backend {
            "mlx-cpu" => (50, "MLX on CPU, f32 through BLAS"),
            _ => (100, "MLX on GPU"),
        };
        Probe {
            score,
            backend: backend.into(),
            reason: reason.into(),
        }
    }

    fn estimate(req: &EstimateRequest) -> Result<MemoryEstimate, PluginError> {
        estimate::estimate(req)
    }

    fn load(req: &LoadRequest) -> Result<Box<dyn LoadedModel>, PluginError> {
        let spec = &req.model;
        mlx_common::apply_memory_budget(req.memory_budget);
        let dtype = load_dtype(spec.dtype.as_ref().map(|d| d.as_str()).into_option())?;
        let cpu_cores = req.device.cpu_cores.max(1) as usize;
        let encoder = Encoder::load(
            Path::new(spec.path.as_str()),
            dtype,
            cpu_cores,
            req.memory_budget,
        )
        .map_err(|e| PluginError::from(e).with_context(&spec.id))?;
        Ok(Box::new(LoadedEncoder {
            id: spec.id.to_string(),
            encoder,
            device: req.device.clone(),
            _release: mlx_common::ReleaseCacheOnDrop,
        }))
    }
}

struct LoadedEncoder {
    id: String,
    encoder: Encoder,
    #[allow(dead_code)]
    device: DeviceInfo,
    /// Last field: dropped after the arrays, then returns MLX's cached buffers.
    _release: mlx_common::ReleaseCacheOnDrop,
}

impl LoadedModel for LoadedEncoder {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            id: self.id.as_str().into(),
            kind: ModelKind::EMBED,
            architecture: "bert".into(),
            backend: mlx_backend().into(),
            dtype: format!("{:?}", self.encoder.dtype).to_lowercase().into(),
            dim: self.encoder.dim as u32,
            max_tokens: self.encoder.texts.max_len as u32,
            parameters: self.encoder.parameters,
            weight_bytes: self.encoder.weight_bytes,
        }
    }

    fn embed(&self, req: &EmbedRequest) -> Result<EmbedResponse, PluginError> {
        self.encoder
            .embed(req)
            .map_err(|e| PluginError::from(e).with_context(&self.id))
    }
}

trait WithContext {
    fn with_context(self, model: &str) -> Self;
}

impl WithContext for PluginError {
    fn with_context(mut self, model: &str) -> Self {
        self.message = format!("model `{model}`: {}", self.message).into();
        self
    }
}

plugin_sdk::export_plugin!(EmbedPlugin);
