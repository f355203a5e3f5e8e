//! Tokenizing and teacher-forced scoring: the log-probability of each token of a sequence
//! given the ones before it, from one pass over the sequence (the generation loop's
//! prefill, with every position's logits kept).

use crate::{
    error::LlmError,
    generate::PREFILL_CHUNK,
    loader::Loaded,
    models::{KvCache, Positions},
};
use mlx_rs::{ops::indexing::IndexOp, Array, Dtype};
use plugin_api::score::{ScoreRequest, ScoreResponse, TokenizeRequest, TokenizeResponse};

/// `req.text` as generation tokenizes a raw prompt (BOS when `add_special` and the
/// model takes one).
pub fn tokenize(m: &Loaded, req: &TokenizeRequest) -> Result<TokenizeResponse, LlmError> {
    let t = &m.tokenizer;
    let tokens = if req.add_special {
        t.encode_raw(&req.text)?
    } else {
        t.encode_rendered(&req.text)?
    };
    Ok(TokenizeResponse {
        tokens: tokens.into(),
        bos: t.bos_id.filter(|_| t.add_bos).into(),
    })
}

/// The log-probabilities of `req.tokens[first + 1..]`.
pub fn score(m: &Loaded, req: &ScoreRequest) -> Result<ScoreResponse, LlmError> {
    let model = &m.model;
    let n = req.tokens.len();
    let first = req.first as usize;
    if n < 2 || first + 1 >= n {
        return Err(LlmError::Request(format!(
            "scoring needs a token after position `first` ({first}) of {n} tokens"
        )));
    }
    if n > model.max_context() {
        return Err(LlmError::Request(format!(
            "{n} tokens exceed the model's context ({})",
            model.max_context()
        )));
    }
    let vocab = model.vocab_size();
    if let Some(t) = req.tokens.iter().find(|t| **t as usize >= vocab) {
        return Err(LlmError::Request(format!(
            "token id {t} is outside the vocabulary ({vocab})"
        )));
    }
    let ids: Vec<i32> = req.tokens.iter().map(|t| *t as i32).collect();
    let mut cache: Vec<KvCache> = (0..model.layers()).map(|_| KvCache::default()).collect();
    let mut out = Vec::with_capacity(n - first - 1);
    let mut q0 = 0;
    // Positions 0..n-1 predict tokens 1..n; position n-1's prediction has no target.
    while q0 < n - 1 {
        let l = PREFILL_CHUNK.min(n - 1 - q0);
        let chunk = Array::from_slice(&ids[q0..q0 + l], &[1, l as i32]);
        let wanted = q0 + l > first;
        let logits = model.forward(&chunk, &mut cache, &Positions::Shared(q0 as i32), wanted)?;
        let mut to_eval: Vec<&Array> = cache.iter().flat_map(KvCache::state).collect();
        if wanted {
            let logits = logits.index((0, .., ..)).as_dtype(Dtype::Float32)?;
            let logp = logits.subtract(&logits.logsumexp_axis(-1, true)?)?;
            let targets = Array::from_slice(&ids[q0 + 1..q0 + l + 1], &[l as i32, 1]);
            let picked = logp.take_along_axis(&targets, -1)?.reshape(&[l as i32])?;
            picked.eval()?;
            let row: &[f32] = picked.as_slice();
            let skip = first.saturating_sub(q0);
            out.extend_from_slice(&row[skip..]);
        } else {
            to_eval.push(&logits);
            mlx_rs::transforms::eval(to_eval)?;
        }
        q0 += l;
    }
    Ok(ScoreResponse {
        logprobs: out.into(),
    })
}
