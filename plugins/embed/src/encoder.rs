//! A loaded embedding model: tokenizer + architecture + sentence-transformers head.

use crate::{
    error::EmbedError,
    models::{self, bert, Weights},
    st::SentenceConfig,
};
use mlx_rs::{Array, Dtype};
use plugin_api::embed::{EmbedRequest, EmbedResponse, Pooling};
use std::{path::Path, sync::Mutex};
use tokenizers::{Tokenizer, TruncationParams};

/// Most sequences per forward pass, and most padded tokens per pass (bounds activation
/// memory: 16k tokens × 384 × 4 B ≈ 25 MB per hidden state for MiniLM).
const MAX_BATCH: usize = 64;
const MAX_BATCH_TOKENS: usize = 16_384;

/// A loaded embedding model.
pub struct Encoder {
    model: Mutex<bert::Bert>,
    tokenizer: Tokenizer,
    truncating: Tokenizer,
    pub sentence: SentenceConfig,
    pub max_len: usize,
    pub dim: usize,
    pub dtype: Dtype,
    pub parameters: u64,
    pub weight_bytes: u64,
}

// SAFETY: MLX arrays are reference-counted handles; every use of the model's arrays
// happens under `model`'s mutex, so no two threads touch them at once.
unsafe impl Sync for Encoder {}

/// Read `config.json`'s `model_type`.
pub fn model_type(dir: &Path) -> Result<String, EmbedError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| EmbedError::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| EmbedError::Config {
        file: path.clone(),
        msg: e.to_string(),
    })?;
    v.get("model_type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .ok_or(EmbedError::Config {
            file: path,
            msg: "missing `model_type`".into(),
        })
}

