//! `mlxengine bench` (generation speed), `bench-embed` and `bench-abi`: the figures of
//! `bench/run_all.sh`.

use super::print_json;
use super::{
    generate::{checked, SamplingArgs},
    human_bytes,
};
use anyhow::{bail, Result};
use clap::Args;
use engine::request::{Embed, Generate};
use engine::{fit::human, Engine};
use plugin_api::text::{ChatMessage, ContentPart, GenerateRequest, TextInput};
use plugin_api::{
    embed::{EmbedRequest, Pooling},
    text::{StreamControl, StreamEvent},
    ModelKind,
};
use serde_json::json;
use std::time::Instant;

#[derive(Args)]
pub struct BenchEmbedArgs {
    /// Registry id of an embedding model (default: the registry's default).
    #[arg(long, short)]
    pub model: Option<String>,
    /// Batch sizes to measure (sentences per call).
    #[arg(long, value_delimiter = ',', default_value = "1,256")]
    pub batch: Vec<usize>,
    /// Measured calls per batch size (after one warm-up); at least 256 sentences in all.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Force a provider: `mlx`, `ggml`, or a plugin name (default: best probe score).
    #[arg(long)]
    pub backend: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BenchAbiArgs {
    /// Registry id of a language model (default: the registry's default LLM).
    #[arg(long, short)]
    pub model: Option<String>,
    /// Calls per measured batch.
    #[arg(long, default_value_t = 200_000)]
    pub calls: u32,
    #[arg(long)]
    pub json: bool,
}

/// Short, distinct English sentences (8–14 words), the same for every tool.
pub fn sentences(n: usize) -> Vec<String> {
    const SUBJ: [&str; 8] = [
        "The old fisherman",
        "A young teacher",
        "Our neighbor",
        "The small robot",
        "My sister",
        "The city council",
        "A tired traveler",
        "The orchestra",
    ];
    const VERB: [&str; 8] = [
        "carefully repaired",
        "quietly watched",
        "happily painted",
        "slowly read",
        "proudly presented",
        "suddenly found",
        "patiently explained",
        "eagerly described",
    ];
    const OBJ: [&str; 8] = [
        "the broken wooden boat",
        "a map of the northern coast",
        "the letters from last winter",
        "an unusual green stone",
        "the plans for the new bridge",
        "a song about the river",
        "the results of the long experiment",
        "a box of forgotten photographs",
    ];
    const TAIL: [&str; 4] = [
        "before sunrise.",
        "in the afternoon.",
        "near the harbor.",
        "after dinner.",
    ];
    (0..n)
        .map(|i| {
            format!(
                "{} {} {} {}",
                SUBJ[i % 8],
                VERB[(i / 8) % 8],
                OBJ[(i / 64) % 8],
                TAIL[(i / 512 + i) % 4]
            )
        })
        .collect()
}

/// (median, min, max) of at least one measurement.
pub fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

pub fn cmd_bench_embed(engine: &Engine, a: &BenchEmbedArgs) -> Result<()> {
    let model = match &a.model {
        Some(m) => m.clone(),
        None => engine.default_model(ModelKind::EMBED)?,
    };
    if a.runs == 0 || a.batch.contains(&0) {
        bail!("--runs and every --batch must be at least 1");
    }
    if let Some(b) = a.batch.iter().find(|&&b| b > engine::request::MAX_TEXTS) {
        bail!(
            "--batch {b}: one embedding request takes at most {} texts",
            engine::request::MAX_TEXTS
        );
    }
    let baseline = engine::device::rss_now();
    let req = |texts: &[String]| {
        Embed::new(EmbedRequest {
            texts: texts.iter().map(|t| t.as_str().into()).collect(),
            pooling: Pooling::MODEL_DEFAULT,
            normalize: None.into(),
            truncate: true,
            options: "".into(),
        })
    };
    let mut rows = Vec::new();
    for &b in &a.batch {
        let pool = sentences(b.max(256));
        let backend = a.backend.as_deref();
        engine.embed_on(&model, backend, &req(&pool[..b])?)?; // warm-up (and load)
                                                              // Enough calls to embed at least 256 sentences, at least --runs.
        let calls = a.runs.max(256usize.div_ceil(b));
        let mut per_s = Vec::new();
        for c in 0..calls {
            let start = (c * b) % pool.len();
            let batch: Vec<String> = pool.iter().cycle().skip(start).take(b).cloned().collect();
            let t = Instant::now();
            engine.embed_on(&model, backend, &req(&batch)?)?;
            per_s.push(b as f64 / t.elapsed().as_secs_f64());
        }
        rows.push((b, calls, stats(per_s)));
    }
    let peak = engine::device::rss_peak();
    if a.json {
        let r: Vec<_> = rows
            .iter()
            .map(|(b, calls, s)| {
                json!({"batch": b, "calls": calls,
                       "sentences_per_s": {"median": s.0, "min": s.1, "max": s.2}})
            })
            .collect();
        return print_json(&json!({
            "model": model, "plugin": engine.served_by(&model, a.backend.as_deref()), "results": r,
            "peak_rss_bytes": peak, "baseline_rss_bytes": baseline,
        }));
    }
    println!(
        "{model} on {} (short sentences; median, min–max):",
        engine
            .served_by(&model, a.backend.as_deref())
            .unwrap_or_default()
    );
    for (b, calls, s) in &rows {
        println!(
            "  batch {b:>4}: {:>8.1} sentences/s ({:.1}–{:.1}; {calls} calls)",
            s.0, s.1, s.2
        );
    }
    println!("  peak memory {}", human(peak));
    Ok(())
}

pub fn cmd_bench_abi(engine: &Engine, a: &BenchAbiArgs) -> Result<()> {
    let model = match &a.model {
        Some(m) => m.clone(),
        None => engine.default_model(ModelKind::LLM)?,
    };
    // A real generation for the per-token time the overhead is compared with.
    let req = checked(GenerateRequest {
        inputs: vec![TextInput {
            prompt: "The history of the lighthouse begins".into(),
            messages: Default::default(),
        }]
        .into(),
        sampling: Default::default(),
        max_tokens: 64,
        stop: Default::default(),
        logprobs: false,
        stream: true,
        adapter: None.into(),
        options: "".into(),
    })?;
    let mut noop = |_: &StreamEvent| StreamControl::Continue;
    engine.generate(&model, &req, &mut noop)?;
    let r = engine.generate(&model, &req, &mut noop)?;
    let per_token_ns = 1e9 / r.stats.decode_tokens_per_s.max(1e-9);
    let m = engine
        .loaded_model(&model, None)
        .expect("loaded by the generation above");
    let (round_trip, callback) = engine.abi_overhead_ns(&m, a.calls);
    let pct = |ns: f64| 100.0 * ns / per_token_ns;
    if a.json {
        return print_json(&json!({
            "model": model, "plugin": m.plugin, "per_token_ns": per_token_ns,
            "round_trip_ns": round_trip, "token_callback_ns": callback,
            "round_trip_pct_of_token": pct(round_trip), "token_callback_pct_of_token": pct(callback),
        }));
    }
    println!(
        "{model} on {}: {:.0} µs per decoded token",
        m.plugin,
        per_token_ns / 1e3
    );
    println!(
        "  plugin call round trip (Model::info)  {round_trip:>8.0} ns  ({:.4}% of a token)",
        pct(round_trip)
    );
    println!(
        "  streamed token callback (TokenSink)   {callback:>8.0} ns  ({:.4}% of a token)",
        pct(callback)
    );
    Ok(())
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Load dtype for MLX models loaded by this command (float32, bfloat16, float16);
    /// default: the device policy (float32 on CPU when it fits the budget).
    #[arg(long)]
    pub(crate) dtype: Option<String>,
    /// KV-cache type of every language model this command loads (f32, f16, bf16, q8_0,
    /// q4_0), over the registry's `kv_cache`: q8_0 takes about a third of f32's memory.
    #[arg(long = "kv-cache", value_parser = engine::registry::KV_CACHE_TYPES)]
    pub(crate) kv_cache: Option<String>,
    /// Registry id of a language model (default: the registry's default LLM).
    #[arg(long, short)]
    pub(crate) model: Option<String>,
    /// Prompt text (default: a synthetic prompt of about --prompt-tokens tokens).
    #[arg(long)]
    pub(crate) prompt: Option<String>,
    /// Send the prompt through the chat template.
    #[arg(long)]
    pub(crate) chat: bool,
    /// An image before the prompt (repeatable; implies --chat), for a vision-language
    /// model (the default model is then the registry's default `vlm`).
    #[arg(long = "image", value_name = "PATH")]
    pub(crate) images: Vec<std::path::PathBuf>,
    /// Length of the synthetic prompt, in words (≈ tokens).
    #[arg(long, default_value_t = 128)]
    pub(crate) prompt_tokens: usize,
    /// New tokens per run.
    #[arg(long, default_value_t = 128)]
    pub(crate) max_tokens: u32,
    /// Measured runs (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Force a provider: `mlx`, `ggml`, or a plugin name (default: best probe score).
    #[arg(long)]
    pub(crate) backend: Option<String>,
    #[command(flatten)]
    pub(crate) adapters: super::adapter::AdapterArgs,
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn cmd_bench(engine: &Engine, a: &BenchArgs) -> Result<()> {
    let model = match &a.model {
        Some(m) => m.clone(),
        None if !a.images.is_empty() => engine.default_model(ModelKind::VLM)?,
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
    let input = if a.chat || !a.images.is_empty() {
        let mut parts = a
            .images
            .iter()
            .map(|p| super::generate::image_part(p))
            .collect::<Result<Vec<_>>>()?;
        parts.push(ContentPart::text(prompt.as_str()));
        TextInput {
            prompt: "".into(),
            messages: vec![ChatMessage {
                role: "user".into(),
                parts: parts.into(),
            }]
            .into(),
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
    // Every run does the work: a provider's prompt cache would replay a repeated greedy
    // answer (or reuse the prompt) from the second run on.
    let req = sampling.request(vec![input], false)?.without_prompt_cache();
    let req = a.adapters.apply(engine, &model, req)?;
    let mut noop = |_: &plugin_api::text::StreamEvent| StreamControl::Continue;
    let load_start = std::time::Instant::now();
    let backend = a.backend.as_deref();
    let warm = engine.generate_on(&model, backend, &sampling_short(&req)?, &mut noop)?;
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    let mut runs = Vec::new();
    for _ in 0..a.runs {
        runs.push(engine.generate_on(&model, backend, &req, &mut noop)?);
    }
    let stat = |f: &dyn Fn(&plugin_api::text::GenerateResponse) -> f64| {
        stats(runs.iter().map(f).collect())
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
pub(crate) fn sampling_short(req: &Generate) -> Result<Generate> {
    let mut r = req.clone().into_inner();
    r.max_tokens = r.max_tokens.min(8);
    Ok(checked(r)?.with_adapters(req.adapters().to_vec())?)
}
