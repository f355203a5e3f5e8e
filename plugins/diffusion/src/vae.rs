//! diffusers' `AutoencoderKL`, the decoder side (latents → pixels): `post_quant_conv`,
//! the decoder's mid block (resnet, single-head attention, resnet), its up blocks and
//! output convolution; the config's `scaling_factor` / `shift_factor` undone first.

use crate::nn::{silu, sizes, upsample_nearest, Attention, Conv2d, GroupNorm, MlxResult};
use crate::unet::Resnet;
use mlx_common::{ModelError, Weights};
use mlx_rs::{ops, Array};
use serde_json::Value as Json;
use std::path::Path;

/// `vae/config.json`, resolved.
#[derive(Clone, Debug)]
pub struct VaeConfig {
    pub latent_channels: i32,
    out_channels: i32,
    block_out: Vec<i32>,
    layers_per_block: i32,
    groups: i32,
    pub scaling_factor: f32,
    pub shift_factor: f32,
    post_quant_conv: bool,
    mid_attention: bool,
}

impl VaeConfig {
    /// From `file`.
    pub fn from_file(file: &Path) -> Result<Self, ModelError> {
        let c = crate::read_json(file)?;
        let bad = |msg: String| ModelError::Config {
            file: file.into(),
            msg,
        };
        let int = |k: &str, d: i64| -> Result<i32, ModelError> {
            let n = c.get(k).and_then(Json::as_i64).unwrap_or(d);
            if n <= 0 || n > 1 << 16 {
                return Err(bad(format!("`{k}` = {n} is out of range")));
            }
            Ok(n as i32)
        };
        let block_out: Vec<i32> = c
            .get("block_out_channels")
            .and_then(Json::as_array)
            .map(|a| a.iter().map(|v| v.as_i64().unwrap_or(0) as i32).collect())
            .unwrap_or_else(|| vec![64]);
        let groups = int("norm_num_groups", 32)?;
        if block_out.is_empty() || block_out.iter().any(|&b| b <= 0 || b % groups != 0) {
            return Err(bad(format!(
                "`block_out_channels` {block_out:?} must be positive multiples of `norm_num_groups` {groups}"
            )));
        }
        let ups = c.get("up_block_types").and_then(Json::as_array);
        if let Some(u) = ups {
            if u.len() != block_out.len()
                || u.iter().any(|v| v.as_str() != Some("UpDecoderBlock2D"))
            {
                return Err(bad(format!(
                    "`up_block_types` must be {} × UpDecoderBlock2D",
                    block_out.len()
                )));
            }
        }
        Ok(Self {
            latent_channels: int("latent_channels", 4)?,
            out_channels: int("out_channels", 3)?,
            layers_per_block: int("layers_per_block", 1)?,
            groups,
            block_out,
            scaling_factor: c
                .get("scaling_factor")
                .and_then(Json::as_f64)
                .unwrap_or(0.18215) as f32,
            shift_factor: c.get("shift_factor").and_then(Json::as_f64).unwrap_or(0.0) as f32,
            post_quant_conv: c
                .get("use_post_quant_conv")
                .and_then(Json::as_bool)
                .unwrap_or(true),
            mid_attention: c
                .get("mid_block_add_attention")
                .and_then(Json::as_bool)
                .unwrap_or(true),
        })
    }

    /// The decoder's width at full resolution.
    pub fn first_width(&self) -> i32 {
        self.block_out[0]
    }

    /// Pixels per latent along a side (2 per up block after the first).
    pub fn factor(&self) -> i32 {
        1 << (self.block_out.len() - 1)
    }
}

/// The VAE's single-head spatial self-attention (`Attention` with a GroupNorm in front
/// and the input added back).
struct SpatialAttention {
    norm: GroupNorm,
    attn: Attention,
}

impl SpatialAttention {
    fn forward(&self, x: &Array) -> MlxResult<Array> {
        let s = x.shape().to_vec();
        let h = self.norm.forward(x)?.reshape(&[s[0], s[1] * s[2], s[3]])?;
        self.attn.forward(&h, None)?.reshape(&s)?.add(x)
    }
}

struct UpDecoder {
    resnets: Vec<Resnet>,
    up: Option<Conv2d>,
}

