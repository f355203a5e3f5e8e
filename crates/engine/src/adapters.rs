//! LoRA adapters: `lora` registry entries, applied on their base model inside the plugin
//! that holds the base's weights (a library cannot reach weights another one loaded).
//!
//! A request for a `lora` entry is served by its base with that adapter; a request may
//! also name adapters itself. Adapters load on the base when a request first needs them
//! (or through [`Engine::load_adapter`]), count against the memory budget with the base,
//! and go when the base is unloaded (to load again on the next request that needs them).

use crate::{
    load::LoadedModel,
    registry::{ModelEntry, Source},
    request::{AdapterUse, Generate},
    Engine, HostError,
};
use plugin_api::{
    lora::{AdapterOp, AdapterRequest},
    ModelKind,
};
use std::path::{Path, PathBuf};

/// A `lora` entry and where it is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterStatus {
    /// Its registry id.
    pub id: String,
    /// The registry id of its base model.
    pub base: String,
    /// Its scale when a request names none.
    pub scale: f32,
    /// The loaded copies of the base it is loaded on (keys of the loaded models).
    pub loaded_on: Vec<String>,
    /// Bytes it takes on each (0 when not loaded).
    pub bytes: u64,
}

fn adapter_error(id: &str, reason: impl Into<String>) -> HostError {
    HostError::Adapter {
        id: id.to_owned(),
        reason: reason.into(),
    }
}

impl Engine {
    /// The model that serves a request for `id`, and the request it gets: a `lora`
    /// entry is served by its base, with itself first among the request's adapters (at
    /// the scale the request gives it, else the entry's). Every adapter must be a `lora`
    /// entry for that base (same base id, same architecture).
    pub fn route(&self, id: &str, req: Generate) -> Result<(String, Generate), HostError> {
        let entry = self.entry(id)?;
        let (base, mut uses) = match entry.kind {
            ModelKind::LORA => (
                entry
                    .base
                    .clone()
                    .expect("registry: lora entries have a base"),
                vec![AdapterUse {
                    id: entry.id.clone(),
                    scale: None,
                }],
            ),
            _ => (entry.id.clone(), Vec::new()),
        };
        for u in req.adapters() {
            match uses.iter_mut().find(|v| v.id == u.id) {
                Some(v) => v.scale = u.scale,
                None => uses.push(u.clone()),
            }
        }
        if uses.is_empty() {
            return Ok((base, req));
        }
        let base_entry = self.entry(&base)?;
        for u in &uses {
            let a = self.entry(&u.id)?;
            if a.kind != ModelKind::LORA {
                return Err(adapter_error(
                    &u.id,
                    format!("a `{}` model, not a `lora` adapter", a.kind),
                ));
            }
            if a.base.as_deref() != Some(base.as_str()) {
                return Err(adapter_error(
                    &u.id,
                    format!(
                        "its base is `{}` ({}), not `{base}`",
                        a.base.as_deref().unwrap_or("?"),
                        a.origin
                    ),
                ));
            }
            if a.architecture != base_entry.architecture {
                return Err(adapter_error(
                    &u.id,
                    format!(
                        "made for `{}` models; its base `{base}` is `{}`",
                        a.architecture, base_entry.architecture
                    ),
                ));
            }
        }
        let req = req
            .with_adapters(uses)
            .map_err(|e| adapter_error(id, e.message))?;
        Ok((base, req))
    }

    /// Load on `m` each adapter `req` applies that is not loaded there yet, each checked
    /// against the memory budget first.
    pub fn ensure_adapters(&self, m: &LoadedModel, req: &Generate) -> Result<(), HostError> {
        for u in req.adapters() {
            self.load_adapter_on(m, &u.id)?;
        }
        Ok(())
    }

    /// Load adapter `id` (a `lora` entry) on its base now, loading the base first when
    /// it is not loaded.
    pub fn load_adapter(&self, id: &str) -> Result<AdapterStatus, HostError> {
        let entry = self.entry(id)?;
        if entry.kind != ModelKind::LORA {
            return Err(adapter_error(
                id,
                format!("a `{}` model, not a `lora` adapter", entry.kind),
            ));
        }
        let base = entry
            .base
            .clone()
            .expect("registry: lora entries have a base");
        let m = self.load_on(
            &base,
            ModelKind::LLM,
            plugin_api::Features::LORA_ADAPTERS,
            None,
        )?;
        self.load_adapter_on(&m, id)?;
        Ok(self
            .adapters()
            .into_iter()
            .find(|a| a.id == id)
            .expect("a lora entry is listed"))
    }

