//! The SigLIP vision transformer (Idefics3's and SmolVLM's tower, with their
//! resolution-independent position buckets): patch embedding (the conv as one matmul
//! over flattened patches), learned positions, the shared pre-norm encoder (GELU-tanh
//! MLP), a final LayerNorm.
//! Skeleton: `Config` → `Siglip`.

use super::encoder::{self, Defaults, Encoder, LayerNorm, TowerConfig};
use lm::LlmError;
use mlx_common::Weights;
use mlx_rs::Array;
use serde_json::Value as Json;
use std::path::Path;

/// Resolved `vision_config`.
pub type Config = TowerConfig;

/// `Idefics3VisionConfig`'s defaults (the SigLIP tower as Idefics3 configures it).
pub const DEFAULTS: Defaults = Defaults {
    hidden_size: 1152,
    intermediate_size: 3072,
    num_layers: 12,
    num_heads: 16,
    image_size: 224,
    patch_size: 32,
    layer_norm_eps: 1e-6,
    act: "gelu_pytorch_tanh",
};

/// `vision_config` of `file`.
pub fn config(v: &Json, file: &Path) -> Result<Config, LlmError> {
    TowerConfig::from_json(v, file, &DEFAULTS)
}

/// The tower.
pub struct Siglip {
    pub config: Config,
    /// (hidden, channels · patch · patch): the patch conv's kernel, flattened.
    patch_w: Array,
    patch_b: Array,
    positions: Array,
    encoder: Encoder,
    post_norm: LayerNorm,
}

impl Siglip {
    /// Its weights under `p` (`model.vision_model`): Hub names, the patch kernel in
    /// PyTorch's (out, in, kh, kw) or MLX's (out, kh, kw, in) layout.
    pub fn load(c: Config, w: &mut Weights, p: &str) -> Result<Self, LlmError> {
        let h = c.hidden_size;
        let patch_w = encoder::patch_kernel(
            w,
            &format!("{p}.embeddings.patch_embedding.weight"),
            h,
            3,
            c.patch_size,
        )?;
        let encoder = Encoder::load(c.shape(), w, &format!("{p}.encoder"), c.num_layers)?;
        let side = c.side();
        Ok(Self {
            patch_b: w.take(&format!("{p}.embeddings.patch_embedding.bias"), &[h])?,
            positions: w.take(
                &format!("{p}.embeddings.position_embedding.weight"),
                &[side * side, h],
            )?,
            post_norm: LayerNorm::load(w, &format!("{p}.post_layernorm"), h, c.layer_norm_eps)?,
            patch_w,
            encoder,
            config: c,
        })
    }

    /// Hidden states (N, patches, hidden) of `frames` (N, 3, H, W), normalised pixels;
    /// H and W multiples of the patch size.
    pub fn forward(&self, frames: &Array) -> mlx_rs::error::Result<Array> {
        let (patches, hp, wp) = encoder::patches(frames, self.config.patch_size)?;
        let mut x = mlx_rs::ops::matmul(&patches, self.patch_w.t())?.add(&self.patch_b)?;
        let ids = Array::from_slice(&self.position_ids(hp, wp), &[hp * wp]);
        x = x.add(&self.positions.take_axis(&ids, 0)?)?;
        let x = self.encoder.forward(x)?;
        self.post_norm.forward(&x)
    }

    /// Position ids of an unpadded `hp`×`wp` patch grid: each patch's fractional
    /// coordinate bucketed into the trained `side`×`side` grid (Idefics3's
    /// `bucketize(..., right=True)` over boundaries 1/side, 2/side, ...).
    fn position_ids(&self, hp: i32, wp: i32) -> Vec<i32> {
        let side = self.config.side();
        if (hp, wp) == (side, side) {
            return (0..side * side).collect();
        }
        let bucket = |i: i32, n: i32| -> i32 {
            let frac = (i as f32 * (1.0 / n as f32)).min(1.0 - 1e-6);
            (1..side)
                .filter(|b| (*b as f32 / side as f32) <= frac)
                .count() as i32
        };
        let mut ids = Vec::with_capacity((hp * wp) as usize);
        for i in 0..hp {
            for j in 0..wp {
                ids.push(bucket(i, hp) * side + bucket(j, wp));
            }
        }
        ids
    }

    /// Every array it holds.
    pub fn parameters(&self) -> Vec<&Array> {
        let mut all = vec![&self.patch_w, &self.patch_b, &self.positions];
        all.extend(self.encoder.parameters());
        all.extend(self.post_norm.arrays());
        all
    }
}
