//! Where a model's files are: its registry path, the models folder, or a complete
//! snapshot in the Hugging Face cache; and the [`ModelSpec`] plugins see.

use crate::{
    paths::models_dir,
    registry::{ModelEntry, Source},
    Engine, HostError,
};
use abi_stable::std_types::RString;
use plugin_api::ModelSpec;
use std::path::{Path, PathBuf};

impl Engine {
    /// The local directory (or file) of `entry`.
    pub fn local_path(&self, entry: &ModelEntry) -> Result<PathBuf, HostError> {
        let mut tried = Vec::new();
        if let Source::Path(p) = &entry.source {
            if p.exists() {
                return Ok(p.clone());
            }
            tried.push(p.clone());
        }
        let in_models = models_dir().join(&entry.id);
        if in_models.exists() {
            return Ok(in_models);
        }
        tried.push(in_models);
        if let Source::Hub {
            repo,
            revision,
            files,
        } = &entry.source
        {
            let (snap, missing) = hub::cache::RepoCache::new(&hub::paths::hf_hub_cache(), repo)
                .snapshot_of(revision, files);
            if snap.is_dir() && missing.is_empty() {
                return Ok(snap);
            }
            tried.push(snap);
        }
        let hint = match &entry.source {
            Source::Hub { repo, .. } => {
                format!("; it comes from the Hugging Face Hub repo `{repo}`")
            }
            Source::Path(_) => String::new(),
        };
        Err(HostError::NotLocal {
            id: entry.id.clone(),
            tried: tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            hint,
        })
    }
}

/// What plugins see of `entry` whose files are at `path` (`None`: not local yet).
pub(crate) fn spec(entry: &ModelEntry, path: Option<&Path>) -> ModelSpec {
    let s = |o: &Option<String>| o.as_deref().map(RString::from).into();
    ModelSpec {
        id: entry.id.as_str().into(),
        kind: entry.kind,
        architecture: entry.architecture.as_str().into(),
        path: path
            .map(|p| p.display().to_string())
            .unwrap_or_default()
            .into(),
        quantization: s(&entry.quantization),
        dtype: s(&entry.dtype),
        context_length: entry.context_length.unwrap_or(0),
        system_prompt: s(&entry.system_prompt),
        extra_eos: entry
            .extra_eos
            .iter()
            .map(|e| RString::from(e.as_str()))
            .collect(),
        options: options(entry).into(),
    }
}

/// The entry's options as plugins get them: its `options` table, with `kv_cache` added.
fn options(entry: &ModelEntry) -> String {
    match (&entry.kv_cache, &entry.options) {
        (Some(kv), serde_json::Value::Object(m)) => {
            let mut m = m.clone();
            m.insert("kv_cache".into(), kv.as_str().into());
            serde_json::Value::Object(m).to_string()
        }
        _ => entry.options.to_string(),
    }
}
