//! Teacher forcing: the logits the provider computes at each step of a given token
//! sequence, with the same contexts and settings generation uses — for `Model::score`
//! (perplexity) and for tests that compare this provider's numerics with a reference.

use crate::{err, GgmlModel, PREFILL_CHUNK};
use llama_cpp_2::{llama_batch::LlamaBatch, token::LlamaToken};
use plugin_api::{
    score::{ScoreRequest, ScoreResponse, TokenizeRequest, TokenizeResponse},
    text::TextInput,
    ErrorKind, ModelSpec, PluginError,
};

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
        if prompt.is_empty() || continuation.is_empty() {
            return Err(err(
                ErrorKind::INVALID_REQUEST,
                &self.0.id,
                "prompt and continuation must not be empty",
            ));
        }
        let tokens: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
        let mut rows = Vec::with_capacity(continuation.len());
        self.0.teacher(&tokens, prompt.len() - 1, &mut |_, row| {
            rows.push(row.to_vec())
        })?;
        Ok(rows)
    }
}

impl GgmlModel {
    /// `req.text` as generation tokenizes a raw prompt.
    pub(crate) fn tokenize_text(&self, req: &TokenizeRequest) -> TokenizeResponse {
        let vocab = self.model.vocab();
        let bos = self.add_bos && req.add_special;
        let tokens: Vec<u32> = vocab
            .tokenize(req.text.as_bytes(), bos, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect();
        TokenizeResponse {
            tokens: tokens.into(),
            bos: self.add_bos.then(|| vocab.bos().0 as u32).into(),
        }
    }

    /// Log-probabilities of `req.tokens[first + 1..]`.
    pub(crate) fn score_tokens(&self, req: &ScoreRequest) -> Result<ScoreResponse, PluginError> {
        let first = req.first as usize;
        if req.tokens.len() < 2 || first + 1 >= req.tokens.len() {
            return Err(err(
                ErrorKind::INVALID_REQUEST,
                &self.id,
                format!(
                    "scoring needs a token after position `first` ({first}) of {} tokens",
                    req.tokens.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(req.tokens.len() - first - 1);
        self.teacher(&req.tokens, first, &mut |pos, row| {
            let target = req.tokens[pos + 1] as usize;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|x| f64::from(x - max).exp()).sum();
            out.push((f64::from(row[target] - max) - sum.ln()) as f32);
        })?;
        Ok(ScoreResponse {
            logprobs: out.into(),
        })
    }

    /// Run `tokens[..n-1]` through the model in one sequence; `f(pos, logits)` for each
    /// position from `first` on (its logits predict `tokens[pos + 1]`). The context's prompt
    /// cache is dropped first: sequence 0 is overwritten.
    fn teacher(
        &self,
        tokens: &[u32],
        first: usize,
        f: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), PluginError> {
        let bad = |msg: String| err(ErrorKind::INVALID_REQUEST, &self.id, msg);
        let n_vocab = self.model.n_vocab() as u32;
        let input: Vec<LlamaToken> = tokens[..tokens.len() - 1]
            .iter()
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
        if let Some(t) = tokens.last().filter(|t| **t >= n_vocab) {
            return Err(bad(format!(
                "token id {t} is outside the vocabulary ({n_vocab})"
            )));
        }
        if input.len() >= self.model.n_ctx_train() as usize {
            return Err(bad(format!(
                "{} tokens exceed the model's context ({})",
                input.len(),
                self.model.n_ctx_train()
            )));
        }
        let mut guard = self.ctx.lock().unwrap_or_else(|p| p.into_inner());
        let c = self.context(&mut guard, input.len(), 1, usize::MAX)?;
        c.cache.clear();
        c.ctx.clear_kv_cache();
        let ctx = &mut c.ctx;
        let mut batch = LlamaBatch::new(PREFILL_CHUNK, 1);
        for (k, chunk) in input.chunks(PREFILL_CHUNK).enumerate() {
            batch.clear();
            let base = k * PREFILL_CHUNK;
            for (j, t) in chunk.iter().enumerate() {
                let pos = base + j;
                batch
                    .add(*t, pos as i32, &[0], pos >= first)
                    .map_err(|e| err(ErrorKind::INTERNAL, &self.id, e))?;
            }
            ctx.decode(&mut batch)
                .map_err(|e| err(ErrorKind::INTERNAL, &self.id, format!("decode: {e}")))?;
            for j in 0..chunk.len() {
                if base + j >= first {
                    f(base + j, ctx.get_logits_ith(j as i32));
                }
            }
        }
        ctx.clear_kv_cache();
        Ok(())
    }
}
