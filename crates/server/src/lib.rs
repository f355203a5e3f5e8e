//! `mlxengine serve`: an OpenAI-compatible HTTP server over the engine.
//!
//! Endpoints: `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `GET /v1/models`, `/v1/models/{id}`, admin `POST /v1/models/load` and
//! `/v1/models/unload`, and `GET /health`, `/ready`, `/metrics` (Prometheus text).
//! Generation runs on per-model workers ([`scheduler`]) with continuous batching;
//! handlers only parse, submit and stream. One file per endpoint family; this crate is
//! the only one that knows HTTP statuses and OpenAI JSON ([`openai`] parses requests,
//! `response` writes completion objects).

mod adapters;
mod completions;
mod embeddings;
mod fetch;
mod health;
mod images;
mod listen;
pub mod metrics;
mod middleware;
mod models;
pub mod openai;
mod response;
pub mod scheduler;

use axum::{
    extract::DefaultBodyLimit,
    routing::{get, post},
    Router,
};
use engine::Engine;
pub use fetch::RemoteImages;
use metrics::Metrics;
pub use openai::ApiError;
use plugin_api::{Features, ModelKind};
use scheduler::Scheduler;
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

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
    /// How long a connection may take to send a request's headers before it is closed.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body once its headers are in
    /// (408 after that).
    pub body_timeout: Duration,
    /// Fetch `http(s)` image URLs within these limits (`--allow-remote-images`); `None`:
    /// only `data:` URLs are taken.
    pub remote_images: Option<RemoteImages>,
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
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            remote_images: None,
        }
    }
}

pub(crate) struct AppState {
    pub(crate) engine: Arc<Engine>,
    pub(crate) sched: Arc<Scheduler>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) opts: ServeOptions,
    pub(crate) next_id: AtomicU64,
    pub(crate) shutting_down: AtomicBool,
    /// Embedding requests in flight per model (`--max-queue` bounds them).
    pub(crate) embed_slots: Arc<embeddings::Slots>,
    /// Image requests in flight, per model.
    pub(crate) image_slots: Arc<embeddings::Slots>,
    /// The client for remote images, when the server fetches them.
    pub(crate) fetcher: Option<fetch::Fetcher>,
}

pub(crate) type St = Arc<AppState>;

/// The model a response was for (read by the metrics middleware).
#[derive(Clone)]
pub(crate) struct ModelLabel(pub(crate) String);

/// Run the server until SIGINT/SIGTERM, then drain (see [`ServeOptions::shutdown_timeout`]).
pub fn serve(engine: Engine, opts: ServeOptions) -> anyhow::Result<()> {
    // An empty key would turn auth off without a word: refuse it.
    if opts.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        anyhow::bail!(
            "the API key (--api-key or MLXENGINE_API_KEY) is empty; set a key, or leave both \
             unset to serve without authentication"
        );
    }
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
    let fetcher = opts
        .remote_images
        .clone()
        .map(fetch::Fetcher::new)
        .transpose()?;
    let st = Arc::new(AppState {
        fetcher,
        engine,
        sched,
        metrics,
        opts,
        next_id: AtomicU64::new(1),
        shutting_down: AtomicBool::new(false),
        embed_slots: Arc::default(),
        image_slots: Arc::default(),
    });
    if let Some(idle) = st.opts.idle_unload {
        tokio::spawn(unload_idle(st.clone(), idle));
    }
    let app = router(st.clone());
    eprintln!("mlxengine: listening on http://{local}");
    tracing::info!(%local, "listening");
    let st2 = st.clone();
    let header_timeout = st.opts.header_timeout;
    listen::serve(listener, app, header_timeout, async move {
        shutdown_signal().await;
        begin_shutdown(&st2);
    })
    .await;
    eprintln!("mlxengine: stopped");
    Ok(())
}

fn router(st: St) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics_text))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{*id}", get(models::get_model))
        .route("/v1/models/load", post(models::load_model))
        .route("/v1/models/unload", post(models::unload_model))
        .route("/v1/adapters", get(adapters::list))
        .route("/v1/adapters/load", post(adapters::load))
        .route("/v1/adapters/unload", post(adapters::unload))
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/images/generations", post(images::images))
        .fallback(middleware::no_route)
        .method_not_allowed_fallback(middleware::wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            middleware::around,
        ))
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

/// Unload models no request has used for `idle` (the engine keeps the one clock).
async fn unload_idle(st: St, idle: Duration) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        (idle.as_millis() as u64 / 4).clamp(50, 5000),
    ));
    loop {
        tick.tick().await;
        for id in st.engine.unload_idle(idle) {
            tracing::info!(model = %id, "unloaded after {idle:?} idle");
        }
    }
}

/// The registry model a request names (or the default of `kind`), checked for kind.
pub(crate) fn resolve(
    st: &AppState,
    model: Option<&str>,
    kinds: &[ModelKind],
    endpoint: &str,
) -> Result<engine::ModelEntry, ApiError> {
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
