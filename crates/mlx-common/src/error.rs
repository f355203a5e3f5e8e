//! The error type of the MLX plugins (`llm`, `embed`, and the kinds to come), converted to
//! [`PluginError`] at the ABI boundary with one mapping to error kinds.

use crate::WeightsError;
use plugin_api::{ErrorKind, PluginError};
use std::path::{Path, PathBuf};

/// What can go wrong loading or running a model on MLX.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: missing file", .0.display())]
    MissingFile(PathBuf),
    #[error("{}: {msg}", .file.display())]
    Config { file: PathBuf, msg: String },
    #[error("{}: {msg}", .file.display())]
    Weights { file: PathBuf, msg: String },
    #[error("{}: {msg}", .file.display())]
    Tokenizer { file: PathBuf, msg: String },
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    /// `plugin` is the plugin's kind (`llm`, `embed`).
    #[error(
        "model_type `{name}` is not supported by the {plugin} plugin (supported: {supported})"
    )]
    Architecture {
        plugin: &'static str,
        name: String,
        supported: String,
    },
    #[error("{0}")]
    Request(String),
    #[error("{0}")]
    ContextLength(String),
    /// More memory than the host's budget leaves (a request's KV cache).
    #[error("{0}")]
    OverBudget(String),
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error("worker thread failed: {0}")]
    Worker(String),
    #[error(transparent)]
    Checkpoint(#[from] WeightsError),
}

impl From<sentence::SentenceError> for ModelError {
    fn from(e: sentence::SentenceError) -> Self {
        use sentence::SentenceError as S;
        match e {
            S::MissingFile(p) => Self::MissingFile(p),
            S::Io { path, source } => Self::Io { path, source },
            S::Config { file, msg } => Self::Config { file, msg },
            S::Tokenizer { file, msg } => Self::Tokenizer { file, msg },
            S::Request(msg) => Self::Request(msg),
        }
    }
}

impl ModelError {
    /// An I/O error on `path` (`MissingFile` when it does not exist).
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        sentence::SentenceError::io(path, source).into()
    }
}

impl From<ModelError> for PluginError {
    fn from(e: ModelError) -> Self {
        let kind = match &e {
            ModelError::MissingFile(_) | ModelError::Checkpoint(WeightsError::MissingFile(_)) => {
                ErrorKind::NOT_FOUND
            }
            ModelError::Architecture { .. }
            | ModelError::Gguf(
                gguf::GgufError::UnsupportedQuant { .. } | gguf::GgufError::Architecture { .. },
            ) => ErrorKind::UNSUPPORTED,
            ModelError::Request(_) => ErrorKind::INVALID_REQUEST,
            ModelError::ContextLength(_) => ErrorKind::CONTEXT_LENGTH,
            ModelError::OverBudget(_) => ErrorKind::RESOURCE_EXHAUSTED,
            ModelError::Mlx(_) | ModelError::Worker(_) => ErrorKind::INTERNAL,
            _ => ErrorKind::LOAD,
        };
        PluginError::new(kind, e.to_string())
    }
}
