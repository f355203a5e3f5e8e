//! A loaded embedding model: tokenizer + architecture + sentence-transformers head.

use crate::{
    error::EmbedError,
    models::{self, bert, Weights},
    pool::Pool,
};
use mlx_rs::{Array, Dtype};
use plugin_api::embed::{EmbedRequest, EmbedResponse, Pooling};
use sentence::TextEncoder;
use std::{
    path::Path,
    sync::{Arc, Mutex},
};

/// Most sequences per forward pass, and most padded tokens per pass (bounds activation
/// memory: 16k tokens × 384 × 4 B ≈ 25 MB per hidden state for MiniLM).
const MAX_BATCH: usize = 64;
const MAX_BATCH_TOKENS: usize = 16_384;
/// Padded tokens below which a request's texts are not split further for the workers.
const MIN_SPLIT_TOKENS: usize = 512;
/// Most batches in flight at once on the CPU (one MLX stream and thread each).
const MAX_WORKERS: usize = 8;

/// A loaded embedding model.
pub struct Encoder {
    model: Arc<SharedModel>,
    /// One request at a time.
    busy: Mutex<()>,
    /// Workers for requests of several batches (MLX's CPU backend, several cores).
    pool: Option<Pool>,
    /// The tokenizer and sentence-transformers settings.
    pub texts: TextEncoder,
    pub dim: usize,
    pub dtype: Dtype,
    pub parameters: u64,
    pub weight_bytes: u64,
}

/// The model, shared with the pool's workers.
struct SharedModel(bert::Bert);

// SAFETY: after load (`Bert::materialize`) the weights are evaluated and never written
// again; forward passes only read them, MLX reference-counts arrays atomically, and each
// thread builds and evaluates its own graph on its own stream. `Encoder::busy` keeps
// requests one at a time, so the workers are the only concurrent users.
unsafe impl Sync for SharedModel {}
// SAFETY: as above; the tokenizers and config are plain Rust data.
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
    /// Load the model in `dir` with weights as `dtype`, to run up to `cpu_cores` batches
    /// at once on MLX's CPU backend, within `memory_budget` bytes (0 = none).
    pub fn load(
        dir: &Path,
        dtype: Dtype,
        cpu_cores: usize,
        memory_budget: u64,
    ) -> Result<Self, EmbedError> {
        let arch = model_type(dir)?;
        if !models::supports(&arch) {
            return Err(EmbedError::Architecture {
                plugin: "embed",
                name: arch,
                supported: models::ARCHITECTURES.join(", "),
            });
        }
        let config = bert::Config::from_file(&dir.join("config.json"))?;
        let texts = TextEncoder::load(
            dir,
            config.vocab_size as usize,
            config.type_vocab_size as usize,
            config.max_position_embeddings as usize,
        )?;
        let mut weights = Weights::load(dir, dtype)?;
        bert::Bert::sanitize(&mut weights);
        let model = bert::Bert::load(config.clone(), &mut weights)?;
        weights.finish()?;
        model.materialize()?;
        mlx_common::activation::prepare();

        let (parameters, weight_bytes) = model.sizes();
        let workers = if mlx_common::mlx_backend() == "mlx-cpu" {
            cpu_cores.clamp(1, MAX_WORKERS)
        } else {
            1
        };
        // Freed activations kept for reuse: one layer's worth of the largest batch, for
        // each batch in flight.
        let (h, i) = (config.hidden_size as u64, config.intermediate_size as u64);
        let per_batch =
            MAX_BATCH_TOKENS as u64 * (6 * h + 2 * i) * (weight_bytes / parameters.max(1));
        mlx_common::reserve_buffer_cache(per_batch * workers as u64, memory_budget);
        let pool = if workers > 1 {
            Some(Pool::new(workers, "mlx-embed").map_err(|e| EmbedError::io(dir, e))?)
        } else {
            None
        };
        Ok(Self {
            dim: config.hidden_size as usize,
            dtype: model.dtype(),
            model: Arc::new(SharedModel(model)),
            busy: Mutex::new(()),
            pool,
            texts,
            parameters,
            weight_bytes,
        })
    }

    /// Embed a batch of texts.
    pub fn embed(&self, req: &EmbedRequest) -> Result<EmbedResponse, EmbedError> {
        // The host checked the texts (`engine::request::Embed`).
        let (pooling, normalize) = self.texts.settings(req)?;
        let encodings = self.texts.encode(req)?;
        // With workers, batches small enough that each worker gets about two (so the
        // long texts, sorted last, do not all land on one), but not tiny.
        let workers = self.pool.as_ref().map_or(1, Pool::size);
        let lens: Vec<usize> = encodings.iter().map(|e| e.len()).collect();
        let total: usize = lens.iter().sum();
        let batch_tokens = if workers > 1 {
            total
                .div_ceil(2 * workers)
                .clamp(MIN_SPLIT_TOKENS, MAX_BATCH_TOKENS)
        } else {
            MAX_BATCH_TOKENS
        };
        let (order, ranges) = sentence::batches(&lens, MAX_BATCH, batch_tokens);
        let chunks: Vec<&[usize]> = ranges.into_iter().map(|r| &order[r]).collect();
        let batches: Vec<Batch> = chunks
            .iter()
            .map(|c| Batch::pad(c.iter().map(|&i| &encodings[i])))
            .collect();
        let _busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let outputs: Vec<Vec<f32>> = match &self.pool {
            Some(pool) if batches.len() > 1 => {
                // BLAS single-threaded meanwhile: the workers already keep every core busy.
                let _blas = mlx_common::blas::SingleThreadedBlas::new();
                let tasks = batches
                    .into_iter()
                    .map(|batch| {
                        let model = Arc::clone(&self.model);
                        Box::new(move || batch.embed(&model.0, pooling, normalize))
                            as Box<dyn FnOnce() -> _ + Send>
                    })
                    .collect();
                pool.run(tasks)
                    .into_iter()
                    .map(|r| r.map_err(EmbedError::Worker)?)
                    .collect::<Result<_, _>>()?
            }
            _ => batches
                .iter()
                .map(|b| b.embed(&self.model.0, pooling, normalize))
                .collect::<Result<_, _>>()?,
        };
        let mut data = vec![0f32; encodings.len() * self.dim];
        for (chunk, values) in chunks.iter().zip(&outputs) {
            for (row, &i) in chunk.iter().enumerate() {
                data[i * self.dim..(i + 1) * self.dim]
                    .copy_from_slice(&values[row * self.dim..(row + 1) * self.dim]);
            }
        }
        let prompt_tokens = encodings.iter().map(|e| e.len() as u64).sum();
        Ok(EmbedResponse {
            dim: self.dim as u32,
            data: data.into(),
            prompt_tokens,
        })
    }
}

