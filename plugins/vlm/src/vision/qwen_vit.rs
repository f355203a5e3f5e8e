//! The Qwen2-VL and Qwen2.5-VL vision transformer: 3-D patches (a still image is its
//! frame twice, so the patch conv's two temporal slices are summed once at load and
//! read the frame once), pre-norm blocks with 2-D rotary positions (the height and the
//! width of each patch each turn half of the rotated frequencies), and the merger that
//! joins each 2×2 group of neighbouring patches into one token of the text model.
//!
//! Qwen2-VL: LayerNorm, a two-layer MLP (QuickGELU), every block attends over the whole
//! image. Qwen2.5-VL: RMSNorm, a gated MLP (SiLU), and every block but
//! `fullatt_block_indexes` attends within windows of `window_size` pixels. Patches come
//! in the processor's order (each merge group's patches together, groups row by row); a
//! window's patches are gathered into a padded row of their own for its attention
//! instead of transformers' reordering of the whole sequence (the same sums: attention
//! only sees which keys a query may read).
//! Skeleton: `Variant` → `Config` → `Norm` → `Mlp` → `Block` → `Merger` → `QwenVit`.

use super::encoder::{Act, LayerNorm};
use lm::{models::rotate_halves, LlmError};
use mlx_common::{activation::gelu, Linear, Weights};
use mlx_rs::{fast, ops, Array, Dtype};
use serde_json::Value as Json;
use std::path::Path;

/// Which tower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Qwen2,
    Qwen25,
}

/// Resolved `vision_config`.
#[derive(Clone, Debug)]
pub struct Config {
    pub variant: Variant,
    pub depth: i32,
    /// Width of the blocks.
    pub hidden: i32,
    pub intermediate: i32,
    pub heads: i32,
    /// Width of the merger's output: the text model's hidden size.
    pub out_hidden: i32,
    pub patch: i32,
    pub merge: i32,
    pub temporal: i32,
    pub act: Act,
    pub rope_theta: f32,
    /// Qwen2.5-VL: window side in merged patches, and the blocks that see the whole image.
    pub window: i32,
    pub full_blocks: Vec<i32>,
}

impl Config {
    /// From `vision_config` `v` of `file` (the config classes' defaults for absent keys).
    pub fn from_json(variant: Variant, v: &Json, file: &Path) -> Result<Self, LlmError> {
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
        let (hidden, intermediate, out_hidden, act) = match variant {
            Variant::Qwen2 => {
                let embed = int("embed_dim", 1280)?;
                let ratio = v.get("mlp_ratio").and_then(Json::as_f64).unwrap_or(4.0);
                (
                    embed,
                    (f64::from(embed) * ratio) as i32,
                    int("hidden_size", 3584)?,
                    "quick_gelu",
                )
            }
            Variant::Qwen25 => (
                int("hidden_size", 3584)?,
                int("intermediate_size", 3420)?,
                int("out_hidden_size", 3584)?,
                "silu",
            ),
        };
        let act = v.get("hidden_act").and_then(Json::as_str).unwrap_or(act);
        let patch = int("patch_size", 14)?;
        let merge = int("spatial_merge_size", 2)?;
        let window = match variant {
            Variant::Qwen2 => 0,
            Variant::Qwen25 => {
                let px = int("window_size", 112)?;
                if px % (merge * patch) != 0 {
                    return Err(bad(format!(
                        "`vision_config.window_size` {px} is not a multiple of spatial_merge_size × patch_size ({})",
                        merge * patch
                    )));
                }
                px / (merge * patch)
            }
        };
        let depth = v
            .get("depth")
            .or_else(|| v.get("num_hidden_layers"))
            .and_then(Json::as_i64)
            .unwrap_or(32);
        let full_blocks = match v.get("fullatt_block_indexes") {
            None if variant == Variant::Qwen25 => vec![7, 15, 23, 31],
            None => vec![],
            Some(list) => list
                .as_array()
                .and_then(|l| {
                    l.iter()
                        .map(|x| x.as_i64().filter(|i| (0..depth).contains(i)).map(|i| i as i32))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    bad(format!(
                        "`vision_config.fullatt_block_indexes` {list} must list blocks of the {depth}"
                    ))
                })?,
        };
        let c = Self {
            variant,
            depth: int("depth", depth)?,
            hidden,
            intermediate,
            heads: v
                .get("num_heads")
                .or_else(|| v.get("num_attention_heads"))
                .and_then(Json::as_i64)
                .map_or(Ok(16), |n| int("num_heads", n))?,
            out_hidden,
            patch,
            merge,
            temporal: int("temporal_patch_size", 2)?,
            act: Act::from_name(act, "vision_config.hidden_act", file)?,
            rope_theta: v
                .get("rope_parameters")
                .and_then(|p| p.get("rope_theta"))
                .and_then(Json::as_f64)
                .unwrap_or(10_000.0) as f32,
            window,
            full_blocks,
        };
        let channels = v
            .get("in_channels")
            .or_else(|| v.get("in_chans"))
            .and_then(Json::as_i64)
            .unwrap_or(3);
        let hd = c.hidden / c.heads.max(1);
        if c.hidden % c.heads != 0 || hd % 4 != 0 || channels != 3 {
            return Err(bad(format!(
                "`vision_config`: {} wide over {} heads (head width a multiple of 4 for the 2-D rotary positions), {channels} channels do not fit together",
                c.hidden, c.heads
            )));
        }
        Ok(c)
    }

