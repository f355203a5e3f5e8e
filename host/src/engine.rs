//! The engine: registry + plugins + device, and the dispatch of requests to plugins.

use crate::{
    device, fit,
    plugins::{PluginHandle, PluginSet},
    registry::{ModelEntry, Registry, RegistryError, Source},
};
use abi_stable::std_types::{ROption, RString};
use abi_stable::{sabi_trait::TD_Opaque, sabi_types::RMut};
use plugin_api::{
    embed::{EmbedRequest, EmbedResponse},
    text::{
        FinishReason, GenerateOutput, GenerateRequest, GenerateResponse, StreamControl,
        StreamEvent, TokenSink, TokenSink_TO,
    },
    DeviceInfo, ErrorKind, EstimateRequest, Features, LoadRequest, ModelBox, ModelInfo, ModelKind,
    ModelSpec, PluginDescriptor, PluginError, Probe, ProbeRequest,
};
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock, RwLockReadGuard},
};

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
        error: Box<crate::hub::HubError>,
    },
    #[error(
        "no default `{kind}` model: {count} registered, none has `default = true`; pass --model"
    )]
    NoDefault { kind: ModelKind, count: usize },
    #[error("model `{id}`: cannot estimate its memory: {reason}")]
    Estimate { id: String, reason: String },
    #[error("{0}")]
    OverBudget(String),
    #[error("model `{id}` (plugin `{plugin}`): {error}")]
    Plugin {
        id: String,
        plugin: String,
        error: PluginError,
    },
}

/// A model loaded by a plugin, shared by the requests that use it.
pub struct LoadedModel {
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
}

/// One plugin's answer for one model, as shown by `mlxengine info`.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Plugin name.
    pub plugin: String,
    /// Probe score (0 when it cannot serve the model).
    pub score: u32,
    /// Backend it would use.
    pub backend: String,
    /// Why it can or cannot serve it.
    pub reason: String,
}

/// The engine.
pub struct Engine {
    registry: RwLock<Registry>,
    plugins: PluginSet,
    device: DeviceInfo,
    loaded: Mutex<HashMap<String, Arc<LoadedModel>>>,
    /// Last use of each loaded model (for least-recently-used eviction).
    last_used: Mutex<HashMap<String, std::time::Instant>>,
    budget: std::sync::atomic::AtomicU64,
    dtype_override: Mutex<Option<String>>,
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

