//! `mlxengine`: the command-line front end of the MLXEngine host.

#[path = "cli/bench.rs"]
mod bench_cli;
#[path = "cli/hub.rs"]
mod hub_cli;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use mlxengine::{
    engine::models_dir, load_registry, plugins, user_registry_path, Engine, ModelEntry, PluginSet,
    Source,
};
use plugin_api::{
    embed::{EmbedRequest, Pooling},
    text::{ChatMessage, GenerateRequest, SamplingParams, StreamControl, TextInput},
    ModelKind, API_VERSION,
};
use serde_json::json;
use std::{
    io::{BufRead, Read, Write},
    path::PathBuf,
    process::ExitCode,
};

#[derive(Parser)]
#[command(
    name = "mlxengine",
    version,
    about = "Run local models through drop-in plugins"
)]
struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Extra directory to load plugins from (repeatable; searched first).
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    /// Extra registry file merged over the shipped one (repeatable).
    #[arg(long = "registry", global = true, value_name = "FILE")]
    registries: Vec<PathBuf>,
    /// Memory the loaded models may take together (`4GB`, `512MB`; default: 80% of the
    /// memory available at start). Loading beyond it is refused with what would fit.
    #[arg(
        long,
        global = true,
        env = "MLXENGINE_MEMORY_BUDGET",
        value_name = "SIZE"
    )]
    memory_budget: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List plugins: loaded ones with kinds, features and API version, and load errors.
    Plugins {
        #[arg(long)]
        json: bool,
    },
    /// List registered models.
    Models {
        /// Only models of this kind (llm, vlm, embed, diffusion, lora, quant).
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a model: registry entry, local files, and which plugin would serve it; for an
    /// `owner/name` Hub id that is not registered: its files, what it is, whether it fits.
    Info {
        model: String,
        /// Tokens per sequence for the memory estimate (default: 2048 or the model's context).
        #[arg(long)]
        context: Option<u64>,
        /// Sequences decoded together, for the memory estimate.
        #[arg(long, default_value_t = 1)]
        batch: u64,
        /// Estimate for this provider (`mlx`, `ggml`, a plugin name) instead of the best.
        #[arg(long)]
        backend: Option<String>,
        /// Estimate for this MLX load dtype (float32, bfloat16, float16).
        #[arg(long)]
        dtype: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Embed texts (arguments, or one per line from stdin with `-`).
    Embed(EmbedArgs),
    /// Generate text (streams to stdout; `--json` prints one object at the end).
    Generate(GenerateArgs),
    /// Interactive multi-turn chat (`/reset` clears the history, `/exit` quits).
    Chat(ChatArgs),
    /// Measure generation speed: a warm-up, then several runs in this process
    /// (median and min–max of time to first token, prefill and decode speed, peak memory).
    Bench(BenchArgs),
    /// Measure embedding throughput (sentences/s at each batch size, peak memory).
    BenchEmbed(bench_cli::BenchEmbedArgs),
    /// Measure the plugin ABI's overhead (call round trip, token callback) against the
    /// time of one decoded token.
    BenchAbi(bench_cli::BenchAbiArgs),
    /// Convert a GGUF file to a Hugging Face layout directory (safetensors + config +
    /// tokenizer files).
    Import {
        /// The .gguf file.
        gguf: PathBuf,
        /// New output directory.
        out_dir: PathBuf,
    },
    /// Add a model to your runtime registry (the shipped registry.toml is not touched).
    Add(AddArgs),
    /// Remove a model from your runtime registry.
    Remove { model: String },
    /// Serve the registry's models over an OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Search the Hugging Face Hub for models (id, downloads, architecture, size, support).
    Search(hub_cli::SearchArgs),
    /// Download a model from the Hub into the HF cache (verified, resumable) and add it to
    /// your runtime registry.
    Pull(hub_cli::PullArgs),
    /// List the models in the HF cache with their sizes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a model's files from the HF cache.
    Rm {
        /// `owner/name`.
        repo: String,
    },
    /// This machine: CPU, memory (cgroup limits respected), memory budget, BLAS, and each
    /// plugin's probe.
    Device {
        #[arg(long)]
        json: bool,
    },
    /// Registry models that fit this machine, ranked, with estimated memory and speed.
    Recommend {
        /// Only models of this kind.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Load dtype for MLX models loaded by this command (float32, bfloat16, float16);
    /// default: the device policy (float32 on CPU when it fits the budget).
    #[arg(long)]
    dtype: Option<String>,
    /// Address to bind; 127.0.0.1 serves this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port; 0 picks a free one (printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, env = "MLXENGINE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Load these models before accepting requests (`default` = the default LLM).
    #[arg(long, value_delimiter = ',')]
    preload: Vec<String>,
    /// Requests waiting per model before new ones get 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Seconds a request may take, queueing included.
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 8)]
    max_body_mb: usize,
    /// Unload models unused for this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    idle_unload: u64,
    /// Seconds in-flight requests may run on after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10)]
    shutdown_timeout: u64,
    /// max_tokens for requests that set none.
    #[arg(long, default_value_t = 256)]
    default_max_tokens: u32,
}

