//! The layers the diffusion components share: 2-D convolutions over NHWC images (weights
//! read from PyTorch's (out, in, kh, kw) layout or MLX's (out, kh, kw, in)), GroupNorm
//! as PyTorch computes it, multi-head attention over token rows, SiLU.
//!
//! Every image tensor here is NHWC, MLX's convolution layout; diffusers' NCHW latents are
//! transposed once where they enter and leave.

use mlx_common::{Linear, ModelError, Weights};
use mlx_rs::{fast, ops, Array};

/// Result of an MLX computation.
pub type MlxResult<T> = mlx_rs::error::Result<T>;

/// `x · σ(x)`.
pub fn silu(x: &Array) -> MlxResult<Array> {
    x.multiply(&ops::sigmoid(x)?)
}

/// A 2-D convolution with a bias, square kernel, one stride and padding for both axes.
pub struct Conv2d {
    weight: Array,
    bias: Array,
    stride: i32,
    padding: i32,
}

impl Conv2d {
    /// `{p}.weight` of `out` × `inp` × `k` × `k` (either layout) and `{p}.bias`.
    pub fn load(
        w: &mut Weights,
        p: &str,
        inp: i32,
        out: i32,
        k: i32,
        stride: i32,
        padding: i32,
    ) -> Result<Self, ModelError> {
        let name = format!("{p}.weight");
        let raw = w.take_raw(&name)?;
        let torch = [out, inp, k, k];
        let mlx = [out, k, k, inp];
        let weight = if raw.shape() == torch {
            raw.transpose_axes(&[0, 2, 3, 1])?
        } else if raw.shape() == mlx {
            raw
        } else {
            return Err(ModelError::Weights {
                file: w.source().into(),
                msg: format!(
                    "tensor `{name}` has shape {:?}, expected {torch:?} (or MLX's {mlx:?})",
                    raw.shape()
                ),
            });
        };
        let weight = weight.as_dtype(w.dtype())?;
        let bias = w.take(&format!("{p}.bias"), &[out])?;
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
        })
    }

    /// `x` (N, H, W, in) → (N, H', W', out).
    pub fn forward(&self, x: &Array) -> MlxResult<Array> {
        let (s, p) = (self.stride, self.padding);
        ops::conv2d(x, &self.weight, (s, s), (p, p), None, None)?.add(&self.bias)
    }

    /// Its arrays.
    pub fn arrays(&self) -> [&Array; 2] {
        [&self.weight, &self.bias]
    }
}

/// GroupNorm over the channels of NHWC `x`: statistics per sample and group over the
/// pixels and the group's channels (float32), then the per-channel scale and shift.
pub struct GroupNorm {
    weight: Array,
    bias: Array,
    groups: i32,
    eps: f32,
}

impl GroupNorm {
    /// `{p}.weight` and `{p}.bias` of `channels`, `groups` groups.
    pub fn load(
        w: &mut Weights,
        p: &str,
        channels: i32,
        groups: i32,
        eps: f32,
    ) -> Result<Self, ModelError> {
        if groups <= 0 || channels % groups != 0 {
            return Err(ModelError::Weights {
                file: w.source().into(),
                msg: format!("`{p}`: {channels} channels do not split into {groups} groups"),
            });
        }
        Ok(Self {
            weight: w.take(&format!("{p}.weight"), &[channels])?,
            bias: w.take(&format!("{p}.bias"), &[channels])?,
            groups,
            eps,
        })
    }

    /// `x` (N, H, W, C) normalised.
    pub fn forward(&self, x: &Array) -> MlxResult<Array> {
        let s = x.shape().to_vec();
        let (n, c) = (s[0], s[3]);
        let dtype = x.dtype();
        let g =
            x.as_dtype(mlx_rs::Dtype::Float32)?
                .reshape(&[n, -1, self.groups, c / self.groups])?;
        let mean = g.mean_axes(&[1, 3], true)?;
        let var = g.var_axes(&[1, 3], true, None)?;
        let y = g
            .subtract(&mean)?
            .multiply(&var.add(Array::from_f32(self.eps))?.rsqrt()?)?
            .reshape(&s)?
            .as_dtype(dtype)?;
        y.multiply(&self.weight)?.add(&self.bias)
    }