    /// Estimated bytes of the loaded models, and their keys.
    pub fn memory_in_use(&self) -> (u64, Vec<String>) {
        let map = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<String> = map.keys().cloned().collect();
        keys.sort();
        (map.values().map(|m| m.estimate_bytes).sum(), keys)
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

    /// Every plugin's verdict on `entry` for a request needing `features`.
    pub fn candidates(&self, entry: &ModelEntry, features: Features) -> Vec<Candidate> {
        self.candidates_on(entry, features, None)
    }

    /// As [`candidates`](Self::candidates), with a backend override (`"mlx"`, `"ggml"`, a
    /// plugin name or backend name) replacing the registry's `backend` pin.
    pub fn candidates_on(
        &self,
        entry: &ModelEntry,
        features: Features,
        backend: Option<&str>,
    ) -> Vec<Candidate> {
        // Probes see the local file when there is one (format, quantization types).
        let path = self.local_path(entry).ok();
        let spec = self.spec(entry, path.as_ref());
        self.plugins
            .plugins
            .iter()
            .map(|p| {
                let d = &p.descriptor;
                let no = |reason: String| Candidate {
                    plugin: d.name.to_string(),
                    score: 0,
                    backend: String::new(),
                    reason,
                };
                if let Some(why) = table_refusal(d, entry.kind, &entry.architecture) {
                    return no(why);
                }
                let missing = features.missing_from(d.features);
                if missing != Features::NONE {
                    return no(format!("lacks feature(s) {}", missing.names().join(", ")));
                }
                let probe = probe(p, &self.device, Some(spec.clone()));
                if let Some(pin) = backend.or(entry.backend.as_deref()) {
                    if !pin_matches(pin, d.name.as_str(), probe.backend.as_str()) {
                        let by = if backend.is_some() {
                            "--backend"
                        } else {
                            "the registry"
                        };
                        return no(format!("{by} pins backend `{pin}`"));
                    }
                }
                Candidate {
                    plugin: d.name.to_string(),
                    score: probe.score,
                    backend: probe.backend.into(),
                    reason: probe.reason.into(),
                }
            })
            .collect()
    }

    /// Whether a loaded plugin's tables (kinds, architectures) cover `kind` and
    /// `architecture`, before any probe.
    pub fn serves_architecture(&self, kind: ModelKind, architecture: &str) -> bool {
        self.plugins
            .plugins
            .iter()
            .any(|p| table_refusal(&p.descriptor, kind, architecture).is_none())
    }

    /// The best plugin for `entry` and `features` (highest non-zero probe score).
    pub fn select(
        &self,
        entry: &ModelEntry,
        features: Features,
    ) -> Result<&PluginHandle, HostError> {
        self.select_on(entry, features, None)
    }

    /// As [`select`](Self::select), with a backend override.
    pub fn select_on(
        &self,
        entry: &ModelEntry,
        features: Features,
        backend: Option<&str>,
    ) -> Result<&PluginHandle, HostError> {
        let cands = self.candidates_on(entry, features, backend);
        let best = cands.iter().filter(|c| c.score > 0).max_by_key(|c| c.score);
        match best {
            Some(c) => Ok(self
                .plugins
                .get(&c.plugin)
                .expect("candidate comes from the set")),
            None => {
                let reason = if cands.is_empty() {
                    let dirs: Vec<String> = self
                        .plugins
                        .dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect();
                    format!(
                        "no plugins are loaded (kind `{}` needs one; searched: {})",
                        entry.kind,
                        dirs.join(", ")
                    )
                } else if !cands
                    .iter()
                    .any(|c| !c.reason.starts_with("does not serve kind"))
                {
                    format!("no loaded plugin serves kind `{}`", entry.kind)
                } else {
                    cands
                        .iter()
                        .map(|c| format!("{}: {}", c.plugin, c.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                Err(HostError::NoPlugin {
                    id: entry.id.clone(),
                    reason,
                })
            }
        }
    }

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
            let (snap, missing) = crate::hub::cache::RepoCache::new(&hf_hub_cache(), repo)
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

    fn spec(&self, entry: &ModelEntry, path: Option<&PathBuf>) -> ModelSpec {
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
            options: entry.options.to_string().into(),
        }
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
        if entry.kind != kind {
            return Err(HostError::WrongKind {
                id: id.to_owned(),
                kind: entry.kind,
                wanted: kind,
            });
        }
        let plugin = self.select_on(&entry, entry.features.union(features), backend)?;
        let path = match self.local_path(&entry) {
            Ok(p) => p,
            // A Hub model not downloaded yet: fetch it now (verified, into the HF cache);
            // with HF_HUB_OFFLINE=1 the error names the missing files.
            Err(HostError::NotLocal { tried, .. })
                if matches!(entry.source, Source::Hub { .. }) =>
            {
                crate::store::fetch_entry(&entry, &crate::hub::Hub::from_env()).map_err(
                    |error| HostError::Fetch {
                        id: entry.id.clone(),
                        tried,
                        error: Box::new(error),
                    },
                )?
            }
            Err(e) => return Err(e),
        };
        let (entry, estimate_bytes) = self.admit(entry, plugin, &key)?;
        let req = LoadRequest {
            model: self.spec(&entry, Some(&path)),
            device: self.device.clone(),
            memory_budget: self.memory_budget().saturating_sub(self.memory_in_use().0),
        };
        let started = std::time::Instant::now();
        let model = (plugin.module.load_model())(&req)
            .into_result()
            .map_err(|error| HostError::Plugin {
                id: id.to_owned(),
                plugin: plugin.descriptor.name.to_string(),
                error,
            })?;
        let info = model.info();
        tracing::info!(model = id, plugin = %plugin.descriptor.name, ms = started.elapsed().as_millis() as u64, "model loaded");
        let loaded = Arc::new(LoadedModel {
            entry,
            plugin: plugin.descriptor.name.to_string(),
            model,
            info,
            estimate_bytes,
        });
        self.touch(&key);
        let mut map = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.entry(key).or_insert(loaded).clone())
    }

    fn touch(&self, key: &str) {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), std::time::Instant::now());
    }