    fn head_dim(&self) -> i32 {
        self.hidden / self.heads
    }
}

/// The blocks' and the merger's norm.
enum Norm {
    Layer(LayerNorm),
    Rms { weight: Array, eps: f32 },
}

impl Norm {
    fn load(w: &mut Weights, p: &str, dim: i32, variant: Variant) -> Result<Self, LlmError> {
        Ok(match variant {
            Variant::Qwen2 => Norm::Layer(LayerNorm::load(w, p, dim, 1e-6)?),
            Variant::Qwen25 => Norm::Rms {
                weight: w.take(&format!("{p}.weight"), &[dim])?,
                eps: 1e-6,
            },
        })
    }

    fn forward(&self, x: &Array) -> mlx_rs::error::Result<Array> {
        match self {
            Norm::Layer(n) => n.forward(x),
            Norm::Rms { weight, eps } => fast::rms_norm(x, Some(weight), *eps),
        }
    }

    fn arrays(&self) -> Vec<&Array> {
        match self {
            Norm::Layer(n) => n.arrays().to_vec(),
            Norm::Rms { weight, .. } => vec![weight],
        }
    }
}

/// The block's MLP.
enum Mlp {
    /// fc2(act(fc1(x))).
    Plain { fc1: Linear, fc2: Linear },
    /// down(act(gate(x)) · up(x)).
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
}

struct Block {
    norm1: Norm,
    qkv: Linear,
    proj: Linear,
    norm2: Norm,
    mlp: Mlp,
    /// Whether it attends within windows (else over the whole image).
    windowed: bool,
}

impl Block {
    fn linears(&self) -> Vec<&Linear> {
        let mut all = vec![&self.qkv, &self.proj];
        match &self.mlp {
            Mlp::Plain { fc1, fc2 } => all.extend([fc1, fc2]),
            Mlp::Gated { gate, up, down } => all.extend([gate, up, down]),
        }
        all
    }
}

