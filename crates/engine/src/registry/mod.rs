//! The model registry: `registry.toml` (shipped, never rewritten), extra files merged at
//! run time (`--registry`), the user's runtime registry (`mlxengine add`), and models
//! injected through the library API.
//!
//! Parsing is two-stage, like model configs: serde reads a raw form with spans, then each
//! entry is validated into a [`ModelEntry`]. Every mistake is an error naming the file,
//! line, model id and key.

mod files;

pub use files::{
    load_registry, shipped_registry_path, user_registry_path, UserRegistry, BUILTIN_REGISTRY,
};

use plugin_api::{Features, ModelKind};
use serde::Deserialize;
use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};
use toml::Spanned;

/// Where a model's files come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A Hugging Face Hub repository at a revision; `files` lists what the model needs
    /// (empty = decided by the downloader).
    Hub {
        repo: String,
        revision: String,
        files: Vec<String>,
    },
    /// A local directory or file.
    Path(PathBuf),
}

/// One validated registry entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// Unique id (`[a-z0-9._-]`, used on the CLI and in the API).
    pub id: String,
    /// Display name.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// Kind the model is served as.
    pub kind: ModelKind,
    /// Architecture (`config.json` `model_type`), lowercase.
    pub architecture: String,
    /// Where the files come from.
    pub source: Source,
    /// Quantization label (`"q4_1"`, `"4bit"`), if quantized.
    pub quantization: Option<String>,
    /// Load-time dtype override.
    pub dtype: Option<String>,
    /// KV-cache element type (one of [`KV_CACHE_TYPES`]); plugins see it as the
    /// `kv_cache` key of `options`.
    pub kv_cache: Option<String>,
    /// Parameter count.
    pub parameters: Option<u64>,
    /// Estimated download / weight size in bytes.
    pub size_bytes: Option<u64>,
    /// Context length in tokens.
    pub context_length: Option<u32>,
    /// Default system prompt for chat models.
    pub system_prompt: Option<String>,
    /// Extra end-of-sequence tokens.
    pub extra_eos: Vec<String>,
    /// Features every request to this model needs from the plugin.
    pub features: Features,
    /// Pin a plugin (by plugin name or backend, e.g. `"mlx-embed"`).
    pub backend: Option<String>,
    /// Plugin-specific table, passed through as JSON.
    pub options: serde_json::Value,
    /// `lora` entries: the registry id of the model the adapter applies to.
    pub base: Option<String>,
    /// `lora` entries: the adapter's scale when a request names none (1 by default).
    pub scale: Option<f32>,
    /// The model commands use for its kind when none is named.
    pub default: bool,
    /// Where the entry was defined (`file:line`, or `runtime`).
    pub origin: String,
}

/// A registry error: where, which model, what.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryError {
    /// File the error is in (or `runtime`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Model id, when known.
    pub model: Option<String>,
    /// What is wrong (names the key).
    pub message: String,
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        write!(f, ": ")?;
        if let Some(m) = &self.model {
            write!(f, "model `{m}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for RegistryError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    models: Vec<Spanned<RawModel>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    id: Spanned<String>,
    name: Option<String>,
    description: Option<String>,
    kind: Spanned<String>,
    architecture: Spanned<String>,
    source: Spanned<RawSource>,
    quantization: Option<String>,
    dtype: Option<Spanned<String>>,
    kv_cache: Option<Spanned<String>>,
    parameters: Option<u64>,
    size_bytes: Option<u64>,
    context_length: Option<u32>,
    system_prompt: Option<String>,
    #[serde(default)]
    extra_eos: Vec<String>,
    #[serde(default)]
    features: Vec<Spanned<String>>,
    backend: Option<String>,
    options: Option<toml::Table>,
    base: Option<Spanned<String>>,
    scale: Option<Spanned<f64>>,
    default: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    hub: Option<String>,
    revision: Option<String>,
    #[serde(default)]
    files: Vec<String>,
    path: Option<String>,
}

const DTYPES: &[&str] = &["float32", "float16", "bfloat16"];

/// Largest adapter scale (either sign) a registry entry or a request may give.
pub const MAX_ADAPTER_SCALE: f64 = 100.0;

/// KV-cache types a registry entry may ask for (`kv_cache`), in llama.cpp's names; each
/// `llm` provider maps them onto its own cache (ggml's typed cache; MLX's float or
/// quantized cache).
pub const KV_CACHE_TYPES: [&str; 5] = ["f32", "f16", "bf16", "q8_0", "q4_0"];

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The id of the `[[models]]` table that contains byte `offset`, found textually (used
/// for serde errors, which come before any id is known).
fn model_at(text: &str, offset: usize) -> Option<String> {
    // An error about a whole table (missing field) points at its `[[models]]` header.
    // (At a character boundary: the text may be any UTF-8; found by fuzzing.)
    let mut cut = offset.saturating_add(10).min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = &text[..cut];
    let start = head.rfind("[[models]]")?;
    let block = &text[start + 10..];
    let end = block.find("\n[").unwrap_or(block.len());
    block[..end].lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "id").then(|| v.trim().trim_matches('"').trim_matches('\'').to_owned())
    })
}

