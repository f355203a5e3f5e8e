//! BERT encoder (`model_type = "bert"`): BertModel / sentence-transformers checkpoints
//! such as all-MiniLM-L6-v2. Skeleton: `RawConfig` → `Config` → layers → `Bert`.

use super::{Linear, Weights};
use crate::error::EmbedError;
use mlx_common::activation::{gelu, gelu_tanh};
use mlx_rs::{fast, Array, Dtype};
use serde::Deserialize;
use std::path::Path;

/// `config.json` as written by transformers (HF field names; unknown keys ignored).
#[derive(Debug, Deserialize)]
struct RawConfig {
    hidden_size: Option<i32>,
    num_hidden_layers: Option<i32>,
    num_attention_heads: Option<i32>,
    intermediate_size: Option<i32>,
    max_position_embeddings: Option<i32>,
    type_vocab_size: Option<i32>,
    vocab_size: Option<i32>,
    layer_norm_eps: Option<f32>,
    hidden_act: Option<String>,
    position_embedding_type: Option<String>,
}

/// Resolved configuration: every value present and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub hidden_size: i32,
    pub num_layers: i32,
    pub num_heads: i32,
    pub intermediate_size: i32,
    pub max_position_embeddings: i32,
    pub type_vocab_size: i32,
    pub vocab_size: i32,
    pub layer_norm_eps: f32,
    pub gelu_approx: bool,
}

impl Config {
    /// Read and resolve `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, EmbedError> {
        let text = std::fs::read_to_string(path).map_err(|e| EmbedError::io(path, e))?;
        let raw: RawConfig = serde_json::from_str(&text).map_err(|e| EmbedError::Config {
            file: path.into(),
            msg: e.to_string(),
        })?;
        let need = |v: Option<i32>, key: &str| {
            v.filter(|v| *v > 0).ok_or_else(|| EmbedError::Config {
                file: path.into(),
                msg: format!("missing or non-positive `{key}`"),
            })
        };
        let act = raw.hidden_act.as_deref().unwrap_or("gelu");
        let gelu_approx = match act {
            "gelu" => false,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => true,
            other => {
                return Err(EmbedError::Config {
                    file: path.into(),
                    msg: format!("`hidden_act` = {other:?} is not supported (gelu, gelu_new)"),
                })
            }
        };
        if let Some(p) = raw
            .position_embedding_type
            .as_deref()
            .filter(|p| *p != "absolute")
        {
            return Err(EmbedError::Config {
                file: path.into(),
                msg: format!("`position_embedding_type` = {p:?} is not supported (absolute)"),
            });
        }
        let cfg = Config {
            hidden_size: need(raw.hidden_size, "hidden_size")?,
            num_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_heads: need(raw.num_attention_heads, "num_attention_heads")?,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            max_position_embeddings: need(raw.max_position_embeddings, "max_position_embeddings")?,
            type_vocab_size: raw.type_vocab_size.unwrap_or(2).max(1),
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-12),
            gelu_approx,
        };
        if cfg.hidden_size % cfg.num_heads != 0 {
            return Err(EmbedError::Config {
                file: path.into(),
                msg: format!(
                    "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                    cfg.hidden_size, cfg.num_heads
                ),
            });
        }
        Ok(cfg)
    }
}

struct LayerNorm {
    weight: Array,
    bias: Array,
    eps: f32,
}

impl LayerNorm {
    fn load(w: &mut Weights, prefix: &str, dim: i32, eps: f32) -> Result<Self, EmbedError> {
        Ok(Self {
            weight: w.take(&format!("{prefix}.weight"), &[dim])?,
            bias: w.take(&format!("{prefix}.bias"), &[dim])?,
            eps,
        })
    }
    fn forward(&self, x: &Array) -> mlx_rs::error::Result<Array> {
        fast::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

impl Layer {
    fn load(w: &mut Weights, p: &str, c: &Config) -> Result<Self, EmbedError> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        Ok(Self {
            query: w.linear(&format!("{p}.attention.self.query"), h, h, true)?,
            key: w.linear(&format!("{p}.attention.self.key"), h, h, true)?,
            value: w.linear(&format!("{p}.attention.self.value"), h, h, true)?,
            attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h, true)?,
            attn_norm: LayerNorm::load(
                w,
                &format!("{p}.attention.output.LayerNorm"),
                h,
                c.layer_norm_eps,
            )?,
            intermediate: w.linear(&format!("{p}.intermediate.dense"), h, i, true)?,
            output: w.linear(&format!("{p}.output.dense"), i, h, true)?,
            out_norm: LayerNorm::load(w, &format!("{p}.output.LayerNorm"), h, c.layer_norm_eps)?,
        })
    }

