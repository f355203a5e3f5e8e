//! diffusers' `UNet2DConditionModel` (SD 1.x / 2.x; SDXL's transformer depths and its
//! `text_time` added embedding): the config read once into [`UnetConfig`], the blocks
//! built from it, weights under diffusers' names.
//! Skeleton: `Resnet` → `Transformer2d` (`BasicBlock`s) → `DownBlock` / `MidBlock` /
//! `UpBlock` → [`Unet`].

use crate::nn::{silu, sizes, upsample_nearest, Attention, Conv2d, GroupNorm, MlxResult};
use lm::encoder::LayerNorm;
use mlx_common::{activation::gelu, Linear, ModelError, Weights};
use mlx_rs::{ops, Array};
use serde_json::Value as Json;
use std::path::Path;

/// `down_block_types` / `up_block_types` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockKind {
    /// Resnets only (`DownBlock2D`, `UpBlock2D`).
    Plain,
    /// Resnets each followed by a transformer (`CrossAttnDownBlock2D`, …).
    CrossAttn,
}

/// SDXL's extra conditioning (`addition_embed_type = "text_time"`): the pooled text
/// embedding and six size/crop numbers, each embedded in `time_dim` sinusoids.
#[derive(Clone, Copy, Debug)]
pub struct TextTime {
    /// `addition_time_embed_dim`.
    pub time_dim: i32,
    /// `projection_class_embeddings_input_dim` (pooled width + 6 · `time_dim`).
    pub input_dim: i32,
}

/// `unet/config.json`, resolved and checked.
#[derive(Clone, Debug)]
pub struct UnetConfig {
    pub in_channels: i32,
    pub out_channels: i32,
    down: Vec<BlockKind>,
    up: Vec<BlockKind>,
    pub block_out: Vec<i32>,
    layers_per_block: i32,
    groups: i32,
    eps: f32,
    /// `cross_attention_dim`: the text embedding's width.
    pub cross_dim: i32,
    heads: Vec<i32>,
    depth: Vec<i32>,
    linear_projection: bool,
    flip_sin_to_cos: bool,
    freq_shift: f32,
    /// `sample_size`: the latent side the model was trained at (× the VAE factor = pixels).
    pub sample_size: i32,
    pub text_time: Option<TextTime>,
}

impl UnetConfig {
    /// From `file` (`unet/config.json`); a key whose value this UNet does not implement
    /// is refused by name.
    pub fn from_file(file: &Path) -> Result<Self, ModelError> {
        let cfg = crate::read_json(file)?;
        Self::from_json(&cfg, file)
    }

