//! The MLXEngine engine: the model registry, plugin discovery and loading, device facts,
//! and the [`Engine`] that selects the best plugin for a model, admits it against the
//! memory budget, resolves its files (fetching from the Hub when needed) and runs each
//! kind's calls.
//!
//! The CLI (`host/`) and the server (`crates/server`) are thin layers over this library:
//! they parse requests into the checked types of [`request`], and everything below
//! trusts them. This crate knows no HTTP and no terminal.

mod adapters;
mod admit;
mod convert;
pub mod device;
mod error;
pub mod fit;
mod image;
pub mod isolate;
mod load;
pub mod paths;
mod perplexity;
pub mod plugins;
pub mod registry;
pub mod request;
mod resolve;
mod run;
mod select;
pub mod store;

pub use adapters::AdapterStatus;
pub use admit::{working_context, WORKING_CONTEXT};
pub use error::HostError;
pub use load::{Engine, LoadedModel, DEFAULT_BUDGET_FRACTION};
pub use perplexity::Perplexity;
pub use plugins::{PluginHandle, PluginSet};
pub use registry::{load_registry, ModelEntry, Registry, RegistryError, Source};
pub use run::{GenerateSink, EMBED_CHUNK, EMBED_CHUNK_BYTES};
pub use select::{pin_matches, Candidate};
