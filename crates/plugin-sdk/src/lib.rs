//! Helpers for writing MLXEngine plugins.
//!
//! A plugin implements [`Plugin`] (what it is, whether it runs here, how to load a model)
//! and [`LoadedModel`] (what a loaded model can do), in plain Rust with `Result`s, then
//! calls [`export_plugin!`]. The macro builds the ABI root module; every call that
//! crosses the ABI runs inside [`guard`], so a panic in plugin code comes back to the
//! host as a [`PluginError`] of kind `PANIC` instead of aborting the process.
//!
//! ```ignore
//! struct MyPlugin;
//! impl plugin_sdk::Plugin for MyPlugin { /* descriptor, probe, load */ }
//! plugin_sdk::export_plugin!(MyPlugin);
//! ```

pub use plugin_api;

#[cfg(feature = "loader")]
pub mod loader;
#[cfg(feature = "testing")]
pub mod testing;

use abi_stable::std_types::{RResult, RVec};
use plugin_api::{
    embed::{EmbedRequest, EmbedResponse},
    image::{ImageRequest, ImageResponse},
    lora::{AdapterRequest, AdapterResponse},
    progress::{ProgressEvent, ProgressSinkMut},
    quant::{QuantizeReport, QuantizeRequest},
    score::{ScoreRequest, ScoreResponse, TokenizeRequest, TokenizeResponse},
    text::{
        GenerateOutput, GenerateRequest, GenerateResponse, StreamControl, StreamEvent, TokenSinkMut,
    },
    ErrorKind, EstimateRequest, LoadRequest, MemoryEstimate, ModelInfo, PluginDescriptor,
    PluginError, Probe, ProbeRequest,
};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Run `f`, turning a panic into a `PANIC` error (with the panic message) and the
/// `Result` into an FFI-safe `RResult`.
pub fn guard<T>(f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.into(),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-string payload".to_owned());
            RResult::RErr(PluginError::new(ErrorKind::PANIC, msg))
        }
    }
}

/// A plugin, in plain Rust. [`export_plugin!`] exposes it through the ABI.
pub trait Plugin {
    /// What the plugin is.
    fn descriptor() -> PluginDescriptor;
    /// Whether (and how well) it runs on this device, optionally for one model.
    fn probe(req: &ProbeRequest) -> Probe;
    /// Load a model.
    fn load(req: &LoadRequest) -> Result<Box<dyn LoadedModel>, PluginError>;
    /// The memory a load of `req.model` would take (weights, KV cache, runtime) and the
    /// dtype it would load as, from the files alone. Without it the host budgets the
    /// file size plus a margin.
    fn estimate(_req: &EstimateRequest) -> Result<MemoryEstimate, PluginError> {
        Err(PluginError::unsupported("memory estimates"))
    }
    /// Convert a model (`quant` plugins), reporting to `progress`; stop with `CANCELLED`
    /// (leaving nothing half-written) when it answers `StreamControl::Stop`.
    fn convert(
        _req: &QuantizeRequest,
        _progress: &mut dyn Progress,
    ) -> Result<QuantizeReport, PluginError> {
        Err(PluginError::unsupported("model conversion"))
    }
}

/// A loaded model, in plain Rust. Implement the methods of the kinds it serves.
pub trait LoadedModel: Send + Sync + 'static {
    /// Facts about the model.
    fn info(&self) -> ModelInfo;
    /// Text embeddings.
    fn embed(&self, _req: &EmbedRequest) -> Result<EmbedResponse, PluginError> {
        Err(PluginError::unsupported("embeddings"))
    }
    /// Text generation; `sink` receives stream events (and may stop the generation),
    /// finished sequences and, for continuous batching, requests that join.
    fn generate(
        &self,
        _req: &GenerateRequest,
        _sink: &mut dyn Sink,
    ) -> Result<GenerateResponse, PluginError> {
        Err(PluginError::unsupported("text generation"))
    }
    /// Image generation; a `progress` report per step (it may cancel).
    fn generate_image(
        &self,
        _req: &ImageRequest,
        _progress: &mut dyn Progress,
    ) -> Result<ImageResponse, PluginError> {
        Err(PluginError::unsupported("image generation"))
    }
    /// LoRA adapters.
    fn adapter(&self, _req: &AdapterRequest) -> Result<AdapterResponse, PluginError> {
        Err(PluginError::unsupported("LoRA adapters"))
    }
    /// Tokenize text as generation does.
    fn tokenize(&self, _req: &TokenizeRequest) -> Result<TokenizeResponse, PluginError> {
        Err(PluginError::unsupported("tokenizing"))
    }
    /// Teacher-forced log-probabilities of a token sequence.
    fn score(&self, _req: &ScoreRequest) -> Result<ScoreResponse, PluginError> {
        Err(PluginError::unsupported("scoring"))
    }
}

/// One LoRA adapter a generation request applies.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterChoice {
    /// The name it was loaded under.
    pub name: String,
    /// Its scale for this request (`None`: the one it was loaded with).
    pub scale: Option<f32>,
}