#[derive(Args)]
struct EmbedArgs {
    /// Registry id of an embedding model.
    #[arg(long, short)]
    model: String,
    /// Texts to embed; `-` reads one text per line from stdin.
    #[arg(required = true)]
    texts: Vec<String>,
    /// Pooling: default (the model's), mean, cls, last.
    #[arg(long, default_value = "default")]
    pooling: String,
    /// Do not L2-normalize (default: as the model's configuration says).
    #[arg(long)]
    no_normalize: bool,
    /// Fail on texts longer than the model's maximum instead of truncating them.
    #[arg(long)]
    no_truncate: bool,
    /// Print `{"model":..,"dim":..,"embeddings":[[...]]}`.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// Most new tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Drop tokens below min-p × the top probability (0 = off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Presence penalty (0 = off).
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Frequency penalty (0 = off).
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// RNG seed (same seed, same output).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop string (repeatable); generation stops before it.
    #[arg(long = "stop")]
    stop: Vec<String>,
}

impl SamplingArgs {
    fn request(&self, inputs: Vec<TextInput>, stream: bool) -> GenerateRequest {
        GenerateRequest {
            inputs: inputs.into(),
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                seed: self.seed.into(),
            },
            max_tokens: self.max_tokens,
            stop: self.stop.iter().map(|s| s.as_str().into()).collect(),
            logprobs: false,
            stream,
            adapter: None.into(),
            options: "".into(),
        }
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// Load dtype for MLX models loaded by this command (float32, bfloat16, float16);
    /// default: the device policy (float32 on CPU when it fits the budget).
    #[arg(long)]
    dtype: Option<String>,
    /// Registry id of a language model (default: the registry's default LLM).
    #[arg(long, short)]
    model: Option<String>,
    /// The prompt (or give it as the last argument).
    #[arg(long, short)]
    prompt: Option<String>,
    /// Prompt as a positional argument.
    #[arg(conflicts_with = "prompt")]
    text: Option<String>,
    /// Send the prompt as a user chat message through the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Force a provider: `mlx`, `ggml`, or a plugin name (default: best probe score).
    #[arg(long)]
    backend: Option<String>,
    /// System prompt (implies --chat).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Load dtype for MLX models loaded by this command (float32, bfloat16, float16);
    /// default: the device policy (float32 on CPU when it fits the budget).
    #[arg(long)]
    dtype: Option<String>,
    /// Registry id of a language model (default: the registry's default LLM).
    #[arg(long, short)]
    model: Option<String>,
    /// Prompt text (default: a synthetic prompt of about --prompt-tokens tokens).
    #[arg(long)]
    prompt: Option<String>,
    /// Send the prompt through the chat template.
    #[arg(long)]
    chat: bool,
    /// Length of the synthetic prompt, in words (≈ tokens).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// New tokens per run.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Measured runs (after one warm-up).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Force a provider: `mlx`, `ggml`, or a plugin name (default: best probe score).
    #[arg(long)]
    backend: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ChatArgs {
    /// Load dtype for MLX models loaded by this command (float32, bfloat16, float16);
    /// default: the device policy (float32 on CPU when it fits the budget).
    #[arg(long)]
    dtype: Option<String>,
    /// Registry id of a language model (default: the registry's default LLM).
    #[arg(long, short)]
    model: Option<String>,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    /// Force a provider: `mlx`, `ggml`, or a plugin name (default: best probe score).
    #[arg(long)]
    backend: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args)]