struct Merger {
    ln_q: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// Window attention's layout of one image: each window's patches in a row of `len`
/// slots (the missing ones padding), and where each patch went.
struct Windows {
    /// (windows · len) patch indices; `n` (one past the last patch) for padding.
    gather: Array,
    /// (n) each patch's slot.
    scatter: Array,
    /// (windows, 1, 1, len) additive mask of the padding keys; `None` when every window is full.
    mask: Option<Array>,
    count: i32,
    len: i32,
}

/// The tower.
pub struct QwenVit {
    pub config: Config,
    /// (hidden, 3 · patch²): the conv kernel with its temporal slices summed.
    patch_w: Array,
    blocks: Vec<Block>,
    merger: Merger,
    /// (head_dim / 4) inverse periods of the 2-D rotary positions.
    inv_freq: Vec<f32>,
}

impl QwenVit {
    /// Its weights under `p` (`visual`): Hub names, the patch kernel in PyTorch's
    /// (out, in, t, kh, kw) or MLX's (out, t, kh, kw, in) layout.
    pub fn load(c: Config, w: &mut Weights, p: &str, dtype: Dtype) -> Result<Self, LlmError> {
        let (h, ps, t) = (c.hidden, c.patch, c.temporal);
        let name = format!("{p}.patch_embed.proj.weight");
        let raw = w.take_raw(&name)?;
        let k = match raw.shape() {
            [o, i, kt, kh, kw] if (*o, *i, *kt, *kh, *kw) == (h, 3, t, ps, ps) => raw,
            [o, kt, kh, kw, i] if (*o, *kt, *kh, *kw, *i) == (h, t, ps, ps, 3) => {
                raw.transpose_axes(&[0, 4, 1, 2, 3])?
            }
            other => {
                return Err(LlmError::Weights {
                    file: w.source().into(),
                    msg: format!(
                        "`{name}` has shape {other:?}, expected [{h}, 3, {t}, {ps}, {ps}]"
                    ),
                })
            }
        };
        let patch_w = k
            .as_dtype(Dtype::Float32)?
            .sum_axis(2, false)?
            .reshape(&[h, 3 * ps * ps])?
            .as_dtype(dtype)?;
        let blocks = (0..c.depth)
            .map(|i| {
                let q = format!("{p}.blocks.{i}");
                let lin = |w: &mut Weights, n: &str, a: i32, b: i32| {
                    w.linear(&format!("{q}.{n}"), a, b, true)
                };
                let mlp = match c.variant {
                    Variant::Qwen2 => Mlp::Plain {
                        fc1: lin(w, "mlp.fc1", h, c.intermediate)?,
                        fc2: lin(w, "mlp.fc2", c.intermediate, h)?,
                    },
                    Variant::Qwen25 => Mlp::Gated {
                        gate: lin(w, "mlp.gate_proj", h, c.intermediate)?,
                        up: lin(w, "mlp.up_proj", h, c.intermediate)?,
                        down: lin(w, "mlp.down_proj", c.intermediate, h)?,
                    },
                };
                Ok(Block {
                    norm1: Norm::load(w, &format!("{q}.norm1"), h, c.variant)?,
                    qkv: lin(w, "attn.qkv", h, 3 * h)?,
                    proj: lin(w, "attn.proj", h, h)?,
                    norm2: Norm::load(w, &format!("{q}.norm2"), h, c.variant)?,
                    mlp,
                    windowed: c.variant == Variant::Qwen25 && !c.full_blocks.contains(&i),
                })
            })
            .collect::<Result<Vec<_>, LlmError>>()?;
        let wide = h * c.merge * c.merge;
        let merger = Merger {
            ln_q: Norm::load(w, &format!("{p}.merger.ln_q"), h, c.variant)?,
            fc1: w.linear(&format!("{p}.merger.mlp.0"), wide, wide, true)?,
            fc2: w.linear(&format!("{p}.merger.mlp.2"), wide, c.out_hidden, true)?,
        };
        // transformers: 1 / theta^(arange(0, d/2, 2) / (d/2)), d the head width.
        let sd = c.head_dim() / 2;
        let inv_freq = (0..sd / 2)
            .map(|i| 1.0 / c.rope_theta.powf((2 * i) as f32 / sd as f32))
            .collect();
        Ok(Self {
            config: c,
            patch_w,
            blocks,
            merger,
            inv_freq,
        })
    }