/// The adapters `req` applies, in order: its
/// [`ADAPTERS_OPTION`](plugin_api::text::ADAPTERS_OPTION) list when set, else its
/// `adapter` alone; none for a request on the base model.
pub fn adapters_of(req: &GenerateRequest) -> Result<Vec<AdapterChoice>, PluginError> {
    let bad = |msg: String| PluginError::new(ErrorKind::INVALID_REQUEST, msg);
    let key = plugin_api::text::ADAPTERS_OPTION;
    let opts: serde_json::Value = match req.options.as_str() {
        "" => serde_json::Value::Null,
        s => serde_json::from_str(s).map_err(|e| bad(format!("request options: {e}")))?,
    };
    let Some(list) = opts.get(key) else {
        return Ok(req
            .adapter
            .as_ref()
            .into_option()
            .map(|n| AdapterChoice {
                name: n.to_string(),
                scale: None,
            })
            .into_iter()
            .collect());
    };
    let list = list
        .as_array()
        .ok_or_else(|| bad(format!("request option `{key}`: a list expected")))?;
    list.iter()
        .map(|a| {
            let name = a
                .get("name")
                .and_then(|n| n.as_str())
                .ok_or_else(|| bad(format!("request option `{key}`: each entry needs a `name`")))?;
            let scale = match a.get("scale") {
                None | Some(serde_json::Value::Null) => None,
                Some(s) => Some(s.as_f64().filter(|s| s.is_finite()).ok_or_else(|| {
                    bad(format!(
                        "request option `{key}`: `scale` of `{name}` is not a number"
                    ))
                })? as f32),
            };
            Ok(AdapterChoice {
                name: name.to_owned(),
                scale,
            })
        })
        .collect()
}

/// `choices` resolved against the adapters a model has loaded, in order: each adapter and
/// its scale for this request (`load_scale` of it when the request names none), those at
/// scale 0 left out. An adapter not loaded is an error (the message, for the plugin's own
/// error type) naming what is.
pub fn resolve_adapters<'a, T>(
    choices: &[AdapterChoice],
    loaded: &'a std::collections::BTreeMap<String, T>,
    load_scale: impl Fn(&T) -> f32,
) -> Result<Vec<(&'a str, &'a T, f32)>, String> {
    let mut live = Vec::with_capacity(choices.len());
    for c in choices {
        let Some((name, a)) = loaded.get_key_value(&c.name) else {
            let names: Vec<&str> = loaded.keys().map(String::as_str).collect();
            return Err(format!(
                "adapter `{}` is not loaded on this model (loaded: {})",
                c.name,
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            ));
        };
        let scale = c.scale.unwrap_or_else(|| load_scale(a));
        if scale != 0.0 {
            live.push((name.as_str(), a, scale));
        }
    }
    Ok(live)
}

/// The plugin's side of the host's `TokenSink`, in plain Rust.
pub trait Sink {
    /// A stream event; [`StreamControl::Stop`] cancels the event's request.
    fn event(&mut self, ev: &StreamEvent) -> StreamControl;
    /// A request to join the running batch, if one waits (continuous batching).
    fn poll_join(&mut self) -> Option<GenerateRequest> {
        None
    }
    /// Sequence `index` ended with `output`.
    fn finished(&mut self, _index: u32, _output: &GenerateOutput) {}
    /// The last joined request was refused (`RESOURCE_EXHAUSTED`: ask again only after a
    /// sequence ends).
    fn rejected(&mut self, _error: &PluginError) {}
    /// Sequence `index` reused `tokens` cached prompt tokens (0: none); once per sequence,
    /// before its first event, from providers with a prompt cache.
    fn prompt_cached(&mut self, _index: u32, _tokens: u32) {}
}

impl Sink for TokenSinkMut<'_> {
    fn event(&mut self, ev: &StreamEvent) -> StreamControl {
        self.on_event(ev)
    }
    fn poll_join(&mut self) -> Option<GenerateRequest> {
        self.poll_join().into_option()
    }
    fn finished(&mut self, index: u32, output: &GenerateOutput) {
        self.on_finished(index, output)
    }
    fn rejected(&mut self, error: &PluginError) {
        self.on_rejected(error)
    }
    fn prompt_cached(&mut self, index: u32, tokens: u32) {
        self.on_prompt_cached(index, tokens)
    }
}

/// The plugin's side of the host's `ProgressSink`, in plain Rust.
pub trait Progress {
    /// Work advanced; [`StreamControl::Stop`] asks the plugin to cancel.
    fn report(&mut self, ev: &ProgressEvent) -> StreamControl;

    /// [`report`](Self::report) `done` of `total` steps of `stage`, now at `message`
    /// (no preview).
    fn step(&mut self, stage: &str, done: u64, total: u64, message: &str) -> StreamControl {
        self.report(&ProgressEvent {
            stage: stage.into(),
            done,
            total,
            message: message.into(),
            preview: Default::default(),
        })
    }
}

impl Progress for ProgressSinkMut<'_> {
    fn report(&mut self, ev: &ProgressEvent) -> StreamControl {
        self.on_progress(ev)
    }
}