impl Encoder {
    /// Load the model in `dir` with weights as `dtype`.
    pub fn load(dir: &Path, dtype: Dtype) -> Result<Self, EmbedError> {
        let arch = model_type(dir)?;
        if !models::supports(&arch) {
            return Err(EmbedError::Architecture(
                arch,
                models::ARCHITECTURES.join(", "),
            ));
        }
        let config = bert::Config::from_file(&dir.join("config.json"))?;
        let sentence = SentenceConfig::load(dir)?;
        let mut weights = Weights::load(dir, dtype)?;
        bert::Bert::sanitize(&mut weights);
        let model = bert::Bert::load(config.clone(), &mut weights)?;
        weights.finish()?;

        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(EmbedError::MissingFile(tok_path));
        }
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| EmbedError::Tokenizer {
            file: tok_path.clone(),
            msg: e.to_string(),
        })?;
        // Padding and truncation are ours (batching, model limits), not tokenizer.json's.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| EmbedError::Tokenizer {
                file: tok_path.clone(),
                msg: e.to_string(),
            })?;
        let max_len = sentence
            .max_seq_length
            .unwrap_or(usize::MAX)
            .min(config.max_position_embeddings as usize);
        let mut truncating = tokenizer.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| EmbedError::Tokenizer {
                file: tok_path,
                msg: e.to_string(),
            })?;

        let (parameters, weight_bytes) = model.sizes();
        Ok(Self {
            dim: config.hidden_size as usize,
            dtype: model.dtype(),
            model: Mutex::new(model),
            tokenizer,
            truncating,
            sentence,
            max_len,
            parameters,
            weight_bytes,
        })
    }

    /// Embed a batch of texts.
    pub fn embed(&self, req: &EmbedRequest) -> Result<EmbedResponse, EmbedError> {
        if req.texts.is_empty() {
            return Err(EmbedError::Request("`texts` is empty".into()));
        }
        let pooling = match req.pooling {
            Pooling::MODEL_DEFAULT => self.sentence.pooling,
            p @ (Pooling::MEAN | Pooling::CLS | Pooling::LAST) => p,
            Pooling(n) => return Err(EmbedError::Request(format!("unknown pooling code {n}"))),
        };
        let normalize = req
            .normalize
            .into_option()
            .unwrap_or(self.sentence.normalize);
        let tok = if req.truncate {
            &self.truncating
        } else {
            &self.tokenizer
        };
        let texts: Vec<&str> = req.texts.iter().map(|t| t.as_str()).collect();
        let encodings = tok
            .encode_batch(texts, true)
            .map_err(|e| EmbedError::Request(format!("tokenizer: {e}")))?;
        if let Some((i, e)) = encodings
            .iter()
            .enumerate()
            .find(|(_, e)| e.len() > self.max_len)
        {
            return Err(EmbedError::Request(format!(
                "text #{i} has {} tokens, more than the model's maximum of {} (enable truncation)",
                e.len(),
                self.max_len
            )));
        }

        // Sort by length so each forward pass pads little; results go back in order.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].len());
        let mut data = vec![0f32; encodings.len() * self.dim];
        let model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let mut start = 0;
        while start < order.len() {
            let mut end = start;
            while end < order.len() && end - start < MAX_BATCH {
                let longest = encodings[order[end]].len().max(1);
                if end > start && (end - start + 1) * longest > MAX_BATCH_TOKENS {
                    break;
                }
                end += 1;
            }
            let chunk = &order[start..end];
            let l = chunk
                .iter()
                .map(|&i| encodings[i].len())
                .max()
                .unwrap_or(1)
                .max(1);
            let b = chunk.len();
            let mut ids = vec![0i32; b * l];
            let mut types = vec![0i32; b * l];
            let mut mask = vec![0f32; b * l];
            let mut lens = Vec::with_capacity(b);
            for (row, &i) in chunk.iter().enumerate() {
                let e = &encodings[i];
                for (j, (&id, &ty)) in e.get_ids().iter().zip(e.get_type_ids()).enumerate() {
                    ids[row * l + j] = id as i32;
                    types[row * l + j] = ty as i32;
                    mask[row * l + j] = 1.0;
                }
                lens.push(e.len());
            }
            let shape = [b as i32, l as i32];
            let ids = Array::from_slice(&ids, &shape);
            let types = Array::from_slice(&types, &shape);
            let mask = Array::from_slice(&mask, &shape);
            let hidden = model.forward(&ids, &types, &mask)?;
            let pooled = pool(&hidden, &mask, &lens, pooling)?;
            let pooled = if normalize {
                l2_normalize(&pooled)?
            } else {
                pooled
            };
            let pooled = pooled.as_dtype(Dtype::Float32)?;
            pooled.eval()?;
            let values: &[f32] = pooled.as_slice();
            for (row, &i) in chunk.iter().enumerate() {
                data[i * self.dim..(i + 1) * self.dim]
                    .copy_from_slice(&values[row * self.dim..(row + 1) * self.dim]);
            }
            start = end;
        }
        drop(model);
        let prompt_tokens = encodings.iter().map(|e| e.len() as u64).sum();
        Ok(EmbedResponse {
            dim: self.dim as u32,
            data: data.into(),
            prompt_tokens,
        })
    }
}

/// (B, L, H) hidden states → (B, H).
fn pool(
    hidden: &Array,
    mask: &Array,
    lens: &[usize],
    pooling: Pooling,
) -> mlx_rs::error::Result<Array> {
    let (b, l, h) = (hidden.shape()[0], hidden.shape()[1], hidden.shape()[2]);
    match pooling {
        Pooling::CLS => hidden.take_axis(Array::from_int(0), 1),
        Pooling::LAST => {
            let rows: Vec<i32> = lens
                .iter()
                .enumerate()
                .map(|(r, &n)| (r * l as usize + n.max(1) - 1) as i32)
                .collect();
            hidden
                .reshape(&[b * l, h])?
                .take_axis(Array::from_slice(&rows, &[b]), 0)
        }
        _ => {
            let m = mask.as_dtype(hidden.dtype())?.expand_dims(-1)?;
            let sum = hidden.multiply(&m)?.sum_axis(1, None)?;
            let count = mlx_rs::ops::maximum(&m.sum_axis(1, None)?, Array::from_f32(1e-9))?;
            sum.divide(&count)
        }
    }
}

/// Divide each row by its L2 norm (at least 1e-12), as torch's `F.normalize`.
fn l2_normalize(x: &Array) -> mlx_rs::error::Result<Array> {
    let norm = x.square()?.sum_axis(-1, true)?.sqrt()?;
    x.divide(&mlx_rs::ops::maximum(&norm, Array::from_f32(1e-12))?)
}