struct AddArgs {
    /// New model id.
    #[arg(long)]
    id: String,
    /// Kind: llm, vlm, embed, diffusion, lora, quant.
    #[arg(long)]
    kind: String,
    /// Architecture (`model_type` in config.json).
    #[arg(long)]
    architecture: String,
    /// Local model directory or file.
    #[arg(long, conflicts_with = "hub", required_unless_present = "hub")]
    path: Option<PathBuf>,
    /// Hugging Face repo `owner/name`.
    #[arg(long)]
    hub: Option<String>,
    /// Hub revision.
    #[arg(long, default_value = "main", requires = "hub")]
    revision: String,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Load-time dtype (float32, float16, bfloat16).
    #[arg(long)]
    dtype: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn engine(cli: &Cli) -> Result<Engine> {
    let registry = load_registry(&cli.registries)?;
    let plugins = PluginSet::discover(&plugins::search_dirs(&cli.plugin_dirs));
    let engine = Engine::new(registry, plugins);
    if let Some(b) = &cli.memory_budget {
        let bytes =
            mlxengine::fit::parse_size(b).map_err(|e| anyhow::anyhow!("--memory-budget: {e}"))?;
        engine.set_memory_budget(bytes);
    }
    Ok(engine)
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Plugins { json } => cmd_plugins(&engine(&cli)?, *json),
        Command::Models { kind, json } => cmd_models(&engine(&cli)?, kind.as_deref(), *json),
        Command::Info {
            model,
            context,
            batch,
            backend,
            dtype,
            json,
        } => {
            let engine = engine(&cli)?;
            let registered = engine.registry().get(model).is_some();
            if !registered && model.contains('/') {
                return hub_cli::cmd_hub_info(&engine, model, *json);
            }
            cmd_info(
                &engine,
                model,
                InfoOpts {
                    context: *context,
                    batch: *batch,
                    backend: backend.as_deref(),
                    dtype: dtype.as_deref(),
                },
                *json,
            )
        }
        Command::Embed(args) => cmd_embed(&engine(&cli)?, args),
        Command::Generate(args) => cmd_generate(&with_dtype(engine(&cli)?, &args.dtype), args),
        Command::Chat(args) => cmd_chat(&with_dtype(engine(&cli)?, &args.dtype), args),
        Command::Bench(args) => cmd_bench(&with_dtype(engine(&cli)?, &args.dtype), args),
        Command::BenchEmbed(a) => bench_cli::cmd_bench_embed(&engine(&cli)?, a),
        Command::BenchAbi(a) => bench_cli::cmd_bench_abi(&engine(&cli)?, a),
        Command::Import { gguf, out_dir } => cmd_import(gguf, out_dir),
        Command::Add(args) => cmd_add(&cli, args),
        Command::Remove { model } => cmd_remove(&cli, model),
        Command::Device { json } => cmd_device(&engine(&cli)?, *json),
        Command::Recommend { kind, json } => cmd_recommend(&engine(&cli)?, kind.as_deref(), *json),
        Command::Search(a) => hub_cli::cmd_search(&engine(&cli)?, a),
        Command::Pull(a) => hub_cli::cmd_pull(&cli, &engine(&cli)?, a),
        Command::Ls { json } => hub_cli::cmd_ls(&engine(&cli)?, *json),
        Command::Rm { repo } => hub_cli::cmd_rm(repo),
        Command::Serve(a) => mlxengine::server::serve(
            with_dtype(engine(&cli)?, &a.dtype),
            mlxengine::server::ServeOptions {
                host: a.host.clone(),
                port: a.port,
                api_key: a.api_key.clone().filter(|k| !k.is_empty()),
                preload: a.preload.clone(),
                max_queue: a.max_queue,
                request_timeout: std::time::Duration::from_secs(a.request_timeout),
                max_body: a.max_body_mb << 20,
                idle_unload: (a.idle_unload > 0)
                    .then(|| std::time::Duration::from_secs(a.idle_unload)),
                shutdown_timeout: std::time::Duration::from_secs(a.shutdown_timeout),
                default_max_tokens: a.default_max_tokens,
            },
        ),
    }
}

