//! Llama (`model_type = "llama"`): SmolLM2, TinyLlama, Llama 2/3.x.
//! Skeleton: `Config` → `Attention` → `Mlp` → `Block` → `Llama`.
//!
//! The Llama-family architectures whose layers only differ in details reuse this model
//! from their own files: Mistral (same layers), Qwen2 (q/k/v biases), Qwen3 (RMS-normed
//! queries and keys), Phi-3 (fused projections, split by its `sanitize`). The options
//! are read from the checkpoint itself: biases and q/k norms load iff present.

use super::{attention, cfg_i32, cfg_ids, CausalLm, KvCache, Positions, Rope};
use crate::error::LlmError;
use mlx_common::{Embedding, Linear, Weights};
use mlx_rs::{fast, ops::indexing::IndexOp, Array};
use serde_json::Value as Json;
use std::path::Path;

/// Resolved configuration (HF field names in `config.json`).
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
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub eos_ids: Vec<u32>,
    /// Rotary dimensions (head_dim × `partial_rotary_factor`).
    pub rope_dims: i32,
}

impl Config {
    /// Resolve `config.json` (`file` names it in errors).
    pub fn from_json(cfg: &Json, file: &Path) -> Result<Self, LlmError> {
        let hidden_size = cfg_i32(cfg, "hidden_size", file)?;
        let num_heads = cfg_i32(cfg, "num_attention_heads", file)?;
        let num_kv_heads = cfg
            .get("num_key_value_heads")
            .and_then(Json::as_i64)
            .map_or(num_heads, |v| v as i32);
        let head_dim = cfg
            .get("head_dim")
            .and_then(Json::as_i64)
            .map_or(hidden_size / num_heads, |v| v as i32);
        if num_kv_heads <= 0 || num_heads % num_kv_heads != 0 {
            return Err(LlmError::Config {
                file: file.into(),
                msg: format!("`num_attention_heads` {num_heads} is not a multiple of `num_key_value_heads` {num_kv_heads}"),
            });
        }
        let flag = |k: &str| cfg.get(k).and_then(Json::as_bool).unwrap_or(false);
        let partial = cfg
            .get("partial_rotary_factor")
            .or_else(|| {
                cfg.get("rope_parameters")
                    .and_then(|p| p.get("partial_rotary_factor"))
            })
            .and_then(Json::as_f64)
            .unwrap_or(1.0);
        Ok(Self {
            rope_dims: (f64::from(head_dim) * partial) as i32,
            hidden_size,
            intermediate_size: cfg_i32(cfg, "intermediate_size", file)?,
            num_layers: cfg_i32(cfg, "num_hidden_layers", file)?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: cfg
                .get("rms_norm_eps")
                .and_then(Json::as_f64)
                .unwrap_or(1e-6) as f32,
            vocab_size: cfg_i32(cfg, "vocab_size", file)?,
            max_position_embeddings: cfg
                .get("max_position_embeddings")
                .and_then(Json::as_i64)
                .unwrap_or(4096) as i32,
            tie_word_embeddings: flag("tie_word_embeddings"),
            attention_bias: flag("attention_bias"),
            mlp_bias: flag("mlp_bias"),
            eos_ids: cfg_ids(cfg, "eos_token_id"),
        })
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3: RMSNorm over each head of the queries / keys, before RoPE.
    qk_norm: Option<(Array, Array, f32)>,
    heads: i32,
    kv_heads: i32,
    head_dim: i32,
    scale: f32,
}

impl Attention {
    fn load(w: &mut Weights, p: &str, c: &Config) -> Result<Self, LlmError> {
        let (h, d) = (c.hidden_size, c.head_dim);
        Ok(Self {
            q_proj: w.linear(&format!("{p}.q_proj"), h, c.num_heads * d, c.attention_bias)?,
            k_proj: w.linear(
                &format!("{p}.k_proj"),
                h,
                c.num_kv_heads * d,
                c.attention_bias,
            )?,
            v_proj: w.linear(
                &format!("{p}.v_proj"),
                h,
                c.num_kv_heads * d,
                c.attention_bias,
            )?,
            o_proj: w.linear(&format!("{p}.o_proj"), c.num_heads * d, h, c.attention_bias)?,
            qk_norm: match w.take_opt(&format!("{p}.q_norm.weight"), &[d])? {
                Some(q) => Some((
                    q,
                    w.take(&format!("{p}.k_norm.weight"), &[d])?,
                    c.rms_norm_eps,
                )),
                None => None,
            },
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
        })
    }

