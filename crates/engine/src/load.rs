//! The engine: registry + plugins + device, and the loaded models (loaded once, shared
//! by the requests that use them, evicted least recently used first).

use crate::{
    device,
    plugins::PluginSet,
    registry::{ModelEntry, Registry, Source},
    resolve::spec,
    HostError,
};
use plugin_api::{DeviceInfo, Features, LoadRequest, ModelBox, ModelInfo, ModelKind};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock, RwLockReadGuard},
    time::{Duration, Instant},
};

/// A model loaded by a plugin, shared by the requests that use it.
pub struct LoadedModel {
    /// Its key among the loaded models: the id, or `id@backend` when loaded on a pinned
    /// backend.
    pub key: String,
    /// Registry entry it was loaded from.
    pub entry: ModelEntry,
    /// Name of the plugin serving it.
    pub plugin: String,
    /// The plugin's model object.
    pub model: ModelBox,
    /// Facts the plugin reported after loading.
    pub info: ModelInfo,
    /// Memory estimated at admission (0 when it could not be estimated).
    pub estimate_bytes: u64,
    /// The KV-cache part of `estimate_bytes` (for its working context).
    pub kv_bytes: u64,
    /// LoRA adapters loaded on it (registry ids) and the bytes each takes.
    pub(crate) adapters: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Held while an adapter loads on it: one at a time, so what it grew by is that one's.
    pub(crate) adapter_load: Mutex<()>,
    /// Last: once the model is dropped, hands the allocator's free memory back.
    pub(crate) _trim: TrimOnDrop,
}

