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
