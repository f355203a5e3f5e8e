//! The stable ABI between the MLXEngine host and its plugins.
//!
//! This crate is an *interface only*: FFI-safe data types (`StableAbi`), the root module
//! every plugin exports, and the [`Model`] trait object a plugin returns for a loaded
//! model. It has no logic and no MLX. Plugins are `cdylib`s built against it (most easily
//! through `mlxengine-plugin-sdk`); the host loads them with `abi_stable`, which checks
//! the layout of everything that crosses, and then checks [`API_VERSION`] itself.
//!
//! # Compatibility rules (see `docs/writing-a-plugin.md`)
//! - This crate's major version *is* [`API_VERSION`]; a minor release appends. A host
//!   loads every plugin built against the same major, older or newer minor.
//! - The ABI is **append-only** within a major: new root-module functions go after the
//!   last field (the host reads every field after `load_model` as an `Option`, so a
//!   plugin built against an older minor loads and answers "unsupported" for what it
//!   lacks); new [`Model`] methods go at the end with a default body (called when an
//!   older plugin's vtable lacks them); new enum-like values get new constants. Nothing
//!   is removed, reordered or changes type.
//! - Closed structs (requests, responses) never change layout; each carries an
//!   `options` JSON string for additions that do not warrant a new struct.
//! - Any change that breaks these rules bumps [`API_VERSION`] and the major version;
//!   the host refuses plugins built for another major, naming both numbers.

#![allow(non_local_definitions)] // emitted by abi_stable's #[sabi_trait] expansion

mod error;
mod types;

pub mod embed;
pub mod image;
pub mod lora;
pub mod progress;
pub mod quant;
pub mod score;
pub mod text;

pub use error::{ErrorKind, PluginError};
pub use types::{
    Accelerator, DeviceInfo, EstimateRequest, Features, LoadRequest, MemoryEstimate, ModelInfo,
    ModelKind, ModelSpec, PluginDescriptor, Probe, ProbeRequest,
};

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult},
    StableAbi,
};

/// Version of this interface. A plugin built for another version is refused at load.
pub const API_VERSION: u32 = 2;

/// Result type of every call that crosses the ABI.
pub type PluginResult<T> = RResult<T, PluginError>;

/// The root module a plugin exports (with `#[export_root_module]`).
///
/// A prefix type: the fields up to `load_model` are in every plugin of this major
/// version; the host reads the later ones through the generated accessors, which return
/// `None` when a plugin built against an older minor lacks them.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(option))]
pub struct PluginMod {
    /// The [`API_VERSION`] the plugin was built against.
    pub api_version: u32,
    /// What the plugin is: name, kinds, architectures, features.
    pub descriptor: extern "C" fn() -> PluginResult<PluginDescriptor>,
    /// Whether (and how well) the plugin can run on this device, optionally for one model.
    /// A score of 0 means it cannot.
    pub probe: extern "C" fn(&ProbeRequest) -> PluginResult<Probe>,
    /// Load a model; the returned object serves requests until dropped.
    #[sabi(last_prefix_field)]
    pub load_model: extern "C" fn(&LoadRequest) -> PluginResult<ModelBox>,
    /// The memory loading a model would take, and the dtype it would load as, from the
    /// model's files (nothing loaded). The host only adds and compares the parts.
    pub estimate: extern "C" fn(&EstimateRequest) -> PluginResult<MemoryEstimate>,
    /// Convert a model (the `quant` kind), reporting progress; the sink can cancel.
    /// Plugins of other kinds answer [`ErrorKind::UNSUPPORTED`].
    pub convert: extern "C" fn(
        &quant::QuantizeRequest,
        progress::ProgressSinkMut<'_>,
    ) -> PluginResult<quant::QuantizeReport>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "mlxengine_plugin";
    const NAME: &'static str = "mlxengine_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// A loaded model, owned by the host. Dropping it frees the model in the plugin.
///
/// Every method has a default that answers [`ErrorKind::UNSUPPORTED`], so a plugin
/// implements only what its kind serves, and methods can be appended compatibly.
#[sabi_trait]
pub trait Model: Send + Sync {
    /// Facts about the loaded model.
    #[sabi(last_prefix_field)]
    fn info(&self) -> ModelInfo;

    /// Text embeddings (`embed` kind).
    fn embed(&self, _req: &embed::EmbedRequest) -> PluginResult<embed::EmbedResponse> {
        RResult::RErr(PluginError::unsupported("embeddings"))
    }

    /// Text generation (`llm`, and `vlm` with images in the messages). Streamed events go
    /// to `sink` when `req.stream` is set; the sink can stop the generation.
    fn generate(
        &self,
        _req: &text::GenerateRequest,
        _sink: text::TokenSinkMut<'_>,
    ) -> PluginResult<text::GenerateResponse> {
        RResult::RErr(PluginError::unsupported("text generation"))
    }

    /// Image generation (`diffusion` kind): PNG bytes out; a progress report per
    /// denoising step, and the sink can cancel.
    fn generate_image(
        &self,
        _req: &image::ImageRequest,
        _progress: progress::ProgressSinkMut<'_>,
    ) -> PluginResult<image::ImageResponse> {
        RResult::RErr(PluginError::unsupported("image generation"))
    }

    /// LoRA adapters: load, unload, fuse into the base weights, list.
    fn adapter(&self, _req: &lora::AdapterRequest) -> PluginResult<lora::AdapterResponse> {
        RResult::RErr(PluginError::unsupported("LoRA adapters"))
    }

    /// Tokenize text as generation does (`llm`; plugin-api 2.2).
    fn tokenize(&self, _req: &score::TokenizeRequest) -> PluginResult<score::TokenizeResponse> {
        RResult::RErr(PluginError::unsupported("tokenizing"))
    }

    /// Teacher-forced log-probabilities of a token sequence (`llm`; plugin-api 2.2).
    fn score(&self, _req: &score::ScoreRequest) -> PluginResult<score::ScoreResponse> {
        RResult::RErr(PluginError::unsupported("scoring"))
    }
}

/// An owned, type-erased [`Model`] crossing the ABI.
pub type ModelBox = Model_TO<'static, RBox<()>>;
