//! Where the Hugging Face cache and state live, as `huggingface_hub` resolves them.

use std::path::PathBuf;

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, else `<hf_home>/hub`.
pub fn hf_hub_cache() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        Some(d) => d.into(),
        None => hf_home().join("hub"),
    }
}

/// Hugging Face's state folder: `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else
/// `~/.cache/huggingface` (as `huggingface_hub` resolves it).
pub fn hf_home() -> PathBuf {
    if let Some(d) = std::env::var_os("HF_HOME").filter(|d| !d.is_empty()) {
        return d.into();
    }
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache"))
        .join("huggingface")
}

/// `$HOME`, else `/`.
pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}