fn cmd_device(engine: &Engine, as_json: bool) -> Result<()> {
    use mlxengine::{device, fit::human};
    let d = engine.device();
    let probes: Vec<serde_json::Value> = engine
        .plugins()
        .plugins
        .iter()
        .map(|p| {
            let pr = engine.probe_device(p);
            json!({"plugin": p.descriptor.name.as_str(), "score": pr.score,
                   "backend": pr.backend.as_str(), "reason": pr.reason.as_str()})
        })
        .collect();
    let mlx_backend = probes
        .iter()
        .filter_map(|p| p["backend"].as_str())
        .find(|b| b.starts_with("mlx-"))
        .map(str::to_owned);
    let v = json!({
        "os": d.os.as_str(), "arch": d.arch.as_str(),
        "cpu": device::cpu_model(),
        "logical_cores": d.cpu_cores, "physical_cores": d.physical_cores,
        "cpu_features": d.cpu_features.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
        "total_memory_bytes": d.total_memory, "available_memory_bytes": d.available_memory,
        "memory_budget_bytes": engine.memory_budget(),
        "mlx_backend": mlx_backend,
        "gpus": d.accelerators.iter().map(|a| json!({"name": a.name.as_str(), "memory_bytes": a.total_memory, "api": a.api.as_str(), "compute_capability": a.compute_capability.as_str()})).collect::<Vec<_>>(),
        "blas": device::blas_libraries(),
        "plugins": probes,
    });
    if as_json {
        return print_json(&v);
    }
    println!(
        "{} {} — {}",
        d.os,
        d.arch,
        v["cpu"].as_str().unwrap_or("unknown CPU")
    );
    println!(
        "  cores:   {} physical, {} logical; SIMD: {}",
        v["physical_cores"],
        d.cpu_cores,
        d.cpu_features
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  memory:  {} total, {} available (cgroup limits respected); budget {}",
        human(d.total_memory),
        human(d.available_memory),
        human(engine.memory_budget())
    );
    println!(
        "  MLX:     {}",
        mlx_backend.as_deref().unwrap_or("no MLX plugin loaded")
    );
    for a in d.accelerators.iter() {
        println!(
            "  GPU:     {} {}: {}, {}, compute capability {}",
            a.api,
            a.index,
            a.name,
            human(a.total_memory),
            a.compute_capability
        );
    }
    println!("  BLAS:    {}", device::blas_libraries().join(", "));
    for p in &probes {
        println!(
            "  plugin {:<10} score {:>3} on {:<9} {}",
            p["plugin"].as_str().unwrap_or(""),
            p["score"],
            p["backend"].as_str().unwrap_or(""),
            p["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn cmd_recommend(engine: &Engine, kind: Option<&str>, as_json: bool) -> Result<()> {
    use mlxengine::fit::{self, human};
    let kind = kind
        .map(|k| ModelKind::from_name(k).with_context(|| format!("unknown kind `{k}`")))
        .transpose()?;
    let budget = engine.memory_budget();
    let entries: Vec<ModelEntry> = engine
        .registry()
        .models()
        .filter(|m| kind.is_none_or(|k| m.kind == k))
        .cloned()
        .collect();
    let mut rows = Vec::new();
    for m in &entries {
        let plugin = engine.select_on(m, m.features, m.backend.as_deref());
        let (plugin_name, backend, est, why) = match plugin {
            Err(e) => (None, String::new(), None, Some(e.to_string())),
            Ok(p) => {
                let backend = engine.probe_model(p, m).backend.to_string();
                match engine.estimate(m, p, None, 1) {
                    Ok((_, e)) => (Some(p.descriptor.name.to_string()), backend, Some(e), None),
                    Err(err) => {
                        let e = fit::estimate_from_registry(
                            p.descriptor.name.as_str(),
                            m.size_bytes,
                            m.parameters,
                        );
                        let why = e.is_none().then(|| err.to_string());
                        (Some(p.descriptor.name.to_string()), backend, e, why)
                    }
                }
            }
        };
        let fits = est.as_ref().is_some_and(|e| e.total_bytes <= budget);
        let tps = est
            .as_ref()
            .filter(|_| m.kind == ModelKind::LLM)
            .and_then(fit::expected_decode_tps);
        let reason = match (&est, &why) {
            (_, Some(w)) => w.clone(),
            (Some(e), None) if !fits => format!(
                "needs about {}, more than the memory budget of {} (available {})",
                human(e.total_bytes),
                human(budget),
                human(engine.device().available_memory)
            ),
            (Some(e), None) => format!(
                "about {} of the {} budget",
                human(e.total_bytes),
                human(budget)
            ),
            (None, None) => "no estimate".into(),
        };
        rows.push(json!({
            "id": m.id, "kind": m.kind.name(), "plugin": plugin_name, "backend": backend,
            "fits": fits, "estimate_bytes": est.as_ref().map(|e| e.total_bytes),
            "weights_as": est.as_ref().map(|e| e.weights_as.clone()),
            "expected_decode_tps": tps,
            "speed_class": if m.kind == ModelKind::LLM { fit::speed_class(tps) } else { "n/a" },
            "local": engine.local_path(m).is_ok(),
            "reason": reason,
        }));
    }
    // Fitting models first; among them, LLMs by expected speed, then smaller first.
    rows.sort_by(|a, b| {
        let key = |r: &serde_json::Value| {
            (
                !r["fits"].as_bool().unwrap_or(false),
                -(r["expected_decode_tps"].as_f64().unwrap_or(0.0) as i64),
                r["estimate_bytes"].as_u64().unwrap_or(u64::MAX),
            )
        };
        key(a).cmp(&key(b))
    });
    if as_json {
        return print_json(&json!({"budget_bytes": budget, "models": rows}));
    }
    println!(
        "memory budget {} ({} physical cores)",
        human(budget),
        engine.device().physical_cores
    );
    for r in &rows {
        let est = r["estimate_bytes"].as_u64().map_or("?".into(), human);
        let speed = r["expected_decode_tps"]
            .as_f64()
            .map_or(String::new(), |t| format!(", ~{t:.0} tok/s"));
        println!(
            "{} {:<24} {:<6} {:>8}  {} on {}{} — {}",
            if r["fits"].as_bool().unwrap_or(false) {
                "✓"
            } else {
                "✗"
            },
            r["id"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            est,
            r["weights_as"].as_str().unwrap_or("?"),
            r["plugin"].as_str().unwrap_or("no plugin"),
            speed,
            r["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// The engine with `--dtype` applied to every model it loads.
fn with_dtype(engine: Engine, dtype: &Option<String>) -> Engine {
    engine.set_dtype_override(dtype.clone());
    engine
}

fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

fn cmd_plugins(engine: &Engine, as_json: bool) -> Result<()> {
    let set = engine.plugins();
    let loaded: Vec<_> = set
        .plugins
        .iter()
        .map(|p| {
            let d = &p.descriptor;
            json!({
                "name": d.name.as_str(),
                "version": d.version.as_str(),
                "description": d.description.as_str(),
                "path": p.path,
                "api_version": p.module.api_version(),
                "kinds": d.kinds.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
                "architectures": d.architectures.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                "formats": d.formats.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                "features": d.features.names(),
            })
        })
        .collect();
    let failed: Vec<_> = set
        .failures
        .iter()
        .map(|f| json!({"path": f.path, "error": f.error}))
        .collect();
    if as_json {
        return print_json(&json!({
            "api_version": API_VERSION,
            "search_path": set.dirs,
            "plugins": loaded,
            "errors": failed,
        }));
    }
    println!("plugin API version {API_VERSION}");
    if set.plugins.is_empty() {
        let dirs: Vec<String> = set.dirs.iter().map(|d| d.display().to_string()).collect();
        println!("no plugins loaded (searched: {})", dirs.join(", "));
    }
    for p in &set.plugins {
        let d = &p.descriptor;
        println!("{} {} — {}", d.name, d.version, d.description);
        let kinds: Vec<String> = d.kinds.iter().map(|k| k.to_string()).collect();
        println!("  kinds:         {}", kinds.join(", "));
        let archs: Vec<&str> = d.architectures.iter().map(|a| a.as_str()).collect();
        println!(
            "  architectures: {}",
            if archs.is_empty() {
                "any".into()
            } else {
                archs.join(", ")
            }
        );
        println!("  features:      {}", d.features.names().join(", "));
        println!("  api version:   {}", p.module.api_version());
        println!("  library:       {}", p.path.display());
    }
    for f in &set.failures {
        println!("not loaded: {}: {}", f.path.display(), f.error);
    }
    Ok(())
}

fn parse_kind(k: &str) -> Result<ModelKind> {
    ModelKind::from_name(k).with_context(|| {
        format!(
            "unknown kind `{k}` (expected one of {})",
            ModelKind::ALL.map(|k| k.name()).join(", ")
        )
    })
}

fn source_str(s: &Source) -> String {
    match s {
        Source::Hub { repo, revision, .. } => format!("hf://{repo}@{revision}"),
        Source::Path(p) => p.display().to_string(),
    }
}

fn cmd_models(engine: &Engine, kind: Option<&str>, as_json: bool) -> Result<()> {
    let kind = kind.map(parse_kind).transpose()?;
    let reg = engine.registry();
    let models: Vec<&ModelEntry> = reg
        .models()
        .filter(|m| kind.is_none_or(|k| m.kind == k))
        .collect();
    if as_json {
        let list: Vec<_> = models
            .iter()
            .map(|m| {
                json!({
                    "id": m.id, "name": m.name, "kind": m.kind.name(), "architecture": m.architecture,
                    "source": source_str(&m.source), "parameters": m.parameters,
                    "size_bytes": m.size_bytes, "context_length": m.context_length,
                    "quantization": m.quantization, "local": engine.local_path(m).is_ok(),
                })
            })
            .collect();
        return print_json(&json!({ "models": list }));
    }
    println!(
        "{:<24} {:<9} {:<12} {:>9}  {:<6} source",
        "ID", "KIND", "ARCH", "SIZE", "LOCAL"
    );
    for m in models {
        let size = m.size_bytes.map(human_bytes).unwrap_or_else(|| "?".into());
        let local = if engine.local_path(m).is_ok() {
            "yes"
        } else {
            "no"
        };
        println!(
            "{:<24} {:<9} {:<12} {:>9}  {:<6} {}",
            m.id,
            m.kind.name(),
            m.architecture,
            size,
            local,
            source_str(&m.source)
        );
    }
    Ok(())
}

fn human_bytes(b: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// What `info`'s memory estimate is for.
struct InfoOpts<'a> {
    context: Option<u64>,
    batch: u64,
    backend: Option<&'a str>,
    dtype: Option<&'a str>,
}

fn cmd_info(engine: &Engine, id: &str, o: InfoOpts<'_>, as_json: bool) -> Result<()> {
    let mut m = engine.entry(id)?;
    if let Some(d) = o.dtype {
        m.dtype = Some(d.to_owned());
    }
    let local = engine.local_path(&m);
    let cands = engine.candidates(&m, m.features);
    let selected = engine.select_on(&m, m.features, o.backend).ok();
    let chosen = selected.map(|p| p.descriptor.name.to_string());
    let estimate = selected.map(|p| engine.estimate(&m, p, o.context, o.batch));
    let budget = engine.memory_budget();
    let (facts_json, est_json, fits) = match &estimate {
        Some(Ok((f, e))) => (
            json!(f),
            json!(e),
            json!({"fits": e.total_bytes <= budget, "budget_bytes": budget,
                   "available_bytes": engine.device().available_memory}),
        ),
        Some(Err(err)) => (json!(null), json!({"error": err.to_string()}), json!(null)),
        None => (json!(null), json!(null), json!(null)),
    };
    if as_json {
        return print_json(&json!({
            "id": m.id, "name": m.name, "description": m.description, "kind": m.kind.name(),
            "architecture": m.architecture, "source": source_str(&m.source),
            "quantization": m.quantization, "dtype": m.dtype, "parameters": m.parameters,
            "size_bytes": m.size_bytes, "context_length": m.context_length,
            "features": m.features.names(), "backend": m.backend, "defined_at": m.origin,
            "local_path": local.as_ref().ok(),
            "local_error": local.as_ref().err().map(|e| e.to_string()),
            "plugin": chosen,
            "facts": facts_json, "estimate": est_json, "fit": fits,
            "candidates": cands.iter().map(|c| json!({
                "plugin": c.plugin, "score": c.score, "backend": c.backend, "reason": c.reason
            })).collect::<Vec<_>>(),
        }));
    }
    println!("{} ({})", m.id, m.name);
    if !m.description.is_empty() {
        println!("  {}", m.description);
    }
    println!("  kind:          {}", m.kind);
    println!("  architecture:  {}", m.architecture);
    println!("  source:        {}", source_str(&m.source));
    if let Some(p) = m.parameters {
        println!("  parameters:    {:.1} M", p as f64 / 1e6);
    }
    if let Some(s) = m.size_bytes {
        println!("  size:          {}", human_bytes(s));
    }
    if let Some(c) = m.context_length {
        println!("  context:       {c} tokens");
    }
    if let Some(q) = &m.quantization {
        println!("  quantization:  {q}");
    }
    println!("  defined at:    {}", m.origin);
    match &local {
        Ok(p) => println!("  local files:   {}", p.display()),
        Err(e) => println!("  local files:   none ({e})"),
    }
    match &chosen {
        Some(name) => println!("  served by:     {name}"),
        None => println!("  served by:     no plugin"),
    }
    match &estimate {
        Some(Ok((_, e))) => {
            let h = mlxengine::fit::human;
            let budget = engine.memory_budget();
            println!(
                "  memory:        ~{} (weights {} as {}, KV cache {} for {}×{} tokens, runtime {}); {} the {} budget",
                h(e.total_bytes),
                h(e.weights_bytes),
                e.weights_as,
                h(e.kv_cache_bytes),
                e.batch,
                e.context,
                h(e.runtime_bytes),
                if e.total_bytes <= budget { "fits" } else { "does NOT fit" },
                h(budget)
            );
        }
        Some(Err(err)) => println!("  memory:        unknown ({err})"),
        None => {}
    }
    for c in cands {
        println!(
            "    {:<16} score {:>3}  {} {}",
            c.plugin, c.score, c.backend, c.reason
        );
    }
    Ok(())
}

fn cmd_embed(engine: &Engine, args: &EmbedArgs) -> Result<()> {
    let mut texts = Vec::new();
    for t in &args.texts {
        if t == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading texts from stdin")?;
            texts.extend(s.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        } else {
            texts.push(t.clone());
        }
    }
    if texts.is_empty() {
        bail!("no texts to embed");
    }
    let pooling = Pooling::from_name(&args.pooling).with_context(|| {
        format!(
            "unknown pooling `{}` (default, mean, cls, last)",
            args.pooling
        )
    })?;
    let req = EmbedRequest {
        texts: texts.iter().map(|t| t.as_str().into()).collect(),
        pooling,
        normalize: if args.no_normalize { Some(false) } else { None }.into(),
        truncate: !args.no_truncate,
        options: "".into(),
    };
    let started = std::time::Instant::now();
    let baseline_rss = mlxengine::device::rss_now();
    let out = engine.embed(&args.model, &req)?;
    let dim = out.dim as usize;
    let rows: Vec<&[f32]> = out.data.chunks(dim.max(1)).collect();
    if args.json {
        // Serialized directly (not through `json!`) so floats print as f32, not widened.
        #[derive(serde::Serialize)]
        struct Out<'a> {
            model: &'a str,
            dim: usize,
            embeddings: &'a [&'a [f32]],
            memory: serde_json::Value,
        }
        println!(
            "{}",
            serde_json::to_string(&Out {
                model: &args.model,
                dim,
                embeddings: &rows,
                memory: memory_json(baseline_rss),
            })?
        );
        return Ok(());
    }
    println!(
        "{} text(s) → {dim}-dim vectors ({} tokens, {:.1} ms)",
        rows.len(),
        out.prompt_tokens,
        started.elapsed().as_secs_f64() * 1e3
    );
    for (t, r) in texts.iter().zip(&rows) {
        let head: Vec<String> = r.iter().take(6).map(|v| format!("{v:+.4}")).collect();
        println!("[{} …]  {t}", head.join(", "));
    }
    if rows.len() > 1 {
        println!("cosine similarity:");
        for i in 0..rows.len() {
            let line: Vec<String> = (0..rows.len())
                .map(|j| format!("{:+.3}", cosine(rows[i], rows[j])))
                .collect();
            println!("  {}", line.join("  "));
        }
    }
    Ok(())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// Resident memory before the model was loaded and the process's peak since: what the
/// model and its request cost (compared with `info`'s estimate).
fn memory_json(baseline_rss: u64) -> serde_json::Value {
    let peak = mlxengine::device::rss_peak();
    json!({
        "baseline_rss_bytes": baseline_rss,
        "peak_rss_bytes": peak,
        "model_peak_bytes": peak.saturating_sub(baseline_rss),
    })
}

fn cmd_generate(engine: &Engine, a: &GenerateArgs) -> Result<()> {
    let model = match &a.model {
        Some(m) => m.clone(),
        None => engine.default_model(ModelKind::LLM)?,
    };
    let prompt = a
        .prompt
        .clone()
        .or_else(|| a.text.clone())
        .context("no prompt: give --prompt TEXT or TEXT")?;
    let input = if a.chat || a.system.is_some() {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::text("system", s));
        }
        msgs.push(ChatMessage::text("user", &prompt));
        TextInput {
            prompt: "".into(),
            messages: msgs.into(),
        }
    } else {
        TextInput {
            prompt: prompt.as_str().into(),
            messages: Default::default(),
        }
    };
    let req = a.sampling.request(vec![input], !a.json);
    let mut out = std::io::stdout().lock();
    let baseline_rss = mlxengine::device::rss_now();
    let res = engine.generate_on(&model, a.backend.as_deref(), &req, &mut |ev| {
        let ok = write!(out, "{}", ev.text).and_then(|_| out.flush()).is_ok();
        // A closed stdout (e.g. `| head`) stops the generation.
        if ok {
            StreamControl::Continue
        } else {
            StreamControl::Stop
        }
    })?;
    let o = &res.outputs[0];
    let s = &res.stats;
    if a.json {
        return print_json(&json!({
            "model": model, "text": o.text.as_str(), "token_ids": o.tokens.as_slice(),
            "prompt_tokens": o.prompt_tokens, "generated_tokens": o.tokens.len(),
            "finish_reason": o.finish.name(), "ttft_ms": s.time_to_first_token_ms,
            "backend": engine.served_by(&model, a.backend.as_deref()),
            "prefill_tps": s.prefill_tokens_per_s, "decode_tps": s.decode_tokens_per_s,
            "peak_memory_bytes": s.peak_memory_bytes,
            "dtype": engine.loaded_model(&model, a.backend.as_deref()).map(|m| m.info.dtype.to_string()),
            "memory": memory_json(baseline_rss),
        }));
    }
    println!();
    eprintln!(
        "[{model}: {} prompt + {} generated tokens, finish: {}; prefill {:.1} tok/s, decode {:.1} tok/s, first token {:.0} ms, peak memory {}]",
        o.prompt_tokens,
        o.tokens.len(),
        o.finish.name(),
        s.prefill_tokens_per_s,
        s.decode_tokens_per_s,
        s.time_to_first_token_ms,
        human_bytes(s.peak_memory_bytes)
    );
    Ok(())
}

fn cmd_chat(engine: &Engine, a: &ChatArgs) -> Result<()> {
    let model = match &a.model {
        Some(m) => m.clone(),
        None => engine.default_model(ModelKind::LLM)?,
    };
    let mut history: Vec<ChatMessage> = Vec::new();
    let reset = |h: &mut Vec<ChatMessage>| {
        h.clear();
        if let Some(s) = &a.system {
            h.push(ChatMessage::text("system", s));
        }
    };
    reset(&mut history);
    eprintln!("chatting with {model} — /reset clears the history, /exit quits");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                reset(&mut history);
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::text("user", &line));
        let input = TextInput {
            prompt: "".into(),
            messages: history.clone().into(),
        };
        let req = a.sampling.request(vec![input], true);
        let mut out = std::io::stdout().lock();
        let res = engine.generate_on(&model, a.backend.as_deref(), &req, &mut |ev| {
            let _ = write!(out, "{}", ev.text).and_then(|_| out.flush());
            StreamControl::Continue
        });
        println!();
        match res {
            Ok(r) => history.push(ChatMessage::text("assistant", r.outputs[0].text.as_str())),
            Err(e) => {
                // One failed turn does not end the session.
                history.pop();
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(())
}

fn cmd_bench(engine: &Engine, a: &BenchArgs) -> Result<()> {
    let model = match &a.model {
        Some(m) => m.clone(),
        None => engine.default_model(ModelKind::LLM)?,
    };
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    const WORDS: [&str; 16] = [
        "the", "river", "carried", "old", "stories", "past", "quiet", "towns", "where", "people",
        "still", "remember", "long", "summer", "nights", "and",
    ];
    let prompt = a.prompt.clone().unwrap_or_else(|| {
        (0..a.prompt_tokens.max(1))
            .map(|i| WORDS[i % WORDS.len()])
            .collect::<Vec<_>>()
            .join(" ")
    });
    let input = if a.chat {
        TextInput {
            prompt: "".into(),
            messages: vec![ChatMessage::text("user", &prompt)].into(),
        }
    } else {
        TextInput {
            prompt: prompt.as_str().into(),
            messages: Default::default(),
        }
    };
    let sampling = SamplingArgs {
        max_tokens: a.max_tokens,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        seed: None,
        stop: vec![],
    };
    let req = sampling.request(vec![input], false);
    let mut noop = |_: &plugin_api::text::StreamEvent| StreamControl::Continue;
    let load_start = std::time::Instant::now();
    let backend = a.backend.as_deref();
    let warm = engine.generate_on(&model, backend, &sampling_short(&req), &mut noop)?;
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    let mut runs = Vec::new();
    for _ in 0..a.runs {
        runs.push(engine.generate_on(&model, backend, &req, &mut noop)?);
    }
    let stat = |f: &dyn Fn(&plugin_api::text::GenerateResponse) -> f64| {
        bench_cli::stats(runs.iter().map(f).collect())
    };
    let ttft = stat(&|r| r.stats.time_to_first_token_ms);
    let pre = stat(&|r| r.stats.prefill_tokens_per_s);
    let dec = stat(&|r| r.stats.decode_tokens_per_s);
    let mem = stat(&|r| r.stats.peak_memory_bytes as f64);
    let prompt_tokens = runs[0].stats.prompt_tokens;
    let generated = runs[0].stats.generated_tokens;
    if a.json {
        let j = |t: (f64, f64, f64)| json!({"median": t.0, "min": t.1, "max": t.2});
        return print_json(&json!({
            "model": model, "backend": engine.served_by(&model, backend), "runs": a.runs,
            "prompt_tokens": prompt_tokens, "generated_tokens": generated,
            "load_and_warmup_ms": load_ms, "warmup_prompt_tokens": warm.stats.prompt_tokens,
            "ttft_ms": j(ttft), "prefill_tps": j(pre), "decode_tps": j(dec), "peak_memory_bytes": j(mem),
        }));
    }
    println!(
        "{model} on {}: {prompt_tokens} prompt tokens, {generated} generated, {} runs after a warm-up (median, min–max)",
        engine.served_by(&model, backend).unwrap_or_default(),
        a.runs
    );
    println!(
        "  time to first token  {:>9.1} ms    ({:.1}–{:.1})",
        ttft.0, ttft.1, ttft.2
    );
    println!(
        "  prefill              {:>9.1} tok/s ({:.1}–{:.1})",
        pre.0, pre.1, pre.2
    );
    println!(
        "  decode               {:>9.1} tok/s ({:.1}–{:.1})",
        dec.0, dec.1, dec.2
    );
    println!("  peak memory          {:>9}", human_bytes(mem.0 as u64));
    Ok(())
}

/// The warm-up request: same prompt, few new tokens.
fn sampling_short(req: &GenerateRequest) -> GenerateRequest {
    let mut r = req.clone();
    r.max_tokens = r.max_tokens.min(8);
    r
}

fn cmd_import(src: &std::path::Path, dst: &std::path::Path) -> Result<()> {
    let files = gguf::hf::import(src, dst)?;
    for f in files {
        let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        println!("{}  {}", f.display(), human_bytes(size));
    }
    Ok(())
}

fn cmd_add(cli: &Cli, a: &AddArgs) -> Result<()> {
    let kind = parse_kind(&a.kind)?;
    let source = match (&a.path, &a.hub) {
        (Some(p), None) => {
            let p = std::path::absolute(p).with_context(|| format!("path {}", p.display()))?;
            if !p.exists() {
                bail!("--path {}: no such file or directory", p.display());
            }
            Source::Path(p)
        }
        (None, Some(h)) => Source::Hub {
            repo: h.clone(),
            revision: a.revision.clone(),
            files: vec![],
        },
        _ => bail!("give exactly one of --path or --hub"),
    };
    let mut entry = ModelEntry::new(&a.id, kind, &a.architecture, source);
    entry.name = a.name.clone().unwrap_or_else(|| a.id.clone());
    entry.dtype = a.dtype.clone();
    let text = entry.to_toml();
    let _lock = lock_user_registry()?;
    // Validate exactly as a registry file would be, against everything already known.
    let mut reg = load_registry(&cli.registries)?;
    reg.merge_str(&text, "mlxengine add", std::path::Path::new("."))?;
    let user = append_user_entry(&text)?;
    println!("added `{}` to {}", a.id, user.display());
    Ok(())
}

/// Hold the user registry's lock file: commands that edit it (`add`, `remove`, `pull`)
/// in two processes at once take turns, so none loses the other's entry.
fn lock_user_registry() -> Result<std::fs::File> {
    let user = user_registry_path();
    if let Some(d) = user.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let path = user.with_extension("toml.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(f)
}

/// Append a validated `[[models]]` table to the user registry (atomically); its path.
fn append_user_entry(text: &str) -> Result<std::path::PathBuf> {
    let user = user_registry_path();
    let mut current = std::fs::read_to_string(&user).unwrap_or_default();
    if !current.is_empty() && !current.ends_with('\n') {
        current.push('\n');
    }
    current.push('\n');
    current.push_str(text);
    write_atomic(&user, &current)?;
    Ok(user)
}

fn cmd_remove(cli: &Cli, id: &str) -> Result<()> {
    let _lock = lock_user_registry()?;
    let user = user_registry_path();
    let text = std::fs::read_to_string(&user).unwrap_or_default();
    let mut doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}", user.display()))?;
    let before = doc
        .get("models")
        .and_then(|m| m.as_array())
        .map_or(0, |a| a.len());
    if let Some(models) = doc.get_mut("models").and_then(|m| m.as_array_mut()) {
        models.retain(|m| m.get("id").and_then(|i| i.as_str()) != Some(id));
    }
    let after = doc
        .get("models")
        .and_then(|m| m.as_array())
        .map_or(0, |a| a.len());
    if before == after {
        let reg = load_registry(&cli.registries)?;
        match reg.get(id) {
            Some(m) => bail!("model `{id}` is defined at {}, not in your runtime registry {}; it cannot be removed here", m.origin, user.display()),
            None => bail!("unknown model `{id}`"),
        }
    }
    write_atomic(&user, &toml::to_string(&doc)?)?;
    println!("removed `{id}` from {}", user.display());
    let local = models_dir().join(id);
    if local.exists() {
        println!("(its files in {} were left in place)", local.display());
    }
    Ok(())
}

/// Write via a temporary file and rename, so a crash never leaves half a registry.
fn write_atomic(path: &std::path::Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