/// A [`Progress`] that ignores reports and never cancels (tests, batch tools).
pub struct NoProgress;

impl Progress for NoProgress {
    fn report(&mut self, _ev: &ProgressEvent) -> StreamControl {
        StreamControl::Continue
    }
}

/// A [`Sink`] from a closure over stream events (tests, examples, simple hosts).
pub struct FnSink<F>(pub F);

impl<F: FnMut(&StreamEvent) -> StreamControl> Sink for FnSink<F> {
    fn event(&mut self, ev: &StreamEvent) -> StreamControl {
        (self.0)(ev)
    }
}

/// Adapts a [`LoadedModel`] to the ABI trait, guarding every call.
pub struct Guarded(pub Box<dyn LoadedModel>);

impl plugin_api::Model for Guarded {
    fn info(&self) -> ModelInfo {
        // `info` has no error channel; a panic here would abort, so fall back to a stub
        // that names the problem.
        match guard(|| Ok(self.0.info())) {
            RResult::ROk(i) => i,
            RResult::RErr(e) => ModelInfo {
                id: "?".into(),
                kind: plugin_api::ModelKind(0),
                architecture: "?".into(),
                backend: format!("error: {e}").into(),
                dtype: "?".into(),
                dim: 0,
                max_tokens: 0,
                parameters: 0,
                weight_bytes: 0,
            },
        }
    }
    fn embed(&self, req: &EmbedRequest) -> RResult<EmbedResponse, PluginError> {
        guard(|| self.0.embed(req))
    }
    fn generate(
        &self,
        req: &GenerateRequest,
        mut sink: TokenSinkMut<'_>,
    ) -> RResult<GenerateResponse, PluginError> {
        guard(|| self.0.generate(req, &mut sink))
    }
    fn generate_image(
        &self,
        req: &ImageRequest,
        mut progress: ProgressSinkMut<'_>,
    ) -> RResult<ImageResponse, PluginError> {
        guard(|| self.0.generate_image(req, &mut progress))
    }
    fn adapter(&self, req: &AdapterRequest) -> RResult<AdapterResponse, PluginError> {
        guard(|| self.0.adapter(req))
    }
    fn tokenize(&self, req: &TokenizeRequest) -> RResult<TokenizeResponse, PluginError> {
        guard(|| self.0.tokenize(req))
    }
    fn score(&self, req: &ScoreRequest) -> RResult<ScoreResponse, PluginError> {
        guard(|| self.0.score(req))
    }
}

/// The folder the host keeps for files plugins derive from models (`DeviceInfo.options`
/// key `cache_dir`), if it gives one.
pub fn cache_dir(device: &plugin_api::DeviceInfo) -> Option<std::path::PathBuf> {
    let options: serde_json::Value = serde_json::from_str(device.options.as_str()).ok()?;
    options
        .get("cache_dir")?
        .as_str()
        .filter(|d| !d.is_empty())
        .map(Into::into)
}

/// Convenience: an `RVec<RString>` from string slices.
pub fn rstrings(items: &[&str]) -> RVec<abi_stable::std_types::RString> {
    items.iter().map(|s| (*s).into()).collect()
}

/// Export `$plugin` (a type implementing [`Plugin`]) as this library's root module.
/// The plugin crate must depend on `abi_stable` (the attribute macro refers to it).
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[::abi_stable::export_root_module]
        pub fn mlxengine_root_module() -> $crate::plugin_api::PluginModRef {
            use ::abi_stable::prefix_type::PrefixTypeTrait;
            use $crate::plugin_api as api;

            extern "C" fn descriptor() -> api::PluginResult<api::PluginDescriptor> {
                $crate::guard(|| Ok(<$plugin as $crate::Plugin>::descriptor()))
            }
            extern "C" fn probe(req: &api::ProbeRequest) -> api::PluginResult<api::Probe> {
                $crate::guard(|| Ok(<$plugin as $crate::Plugin>::probe(req)))
            }
            extern "C" fn load_model(req: &api::LoadRequest) -> api::PluginResult<api::ModelBox> {
                $crate::guard(|| {
                    let model = <$plugin as $crate::Plugin>::load(req)?;
                    Ok(api::Model_TO::from_value(
                        $crate::Guarded(model),
                        ::abi_stable::sabi_trait::TD_Opaque,
                    ))
                })
            }
            extern "C" fn estimate(
                req: &api::EstimateRequest,
            ) -> api::PluginResult<api::MemoryEstimate> {
                $crate::guard(|| <$plugin as $crate::Plugin>::estimate(req))
            }
            extern "C" fn convert(
                req: &api::quant::QuantizeRequest,
                mut progress: api::progress::ProgressSinkMut<'_>,
            ) -> api::PluginResult<api::quant::QuantizeReport> {
                $crate::guard(|| <$plugin as $crate::Plugin>::convert(req, &mut progress))
            }

            api::PluginMod {
                api_version: api::API_VERSION,
                descriptor,
                probe,
                load_model,
                estimate,
                convert,
            }
            .leak_into_prefix()
        }
    };
}
