//! Image generation (`diffusion`) requests.

use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};

/// Generate images from a prompt.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct ImageRequest {
    /// What to draw.
    pub prompt: RString,
    /// What to avoid (empty = none).
    pub negative_prompt: RString,
    /// Width in pixels (0 = model default).
    pub width: u32,
    /// Height in pixels (0 = model default).
    pub height: u32,
    /// Denoising steps (0 = model default).
    pub steps: u32,
    /// Classifier-free guidance scale (0 = model default).
    pub guidance: f32,
    /// RNG seed; same seed, same image.
    pub seed: ROption<u64>,
    /// Number of images.
    pub count: u32,
    /// Sampler / scheduler name (`"euler"`, `"euler_a"`, `"ddim"`, `"dpmpp_2m"`,
    /// `"lcm"`); empty = the model's `scheduler_config.json`.
    pub sampler: RString,
    /// img2img: the encoded starting image (PNG, JPEG); empty = txt2img.
    pub init_image: RVec<u8>,
    /// Inpainting: an encoded mask of `init_image`'s size (white = repaint); empty = none.
    pub mask: RVec<u8>,
    /// img2img: how far from `init_image` to move, 0..=1 (0 = model default).
    pub strength: f32,
    /// Additions without an ABI change, as a JSON object (empty = none).
    pub options: RString,
}

/// Generated images.
#[repr(C)]
#[derive(StableAbi, serde::Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct ImageResponse {
    /// PNG files.
    pub images: RVec<RVec<u8>>,
    /// The seed used (reported so a result can be reproduced).
    pub seed: u64,
}
