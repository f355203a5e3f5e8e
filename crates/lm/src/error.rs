//! Errors of the llm plugin: the MLX plugins' shared [`mlx_common::ModelError`].

pub use mlx_common::ModelError as LlmError;
