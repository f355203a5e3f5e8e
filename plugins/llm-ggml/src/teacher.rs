//! Teacher forcing: the logits the provider computes at each step of a given continuation,
//! with the same contexts and settings generation uses. For tests and tools that compare
//! this provider's numerics with a reference independently of what it would sample.

use crate::{err, GgmlModel, PREFILL_CHUNK};
use llama_cpp_2::{llama_batch::LlamaBatch, token::LlamaToken};
use plugin_api::{text::TextInput, ErrorKind, ModelSpec, PluginError};

/// A model loaded for scoring.
pub struct Scorer(GgmlModel);

impl Scorer {
    /// Load the GGUF `spec` names, with its registry options applied.
    pub fn open(spec: &ModelSpec) -> Result<Self, PluginError> {
        Ok(Scorer(GgmlModel::open(spec, &Default::default())?))
    }

    /// The prompt ids a generation request with `input` starts from (chat template,
    /// BOS), to score what the provider would be asked.
    pub fn prompt_ids(&self, input: &TextInput) -> Result<Vec<u32>, PluginError> {
        let m = &self.0;
        Ok(m.prompt_tokens(&m.model, input, 0)?
            .into_iter()
            .map(|t| t.0 as u32)
            .collect())
    }

    /// Row `i` holds the full-vocabulary logits predicting `continuation[i]` after `prompt`
    /// and `continuation[..i]`.
    pub fn logits(
        &self,
        prompt: &[u32],
        continuation: &[u32],
    ) -> Result<Vec<Vec<f32>>, PluginError> {
        let m = &self.0;
        let bad = |msg: String| err(ErrorKind::INVALID_REQUEST, &m.id, msg);
        if prompt.is_empty() || continuation.is_empty() {
            return Err(bad("prompt and continuation must not be empty".into()));
        }
        let n_vocab = m.model.n_vocab() as u32;
        let tokens: Vec<LlamaToken> = prompt
            .iter()
            .chain(&continuation[..continuation.len() - 1])
            .map(|&t| {
                (t < n_vocab)
                    .then_some(LlamaToken(t as i32))
                    .ok_or_else(|| {
                        bad(format!(
                            "token id {t} is outside the vocabulary ({n_vocab})"
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        if tokens.len() >= m.model.n_ctx_train() as usize {
            return Err(bad(format!(
                "{} tokens exceed the model's context ({})",
                tokens.len(),
                m.model.n_ctx_train()
            )));
        }
        let first = prompt.len() - 1;
        let mut guard = m.ctx.lock().unwrap_or_else(|p| p.into_inner());
        let ctx = &mut m.context(&mut guard, tokens.len(), 1, usize::MAX)?.ctx;
        let mut batch = LlamaBatch::new(PREFILL_CHUNK, 1);
        let mut rows = Vec::with_capacity(continuation.len());
        for (c, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            batch.clear();
            let base = c * PREFILL_CHUNK;
            for (j, t) in chunk.iter().enumerate() {
                let pos = base + j;
                batch
                    .add(*t, pos as i32, &[0], pos >= first)
                    .map_err(|e| err(ErrorKind::INTERNAL, &m.id, e))?;
            }
            ctx.decode(&mut batch)
                .map_err(|e| err(ErrorKind::INTERNAL, &m.id, format!("decode: {e}")))?;
            for j in 0..chunk.len() {
                if base + j >= first {
                    rows.push(ctx.get_logits_ith(j as i32).to_vec());
                }
            }
        }
        Ok(rows)
    }
}
