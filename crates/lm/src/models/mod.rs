//! Architectures of the llm plugin, one file each (named after `config.json`'s
//! `model_type`), the architecture table, and the pieces they share: the KV cache, RoPE
//! variants, attention masks.

pub mod gemma3;
mod kv;
pub mod llama;
pub mod mistral;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;

use crate::error::LlmError;
pub use kv::{attention, attention_windowed, CachedKv, KvCache, KvStore, Positions};
use mlx_common::{Linear, Weights};
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
    /// Input embeddings (B, L, H) of `ids` (B, L): what [`forward_embeds`](Self::forward_embeds)
    /// reads. Multimodal prompts put image features in place of their image tokens'.
    fn embed_tokens(&self, _ids: &Array) -> mlx_rs::error::Result<Array> {
        Err(mlx_rs::error::Exception::custom(
            "this architecture does not take input embeddings",
        ))
    }
    /// As [`forward`](Self::forward), from input embeddings (B, L, H) instead of ids.
    fn forward_embeds(
        &self,
        _x: &Array,
        _cache: &mut [KvCache],
        _pos: &Positions,
        _all: bool,
    ) -> mlx_rs::error::Result<Array> {
        Err(mlx_rs::error::Exception::custom(
            "this architecture does not take input embeddings",
        ))
    }
    /// Number of layers (= caches needed).
    fn layers(&self) -> usize;
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
    /// Longest context the model supports.
    fn max_context(&self) -> usize;
    /// (parameters, bytes) of the loaded weights.
    fn sizes(&self) -> (u64, u64);
    /// Every array the model holds, for the loader to evaluate: MLX streams belong to a
    /// thread, and a lazy weight (a `load_safetensors` read, a cast, Gemma's `1 + w`)
    /// left for the first request would run on the loading thread's stream from
    /// whichever thread serves it ("no Stream(cpu, 0) in current thread").
    fn parameters(&self) -> Vec<&Array>;
    /// EOS ids from the config.
    fn eos_ids(&self) -> Vec<u32>;
    /// Every linear layer, for LoRA adapters to find by checkpoint name.
    fn linears_mut(&mut self) -> Vec<&mut Linear>;
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

/// RoPE as configured by `rope_theta` / `rope_scaling` (none, `linear`, `llama3`; with
/// `mrope_section`, multimodal).
pub struct Rope {
    pub dims: i32,
    pub base: f32,
    pub scale: f32,
    /// Precomputed frequencies (llama3 scaling), used instead of `base`.
    pub freqs: Option<Array>,
    /// Interleaved (GPT-J) layout instead of the split-halves (NeoX / HF) layout.
    pub traditional: bool,
    /// Multimodal RoPE (Qwen2-VL's `mrope_section`): the frequencies split into sections,
    /// each turned by its own position of [`Positions::Explicit`]; a token whose positions
    /// are all equal turns as plain RoPE does, so text and decoding take the usual path.
    pub sections: Option<Vec<i32>>,
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
            sections: None,
        };
        let Some(s) = scaling.filter(|s| !s.is_null()) else {
            return Ok(rope);
        };
        let bad = |msg: String| LlmError::Config {
            file: file.into(),
            msg,
        };
        if let Some(sec) = s.get("mrope_section") {
            let list: Option<Vec<i32>> = sec.as_array().and_then(|v| {
                v.iter()
                    .map(|x| {
                        x.as_i64()
                            .filter(|n| (1..=4096).contains(n))
                            .map(|n| n as i32)
                    })
                    .collect()
            });
            match list {
                Some(l) if !l.is_empty() && l.iter().sum::<i32>() == dims / 2 => {
                    rope.sections = Some(l)
                }
                _ => {
                    return Err(bad(format!(
                        "`mrope_section` {sec} must list positive sections summing to half the rotary dimensions ({})",
                        dims / 2
                    )))
                }
            }
        }
        let ty = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Json::as_str)
            .unwrap_or("default");
        let num = |k: &str| s.get(k).and_then(Json::as_f64);
        match ty {
            // transformers 4 named Qwen2-VL's multimodal RoPE a type of its own.
            "default" | "mrope" => {}
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
            Positions::Explicit { ids, .. } => self.apply_explicit(x, ids),
        }
    }

    /// RoPE at explicit positions `ids` (S, B, L): section k of the frequencies turned by
    /// `ids[k]` (one section without `sections`).
    fn apply_explicit(&self, x: &Array, ids: &Array) -> mlx_rs::error::Result<Array> {
        use mlx_rs::ops::indexing::IndexOp;
        if self.traditional {
            return Err(mlx_rs::error::Exception::custom(
                "explicit RoPE positions take the split-halves layout",
            ));
        }
        let half = self.dims / 2;
        // Inverse periods: 1 / freqs, or base^(-2i/dims).
        let inv: Array = match &self.freqs {
            Some(f) => Array::from_f32(1.0).divide(f)?,
            None => {
                let e: Vec<f32> = (0..half)
                    .map(|i| self.base.powf(-2.0 * i as f32 / self.dims as f32))
                    .collect();
                Array::from_slice(&e, &[half])
            }
        };
        let sections = self.sections.clone().unwrap_or_else(|| vec![half]);
        let pos = ids
            .as_dtype(mlx_rs::Dtype::Float32)?
            .multiply(Array::from_f32(self.scale))?;
        let mut parts = Vec::with_capacity(sections.len());
        let mut start = 0;
        for (k, len) in sections.iter().enumerate() {
            let k = (k as i32).min(pos.shape()[0] - 1);
            // (B, L, 1) · (len,) → (B, L, len)
            let p = pos.index(k).expand_dims(-1)?;
            parts.push(p.multiply(inv.index(start..start + len))?);
            start += len;
        }
        let angles = mlx_rs::ops::concatenate(&parts.iter().collect::<Vec<_>>(), -1)?;
        // (B, 1, L, half): one angle per head.
        rotate_halves(x, &angles.expand_dims(1)?)
    }
}

/// `x` (B, H, L, D) turned in the split-halves layout by `angles` (B or 1, H or 1, L, R/2): its first R
/// dimensions rotated pair (i, i + R/2) by angle i, the rest as they are. Computed in
/// float32 (as MLX's RoPE kernel does), returned in `x`'s dtype.
pub fn rotate_halves(x: &Array, angles: &Array) -> mlx_rs::error::Result<Array> {
    use mlx_rs::ops::indexing::IndexOp;
    let d = *x.shape().last().unwrap_or(&0);
    let half = *angles.shape().last().unwrap_or(&0);
    let xf = x.as_dtype(mlx_rs::Dtype::Float32)?;
    let (cos, sin) = (mlx_rs::ops::cos(angles)?, mlx_rs::ops::sin(angles)?);
    let x1 = xf.index((.., .., .., ..half));
    let x2 = xf.index((.., .., .., half..2 * half));
    let r1 = x1.multiply(&cos)?.subtract(&x2.multiply(&sin)?)?;
    let r2 = x2.multiply(&cos)?.add(&x1.multiply(&sin)?)?;
    let mut out = vec![r1, r2];
    if 2 * half < d {
        out.push(xf.index((.., .., .., 2 * half..)));
    }
    mlx_rs::ops::concatenate(&out.iter().collect::<Vec<_>>(), -1)?.as_dtype(x.dtype())
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
