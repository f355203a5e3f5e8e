//! Architectures of the vlm plugin, one file each (named after `config.json`'s
//! `model_type`), and the architecture table. Each builds its language model through
//! the `lm` crate's table (the same Llama/Qwen2 code the llm plugin runs) and returns
//! its media side beside it.

pub mod idefics3;
pub mod llava;
pub mod llava_next;

use lm::{media::Media, models::CausalLm, LlmError};
use mlx_common::Weights;
use mlx_rs::Dtype;
use serde_json::Value as Json;
use std::path::Path;

/// A built model: its language model and its media side.
pub type Built = (Box<dyn CausalLm>, Box<dyn Media>);

/// Builds the language model and the media side from config.json, the model directory
/// and its weights (strict: every tensor used), at the load dtype.
pub type LoadFn = fn(&Json, &Path, Weights, Dtype) -> Result<Built, LlmError>;

/// An architecture: its `model_type`, how to build it, and the most frames one image
/// becomes under its processor's usual settings (what the estimate plans for).
pub struct Architecture {
    pub model_type: &'static str,
    pub load: LoadFn,
    pub frames_per_image: u64,
}

/// The architecture table. A model type not listed here is rejected before any download.
pub const ARCHITECTURES: &[Architecture] = &[
    // SmolVLM: 4×4 tiles of 512 and the whole image.
    Architecture {
        model_type: "idefics3",
        load: idefics3::load,
        frames_per_image: 17,
    },
    Architecture {
        model_type: "llava",
        load: llava::load,
        frames_per_image: 1,
    },
    // The whole image and up to 2×2 (or 1×3) tiles of the default grids.
    Architecture {
        model_type: "llava_next",
        load: llava_next::load,
        frames_per_image: 5,
    },
];

/// The table's entry for `model_type`.
pub fn find(model_type: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().find(|a| a.model_type == model_type)
}

/// Supported types, for messages.
pub fn supported_list() -> String {
    ARCHITECTURES
        .iter()
        .map(|a| a.model_type)
        .collect::<Vec<_>>()
        .join(", ")
}