    fn from_json(c: &Json, file: &Path) -> Result<Self, ModelError> {
        let bad = |msg: String| ModelError::Config {
            file: file.into(),
            msg,
        };
        let int = |k: &str, d: i64| -> Result<i32, ModelError> {
            match c.get(k) {
                None | Some(Json::Null) => Ok(d as i32),
                Some(v) => match v.as_i64() {
                    Some(n) if n > 0 && n <= 1 << 16 => Ok(n as i32),
                    _ => Err(bad(format!("`{k}` = {v} is not a positive integer"))),
                },
            }
        };
        let boolean = |k: &str, d: bool| c.get(k).and_then(Json::as_bool).unwrap_or(d);
        let kinds = |k: &str, plain: &str, cross: &str| -> Result<Vec<BlockKind>, ModelError> {
            let list = c
                .get(k)
                .and_then(Json::as_array)
                .ok_or_else(|| bad(format!("`{k}` is missing")))?;
            list.iter()
                .map(|v| match v.as_str() {
                    Some(s) if s == plain => Ok(BlockKind::Plain),
                    Some(s) if s == cross => Ok(BlockKind::CrossAttn),
                    _ => Err(bad(format!(
                        "`{k}` entry {v} is not supported ({plain}, {cross})"
                    ))),
                })
                .collect()
        };
        let down = kinds("down_block_types", "DownBlock2D", "CrossAttnDownBlock2D")?;
        let up = kinds("up_block_types", "UpBlock2D", "CrossAttnUpBlock2D")?;
        let block_out: Vec<i32> = c
            .get("block_out_channels")
            .and_then(Json::as_array)
            .map(|a| a.iter().map(|v| v.as_i64().unwrap_or(0) as i32).collect())
            .ok_or_else(|| bad("`block_out_channels` is missing".into()))?;
        let n = block_out.len();
        if n == 0 || down.len() != n || up.len() != n || block_out.iter().any(|&b| b <= 0) {
            return Err(bad(format!(
                "`block_out_channels` ({n}), `down_block_types` ({}) and `up_block_types` ({}) must be as long, with positive widths",
                down.len(),
                up.len()
            )));
        }
        // Per block: a number for all, or one each.
        let per_block = |k: &str, v: &Json| -> Result<Vec<i32>, ModelError> {
            let list: Vec<i64> = match v {
                Json::Number(x) => vec![x.as_i64().unwrap_or(0); n],
                Json::Array(a) => a.iter().map(|x| x.as_i64().unwrap_or(0)).collect(),
                other => return Err(bad(format!("`{k}` = {other} is not a number or a list"))),
            };
            if list.len() != n || list.iter().any(|&x| x <= 0 || x > 1 << 12) {
                return Err(bad(format!("`{k}` needs {n} positive entries, got {v}")));
            }
            Ok(list.into_iter().map(|x| x as i32).collect())
        };
        // diffusers' naming quirk: `attention_head_dim` holds the head *count* when
        // `num_attention_heads` is absent (every SD checkpoint).
        let heads_v = match c.get("num_attention_heads") {
            Some(v) if !v.is_null() => v.clone(),
            _ => c
                .get("attention_head_dim")
                .cloned()
                .unwrap_or(Json::from(8)),
        };
        let heads = per_block("attention_head_dim", &heads_v)?;
        let depth = per_block(
            "transformer_layers_per_block",
            c.get("transformer_layers_per_block")
                .unwrap_or(&Json::from(1)),
        )?;
        for (i, (&ch, &h)) in block_out.iter().zip(&heads).enumerate() {
            if ch % h != 0 {
                return Err(bad(format!(
                    "block {i}: {ch} channels do not split into {h} attention heads"
                )));
            }
        }
        let groups = int("norm_num_groups", 32)?;
        if block_out.iter().any(|&b| b % groups != 0) {
            return Err(bad(format!(
                "`norm_num_groups` = {groups} does not divide `block_out_channels` {block_out:?}"
            )));
        }
        let refuse = |k: &str, ok: &dyn Fn(&Json) -> bool, what: &str| match c.get(k) {
            Some(v) if !ok(v) => Err(bad(format!("`{k}` = {v} is not supported ({what})"))),
            _ => Ok(()),
        };
        refuse("class_embed_type", &Json::is_null, "null")?;
        refuse("time_cond_proj_dim", &Json::is_null, "null")?;
        refuse("encoder_hid_dim", &Json::is_null, "null")?;
        refuse(
            "only_cross_attention",
            &|v| v == &Json::Bool(false),
            "false",
        )?;
        refuse(
            "dual_cross_attention",
            &|v| v == &Json::Bool(false),
            "false",
        )?;
        refuse(
            "resnet_time_scale_shift",
            &|v| v.as_str() == Some("default"),
            "\"default\"",
        )?;
        refuse("center_input_sample", &|v| v == &Json::Bool(false), "false")?;
        refuse("act_fn", &|v| v.as_str() == Some("silu"), "\"silu\"")?;
        refuse(
            "mid_block_type",
            &|v| v.as_str() == Some("UNetMidBlock2DCrossAttn"),
            "UNetMidBlock2DCrossAttn",
        )?;
        refuse("conv_in_kernel", &|v| v.as_i64() == Some(3), "3")?;
        refuse("conv_out_kernel", &|v| v.as_i64() == Some(3), "3")?;
        refuse(
            "time_embedding_type",
            &|v| v.as_str() == Some("positional"),
            "\"positional\"",
        )?;
        refuse("time_embedding_dim", &Json::is_null, "null")?;
        refuse("downsample_padding", &|v| v.as_i64() == Some(1), "1")?;
        refuse("mid_block_scale_factor", &|v| v.as_f64() == Some(1.0), "1")?;
        let text_time = match c.get("addition_embed_type").and_then(Json::as_str) {
            None => None,
            Some("text_time") => Some(TextTime {
                time_dim: int("addition_time_embed_dim", 256)?,
                input_dim: int("projection_class_embeddings_input_dim", 2816)?,
            }),
            Some(other) => {
                return Err(bad(format!(
                    "`addition_embed_type` = \"{other}\" is not supported (text_time)"
                )))
            }
        };
        Ok(Self {
            in_channels: int("in_channels", 4)?,
            out_channels: int("out_channels", 4)?,
            down,
            up,
            block_out,
            layers_per_block: int("layers_per_block", 2)?,
            groups,
            eps: c.get("norm_eps").and_then(Json::as_f64).unwrap_or(1e-5) as f32,
            cross_dim: int("cross_attention_dim", 1280)?,
            heads,
            depth,
            linear_projection: boolean("use_linear_projection", false),
            flip_sin_to_cos: boolean("flip_sin_to_cos", true),
            freq_shift: c.get("freq_shift").and_then(Json::as_f64).unwrap_or(0.0) as f32,
            sample_size: int("sample_size", 64)?,
            text_time,
        })
    }

