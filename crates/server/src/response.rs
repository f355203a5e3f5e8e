//! The OpenAI completion objects: whole responses and server-sent-event chunks, for chat
//! and text completions alike.

use crate::{openai::ApiError, scheduler::JobMsg};
use axum::{
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use futures_util::stream;
use plugin_api::text::{FinishReason, GenerateOutput};
use serde_json::{json, Value};
use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};
use tokio::sync::mpsc::UnboundedReceiver;
/// Which OpenAI object a generation answers with.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Shape {
    Chat,
    Text,
}

/// The common frame of one completion response.
pub(crate) struct Frame {
    pub(crate) shape: Shape,
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    /// Choices (sequences) in the request.
    pub(crate) choices: usize,
    /// Choices per prompt (`n`).
    pub(crate) n: usize,
    pub(crate) logprobs: bool,
}

impl Frame {
    pub(crate) fn new(shape: Shape, model: &str, choices: usize, n: usize, logprobs: bool) -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let nonce = created ^ (std::process::id() as u64) << 32;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let c = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = if shape == Shape::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        };
        Self {
            shape,
            id: format!("{prefix}-{nonce:x}{c:04x}"),
            created,
            model: model.to_owned(),
            choices,
            n,
            logprobs,
        }
    }

    pub(crate) fn object(&self, chunk: bool) -> &'static str {
        match (self.shape, chunk) {
            (Shape::Chat, false) => "chat.completion",
            (Shape::Chat, true) => "chat.completion.chunk",
            (Shape::Text, _) => "text_completion",
        }
    }

    /// The `usage` object; `cached[i]`: prompt tokens of choice `i` that came from the
    /// provider's prompt cache.
    pub(crate) fn usage(&self, outputs: &[Option<GenerateOutput>], cached: &[u32]) -> Value {
        // Prompt tokens count once per prompt, not once per choice.
        let per_prompt = || {
            outputs
                .iter()
                .zip(cached)
                .enumerate()
                .filter(|(i, _)| i % self.n == 0)
                .filter_map(|(_, (o, c))| o.as_ref().map(|o| (o, *c)))
        };
        let prompt: u64 = per_prompt().map(|(o, _)| o.prompt_tokens as u64).sum();
        let reused: u64 = per_prompt().map(|(_, c)| u64::from(c)).sum();
        let completion: u64 = outputs
            .iter()
            .flatten()
            .map(|o| o.tokens.len() as u64)
            .sum();
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": reused},
        })
    }

    pub(crate) fn logprobs_json(&self, pieces: &[(String, f32)]) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.shape {
            Shape::Chat => json!({"content": pieces.iter().map(|(t, lp)| json!({
                "token": t, "logprob": lp, "bytes": t.as_bytes(), "top_logprobs": []
            })).collect::<Vec<_>>()}),
            Shape::Text => json!({
                "tokens": pieces.iter().map(|(t, _)| t).collect::<Vec<_>>(),
                "token_logprobs": pieces.iter().map(|(_, lp)| lp).collect::<Vec<_>>(),
                "top_logprobs": Value::Null,
                "text_offset": Value::Null,
            }),
        }
    }

    pub(crate) fn head(&self, chunk: bool) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("object".into(), self.object(chunk).into());
        m.insert("created".into(), self.created.into());
        m.insert("model".into(), self.model.clone().into());
        m.insert("system_fingerprint".into(), Value::Null);
        m
    }

    /// One streamed chunk for choice `index`.
    pub(crate) fn chunk(
        &self,
        index: u32,
        text: Option<&str>,
        role: bool,
        finish: Option<FinishReason>,
        pieces: &[(String, f32)],
    ) -> String {
        let finish = finish.map_or(Value::Null, |f| f.name().into());
        let choice = match self.shape {
            Shape::Chat => {
                let mut delta = serde_json::Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                json!({"index": index, "delta": delta, "logprobs": self.logprobs_json(pieces), "finish_reason": finish})
            }
            Shape::Text => json!({
                "index": index, "text": text.unwrap_or(""),
                "logprobs": self.logprobs_json(pieces), "finish_reason": finish
            }),
        };
        let mut m = self.head(true);
        m.insert("choices".into(), json!([choice]));
        Value::Object(m).to_string()
    }

    /// The whole (non-streamed) response.
    pub(crate) fn complete(
        &self,
        outputs: &[Option<GenerateOutput>],
        cached: &[u32],
        pieces: &[Vec<(String, f32)>],
    ) -> Value {
        let choices: Vec<Value> = outputs
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let o = o.as_ref().expect("every choice finished");
                let lp = self.logprobs_json(&pieces[i]);
                let finish = o.finish.name();
                match self.shape {
                    Shape::Chat => json!({
                        "index": i,
                        "message": {"role": "assistant", "content": o.text.as_str(), "refusal": null},
                        "logprobs": lp,
                        "finish_reason": finish,
                    }),
                    Shape::Text => json!({
                        "index": i, "text": o.text.as_str(), "logprobs": lp, "finish_reason": finish,
                    }),
                }
            })
            .collect();
        let mut m = self.head(false);
        m.insert("choices".into(), choices.into());
        m.insert("usage".into(), self.usage(outputs, cached));
        Value::Object(m)
    }
}