impl LoadedModel {
    /// The adapters loaded on it, and their bytes.
    pub fn adapters(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, u64>> {
        self.adapters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Returns the C allocator's free heap memory to the system when dropped (glibc keeps
/// what a dropped model freed in its arenas: across model unloads and reloads the soak
/// saw the resident size climb by hundreds of MB without it).
pub(crate) struct TrimOnDrop;

impl Drop for TrimOnDrop {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// The engine.
pub struct Engine {
    pub(crate) registry: RwLock<Registry>,
    pub(crate) plugins: PluginSet,
    pub(crate) device: DeviceInfo,
    pub(crate) loaded: Mutex<HashMap<String, Arc<LoadedModel>>>,
    /// Last use of each loaded model (for least-recently-used eviction).
    pub(crate) last_used: Mutex<HashMap<String, Instant>>,
    pub(crate) budget: std::sync::atomic::AtomicU64,
    pub(crate) dtype_override: Mutex<Option<String>>,
    pub(crate) kv_cache_override: Mutex<Option<String>>,
}

/// Share of the available memory the default budget allows.
pub const DEFAULT_BUDGET_FRACTION: f64 = 0.8;

impl Engine {
    /// An engine over `registry` and `plugins`, probing this device. Its memory budget is
    /// [`DEFAULT_BUDGET_FRACTION`] of the memory available now (see
    /// [`set_memory_budget`](Self::set_memory_budget)).
    pub fn new(registry: Registry, plugins: PluginSet) -> Self {
        let device = device::probe();
        let budget = (device.available_memory as f64 * DEFAULT_BUDGET_FRACTION) as u64;
        Self {
            registry: RwLock::new(registry),
            plugins,
            device,
            loaded: Mutex::default(),
            last_used: Mutex::default(),
            dtype_override: Mutex::default(),
            kv_cache_override: Mutex::default(),
            budget: std::sync::atomic::AtomicU64::new(if budget == 0 { u64::MAX } else { budget }),
        }
    }

    /// Memory the loaded models may take together, in bytes.
    pub fn memory_budget(&self) -> u64 {
        self.budget.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Set the memory budget (`--memory-budget`, `MLXENGINE_MEMORY_BUDGET`).
    pub fn set_memory_budget(&self, bytes: u64) {
        self.budget
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Load every model in `dtype` (`--dtype`), overriding the registry and the policy.
    pub fn set_dtype_override(&self, dtype: Option<String>) {
        *self
            .dtype_override
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = dtype;
    }

    /// Give every `llm` model it loads this KV-cache type (`--kv-cache`, one of
    /// [`crate::registry::KV_CACHE_TYPES`]), overriding the registry.
    pub fn set_kv_cache_override(&self, kv_cache: Option<String>) {
        *self
            .kv_cache_override
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = kv_cache;
    }

    /// Estimated bytes of the loaded models, and their keys.
    pub fn memory_in_use(&self) -> (u64, Vec<String>) {
        let map = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<String> = map.keys().cloned().collect();
        keys.sort();
        let adapters = |m: &LoadedModel| m.adapters().values().sum::<u64>();
        (
            map.values().map(|m| m.estimate_bytes + adapters(m)).sum(),
            keys,
        )
    }

    /// The registry (read access).
    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Inject a model at run time.
    pub fn add_model(&self, entry: ModelEntry) -> Result<(), HostError> {
        Ok(self
            .registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .add(entry)?)
    }

    /// Remove a model at run time (unloading it). Returns whether it existed.
    pub fn remove_model(&self, id: &str) -> bool {
        self.unload(id);
        self.registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .is_some()
    }

    /// The plugins found at start-up.
    pub fn plugins(&self) -> &PluginSet {
        &self.plugins
    }

    /// This machine.
    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    /// The registry entry `id`.
    pub fn entry(&self, id: &str) -> Result<ModelEntry, HostError> {
        let reg = self.registry();
        reg.get(id).cloned().ok_or_else(|| HostError::UnknownModel {
            id: id.to_owned(),
            known: reg
                .models()
                .map(|m| m.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Load model `id` for requests of `kind` needing `features` (once; later calls
    /// share it).
    pub fn load(
        &self,
        id: &str,
        kind: ModelKind,
        features: Features,
    ) -> Result<Arc<LoadedModel>, HostError> {
        self.load_on(id, kind, features, None)
    }

    /// As [`load`](Self::load), on the backend `backend` when given (`"mlx"`, `"ggml"`,
    /// a plugin or backend name); loaded copies are kept per backend.
    pub fn load_on(
        &self,
        id: &str,
        kind: ModelKind,
        features: Features,
        backend: Option<&str>,
    ) -> Result<Arc<LoadedModel>, HostError> {
        let key = match backend {
            Some(b) => format!("{id}@{b}"),
            None => id.to_owned(),
        };
        if let Some(m) = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            self.touch(&key);
            return Ok(m.clone());
        }
        let mut entry = self.entry(id)?;
        if let Some(d) = self
            .dtype_override
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            entry.dtype = Some(d);
        }
        if let Some(k) = self
            .kv_cache_override
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|_| entry.kind == ModelKind::LLM)
        {
            entry.kv_cache = Some(k);
        }
        if entry.kind != kind {
            return Err(HostError::WrongKind {
                id: id.to_owned(),
                kind: entry.kind,
                wanted: kind,
            });
        }
        // The files are located once: probes see them, admission sizes them, the plugin
        // loads them.
        let local = self.local_path(&entry);
        let seen = spec(&entry, local.as_deref().ok());
        let plugin = self.choose(&entry, &seen, entry.features.union(features), backend)?;
        let path = match local {
            Ok(p) => p,
            // A Hub model not downloaded yet: fetch it now (verified, into the HF cache);
            // with HF_HUB_OFFLINE=1 the error names the missing files.
            Err(HostError::NotLocal { tried, .. })
                if matches!(entry.source, Source::Hub { .. }) =>
            {
                crate::store::fetch_entry(&entry, &hub::Hub::from_env()).map_err(|error| {
                    HostError::Fetch {
                        id: entry.id.clone(),
                        tried,
                        error: Box::new(error),
                    }
                })?
            }
            Err(e) => return Err(e),
        };
        let (entry, estimate_bytes, kv_bytes) = self.admit(entry, &path, plugin, &key)?;
        let req = LoadRequest {
            model: spec(&entry, Some(&path)),
            device: self.device.clone(),
            memory_budget: self.memory_budget().saturating_sub(self.memory_in_use().0),
        };
        let started = Instant::now();
        let model = plugin
            .load_model(&req)
            .into_result()
            .map_err(|error| HostError::Plugin {
                id: id.to_owned(),
                plugin: plugin.descriptor.name.to_string(),
                error,
            })?;
        let info = model.info();
        tracing::info!(model = id, plugin = %plugin.descriptor.name, ms = started.elapsed().as_millis() as u64, "model loaded");
        let loaded = Arc::new(LoadedModel {
            key: key.clone(),
            entry,
            plugin: plugin.descriptor.name.to_string(),
            model,
            info,
            estimate_bytes,
            kv_bytes,
            adapters: Mutex::default(),
            adapter_load: Mutex::default(),
            _trim: TrimOnDrop,
        });
        self.touch(&key);
        let mut map = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = map.get(&key).cloned() {
            // Another request loaded it meanwhile: keep that one; ours is dropped after
            // the lock is released (see `unload_idle`).
            drop(map);
            drop(loaded);
            return Ok(first);
        }
        map.insert(key, loaded.clone());
        Ok(loaded)
    }

    /// Record a use of loaded model `key` now (at the start and the end of each call).
    pub(crate) fn touch(&self, key: &str) {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), Instant::now());
    }

    /// Unload the models that no request holds and that were last used at least `idle`
    /// ago (the server's `--idle-unload`); their keys. The engine's clock is the only one:
    /// every call touches its model when it starts and when it ends.
    pub fn unload_idle(&self, idle: Duration) -> Vec<String> {
        let mut map = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let used = self.last_used.lock().unwrap_or_else(|p| p.into_inner());
        let idle_keys: Vec<String> = map
            .iter()
            .filter(|(k, m)| {
                Arc::strong_count(m) == 1
                    && used.get(k.as_str()).is_none_or(|t| t.elapsed() >= idle)
            })
            .map(|(k, _)| k.clone())
            .collect();
        // Dropped after the locks are released: dropping a model can wait on its plugin
        // (an isolated one finishes the call in flight first), and that call may need
        // the engine's locks.
        let gone: Vec<_> = idle_keys.iter().filter_map(|k| map.remove(k)).collect();
        drop((map, used));
        drop(gone);
        idle_keys
    }

    /// Keys of the loaded models (`id`, or `id@backend` when loaded on a pinned backend).
    pub fn loaded_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// Drop the engine's reference to a loaded model (freed once no request uses it).
    pub fn unload(&self, id: &str) -> bool {
        // Dropped after the lock is released (see `unload_idle`).
        let gone = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        gone.is_some()
    }

    /// Name of the plugin serving a loaded model (`None` if not loaded).
    pub fn served_by(&self, id: &str, backend: Option<&str>) -> Option<String> {
        self.loaded_model(id, backend).map(|m| m.plugin.clone())
    }

    /// A loaded model (`None` if not loaded).
    pub fn loaded_model(&self, id: &str, backend: Option<&str>) -> Option<Arc<LoadedModel>> {
        let key = backend.map_or_else(|| id.to_owned(), |b| format!("{id}@{b}"));
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
    }

    /// The registry's default model of `kind` (`default = true`), else the only one.
    pub fn default_model(&self, kind: ModelKind) -> Result<String, HostError> {
        let reg = self.registry();
        let of_kind: Vec<&ModelEntry> = reg.models().filter(|m| m.kind == kind).collect();
        of_kind
            .iter()
            .find(|m| m.default)
            .or(if of_kind.len() == 1 {
                of_kind.first()
            } else {
                None
            })
            .map(|m| m.id.clone())
            .ok_or_else(|| HostError::NoDefault {
                kind,
                count: of_kind.len(),
            })
    }
}
