//! Models from the Hub as the engine sees them: what a repo is (kind, architecture,
//! quantization, context length — from its `config.json` or GGUF header, fetched before
//! any weights), whether a loaded plugin serves it, pulling it, and registering it.

use crate::{
    registry::{ModelEntry, Source},
    Engine, HostError,
};
use hub::{Hub, HubError, RepoListing, RepoRef, Selection};
use plugin_api::{Features, ModelKind};
use serde_json::Value as Json;

/// What a repo holds, before downloading it.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub listing: RepoListing,
    /// The files `pull` would fetch.
    pub selection: Selection,
    pub kind: ModelKind,
    pub architecture: String,
    pub quantization: Option<String>,
    pub context_length: Option<u32>,
    /// Bytes `pull` would fetch.
    pub download_bytes: u64,
    /// The plugin that would serve it, or why none would.
    pub plugin: Result<String, String>,
}

impl Inspection {
    /// A registry entry for it (`id` given, or derived from the repo name).
    pub fn entry(&self, id: Option<&str>) -> ModelEntry {
        let id = id
            .map(str::to_owned)
            .unwrap_or_else(|| default_id(&self.listing.repo));
        let mut e = ModelEntry::new(
            &id,
            self.kind,
            &self.architecture,
            Source::Hub {
                repo: self.listing.repo.clone(),
                revision: self.listing.revision.clone(),
                files: self
                    .selection
                    .files
                    .iter()
                    .map(|f| f.path.clone())
                    .collect(),
            },
        );
        e.name = self.listing.repo.clone();
        e.description = format!("pulled from {}", self.listing.repo);
        e.quantization = self.quantization.clone();
        e.context_length = self.context_length;
        e.size_bytes = Some(self.download_bytes);
        e
    }
}

