//! Errors of the embed plugin: the MLX plugins' shared [`mlx_common::ModelError`].

pub use mlx_common::ModelError as EmbedError;
