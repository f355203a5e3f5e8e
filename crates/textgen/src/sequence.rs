//! The output side of one generated sequence, identical for every provider: tokens,
//! log-probabilities, text cut at stop strings, the finish reason, and the stream event
//! each token produces.

use crate::TextStream;
use plugin_api::text::{FinishReason, GenerateOutput, GenerationStats, StreamControl, StreamEvent};
use std::time::Instant;

/// Output state of one sequence of a generation request.
#[derive(Default, Debug, Clone)]
pub struct SeqOutput {
    /// Tokens of the (templated) prompt.
    pub prompt_tokens: usize,
    /// Generated token ids (an end-of-sequence token included).
    pub tokens: Vec<u32>,
    /// Log-probabilities of `tokens`, when requested.
    pub logprobs: Vec<f32>,
    /// Generated text, cut before the first stop string.
    pub text: TextStream,
    /// Why it ended (`NONE` while running).
    pub finish: FinishReason,
}

impl SeqOutput {
    /// A sequence about to generate after a prompt of `prompt_tokens` tokens.
    pub fn new(prompt_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            ..Default::default()
        }
    }

    /// Whether it is still generating.
    pub fn running(&self) -> bool {
        self.finish == FinishReason::NONE
    }

    /// Record generated token `token` of input `index`. `text` is what the provider's
    /// detokenizer made final with it (its remainder flushed when `eos` or `last`); `eos`:
    /// the token ends the sequence; `last`: no further token is allowed (max tokens or
    /// context). Returns the stream event for the token.
    #[allow(clippy::too_many_arguments)]
    pub fn accept(
        &mut self,
        index: usize,
        token: u32,
        logprob: Option<f32>,
        text: &str,
        eos: bool,
        last: bool,
        stops: &[String],
    ) -> StreamEvent {
        self.tokens.push(token);
        self.logprobs.extend(logprob);
        let stopped = self.text.push(text, stops);
        self.finish = if eos || stopped {
            FinishReason::STOP
        } else if last {
            FinishReason::LENGTH
        } else {
            FinishReason::NONE
        };
        StreamEvent {
            index: index as u32,
            token,
            text: self.text.take(!self.running(), stops).into(),
            logprob: logprob.unwrap_or(0.0),
            finish: self.finish,
        }
    }

    /// The output so far (the final one once it stopped running).
    pub fn output(&self) -> GenerateOutput {
        GenerateOutput {
            text: self.text.text().into(),
            tokens: self.tokens.as_slice().into(),
            logprobs: self.logprobs.as_slice().into(),
            finish: self.finish,
            prompt_tokens: self.prompt_tokens as u32,
        }
    }

    /// The final output.
    pub fn into_output(self) -> GenerateOutput {
        GenerateOutput {
            text: self.text.into_text().into(),
            tokens: self.tokens.into(),
            logprobs: self.logprobs.into(),
            finish: self.finish,
            prompt_tokens: self.prompt_tokens as u32,
        }
    }
}

/// Mark every running sequence of `seqs` (each with its index in the call) cancelled,
/// telling `sink` with a final event for each.
pub fn cancel_running<'a>(
    seqs: impl IntoIterator<Item = (u32, &'a mut SeqOutput)>,
    sink: &mut dyn FnMut(&StreamEvent) -> StreamControl,
) {
    for (index, seq) in seqs {
        if seq.running() {
            seq.finish = FinishReason::CANCELLED;
            let ev = StreamEvent {
                index,
                token: seq.tokens.last().copied().unwrap_or(0),
                text: "".into(),
                logprob: 0.0,
                finish: FinishReason::CANCELLED,
            };
            let _ = sink(&ev);
        }
    }
}

/// The stop strings of `req` that can match (empty ones dropped).
pub fn stop_strings(req: &plugin_api::text::GenerateRequest) -> Vec<String> {
    req.stop
        .iter()
        .map(|s| s.to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether `req` lets a provider's prompt cache be used: every call but one that opts out
/// ([`plugin_api::text::PROMPT_CACHE_OPTION`] `false`, as `bench` does).
pub fn prompt_cache_allowed(req: &plugin_api::text::GenerateRequest) -> bool {
    serde_json::from_str::<serde_json::Value>(req.options.as_str())
        .ok()
        .and_then(|o| o.get(plugin_api::text::PROMPT_CACHE_OPTION)?.as_bool())
        != Some(false)
}

/// When the phases of a generation request happened.
pub struct Timings {
    /// The call began.
    pub started: Instant,
    /// Seconds spent processing prompts (template and tokenization excluded).
    pub prefill_s: f64,
    /// The first token was sampled.
    pub first_token: Instant,
    /// Generation ended.
    pub done: Instant,
}

/// The request's figures from its sequences and timings. Decode speed counts the tokens
/// after each sequence's first (those come from prefill).
pub fn stats(seqs: &[&SeqOutput], t: &Timings, peak_memory_bytes: u64) -> GenerationStats {
    let prompt_tokens: u64 = seqs.iter().map(|s| s.prompt_tokens as u64).sum();
    let generated_tokens: u64 = seqs.iter().map(|s| s.tokens.len() as u64).sum();
    let decode_s = t.done.duration_since(t.first_token).as_secs_f64();
    let per_s = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    GenerationStats {
        prompt_tokens,
        generated_tokens,
        prefill_tokens_per_s: per_s(prompt_tokens, t.prefill_s),
        decode_tokens_per_s: per_s(generated_tokens.saturating_sub(seqs.len() as u64), decode_s),
        time_to_first_token_ms: t.first_token.duration_since(t.started).as_secs_f64() * 1e3,
        peak_memory_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_text_and_finish() {
        let stops = vec!["\n\n".to_owned()];
        let mut s = SeqOutput::new(3);
        let e = s.accept(0, 10, None, "Hello", false, false, &stops);
        assert_eq!((e.text.as_str(), e.finish), ("Hello", FinishReason::NONE));
        let e = s.accept(0, 11, None, " world\n", false, false, &stops);
        assert_eq!(
            e.text.as_str(),
            " world",
            "a possible stop prefix is held back"
        );
        // "\n" + "\nmore" completes the stop string: the text ends before it.
        let e = s.accept(0, 12, Some(-0.5), "\nmore", false, false, &stops);
        assert_eq!((e.text.as_str(), e.finish), ("", FinishReason::STOP));
        let out = s.into_output();
        assert_eq!(out.text.as_str(), "Hello world");
        assert_eq!(out.tokens.as_slice(), [10, 11, 12]);
        assert_eq!(out.logprobs.as_slice(), [-0.5]);
    }

    #[test]
    fn length_eos_and_cancel() {
        let mut a = SeqOutput::new(1);
        assert_eq!(
            a.accept(0, 1, None, "x", false, true, &[]).finish,
            FinishReason::LENGTH
        );
        let mut b = SeqOutput::new(1);
        assert_eq!(
            b.accept(1, 2, None, "", true, false, &[]).finish,
            FinishReason::STOP
        );
        let mut c = SeqOutput::new(1);
        c.accept(2, 3, None, "y", false, false, &[]);
        let mut seen = Vec::new();
        cancel_running([(0, &mut a), (1, &mut b), (2, &mut c)], &mut |ev| {
            seen.push((ev.index, ev.finish));
            StreamControl::Continue
        });
        assert_eq!(seen, [(2, FinishReason::CANCELLED)]);
    }
}