    fn forward(
        &self,
        x: &Array,
        cache: &mut KvCache,
        rope: &Rope,
        pos: &Positions,
    ) -> mlx_rs::error::Result<Array> {
        let (b, l) = (x.shape()[0], x.shape()[1]);
        let heads = |t: Array, n: i32| {
            t.reshape(&[b, l, n, self.head_dim])?
                .transpose_axes(&[0, 2, 1, 3])
        };
        let mut q = heads(self.q_proj.forward(x)?, self.heads)?;
        let mut k = heads(self.k_proj.forward(x)?, self.kv_heads)?;
        if let Some((qn, kn, eps)) = &self.qk_norm {
            q = fast::rms_norm(&q, Some(qn), *eps)?;
            k = fast::rms_norm(&k, Some(kn), *eps)?;
        }
        let q = rope.apply(&q, pos)?;
        let k = rope.apply(&k, pos)?;
        let v = heads(self.v_proj.forward(x)?, self.kv_heads)?;
        let kv = cache.update(k, v)?;
        let o = attention(&q, &kv, self.scale, pos)?;
        self.o_proj
            .forward(&o.transpose_axes(&[0, 2, 1, 3])?.reshape(&[
                b,
                l,
                self.heads * self.head_dim,
            ])?)
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(w: &mut Weights, p: &str, c: &Config) -> Result<Self, LlmError> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        Ok(Self {
            gate_proj: w.linear(&format!("{p}.gate_proj"), h, i, c.mlp_bias)?,
            up_proj: w.linear(&format!("{p}.up_proj"), h, i, c.mlp_bias)?,
            down_proj: w.linear(&format!("{p}.down_proj"), i, h, c.mlp_bias)?,
        })
    }

    fn forward(&self, x: &Array) -> mlx_rs::error::Result<Array> {
        let g = self.gate_proj.forward(x)?;
        let silu = g.multiply(&mlx_rs::ops::sigmoid(&g)?)?;
        self.down_proj
            .forward(&silu.multiply(&self.up_proj.forward(x)?)?)
    }
}

struct Block {
    attn: Attention,
    mlp: Mlp,
    input_norm: Array,
    post_attn_norm: Array,
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

/// The Llama model.
pub struct Llama {
    config: Config,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Array,
    lm_head: Option<Linear>,
    rope: Rope,
}

/// Architecture-table entry point.
pub fn load(cfg: &Json, file: &Path, w: &mut Weights) -> Result<Box<dyn CausalLm>, LlmError> {
    Ok(Box::new(Llama::load(cfg, file, w)?))
}

impl Llama {
    /// Drop what inference does not use.
    pub fn sanitize(w: &mut Weights) {
        w.drop_where(|k| k.contains("rotary_emb.inv_freq"));
    }