/// The decoder.
pub struct VaeDecoder {
    pub config: VaeConfig,
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid: (Resnet, Option<SpatialAttention>, Resnet),
    up: Vec<UpDecoder>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

const EPS: f32 = 1e-6;

impl VaeDecoder {
    /// The decoder's weights of `vae/`; the encoder's (img2img) are read and set aside.
    pub fn load(c: VaeConfig, w: &mut Weights) -> Result<Self, ModelError> {
        w.drop_where(|n| n.starts_with("encoder.") || n.starts_with("quant_conv."));
        // Checkpoints saved before diffusers 0.14 name the attention's layers as the
        // original did.
        let a = "decoder.mid_block.attentions.0";
        for (old, new) in [
            ("query", "to_q"),
            ("key", "to_k"),
            ("value", "to_v"),
            ("proj_attn", "to_out.0"),
        ] {
            w.rename_prefix(&format!("{a}.{old}."), &format!("{a}.{new}."));
        }
        let lat = c.latent_channels;
        let g = c.groups;
        let n = c.block_out.len();
        let top = c.block_out[n - 1];
        let post_quant_conv = c
            .post_quant_conv
            .then(|| Conv2d::load(w, "post_quant_conv", lat, lat, 1, 1, 0))
            .transpose()?;
        let conv_in = Conv2d::load(w, "decoder.conv_in", lat, top, 3, 1, 1)?;
        let res = |w: &mut Weights, p: &str, i: i32, o: i32| Resnet::load(w, p, i, o, None, g, EPS);
        let first = res(w, "decoder.mid_block.resnets.0", top, top)?;
        let attn = if c.mid_attention {
            let p = "decoder.mid_block.attentions.0";
            Some(SpatialAttention {
                norm: GroupNorm::load(w, &format!("{p}.group_norm"), top, g, EPS)?,
                attn: Attention::load(w, p, top, top, 1, true)?,
            })
        } else {
            None
        };
        let second = res(w, "decoder.mid_block.resnets.1", top, top)?;
        let rev: Vec<i32> = c.block_out.iter().rev().copied().collect();
        let mut prev = top;
        let mut up = Vec::with_capacity(n);
        for (i, &out) in rev.iter().enumerate() {
            let p = format!("decoder.up_blocks.{i}");
            let resnets = (0..=c.layers_per_block)
                .map(|j| {
                    let from = if j == 0 { prev } else { out };
                    res(w, &format!("{p}.resnets.{j}"), from, out)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let up_conv = (i + 1 < n)
                .then(|| Conv2d::load(w, &format!("{p}.upsamplers.0.conv"), out, out, 3, 1, 1))
                .transpose()?;
            up.push(UpDecoder {
                resnets,
                up: up_conv,
            });
            prev = out;
        }
        let b0 = c.block_out[0];
        Ok(Self {
            norm_out: GroupNorm::load(w, "decoder.conv_norm_out", b0, g, EPS)?,
            conv_out: Conv2d::load(w, "decoder.conv_out", b0, c.out_channels, 3, 1, 1)?,
            config: c,
            post_quant_conv,
            conv_in,
            mid: (first, attn, second),
            up,
        })
    }

    /// Latents (N, h, w, latent) as the denoiser leaves them → pixels (N, H, W, 3) in
    /// [0, 1], float32.
    pub fn decode(&self, latents: &Array) -> MlxResult<Array> {
        let c = &self.config;
        let mut z = latents
            .divide(Array::from_f32(c.scaling_factor))?
            .add(Array::from_f32(c.shift_factor))?;
        if let Some(p) = &self.post_quant_conv {
            z = p.forward(&z)?;
        }
        let mut h = self.conv_in.forward(&z)?;
        h = self.mid.0.forward(&h, None)?;
        if let Some(a) = &self.mid.1 {
            h = a.forward(&h)?;
        }
        h = self.mid.2.forward(&h, None)?;
        for b in &self.up {
            for r in &b.resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(u) = &b.up {
                let (hh, ww) = (h.shape()[1], h.shape()[2]);
                h = u.forward(&upsample_nearest(&h, hh * 2, ww * 2)?)?;
            }
        }
        let x = self.conv_out.forward(&silu(&self.norm_out.forward(&h)?)?)?;
        let x = x
            .as_dtype(mlx_rs::Dtype::Float32)?
            .multiply(Array::from_f32(0.5))?
            .add(Array::from_f32(0.5))?;
        ops::clip(&x, (Array::from_f32(0.0), Array::from_f32(1.0)))
    }

    /// Parameter count and bytes.
    pub fn sizes(&self) -> (u64, u64) {
        let mut a: Vec<&Array> = Vec::new();
        if let Some(p) = &self.post_quant_conv {
            a.extend(p.arrays());
        }
        a.extend(self.conv_in.arrays());
        a.extend(self.mid.0.arrays());
        if let Some(s) = &self.mid.1 {
            a.extend(s.norm.arrays());
            a.extend(s.attn.arrays());
        }
        a.extend(self.mid.2.arrays());
        for b in &self.up {
            for r in &b.resnets {
                a.extend(r.arrays());
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
