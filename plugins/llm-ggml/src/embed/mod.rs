//! The ggml `embed` provider: BERT checkpoints (safetensors, as sentence-transformers ships
//! them) run by llama.cpp in embeddings mode.
//!
//! The checkpoint is converted once into a GGUF ([`convert`]) in the host's cache, named
//! by a hash of its files. Texts are tokenized with the model's own `tokenizer.json` and
//! checked, batched and pooled by the code the MLX provider uses ([`sentence`]), so both
//! providers agree on what a request means; llama.cpp computes the token vectors
//! (pooling off: the request picks its pooling), several texts per call as sequences of
//! one batch.

mod convert;

use crate::{backend, err, load_gguf, settings_for, take_llama_errors, GPU_BUILD};
use llama_cpp_2::{
    context::{params::LlamaContextParams, params::LlamaPoolingType, LlamaContext},
    llama_batch::LlamaBatch,
    model::LlamaModel,
    token::LlamaToken,
};
use plugin_api::{
    embed::{EmbedRequest, EmbedResponse},
    DeviceInfo, ErrorKind, EstimateRequest, MemoryEstimate, ModelInfo, ModelKind, ModelSpec,
    PluginError, Probe,
};
use plugin_sdk::LoadedModel;
use sentence::TextEncoder;
use std::{num::NonZeroU32, path::Path, sync::Mutex};

/// Most tokens per llama.cpp call (a longer text is a call of its own). Its encoder
/// attends over the whole batch (masked between texts), so attention work grows with the
/// square of this while the matrix products gain little past a few hundred rows: 128,
/// 256, 512 and 1024 tokens ran 256 short sentences at 141, 143–155, 143–146 and 141
/// sentences/s on a 2-core AVX2 EPYC, 2048 and 4096 at 113 and 101.
const BATCH_TOKENS: usize = 512;
/// Most texts per call (llama.cpp sequence ids).
const BATCH_ROWS: usize = 128;
/// Longest text a model may declare (`max_seq_length`, else `max_position_embeddings`):
/// llama.cpp reserves its compute buffers for a call of that many tokens at load.
const MAX_TEXT_TOKENS: usize = 8192;

/// llama.cpp's fixed overhead (library state, small buffers), as the `llm` estimate.
const BASE: u64 = 13_500_000;
/// llama.cpp's vocabulary tables per token, as the `llm` estimate.
const PER_VOCAB: u64 = 294;
/// The context's own buffers (outputs, graph), measured with all-MiniLM-L6-v2.
const CONTEXT_BYTES: u64 = 18_000_000;

/// Whether `spec` is a model this provider can embed with: a BERT checkpoint folder.
pub fn probe(spec: &ModelSpec, device: &DeviceInfo, backend_name: &str) -> Probe {
    let refuse = |reason: String| Probe {
        score: 0,
        backend: backend_name.into(),
        reason: reason.into(),
    };
    if spec.architecture.as_str() != "bert" {
        return refuse(format!(
            "embeddings: architecture `{}` not supported (bert)",
            spec.architecture
        ));
    }
    let dir = Path::new(spec.path.as_str());
    if !spec.path.is_empty() && !dir.join("model.safetensors").is_file() {
        return refuse("embeddings: reads a BERT checkpoint folder (model.safetensors)".into());
    }
    if let Err(e) = convert::float_type(spec) {
        return refuse(e.message.to_string());
    }
    if plugin_sdk::cache_dir(device).is_none() {
        return refuse(
            "embeddings: the host names no cache folder (DeviceInfo.options `cache_dir`) for \
             the converted GGUF"
                .into(),
        );
    }
    let (score, what) = if GPU_BUILD {
        (60, "llama.cpp with a GPU backend")
    } else {
        // Measured against MLX's CPU path (BENCHMARKS.md, `bench/embed.sh`).
        (60, "llama.cpp CPU kernels")
    };
    Probe {
        score,
        backend: backend_name.into(),
        reason: format!("embeddings: BERT converted to GGUF, {what}").into(),
    }
}

