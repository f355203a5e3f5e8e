//! The registry files a command sees, and the only writes to any of them: the user's
//! runtime registry (`mlxengine add`, `pull`, `remove`), edited under a lock file and
//! replaced atomically, so two processes never lose each other's entries and a crash
//! never leaves half a file.

use super::{ModelEntry, Registry, RegistryError, Source};
use std::path::{Path, PathBuf};

/// The registry shipped with this build, used when no `registry.toml` file is found.
pub const BUILTIN_REGISTRY: &str = include_str!("../../../../registry.toml");

/// Where the shipped registry is read from: `$MLXENGINE_REGISTRY`, else `registry.toml`
/// beside the executable, else the source tree this binary was built from (a checkout),
/// else `None` (the built-in copy, [`BUILTIN_REGISTRY`]).
pub fn shipped_registry_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MLXENGINE_REGISTRY") {
        return Some(p.into());
    }
    let beside = std::env::current_exe()
        .ok()?
        .parent()?
        .join("registry.toml");
    if beside.is_file() {
        return Some(beside);
    }
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join("registry.toml");
    source
        .is_file()
        .then(|| source.canonicalize().unwrap_or(source))
}

/// The user's runtime registry (`mlxengine add` writes here; merged on every run):
/// `$MLXENGINE_HOME/registry.toml`, else `${XDG_CONFIG_HOME:-~/.config}/mlxengine/registry.toml`.
pub fn user_registry_path() -> PathBuf {
    if let Some(h) = std::env::var_os("MLXENGINE_HOME") {
        return PathBuf::from(h).join("registry.toml");
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| hub::paths::home().join(".config"));
    base.join("mlxengine").join("registry.toml")
}

/// The registry a command sees: shipped, then the user's runtime registry, then `extra`
/// files, in that order. A duplicate id across them is an error.
pub fn load_registry(extra: &[PathBuf]) -> Result<Registry, RegistryError> {
    let mut reg = Registry::new();
    match shipped_registry_path() {
        Some(p) => {
            reg.merge_file(&p)?;
        }
        None => {
            reg.merge_str(BUILTIN_REGISTRY, "registry.toml (built in)", Path::new("."))?;
        }
    }
    let user = user_registry_path();
    if user.is_file() {
        reg.merge_file(&user)?;
    }
    for f in extra {
        reg.merge_file(f)?;
    }
    Ok(reg)
}

/// The user's runtime registry, held under its lock file: commands that edit it in two
/// processes at once take turns. Every edit is validated against all registries
/// ([`load_registry`] with `extra`) before the file is replaced.
pub struct UserRegistry {
    path: PathBuf,
    extra: Vec<PathBuf>,
    _lock: std::fs::File,
}

impl UserRegistry {
    /// Take the lock on [`user_registry_path`] (waiting for another process's edit);
    /// `extra` are the `--registry` files edits are checked against.
    pub fn lock(extra: &[PathBuf]) -> Result<Self, RegistryError> {
        let path = user_registry_path();
        let lock_path = path.with_extension("toml.lock");
        let fail = |what: &str, p: &Path, e: std::io::Error| RegistryError {
            file: p.display().to_string(),
            line: None,
            model: None,
            message: format!("{what}: {e}"),
        };
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| fail("cannot create its folder", d, e))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| fail("cannot open the lock file", &lock_path, e))?;
        f.lock().map_err(|e| fail("cannot lock", &lock_path, e))?;
        Ok(Self {
            path,
            extra: extra.to_vec(),
            _lock: f,
        })
    }

    /// The file this edits.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every registry as a command sees it now.
    pub fn all(&self) -> Result<Registry, RegistryError> {
        load_registry(&self.extra)
    }

    /// Append `entry`, checked exactly as a registry file would be against everything
    /// already known (`source` names the command in errors).
    pub fn add(&self, entry: &ModelEntry, source: &str) -> Result<(), RegistryError> {
        let text = entry.to_toml();
        self.all()?.merge_str(&text, source, Path::new("."))?;
        let mut current = std::fs::read_to_string(&self.path).unwrap_or_default();
        if !current.is_empty() && !current.ends_with('\n') {
            current.push('\n');
        }
        current.push('\n');
        current.push_str(&text);
        self.write(&current)
    }

    /// Register a model pulled from the Hub unless one of the same repo and revision is
    /// known already; the id it is registered under.
    pub fn register_pulled(&self, entry: &ModelEntry) -> Result<String, RegistryError> {
        let reg = self.all()?;
        let error = |message: String| RegistryError {
            file: self.path.display().to_string(),
            line: None,
            model: Some(entry.id.clone()),
            message,
        };
        let Source::Hub { repo, revision, .. } = &entry.source else {
            return Err(error("only Hub models are registered by pull".into()));
        };
        if let Some(m) = reg.models().find(|m| {
            matches!(&m.source, Source::Hub { repo: r2, revision: v2, .. } if r2 == repo && v2 == revision)
        }) {
            return Ok(m.id.clone());
        }
        if let Some(m) = reg.get(&entry.id) {
            return Err(error(format!(
                "the id is taken by a model defined at {}; choose another with --id",
                m.origin
            )));
        }
        self.add(entry, "mlxengine pull")?;
        Ok(entry.id.clone())
    }

    /// Remove model `id`. Fails naming where it is defined when that is not this file.
    pub fn remove(&self, id: &str) -> Result<(), RegistryError> {
        let error = |message: String| RegistryError {
            file: self.path.display().to_string(),
            line: None,
            model: Some(id.to_owned()),
            message,
        };
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut doc: toml::Table = toml::from_str(&text).map_err(|e| error(e.to_string()))?;
        let count = |doc: &toml::Table| {
            doc.get("models")
                .and_then(|m| m.as_array())
                .map_or(0, |a| a.len())
        };
        let before = count(&doc);
        if let Some(models) = doc.get_mut("models").and_then(|m| m.as_array_mut()) {
            models.retain(|m| m.get("id").and_then(|i| i.as_str()) != Some(id));
        }
        if before == count(&doc) {
            return Err(match self.all()?.get(id) {
                Some(m) => error(format!(
                    "defined at {}, not in your runtime registry; it cannot be removed here",
                    m.origin
                )),
                None => error("unknown model".into()),
            });
        }
        self.write(&toml::to_string(&doc).map_err(|e| error(e.to_string()))?)
    }

    /// Replace the file through a temporary file and a rename.
    fn write(&self, text: &str) -> Result<(), RegistryError> {
        let tmp = self.path.with_extension("toml.tmp");
        let fail = |p: &Path, e: std::io::Error| RegistryError {
            file: p.display().to_string(),
            line: None,
            model: None,
            message: format!("cannot write: {e}"),
        };
        std::fs::write(&tmp, text).map_err(|e| fail(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| fail(&self.path, e))
    }
}