/// A registry id from a repo name: lowercase, `[a-z0-9._-]`.
pub fn default_id(repo: &str) -> String {
    let name = repo.rsplit('/').next().unwrap_or(repo).to_ascii_lowercase();
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    // Ids start with a letter or digit (`crate::registry::check_id`).
    id.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// Facts from a `config.json`.
fn from_config(
    c: &Json,
    has: &dyn Fn(&str) -> bool,
) -> Option<(ModelKind, String, Option<u32>, Option<String>)> {
    let model_type = c.get("model_type")?.as_str()?.to_ascii_lowercase();
    let archs: Vec<&str> = c
        .get("architectures")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let kind = if has("model_index.json") {
        ModelKind::DIFFUSION
    } else if has("modules.json")
        || has("sentence_bert_config.json")
        || (archs.iter().all(|a| !a.ends_with("ForCausalLM"))
            && matches!(
                model_type.as_str(),
                "bert"
                    | "xlm-roberta"
                    | "roberta"
                    | "mpnet"
                    | "nomic_bert"
                    | "distilbert"
                    | "modernbert"
            ))
    {
        ModelKind::EMBED
    } else if c.get("vision_config").is_some() {
        ModelKind::VLM
    } else {
        ModelKind::LLM
    };
    let ctx = c
        .get("max_position_embeddings")
        .or_else(|| {
            c.get("text_config")
                .and_then(|t| t.get("max_position_embeddings"))
        })
        .and_then(Json::as_u64)
        .map(|v| v.min(u32::MAX as u64) as u32);
    let quant = c
        .get("quantization")
        .or_else(|| c.get("quantization_config"))
        .and_then(|q| {
            q.get("bits")
                .and_then(Json::as_u64)
                .map(|b| format!("{b}bit"))
                .or_else(|| {
                    q.get("quant_method")
                        .and_then(Json::as_str)
                        .map(str::to_owned)
                })
        });
    Some((kind, model_type, ctx, quant))
}

/// Inspect `r`: list it, choose files, read its config or GGUF header, ask the plugins.
pub fn inspect(
    engine: &Engine,
    hub: &Hub,
    r: &RepoRef,
    include: &[String],
    exclude: &[String],
) -> Result<Inspection, HubError> {
    let listing = hub.listing(r)?;
    let selection = hub::select_files(&listing.files, include, exclude)?;
    if selection.files.is_empty() {
        return Err(HubError::Other(format!(
            "nothing to download from `{r}`: none of its {} file(s) were selected{}",
            listing.files.len(),
            if include.is_empty() {
                ""
            } else {
                " by --include"
            }
        )));
    }
    // What it is comes from the repo's config.json or GGUF header, whatever was selected.
    let has = |p: &str| listing.files.iter().any(|f| f.path == p);
    let mut facts = None;
    if has("config.json") {
        let bytes = hub
            .fetch_small(&listing, "config.json", 8 << 20)?
            .unwrap_or_default();
        let c: Json = serde_json::from_slice(&bytes).map_err(|e| {
            HubError::Other(format!("`config.json` of `{r}` is not valid JSON: {e}"))
        })?;
        facts = from_config(&c, &has);
        if facts.is_none() {
            return Err(HubError::Other(format!(
                "`config.json` of `{r}` has no `model_type`; cannot tell its architecture"
            )));
        }
    } else if let Some(g) = selection
        .files
        .iter()
        .chain(&listing.files)
        .find(|f| f.path.ends_with(".gguf"))
    {
        let mut len = 2 << 20;
        loop {
            let prefix = hub.fetch_prefix(&listing, g, len)?;
            match gguf::metadata_from_prefix(&prefix) {
                Ok(Some(md)) => {
                    let s = |k: &str| md.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                    let arch = s("general.architecture").ok_or_else(|| {
                        HubError::Other(format!("`{}` of `{r}` names no general.architecture", g.path))
                    })?;
                    let ctx = md
                        .get(&format!("{arch}.context_length"))
                        .and_then(|v| v.as_i64())
                        .map(|v| v.clamp(0, u32::MAX as i64) as u32);
                    let quant = hub::select::gguf_quant(&g.path);
                    facts = Some((ModelKind::LLM, arch, ctx, quant));
                    break;
                }
                Ok(None) if len < g.size && len < (64 << 20) => len *= 4,
                Ok(None) => {
                    return Err(HubError::Other(format!(
                        "`{}` of `{r}`: its GGUF metadata is larger than 64 MB or the file is truncated",
                        g.path
                    )))
                }
                Err(e) => return Err(HubError::Other(format!("`{}` of `{r}`: {e}", g.path))),
            }
        }
    }
    let Some((kind, architecture, context_length, quantization)) = facts else {
        return Err(HubError::Other(format!(
            "cannot tell what `{r}` is: no config.json or .gguf among the selected files ({})",
            selection
                .files
                .iter()
                .map(|f| f.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let download_bytes = selection.total_bytes();
    let mut insp = Inspection {
        listing,
        selection,
        kind,
        architecture,
        quantization,
        context_length,
        download_bytes,
        plugin: Err(String::new()),
    };
    let probe = insp.entry(None);
    insp.plugin = match engine.select(&probe, Features::NONE) {
        Ok(p) => Ok(p.descriptor.name.to_string()),
        Err(HostError::NoPlugin { reason, .. }) => Err(reason),
        Err(e) => Err(e.to_string()),
    };
    Ok(insp)
}

/// Refuse a repo no plugin serves, before its weights are fetched.
pub fn require_supported(i: &Inspection) -> Result<(), HubError> {
    match &i.plugin {
        Ok(_) => Ok(()),
        Err(why) => Err(HubError::Other(format!(
            "`{}` is a `{}` model of architecture `{}`, which no loaded plugin serves ({why}); nothing was downloaded (use --force to fetch it anyway)",
            i.listing.repo, i.kind, i.architecture
        ))),
    }
}

/// Make a registry model local: download its Hub files (verified, into the HF cache)
/// unless offline, where the error names what is missing.
pub fn fetch_entry(entry: &ModelEntry, hub: &Hub) -> Result<std::path::PathBuf, HubError> {
    let Source::Hub {
        repo,
        revision,
        files,
    } = &entry.source
    else {
        return Err(HubError::Other(format!(
            "model `{}` comes from a local path, not the Hub",
            entry.id
        )));
    };
    let r = RepoRef {
        repo: repo.clone(),
        revision: revision.clone(),
    };
    hub::validate_repo_id(repo)?;
    if hub.config().offline {
        let (snap, missing) =
            hub::cache::RepoCache::new(&hub.config().cache_dir, repo).snapshot_of(revision, files);
        if snap.is_dir() && missing.is_empty() {
            return Ok(snap);
        }
        return Err(HubError::Offline {
            repo: r.to_string(),
            missing: if missing.is_empty() {
                format!("its snapshot for `{revision}` (not pulled yet)")
            } else {
                missing.join(", ")
            },
        });
    }
    let listing = hub.listing(&r)?;
    let sel = if files.is_empty() {
        hub::select_files(&listing.files, &[], &[])?.files
    } else {
        let mut out = Vec::new();
        for f in files {
            match listing.files.iter().find(|x| &x.path == f) {
                Some(x) => out.push(x.clone()),
                None => {
                    return Err(HubError::EntryNotFound {
                        repo: repo.clone(),
                        revision: revision.clone(),
                        file: f.clone(),
                    })
                }
            }
        }
        out
    };
    tracing::info!(model = %entry.id, repo = %r, "not local yet; downloading");
    let progress = hub::progress::Progress::new(hub::progress::Mode::detect(false));
    Ok(hub.pull(&listing, &sel, &progress)?.dir)
}

#[cfg(test)]
mod tests {
    use super::default_id;

    #[test]
    fn ids_from_repo_names_are_valid_registry_ids() {
        assert_eq!(default_id("HuggingFaceTB/SmolLM2-135M"), "smollm2-135m");
        assert_eq!(default_id("org/_private.Model v2"), "private.model-v2");
        for repo in ["a/_x", "a/-x", "a/.x", "a/Mixed_Case.gguf"] {
            let id = default_id(repo);
            assert!(crate::registry::check_id(&id).is_ok(), "{repo} → {id:?}");
        }
    }
}
