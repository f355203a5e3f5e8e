//! Selection: every plugin's verdict on a model (declared tables, features, backend pins,
//! then the probe score), and the best of them.

use crate::{plugins::PluginHandle, registry::ModelEntry, resolve::spec, Engine, HostError};
use abi_stable::std_types::{ROption, RString};
use plugin_api::{
    DeviceInfo, Features, ModelKind, ModelSpec, PluginDescriptor, Probe, ProbeRequest,
};

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

impl Engine {
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
        self.verdicts(entry, &spec(entry, path.as_deref()), features, backend)
    }

    /// Every plugin's verdict on `entry`, seen by probes as `spec`.
    fn verdicts(
        &self,
        entry: &ModelEntry,
        spec: &ModelSpec,
        features: Features,
        backend: Option<&str>,
    ) -> Vec<Candidate> {
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
        let path = self.local_path(entry).ok();
        self.choose(entry, &spec(entry, path.as_deref()), features, backend)
    }

    /// The best plugin for `entry` seen by probes as `spec` (its files located once by
    /// the caller).
    pub(crate) fn choose(
        &self,
        entry: &ModelEntry,
        spec: &ModelSpec,
        features: Features,
        backend: Option<&str>,
    ) -> Result<&PluginHandle, HostError> {
        let cands = self.verdicts(entry, spec, features, backend);
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

    /// `plugin`'s probe of this device (no model).
    pub fn probe_device(&self, plugin: &PluginHandle) -> Probe {
        probe(plugin, &self.device, None)
    }

    /// `plugin`'s probe for model `entry` (with its local path when it has one).
    pub fn probe_model(&self, plugin: &PluginHandle, entry: &ModelEntry) -> Probe {
        let path = self.local_path(entry).ok();
        probe(plugin, &self.device, Some(spec(entry, path.as_deref())))
    }
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

fn probe(p: &PluginHandle, device: &DeviceInfo, model: Option<ModelSpec>) -> Probe {
    let req = ProbeRequest {
        device: device.clone(),
        model: ROption::from(model),
    };
    p.probe(&req).into_result().unwrap_or_else(|e| Probe {
        score: 0,
        backend: RString::new(),
        reason: format!("probe failed: {e}").into(),
    })
}
