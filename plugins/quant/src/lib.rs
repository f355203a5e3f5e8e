//! MLXEngine quant plugin: MLX affine quantization (2–8 bits, groups of 32/64/128, mlx-lm's
//! mixed recipes and per-layer rules) and mxfp4 of a Hugging Face layout model or a GGUF, written as
//! the checkpoint mlx-lm writes (`mlx_lm.convert -q`): same tensors, same numbers (MLX's
//! own `quantize`), same `config.json` block — so mlx-lm and the `llm` plugin both load it.
//!
//! The host hands `convert` an empty folder beside the destination and renames it into
//! place when the call succeeds; the plugin only writes into it.

mod convert;
mod fuse;
pub mod plan;
mod source;
mod writer;

use abi_stable::std_types::RVec;
use plugin_api::{
    quant::{QuantizeReport, QuantizeRequest},
    Features, LoadRequest, ModelKind, PluginDescriptor, PluginError, Probe, ProbeRequest,
};
use plugin_sdk::{LoadedModel, Plugin, Progress};

/// The plugin type exported through the ABI.
pub struct QuantPlugin;

/// The target format this plugin writes (`ModelSpec.quantization` of a `quant` probe).
pub const FORMAT: &str = "mlx";

impl Plugin for QuantPlugin {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor {
            name: "mlx-quant".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "MLX affine and mxfp4 quantization into mlx-lm's checkpoint format".into(),
            kinds: RVec::from(vec![ModelKind::QUANT]),
            architectures: RVec::new(),
            formats: plugin_sdk::rstrings(&["safetensors", "gguf"]),
            features: Features::QUANTIZATION,
        }
    }

    fn probe(req: &ProbeRequest) -> Probe {
        let backend = mlx_common::mlx_backend();
        let probe = |score: u32, reason: String| Probe {
            score,
            backend: backend.into(),
            reason: reason.into(),
        };
        let Some(m) = req.model.as_ref().into_option() else {
            return probe(100, "MLX affine quantization".into());
        };
        let target = m
            .quantization
            .as_ref()
            .map(|q| q.as_str())
            .into_option()
            .unwrap_or(FORMAT);
        if target != FORMAT {
            return probe(0, format!("writes `{FORMAT}` checkpoints, not `{target}`"));
        }
        let path = std::path::Path::new(m.path.as_str());
        let fusing = serde_json::from_str::<serde_json::Value>(m.options.as_str())
            .is_ok_and(|o| o.get("fuse").is_some());
        if fusing {
            return match fuse::quant_config(path) {
                Ok(_) => probe(100, "fuses adapters into MLX-quantized models".into()),
                Err(e) => probe(0, e),
            };
        }
        match source::Source::open(path) {
            Ok(_) => probe(100, "MLX affine quantization into mlx-lm's format".into()),
            Err(e) => probe(0, e),
        }
    }

    fn load(_req: &LoadRequest) -> Result<Box<dyn LoadedModel>, PluginError> {
        Err(PluginError::unsupported(
            "loading models (the quant plugin converts them; the llm plugin serves the result)",
        ))
    }

    fn convert(
        req: &QuantizeRequest,
        progress: &mut dyn Progress,
    ) -> Result<QuantizeReport, PluginError> {
        convert::convert(req, progress)
    }
}

plugin_sdk::export_plugin!(QuantPlugin);
