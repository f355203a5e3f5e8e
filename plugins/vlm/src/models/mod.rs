//! Architectures of the vlm plugin, one file each (named after `config.json`'s
//! `model_type`), and the architecture table. Each builds its language model through
//! the `lm` crate's table (the same Llama/Qwen2 code the llm plugin runs) and returns
//! its media side beside it.

pub mod idefics3;
pub mod llava;
pub mod llava_next;
pub mod qwen2_5_vl;
pub mod qwen2_vl;

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

/// The most patches the vision tower reads for one image, from config.json and the
/// model directory (what the estimate plans for).
pub type PatchesFn = fn(&Json, &Path) -> u64;

/// An architecture: its `model_type`, how to build it, and how many patches one image
/// takes at most.
pub struct Architecture {
    pub model_type: &'static str,
    pub load: LoadFn,
    pub patches_per_image: PatchesFn,
}

/// Patches of one square frame of `vision_config.image_size`.
fn frame_patches(cfg: &Json) -> u64 {
    let v = cfg.get("vision_config").unwrap_or(&Json::Null);
    let int = |k: &str| v.get(k).and_then(Json::as_u64).unwrap_or(0);
    (int("image_size") / int("patch_size").max(1)).pow(2)
}

/// A fixed number of frames of the tower's size.
macro_rules! frames {
    ($n:expr) => {{
        fn patches(cfg: &Json, _dir: &Path) -> u64 {
            $n * frame_patches(cfg)
        }
        patches
    }};
}

/// The architecture table. A model type not listed here is rejected before any download.
pub const ARCHITECTURES: &[Architecture] = &[
    // SmolVLM: 4×4 tiles of 512 and the whole image.
    Architecture {
        model_type: "idefics3",
        load: idefics3::load,
        patches_per_image: frames!(17),
    },
    Architecture {
        model_type: "llava",
        load: llava::load,
        patches_per_image: frames!(1),
    },
    // The whole image and up to 2×2 (or 1×3) tiles of the default grids.
    Architecture {
        model_type: "llava_next",
        load: llava_next::load,
        patches_per_image: frames!(5),
    },
    // One frame of at most the processor's `max_pixels`.
    Architecture {
        model_type: "qwen2_vl",
        load: qwen2_vl::load,
        patches_per_image: qwen2_vl::patches_per_image,
    },
    Architecture {
        model_type: "qwen2_5_vl",
        load: qwen2_5_vl::load,
        patches_per_image: qwen2_vl::patches_per_image,
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