    /// Admission control: check the plugin's estimate against the budget (the plugin is
    /// told what is free, and may choose a smaller load dtype to fit), unloading idle
    /// models, least recently used first, to make room. Returns the entry to load (with
    /// the dtype the plugin estimated for) and its estimate.
    fn admit(
        &self,
        mut entry: ModelEntry,
        plugin: &PluginHandle,
        key: &str,
    ) -> Result<(ModelEntry, u64), HostError> {
        let budget = self.memory_budget();
        let (in_use, _) = self.memory_in_use();
        // What is free now (at least 1: 0 would mean "no limit" to the plugin).
        let free = budget.saturating_sub(in_use).max(1);
        let est = match self.estimate_within(&entry, plugin, None, 1, free) {
            Ok((_, e)) => e,
            Err(e) => {
                tracing::warn!(model = %entry.id, "no memory estimate, loading unchecked: {e}");
                return Ok((entry, 0));
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
                return Ok((entry, need));
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
        map.remove(&victim);
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
        self.estimate_within(entry, plugin, context, batch, 0)
    }

    /// [`estimate`](Self::estimate), telling the plugin that `available` bytes are free
    /// (0 = no limit) so it can choose what fits.
    fn estimate_within(
        &self,
        entry: &ModelEntry,
        plugin: &PluginHandle,
        context: Option<u64>,
        batch: u64,
        available: u64,
    ) -> Result<(Option<fit::Facts>, fit::Estimate), HostError> {
        let failed = |reason: String| HostError::Estimate {
            id: entry.id.clone(),
            reason,
        };
        let path = self.local_path(entry)?;
        // Facts are for people and for plugins without an estimate; a model whose files
        // are not weights the host can read (a plugin's own format) is the plugin's to
        // size.
        let facts = fit::facts(&path);
        let ctx = context.unwrap_or_else(|| working_context(entry, facts.as_ref().ok()));
        let name = plugin.descriptor.name.as_str();
        let from_files = |facts: &Result<fit::Facts, String>| {
            facts
                .as_ref()
                .map(|f| fit::Estimate::from_files(name, f, ctx, batch))
                .map_err(|e| failed(e.clone()))
        };
        let Some(estimate) = plugin.module.estimate() else {
            let est = from_files(&facts)?;
            return Ok((facts.ok(), est));
        };
        let req = EstimateRequest {
            model: self.spec(entry, Some(&path)),
            device: self.device.clone(),
            context: ctx.min(u64::from(u32::MAX)) as u32,
            batch: batch.clamp(1, u64::from(u32::MAX)) as u32,
            memory_available: available,
        };
        let est = match estimate(&req).into_result() {
            Ok(m) => fit::Estimate::from_plugin(name, &m),
            Err(e) if e.kind == ErrorKind::UNSUPPORTED => from_files(&facts)?,
            Err(e) => return Err(failed(e.to_string())),
        };
        Ok((facts.ok(), est))
    }

    /// `plugin`'s probe of this device (no model).
    pub fn probe_device(&self, plugin: &PluginHandle) -> Probe {
        probe(plugin, &self.device, None)
    }

    /// `plugin`'s probe for model `entry` (with its local path when it has one).
    pub fn probe_model(&self, plugin: &PluginHandle, entry: &ModelEntry) -> Probe {
        let path = self.local_path(entry).ok();
        probe(plugin, &self.device, Some(self.spec(entry, path.as_ref())))
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
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
            .is_some()
    }

    /// Generate text with model `id`. `on_event` receives stream events (when
    /// `req.stream` is set) and can stop the generation.
    pub fn generate(
        &self,
        id: &str,
        req: &GenerateRequest,
        on_event: &mut dyn FnMut(&StreamEvent) -> StreamControl,
    ) -> Result<GenerateResponse, HostError> {
        self.generate_on(id, None, req, on_event)
    }

    /// As [`generate`](Self::generate), on the backend `backend` when given.
    pub fn generate_on(
        &self,
        id: &str,
        backend: Option<&str>,
        req: &GenerateRequest,
        on_event: &mut dyn FnMut(&StreamEvent) -> StreamControl,
    ) -> Result<GenerateResponse, HostError> {
        let m = self.load_for_generate(id, backend, req)?;
        self.generate_with(&m, req, &mut ClosureSink(on_event))
    }

    /// Load (once) the model that will serve `req`, checking that its plugin has the
    /// features the request needs.
    pub fn load_for_generate(
        &self,
        id: &str,
        backend: Option<&str>,
        req: &GenerateRequest,
    ) -> Result<Arc<LoadedModel>, HostError> {
        let mut needs = Features::NONE;
        if req.stream {
            needs = needs.union(Features::STREAMING);
        }
        if req.inputs.len() > 1 {
            needs = needs.union(Features::BATCHING);
        }
        let m = self.load_on(id, ModelKind::LLM, needs, backend)?;
        let missing = needs.missing_from(self.features_of(&m));
        if missing != Features::NONE {
            return Err(HostError::NoPlugin {
                id: id.to_owned(),
                reason: format!(
                    "plugin `{}` lacks feature(s) {}",
                    m.plugin,
                    missing.names().join(", ")
                ),
            });
        }
        Ok(m)
    }

    /// Features of the plugin serving a loaded model.
    pub fn features_of(&self, m: &LoadedModel) -> Features {
        self.plugins
            .get(&m.plugin)
            .map_or(Features::NONE, |p| p.descriptor.features)
    }

    /// Run a generation call on a loaded model with a full sink (stream events, finished
    /// sequences, and requests joining the batch when the plugin has
    /// [`Features::CONTINUOUS_BATCHING`]).
    pub fn generate_with(
        &self,
        m: &LoadedModel,
        req: &GenerateRequest,
        sink: &mut dyn GenerateSink,
    ) -> Result<GenerateResponse, HostError> {
        let mut sink = AbiSink(sink);
        let sink = TokenSink_TO::from_ptr(RMut::new(&mut sink), TD_Opaque);
        m.model
            .generate(req, sink)
            .into_result()
            .map_err(|error| HostError::Plugin {
                id: m.entry.id.clone(),
                plugin: m.plugin.clone(),
                error,
            })
    }

    /// The cost of the ABI's two per-request paths, in nanoseconds per call (median of 5
    /// batches of `n` calls): a round trip into the plugin (`Model::info`, which copies
    /// its strings back), and a streamed token callback (a `StreamEvent` through the
    /// `TokenSink` vtable and the host's panic guard, as a plugin delivers each token).
    pub fn abi_overhead_ns(&self, m: &LoadedModel, n: u32) -> (f64, f64) {
        let n = n.max(1);
        let median = |f: &mut dyn FnMut()| {
            let mut v: Vec<f64> = (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    for _ in 0..n {
                        f();
                    }
                    t.elapsed().as_nanos() as f64 / f64::from(n)
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v[2]
        };
        let round_trip = median(&mut || {
            std::hint::black_box(m.model.info());
        });
        let mut count = 0u64;
        let mut on_event = |ev: &StreamEvent| {
            count += u64::from(ev.token);
            StreamControl::Continue
        };
        let mut closure = ClosureSink(&mut on_event);
        let mut abi = AbiSink(&mut closure);
        let mut sink = TokenSink_TO::from_ptr(RMut::new(&mut abi), TD_Opaque);
        let ev = StreamEvent {
            index: 0,
            token: 1,
            text: " token".into(),
            logprob: 0.0,
            finish: FinishReason::NONE,
        };
        let callback = median(&mut || {
            std::hint::black_box(sink.on_event(std::hint::black_box(&ev)));
        });
        (round_trip, callback)
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

    /// Embed texts with model `id`.
    pub fn embed(&self, id: &str, req: &EmbedRequest) -> Result<EmbedResponse, HostError> {
        let m = self.load(id, ModelKind::EMBED, Features::EMBEDDINGS)?;
        m.model
            .embed(req)
            .into_result()
            .map_err(|error| HostError::Plugin {
                id: id.to_owned(),
                plugin: m.plugin.clone(),
                error,
            })
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

/// Why a plugin's declared tables exclude `kind` / `architecture` (`None`: they cover it;
/// an empty architecture list covers every architecture).
fn table_refusal(d: &PluginDescriptor, kind: ModelKind, architecture: &str) -> Option<String> {
    if !d.kinds.contains(&kind) {
        return Some(format!("does not serve kind `{kind}`"));
    }
    if !d.architectures.is_empty() && !d.architectures.iter().any(|a| a.as_str() == architecture) {
        let list: Vec<&str> = d.architectures.iter().map(|a| a.as_str()).collect();
        return Some(format!(
            "does not support architecture `{architecture}` (supports: {})",
            list.join(", ")
        ));
    }
    None
}

/// Whether a backend pin (`"mlx"`, `"ggml"`, `"mlx-llm"`, `"ggml-cpu"`, ...) names this
/// plugin or its backend.
pub fn pin_matches(pin: &str, plugin: &str, backend: &str) -> bool {
    let family = format!("{pin}-");
    pin == plugin || pin == backend || plugin.starts_with(&family) || backend.starts_with(&family)
}

/// The host's side of a generation call: what a plugin streams back, and (continuous
/// batching) the requests that may join the running batch. See the ABI's `TokenSink`.
pub trait GenerateSink {
    /// A stream event; [`StreamControl::Stop`] cancels the event's request.
    fn event(&mut self, ev: &StreamEvent) -> StreamControl;
    /// A request to join the running batch, if one waits.
    fn poll_join(&mut self) -> Option<GenerateRequest> {
        None
    }
    /// Sequence `index` ended with `output`.
    fn finished(&mut self, _index: u32, _output: &GenerateOutput) {}
    /// The request last returned by `poll_join` was refused.
    fn rejected(&mut self, _error: &PluginError) {}
}

/// Adapts a Rust closure over stream events to a [`GenerateSink`].
struct ClosureSink<'a>(&'a mut dyn FnMut(&StreamEvent) -> StreamControl);

impl GenerateSink for ClosureSink<'_> {
    fn event(&mut self, ev: &StreamEvent) -> StreamControl {
        (self.0)(ev)
    }
}

/// Adapts a [`GenerateSink`] to the ABI's `TokenSink`. A panic in the host's callbacks
/// must not unwind into the plugin: it stops the request instead.
struct AbiSink<'a>(&'a mut dyn GenerateSink);

fn no_unwind<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(fallback)
}

impl TokenSink for AbiSink<'_> {
    fn on_event(&mut self, event: &StreamEvent) -> StreamControl {
        no_unwind(StreamControl::Stop, || self.0.event(event))
    }
    fn poll_join(&mut self) -> ROption<GenerateRequest> {
        no_unwind(None, || self.0.poll_join()).into()
    }
    fn on_finished(&mut self, index: u32, output: &GenerateOutput) {
        no_unwind((), || self.0.finished(index, output))
    }
    fn on_rejected(&mut self, error: &PluginError) {
        no_unwind((), || self.0.rejected(error))
    }
}

fn probe(p: &PluginHandle, device: &DeviceInfo, model: Option<ModelSpec>) -> Probe {
    let req = ProbeRequest {
        device: device.clone(),
        model: ROption::from(model),
    };
    (p.module.probe())(&req)
        .into_result()
        .unwrap_or_else(|e| Probe {
            score: 0,
            backend: RString::new(),
            reason: format!("probe failed: {e}").into(),
        })
}

/// MLXEngine's cache root: `$MLXENGINE_CACHE`, else `${XDG_CACHE_HOME:-~/.cache}/mlxengine`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MLXENGINE_CACHE") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache"));
    base.join("mlxengine")
}

/// Local models by id: `$MLXENGINE_MODELS`, else `<cache>/models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("MLXENGINE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models"))
}

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

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}
