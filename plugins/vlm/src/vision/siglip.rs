//! The SigLIP vision transformer (Idefics3's and SmolVLM's tower, with their
//! resolution-independent position buckets): patch embedding (the conv as one matmul
//! over flattened patches), learned positions, the shared pre-norm encoder (GELU-tanh
//! MLP), a final LayerNorm.
//! Skeleton: `Config` → `Siglip`.

use super::encoder::{self, Act, Encoder, LayerNorm, Shape};
use lm::LlmError;
use mlx_common::Weights;
use mlx_rs::Array;
use serde_json::Value as Json;
use std::path::Path;

/// Resolved `vision_config`.
pub struct Config {
    pub hidden_size: i32,
    pub intermediate_size: i32,
    pub num_layers: i32,
    pub num_heads: i32,
    pub num_channels: i32,
    pub image_size: i32,
    pub patch_size: i32,
    pub layer_norm_eps: f32,
    pub act: Act,
}

impl Config {
    /// From `vision_config` of `file` (SigLIP's defaults where a key is absent).
    pub fn from_json(v: &Json, file: &Path) -> Result<Self, LlmError> {
        let int = |k: &str, default: i64| -> Result<i32, LlmError> {
            let n = v.get(k).and_then(Json::as_i64).unwrap_or(default);
            if n <= 0 || n > 1 << 20 {
                return Err(LlmError::Config {
                    file: file.into(),
                    msg: format!("`vision_config.{k}` = {n} is out of range"),
                });
            }
            Ok(n as i32)
        };
        let act = Act::from_name(
            v.get("hidden_act")
                .and_then(Json::as_str)
                .unwrap_or("gelu_pytorch_tanh"),
            file,
        )?;
        let c = Self {
            hidden_size: int("hidden_size", 1152)?,
            intermediate_size: int("intermediate_size", 3072)?,
            num_layers: int("num_hidden_layers", 12)?,
            num_heads: int("num_attention_heads", 16)?,
            num_channels: int("num_channels", 3)?,
            image_size: int("image_size", 224)?,
            patch_size: int("patch_size", 32)?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(Json::as_f64)
                .unwrap_or(1e-6) as f32,
            act,
        };
        if c.hidden_size % c.num_heads != 0
            || c.image_size % c.patch_size != 0
            || c.num_channels != 3
        {
            return Err(LlmError::Config {
                file: file.into(),
                msg: format!(
                    "`vision_config`: hidden_size {} over {} heads, image_size {} in patches of {}, {} channels do not fit together",
                    c.hidden_size, c.num_heads, c.image_size, c.patch_size, c.num_channels
                ),
            });
        }
        Ok(c)
    }

    /// Patches per side of a full frame.
    pub fn side(&self) -> i32 {
        self.image_size / self.patch_size
    }

    /// The encoder's shapes.
    pub fn shape(&self) -> Shape {
        Shape {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_heads,
            layers: self.num_layers,
            eps: self.layer_norm_eps,
            act: self.act,
        }
    }
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
            c.num_channels,
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
