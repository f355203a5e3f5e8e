//! `mlxengine serve`: an OpenAI-compatible HTTP server over the engine.
//!
//! Endpoints: `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `GET /v1/models`, `/v1/models/{id}`, admin `POST /v1/models/load` and
//! `/v1/models/unload`, and `GET /health`, `/ready`, `/metrics` (Prometheus text).
//! Generation runs on per-model workers ([`scheduler`]) with continuous batching;
//! handlers only parse, submit and stream.

pub mod metrics;
pub mod openai;
pub mod scheduler;

use crate::Engine;
use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, DefaultBodyLimit, MatchedPath, Path, Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Json, Router,
};
use base64::Engine as _;
use futures_util::stream;
use metrics::Metrics;
pub use openai::ApiError;
use openai::{chat_messages, parse, ChatRequest, CompletionRequest, EmbeddingRequest, ModelAction};
use plugin_api::{
    embed::{EmbedRequest, Pooling},
    text::{FinishReason, GenerateOutput, GenerateRequest, TextInput},
    Features, ModelKind,
};
use scheduler::{Job, JobMsg, Scheduler};
use serde_json::{json, Value};
use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tracing::Instrument;

/// Settings of `mlxengine serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind (127.0.0.1 by default: local clients only).
    pub host: String,
    /// Port (0: any free port; the chosen one is printed).
    pub port: u16,
    /// Bearer key every endpoint but `/health` requires, when set.
    pub api_key: Option<String>,
    /// Models to load before accepting requests.
    pub preload: Vec<String>,
    /// Waiting requests per model before new ones get 429.
    pub max_queue: usize,
    /// Time limit of one request, queueing included.
    pub request_timeout: Duration,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Unload models unused for this long.
    pub idle_unload: Option<Duration>,
    /// How long in-flight requests may run on after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// `max_tokens` when a request sets none.
    pub default_max_tokens: u32,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            preload: Vec::new(),
            max_queue: 64,
            request_timeout: Duration::from_secs(600),
            max_body: 8 << 20,
            idle_unload: None,
            shutdown_timeout: Duration::from_secs(10),
            default_max_tokens: 256,
        }
    }
}

struct AppState {
    engine: Arc<Engine>,
    sched: Arc<Scheduler>,
    metrics: Arc<Metrics>,
    opts: ServeOptions,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    /// Last use of embedding models (LLMs are tracked by their workers).
    embed_used: Mutex<HashMap<String, Instant>>,
}

type St = Arc<AppState>;

/// The model a response was for (read by the metrics middleware).
#[derive(Clone)]
struct ModelLabel(String);

/// Run the server until SIGINT/SIGTERM, then drain (see [`ServeOptions::shutdown_timeout`]).
pub fn serve(engine: Engine, opts: ServeOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("http")
        .build()?;
    rt.block_on(run(Arc::new(engine), opts))
}

async fn run(engine: Arc<Engine>, opts: ServeOptions) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    for id in &opts.preload {
        let id = if id == "default" {
            engine.default_model(ModelKind::LLM)?
        } else {
            id.clone()
        };
        let entry = engine.entry(&id)?;
        let started = Instant::now();
        let e2 = engine.clone();
        let id2 = id.clone();
        tokio::task::spawn_blocking(move || e2.load(&id2, entry.kind, Features::NONE)).await??;
        metrics.model_loaded(&id, started.elapsed().as_secs_f64());
        tracing::info!(model = %id, "preloaded");
    }
    let sched = Scheduler::new(engine.clone(), metrics.clone(), opts.max_queue);
    let addr: SocketAddr = format!("{}:{}", opts.host, opts.port)
        .parse()
        .map_err(|e| anyhow::anyhow!("--host {} --port {}: {e}", opts.host, opts.port))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let st = Arc::new(AppState {
        engine,
        sched,
        metrics,
        opts,
        next_id: AtomicU64::new(1),
        shutting_down: AtomicBool::new(false),
        embed_used: Mutex::default(),
    });
    if let Some(idle) = st.opts.idle_unload {
        tokio::spawn(unload_idle(st.clone(), idle));
    }
    let app = router(st.clone());
    eprintln!("mlxengine: listening on http://{local}");
    tracing::info!(%local, "listening");
    let st2 = st.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            begin_shutdown(&st2);
        })
        .await?;
    eprintln!("mlxengine: stopped");
    Ok(())
}

