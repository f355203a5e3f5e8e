//! Gemma 3 (`model_type = "gemma3_text"`, or `"gemma3"` with a `text_config`): the text
//! decoder. Differences from Llama: embeddings scaled by √hidden, RMSNorm weights stored
//! as `w` applied as `1 + w`, four norms per block (around attention and MLP), RMS-normed
//! queries and keys, `query_pre_attn_scalar` attention scale, GELU(tanh) gating, and
//! sliding-window attention on local layers with their own RoPE base.
//! Skeleton: `Config` → `Attention` → `Mlp` → `Block` → `Gemma3`.

use super::{attention_windowed, cfg_i32, cfg_ids, CausalLm, KvCache, Positions, Rope};
use crate::error::LlmError;
use mlx_common::{activation::gelu_tanh, Embedding, Linear, Weights};
use mlx_rs::{fast, ops::indexing::IndexOp, Array};
use serde_json::Value as Json;
use std::path::Path;

/// Resolved configuration.
pub struct Config {
    pub hidden_size: i32,
    pub intermediate_size: i32,
    pub num_layers: i32,
    pub num_heads: i32,
    pub num_kv_heads: i32,
    pub head_dim: i32,
    pub rms_norm_eps: f32,
    pub vocab_size: i32,
    pub max_position_embeddings: i32,
    pub query_pre_attn_scalar: f32,
    pub sliding_window: i32,
    /// Per layer: true = sliding-window (local) attention.
    pub sliding: Vec<bool>,
    pub final_logit_softcapping: Option<f32>,
    pub eos_ids: Vec<u32>,
}

impl Config {
    /// Resolve the text config (`text_config` of a multimodal config, or the config itself).
    pub fn from_json(cfg: &Json, file: &Path) -> Result<Self, LlmError> {
        let num_layers = cfg_i32(cfg, "num_hidden_layers", file)?;
        let num_heads = cfg_i32(cfg, "num_attention_heads", file)?;
        let head_dim = cfg.get("head_dim").and_then(Json::as_i64).unwrap_or(256) as i32;
        let sliding: Vec<bool> = match cfg.get("layer_types").and_then(Json::as_array) {
            Some(types) => types
                .iter()
                .map(|t| t.as_str() == Some("sliding_attention"))
                .collect(),
            None => {
                let pattern = cfg
                    .get("sliding_window_pattern")
                    .or_else(|| cfg.get("_sliding_window_pattern"))
                    .and_then(Json::as_i64)
                    .unwrap_or(6);
                (0..num_layers as i64)
                    .map(|i| (i + 1) % pattern != 0)
                    .collect()
            }
        };
        if sliding.len() != num_layers as usize {
            return Err(LlmError::Config {
                file: file.into(),
                msg: format!(
                    "`layer_types` has {} entries for {num_layers} layers",
                    sliding.len()
                ),
            });
        }
        Ok(Self {
            hidden_size: cfg_i32(cfg, "hidden_size", file)?,
            intermediate_size: cfg_i32(cfg, "intermediate_size", file)?,
            num_layers,
            num_heads,
            num_kv_heads: cfg
                .get("num_key_value_heads")
                .and_then(Json::as_i64)
                .map_or(num_heads, |v| v as i32),
            head_dim,
            rms_norm_eps: cfg
                .get("rms_norm_eps")
                .and_then(Json::as_f64)
                .unwrap_or(1e-6) as f32,
            vocab_size: cfg_i32(cfg, "vocab_size", file)?,
            max_position_embeddings: cfg
                .get("max_position_embeddings")
                .and_then(Json::as_i64)
                .unwrap_or(32_768) as i32,
            query_pre_attn_scalar: cfg
                .get("query_pre_attn_scalar")
                .and_then(Json::as_f64)
                .unwrap_or(f64::from(head_dim)) as f32,
            sliding_window: cfg
                .get("sliding_window")
                .and_then(Json::as_i64)
                .unwrap_or(512) as i32,
            sliding,
            final_logit_softcapping: cfg
                .get("final_logit_softcapping")
                .and_then(Json::as_f64)
                .map(|v| v as f32),
            eos_ids: cfg_ids(cfg, "eos_token_id"),
        })
    }
}

