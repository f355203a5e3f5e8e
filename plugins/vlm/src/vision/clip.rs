//! The CLIP vision transformer (LLaVA's tower, OpenAI's ViT-L/14 at 336 pixels):
//! patch embedding without bias, a class token in front, learned positions for the
//! class token and every patch, a LayerNorm before the shared pre-norm encoder
//! (quick-GELU MLP). LLaVA reads an inner layer's hidden states (`vision_feature_layer`),
//! so the tower runs up to it and holds no later layer, nor the final LayerNorm.
//! Skeleton: `Config` → `Clip`.

use super::encoder::{self, Act, Encoder, LayerNorm, Shape};
use lm::LlmError;
use mlx_common::Weights;
use mlx_rs::{ops, Array};
use serde_json::Value as Json;
use std::path::Path;

/// Resolved `vision_config`.
pub struct Config {
    pub hidden_size: i32,
    pub intermediate_size: i32,
    pub num_layers: i32,
    pub num_heads: i32,
    pub image_size: i32,
    pub patch_size: i32,
    pub layer_norm_eps: f32,
    pub act: Act,
}

impl Config {
    /// From `vision_config` of `file` (`CLIPVisionConfig`'s defaults where a key is
    /// absent).
    pub fn from_json(v: &Json, file: &Path) -> Result<Self, LlmError> {
        let bad = |msg: String| LlmError::Config {
            file: file.into(),
            msg,
        };
        let int = |k: &str, default: i64| -> Result<i32, LlmError> {
            let n = v.get(k).and_then(Json::as_i64).unwrap_or(default);
            if n <= 0 || n > 1 << 20 {
                return Err(bad(format!("`vision_config.{k}` = {n} is out of range")));
            }
            Ok(n as i32)
        };
        let act = Act::from_name(
            v.get("hidden_act")
                .and_then(Json::as_str)
                .unwrap_or("quick_gelu"),
            file,
        )?;
        let c = Self {
            hidden_size: int("hidden_size", 768)?,
            intermediate_size: int("intermediate_size", 3072)?,
            num_layers: int("num_hidden_layers", 12)?,
            num_heads: int("num_attention_heads", 12)?,
            image_size: int("image_size", 224)?,
            patch_size: int("patch_size", 32)?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(Json::as_f64)
                .unwrap_or(1e-5) as f32,
            act,
        };
        if int("num_channels", 3)? != 3
            || c.hidden_size % c.num_heads != 0
            || c.image_size % c.patch_size != 0
        {
            return Err(bad(format!(
                "`vision_config`: hidden_size {} over {} heads, image_size {} in patches of {} do not fit together",
                c.hidden_size, c.num_heads, c.image_size, c.patch_size
            )));
        }
        Ok(c)
    }

    /// Patches per side of a frame.
    pub fn side(&self) -> i32 {
        self.image_size / self.patch_size
    }
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
        let shape = Shape {
            hidden: h,
            intermediate: c.intermediate_size,
            heads: c.num_heads,
            layers: c.num_layers,
            eps: c.layer_norm_eps,
            act: c.act,
        };
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