fn router(st: St) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/models/load", post(load_model))
        .route("/v1/models/unload", post(unload_model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/images/generations", post(images))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(st.clone(), around))
        .layer(DefaultBodyLimit::max(st.opts.max_body))
        .with_state(st)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Stop accepting; let in-flight requests finish within the deadline, then cancel them.
fn begin_shutdown(st: &St) {
    st.shutting_down.store(true, Ordering::Relaxed);
    let in_flight = st.sched.in_flight();
    eprintln!(
        "mlxengine: shutting down; {in_flight} request(s) in flight get {:?}",
        st.opts.shutdown_timeout
    );
    let st = st.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + st.opts.shutdown_timeout;
        while Instant::now() < deadline && st.sched.in_flight() > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        st.sched.stop_all.store(true, Ordering::Relaxed);
        // Cancelled requests end at their next token; never hang on a stuck plugin.
        std::thread::sleep(Duration::from_secs(5));
        eprintln!("mlxengine: shutdown deadline passed; exiting");
        std::process::exit(0);
    });
}

async fn unload_idle(st: St, idle: Duration) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        (idle.as_millis() as u64 / 4).clamp(50, 5000),
    ));
    loop {
        tick.tick().await;
        let mut idle_ids = st.sched.idle_models(idle);
        {
            let used = st.embed_used.lock().unwrap_or_else(|p| p.into_inner());
            idle_ids.extend(
                used.iter()
                    .filter(|(_, t)| t.elapsed() >= idle)
                    .map(|(id, _)| id.clone()),
            );
        }
        for id in idle_ids {
            if st.engine.unload(&id) {
                tracing::info!(model = %id, "unloaded after {idle:?} idle");
            }
        }
    }
}

/// Request id, auth, shutdown gate, metrics and the request log, around every handler.
async fn around(State(st): State<St>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("req-{}", st.next_id.fetch_add(1, Ordering::Relaxed)));
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_owned();
    let method = req.method().clone();
    let span = tracing::info_span!("request", id = %id, method = %method, path = %req.uri().path());
    let started = Instant::now();
    let mut resp = async {
        if endpoint != "/health" {
            if let Some(key) = &st.opts.api_key {
                let given = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
                    return ApiError::unauthorized().into_response();
                }
            }
        }
        if st.shutting_down.load(Ordering::Relaxed) && endpoint != "/health" {
            st.metrics.rejected("shutting_down");
            return ApiError::unavailable("the server is shutting down").into_response();
        }
        req.extensions_mut().insert(id.clone());
        next.run(req).await
    }
    .instrument(span.clone())
    .await;
    let model = resp
        .extensions()
        .get::<ModelLabel>()
        .map_or(String::new(), |m| m.0.clone());
    let status = resp.status();
    st.metrics.request(&endpoint, &model, status.as_u16());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            model = %model,
            ms = started.elapsed().as_millis() as u64,
            "done"
        )
    });
    resp
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A response labelled with its model for the metrics.
fn labelled(model: &str, r: Result<Response, ApiError>) -> Response {
    let mut resp = r.unwrap_or_else(IntoResponse::into_response);
    resp.extensions_mut().insert(ModelLabel(model.to_owned()));
    resp
}

fn body_error(e: BytesRejection) -> ApiError {
    let mut err = ApiError::invalid("", format!("request body: {}", e.body_text()));
    err.status = e.status();
    err
}

async fn no_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::no_route(method.as_str(), uri.path())
}

