//! Architectures of the llm plugin, one file each (named after `config.json`'s
//! `model_type`), the architecture table, and the pieces they share: the KV cache, RoPE
//! variants, attention masks.

pub mod gemma3;
pub mod llama;
pub mod mistral;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;

use crate::error::LlmError;
use mlx_common::Weights;
use mlx_rs::{fast, Array};
use serde_json::Value as Json;
use std::path::Path;

/// A causal language model: tokens in, next-token logits out.
pub trait CausalLm: Send {
    /// Logits for `ids` (B, L) given the cache state; `all` = every position (B, L, V),
    /// else only the last one (B, 1, V). `pos` holds each row's position offset.
    fn forward(
        &self,
        ids: &Array,
        cache: &mut [KvCache],
        pos: &Positions,
        all: bool,
    ) -> mlx_rs::error::Result<Array>;
    /// Number of layers (= caches needed).
    fn layers(&self) -> usize;
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
    /// Longest context the model supports.
    fn max_context(&self) -> usize;
    /// (parameters, bytes) of the loaded weights.
    fn sizes(&self) -> (u64, u64);
    /// EOS ids from the config.
    fn eos_ids(&self) -> Vec<u32>;
}

/// Builds a model from config.json (as JSON, with its path for messages) and weights.
pub type LoadFn = fn(&Json, &Path, &mut Weights) -> Result<Box<dyn CausalLm>, LlmError>;

/// An architecture: its `model_type` and how to build it from config.json + weights.
pub struct Architecture {
    pub model_type: &'static str,
    pub load: LoadFn,
}

/// The architecture table. A model type not listed here is rejected before any download.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        model_type: "llama",
        load: llama::load,
    },
    Architecture {
        model_type: "mistral",
        load: mistral::load,
    },
    Architecture {
        model_type: "qwen2",
        load: qwen2::load,
    },
    Architecture {
        model_type: "qwen3",
        load: qwen3::load,
    },
    Architecture {
        model_type: "phi3",
        load: phi3::load,
    },
    Architecture {
        model_type: "gemma3",
        load: gemma3::load,
    },
    Architecture {
        model_type: "gemma3_text",
        load: gemma3::load,
    },
];

/// Whether `model_type` can be loaded.
pub fn supports(model_type: &str) -> bool {
    ARCHITECTURES.iter().any(|a| a.model_type == model_type)
}

