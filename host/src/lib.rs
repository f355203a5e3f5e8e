//! MLXEngine host library: the model registry, plugin discovery and loading, device
//! facts, and the [`Engine`] that dispatches requests to the best plugin.
//!
//! The `mlxengine` binary is a thin CLI over this library; servers and tests use the
//! same API.

pub mod device;
pub mod engine;
pub mod fit;
pub mod hub;
pub mod plugins;
pub mod registry;
pub mod server;
pub mod store;

pub use engine::{Candidate, Engine, HostError, LoadedModel};
pub use plugins::{PluginHandle, PluginSet};
pub use registry::{ModelEntry, Registry, RegistryError, Source};

use std::path::PathBuf;

/// The registry shipped with this build, used when no `registry.toml` file is found.
pub const BUILTIN_REGISTRY: &str = include_str!("../../registry.toml");

/// Where the shipped registry is read from: `$MLXENGINE_REGISTRY`, else `registry.toml`
/// beside the executable, else the source tree this binary was built from (a checkout),
/// else `None` (the built-in copy, [`BUILTIN_REGISTRY`]).
pub fn shipped_registry_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MLXENGINE_REGISTRY") {
        return Some(p.into());
    }
    let beside = std::env::current_exe()
        .ok()?
        .parent()?
        .join("registry.toml");
    if beside.is_file() {
        return Some(beside);
    }
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("registry.toml");
    source
        .is_file()
        .then(|| source.canonicalize().unwrap_or(source))
}

/// The user's runtime registry (`mlxengine add` writes here; merged on every run):
/// `$MLXENGINE_HOME/registry.toml`, else `${XDG_CONFIG_HOME:-~/.config}/mlxengine/registry.toml`.
pub fn user_registry_path() -> PathBuf {
    if let Some(h) = std::env::var_os("MLXENGINE_HOME") {
        return PathBuf::from(h).join("registry.toml");
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".config")
        });
    base.join("mlxengine").join("registry.toml")
}

/// The registry a command sees: shipped, then the user's runtime registry, then `extra`
/// files, in that order. A duplicate id across them is an error.
pub fn load_registry(extra: &[PathBuf]) -> Result<Registry, RegistryError> {
    let mut reg = Registry::new();
    match shipped_registry_path() {
        Some(p) => {
            reg.merge_file(&p)?;
        }
        None => {
            reg.merge_str(
                BUILTIN_REGISTRY,
                "registry.toml (built in)",
                std::path::Path::new("."),
            )?;
        }
    }
    let user = user_registry_path();
    if user.is_file() {
        reg.merge_file(&user)?;
    }
    for f in extra {
        reg.merge_file(f)?;
    }
    Ok(reg)
}
