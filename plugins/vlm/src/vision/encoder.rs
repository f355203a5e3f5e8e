//! The pre-norm ViT encoder the SigLIP and CLIP towers share: layers of LayerNorm,
//! bidirectional multi-head attention with biases, LayerNorm, a two-layer MLP; and the
//! patch embedding's kernel, read as one matmul over flattened patches.
//! Skeleton: `Act` → `LayerNorm` → `Attention` → `Layer` → `Encoder`.

use lm::LlmError;
use mlx_common::{
    activation::{gelu, gelu_tanh_fast},
    Linear, Weights,
};
use mlx_rs::{fast, ops, Array};
use serde_json::Value as Json;
use std::path::Path;

/// The MLP's activation (`hidden_act`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// `gelu_pytorch_tanh` / `gelu_new` (SigLIP).
    GeluTanh,
    /// `quick_gelu`: x·σ(1.702·x) (OpenAI CLIP).
    QuickGelu,
    /// `gelu`: the exact, erf form.
    Gelu,
    /// `silu`: x·σ(x) (Qwen2.5-VL's gated MLP).
    Silu,
}

impl Act {
    /// `hidden_act` of `vision_config` in `file`.
    pub fn from_name(name: &str, file: &Path) -> Result<Self, LlmError> {
        match name {
            "gelu_pytorch_tanh" | "gelu_new" => Ok(Self::GeluTanh),
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            "silu" => Ok(Self::Silu),
            other => Err(LlmError::Config {
                file: file.into(),
                msg: format!(
                    "`vision_config.hidden_act` `{other}` is not supported (gelu_pytorch_tanh, quick_gelu, gelu, silu)"
                ),
            }),
        }
    }

    /// The activation of `x`.
    pub fn apply(self, x: &Array) -> mlx_rs::error::Result<Array> {
        match self {
            Self::GeluTanh => gelu_tanh_fast(x),
            Self::Gelu => gelu(x),
            Self::QuickGelu => x.multiply(&ops::sigmoid(&x.multiply(Array::from_f32(1.702))?)?),
            Self::Silu => x.multiply(&ops::sigmoid(x)?),
        }
    }
}

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
            act: Act::from_name(act, file)?,
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

/// The shapes of an encoder.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub hidden: i32,
    pub intermediate: i32,
    pub heads: i32,
    pub layers: i32,
    pub eps: f32,
    pub act: Act,
}

/// A LayerNorm with weight and bias.
pub struct LayerNorm {
    weight: Array,
    bias: Array,
    eps: f32,
}

impl LayerNorm {
    /// `{p}.weight` and `{p}.bias` of `dim`.
    pub fn load(w: &mut Weights, p: &str, dim: i32, eps: f32) -> Result<Self, LlmError> {
        Ok(Self {
            weight: w.take(&format!("{p}.weight"), &[dim])?,
            bias: w.take(&format!("{p}.bias"), &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Array) -> mlx_rs::error::Result<Array> {
        fast::layer_norm(x, &self.weight, &self.bias, self.eps)
    }

    pub fn arrays(&self) -> [&Array; 2] {
        [&self.weight, &self.bias]
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

/// The encoder layers.
pub struct Encoder {
    layers: Vec<Layer>,
    act: Act,
}

impl Encoder {
    /// The first `keep` of `s.layers` layers under `{p}.layers.{i}` (Hub names); the
    /// weights of the layers after them are read and dropped (a tower whose features
    /// come from an inner layer never runs them).
    pub fn load(s: Shape, w: &mut Weights, p: &str, keep: i32) -> Result<Self, LlmError> {
        let h = s.hidden;
        let lin = |w: &mut Weights, n: &str, i: i32, o: i32| w.linear(n, i, o, true);
        let layers = (0..s.layers)
            .map(|i| {
                let q = format!("{p}.layers.{i}");
                Ok(Layer {
                    norm1: LayerNorm::load(w, &format!("{q}.layer_norm1"), h, s.eps)?,
                    attn: Attention {
                        q_proj: lin(w, &format!("{q}.self_attn.q_proj"), h, h)?,
                        k_proj: lin(w, &format!("{q}.self_attn.k_proj"), h, h)?,
                        v_proj: lin(w, &format!("{q}.self_attn.v_proj"), h, h)?,
                        out_proj: lin(w, &format!("{q}.self_attn.out_proj"), h, h)?,
                        heads: s.heads,
                        head_dim: h / s.heads,
                    },
                    norm2: LayerNorm::load(w, &format!("{q}.layer_norm2"), h, s.eps)?,
                    fc1: lin(w, &format!("{q}.mlp.fc1"), h, s.intermediate)?,
                    fc2: lin(w, &format!("{q}.mlp.fc2"), s.intermediate, h)?,
                })
            })
            .collect::<Result<Vec<_>, LlmError>>()?;
        let mut layers = layers;
        layers.truncate(keep.clamp(0, s.layers) as usize);
        Ok(Self { layers, act: s.act })
    }

    /// `x` (N, L, hidden) through every kept layer.
    pub fn forward(&self, x: Array) -> mlx_rs::error::Result<Array> {
        let n = self.layers.len();
        Ok(self.hidden_states(x, &[n])?.remove(0))
    }

    /// Hidden states `at` (k: after the first k layers, 0 = `x` itself; each at most
    /// the kept layer count), in the order asked.
    pub fn hidden_states(&self, mut x: Array, at: &[usize]) -> mlx_rs::error::Result<Vec<Array>> {
        let mut out: Vec<Option<Array>> = vec![None; at.len()];
        let mut record = |k: usize, x: &Array| {
            for (slot, &want) in out.iter_mut().zip(at) {
                if want == k {
                    *slot = Some(x.clone());
                }
            }
        };
        record(0, &x);
        for (i, l) in self.layers.iter().enumerate() {
            let a = l.attn.forward(&l.norm1.forward(&x)?)?;
            x = x.add(&a)?;
            let m = l
                .fc2
                .forward(&self.act.apply(&l.fc1.forward(&l.norm2.forward(&x)?)?)?)?;
            x = x.add(&m)?;
            record(i + 1, &x);
        }
        Ok(out
            .into_iter()
            .map(|a| a.unwrap_or_else(|| x.clone()))
            .collect())
    }

    /// Every array it holds.
    pub fn parameters(&self) -> Vec<&Array> {
        let mut all = Vec::new();
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
            all.extend(l.norm1.arrays());
            all.extend(l.norm2.arrays());
        }
        all
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
