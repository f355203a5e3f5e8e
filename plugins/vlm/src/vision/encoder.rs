//! What the SigLIP and CLIP towers share beyond the `lm` crate's pre-norm encoder
//! (re-exported here): the tower config and the patch embedding's kernel, read as one
//! matmul over flattened patches.

pub use lm::encoder::{Act, Encoder, LayerNorm, Shape};
use lm::LlmError;
use mlx_common::Weights;
use mlx_rs::Array;
use serde_json::Value as Json;
use std::path::Path;

/// A tower's `vision_config`, resolved.
pub struct TowerConfig {
    pub hidden_size: i32,
    pub intermediate_size: i32,
    pub num_layers: i32,
    pub num_heads: i32,
    pub image_size: i32,
    pub patch_size: i32,
    pub layer_norm_eps: f32,
    pub act: Act,
}

/// What a tower's config class fills in for an absent key.
pub struct Defaults {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_layers: i64,
    pub num_heads: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub layer_norm_eps: f64,
    pub act: &'static str,
}

impl TowerConfig {
    /// From `vision_config` `v` of `file`, `d` where a key is absent; three channels.
    pub fn from_json(v: &Json, file: &Path, d: &Defaults) -> Result<Self, LlmError> {
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
        let act = v.get("hidden_act").and_then(Json::as_str).unwrap_or(d.act);
        let c = Self {
            hidden_size: int("hidden_size", d.hidden_size)?,
            intermediate_size: int("intermediate_size", d.intermediate_size)?,
            num_layers: int("num_hidden_layers", d.num_layers)?,
            num_heads: int("num_attention_heads", d.num_heads)?,
            image_size: int("image_size", d.image_size)?,
            patch_size: int("patch_size", d.patch_size)?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(Json::as_f64)
                .unwrap_or(d.layer_norm_eps) as f32,
            act: Act::from_name(act, "vision_config.hidden_act", file)?,
        };
        let channels = int("num_channels", 3)?;
        if c.hidden_size % c.num_heads != 0 || c.image_size % c.patch_size != 0 || channels != 3 {
            return Err(bad(format!(
                "`vision_config`: hidden_size {} over {} heads, image_size {} in patches of {}, {channels} channels do not fit together",
                c.hidden_size, c.num_heads, c.image_size, c.patch_size
            )));
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

/// The patch conv's kernel `name` as (hidden, channels · patch · patch), from PyTorch's
/// (out, in, kh, kw) or MLX's (out, kh, kw, in) layout.
pub fn patch_kernel(
    w: &mut Weights,
    name: &str,
    hidden: i32,
    channels: i32,
    patch: i32,
) -> Result<Array, LlmError> {
    let (h, ch, ps) = (hidden, channels, patch);
    let raw = w.take_raw(name)?;
    let k = match raw.shape() {
        [o, i, kh, kw] if (*o, *i, *kh, *kw) == (h, ch, ps, ps) => raw,
        [o, kh, kw, i] if (*o, *kh, *kw, *i) == (h, ps, ps, ch) => {
            raw.transpose_axes(&[0, 3, 1, 2])?
        }
        other => {
            return Err(LlmError::Weights {
                file: w.source().into(),
                msg: format!("`{name}` has shape {other:?}, expected [{h}, {ch}, {ps}, {ps}]"),
            })
        }
    };
    Ok(k.reshape(&[h, ch * ps * ps])?)
}

/// Flattened patches (N, hp · wp, 3 · patch²) of `frames` (N, 3, H, W), row by row,
/// each patch's pixels channel-major (the conv kernel's order); `(hp, wp)` beside them.
pub fn patches(frames: &Array, patch: i32) -> mlx_rs::error::Result<(Array, i32, i32)> {
    let s = frames.shape();
    let (n, ps) = (s[0], patch);
    let (hp, wp) = (s[2] / ps, s[3] / ps);
    let p = frames
        .reshape(&[n, 3, hp, ps, wp, ps])?
        .transpose_axes(&[0, 2, 4, 1, 3, 5])?
        .reshape(&[n, hp * wp, 3 * ps * ps])?;
    Ok((p, hp, wp))
}
