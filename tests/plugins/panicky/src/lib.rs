//! Test fixture: an `embed` plugin for architecture `panic-test` whose `embed` panics
//! (and whose load panics when the model path contains `panic-on-load`). The host must
//! get an error back and keep running. Embedding the text `segfault` crashes the process
//! for real (a write through a null pointer): only an isolated plugin survives that.

use plugin_api::{
    embed::{EmbedRequest, EmbedResponse},
    Features, LoadRequest, ModelInfo, ModelKind, PluginDescriptor, PluginError, Probe,
    ProbeRequest,
};
use plugin_sdk::{rstrings, LoadedModel, Plugin};

struct Panicky;

impl Plugin for Panicky {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor {
            name: "test-panicky".into(),
            version: "0.0.0".into(),
            description: "panics on purpose".into(),
            kinds: vec![ModelKind::EMBED].into(),
            architectures: rstrings(&["panic-test"]),
            formats: rstrings(&["none"]),
            features: Features::EMBEDDINGS,
        }
    }
    fn probe(_: &ProbeRequest) -> Probe {
        Probe {
            score: 1,
            backend: "none".into(),
            reason: "test fixture".into(),
        }
    }
    fn load(req: &LoadRequest) -> Result<Box<dyn LoadedModel>, PluginError> {
        if req.model.path.contains("panic-on-load") {
            panic!("deliberate panic in load");
        }
        Ok(Box::new(Model(req.model.id.to_string())))
    }
}

struct Model(String);

impl LoadedModel for Model {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            id: self.0.as_str().into(),
            kind: ModelKind::EMBED,
            architecture: "panic-test".into(),
            backend: "none".into(),
            dtype: "none".into(),
            dim: 0,
            max_tokens: 0,
            parameters: 0,
            weight_bytes: 0,
        }
    }
    fn embed(&self, req: &EmbedRequest) -> Result<EmbedResponse, PluginError> {
        if req.texts.iter().any(|t| t.as_str() == "segfault") {
            // SAFETY: none; this is the crash the fixture exists for.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
        }
        panic!("deliberate panic in embed")
    }
}

plugin_sdk::export_plugin!(Panicky);