/// Supported `model_type`s, comma-separated.
pub fn supported_list() -> String {
    ARCHITECTURES
        .iter()
        .map(|a| a.model_type)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Position offsets of the rows of a batch: one shared offset (single sequence or equal
/// lengths), or one per row (left-padded batches: offset − padding).
pub enum Positions {
    Shared(i32),
    PerRow { offsets: Array, mask: Array },
}

/// Keys and values of one layer, (B, kv_heads, T, head_dim), grown by concatenation in
/// steps so that decoding does not copy the whole cache each token.
#[derive(Default)]
pub struct KvCache {
    keys: Option<Array>,
    values: Option<Array>,
    /// Tokens stored.
    pub offset: i32,
}

/// Cache capacity grows in multiples of this many tokens.
const CACHE_STEP: i32 = 256;

impl KvCache {
    /// Append `k`, `v` (B, H, L, D) and return the keys/values of every position so far.
    pub fn update(&mut self, k: Array, v: Array) -> mlx_rs::error::Result<(Array, Array)> {
        let l = k.shape()[2];
        let prev = self.offset;
        let need = prev + l;
        let cap = self.keys.as_ref().map_or(0, |a| a.shape()[2]);
        if need > cap {
            let (b, h, d) = (k.shape()[0], k.shape()[1], k.shape()[3]);
            let grow = (need - cap + CACHE_STEP - 1) / CACHE_STEP * CACHE_STEP;
            let zeros_k = mlx_rs::ops::zeros_dtype(&[b, h, grow, d], k.dtype())?;
            let zeros_v = mlx_rs::ops::zeros_dtype(&[b, h, grow, v.shape()[3]], v.dtype())?;
            self.keys = Some(match self.keys.take() {
                Some(old) => {
                    mlx_rs::ops::concatenate(&[old.index((.., .., ..prev, ..)), zeros_k], 2)?
                }
                None => zeros_k,
            });
            self.values = Some(match self.values.take() {
                Some(old) => {
                    mlx_rs::ops::concatenate(&[old.index((.., .., ..prev, ..)), zeros_v], 2)?
                }
                None => zeros_v,
            });
        }
        let keys = self.keys.as_mut().expect("allocated above");
        let values = self.values.as_mut().expect("allocated above");
        keys.index_mut((.., .., prev..need, ..), &k);
        values.index_mut((.., .., prev..need, ..), &v);
        self.offset = need;
        Ok((
            keys.index((.., .., ..need, ..)),
            values.index((.., .., ..need, ..)),
        ))
    }

    /// Arrays to evaluate so the cache does not hold a growing lazy graph.
    pub fn state(&self) -> Vec<&Array> {
        self.keys.iter().chain(self.values.iter()).collect()
    }
}

use mlx_rs::ops::indexing::{IndexMutOp, IndexOp};

/// RoPE as configured by `rope_theta` / `rope_scaling` (none, `linear`, `llama3`).
pub struct Rope {
    pub dims: i32,
    pub base: f32,
    pub scale: f32,
    /// Precomputed frequencies (llama3 scaling), used instead of `base`.
    pub freqs: Option<Array>,
    /// Interleaved (GPT-J) layout instead of the split-halves (NeoX / HF) layout.
    pub traditional: bool,
}

impl Rope {
    /// From a config's RoPE settings: `rope_theta` + `rope_scaling` (transformers 4), or a
    /// flat `rope_parameters` table (transformers 5). `dims` = rotary dimensions.
    pub fn from_config(cfg: &Json, dims: i32, file: &Path) -> Result<Self, LlmError> {
        match cfg
            .get("rope_parameters")
            .filter(|p| p.get("rope_theta").is_some())
        {
            Some(p) => {
                let base = p
                    .get("rope_theta")
                    .and_then(Json::as_f64)
                    .unwrap_or(10_000.0);
                Self::from_params(base, Some(p), dims, file)
            }
            None => Self::from_params(
                cfg.get("rope_theta")
                    .and_then(Json::as_f64)
                    .unwrap_or(10_000.0),
                cfg.get("rope_scaling"),
                dims,
                file,
            ),
        }
    }

    /// From a base and a scaling table (`rope_type`/`type`: default, linear, llama3).
    pub fn from_params(
        base: f64,
        scaling: Option<&Json>,
        dims: i32,
        file: &Path,
    ) -> Result<Self, LlmError> {
        let base = base as f32;
        let mut rope = Rope {
            dims,
            base,
            scale: 1.0,
            freqs: None,
            traditional: false,
        };
        let Some(s) = scaling.filter(|s| !s.is_null()) else {
            return Ok(rope);
        };
        let ty = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Json::as_str)
            .unwrap_or("default");
        let num = |k: &str| s.get(k).and_then(Json::as_f64);
        let bad = |msg: String| LlmError::Config {
            file: file.into(),
            msg,
        };
        match ty {
            "default" => {}
            "linear" => {
                let f = num("factor").ok_or_else(|| bad("`rope_scaling.factor` missing".into()))?;
                rope.scale = 1.0 / f as f32;
            }
            "llama3" => {
                let f = num("factor").ok_or_else(|| bad("`rope_scaling.factor` missing".into()))?;
                let low = num("low_freq_factor").unwrap_or(1.0);
                let high = num("high_freq_factor").unwrap_or(4.0);
                let old = num("original_max_position_embeddings").unwrap_or(8192.0);
                let (low_wl, high_wl) = (old / low, old / high);
                // As mlx-lm's Llama3RoPE: per-pair periods, stretched by `factor` for long
                // wavelengths and smoothly interpolated in between.
                let freqs: Vec<f32> = (0..dims / 2)
                    .map(|i| {
                        let p = f64::from(base).powf(2.0 * f64::from(i) / f64::from(dims));
                        let wl = 2.0 * std::f64::consts::PI * p;
                        let mut g = if wl > low_wl { p * f } else { p };
                        if wl > high_wl && wl < low_wl {
                            let smooth = (old / wl - low) / (high - low);
                            g /= (1.0 - smooth) / f + smooth;
                        }
                        g as f32
                    })
                    .collect();
                rope.freqs = Some(Array::from_slice(&freqs, &[dims / 2]));
            }
            other => {
                return Err(bad(format!(
                    "`rope_scaling` type `{other}` is not supported (linear, llama3)"
                )))
            }
        }
        Ok(rope)
    }

    /// Apply to `x` (B, H, L, D) at positions `pos`.
    pub fn apply(&self, x: &Array, pos: &Positions) -> mlx_rs::error::Result<Array> {
        let base = if self.freqs.is_some() {
            None
        } else {
            Some(self.base)
        };
        match pos {
            Positions::Shared(o) => fast::rope(
                x,
                self.dims,
                self.traditional,
                base,
                self.scale,
                *o,
                self.freqs.as_ref(),
            ),
            Positions::PerRow { offsets, .. } => fast::rope_dynamic(
                x,
                self.dims,
                self.traditional,
                base,
                self.scale,
                offsets,
                self.freqs.as_ref(),
            ),
        }
    }
}

/// Scaled dot-product attention over `q` (B, H, L, D) and the cached `k`, `v`, with the
/// causal mask (and the padding mask of left-padded batches).
pub fn attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    pos: &Positions,
) -> mlx_rs::error::Result<Array> {
    let l = q.shape()[2];
    match pos {
        Positions::PerRow { mask, .. } => {
            fast::scaled_dot_product_attention(q, k, v, scale, mask, None)
        }
        Positions::Shared(_) if l > 1 => fast::scaled_dot_product_attention(
            q,
            k,
            v,
            scale,
            fast::ScaledDotProductAttentionMask::Causal,
            None,
        ),
        Positions::Shared(_) => fast::scaled_dot_product_attention(q, k, v, scale, None, None),
    }
}

