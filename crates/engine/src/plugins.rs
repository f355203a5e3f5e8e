//! Plugin discovery and loading.
//!
//! A plugin is a dynamic library named `libmlxengine_<name>.so` (`.dylib` on macOS,
//! `mlxengine_<name>.dll` on Windows) exporting the `plugin_api` root module. Libraries
//! are searched in the `--plugin-dir` directories, then `MLXENGINE_PLUGIN_PATH`
//! (`:`-separated), then `plugins/` beside the executable and the executable's own
//! directory. A library that fails to load (not a plugin, other ABI layout, other
//! `api_version`, panicking descriptor) is recorded with its error and skipped; the
//! others keep working. Libraries are never unloaded.

use crate::isolate::Worker;
use abi_stable::std_types::RResult;
use plugin_api::{
    EstimateRequest, LoadRequest, MemoryEstimate, ModelBox, PluginDescriptor, PluginError,
    PluginModRef, Probe, ProbeRequest,
};
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

/// A loaded plugin library.
#[derive(Clone)]
pub struct PluginHandle {
    /// The library file.
    pub path: PathBuf,
    /// Where it runs.
    pub(crate) runtime: Runtime,
    /// What it declared.
    pub descriptor: PluginDescriptor,
}

/// Where a plugin runs: loaded into this process, or in a child of its own
/// ([`crate::isolate`]).
#[derive(Clone)]
pub(crate) enum Runtime {
    Library(PluginModRef),
    Isolated(Arc<Worker>),
}

impl PluginHandle {
    /// Whether it runs in a child process of its own.
    pub fn isolated(&self) -> bool {
        matches!(self.runtime, Runtime::Isolated(_))
    }

    /// Its root module, when the library is loaded in this process.
    pub fn library(&self) -> Option<PluginModRef> {
        match &self.runtime {
            Runtime::Library(m) => Some(*m),
            Runtime::Isolated(_) => None,
        }
    }

    /// The plugin API version it was built for (the host's, for an isolated plugin,
    /// which the child checked when it loaded the library).
    pub fn api_version(&self) -> u32 {
        match &self.runtime {
            Runtime::Library(m) => m.api_version(),
            Runtime::Isolated(_) => plugin_api::API_VERSION,
        }
    }

    /// The plugin's `probe`.
    pub(crate) fn probe(&self, req: &ProbeRequest) -> RResult<Probe, PluginError> {
        match &self.runtime {
            Runtime::Library(m) => (m.probe())(req),
            Runtime::Isolated(w) => w.probe(req),
        }
    }

    /// The plugin's `estimate`; `None` when its library predates the entry.
    pub(crate) fn estimate(
        &self,
        req: &EstimateRequest,
    ) -> Option<RResult<MemoryEstimate, PluginError>> {
        match &self.runtime {
            Runtime::Library(m) => m.estimate().map(|f| f(req)),
            Runtime::Isolated(w) => Some(w.estimate(req)),
        }
    }

    /// The plugin's `load_model`.
    pub(crate) fn load_model(&self, req: &LoadRequest) -> RResult<ModelBox, PluginError> {
        match &self.runtime {
            Runtime::Library(m) => (m.load_model())(req),
            Runtime::Isolated(w) => w.load_model(req),
        }
    }
}

impl fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginHandle")
            .field("path", &self.path)
            .field("name", &self.descriptor.name)
            .finish()
    }
}

/// A library that could not be loaded, and why.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    /// The library file.
    pub path: PathBuf,
    /// One line.
    pub error: String,
}

/// Every plugin found, loaded or not.
#[derive(Debug, Default, Clone)]
pub struct PluginSet {
    /// Loaded plugins, in discovery order (the first of a name wins).
    pub plugins: Vec<PluginHandle>,
    /// Libraries that failed to load.
    pub failures: Vec<LoadFailure>,
    /// Directories searched.
    pub dirs: Vec<PathBuf>,
}

/// File-name prefix and suffix of plugin libraries on this platform.
pub fn library_pattern() -> (&'static str, &'static str) {
    if cfg!(windows) {
        ("mlxengine_", ".dll")
    } else if cfg!(target_os = "macos") {
        ("libmlxengine_", ".dylib")
    } else {
        ("libmlxengine_", ".so")
    }
}