async fn wrong_method(method: Method, uri: axum::http::Uri) -> ApiError {
    let mut e = ApiError::no_route(method.as_str(), uri.path());
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e.message = format!("{} does not accept {method}", uri.path());
    e
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(st): State<St>) -> Response {
    let check = || -> Result<Value, String> {
        let plugins = st.engine.plugins();
        if plugins.plugins.is_empty() {
            return Err(format!("no plugins loaded (searched {:?})", plugins.dirs));
        }
        let id = st
            .engine
            .default_model(ModelKind::LLM)
            .map_err(|e| e.to_string())?;
        let entry = st.engine.entry(&id).map_err(|e| e.to_string())?;
        let plugin = st
            .engine
            .select_on(&entry, entry.features, entry.backend.as_deref())
            .map_err(|e| e.to_string())?;
        st.engine.local_path(&entry).map_err(|e| e.to_string())?;
        Ok(json!({
            "status": "ready",
            "plugins": plugins.plugins.iter().map(|p| p.descriptor.name.as_str()).collect::<Vec<_>>(),
            "default_model": id,
            "default_model_plugin": plugin.descriptor.name.as_str(),
            "loaded": st.engine.loaded_ids(),
        }))
    };
    match check() {
        Ok(v) => Json(v).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response(),
    }
}

async fn metrics_text(State(st): State<St>) -> Response {
    let text = st.metrics.render(st.engine.loaded_ids().len());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn model_json(st: &AppState, e: &crate::ModelEntry, loaded: &[String]) -> Value {
    json!({
        "id": e.id,
        "object": "model",
        "created": 0,
        "owned_by": "mlxengine",
        "kind": e.kind.to_string(),
        "architecture": e.architecture,
        "context_length": e.context_length,
        "loaded": loaded.iter().any(|l| l == &e.id),
        "default": st.engine.default_model(e.kind).ok().as_deref() == Some(e.id.as_str()),
    })
}

async fn list_models(State(st): State<St>) -> Json<Value> {
    let loaded = st.engine.loaded_ids();
    let reg = st.engine.registry();
    let data: Vec<Value> = reg.models().map(|e| model_json(&st, e, &loaded)).collect();
    Json(json!({"object": "list", "data": data}))
}

async fn get_model(State(st): State<St>, Path(id): Path<String>) -> Response {
    let r = st
        .engine
        .entry(&id)
        .map(|e| Json(model_json(&st, &e, &st.engine.loaded_ids())).into_response())
        .map_err(|e| ApiError::from_host(&e));
    labelled(&id, r)
}

async fn load_model(State(st): State<St>, body: Result<Bytes, BytesRejection>) -> Response {
    let mut model = String::new();
    let r = async {
        let a: ModelAction = parse(&body.map_err(body_error)?)?;
        model = a.model.clone();
        let entry = st
            .engine
            .entry(&a.model)
            .map_err(|e| ApiError::from_host(&e))?;
        let started = Instant::now();
        let engine = st.engine.clone();
        let id = a.model.clone();
        let m = tokio::task::spawn_blocking(move || engine.load(&id, entry.kind, Features::NONE))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::from_host(&e))?;
        let secs = started.elapsed().as_secs_f64();
        st.metrics.model_loaded(&a.model, secs);
        Ok(Json(json!({
            "id": a.model,
            "object": "model",
            "loaded": true,
            "plugin": m.plugin,
            "backend": m.info.backend.as_str(),
            "load_seconds": secs,
        }))
        .into_response())
    }
    .await;
    labelled(&model, r)
}

async fn unload_model(State(st): State<St>, body: Result<Bytes, BytesRejection>) -> Response {
    let mut model = String::new();
    let r = async {
        let a: ModelAction = parse(&body.map_err(body_error)?)?;
        model = a.model.clone();
        st.engine
            .entry(&a.model)
            .map_err(|e| ApiError::from_host(&e))?;
        let unloaded = st.engine.unload(&a.model);
        Ok(Json(json!({"id": a.model, "object": "model", "unloaded": unloaded})).into_response())
    }
    .await;
    labelled(&model, r)
}

