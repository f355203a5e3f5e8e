//! MLXEngine's own folders (the Hugging Face cache's are [`hub::paths`]).

use std::path::PathBuf;

/// MLXEngine's cache root: `$MLXENGINE_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/mlxengine`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MLXENGINE_CACHE") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| hub::paths::home().join(".cache"));
    base.join("mlxengine")
}

/// Local models by id: `$MLXENGINE_MODELS`, else `<cache>/models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("MLXENGINE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models"))
}