/// Memory for `req`: the weights as converted, and llama.cpp's buffers for the tokens of
/// one call (`batch` texts of `context` tokens, at most [`BATCH_TOKENS`]): hidden-state
/// sized tensors per token and, growing with the square of the call's tokens, the
/// attention scores of every head. Per-token constants fitted to measured peak resident
/// memory of all-MiniLM-L6-v2 at 8 to 512 tokens per call (tests/fit.rs checks them).
pub fn estimate(req: &EstimateRequest) -> Result<MemoryEstimate, PluginError> {
    let id = req.model.id.as_str();
    let f = model_facts::facts(Path::new(req.model.path.as_str()))
        .map_err(|e| err(ErrorKind::LOAD, id, e))?;
    let ty = convert::float_type(&req.model)?;
    let elt = match ty {
        gguf::writer::TensorType::F32 => 4,
        _ => 2,
    };
    let context = u64::from(req.context.max(1));
    let batch = u64::from(req.batch.max(1));
    let tokens = (context * batch).min(context.max(BATCH_TOKENS as u64));
    let activations = tokens * f.hidden * 120 + tokens * tokens * f.kv_heads.max(1) * 10;
    Ok(MemoryEstimate {
        weights_as: convert::type_name(ty).into(),
        dtype: Some(convert::type_name(ty).into()).into(),
        weights_bytes: f.parameters * elt,
        runtime_bytes: BASE + PER_VOCAB * f.vocab + CONTEXT_BYTES + activations,
        context: context as u32,
        batch: batch as u32,
        ..Default::default()
    })
}

/// A text-side error for model `id`, under the kind it carries.
fn sentence_err(id: &str, e: sentence::SentenceError) -> PluginError {
    err(e.kind(), id, e)
}

/// A loaded encoder.
pub struct GgmlEncoder {
    id: String,
    texts: TextEncoder,
    dim: usize,
    dtype: &'static str,
    /// Most tokens per llama.cpp call: [`BATCH_TOKENS`], or the longest text if longer
    /// (the context's batch size, which its encoder needs to hold a whole call).
    call_tokens: usize,
    /// Declared before `model`, which it borrows: dropped first. One request at a time.
    ctx: Mutex<LlamaContext<'static>>,
    /// Boxed so its address is stable for the context's borrow.
    model: Box<LlamaModel>,
}

impl GgmlEncoder {
    /// Convert (once) and load the BERT checkpoint `spec` names.
    pub fn open(spec: &ModelSpec, device: &DeviceInfo) -> Result<Self, PluginError> {
        let id = spec.id.to_string();
        let dir = Path::new(spec.path.as_str());
        let cache = plugin_sdk::cache_dir(device).ok_or_else(|| {
            err(
                ErrorKind::UNSUPPORTED,
                &id,
                "the host names no cache folder for the converted GGUF",
            )
        })?;
        for name in convert::INPUTS {
            let file = dir.join(name);
            if !file.is_file() {
                let msg = format!("{}: missing file", file.display());
                return Err(err(ErrorKind::NOT_FOUND, &id, msg));
            }
        }
        let settings = settings_for(spec, device)?;
        let ty = convert::float_type(spec)?;
        // The text files first: a tokenizer that does not fit the tables is refused before
        // anything is converted.
        let config = gguf::bert::BertConfig::read(dir).map_err(|e| err(ErrorKind::LOAD, &id, e))?;
        let texts = TextEncoder::load(dir, config.vocab, config.type_vocab, config.max_positions)
            .map_err(|e| sentence_err(&id, e))?;
        if texts.max_len > MAX_TEXT_TOKENS {
            return Err(err(
                ErrorKind::UNSUPPORTED,
                &id,
                format!(
                    "{}: texts of up to {} tokens (max_position_embeddings, or max_seq_length \
                     in sentence_bert_config.json) are more than the {MAX_TEXT_TOKENS} this \
                     provider serves",
                    dir.join("config.json").display(),
                    texts.max_len
                ),
            ));
        }
        let file = convert::converted(dir, &cache, ty).map_err(|e| err(ErrorKind::LOAD, &id, e))?;
        let model = load_gguf(&id, &file)?;
        let model = Box::new(model);
        let call_tokens = BATCH_TOKENS.max(texts.max_len);
        let ctx_params = settings
            .apply(LlamaContextParams::default())
            .with_embeddings(true)
            .with_pooling_type(LlamaPoolingType::None)
            .with_n_ctx(NonZeroU32::new(call_tokens as u32))
            .with_n_batch(call_tokens as u32)
            .with_n_ubatch(call_tokens as u32)
            .with_n_seq_max(BATCH_ROWS as u32)
            // No KV cache (an encoder): unified, llama.cpp does not size one per sequence.
            .with_kv_unified(true);
        let m: &LlamaModel = &model;
        // SAFETY: the context borrows the boxed model, which never moves and outlives it:
        // `ctx` is declared before `model` in `GgmlEncoder`, so it is dropped first.
        let m: &'static LlamaModel = unsafe { &*(m as *const LlamaModel) };
        take_llama_errors();
        let ctx = m.new_context(backend()?, ctx_params).map_err(|e| {
            err(
                ErrorKind::RESOURCE_EXHAUSTED,
                &id,
                format!("llama.cpp context: {e} ({})", take_llama_errors()),
            )
        })?;
        Ok(Self {
            id,
            dim: config.hidden,
            dtype: convert::type_name(ty),
            call_tokens,
            texts,
            ctx: Mutex::new(ctx),
            model,
        })
    }

