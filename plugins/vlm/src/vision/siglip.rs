//! The SigLIP vision transformer (Idefics3's and SmolVLM's tower, with their
//! resolution-independent position buckets): patch embedding (the conv as one matmul
//! over flattened patches), learned positions, pre-norm encoder layers (LayerNorm,
//! bidirectional attention with biases, GELU-tanh MLP), a final LayerNorm.
//! Skeleton: `Config` → `Attention` → `Mlp` → `Layer` → `Siglip`.

use lm::LlmError;
use mlx_common::{activation::gelu_tanh, Linear, Weights};
use mlx_rs::{fast, Array};
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
        let act = v
            .get("hidden_act")
            .and_then(Json::as_str)
            .unwrap_or("gelu_pytorch_tanh");
        if !matches!(act, "gelu_pytorch_tanh" | "gelu_new") {
            return Err(LlmError::Config {
                file: file.into(),
                msg: format!(
                    "`vision_config.hidden_act` `{act}` is not supported (gelu_pytorch_tanh)"
                ),
            });
        }
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
}

struct LayerNorm {
    weight: Array,
    bias: Array,
    eps: f32,
}

impl LayerNorm {
    fn load(w: &mut Weights, p: &str, dim: i32, eps: f32) -> Result<Self, LlmError> {
        Ok(Self {
            weight: w.take(&format!("{p}.weight"), &[dim])?,
            bias: w.take(&format!("{p}.bias"), &[dim])?,
            eps,
        })
    }

    fn forward(&self, x: &Array) -> mlx_rs::error::Result<Array> {
        fast::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: i32,
    head_dim: i32,
}

impl Attention {
    fn forward(&self, x: &Array) -> mlx_rs::error::Result<Array> {
        let (b, l) = (x.shape()[0], x.shape()[1]);
        let split = |t: Array| {
            t.reshape(&[b, l, self.heads, self.head_dim])?
                .transpose_axes(&[0, 2, 1, 3])
        };
        let q = split(self.q_proj.forward(x)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let o = fast::scaled_dot_product_attention(&q, &k, &v, scale, None, None)?;
        self.out_proj
            .forward(&o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[
                b,
                l,
                self.heads * self.head_dim,
            ])?)
    }
}

struct Layer {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The tower.
pub struct Siglip {
    pub config: Config,
    /// (hidden, channels · patch · patch): the patch conv's kernel, flattened.
    patch_w: Array,
    patch_b: Array,
    positions: Array,
    layers: Vec<Layer>,
    post_norm: LayerNorm,
}

impl Siglip {
    /// Its weights under `p` (`model.vision_model`): Hub names, the patch kernel in
    /// PyTorch's (out, in, kh, kw) or MLX's (out, kh, kw, in) layout.
    pub fn load(c: Config, w: &mut Weights, p: &str) -> Result<Self, LlmError> {
        let (h, ps, ch) = (c.hidden_size, c.patch_size, c.num_channels);
        let name = format!("{p}.embeddings.patch_embedding.weight");
        let raw = w.take_raw(&name)?;
        let patch_w = match raw.shape() {
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
        }
        .reshape(&[h, ch * ps * ps])?;
        let eps = c.layer_norm_eps;
        let lin = |w: &mut Weights, n: &str, i: i32, o: i32| w.linear(n, i, o, true);
        let layers = (0..c.num_layers)
            .map(|i| {
                let q = format!("{p}.encoder.layers.{i}");
                Ok(Layer {
                    norm1: LayerNorm::load(w, &format!("{q}.layer_norm1"), h, eps)?,
                    attn: Attention {
                        q_proj: lin(w, &format!("{q}.self_attn.q_proj"), h, h)?,
                        k_proj: lin(w, &format!("{q}.self_attn.k_proj"), h, h)?,
                        v_proj: lin(w, &format!("{q}.self_attn.v_proj"), h, h)?,
                        out_proj: lin(w, &format!("{q}.self_attn.out_proj"), h, h)?,
                        heads: c.num_heads,
                        head_dim: h / c.num_heads,
                    },
                    norm2: LayerNorm::load(w, &format!("{q}.layer_norm2"), h, eps)?,
                    fc1: lin(w, &format!("{q}.mlp.fc1"), h, c.intermediate_size)?,
                    fc2: lin(w, &format!("{q}.mlp.fc2"), c.intermediate_size, h)?,
                })
            })
            .collect::<Result<Vec<_>, LlmError>>()?;
        let side = c.side();
        Ok(Self {
            patch_b: w.take(&format!("{p}.embeddings.patch_embedding.bias"), &[h])?,
            positions: w.take(
                &format!("{p}.embeddings.position_embedding.weight"),
                &[side * side, h],
            )?,
            post_norm: LayerNorm::load(w, &format!("{p}.post_layernorm"), h, eps)?,
            patch_w,
            layers,
            config: c,
        })
    }

    /// Hidden states (N, patches, hidden) of `frames` (N, 3, H, W), normalised pixels;
    /// H and W multiples of the patch size.
    pub fn forward(&self, frames: &Array) -> mlx_rs::error::Result<Array> {
        let s = frames.shape();
        let (n, ps) = (s[0], self.config.patch_size);
        let (hp, wp) = (s[2] / ps, s[3] / ps);
        let patches = frames
            .reshape(&[n, 3, hp, ps, wp, ps])?
            .transpose_axes(&[0, 2, 4, 1, 3, 5])?
            .reshape(&[n, hp * wp, 3 * ps * ps])?;
        let mut x = mlx_rs::ops::matmul(&patches, self.patch_w.t())?.add(&self.patch_b)?;
        let ids = Array::from_slice(&self.position_ids(hp, wp), &[hp * wp]);
        x = x.add(&self.positions.take_axis(&ids, 0)?)?;
        for l in &self.layers {
            let a = l.attn.forward(&l.norm1.forward(&x)?)?;
            x = x.add(&a)?;
            let m = l
                .fc2
                .forward(&gelu_tanh(&l.fc1.forward(&l.norm2.forward(&x)?)?)?)?;
            x = x.add(&m)?;
        }
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
        for l in &self.layers {
            for lin in [
                &l.attn.q_proj,
                &l.attn.k_proj,
                &l.attn.v_proj,
                &l.attn.out_proj,
                &l.fc1,
                &l.fc2,
            ] {
                all.extend(lin.arrays());
            }
            all.extend([
                &l.norm1.weight,
                &l.norm1.bias,
                &l.norm2.weight,
                &l.norm2.bias,
            ]);
        }
        all.extend([&self.post_norm.weight, &self.post_norm.bias]);
        all
    }
}
