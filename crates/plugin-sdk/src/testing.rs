//! Test a built plugin without the host (feature `testing`): load its library with the
//! host's own checks, then call it through the real ABI — probe, estimate, load, and each
//! kind's calls — from a plugin's integration tests.
//!
//! ```ignore
//! use plugin_sdk::testing::{self, TestPlugin};
//! let plugin = TestPlugin::open(&testing::cdylib("mlxengine_hello"))?;
//! let model = plugin.load(testing::spec("m", ModelKind::EMBED, "hello-arch", dir))?;
//! let out = testing::embed(&model, &["a sentence"])?;
//! ```

use abi_stable::{
    sabi_trait::TD_Opaque,
    sabi_types::RMut,
    std_types::{ROption, RString},
};
use plugin_api::{
    embed::{EmbedRequest, EmbedResponse},
    text::{
        GenerateOutput, GenerateRequest, GenerateResponse, StreamControl, StreamEvent, TokenSink,
        TokenSink_TO,
    },
    DeviceInfo, EstimateRequest, LoadRequest, MemoryEstimate, ModelBox, ModelKind, ModelSpec,
    PluginDescriptor, PluginError, PluginModRef, Probe, ProbeRequest,
};
use std::path::{Path, PathBuf};

/// A plugin library opened as the host opens it.
pub struct TestPlugin {
    /// Its root module.
    pub module: PluginModRef,
    /// What it declared.
    pub descriptor: PluginDescriptor,
}

impl TestPlugin {
    /// Open and check the library at `path` (as `mlxengine` does).
    pub fn open(path: &Path) -> Result<Self, String> {
        let (module, descriptor) = crate::loader::open(path)?;
        Ok(Self { module, descriptor })
    }

    /// The plugin's probe of this machine, for `model` if given.
    pub fn probe(&self, model: Option<ModelSpec>) -> Result<Probe, PluginError> {
        (self.module.probe())(&ProbeRequest {
            device: device(),
            model: model.into(),
        })
        .into_result()
    }

    /// The plugin's memory estimate for `model` (`Err(UNSUPPORTED)` from a plugin that
    /// gives none, or one built before the entry existed).
    pub fn estimate(
        &self,
        model: ModelSpec,
        context: u32,
        batch: u32,
    ) -> Result<MemoryEstimate, PluginError> {
        let Some(f) = self.module.estimate() else {
            return Err(PluginError::unsupported("memory estimates"));
        };
        f(&EstimateRequest {
            model,
            device: device(),
            context,
            batch,
            memory_available: 0,
        })
        .into_result()
    }

    /// Load `model` (no memory budget).
    pub fn load(&self, model: ModelSpec) -> Result<ModelBox, PluginError> {
        (self.module.load_model())(&LoadRequest {
            model,
            device: device(),
            memory_budget: 0,
        })
        .into_result()
    }
}

/// The built cdylib `name` (e.g. `mlxengine_hello`) in the target directory of the
/// running test (`target/<profile>/lib<name>.so`).
pub fn cdylib(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let file = if cfg!(target_os = "macos") {
        format!("lib{name}.dylib")
    } else if cfg!(windows) {
        format!("{name}.dll")
    } else {
        format!("lib{name}.so")
    };
    profile.join(file)
}

/// This machine, as far as a test needs it: OS, architecture, cores.
pub fn device() -> DeviceInfo {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    DeviceInfo {
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        cpu_cores: cores,
        physical_cores: cores,
        ..Default::default()
    }
}

/// A model spec as the host would resolve it from a registry entry.
pub fn spec(id: &str, kind: ModelKind, architecture: &str, path: &Path) -> ModelSpec {
    ModelSpec {
        id: id.into(),
        kind,
        architecture: architecture.into(),
        path: path.to_string_lossy().as_ref().into(),
        quantization: ROption::RNone,
        dtype: ROption::RNone,
        context_length: 0,
        system_prompt: ROption::RNone,
        extra_eos: Default::default(),
        options: RString::from("{}"),
    }
}

/// Embed `texts` with default pooling and normalization.
pub fn embed(model: &ModelBox, texts: &[&str]) -> Result<EmbedResponse, PluginError> {
    model
        .embed(&EmbedRequest {
            texts: texts.iter().map(|t| (*t).into()).collect(),
            ..Default::default()
        })
        .into_result()
}

/// What a generation streamed, as the host's sink sees it.
#[derive(Default)]
pub struct Collected {
    /// Every stream event, in order.
    pub events: Vec<StreamEvent>,
    /// Every `on_finished` call: (index, output).
    pub finished: Vec<(u32, GenerateOutput)>,
    /// Every `on_prompt_cached` call: (index, tokens reused).
    pub cached: Vec<(u32, u32)>,
}

impl TokenSink for Collected {
    fn on_event(&mut self, event: &StreamEvent) -> StreamControl {
        self.events.push(event.clone());
        StreamControl::Continue
    }
    fn on_finished(&mut self, index: u32, output: &GenerateOutput) {
        self.finished.push((index, output.clone()));
    }
    fn on_prompt_cached(&mut self, index: u32, tokens: u32) {
        self.cached.push((index, tokens));
    }
}

/// Generate through the ABI with a collecting sink.
pub fn generate(
    model: &ModelBox,
    req: &GenerateRequest,
) -> Result<(GenerateResponse, Collected), PluginError> {
    let mut sink = Collected::default();
    let res = model.generate(req, TokenSink_TO::from_ptr(RMut::new(&mut sink), TD_Opaque));
    res.into_result().map(|r| (r, sink))
}