    /// Text-model tokens (gh · gw / merge², out_hidden) of one image: `patches`
    /// (gh · gw, 3 · patch²) in the processor's order, normalised pixels.
    pub fn forward(&self, patches: &Array, gh: i32, gw: i32) -> mlx_rs::error::Result<Array> {
        let c = &self.config;
        let n = gh * gw;
        let (heads, hd) = (c.heads, c.head_dim());
        let mut x = ops::matmul(patches, self.patch_w.t())?;
        let angles = self.angles(gh, gw);
        let windows = self
            .blocks
            .iter()
            .any(|b| b.windowed)
            .then(|| self.windows(gh, gw, x.dtype()))
            .transpose()?;
        for b in &self.blocks {
            // (n, 3, heads, hd) → q, k, v as (1, heads, n, hd).
            let qkv = b
                .qkv
                .forward(&b.norm1.forward(&x)?)?
                .reshape(&[n, 3, heads, hd])?
                .transpose_axes(&[1, 2, 0, 3])?;
            let part = |i: i32| -> mlx_rs::error::Result<Array> {
                use mlx_rs::ops::indexing::IndexOp;
                qkv.index(i).expand_dims(0)
            };
            let q = rotate_halves(&part(0)?, &angles)?;
            let k = rotate_halves(&part(1)?, &angles)?;
            let v = part(2)?;
            let scale = 1.0 / (hd as f32).sqrt();
            let o = match (&windows, b.windowed) {
                (Some(win), true) => windowed_attention(&q, &k, &v, scale, win, c.hidden)?,
                _ => fast::scaled_dot_product_attention(&q, &k, &v, scale, None, None)?
                    .transpose_axes(&[0, 2, 1, 3])?
                    .reshape(&[n, c.hidden])?,
            };
            x = x.add(&b.proj.forward(&o)?)?;
            let y = b.norm2.forward(&x)?;
            let m = match &b.mlp {
                Mlp::Plain { fc1, fc2 } => fc2.forward(&c.act.apply(&fc1.forward(&y)?)?)?,
                Mlp::Gated { gate, up, down } => down.forward(
                    &c.act
                        .apply(&gate.forward(&y)?)?
                        .multiply(&up.forward(&y)?)?,
                )?,
            };
            x = x.add(&m)?;
        }
        let m = &self.merger;
        let wide = c.hidden * c.merge * c.merge;
        let y = m.ln_q.forward(&x)?.reshape(&[-1, wide])?;
        m.fc2.forward(&gelu(&m.fc1.forward(&y)?)?)
    }

    /// (1, 1, n, head_dim / 2) rotary angles of the patches: each patch's row times the
    /// inverse periods, then its column times them.
    fn angles(&self, gh: i32, gw: i32) -> Array {
        let m = self.config.merge;
        let f = &self.inv_freq;
        let q = f.len();
        let mut out = Vec::with_capacity((gh * gw) as usize * 2 * q);
        for (r, col) in merge_order(gh, gw, m) {
            out.extend(f.iter().map(|x| r as f32 * x));
            out.extend(f.iter().map(|x| col as f32 * x));
        }
        Array::from_slice(&out, &[1, 1, gh * gw, 2 * q as i32])
    }