/// Parse one registry file's text. `file` names it in errors; relative source paths are
/// resolved against `base_dir`.
pub fn parse(text: &str, file: &str, base_dir: &Path) -> Result<Vec<ModelEntry>, RegistryError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        RegistryError {
            file: file.to_owned(),
            line: offset.map(|o| line_of(text, o)),
            model: offset.and_then(|o| model_at(text, o)),
            message: e.message().trim().to_owned(),
        }
    })?;
    let mut out: Vec<ModelEntry> = Vec::new();
    for m in raw.models {
        let m = m.into_inner();
        let id = m.id.get_ref().clone();
        let err = |span: std::ops::Range<usize>, message: String| RegistryError {
            file: file.to_owned(),
            line: Some(line_of(text, span.start)),
            model: Some(id.clone()),
            message,
        };
        if let Err(why) = check_id(&id) {
            return Err(err(m.id.span(), format!("key `id`: {why}")));
        }
        if let Some(prev) = out.iter().find(|e| e.id == id) {
            return Err(err(
                m.id.span(),
                format!("key `id`: duplicate id, first defined at {}", prev.origin),
            ));
        }
        let kind = ModelKind::from_name(m.kind.get_ref()).ok_or_else(|| {
            err(
                m.kind.span(),
                format!(
                    "key `kind`: unknown kind `{}` (expected one of {})",
                    m.kind.get_ref(),
                    ModelKind::ALL.map(|k| k.name()).join(", ")
                ),
            )
        })?;
        let architecture = m.architecture.get_ref().trim().to_ascii_lowercase();
        if architecture.is_empty() {
            return Err(err(
                m.architecture.span(),
                "key `architecture`: must not be empty".into(),
            ));
        }
        let src_span = m.source.span();
        let src = m.source.into_inner();
        let source = match (src.hub, src.path) {
            (Some(repo), None) => {
                if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
                    return Err(err(
                        src_span,
                        format!("key `source.hub`: {repo:?} is not `owner/name`"),
                    ));
                }
                Source::Hub {
                    repo,
                    revision: src.revision.unwrap_or_else(|| "main".into()),
                    files: src.files,
                }
            }
            (None, Some(p)) => {
                if src.revision.is_some() || !src.files.is_empty() {
                    return Err(err(
                        src_span,
                        "key `source`: `revision`/`files` only apply to `hub`".into(),
                    ));
                }
                Source::Path(expand_path(&p, base_dir))
            }
            (Some(_), Some(_)) => {
                return Err(err(
                    src_span,
                    "key `source`: give either `hub` or `path`, not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(src_span, "key `source`: needs `hub` or `path`".into()))
            }
        };
        let dtype = match m.dtype {
            Some(d) if !DTYPES.contains(&d.get_ref().as_str()) => {
                return Err(err(
                    d.span(),
                    format!(
                        "key `dtype`: unknown dtype `{}` (expected one of {})",
                        d.get_ref(),
                        DTYPES.join(", ")
                    ),
                ))
            }
            d => d.map(Spanned::into_inner),
        };
        let kv_cache = match m.kv_cache {
            Some(k) if !KV_CACHE_TYPES.contains(&k.get_ref().as_str()) => {
                return Err(err(
                    k.span(),
                    format!(
                        "key `kv_cache`: unknown type `{}` (expected one of {})",
                        k.get_ref(),
                        KV_CACHE_TYPES.join(", ")
                    ),
                ))
            }
            Some(k) if kind != ModelKind::LLM => {
                return Err(err(
                    k.span(),
                    format!("key `kv_cache`: only `llm` models have a KV cache, not `{kind}`"),
                ))
            }
            k => k.map(Spanned::into_inner),
        };
        let mut features = Features::NONE;
        for f in &m.features {
            let flag = Features::from_name(f.get_ref()).ok_or_else(|| {
                err(
                    f.span(),
                    format!(
                        "key `features`: unknown feature `{}` (expected one of {})",
                        f.get_ref(),
                        Features::NAMES.map(|(n, _)| n).join(", ")
                    ),
                )
            })?;
            features = features.union(flag);
        }
        let options = match m.options {
            Some(t) => serde_json::to_value(&t)
                .map_err(|e| err(src_span.clone(), format!("key `options`: {e}")))?,
            None => serde_json::Value::Object(Default::default()),
        };
        if kv_cache.is_some() && options.get("kv_cache").is_some() {
            return Err(err(
                src_span.clone(),
                "key `options.kv_cache`: set `kv_cache` on the model, not in its options".into(),
            ));
        }
        let base = match (kind, m.base) {
            (ModelKind::LORA, Some(b)) => {
                if let Err(why) = check_id(b.get_ref()) {
                    return Err(err(b.span(), format!("key `base`: {why}")));
                }
                Some(b.into_inner())
            }
            (ModelKind::LORA, None) => {
                return Err(err(
                    m.kind.span(),
                    "key `base`: a `lora` entry names the registry id of its base model".into(),
                ))
            }
            (_, Some(b)) => {
                return Err(err(
                    b.span(),
                    format!("key `base`: only `lora` entries have a base, not `{kind}`"),
                ))
            }
            (_, None) => None,
        };
        let scale = match m.scale {
            Some(s) if kind != ModelKind::LORA => {
                return Err(err(
                    s.span(),
                    format!("key `scale`: only `lora` entries have a scale, not `{kind}`"),
                ))
            }
            Some(s) if !(s.get_ref().is_finite() && s.get_ref().abs() <= MAX_ADAPTER_SCALE) => {
                return Err(err(
                    s.span(),
                    format!(
                        "key `scale`: {} is not a scale (a number from -{MAX_ADAPTER_SCALE} to {MAX_ADAPTER_SCALE})",
                        s.get_ref()
                    ),
                ))
            }
            s => s.map(|s| *s.get_ref() as f32),
        };
        let is_default = m.default.as_ref().is_some_and(|d| *d.get_ref());
        if let (true, Some(d)) = (is_default, &m.default) {
            if let Some(prev) = out.iter().find(|e| e.default && e.kind == kind) {
                return Err(err(
                    d.span(),
                    format!(
                        "key `default`: `{}` is already the default `{kind}` model ({})",
                        prev.id, prev.origin
                    ),
                ));
            }
        }
        out.push(ModelEntry {
            default: is_default,
            name: m.name.unwrap_or_else(|| id.clone()),
            description: m.description.unwrap_or_default(),
            kind,
            architecture,
            source,
            quantization: m.quantization,
            dtype,
            kv_cache,
            parameters: m.parameters,
            size_bytes: m.size_bytes,
            context_length: m.context_length,
            system_prompt: m.system_prompt,
            extra_eos: m.extra_eos,
            features,
            backend: m.backend,
            options,
            base,
            scale,
            origin: format!("{file}:{}", line_of(text, m.id.span().start)),
            id,
        });
    }
    Ok(out)
}