    /// `x`: (B·L, H) rows; `mask`: additive (B, 1, 1, L).
    fn forward(
        &self,
        x: &Array,
        mask: &Array,
        c: &Config,
        b: i32,
        l: i32,
    ) -> mlx_rs::error::Result<Array> {
        let heads = c.num_heads;
        let hd = c.hidden_size / heads;
        let split = |t: Array| t.reshape(&[b, l, heads, hd])?.transpose_axes(&[0, 2, 1, 3]);
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scale = 1.0 / (hd as f32).sqrt();
        let a = fast::scaled_dot_product_attention(&q, &k, &v, scale, mask, None)?;
        let a = a
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[b * l, c.hidden_size])?;
        let x = self
            .attn_norm
            .forward(&self.attn_out.forward(&a)?.add(x)?)?;
        let i = self.intermediate.forward(&x)?;
        let h = if c.gelu_approx {
            gelu_tanh(&i)?
        } else {
            gelu(&i)?
        };
        self.out_norm.forward(&self.output.forward(&h)?.add(&x)?)
    }
}

/// The BERT encoder.
pub struct Bert {
    pub config: Config,
    word: Array,
    position: Array,
    token_type: Array,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
}

impl Bert {
    /// Drop what inference does not use; strip task-head prefixes.
    pub fn sanitize(w: &mut Weights) {
        w.rename_prefix("bert.", "");
        w.drop_where(|k| {
            k == "embeddings.position_ids" || k.starts_with("pooler.") || k.starts_with("cls.")
        });
    }

    /// Build from weights, consuming every tensor (the caller checks for leftovers).
    pub fn load(config: Config, w: &mut Weights) -> Result<Self, EmbedError> {
        let c = &config;
        let h = c.hidden_size;
        let word = w.take("embeddings.word_embeddings.weight", &[c.vocab_size, h])?;
        let position = w.take(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, h],
        )?;
        let token_type = w.take(
            "embeddings.token_type_embeddings.weight",
            &[c.type_vocab_size, h],
        )?;
        let emb_norm = LayerNorm::load(w, "embeddings.LayerNorm", h, c.layer_norm_eps)?;
        let layers = (0..c.num_layers)
            .map(|i| Layer::load(w, &format!("encoder.layer.{i}"), c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            config,
            word,
            position,
            token_type,
            emb_norm,
            layers,
        })
    }

    /// Hidden states (B, L, H) for token ids / type ids (B, L) and key mask (B, L) of
    /// 1 (token) / 0 (padding).
    pub fn forward(
        &self,
        ids: &Array,
        type_ids: &Array,
        mask: &Array,
    ) -> mlx_rs::error::Result<Array> {
        let (b, l) = (ids.shape()[0], ids.shape()[1]);
        let h = self.config.hidden_size;
        let pos = Array::from_iter(0..l, &[l]);
        let x = self
            .word
            .take_axis(ids, 0)?
            .add(&self.position.take_axis(&pos, 0)?)?
            .add(&self.token_type.take_axis(type_ids, 0)?)?;
        let mut x = self.emb_norm.forward(&x)?.reshape(&[b * l, h])?;
        // additive key mask: 0 for tokens, -1e9 for padding (exp underflows to exactly 0)
        let additive = Array::from_f32(1.0)
            .subtract(mask)?
            .multiply(Array::from_f32(-1e9))?
            .reshape(&[b, 1, 1, l])?
            .as_dtype(x.dtype())?;
        for layer in &self.layers {
            x = layer.forward(&x, &additive, &self.config, b, l)?;
        }
        x.reshape(&[b, l, h])
    }

    /// dtype of the weights.
    pub fn dtype(&self) -> Dtype {
        self.word.dtype()
    }
}

impl Bert {
    /// Every weight array.
    fn arrays(&self) -> Vec<&Array> {
        let mut arrays: Vec<&Array> = vec![&self.word, &self.position, &self.token_type];
        arrays.extend([&self.emb_norm.weight, &self.emb_norm.bias]);
        for l in &self.layers {
            for lin in [
                &l.query,
                &l.key,
                &l.value,
                &l.attn_out,
                &l.intermediate,
                &l.output,
            ] {
                arrays.push(&lin.weight);
                arrays.extend(lin.bias.as_ref());
            }
            arrays.extend([
                &l.attn_norm.weight,
                &l.attn_norm.bias,
                &l.out_norm.weight,
                &l.out_norm.bias,
            ]);
        }
        arrays
    }

    /// Read (and convert) every weight now: load errors surface at load, and forward
    /// passes on other threads' streams find the weights ready (MLX streams belong to
    /// the thread that made them).
    pub fn materialize(&self) -> mlx_rs::error::Result<()> {
        mlx_rs::transforms::eval(self.arrays())
    }

    /// (parameter count, bytes) of the loaded weights.
    pub fn sizes(&self) -> (u64, u64) {
        self.arrays().iter().fold((0, 0), |(n, b), a| {
            (n + a.size() as u64, b + a.nbytes() as u64)
        })
    }
}
