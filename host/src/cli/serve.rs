//! `mlxengine serve`: the flags of the OpenAI-compatible server.

use anyhow::Result;
use clap::Args;
use engine::Engine;
use std::time::Duration;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Load dtype for MLX models loaded by this command (float32, bfloat16, float16);
    /// default: the device policy (float32 on CPU when it fits the budget).
    #[arg(long)]
    pub(crate) dtype: Option<String>,
    /// KV-cache type of every language model this command loads (f32, f16, bf16, q8_0,
    /// q4_0), over the registry's `kv_cache`: q8_0 takes about a third of f32's memory.
    #[arg(long = "kv-cache", value_parser = engine::registry::KV_CACHE_TYPES)]
    pub(crate) kv_cache: Option<String>,
    /// Address to bind; 127.0.0.1 serves this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port; 0 picks a free one (printed at start).
    #[arg(long, default_value_t = 8080)]
    pub(crate) port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, env = "MLXENGINE_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// Load these models before accepting requests (`default` = the default LLM).
    #[arg(long, value_delimiter = ',')]
    pub(crate) preload: Vec<String>,
    /// Requests waiting per model before new ones get 429.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_queue: usize,
    /// Seconds a request may take, queueing included.
    #[arg(long, default_value_t = 600)]
    pub(crate) request_timeout: u64,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 8)]
    pub(crate) max_body_mb: usize,
    /// Unload models unused for this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub(crate) idle_unload: u64,
    /// Seconds in-flight requests may run on after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10)]
    pub(crate) shutdown_timeout: u64,
    /// Seconds a connection may take to send a request's headers before it is closed.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) header_timeout: u64,
    /// Seconds a client may take to send a request's body (408 after that).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) body_timeout: u64,
    /// Fetch `http(s)` image URLs in chat requests (off: only `data:` URLs), within
    /// --remote-image-max-mb, --remote-image-timeout and 3 redirects; 8 per request.
    #[arg(long)]
    pub(crate) allow_remote_images: bool,
    /// Largest remote image, in MiB.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub(crate) remote_image_max_mb: u64,
    /// Seconds one remote image may take to arrive.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub(crate) remote_image_timeout: u64,
    /// max_tokens for requests that set none.
    #[arg(long, default_value_t = 256)]
    pub(crate) default_max_tokens: u32,
}

pub(crate) fn cmd_serve(engine: Engine, a: &ServeArgs) -> Result<()> {
    server::serve(
        engine,
        server::ServeOptions {
            host: a.host.clone(),
            port: a.port,
            api_key: a.api_key.clone(),
            preload: a.preload.clone(),
            max_queue: a.max_queue,
            request_timeout: Duration::from_secs(a.request_timeout),
            max_body: a.max_body_mb << 20,
            idle_unload: (a.idle_unload > 0).then(|| Duration::from_secs(a.idle_unload)),
            shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
            default_max_tokens: a.default_max_tokens,
            header_timeout: Duration::from_secs(a.header_timeout),
            body_timeout: Duration::from_secs(a.body_timeout),
            remote_images: a.allow_remote_images.then(|| server::RemoteImages {
                max_bytes: (a.remote_image_max_mb as usize) << 20,
                timeout: Duration::from_secs(a.remote_image_timeout),
                ..Default::default()
            }),
        },
    )
}