/// `~/x` → `$HOME/x`; `$VAR/x` / `${VAR}/x` expanded; relative paths joined to `base`.
pub fn expand_path(p: &str, base: &Path) -> PathBuf {
    let mut s = p.to_owned();
    if let Some(rest) = s.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            s = format!("{}/{rest}", home.to_string_lossy());
        }
    }
    if let Some(rest) = s.strip_prefix('$') {
        let (name, tail) = match rest.strip_prefix('{') {
            Some(r) => r.split_once('}').unwrap_or((r, "")),
            None => rest.split_at(rest.find('/').unwrap_or(rest.len())),
        };
        if let Ok(v) = std::env::var(name) {
            s = format!("{v}{tail}");
        }
    }
    let path = PathBuf::from(s);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// Longest model id.
pub const MAX_ID_LEN: usize = 128;

/// Why `id` is not a model id: ids are lowercase letters, digits, `.`, `_` and `-`,
/// starting with a letter or digit, at most [`MAX_ID_LEN`] characters. They name folders
/// (`<models>/<id>`), so `.`, `..` and hidden names are refused.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    let ok_start = id
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok_chars && ok_start && id.len() <= MAX_ID_LEN {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a model id: lowercase letters, digits, `.`, `_` or `-`, starting \
             with a letter or digit, at most {MAX_ID_LEN} characters"
        ))
    }
}