    /// Register adapter `id` at run time: the adapter folder `path` for base model `base`
    /// at `scale` (1 when `None`).
    pub fn register_adapter(
        &self,
        id: &str,
        base: &str,
        path: &Path,
        scale: Option<f32>,
    ) -> Result<(), HostError> {
        let b = self.entry(base)?;
        if b.kind != ModelKind::LLM {
            return Err(adapter_error(
                id,
                format!(
                    "base `{base}` is a `{}` model; adapters apply to `llm` models",
                    b.kind
                ),
            ));
        }
        AdapterUse::new(id, scale).map_err(|e| adapter_error(id, e.message))?;
        let mut e = ModelEntry::new(
            id,
            ModelKind::LORA,
            &b.architecture,
            Source::Path(path.into()),
        );
        e.base = Some(base.to_owned());
        e.scale = scale;
        self.add_model(e)
    }

    /// Unload adapter `id` from every loaded model holding it; whether any did.
    pub fn unload_adapter(&self, id: &str) -> Result<bool, HostError> {
        let holders: Vec<std::sync::Arc<LoadedModel>> = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|m| m.adapters().contains_key(id))
            .cloned()
            .collect();
        for m in &holders {
            let _one = m.adapter_load.lock().unwrap_or_else(|p| p.into_inner());
            let req = AdapterRequest {
                op: AdapterOp::UNLOAD,
                name: id.into(),
                ..Default::default()
            };
            m.model
                .adapter(&req)
                .into_result()
                .map_err(|error| plugin_error(m, error))?;
            m.adapters().remove(id);
        }
        Ok(!holders.is_empty())
    }

    /// Every `lora` entry, with where it is loaded.
    pub fn adapters(&self) -> Vec<AdapterStatus> {
        let loaded: Vec<std::sync::Arc<LoadedModel>> = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        self.registry()
            .models()
            .filter(|e| e.kind == ModelKind::LORA)
            .map(|e| {
                let mut loaded_on = Vec::new();
                let mut bytes = 0;
                for m in &loaded {
                    if let Some(b) = m.adapters().get(&e.id) {
                        loaded_on.push(m.key.clone());
                        bytes = *b;
                    }
                }
                loaded_on.sort();
                AdapterStatus {
                    id: e.id.clone(),
                    base: e.base.clone().unwrap_or_default(),
                    scale: e.scale.unwrap_or(1.0),
                    loaded_on,
                    bytes,
                }
            })
            .collect()
    }

    /// Load adapter `id` on `m` unless it is there (one load at a time per model: its
    /// size is what the model grew by).
    fn load_adapter_on(&self, m: &LoadedModel, id: &str) -> Result<(), HostError> {
        if m.adapters().contains_key(id) {
            return Ok(());
        }
        let _one = m.adapter_load.lock().unwrap_or_else(|p| p.into_inner());
        if m.adapters().contains_key(id) {
            return Ok(());
        }
        let entry = self.entry(id)?;
        let path = self.adapter_path(&entry)?;
        // Admission: the factors as float32, the widest any plugin holds them.
        let bound = lora::Adapter::open(&path)
            .map_err(|e| adapter_error(id, e.to_string()))?
            .parameters()
            .saturating_mul(4);
        let budget = self.memory_budget();
        let (in_use, _) = self.memory_in_use();
        if in_use.saturating_add(bound) > budget {
            return Err(HostError::OverBudget(format!(
                "adapter `{id}` needs up to {} MB on model `{}`; the memory budget of {} MB has {} MB free",
                bound >> 20,
                m.entry.id,
                budget >> 20,
                budget.saturating_sub(in_use) >> 20
            )));
        }
        let before = m.model.info().weight_bytes;
        let req = AdapterRequest {
            op: AdapterOp::LOAD,
            name: id.into(),
            path: path.display().to_string().into(),
            scale: entry.scale.unwrap_or(1.0),
            options: "".into(),
        };
        m.model
            .adapter(&req)
            .into_result()
            .map_err(|error| plugin_error(m, error))?;
        let grew = m.model.info().weight_bytes.saturating_sub(before);
        m.adapters()
            .insert(id.to_owned(), if grew > 0 { grew } else { bound });
        tracing::info!(adapter = id, model = %m.key, bytes = grew, "adapter loaded");
        Ok(())
    }

    /// The local folder of adapter `entry`, fetched from the Hub when it comes from there.
    fn adapter_path(&self, entry: &ModelEntry) -> Result<PathBuf, HostError> {
        match self.local_path(entry) {
            Ok(p) => Ok(p),
            Err(HostError::NotLocal { tried, .. })
                if matches!(entry.source, Source::Hub { .. }) =>
            {
                crate::store::fetch_entry(entry, &hub::Hub::from_env()).map_err(|error| {
                    HostError::Fetch {
                        id: entry.id.clone(),
                        tried,
                        error: Box::new(error),
                    }
                })
            }
            Err(e) => Err(e),
        }
    }
}

fn plugin_error(m: &LoadedModel, error: plugin_api::PluginError) -> HostError {
    HostError::Plugin {
        id: m.entry.id.clone(),
        plugin: m.plugin.clone(),
        error,
    }
}