    /// Attention heads of the first level.
    pub fn first_heads(&self) -> i32 {
        self.heads[0]
    }

    /// Downsamplings from the latent to the innermost block (the latent's sides need not
    /// be multiples of 2 to this power: the way up matches each skip's size).
    pub fn downsamplings(&self) -> u32 {
        self.block_out.len() as u32 - 1
    }
}

/// Sinusoidal embedding of `t` (N,) in `dim` channels, as diffusers'
/// `get_timestep_embedding` (max period 10000), in float32.
pub fn timestep_embedding(t: &Array, dim: i32, flip: bool, shift: f32) -> MlxResult<Array> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift as f64)).exp() as f32)
        .collect();
    let f = Array::from_slice(&freqs, &[1, half]);
    let arg = t
        .as_dtype(mlx_rs::Dtype::Float32)?
        .reshape(&[-1, 1])?
        .multiply(&f)?;
    let (sin, cos) = (arg.sin()?, arg.cos()?);
    let parts = if flip { [cos, sin] } else { [sin, cos] };
    let e = ops::concatenate(&parts, 1)?;
    if dim % 2 == 1 {
        let n = e.shape()[0];
        return ops::concatenate(&[e, Array::zeros::<f32>(&[n, 1])?], 1);
    }
    Ok(e)
}

/// `linear_1` → SiLU → `linear_2` (diffusers' `TimestepEmbedding`).
struct TimeMlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimeMlp {
    fn load(w: &mut Weights, p: &str, inp: i32, out: i32) -> Result<Self, ModelError> {
        Ok(Self {
            linear_1: w.linear(&format!("{p}.linear_1"), inp, out, true)?,
            linear_2: w.linear(&format!("{p}.linear_2"), out, out, true)?,
        })
    }

    fn forward(&self, x: &Array) -> MlxResult<Array> {
        self.linear_2.forward(&silu(&self.linear_1.forward(x)?)?)
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut a = self.linear_1.arrays();
        a.extend(self.linear_2.arrays());
        a
    }
}

