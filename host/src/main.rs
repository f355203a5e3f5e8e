//! `mlxengine`: the command-line front end of the MLXEngine host.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cli::{
    add::AddArgs,
    bench::{BenchAbiArgs, BenchArgs, BenchEmbedArgs},
    chat::ChatArgs,
    embed::EmbedArgs,
    generate::GenerateArgs,
    hub::{PullArgs, SearchArgs},
    image::ImageArgs,
    info::InfoOpts,
    perplexity::PerplexityArgs,
    quantize::QuantizeArgs,
    serve::ServeArgs,
};
use engine::{load_registry, plugins, Engine, PluginSet};
use std::{path::PathBuf, process::ExitCode};

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
    /// Run this plugin library in a child process of its own (repeatable; its file name
    /// without `libmlxengine_` and the suffix, e.g. `llm_ggml`, or `all`): a crash in it
    /// fails the call it happened in instead of the whole host.
    #[arg(
        long = "isolate",
        global = true,
        env = "MLXENGINE_ISOLATE",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    isolate: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// (Internal) serve one plugin library's calls on stdin/stdout for `--isolate`.
    #[command(hide = true)]
    PluginWorker { library: PathBuf },
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
    /// Measure image generation: a warm-up, then several runs in this process (seconds per
    /// denoising step and per image, median and min–max).
    BenchImage(cli::bench_image::BenchImageArgs),
    /// Measure embedding throughput (sentences/s at each batch size, peak memory).
    BenchEmbed(BenchEmbedArgs),
    /// Measure the plugin ABI's overhead (call round trip, token callback) against the
    /// time of one decoded token.
    BenchAbi(BenchAbiArgs),
    /// Convert a GGUF file to a Hugging Face layout directory (safetensors + config +
    /// tokenizer files).
    Import {
        /// The .gguf file.
        gguf: PathBuf,
        /// New output directory.
        out_dir: PathBuf,
    },
    /// A model's perplexity on a text file, as llama.cpp's llama-perplexity computes it
    /// (chunks of --ctx tokens, the second half of each scored).
    Perplexity(PerplexityArgs),
    /// Make images from a prompt with a diffusion model (PNG files carrying their
    /// parameters; a progress bar per step; Ctrl-C stops at the next step).
    Image(ImageArgs),
    /// Quantize a model: MLX affine or mxfp4 (mlx-lm's checkpoint format, which mlx-lm and
    /// this engine load) or GGUF (llama.cpp's quantizer). Written beside DST and renamed
    /// into place when complete.
    Quantize(QuantizeArgs),
    /// Merge a LoRA adapter into its base model: a new Hub-layout folder (safetensors,
    /// config, tokenizer) that transformers, mlx-lm and this engine load.
    Fuse(cli::fuse::FuseArgs),
    /// Add a model to your runtime registry (the shipped registry.toml is not touched).
    Add(AddArgs),
    /// Remove a model from your runtime registry.
    Remove { model: String },
    /// Serve the registry's models over an OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Search the Hugging Face Hub for models (id, downloads, architecture, size, support).
    Search(SearchArgs),
    /// Download a model from the Hub into the HF cache (verified, resumable) and add it to
    /// your runtime registry.
    Pull(PullArgs),
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

/// Exit status of a command whose reader went away (`mlxengine embed ... | head -1`), as
/// a shell reports a process ended by SIGPIPE.
const BROKEN_PIPE_EXIT: i32 = 141;

/// `println!` panics when stdout is a pipe its reader closed (Rust ignores SIGPIPE, so the
/// write fails instead of ending the process, and restoring SIGPIPE would also end
/// `serve` and the isolated plugins' pipes): that one panic ends the process quietly, as
/// SIGPIPE would; every other panic reports as usual.
fn quiet_on_broken_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info)
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_stdout();
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
    let plugins =
        PluginSet::discover_isolating(&plugins::search_dirs(&cli.plugin_dirs), &cli.isolate);
    let engine = Engine::new(registry, plugins);
    if let Some(b) = &cli.memory_budget {
        let bytes =
            engine::fit::parse_size(b).map_err(|e| anyhow::anyhow!("--memory-budget: {e}"))?;
        engine.set_memory_budget(bytes);
    }
    Ok(engine)
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::PluginWorker { library } => {
            std::process::exit(engine::isolate::worker_main(library))
        }
        Command::Plugins { json } => cli::plugins::cmd_plugins(&engine(&cli)?, *json),
        Command::Models { kind, json } => {
            cli::models::cmd_models(&engine(&cli)?, kind.as_deref(), *json)
        }
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
                return cli::hub::cmd_hub_info(&engine, model, *json);
            }
            cli::info::cmd_info(
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
        Command::Embed(args) => cli::embed::cmd_embed(&engine(&cli)?, args),
        Command::Generate(args) => cli::generate::cmd_generate(
            &with_dtype(engine(&cli)?, &args.dtype, &args.kv_cache),
            args,
        ),
        Command::Chat(args) => {
            cli::chat::cmd_chat(&with_dtype(engine(&cli)?, &args.dtype, &None), args)
        }
        Command::Bench(args) => cli::bench::cmd_bench(
            &with_dtype(engine(&cli)?, &args.dtype, &args.kv_cache),
            args,
        ),
        Command::BenchImage(a) => cli::bench_image::cmd_bench_image(&engine(&cli)?, a),
        Command::BenchEmbed(a) => cli::bench::cmd_bench_embed(&engine(&cli)?, a),
        Command::BenchAbi(a) => cli::bench::cmd_bench_abi(&engine(&cli)?, a),
        Command::Import { gguf, out_dir } => cli::import::cmd_import(gguf, out_dir),
        Command::Perplexity(a) => cli::perplexity::cmd_perplexity(&engine(&cli)?, a),
        Command::Image(a) => cli::image::cmd_image(&engine(&cli)?, a),
        Command::Quantize(a) => cli::quantize::cmd_quantize(&engine(&cli)?, a),
        Command::Fuse(a) => cli::fuse::cmd_fuse(&engine(&cli)?, a),
        Command::Add(args) => cli::add::cmd_add(&cli.registries, args),
        Command::Remove { model } => cli::remove::cmd_remove(&cli.registries, model),
        Command::Device { json } => cli::device::cmd_device(&engine(&cli)?, *json),
        Command::Recommend { kind, json } => {
            cli::recommend::cmd_recommend(&engine(&cli)?, kind.as_deref(), *json)
        }
        Command::Search(a) => cli::hub::cmd_search(&engine(&cli)?, a),
        Command::Pull(a) => cli::hub::cmd_pull(&cli.registries, &engine(&cli)?, a),
        Command::Ls { json } => cli::hub::cmd_ls(&engine(&cli)?, *json),
        Command::Rm { repo } => cli::hub::cmd_rm(repo),
        Command::Serve(a) => {
            cli::serve::cmd_serve(with_dtype(engine(&cli)?, &a.dtype, &a.kv_cache), a)
        }
    }
}

/// The engine with `--dtype` applied to every model it loads, and `--kv-cache` to every
/// language model.
fn with_dtype(engine: Engine, dtype: &Option<String>, kv_cache: &Option<String>) -> Engine {
    engine.set_dtype_override(dtype.clone());
    engine.set_kv_cache_override(kv_cache.clone());
    engine
}