/// Gather every choice of a request, then answer in one response.
pub(crate) async fn collect(
    frame: Frame,
    mut rx: UnboundedReceiver<JobMsg>,
) -> Result<Response, ApiError> {
    let mut outputs: Vec<Option<GenerateOutput>> = vec![None; frame.choices];
    let mut cached = vec![0; frame.choices];
    let mut pieces: Vec<Vec<(String, f32)>> = vec![Vec::new(); frame.choices];
    let mut left = frame.choices;
    while left > 0 {
        match rx.recv().await {
            Some(JobMsg::Token {
                index,
                text,
                logprob,
            }) => {
                if frame.logprobs {
                    pieces[index as usize].push((text, logprob));
                }
            }
            Some(JobMsg::Finished {
                index,
                output,
                cached: c,
            }) => {
                cached[index as usize] = c;
                if outputs[index as usize].replace(output).is_none() {
                    left -= 1;
                }
            }
            Some(JobMsg::Failed(e)) => return Err(e),
            None => return Err(ApiError::internal("the generation worker stopped")),
        }
    }
    Ok(Json(frame.complete(&outputs, &cached, &pieces)).into_response())
}

/// State of one server-sent-events response.
pub(crate) struct Streamer {
    pub(crate) frame: Frame,
    pub(crate) rx: UnboundedReceiver<JobMsg>,
    pub(crate) include_usage: bool,
    pub(crate) outputs: Vec<Option<GenerateOutput>>,
    pub(crate) cached: Vec<u32>,
    pub(crate) started: Vec<bool>,
    pub(crate) left: usize,
    pub(crate) out: VecDeque<String>,
    pub(crate) done: bool,
}

impl Streamer {
    pub(crate) fn handle(&mut self, msg: Option<JobMsg>) {
        match msg {
            Some(JobMsg::Token {
                index,
                text,
                logprob,
            }) => {
                let role = !std::mem::replace(&mut self.started[index as usize], true);
                if !text.is_empty() || role || self.frame.logprobs {
                    let pieces = [(text.clone(), logprob)];
                    let c = self.frame.chunk(index, Some(&text), role, None, &pieces);
                    self.out.push_back(c);
                }
            }
            Some(JobMsg::Finished {
                index,
                output,
                cached,
            }) => {
                self.cached[index as usize] = cached;
                let role = !std::mem::replace(&mut self.started[index as usize], true);
                self.out.push_back(self.frame.chunk(
                    index,
                    role.then_some(""),
                    role,
                    Some(output.finish),
                    &[],
                ));
                if self.outputs[index as usize].replace(output).is_none() {
                    self.left -= 1;
                }
                if self.left == 0 {
                    if self.include_usage {
                        let mut m = self.frame.head(true);
                        m.insert("choices".into(), json!([]));
                        m.insert(
                            "usage".into(),
                            self.frame.usage(&self.outputs, &self.cached),
                        );
                        self.out.push_back(Value::Object(m).to_string());
                    }
                    self.out.push_back("[DONE]".into());
                    self.done = true;
                }
            }
            Some(JobMsg::Failed(e)) => {
                self.out.push_back(e.body().to_string());
                self.out.push_back("[DONE]".into());
                self.done = true;
            }
            None => {
                let e = ApiError::internal("the generation worker stopped");
                self.out.push_back(e.body().to_string());
                self.done = true;
            }
        }
    }
}

/// Stream a request's choices as server-sent events. Errors before the first token are
/// answered with a plain HTTP error instead.
pub(crate) async fn stream(
    frame: Frame,
    mut rx: UnboundedReceiver<JobMsg>,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let first = rx.recv().await;
    if let Some(JobMsg::Failed(e)) = first {
        return Err(e);
    }
    let choices = frame.choices;
    let mut s = Streamer {
        frame,
        rx,
        include_usage,
        outputs: vec![None; choices],
        cached: vec![0; choices],
        started: vec![false; choices],
        left: choices,
        out: VecDeque::new(),
        done: false,
    };
    s.handle(first);
    let events = stream::unfold(s, |mut s| async move {
        loop {
            if let Some(data) = s.out.pop_front() {
                return Some((Ok::<_, Infallible>(Event::default().data(data)), s));
            }
            if s.done {
                return None;
            }
            let msg = s.rx.recv().await;
            s.handle(msg);
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
