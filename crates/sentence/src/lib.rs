//! The text side of MLXEngine's sentence embedders, shared by the MLX and the ggml
//! `embed` providers so both read a model and a request the same way: `tokenizer.json`
//! checked against the model's tables ([`tokens`]), the sentence-transformers files
//! ([`SentenceConfig`]), a request's texts encoded and checked and grouped into batches of
//! similar length ([`TextEncoder`]), and pooling of token vectors ([`pool`]).

mod config;
pub mod pool;
mod texts;
pub mod tokens;

pub use config::SentenceConfig;
pub use texts::{batches, TextEncoder};

use plugin_api::{ErrorKind, PluginError};
use std::path::{Path, PathBuf};

/// What can go wrong reading a model's text files or a request's texts; every message
/// names the file or the text.
#[derive(Debug, thiserror::Error)]
pub enum SentenceError {
    #[error("{}: missing file", .0.display())]
    MissingFile(PathBuf),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {msg}", .file.display())]
    Config { file: PathBuf, msg: String },
    #[error("{}: {msg}", .file.display())]
    Tokenizer { file: PathBuf, msg: String },
    /// A request the model cannot take (too long, unknown pooling).
    #[error("{0}")]
    Request(String),
}

impl SentenceError {
    /// An I/O error on `path` (`MissingFile` when it does not exist).
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            Self::MissingFile(path.into())
        } else {
            Self::Io {
                path: path.into(),
                source,
            }
        }
    }

    /// The plugin-api error kind: `INVALID_REQUEST` for requests, `NOT_FOUND` for a missing
    /// file, `LOAD` for the rest.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Request(_) => ErrorKind::INVALID_REQUEST,
            Self::MissingFile(_) => ErrorKind::NOT_FOUND,
            _ => ErrorKind::LOAD,
        }
    }
}

impl From<SentenceError> for PluginError {
    fn from(e: SentenceError) -> Self {
        PluginError::new(e.kind(), e.to_string())
    }
}

/// `rel` (a path a model file names, such as a module folder) joined to `dir`, if it stays
/// inside it: relative, without `..`.
pub fn inside(dir: &Path, rel: &str) -> Result<PathBuf, String> {
    use std::path::Component;
    let p = Path::new(rel);
    if rel.is_empty()
        || !p
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "{rel:?} is not a path inside the model folder (relative, without `..`)"
        ));
    }
    Ok(dir.join(p))
}