async fn images() -> ApiError {
    let mut e = ApiError::invalid(
        "",
        "image generation is not served yet: it needs a `diffusion` plugin and model",
    );
    e.status = StatusCode::NOT_IMPLEMENTED;
    e
}

/// The registry model a request names (or the default of `kind`), checked for kind.
fn resolve(
    st: &AppState,
    model: Option<&str>,
    kinds: &[ModelKind],
    endpoint: &str,
) -> Result<crate::ModelEntry, ApiError> {
    let id = match model {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => st
            .engine
            .default_model(kinds[0])
            .map_err(|e| ApiError::invalid("model", e.to_string()))?,
    };
    let entry = st.engine.entry(&id).map_err(|e| ApiError::from_host(&e))?;
    if !kinds.contains(&entry.kind) {
        return Err(ApiError::invalid(
            "model",
            format!(
                "model `{id}` is a `{}` model; {endpoint} serves {}",
                entry.kind,
                kinds
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ));
    }
    Ok(entry)
}

fn submit(
    st: &AppState,
    model: &str,
    req: GenerateRequest,
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

/// Which OpenAI object a generation answers with.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Chat,
    Text,
}

/// The common frame of one completion response.
struct Frame {
    shape: Shape,
    id: String,
    created: u64,
    model: String,
    /// Choices (sequences) in the request.
    choices: usize,
    /// Choices per prompt (`n`).
    n: usize,
    logprobs: bool,
}

impl Frame {
    fn new(shape: Shape, model: &str, choices: usize, n: usize, logprobs: bool) -> Self {
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

    fn object(&self, chunk: bool) -> &'static str {
        match (self.shape, chunk) {
            (Shape::Chat, false) => "chat.completion",
            (Shape::Chat, true) => "chat.completion.chunk",
            (Shape::Text, _) => "text_completion",
        }
    }

    fn usage(&self, outputs: &[Option<GenerateOutput>]) -> Value {
        // Prompt tokens count once per prompt, not once per choice.
        let prompt: u64 = outputs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % self.n == 0)
            .filter_map(|(_, o)| o.as_ref())
            .map(|o| o.prompt_tokens as u64)
            .sum();
        let completion: u64 = outputs
            .iter()
            .flatten()
            .map(|o| o.tokens.len() as u64)
            .sum();
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    fn logprobs_json(&self, pieces: &[(String, f32)]) -> Value {
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

    fn head(&self, chunk: bool) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("id".into(), self.id.clone().into());
        m.insert("object".into(), self.object(chunk).into());
        m.insert("created".into(), self.created.into());
        m.insert("model".into(), self.model.clone().into());
        m.insert("system_fingerprint".into(), Value::Null);
        m
    }

    /// One streamed chunk for choice `index`.
    fn chunk(
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
    fn complete(&self, outputs: &[Option<GenerateOutput>], pieces: &[Vec<(String, f32)>]) -> Value {
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
        m.insert("usage".into(), self.usage(outputs));
        Value::Object(m)
    }
}

/// Gather every choice of a request, then answer in one response.
async fn collect(frame: Frame, mut rx: UnboundedReceiver<JobMsg>) -> Result<Response, ApiError> {
    let mut outputs: Vec<Option<GenerateOutput>> = vec![None; frame.choices];
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
            Some(JobMsg::Finished { index, output }) => {
                if outputs[index as usize].replace(output).is_none() {
                    left -= 1;
                }
            }
            Some(JobMsg::Failed(e)) => return Err(e),
            None => return Err(ApiError::internal("the generation worker stopped")),
        }
    }
    Ok(Json(frame.complete(&outputs, &pieces)).into_response())
}