/// diffusers' `ResnetBlock2D` (time-conditioned when `temb` is given).
pub struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    /// Under `p`: `inp` → `out` channels; `temb` = the time embedding's width (none in
    /// the VAE).
    pub fn load(
        w: &mut Weights,
        p: &str,
        inp: i32,
        out: i32,
        temb: Option<i32>,
        groups: i32,
        eps: f32,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            norm1: GroupNorm::load(w, &format!("{p}.norm1"), inp, groups, eps)?,
            conv1: Conv2d::load(w, &format!("{p}.conv1"), inp, out, 3, 1, 1)?,
            time_proj: temb
                .map(|t| w.linear(&format!("{p}.time_emb_proj"), t, out, true))
                .transpose()?,
            norm2: GroupNorm::load(w, &format!("{p}.norm2"), out, groups, eps)?,
            conv2: Conv2d::load(w, &format!("{p}.conv2"), out, out, 3, 1, 1)?,
            shortcut: (inp != out)
                .then(|| Conv2d::load(w, &format!("{p}.conv_shortcut"), inp, out, 1, 1, 0))
                .transpose()?,
        })
    }

    /// `x` (N, H, W, in); `temb_act` = SiLU of the time embedding (N, temb).
    pub fn forward(&self, x: &Array, temb_act: Option<&Array>) -> MlxResult<Array> {
        let mut h = self.conv1.forward(&silu(&self.norm1.forward(x)?)?)?;
        if let (Some(p), Some(t)) = (&self.time_proj, temb_act) {
            let t = p.forward(t)?;
            let n = t.shape()[0];
            h = h.add(&t.reshape(&[n, 1, 1, -1])?)?;
        }
        let h = self.conv2.forward(&silu(&self.norm2.forward(&h)?)?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)?.add(&h),
            None => x.add(&h),
        }
    }

    pub fn arrays(&self) -> Vec<&Array> {
        let mut a: Vec<&Array> = Vec::new();
        a.extend(self.norm1.arrays());
        a.extend(self.conv1.arrays());
        if let Some(p) = &self.time_proj {
            a.extend(p.arrays());
        }
        a.extend(self.norm2.arrays());
        a.extend(self.conv2.arrays());
        if let Some(s) = &self.shortcut {
            a.extend(s.arrays());
        }
        a
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward, each
/// after a LayerNorm and added back.
struct BasicBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl BasicBlock {
    fn load(w: &mut Weights, p: &str, dim: i32, ctx: i32, heads: i32) -> Result<Self, ModelError> {
        let inner = dim * 4;
        Ok(Self {
            norm1: LayerNorm::load(w, &format!("{p}.norm1"), dim, 1e-5)?,
            attn1: Attention::load(w, &format!("{p}.attn1"), dim, dim, heads, false)?,
            norm2: LayerNorm::load(w, &format!("{p}.norm2"), dim, 1e-5)?,
            attn2: Attention::load(w, &format!("{p}.attn2"), dim, ctx, heads, false)?,
            norm3: LayerNorm::load(w, &format!("{p}.norm3"), dim, 1e-5)?,
            ff_in: w.linear(&format!("{p}.ff.net.0.proj"), dim, inner * 2, true)?,
            ff_out: w.linear(&format!("{p}.ff.net.2"), inner, dim, true)?,
        })
    }

    fn forward(&self, x: &Array, ctx: &Array) -> MlxResult<Array> {
        let x = x.add(&self.attn1.forward(&self.norm1.forward(x)?, None)?)?;
        let x = x.add(&self.attn2.forward(&self.norm2.forward(&x)?, Some(ctx))?)?;
        let parts = self
            .ff_in
            .forward(&self.norm3.forward(&x)?)?
            .split_equal(2, -1)?;
        let geglu = parts[0].multiply(&gelu(&parts[1])?)?;
        x.add(&self.ff_out.forward(&geglu)?)
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut a: Vec<&Array> = Vec::new();
        for n in [&self.norm1, &self.norm2, &self.norm3] {
            a.extend(n.arrays());
        }
        a.extend(self.attn1.arrays());
        a.extend(self.attn2.arrays());
        a.extend(self.ff_in.arrays());
        a.extend(self.ff_out.arrays());
        a
    }
}

/// `proj_in` / `proj_out`: a 1×1 convolution, or a linear layer
/// (`use_linear_projection`, SD 2.x and SDXL) — the same map, named and shaped apart.
enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

impl Proj {
    fn load(w: &mut Weights, p: &str, dim: i32, linear: bool) -> Result<Self, ModelError> {
        Ok(if linear {
            Proj::Linear(w.linear(p, dim, dim, true)?)
        } else {
            Proj::Conv(Conv2d::load(w, p, dim, dim, 1, 1, 0)?)
        })
    }

    fn forward(&self, x: &Array) -> MlxResult<Array> {
        match self {
            Proj::Conv(c) => c.forward(x),
            Proj::Linear(l) => l.forward(x),
        }
    }

    fn arrays(&self) -> Vec<&Array> {
        match self {
            Proj::Conv(c) => c.arrays().to_vec(),
            Proj::Linear(l) => l.arrays(),
        }
    }
}

/// `Transformer2DModel`: GroupNorm, `proj_in`, `depth` blocks over the pixels as tokens,
/// `proj_out`, added back.
struct Transformer2d {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<BasicBlock>,
    proj_out: Proj,
}

impl Transformer2d {
    fn load(
        w: &mut Weights,
        p: &str,
        dim: i32,
        heads: i32,
        depth: i32,
        c: &UnetConfig,
    ) -> Result<Self, ModelError> {
        Ok(Self {
            norm: GroupNorm::load(w, &format!("{p}.norm"), dim, c.groups, 1e-6)?,
            proj_in: Proj::load(w, &format!("{p}.proj_in"), dim, c.linear_projection)?,
            blocks: (0..depth)
                .map(|i| {
                    BasicBlock::load(
                        w,
                        &format!("{p}.transformer_blocks.{i}"),
                        dim,
                        c.cross_dim,
                        heads,
                    )
                })
                .collect::<Result<_, _>>()?,
            proj_out: Proj::load(w, &format!("{p}.proj_out"), dim, c.linear_projection)?,
        })
    }

    /// `x` (N, H, W, C) and the text context (N, S, cross).
    fn forward(&self, x: &Array, ctx: &Array) -> MlxResult<Array> {
        let s = x.shape().to_vec();
        // A 1×1 convolution and a linear layer over the pixels are the same map: apply
        // either on (N, H·W, C) rows.
        let mut h =
            self.proj_in
                .forward(&self.norm.forward(x)?)?
                .reshape(&[s[0], s[1] * s[2], s[3]])?;
        for b in &self.blocks {
            h = b.forward(&h, ctx)?;
        }
        let h = self.proj_out.forward(&h.reshape(&s)?)?;
        h.add(x)
    }

    fn arrays(&self) -> Vec<&Array> {
        let mut a: Vec<&Array> = self.norm.arrays().to_vec();
        a.extend(self.proj_in.arrays());
        for b in &self.blocks {
            a.extend(b.arrays());
        }
        a.extend(self.proj_out.arrays());
        a
    }
}

struct DownBlock {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer2d>,
    down: Option<Conv2d>,
}

struct UpBlock {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer2d>,
    up: Option<Conv2d>,
}

struct MidBlock {
    first: Resnet,
    attention: Transformer2d,
    second: Resnet,
}

/// The UNet: noise (or velocity) prediction from a latent, a timestep and a text context.
pub struct Unet {
    pub config: UnetConfig,
    time_mlp: TimeMlp,
    add_mlp: Option<TimeMlp>,
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

/// SDXL's added conditions of each batch row.
pub struct Added<'a> {
    /// Pooled text embedding (N, pooled).
    pub text_embeds: &'a Array,
    /// (N, 6): original height, width, crop top, left, target height, width.
    pub time_ids: &'a Array,
}

impl Unet {
    /// Every weight of `unet/` under diffusers' names (all must be used).
    pub fn load(c: UnetConfig, w: &mut Weights) -> Result<Self, ModelError> {
        let b0 = c.block_out[0];
        let temb = b0 * 4;
        let (g, eps) = (c.groups, c.eps);
        let n = c.block_out.len();
        let time_mlp = TimeMlp::load(w, "time_embedding", b0, temb)?;
        let add_mlp = c
            .text_time
            .map(|tt| TimeMlp::load(w, "add_embedding", tt.input_dim, temb))
            .transpose()?;
        let conv_in = Conv2d::load(w, "conv_in", c.in_channels, b0, 3, 1, 1)?;
        let mut down = Vec::with_capacity(n);
        let mut out_ch = b0;
        for i in 0..n {
            let inp = out_ch;
            out_ch = c.block_out[i];
            let p = format!("down_blocks.{i}");
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..c.layers_per_block {
                let from = if j == 0 { inp } else { out_ch };
                let rp = format!("{p}.resnets.{j}");
                resnets.push(Resnet::load(w, &rp, from, out_ch, Some(temb), g, eps)?);
                if c.down[i] == BlockKind::CrossAttn {
                    let ap = format!("{p}.attentions.{j}");
                    attentions.push(Transformer2d::load(
                        w, &ap, out_ch, c.heads[i], c.depth[i], &c,
                    )?);
                }
            }
            let down_conv = (i + 1 < n)
                .then(|| {
                    let dp = format!("{p}.downsamplers.0.conv");
                    Conv2d::load(w, &dp, out_ch, out_ch, 3, 2, 1)
                })
                .transpose()?;
            down.push(DownBlock {
                resnets,
                attentions,
                down: down_conv,
            });
        }
        let last = c.block_out[n - 1];
        let mid = MidBlock {
            first: Resnet::load(w, "mid_block.resnets.0", last, last, Some(temb), g, eps)?,
            attention: Transformer2d::load(
                w,
                "mid_block.attentions.0",
                last,
                c.heads[n - 1],
                c.depth[n - 1],
                &c,
            )?,
            second: Resnet::load(w, "mid_block.resnets.1", last, last, Some(temb), g, eps)?,
        };
        let rev: Vec<i32> = c.block_out.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut prev = rev[0];
        for i in 0..n {
            let out = rev[i];
            let inp = rev[(i + 1).min(n - 1)];
            let (heads, depth) = (c.heads[n - 1 - i], c.depth[n - 1 - i]);
            let p = format!("up_blocks.{i}");
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..=c.layers_per_block {
                let skip = if j == c.layers_per_block { inp } else { out };
                let from = if j == 0 { prev } else { out };
                let rp = format!("{p}.resnets.{j}");
                resnets.push(Resnet::load(w, &rp, from + skip, out, Some(temb), g, eps)?);
                if c.up[i] == BlockKind::CrossAttn {
                    let ap = format!("{p}.attentions.{j}");
                    attentions.push(Transformer2d::load(w, &ap, out, heads, depth, &c)?);
                }
            }
            let up_conv = (i + 1 < n)
                .then(|| Conv2d::load(w, &format!("{p}.upsamplers.0.conv"), out, out, 3, 1, 1))
                .transpose()?;
            up.push(UpBlock {
                resnets,
                attentions,
                up: up_conv,
            });
            prev = out;
        }
        Ok(Self {
            norm_out: GroupNorm::load(w, "conv_norm_out", b0, g, eps)?,
            conv_out: Conv2d::load(w, "conv_out", b0, c.out_channels, 3, 1, 1)?,
            config: c,
            time_mlp,
            add_mlp,
            conv_in,
            down,
            mid,
            up,
        })
    }

    /// The prediction for `x` (N, h, w, in) at timestep `t` (N,), with the text context
    /// `ctx` (N, S, cross) and SDXL's `added` conditions.
    pub fn forward(
        &self,
        x: &Array,
        t: &Array,
        ctx: &Array,
        added: Option<Added<'_>>,
    ) -> MlxResult<Array> {
        let c = &self.config;
        let dtype = x.dtype();
        let t_emb = timestep_embedding(t, c.block_out[0], c.flip_sin_to_cos, c.freq_shift)?
            .as_dtype(dtype)?;
        let mut emb = self.time_mlp.forward(&t_emb)?;
        if let (Some(mlp), Some(tt), Some(a)) = (&self.add_mlp, c.text_time, added) {
            let n = a.time_ids.shape()[0];
            let ids = a.time_ids.reshape(&[-1])?;
            let time = timestep_embedding(&ids, tt.time_dim, c.flip_sin_to_cos, c.freq_shift)?
                .reshape(&[n, -1])?
                .as_dtype(dtype)?;
            let inp = ops::concatenate(&[a.text_embeds.as_dtype(dtype)?, time], 1)?;
            emb = emb.add(&mlp.forward(&inp)?)?;
        }
        let emb = silu(&emb)?;
        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.clone()];
        for b in &self.down {
            for (j, r) in b.resnets.iter().enumerate() {
                h = r.forward(&h, Some(&emb))?;
                if let Some(a) = b.attentions.get(j) {
                    h = a.forward(&h, ctx)?;
                }
                skips.push(h.clone());
            }
            if let Some(d) = &b.down {
                h = d.forward(&h)?;
                skips.push(h.clone());
            }
        }
        h = self.mid.first.forward(&h, Some(&emb))?;
        h = self.mid.attention.forward(&h, ctx)?;
        h = self.mid.second.forward(&h, Some(&emb))?;
        for b in &self.up {
            for (j, r) in b.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                h = r.forward(&ops::concatenate(&[&h, &skip], 3)?, Some(&emb))?;
                if let Some(a) = b.attentions.get(j) {
                    h = a.forward(&h, ctx)?;
                }
            }
            if let Some(u) = &b.up {
                // To the size of the skip it meets next (×2 unless a side was odd).
                let next = skips.last().expect("a skip below every upsampler");
                let (th, tw) = (next.shape()[1], next.shape()[2]);
                h = u.forward(&upsample_nearest(&h, th, tw)?)?;
            }
        }
        self.conv_out.forward(&silu(&self.norm_out.forward(&h)?)?)
    }

    /// Parameter count and bytes.
    pub fn sizes(&self) -> (u64, u64) {
        let mut a = self.time_mlp.arrays();
        if let Some(m) = &self.add_mlp {
            a.extend(m.arrays());
        }
        a.extend(self.conv_in.arrays());
        for b in &self.down {
            for r in &b.resnets {
                a.extend(r.arrays());
            }
            for t in &b.attentions {
                a.extend(t.arrays());
            }
            if let Some(d) = &b.down {
                a.extend(d.arrays());
            }
        }
        a.extend(self.mid.first.arrays());
        a.extend(self.mid.attention.arrays());
        a.extend(self.mid.second.arrays());
        for b in &self.up {
            for r in &b.resnets {
                a.extend(r.arrays());
            }
            for t in &b.attentions {
                a.extend(t.arrays());
            }
            if let Some(u) = &b.up {
                a.extend(u.arrays());
            }
        }
        a.extend(self.norm_out.arrays());
        a.extend(self.conv_out.arrays());
        sizes(a)
    }
}