/// (global, local) RoPE: transformers 5 nests `rope_parameters` per layer type; older
/// configs give `rope_theta` + `rope_scaling` (global) and `rope_local_base_freq` (local).
fn ropes(cfg: &Json, dims: i32, file: &Path) -> Result<(Rope, Rope), LlmError> {
    if let Some(p) = cfg
        .get("rope_parameters")
        .filter(|p| p.get("full_attention").is_some())
    {
        let make = |t: &Json| {
            let base = t
                .get("rope_theta")
                .and_then(Json::as_f64)
                .unwrap_or(10_000.0);
            Rope::from_params(base, Some(t), dims, file)
        };
        let local = p.get("sliding_attention").map(make).transpose()?;
        let global = make(&p["full_attention"])?;
        let local = local.unwrap_or(Rope::from_params(10_000.0, None, dims, file)?);
        return Ok((global, local));
    }
    let global = Rope::from_config(cfg, dims, file)?;
    let local_base = cfg
        .get("rope_local_base_freq")
        .and_then(Json::as_f64)
        .unwrap_or(10_000.0);
    Ok((global, Rope::from_params(local_base, None, dims, file)?))
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Array,
    k_norm: Array,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

struct Block {
    attn: Attention,
    mlp: Mlp,
    input_norm: Array,
    post_attn_norm: Array,
    pre_ff_norm: Array,
    post_ff_norm: Array,
    sliding: bool,
}

impl Block {
    /// Its seven linear layers, attention then MLP.
    fn linears(&self) -> [&Linear; 7] {
        let (a, m) = (&self.attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }
}

/// The Gemma 3 text model.
pub struct Gemma3 {
    c: Config,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Array,
    global_rope: Rope,
    local_rope: Rope,
}

/// Architecture-table entry point.
pub fn load(cfg: &Json, file: &Path, w: &mut Weights) -> Result<Box<dyn CausalLm>, LlmError> {
    Ok(Box::new(Gemma3::load(cfg, file, w)?))
}

/// Gemma's RMSNorm weight `w` is applied as `1 + w`.
fn norm_weight(w: &mut Weights, name: &str, dim: i32) -> Result<Array, LlmError> {
    Ok(w.take(name, &[dim])?
        .add(Array::from_f32(1.0))?
        .as_dtype(w.dtype())?)
}

impl Gemma3 {
    /// Strip the multimodal wrapper's prefix and drop the vision parts.
    pub fn sanitize(w: &mut Weights) {
        w.rename_prefix("language_model.model.", "model.");
        w.rename_prefix("language_model.", "");
        w.drop_where(|k| {
            k.starts_with("vision_tower.")
                || k.starts_with("multi_modal_projector.")
                || k == "lm_head.weight"
        });
    }

    /// Build from config and weights.
    pub fn load(cfg: &Json, file: &Path, w: &mut Weights) -> Result<Self, LlmError> {
        let cfg = cfg.get("text_config").unwrap_or(cfg);
        let c = Config::from_json(cfg, file)?;
        Self::sanitize(w);
        let (global_rope, local_rope) = ropes(cfg, c.head_dim, file)?;
        let (h, d) = (c.hidden_size, c.head_dim);
        let embed = w.embedding("model.embed_tokens", c.vocab_size, h)?;
        let blocks = (0..c.num_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let a = format!("{p}.self_attn");
                let m = format!("{p}.mlp");
                Ok(Block {
                    attn: Attention {
                        q_proj: w.linear(&format!("{a}.q_proj"), h, c.num_heads * d, false)?,
                        k_proj: w.linear(&format!("{a}.k_proj"), h, c.num_kv_heads * d, false)?,
                        v_proj: w.linear(&format!("{a}.v_proj"), h, c.num_kv_heads * d, false)?,
                        o_proj: w.linear(&format!("{a}.o_proj"), c.num_heads * d, h, false)?,
                        q_norm: norm_weight(w, &format!("{a}.q_norm.weight"), d)?,
                        k_norm: norm_weight(w, &format!("{a}.k_norm.weight"), d)?,
                    },
                    mlp: Mlp {
                        gate_proj: w.linear(
                            &format!("{m}.gate_proj"),
                            h,
                            c.intermediate_size,
                            false,
                        )?,
                        up_proj: w.linear(
                            &format!("{m}.up_proj"),
                            h,
                            c.intermediate_size,
                            false,
                        )?,
                        down_proj: w.linear(
                            &format!("{m}.down_proj"),
                            c.intermediate_size,
                            h,
                            false,
                        )?,
                    },
                    input_norm: norm_weight(w, &format!("{p}.input_layernorm.weight"), h)?,
                    post_attn_norm: norm_weight(
                        w,
                        &format!("{p}.post_attention_layernorm.weight"),
                        h,
                    )?,
                    pre_ff_norm: norm_weight(
                        w,
                        &format!("{p}.pre_feedforward_layernorm.weight"),
                        h,
                    )?,
                    post_ff_norm: norm_weight(
                        w,
                        &format!("{p}.post_feedforward_layernorm.weight"),
                        h,
                    )?,
                    sliding: c.sliding[i as usize],
                })
            })
            .collect::<Result<Vec<_>, LlmError>>()?;
        let norm = norm_weight(w, "model.norm.weight", h)?;
        Ok(Self {
            c,
            embed,
            blocks,
            norm,
            global_rope,
            local_rope,
        })
    }

    fn attention(
        &self,
        b: &Block,
        x: &Array,
        cache: &mut KvCache,
        pos: &Positions,
    ) -> mlx_rs::error::Result<Array> {
        let c = &self.c;
        let (bs, l) = (x.shape()[0], x.shape()[1]);
        let heads = |t: Array, n: i32| {
            t.reshape(&[bs, l, n, c.head_dim])?
                .transpose_axes(&[0, 2, 1, 3])
        };
        let a = &b.attn;
        let q = fast::rms_norm(
            &heads(a.q_proj.forward(x)?, c.num_heads)?,
            Some(&a.q_norm),
            c.rms_norm_eps,
        )?;
        let k = fast::rms_norm(
            &heads(a.k_proj.forward(x)?, c.num_kv_heads)?,
            Some(&a.k_norm),
            c.rms_norm_eps,
        )?;
        let v = heads(a.v_proj.forward(x)?, c.num_kv_heads)?;
        let rope = if b.sliding {
            &self.local_rope
        } else {
            &self.global_rope
        };
        let (q, k) = (rope.apply(&q, pos)?, rope.apply(&k, pos)?);
        let kv = cache.update(k, v)?;
        let window = b.sliding.then_some(c.sliding_window);
        let o = attention_windowed(&q, &kv, c.query_pre_attn_scalar.powf(-0.5), pos, window)?;
        a.o_proj
            .forward(&o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[
                bs,
                l,
                c.num_heads * c.head_dim,
            ])?)
    }
}