    /// The windows of a gh × gw patch grid: windows of `window` × `window` merge groups,
    /// row by row, each holding its groups row by row (transformers' window index).
    fn windows(&self, gh: i32, gw: i32, dtype: Dtype) -> mlx_rs::error::Result<Windows> {
        let c = &self.config;
        let (m, ws) = (c.merge, c.window);
        let (uh, uw) = (gh / m, gw / m);
        let unit = m * m;
        let (nh, nw) = ((uh + ws - 1) / ws, (uw + ws - 1) / ws);
        let len = ws * ws * unit;
        let n = gh * gw;
        let mut gather = Vec::with_capacity((nh * nw * len) as usize);
        let mut scatter = vec![0i32; n as usize];
        let mut mask = Vec::with_capacity((nh * nw * len) as usize);
        for wy in 0..nh {
            for wx in 0..nw {
                let start = gather.len();
                for a in wy * ws..((wy + 1) * ws).min(uh) {
                    for b in wx * ws..((wx + 1) * ws).min(uw) {
                        for p in 0..unit {
                            let patch = (a * uw + b) * unit + p;
                            scatter[patch as usize] = gather.len() as i32;
                            gather.push(patch);
                            mask.push(0f32);
                        }
                    }
                }
                let filled = gather.len() - start;
                gather.extend(std::iter::repeat_n(n, len as usize - filled));
                mask.extend(std::iter::repeat_n(-1e9f32, len as usize - filled));
            }
        }
        let count = nh * nw;
        let padded = gather.len() as i32 != n;
        Ok(Windows {
            gather: Array::from_slice(&gather, &[count * len]),
            scatter: Array::from_slice(&scatter, &[n]),
            mask: padded
                .then(|| Array::from_slice(&mask, &[count, 1, 1, len]).as_dtype(dtype))
                .transpose()?,
            count,
            len,
        })
    }

    /// Every array it holds.
    pub fn parameters(&self) -> Vec<&Array> {
        let mut all = vec![&self.patch_w];
        for b in &self.blocks {
            all.extend(b.linears().into_iter().flat_map(Linear::arrays));
            all.extend(b.norm1.arrays());
            all.extend(b.norm2.arrays());
        }
        let m = &self.merger;
        all.extend(m.ln_q.arrays());
        all.extend(m.fc1.arrays());
        all.extend(m.fc2.arrays());
        all
    }
}

/// (row, column) of each patch of a gh × gw grid in the processor's order: merge
/// groups row by row, each group's `m` × `m` patches row by row.
pub fn merge_order(gh: i32, gw: i32, m: i32) -> impl Iterator<Item = (i32, i32)> {
    (0..gh / m).flat_map(move |a| {
        (0..gw / m).flat_map(move |b| {
            (0..m).flat_map(move |i| (0..m).map(move |j| (a * m + i, b * m + j)))
        })
    })
}

/// Attention of (1, heads, n, hd) q, k, v within `win`'s windows; (n, hidden) out.
fn windowed_attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    win: &Windows,
    hidden: i32,
) -> mlx_rs::error::Result<Array> {
    let s = q.shape();
    let (heads, hd) = (s[1], s[3]);
    // (1, heads, n, hd) → (n + 1, heads, hd) with a zero row for the padding slots →
    // (windows, heads, len, hd).
    let split = |t: &Array| -> mlx_rs::error::Result<Array> {
        let t = t.squeeze_axes(&[0])?.transpose_axes(&[1, 0, 2])?;
        let zero = ops::zeros_dtype(&[1, heads, hd], t.dtype())?;
        ops::concatenate(&[&t, &zero], 0)?
            .take_axis(&win.gather, 0)?
            .reshape(&[win.count, win.len, heads, hd])?
            .transpose_axes(&[0, 2, 1, 3])
    };
    let (qw, kw, vw) = (split(q)?, split(k)?, split(v)?);
    let o = match &win.mask {
        Some(mask) => fast::scaled_dot_product_attention(&qw, &kw, &vw, scale, mask, None)?,
        None => fast::scaled_dot_product_attention(&qw, &kw, &vw, scale, None, None)?,
    };
    o.transpose_axes(&[0, 2, 1, 3])?
        .reshape(&[win.count * win.len, hidden])?
        .take_axis(&win.scatter, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_order_keeps_each_group_together() {
        let got: Vec<_> = merge_order(2, 4, 2).collect();
        assert_eq!(
            got,
            [
                (0, 0),
                (0, 1),
                (1, 0),
                (1, 1),
                (0, 2),
                (0, 3),
                (1, 2),
                (1, 3)
            ]
        );
    }
}
