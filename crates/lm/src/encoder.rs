//! The pre-norm transformer encoder of the CLIP and SigLIP towers — vision (the vlm
//! plugin's) and text (the diffusion plugin's CLIP text encoders): layers of LayerNorm,
//! multi-head attention with biases (bidirectional, or causal for CLIP's text), LayerNorm,
//! a two-layer MLP.
//! Skeleton: `Act` → `LayerNorm` → `Attention` → `Layer` → `Encoder`.

use crate::LlmError;
use mlx_common::{
    activation::{gelu, gelu_tanh_fast},
    Linear, Weights,
};
use mlx_rs::{fast, ops, Array};
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
    /// `name`, the value of the config key `key` in `file` (named when refused).
    pub fn from_name(name: &str, key: &str, file: &Path) -> Result<Self, LlmError> {
        match name {
            "gelu_pytorch_tanh" | "gelu_new" => Ok(Self::GeluTanh),
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            "silu" => Ok(Self::Silu),
            other => Err(LlmError::Config {
                file: file.into(),
                msg: format!(
                    "`{key}` `{other}` is not supported (gelu_pytorch_tanh, quick_gelu, gelu, silu)"
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
    fn forward(&self, x: &Array, causal: bool) -> mlx_rs::error::Result<Array> {
        let (b, l) = (x.shape()[0], x.shape()[1]);
        let split = |t: Array| {
            t.reshape(&[b, l, self.heads, self.head_dim])?
                .transpose_axes(&[0, 2, 1, 3])
        };
        let q = split(self.q_proj.forward(x)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let o = if causal {
            fast::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                scale,
                fast::ScaledDotProductAttentionMask::Causal,
                None,
            )?
        } else {
            fast::scaled_dot_product_attention(&q, &k, &v, scale, None, None)?
        };
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
    /// Each position attends to itself and those before it (CLIP's text tower).
    causal: bool,
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
        Ok(Self {
            layers,
            act: s.act,
            causal: false,
        })
    }

    /// The same layers attending causally.
    pub fn causal(mut self) -> Self {
        self.causal = true;
        self
    }

    /// Layers kept.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether no layer was kept.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
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
            let a = l.attn.forward(&l.norm1.forward(&x)?, self.causal)?;
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
