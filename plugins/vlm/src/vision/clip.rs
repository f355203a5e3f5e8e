//! The CLIP vision transformer (LLaVA's tower, OpenAI's ViT-L/14 at 336 pixels):
//! patch embedding without bias, a class token in front, learned positions for the
//! class token and every patch, a LayerNorm before the shared pre-norm encoder
//! (quick-GELU MLP). LLaVA reads an inner layer's hidden states (`vision_feature_layer`),
//! so the tower runs up to it and holds no later layer, nor the final LayerNorm.
//! Skeleton: `Config` → `Clip`.

use super::encoder::{self, Defaults, Encoder, LayerNorm, TowerConfig};
use lm::LlmError;
use mlx_common::Weights;
use mlx_rs::{ops, Array};
use serde_json::Value as Json;
use std::path::Path;

/// Resolved `vision_config`.
pub type Config = TowerConfig;

/// `CLIPVisionConfig`'s defaults.
pub const DEFAULTS: Defaults = Defaults {
    hidden_size: 768,
    intermediate_size: 3072,
    num_layers: 12,
    num_heads: 12,
    image_size: 224,
    patch_size: 32,
    layer_norm_eps: 1e-5,
    act: "quick_gelu",
};

/// `vision_config` of `file`.
pub fn config(v: &Json, file: &Path) -> Result<Config, LlmError> {
    TowerConfig::from_json(v, file, &DEFAULTS)
}

/// The tower, up to its feature layer.
pub struct Clip {
    pub config: Config,
    class: Array,
    /// (hidden, 3 · patch · patch): the patch conv's kernel, flattened.
    patch_w: Array,
    positions: Array,
    pre_norm: LayerNorm,
    encoder: Encoder,
}

impl Clip {
    /// Its weights under `p` (`…vision_tower`), keeping the first `keep`
    /// encoder layers: hidden state `keep` (0 = the embeddings after the first
    /// LayerNorm) is what [`Clip::forward`] returns. The final LayerNorm is dropped.
    pub fn load(c: Config, w: &mut Weights, p: &str, keep: i32) -> Result<Self, LlmError> {
        let h = c.hidden_size;
        let shape = c.shape();
        let side = c.side();
        let clip = Self {
            class: w.take(&format!("{p}.embeddings.class_embedding"), &[h])?,
            patch_w: encoder::patch_kernel(
                w,
                &format!("{p}.embeddings.patch_embedding.weight"),
                h,
                3,
                c.patch_size,
            )?,
            positions: w.take(
                &format!("{p}.embeddings.position_embedding.weight"),
                &[side * side + 1, h],
            )?,
            pre_norm: LayerNorm::load(w, &format!("{p}.pre_layrnorm"), h, c.layer_norm_eps)?,
            encoder: Encoder::load(shape, w, &format!("{p}.encoder"), keep)?,
            config: c,
        };
        // Present in full checkpoints, absent from some conversions; never run.
        let post = format!("{p}.post_layernorm.");
        w.drop_where(|n| n.starts_with(&post));
        Ok(clip)
    }

    /// Hidden states `at` (see [`Encoder::hidden_states`]; each within the kept layers),
    /// (N, 1 + patches, hidden) each, of `frames` (N, 3, S, S), normalised pixels at
    /// the tower's `image_size`: the class token first.
    pub fn forward(&self, frames: &Array, at: &[usize]) -> mlx_rs::error::Result<Vec<Array>> {
        let (patches, _, _) = encoder::patches(frames, self.config.patch_size)?;
        let n = patches.shape()[0];
        let h = self.config.hidden_size;
        let x = ops::matmul(&patches, self.patch_w.t())?;
        let class = ops::broadcast_to(self.class.reshape(&[1, 1, h])?, &[n, 1, h])?;
        let x = ops::concatenate(&[&class.as_dtype(x.dtype())?, &x], 1)?.add(&self.positions)?;
        self.encoder.hidden_states(self.pre_norm.forward(&x)?, at)
    }

    /// Every array it holds.
    pub fn parameters(&self) -> Vec<&Array> {
        let mut all = vec![&self.class, &self.patch_w, &self.positions];
        all.extend(self.pre_norm.arrays());
        all.extend(self.encoder.parameters());
        all
    }
}
