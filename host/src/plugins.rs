//! Plugin discovery and loading.
//!
//! A plugin is a dynamic library named `libmlxengine_<name>.so` (`.dylib` on macOS,
//! `mlxengine_<name>.dll` on Windows) exporting the `plugin_api` root module. Libraries
//! are searched in the `--plugin-dir` directories, then `MLXENGINE_PLUGIN_PATH`
//! (`:`-separated), then `plugins/` beside the executable and the executable's own
//! directory. A library that fails to load (not a plugin, other ABI layout, other
//! `api_version`, panicking descriptor) is recorded with its error and skipped; the
//! others keep working. Libraries are never unloaded.

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use plugin_api::{PluginDescriptor, PluginModRef, API_VERSION};
use std::{
    fmt,
    path::{Path, PathBuf},
};

/// A loaded plugin library.
#[derive(Clone)]
pub struct PluginHandle {
    /// The library file.
    pub path: PathBuf,
    /// Its root module.
    pub module: PluginModRef,
    /// What it declared.
    pub descriptor: PluginDescriptor,
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
    /// Discover and load the plugins in `dirs` (missing dirs are skipped).
    pub fn discover(dirs: &[PathBuf]) -> Self {
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
                set.load(&f);
            }
        }
        set
    }

    /// Load one library, recording success or failure. Returns the plugin on success.
    pub fn load(&mut self, path: &Path) -> Option<&PluginHandle> {
        match load_library(path) {
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

/// Load and check one plugin library.
pub fn load_library(path: &Path) -> Result<PluginHandle, String> {
    let header = lib_header_from_path(path).map_err(|e| describe(&e))?;
    let module = match header.init_root_module::<PluginModRef>() {
        Ok(m) => m,
        // abi_stable accepts a root module with at least the host's fields (a plugin of
        // the same or a newer minor). A plugin built against an older minor has fewer:
        // it is compatible when the host's layout extends the plugin's — the same check
        // with the roles swapped: every field and method the plugin has matches the
        // host's, recursively; the host reads the ones it lacks as `None` / defaults.
        Err(LibraryError::AbiInstability(_)) if extends_plugin_layout(header) => {
            // SAFETY: the layout was checked just above, in the direction that holds for
            // an older plugin: the plugin's root module is a prefix of the host's.
            unsafe { header.init_root_module_with_unchecked_layout::<PluginModRef>() }
                .map_err(|e| describe(&e))?
        }
        Err(e) => return Err(describe(&e)),
    };
    let version = module.api_version();
    if version != API_VERSION {
        return Err(format!(
            "built for plugin API version {version}, this host speaks version {API_VERSION}; rebuild the plugin"
        ));
    }
    let descriptor = (module.descriptor())()
        .into_result()
        .map_err(|e| format!("descriptor failed: {e}"))?;
    if descriptor.name.is_empty() {
        return Err("descriptor has an empty plugin name".into());
    }
    Ok(PluginHandle {
        path: path.to_owned(),
        module,
        descriptor,
    })
}

/// Whether the host's root-module layout extends the plugin's (an older minor of the
/// same API: fewer root fields, fewer trait methods, everything else identical).
fn extends_plugin_layout(header: &abi_stable::library::LibHeader) -> bool {
    use abi_stable::{abi_stability::abi_checking::check_layout_compatibility, StableAbi};
    header
        .root_mod_consts()
        .layout()
        .into_option()
        .is_some_and(|plugin| {
            check_layout_compatibility(plugin, <PluginModRef as StableAbi>::LAYOUT).is_ok()
        })
}

/// One readable line for an abi_stable load error.
fn describe(e: &LibraryError) -> String {
    match e {
        LibraryError::OpenError { err, .. } => format!("cannot open library: {err}"),
        LibraryError::GetSymbolError { .. } => format!(
            "not an MLXEngine plugin (no `{}` root module symbol)",
            PluginModRef::NAME
        ),
        LibraryError::IncompatibleVersionNumber {
            library_name,
            expected_version,
            actual_version,
        } => {
            // plugin-api's major version is the API version; 0.x releases were API 1.
            let api = |v: &abi_stable::sabi_types::VersionNumber| v.major.max(1);
            format!(
                "built for plugin API {} (plugin-api {actual_version}), this host speaks plugin API {} \
                 (plugin-api {expected_version}, {library_name}); rebuild the plugin against plugin-api {}",
                api(actual_version),
                api(expected_version),
                expected_version.major
            )
        }
        LibraryError::AbiInstability(_) => {
            "ABI layout of the plugin does not match this host (built against another plugin-api)"
                .into()
        }
        LibraryError::InvalidAbiHeader(h) => format!("incompatible abi_stable header: {h:?}"),
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or("load error")
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::sabi_types::VersionNumber;

    #[test]
    fn an_api_1_plugin_is_refused_naming_both_api_versions() {
        // What abi_stable reports for a plugin built against plugin-api 0.1.0 (API 1).
        let e = LibraryError::IncompatibleVersionNumber {
            library_name: PluginModRef::NAME,
            expected_version: VersionNumber::new(PluginModRef::VERSION_STRINGS).unwrap(),
            actual_version: VersionNumber {
                major: 0,
                minor: 1,
                patch: 0,
            },
        };
        let msg = describe(&e);
        assert!(
            msg.contains("built for plugin API 1 (plugin-api 0.1.0)")
                && msg.contains(&format!("this host speaks plugin API {API_VERSION}")),
            "{msg}"
        );
        // The interface crate's major version is the API version.
        assert_eq!(
            VersionNumber::new(PluginModRef::VERSION_STRINGS)
                .unwrap()
                .major,
            API_VERSION
        );
    }
}
