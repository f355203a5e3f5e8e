//! `POST /v1/chat/completions` and `/v1/completions`: parse, queue on the model's worker,
//! answer streamed or whole.

use crate::{
    middleware::{body_error, labelled},
    response::{collect, stream, Frame, Shape},
};
use crate::{
    openai::{self, chat_messages, ApiError, ChatRequest, CompletionRequest},
    resolve,
    scheduler::{Job, JobMsg},
    AppState, St,
};
use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    response::Response,
};
use engine::request::Generate;
use plugin_api::{text::TextInput, ModelKind};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub(crate) fn submit(
    st: &AppState,
    model: &str,
    req: Generate,
) -> Result<UnboundedReceiver<JobMsg>, ApiError> {
    let (tx, rx) = unbounded_channel();
    let now = Instant::now();
    st.sched.submit(Job {
        model: model.to_owned(),
        req,
        tx,
        arrived: now,
        deadline: now + st.opts.request_timeout,
    })?;
    Ok(rx)
}

/// Queue a generation and answer it, streamed or whole, as `common` asks.
pub(crate) async fn answer(
    st: &AppState,
    frame: Frame,
    gen: Generate,
    common: &openai::Common,
) -> Result<Response, ApiError> {
    // A `lora` model is served by its base's worker: requests with different adapters
    // share the base, its batches where the provider batches them.
    let (base, gen) = st
        .engine
        .route(&frame.model, gen)
        .map_err(|e| ApiError::from_host(&e))?;
    let rx = submit(st, &base, gen)?;
    // The worker enforces the deadline once the request runs; this bounds the wait in
    // the queue too (a second of grace lets the worker's own answer win).
    let deadline = tokio::time::Instant::now() + st.opts.request_timeout + Duration::from_secs(1);
    let timed_out = |_| ApiError::timeout();
    if common.stream {
        let usage = common
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        tokio::time::timeout_at(deadline, stream(frame, rx, usage))
            .await
            .map_err(timed_out)?
    } else {
        tokio::time::timeout_at(deadline, collect(frame, rx))
            .await
            .map_err(timed_out)?
    }
}

pub(crate) async fn chat(State(st): State<St>, body: Result<Bytes, BytesRejection>) -> Response {
    let mut model = String::new();
    let r = async {
        let req = ChatRequest::parse(&body.map_err(body_error)?)?;
        let entry = resolve(
            &st,
            req.common.model.as_deref(),
            &[ModelKind::LLM, ModelKind::VLM, ModelKind::LORA],
            "/v1/chat/completions",
        )?;
        model = entry.id.clone();
        let mut chat = chat_messages(
            &req.messages,
            &entry.id,
            entry.kind == ModelKind::VLM,
            st.fetcher.is_some(),
        )?;
        if let Some(f) = &st.fetcher {
            f.fill(&mut chat).await?;
        }
        let input = TextInput {
            prompt: "".into(),
            messages: chat.messages.into(),
        };
        let gen = req
            .common
            .to_request(vec![input], st.opts.default_max_tokens)?;
        let n = gen.inputs.len();
        let frame = Frame::new(Shape::Chat, &model, n, n, gen.logprobs);
        answer(&st, frame, gen, &req.common).await
    }
    .await;
    labelled(&model, r)
}

pub(crate) async fn completions(
    State(st): State<St>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut model = String::new();
    let r = async {
        let req = CompletionRequest::parse(&body.map_err(body_error)?)?;
        let entry = resolve(
            &st,
            req.common.model.as_deref(),
            &[ModelKind::LLM, ModelKind::LORA],
            "/v1/completions",
        )?;
        model = entry.id.clone();
        let prompts = match req.prompt {
            openai::Prompt::One(p) => vec![p],
            openai::Prompt::Many(v) => v,
            openai::Prompt::Tokens(_) => {
                return Err(ApiError::invalid(
                    "prompt",
                    "token-id prompts are not supported; send text",
                ))
            }
        };
        if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
            return Err(ApiError::invalid("prompt", "`prompt` must not be empty"));
        }
        let inputs: Vec<TextInput> = prompts
            .into_iter()
            .map(|p| TextInput {
                prompt: p.into(),
                messages: Default::default(),
            })
            .collect();
        let gen = req.common.to_request(inputs, st.opts.default_max_tokens)?;
        let n = req.common.n.unwrap_or(1) as usize;
        let frame = Frame::new(Shape::Text, &model, gen.inputs.len(), n, gen.logprobs);
        answer(&st, frame, gen, &req.common).await
    }
    .await;
    labelled(&model, r)
}