    /// Build from `config.json` and weights (strict: the caller checks for leftovers).
    /// Architectures sharing these layers call this after their own `sanitize`.
    pub fn load(cfg: &Json, file: &Path, w: &mut Weights) -> Result<Self, LlmError> {
        let c = Config::from_json(cfg, file)?;
        Self::sanitize(w);
        let rope = Rope::from_config(cfg, c.rope_dims, file)?;
        let h = c.hidden_size;
        let embed = w.embedding("model.embed_tokens", c.vocab_size, h)?;
        let blocks = (0..c.num_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(Block {
                    attn: Attention::load(w, &format!("{p}.self_attn"), &c)?,
                    mlp: Mlp::load(w, &format!("{p}.mlp"), &c)?,
                    input_norm: w.take(&format!("{p}.input_layernorm.weight"), &[h])?,
                    post_attn_norm: w
                        .take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                })
            })
            .collect::<Result<Vec<_>, LlmError>>()?;
        let norm = w.take("model.norm.weight", &[h])?;
        let lm_head = if c.tie_word_embeddings && !w.contains("lm_head.weight") {
            None
        } else {
            Some(w.linear("lm_head", h, c.vocab_size, false)?)
        };
        Ok(Self {
            config: c,
            embed,
            blocks,
            norm,
            lm_head,
            rope,
        })
    }
}

impl CausalLm for Llama {
    fn forward(
        &self,
        ids: &Array,
        cache: &mut [KvCache],
        pos: &Positions,
        all: bool,
    ) -> mlx_rs::error::Result<Array> {
        self.forward_embeds(&self.embed.lookup(ids)?, cache, pos, all)
    }

    fn embed_tokens(&self, ids: &Array) -> mlx_rs::error::Result<Array> {
        self.embed.lookup(ids)
    }

    fn forward_embeds(
        &self,
        x: &Array,
        cache: &mut [KvCache],
        pos: &Positions,
        all: bool,
    ) -> mlx_rs::error::Result<Array> {
        let eps = self.config.rms_norm_eps;
        let mut x = x.clone();
        for (block, c) in self.blocks.iter().zip(cache.iter_mut()) {
            let a = block.attn.forward(
                &fast::rms_norm(&x, Some(&block.input_norm), eps)?,
                c,
                &self.rope,
                pos,
            )?;
            let h = x.add(&a)?;
            x = h.add(&block.mlp.forward(&fast::rms_norm(
                &h,
                Some(&block.post_attn_norm),
                eps,
            )?)?)?;
        }
        if !all {
            let l = x.shape()[1];
            x = x.index((.., (l - 1)..l, ..));
        }
        let x = fast::rms_norm(&x, Some(&self.norm), eps)?;
        match &self.lm_head {
            Some(head) => head.forward(&x),
            None => self.embed.as_linear(&x),
        }
    }

    fn layers(&self) -> usize {
        self.blocks.len()
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size as usize
    }

    fn max_context(&self) -> usize {
        self.config.max_position_embeddings as usize
    }

    fn sizes(&self) -> (u64, u64) {
        let mut total = self.embed.sizes();
        let mut add = |(p, b): (u64, u64)| {
            total.0 += p;
            total.1 += b;
        };
        for blk in &self.blocks {
            for l in blk.linears() {
                add(l.sizes());
            }
            add((
                2 * blk.input_norm.size() as u64,
                2 * blk.input_norm.nbytes() as u64,
            ));
        }
        if let Some(h) = &self.lm_head {
            add(h.sizes());
        }
        add((self.norm.size() as u64, self.norm.nbytes() as u64));
        total
    }

    fn parameters(&self) -> Vec<&Array> {
        let mut all = self.embed.arrays();
        for b in &self.blocks {
            all.extend(b.linears().into_iter().flat_map(Linear::arrays));
            if let Some((q, k, _)) = &b.attn.qk_norm {
                all.extend([q, k]);
            }
            all.extend([&b.input_norm, &b.post_attn_norm]);
        }
        all.extend(self.lm_head.iter().flat_map(Linear::arrays));
        all.push(&self.norm);
        all.extend(&self.rope.freqs);
        all
    }

    fn eos_ids(&self) -> Vec<u32> {
        self.config.eos_ids.clone()
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all: Vec<&mut Linear> = self
            .blocks
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
            .collect();
        all.extend(self.lm_head.as_mut());
        all
    }
}