/// One padded batch of rows of similar length, ready for the model.
struct Batch {
    ids: Vec<i32>,
    types: Vec<i32>,
    mask: Vec<f32>,
    lens: Vec<usize>,
    shape: [i32; 2],
}

impl Batch {
    fn pad<'a>(rows: impl ExactSizeIterator<Item = &'a tokenizers::Encoding> + Clone) -> Self {
        let l = rows.clone().map(|e| e.len()).max().unwrap_or(1).max(1);
        let b = rows.len();
        let mut batch = Batch {
            ids: vec![0; b * l],
            types: vec![0; b * l],
            mask: vec![0.0; b * l],
            lens: Vec::with_capacity(b),
            shape: [b as i32, l as i32],
        };
        for (row, e) in rows.enumerate() {
            for (j, (&id, &ty)) in e.get_ids().iter().zip(e.get_type_ids()).enumerate() {
                batch.ids[row * l + j] = id as i32;
                batch.types[row * l + j] = ty as i32;
                batch.mask[row * l + j] = 1.0;
            }
            batch.lens.push(e.len());
        }
        batch
    }

    /// Forward, pool, normalize: (rows × dim) values.
    fn embed(
        &self,
        model: &bert::Bert,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<Vec<f32>, EmbedError> {
        let ids = Array::from_slice(&self.ids, &self.shape);
        let types = Array::from_slice(&self.types, &self.shape);
        let mask = Array::from_slice(&self.mask, &self.shape);
        let hidden = model.forward(&ids, &types, &mask)?;
        let pooled = pool(&hidden, &mask, &self.lens, pooling)?;
        let pooled = if normalize {
            l2_normalize(&pooled)?
        } else {
            pooled
        };
        let pooled = pooled.as_dtype(Dtype::Float32)?;
        pooled.eval()?;
        Ok(pooled.as_slice::<f32>().to_vec())
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
