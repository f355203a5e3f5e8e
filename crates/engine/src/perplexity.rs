//! Perplexity as llama.cpp's `llama-perplexity` computes it, on any `llm` plugin that
//! implements `Model::tokenize` and `Model::score` (plugin-api 2.2): the text tokenized
//! once (with BOS), cut into chunks of `ctx` tokens, each chunk read from a fresh context
//! with its first token replaced by BOS (when the model takes one), and only the second
//! half of each chunk scored (every scored token sees at least `ctx/2` tokens before it).
//! The same method on both providers and on llama.cpp's own tool gives comparable figures.

use crate::{Engine, HostError};
use plugin_api::{
    score::{ScoreRequest, TokenizeRequest},
    Features, ModelKind, PluginError,
};

/// What a perplexity run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Perplexity {
    /// exp(mean negative log-likelihood) over the scored tokens.
    pub ppl: f64,
    /// Tokens of the whole text (BOS included).
    pub text_tokens: usize,
    /// Chunks of `ctx` tokens read.
    pub chunks: usize,
    /// Context (chunk) length.
    pub ctx: usize,
    /// Tokens whose prediction was scored.
    pub scored: usize,
    /// The running perplexity after each chunk (what llama.cpp prints as `[i]value`).
    pub running: Vec<f64>,
    /// The plugin that served it.
    pub plugin: String,
}

impl Engine {
    /// The perplexity of model `id` (on `backend` when given) on `text`, in chunks of
    /// `ctx` tokens, at most `max_chunks` of them (all when `None`).
    pub fn perplexity(
        &self,
        id: &str,
        backend: Option<&str>,
        text: &str,
        ctx: usize,
        max_chunks: Option<usize>,
    ) -> Result<Perplexity, HostError> {
        let m = self.load_on(id, ModelKind::LLM, Features::NONE, backend)?;
        let fail = |error: PluginError| HostError::Plugin {
            id: id.to_owned(),
            plugin: m.plugin.clone(),
            error,
        };
        let tok = m
            .model
            .tokenize(&TokenizeRequest {
                text: text.into(),
                add_special: true,
                options: "".into(),
            })
            .into_result()
            .map_err(fail)?;
        let tokens = tok.tokens.to_vec();
        let bos = tok.bos.into_option();
        if ctx < 8 || tokens.len() < 2 * ctx {
            return Err(fail(PluginError::new(
                plugin_api::ErrorKind::INVALID_REQUEST,
                format!(
                    "the text has {} tokens; perplexity at a context of {ctx} needs at least {} (2 × ctx) and ctx ≥ 8",
                    tokens.len(),
                    2 * ctx.max(8)
                ),
            )));
        }
        let chunks = (tokens.len() / ctx)
            .min(max_chunks.unwrap_or(usize::MAX))
            .max(1);
        let first = ctx / 2;
        let (mut nll, mut scored, mut running) = (0f64, 0usize, Vec::with_capacity(chunks));
        for i in 0..chunks {
            let mut chunk = tokens[i * ctx..(i + 1) * ctx].to_vec();
            if let Some(b) = bos {
                chunk[0] = b;
            }
            let r = m
                .model
                .score(&ScoreRequest {
                    tokens: chunk.into(),
                    first: first as u32,
                    options: "".into(),
                })
                .into_result()
                .map_err(fail)?;
            self.touch(&m.key);
            nll -= r.logprobs.iter().map(|l| f64::from(*l)).sum::<f64>();
            scored += r.logprobs.len();
            running.push((nll / scored as f64).exp());
        }
        Ok(Perplexity {
            ppl: (nll / scored as f64).exp(),
            text_tokens: tokens.len(),
            chunks,
            ctx,
            scored,
            running,
            plugin: m.plugin.clone(),
        })
    }
}