/// Attention where a query only sees the last `window` positions (itself included), on
/// top of the causal / padding masks; `None` or a window covering every key is plain
/// [`attention`].
pub fn attention_windowed(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    pos: &Positions,
    window: Option<i32>,
) -> mlx_rs::error::Result<Array> {
    let (l, s) = (q.shape()[2], k.shape()[2]);
    let Some(window) = window.filter(|w| *w < s) else {
        return attention(q, k, v, scale, pos);
    };
    // Query i sits at key index s - l + i; it sees keys j with q - window < j <= q.
    let mut m = vec![-1e9f32; (l * s) as usize];
    for i in 0..l {
        let qpos = s - l + i;
        for j in (qpos - window + 1).max(0)..=qpos {
            m[(i * s + j) as usize] = 0.0;
        }
    }
    let mut mask = Array::from_slice(&m, &[1, 1, l, s]).as_dtype(q.dtype())?;
    if let Positions::PerRow { mask: rows, .. } = pos {
        // Both must allow a key. A padding query's own position stays allowed by both,
        // so no row is fully masked.
        mask = rows.add(&mask)?;
    }
    fast::scaled_dot_product_attention(q, k, v, scale, &mask, None)
}

/// Read a JSON number field as i32, with the key named on error.
pub fn cfg_i32(cfg: &Json, key: &str, file: &Path) -> Result<i32, LlmError> {
    cfg.get(key)
        .and_then(Json::as_i64)
        .filter(|v| *v > 0)
        .map(|v| v as i32)
        .ok_or_else(|| LlmError::Config {
            file: file.into(),
            msg: format!("missing or non-positive `{key}`"),
        })
}

/// `eos_token_id` as int or list.
pub fn cfg_ids(cfg: &Json, key: &str) -> Vec<u32> {
    match cfg.get(key) {
        Some(Json::Number(n)) => n.as_u64().map(|v| v as u32).into_iter().collect(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(Json::as_u64)
            .map(|v| v as u32)
            .collect(),
        _ => vec![],
    }
}