    /// Embed `req`'s texts.
    fn run(&self, req: &EmbedRequest) -> Result<EmbedResponse, PluginError> {
        let bad = |e| sentence_err(&self.id, e);
        let (pooling, normalize) = self.texts.settings(req).map_err(bad)?;
        let encodings = self.texts.encode(req).map_err(bad)?;
        // llama.cpp's BERT graph adds the first token-type row to every token: a text
        // whose tokenizer marks a second segment would be embedded as if it had none.
        if let Some(i) = encodings
            .iter()
            .position(|e| e.get_type_ids().iter().any(|&t| t != 0))
        {
            return Err(err(
                ErrorKind::INVALID_REQUEST,
                &self.id,
                format!(
                    "text #{i} encodes to token type ids other than 0, which this provider \
                     does not run (llama.cpp's BERT uses type 0 only); the MLX provider does"
                ),
            ));
        }
        let lens: Vec<usize> = encodings.iter().map(|e| e.len()).collect();
        // Every text is within max_len ≤ the context's batch size (checked at encode).
        let (order, ranges) = sentence::batches(&lens, BATCH_ROWS, self.call_tokens);
        let dim = self.dim;
        let mut data = vec![0f32; encodings.len() * dim];
        let mut ctx = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
        for range in ranges {
            let rows = &order[range];
            let n: usize = rows.iter().map(|&i| lens[i]).sum();
            if n == 0 {
                continue; // texts without tokens (no special tokens added): zero vectors
            }
            // One sequence id per token (each token belongs to its own text).
            let mut batch = LlamaBatch::new(n, 1);
            for (seq, &i) in rows.iter().enumerate() {
                for (pos, &id) in encodings[i].get_ids().iter().enumerate() {
                    batch
                        .add(LlamaToken(id as i32), pos as i32, &[seq as i32], true)
                        .map_err(|e| err(ErrorKind::INTERNAL, &self.id, e))?;
                }
            }
            take_llama_errors();
            ctx.decode(&mut batch).map_err(|e| {
                err(
                    ErrorKind::INTERNAL,
                    &self.id,
                    format!("llama.cpp encode: {e} ({})", take_llama_errors()),
                )
            })?;
            let mut at = 0usize;
            let mut tokens = Vec::new();
            for &i in rows {
                tokens.clear();
                for t in at..at + lens[i] {
                    let v = ctx
                        .embeddings_ith(t as i32)
                        .map_err(|e| err(ErrorKind::INTERNAL, &self.id, e))?;
                    tokens.extend_from_slice(&v[..dim]);
                }
                at += lens[i];
                let mut v = sentence::pool::pool(&tokens, dim, pooling);
                if normalize {
                    sentence::pool::l2_normalize(&mut v);
                }
                data[i * dim..(i + 1) * dim].copy_from_slice(&v);
            }
        }
        Ok(EmbedResponse {
            dim: dim as u32,
            data: data.into(),
            prompt_tokens: lens.iter().map(|&n| n as u64).sum(),
        })
    }
}

impl LoadedModel for GgmlEncoder {
    fn info(&self) -> ModelInfo {
        let m = &self.model;
        ModelInfo {
            id: self.id.as_str().into(),
            kind: ModelKind::EMBED,
            architecture: "bert".into(),
            backend: if GPU_BUILD { "ggml-gpu" } else { "ggml-cpu" }.into(),
            dtype: self.dtype.into(),
            dim: self.dim as u32,
            max_tokens: self.texts.max_len as u32,
            parameters: m.n_params(),
            weight_bytes: m.size(),
        }
    }

    fn embed(&self, req: &EmbedRequest) -> Result<EmbedResponse, PluginError> {
        self.run(req)
    }
}