/// The default search path: `extra` dirs, `MLXENGINE_PLUGIN_PATH`, then `plugins/` beside
/// the executable and the executable's directory.
pub fn search_dirs(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = extra.to_vec();
    if let Some(p) = std::env::var_os("MLXENGINE_PLUGIN_PATH") {
        dirs.extend(std::env::split_paths(&p).filter(|d| !d.as_os_str().is_empty()));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("plugins"));
        dirs.push(exe_dir);
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let key = d.canonicalize().unwrap_or_else(|_| d.clone());
        let new = !seen.contains(&key);
        seen.push(key);
        new
    });
    dirs
}

impl PluginSet {
    /// Discover and load the plugins in `dirs` (missing dirs are skipped). Libraries
    /// named in `MLXENGINE_ISOLATE` (comma-separated; `llm_ggml` for
    /// `libmlxengine_llm_ggml.so`, or `all`) run out of process.
    pub fn discover(dirs: &[PathBuf]) -> Self {
        let isolate: Vec<String> = std::env::var("MLXENGINE_ISOLATE")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        Self::discover_isolating(dirs, &isolate)
    }

    /// [`discover`](Self::discover), running the libraries named in `isolate` out of
    /// process.
    pub fn discover_isolating(dirs: &[PathBuf], isolate: &[String]) -> Self {
        let (prefix, suffix) = library_pattern();
        let mut set = PluginSet {
            dirs: dirs.to_vec(),
            ..Default::default()
        };
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
                })
                .collect();
            files.sort();
            for f in files {
                let name = f
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix(prefix)?.strip_suffix(suffix))
                    .unwrap_or_default();
                if isolate.iter().any(|i| i == name || i == "all") {
                    set.load_isolated(&f);
                } else {
                    set.load(&f);
                }
            }
        }
        set
    }

    /// Load one library, recording success or failure. Returns the plugin on success.
    pub fn load(&mut self, path: &Path) -> Option<&PluginHandle> {
        let loaded = load_library(path);
        self.add(path, loaded)
    }

    /// Start one library out of process ([`crate::isolate`]), recording success or
    /// failure. Returns the plugin on success.
    pub fn load_isolated(&mut self, path: &Path) -> Option<&PluginHandle> {
        let loaded = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => crate::isolate::open(path),
            Ok(_) => Err(format!("{}: not a regular file", path.display())),
            Err(e) => Err(format!("{}: {e}", path.display())),
        };
        self.add(path, loaded)
    }

    fn add(&mut self, path: &Path, loaded: Result<PluginHandle, String>) -> Option<&PluginHandle> {
        match loaded {
            Ok(handle) => {
                if let Some(prev) = self
                    .plugins
                    .iter()
                    .find(|p| p.descriptor.name == handle.descriptor.name)
                {
                    let msg = format!(
                        "plugin `{}` is already loaded from {}; this copy is ignored",
                        handle.descriptor.name,
                        prev.path.display()
                    );
                    tracing::warn!(path = %path.display(), "{msg}");
                    self.failures.push(LoadFailure {
                        path: path.to_owned(),
                        error: msg,
                    });
                    return None;
                }
                tracing::debug!(path = %path.display(), name = %handle.descriptor.name, "plugin loaded");
                self.plugins.push(handle);
                self.plugins.last()
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), "plugin not loaded: {error}");
                self.failures.push(LoadFailure {
                    path: path.to_owned(),
                    error,
                });
                None
            }
        }
    }

    /// The plugin called `name`.
    pub fn get(&self, name: &str) -> Option<&PluginHandle> {
        self.plugins
            .iter()
            .find(|p| p.descriptor.name.as_str() == name)
    }
}

/// Load and check one plugin library (`plugin_sdk::loader::open`). Only a regular file
/// (or a link to one) is opened: the loader would block forever reading a FIFO.
pub fn load_library(path: &Path) -> Result<PluginHandle, String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(format!("{}: not a regular file", path.display())),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let (module, descriptor) = plugin_sdk::loader::open(path)?;
    Ok(PluginHandle {
        path: path.to_owned(),
        runtime: Runtime::Library(module),
        descriptor,
    })
}
