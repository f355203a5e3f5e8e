//! Errors of the embed plugin, converted to [`PluginError`] at the ABI boundary.

use plugin_api::{ErrorKind, PluginError};
use std::path::{Path, PathBuf};

/// What can go wrong loading or running an embedding model.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
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
    Tokenizer { file: PathBuf, msg: String },
    #[error("architecture `{0}` is not supported by the embed plugin (supported: {1})")]
    Architecture(String, String),
    #[error("{0}")]
    Request(String),
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
    #[error("embedding worker failed: {0}")]
    Worker(String),
    #[error(transparent)]
    Weights(#[from] mlx_common::WeightsError),
}

impl EmbedError {
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

impl From<EmbedError> for PluginError {
    fn from(e: EmbedError) -> Self {
        let kind = match &e {
            EmbedError::MissingFile(_)
            | EmbedError::Weights(mlx_common::WeightsError::MissingFile(_)) => ErrorKind::NOT_FOUND,
            EmbedError::Architecture(..) => ErrorKind::UNSUPPORTED,
            EmbedError::Request(_) => ErrorKind::INVALID_REQUEST,
            EmbedError::Mlx(_) | EmbedError::Worker(_) => ErrorKind::INTERNAL,
            _ => ErrorKind::LOAD,
        };
        PluginError::new(kind, e.to_string())
    }
}