/// State of one server-sent-events response.
struct Streamer {
    frame: Frame,
    rx: UnboundedReceiver<JobMsg>,
    include_usage: bool,
    outputs: Vec<Option<GenerateOutput>>,
    started: Vec<bool>,
    left: usize,
    out: VecDeque<String>,
    done: bool,
}

impl Streamer {
    fn handle(&mut self, msg: Option<JobMsg>) {
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
            Some(JobMsg::Finished { index, output }) => {
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
                        m.insert("usage".into(), self.frame.usage(&self.outputs));
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
async fn stream(
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

/// Queue a generation and answer it, streamed or whole, as `common` asks.
async fn answer(
    st: &AppState,
    frame: Frame,
    gen: GenerateRequest,
    common: &openai::Common,
) -> Result<Response, ApiError> {
    let rx = submit(st, &frame.model, gen)?;
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

async fn chat(State(st): State<St>, body: Result<Bytes, BytesRejection>) -> Response {
    let mut model = String::new();
    let r = async {
        let req = ChatRequest::parse(&body.map_err(body_error)?)?;
        let entry = resolve(
            &st,
            req.common.model.as_deref(),
            &[ModelKind::LLM, ModelKind::VLM],
            "/v1/chat/completions",
        )?;
        model = entry.id.clone();
        let messages = chat_messages(&req.messages, entry.kind == ModelKind::VLM)?;
        let input = TextInput {
            prompt: "".into(),
            messages: messages.into(),
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

async fn completions(State(st): State<St>, body: Result<Bytes, BytesRejection>) -> Response {
    let mut model = String::new();
    let r = async {
        let req = CompletionRequest::parse(&body.map_err(body_error)?)?;
        let entry = resolve(
            &st,
            req.common.model.as_deref(),
            &[ModelKind::LLM],
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

async fn embeddings(State(st): State<St>, body: Result<Bytes, BytesRejection>) -> Response {
    let mut model = String::new();
    let r = async {
        let req: EmbeddingRequest = parse(&body.map_err(body_error)?)?;
        let entry = resolve(&st, req.model.as_deref(), &[ModelKind::EMBED], "/v1/embeddings")?;
        model = entry.id.clone();
        let texts = match req.input {
            openai::EmbedInput::One(t) => vec![t],
            openai::EmbedInput::Many(v) => v,
            openai::EmbedInput::Tokens(_) => {
                return Err(ApiError::invalid(
                    "input",
                    "token-id input is not supported; send text",
                ))
            }
        };
        if texts.is_empty() {
            return Err(ApiError::invalid("input", "`input` must not be empty"));
        }
        if let Some(i) = texts.iter().position(|t| t.is_empty()) {
            return Err(ApiError::invalid(
                &format!("input[{i}]"),
                "input texts must not be empty",
            ));
        }
        let base64 = match req.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    format!("`encoding_format` must be `float` or `base64` (got `{other}`)"),
                ))
            }
        };
        st.embed_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.clone(), Instant::now());
        let ereq = EmbedRequest {
            texts: texts.iter().map(|t| t.as_str().into()).collect(),
            pooling: Pooling::MODEL_DEFAULT,
            normalize: None.into(),
            truncate: false,
            options: "".into(),
        };
        let (engine, id) = (st.engine.clone(), model.clone());
        let resp = tokio::task::spawn_blocking(move || engine.embed(&id, &ereq))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::from_host(&e))?;
        let dim = resp.dim as usize;
        if let Some(d) = req.dimensions {
            if d as usize != dim {
                return Err(ApiError::invalid(
                    "dimensions",
                    format!("model `{model}` makes {dim}-dimensional vectors; `dimensions` must be {dim} or absent"),
                ));
            }
        }
        let data: Vec<Value> = resp
            .data
            .chunks(dim.max(1))
            .enumerate()
            .map(|(i, v)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        let tokens = resp.prompt_tokens;
        Ok(Json(json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }))
        .into_response())
    }
    .await;
    labelled(&model, r)
}
