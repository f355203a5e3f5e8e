//! Errors of the llm plugin, converted to [`PluginError`] at the ABI boundary.

use plugin_api::{ErrorKind, PluginError};
use std::path::{Path, PathBuf};

/// What can go wrong loading or running a language model.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
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
    #[error("model_type `{0}` is not supported by the llm plugin (supported: {1})")]
    Architecture(String, String),
    #[error("{0}")]
    Request(String),
    #[error("{0}")]
    ContextLength(String),
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error(transparent)]
    Weights2(#[from] mlx_common::WeightsError),
}

impl LlmError {
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
}

impl From<LlmError> for PluginError {
    fn from(e: LlmError) -> Self {
        let kind = match &e {
            LlmError::MissingFile(_)
            | LlmError::Weights2(mlx_common::WeightsError::MissingFile(_)) => ErrorKind::NOT_FOUND,
            LlmError::Architecture(..)
            | LlmError::Gguf(
                gguf::GgufError::UnsupportedQuant { .. } | gguf::GgufError::Architecture { .. },
            ) => ErrorKind::UNSUPPORTED,
            LlmError::Request(_) => ErrorKind::INVALID_REQUEST,
            LlmError::ContextLength(_) => ErrorKind::CONTEXT_LENGTH,
            LlmError::Mlx(_) => ErrorKind::INTERNAL,
            _ => ErrorKind::LOAD,
        };
        PluginError::new(kind, e.to_string())
    }
}