    /// Its arrays.
    pub fn arrays(&self) -> [&Array; 2] {
        [&self.weight, &self.bias]
    }
}

/// Multi-head attention of diffusers' `Attention`: `to_q` over the queries, `to_k` /
/// `to_v` over the context (the queries themselves for self-attention), `to_out.0`.
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i32,
    head_dim: i32,
}

impl Attention {
    /// Under `p`: queries of `dim`, context of `context_dim`, `heads` heads of
    /// `dim / heads`; `qkv_bias` as the checkpoint has them (the VAE's have biases).
    pub fn load(
        w: &mut Weights,
        p: &str,
        dim: i32,
        context_dim: i32,
        heads: i32,
        qkv_bias: bool,
    ) -> Result<Self, ModelError> {
        if heads <= 0 || dim % heads != 0 {
            return Err(ModelError::Weights {
                file: w.source().into(),
                msg: format!("`{p}`: {dim} channels do not split into {heads} heads"),
            });
        }
        Ok(Self {
            to_q: w.linear(&format!("{p}.to_q"), dim, dim, qkv_bias)?,
            to_k: w.linear(&format!("{p}.to_k"), context_dim, dim, qkv_bias)?,
            to_v: w.linear(&format!("{p}.to_v"), context_dim, dim, qkv_bias)?,
            to_out: w.linear(&format!("{p}.to_out.0"), dim, dim, true)?,
            heads,
            head_dim: dim / heads,
        })
    }

    /// `x` (N, L, dim) attending to `context` (N, S, context_dim), or to itself.
    pub fn forward(&self, x: &Array, context: Option<&Array>) -> MlxResult<Array> {
        let ctx = context.unwrap_or(x);
        let split = |t: Array| -> MlxResult<Array> {
            let (n, l) = (t.shape()[0], t.shape()[1]);
            t.reshape(&[n, l, self.heads, self.head_dim])?
                .transpose_axes(&[0, 2, 1, 3])
        };
        let q = split(self.to_q.forward(x)?)?;
        let k = split(self.to_k.forward(ctx)?)?;
        let v = split(self.to_v.forward(ctx)?)?;
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let o = fast::scaled_dot_product_attention(&q, &k, &v, scale, None, None)?;
        let (n, l) = (x.shape()[0], x.shape()[1]);
        self.to_out
            .forward(&o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[
                n,
                l,
                self.heads * self.head_dim,
            ])?)
    }

    /// Its arrays.
    pub fn arrays(&self) -> Vec<&Array> {
        [&self.to_q, &self.to_k, &self.to_v, &self.to_out]
            .into_iter()
            .flat_map(Linear::arrays)
            .collect()
    }
}

/// Nearest-neighbour upsampling of NHWC `x` to `(h, w)`, as PyTorch's `interpolate(mode=
/// "nearest")` picks: source index ⌊i · in / out⌋ (an exact ×2 repeats each pixel).
pub fn upsample_nearest(x: &Array, h: i32, w: i32) -> MlxResult<Array> {
    let s = x.shape();
    let pick = |inp: i32, out: i32| {
        let idx: Vec<i32> = (0..out)
            .map(|i| ((i as i64 * inp as i64) / out as i64) as i32)
            .collect();
        Array::from_slice(&idx, &[out])
    };
    let rows = x.take_axis(pick(s[1], h), 1)?;
    rows.take_axis(pick(s[2], w), 2)
}

/// Parameter count and bytes of `arrays`.
pub fn sizes<'a>(arrays: impl IntoIterator<Item = &'a Array>) -> (u64, u64) {
    arrays.into_iter().fold((0, 0), |(p, b), a| {
        (p + a.size() as u64, b + a.nbytes() as u64)
    })
}
