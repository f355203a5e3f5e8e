//! Admission: the plugin's memory estimate (or one from the files' facts) against the
//! budget, evicting idle models least recently used first.

use crate::{
    fit, load::LoadedModel, plugins::PluginHandle, registry::ModelEntry, resolve::spec, Engine,
    HostError,
};
use plugin_api::{ErrorKind, EstimateRequest};
use std::{path::Path, sync::Arc};

impl Engine {
    /// Admission control: check the plugin's estimate against the budget (the plugin is
    /// told what is free, and may choose a smaller load dtype to fit), unloading idle
    /// models, least recently used first, to make room. Returns the entry to load (with
    /// the dtype the plugin estimated for), its estimate, and the KV-cache part of it.
    pub(crate) fn admit(
        &self,
        mut entry: ModelEntry,
        path: &Path,
        plugin: &PluginHandle,
        key: &str,
    ) -> Result<(ModelEntry, u64, u64), HostError> {
        let budget = self.memory_budget();
        let (in_use, _) = self.memory_in_use();
        // What is free now (at least 1: 0 would mean "no limit" to the plugin).
        let free = budget.saturating_sub(in_use).max(1);
        let est = match self.estimate_within(&entry, path, plugin, None, 1, free) {
            Ok((_, e)) => e,
            Err(e) => {
                tracing::warn!(model = %entry.id, "no memory estimate, loading unchecked: {e}");
                return Ok((entry, 0, 0));
            }
        };
        if entry.dtype.is_none() {
            entry.dtype = est.dtype.clone();
        }
        let need = est.total_bytes;
        let note = if est.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", est.note)
        };
        loop {
            let (in_use, keys) = self.memory_in_use();
            if in_use + need <= budget {
                if !note.is_empty() {
                    tracing::info!(model = %entry.id, "{}", note.trim());
                }
                return Ok((entry, need, est.kv_cache_bytes));
            }
            if self.evict_lru(key).is_none() {
                let mut would_fit = Vec::new();
                if !keys.is_empty() {
                    would_fit.push(format!("unloading {}", keys.join(", ")));
                }
                would_fit.push("a smaller quantization of the model".to_owned());
                return Err(HostError::OverBudget(format!(
                    "model `{}` needs about {} (weights {} as {}, KV cache {} for {} tokens, runtime {}){note}, \
                     but the memory budget is {} with {} in use by loaded models{}; \
                     set --memory-budget (or MLXENGINE_MEMORY_BUDGET) higher, or try {}",
                    entry.id,
                    fit::human(need),
                    fit::human(est.weights_bytes),
                    est.weights_as,
                    fit::human(est.kv_cache_bytes),
                    est.context,
                    fit::human(est.runtime_bytes),
                    fit::human(budget),
                    fit::human(in_use),
                    if keys.is_empty() { String::new() } else { format!(" ({})", keys.join(", ")) },
                    would_fit.join(", or "),
                )));
            }
        }
    }

    /// The bytes model `m`'s KV cache may take for its running batch (`None`: no budget):
    /// the budget less what every loaded model is charged, plus `m`'s own KV share
    /// (what it was admitted with for its working context). Sent to the plugin with
    /// each call ([`plugin_api::text::KV_BUDGET_OPTION`]), so a request's KV cache —
    /// n × (prompt + max_tokens), capped by the context — is counted before it is taken.
    pub(crate) fn kv_budget(&self, m: &LoadedModel) -> Option<u64> {
        let budget = self.memory_budget();
        if budget == u64::MAX || m.estimate_bytes == 0 {
            return None;
        }
        let (in_use, _) = self.memory_in_use();
        Some(budget.saturating_sub(in_use).saturating_add(m.kv_bytes))
    }

    /// Unload the least recently used model that no request holds (never `keep`).
    /// Returns its key.
    pub fn evict_lru(&self, keep: &str) -> Option<String> {
        let mut map = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let used = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
        let victim = map
            .iter()
            .filter(|(k, m)| k.as_str() != keep && Arc::strong_count(m) == 1)
            .min_by_key(|(k, _)| used.get(k.as_str()).copied())
            .map(|(k, _)| k.clone())?;
        let gone = map.remove(&victim);
        // Dropped after the locks are released (see `Engine::unload_idle`).
        drop((map, used));
        drop(gone);
        tracing::info!(model = %victim, "unloaded (least recently used) to make room");
        Some(victim)
    }

    /// Facts and memory estimate of model `entry` served by `plugin` for `batch`
    /// sequences of `context` tokens (default: the working context the engine admits
    /// models with, [`WORKING_CONTEXT`] tokens, one sequence).
    pub fn estimate(
        &self,
        entry: &ModelEntry,
        plugin: &PluginHandle,
        context: Option<u64>,
        batch: u64,
    ) -> Result<(Option<fit::Facts>, fit::Estimate), HostError> {
        let path = self.local_path(entry)?;
        self.estimate_within(entry, &path, plugin, context, batch, 0)
    }

    /// [`estimate`](Self::estimate), telling the plugin that `available` bytes are free
    /// (0 = no limit) so it can choose what fits.
    fn estimate_within(
        &self,
        entry: &ModelEntry,
        path: &Path,
        plugin: &PluginHandle,
        context: Option<u64>,
        batch: u64,
        available: u64,
    ) -> Result<(Option<fit::Facts>, fit::Estimate), HostError> {
        let failed = |reason: String| HostError::Estimate {
            id: entry.id.clone(),
            reason,
        };
        // Facts are for people and for plugins without an estimate; a model whose files
        // are not weights the host can read (a plugin's own format) is the plugin's to
        // size.
        let facts = fit::facts(path);
        let ctx = context.unwrap_or_else(|| working_context(entry, facts.as_ref().ok()));
        let name = plugin.descriptor.name.as_str();
        let from_files = |facts: &Result<fit::Facts, String>| {
            facts
                .as_ref()
                .map(|f| fit::Estimate::from_files(name, f, ctx, batch))
                .map_err(|e| failed(e.clone()))
        };
        let req = EstimateRequest {
            model: spec(entry, Some(path)),
            device: self.device.clone(),
            context: ctx.min(u64::from(u32::MAX)) as u32,
            batch: batch.clamp(1, u64::from(u32::MAX)) as u32,
            memory_available: available,
        };
        let Some(estimated) = plugin.estimate(&req) else {
            let est = from_files(&facts)?;
            return Ok((facts.ok(), est));
        };
        let est = match estimated.into_result() {
            Ok(m) => fit::Estimate::from_plugin(name, &m),
            Err(e) if e.kind == ErrorKind::UNSUPPORTED => from_files(&facts)?,
            Err(e) => return Err(failed(e.to_string())),
        };
        Ok((facts.ok(), est))
    }
}

/// Tokens per sequence a model is admitted for when no request says otherwise.
pub const WORKING_CONTEXT: u64 = 2048;

/// The context a model is admitted for: [`WORKING_CONTEXT`], or less when the model's
/// own (or the registry's) context is shorter.
pub fn working_context(entry: &ModelEntry, facts: Option<&fit::Facts>) -> u64 {
    let mut c = WORKING_CONTEXT;
    if let Some(n) = facts.map(|f| f.context_length).filter(|&n| n > 0) {
        c = c.min(n);
    }
    if let Some(r) = entry.context_length {
        c = c.min(u64::from(r));
    }
    c
}
