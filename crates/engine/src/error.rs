//! The engine's errors: each names the model, plugin, kind or feature involved.

use crate::registry::RegistryError;
use plugin_api::{ModelKind, PluginError};

/// Errors of the host library. Each names the model, plugin, kind or feature involved.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("unknown model `{id}` (registered: {known})")]
    UnknownModel { id: String, known: String },
    #[error("model `{id}` is a `{kind}` model, not `{wanted}`")]
    WrongKind {
        id: String,
        kind: ModelKind,
        wanted: ModelKind,
    },
    #[error("no loaded plugin can serve model `{id}`: {reason}")]
    NoPlugin { id: String, reason: String },
    #[error("model `{id}` is not available locally (looked in: {tried}){hint}")]
    NotLocal {
        id: String,
        tried: String,
        hint: String,
    },
    #[error("model `{id}` is not available locally (looked in: {tried}) and downloading it failed: {error}")]
    Fetch {
        id: String,
        tried: String,
        error: Box<hub::HubError>,
    },
    #[error(
        "no default `{kind}` model: {count} registered, none has `default = true`; pass --model"
    )]
    NoDefault { kind: ModelKind, count: usize },
    #[error("model `{id}`: cannot estimate its memory: {reason}")]
    Estimate { id: String, reason: String },
    #[error("{0}")]
    OverBudget(String),
    #[error("adapter `{id}`: {reason}")]
    Adapter { id: String, reason: String },
    #[error("model `{id}`: the request was cancelled")]
    Cancelled { id: String },
    #[error("model `{id}` (plugin `{plugin}`): {error}")]
    Plugin {
        id: String,
        plugin: String,
        error: PluginError,
    },
}