impl CausalLm for Gemma3 {
    fn forward(
        &self,
        ids: &Array,
        cache: &mut [KvCache],
        pos: &Positions,
        all: bool,
    ) -> mlx_rs::error::Result<Array> {
        let eps = self.c.rms_norm_eps;
        let scale =
            Array::from_f32((self.c.hidden_size as f32).sqrt()).as_dtype(self.embed.dtype())?;
        let mut x = self.embed.lookup(ids)?.multiply(&scale)?;
        for (b, kv) in self.blocks.iter().zip(cache.iter_mut()) {
            let a = self.attention(b, &fast::rms_norm(&x, Some(&b.input_norm), eps)?, kv, pos)?;
            let h = x.add(&fast::rms_norm(&a, Some(&b.post_attn_norm), eps)?)?;
            let f = fast::rms_norm(&h, Some(&b.pre_ff_norm), eps)?;
            let m = &b.mlp;
            let g = gelu_tanh(&m.gate_proj.forward(&f)?)?;
            let f = m.down_proj.forward(&g.multiply(&m.up_proj.forward(&f)?)?)?;
            x = h.add(&fast::rms_norm(&f, Some(&b.post_ff_norm), eps)?)?;
        }
        if !all {
            let l = x.shape()[1];
            x = x.index((.., (l - 1)..l, ..));
        }
        let logits = fast::rms_norm(&x, Some(&self.norm), eps)?;
        let logits = self.embed.as_linear(&logits)?;
        match self.c.final_logit_softcapping {
            Some(cap) => {
                let cap = Array::from_f32(cap);
                mlx_rs::ops::tanh(&logits.divide(&cap)?)?.multiply(&cap)
            }
            None => Ok(logits),
        }
    }

    fn layers(&self) -> usize {
        self.blocks.len()
    }

    fn vocab_size(&self) -> usize {
        self.c.vocab_size as usize
    }

    fn max_context(&self) -> usize {
        self.c.max_position_embeddings as usize
    }

    fn sizes(&self) -> (u64, u64) {
        let mut total = self.embed.sizes();
        for b in &self.blocks {
            for l in b.linears() {
                let (p, n) = l.sizes();
                total.0 += p;
                total.1 += n;
            }
        }
        total
    }

    fn parameters(&self) -> Vec<&Array> {
        let mut all = self.embed.arrays();
        for b in &self.blocks {
            all.extend(b.linears().into_iter().flat_map(Linear::arrays));
            all.extend([
                &b.attn.q_norm,
                &b.attn.k_norm,
                &b.input_norm,
                &b.post_attn_norm,
                &b.pre_ff_norm,
                &b.post_ff_norm,
            ]);
        }
        all.push(&self.norm);
        all.extend(self.global_rope.freqs.iter().chain(&self.local_rope.freqs));
        all
    }

    fn eos_ids(&self) -> Vec<u32> {
        self.c.eos_ids.clone()
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| {
                let (a, m) = (&mut b.attn, &mut b.mlp);
                [
                    &mut a.q_proj,
                    &mut a.k_proj,
                    &mut a.v_proj,
                    &mut a.o_proj,
                    &mut m.gate_proj,
                    &mut m.up_proj,
                    &mut m.down_proj,
                ]
            })
            .collect()
    }
}