/// All models known to this process, by id, with where each came from.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    models: BTreeMap<String, ModelEntry>,
    files: Vec<PathBuf>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Merge the models of a registry file. Fails (changing nothing) on any mistake,
    /// including an id that is already registered.
    pub fn merge_file(&mut self, path: &Path) -> Result<usize, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|e| RegistryError {
            file: path.display().to_string(),
            line: None,
            model: None,
            message: format!("cannot read: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let n = self.merge_str(&text, &path.display().to_string(), base)?;
        self.files.push(path.to_owned());
        Ok(n)
    }

    /// Merge registry text (`file` names it in errors). All-or-nothing.
    pub fn merge_str(
        &mut self,
        text: &str,
        file: &str,
        base: &Path,
    ) -> Result<usize, RegistryError> {
        let entries = parse(text, file, base)?;
        for e in &entries {
            if let Some(prev) = self.models.get(&e.id) {
                let line = e.origin.rsplit(':').next().and_then(|l| l.parse().ok());
                return Err(RegistryError {
                    file: file.to_owned(),
                    line,
                    model: Some(e.id.clone()),
                    message: format!("key `id`: duplicate id, already defined at {}", prev.origin),
                });
            }
        }
        let n = entries.len();
        for e in entries {
            self.models.insert(e.id.clone(), e);
        }
        Ok(n)
    }

    /// Inject a model at run time (library API). Fails if the id exists.
    pub fn add(&mut self, mut entry: ModelEntry) -> Result<(), RegistryError> {
        if let Err(message) = check_id(&entry.id) {
            return Err(RegistryError {
                file: "runtime".into(),
                line: None,
                model: Some(entry.id.clone()),
                message,
            });
        }
        if let Some(prev) = self.models.get(&entry.id) {
            return Err(RegistryError {
                file: "runtime".into(),
                line: None,
                model: Some(entry.id.clone()),
                message: format!("duplicate id, already defined at {}", prev.origin),
            });
        }
        if entry.origin.is_empty() {
            entry.origin = "runtime".into();
        }
        self.models.insert(entry.id.clone(), entry);
        Ok(())
    }

    /// Remove a model at run time; returns it.
    pub fn remove(&mut self, id: &str) -> Option<ModelEntry> {
        self.models.remove(id)
    }

    /// The model `id`.
    pub fn get(&self, id: &str) -> Option<&ModelEntry> {
        self.models.get(id)
    }

    /// All models, ordered by id.
    pub fn models(&self) -> impl Iterator<Item = &ModelEntry> {
        self.models.values()
    }

    /// Files merged so far, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl ModelEntry {
    /// A minimal entry for runtime injection.
    pub fn new(id: &str, kind: ModelKind, architecture: &str, source: Source) -> Self {
        Self {
            id: id.to_owned(),
            name: id.to_owned(),
            description: String::new(),
            kind,
            architecture: architecture.to_ascii_lowercase(),
            source,
            quantization: None,
            dtype: None,
            kv_cache: None,
            parameters: None,
            size_bytes: None,
            context_length: None,
            system_prompt: None,
            extra_eos: Vec::new(),
            features: Features::NONE,
            backend: None,
            options: serde_json::Value::Object(Default::default()),
            base: None,
            scale: None,
            default: false,
            origin: String::new(),
        }
    }

    /// This entry as a `[[models]]` TOML table (for the user's runtime registry).
    pub fn to_toml(&self) -> String {
        let mut t = toml::Table::new();
        t.insert("id".into(), self.id.clone().into());
        if self.name != self.id {
            t.insert("name".into(), self.name.clone().into());
        }
        if !self.description.is_empty() {
            t.insert("description".into(), self.description.clone().into());
        }
        t.insert("kind".into(), self.kind.name().into());
        t.insert("architecture".into(), self.architecture.clone().into());
        let mut src = toml::Table::new();
        match &self.source {
            Source::Hub {
                repo,
                revision,
                files,
            } => {
                src.insert("hub".into(), repo.clone().into());
                src.insert("revision".into(), revision.clone().into());
                if !files.is_empty() {
                    src.insert("files".into(), files.clone().into());
                }
            }
            Source::Path(p) => {
                src.insert("path".into(), p.display().to_string().into());
            }
        }
        let opt = |t: &mut toml::Table, k: &str, v: &Option<String>| {
            if let Some(v) = v {
                t.insert(k.into(), v.clone().into());
            }
        };
        opt(&mut t, "quantization", &self.quantization);
        opt(&mut t, "dtype", &self.dtype);
        opt(&mut t, "kv_cache", &self.kv_cache);
        opt(&mut t, "system_prompt", &self.system_prompt);
        opt(&mut t, "backend", &self.backend);
        opt(&mut t, "base", &self.base);
        if let Some(s) = self.scale {
            t.insert("scale".into(), f64::from(s).into());
        }
        if let Some(c) = self.context_length {
            t.insert("context_length".into(), i64::from(c).into());
        }
        t.insert("source".into(), src.into());
        let mut doc = toml::Table::new();
        doc.insert("models".into(), vec![toml::Value::Table(t)].into());
        toml::to_string(&doc).expect("a table always serializes")
    }
}
