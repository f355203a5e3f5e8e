//! `mlxengine generate`, and the sampling flags it shares with `chat` and `bench`.

use super::{human_bytes, memory_json, print_json};
use anyhow::{Context, Result};
use clap::Args;
use engine::request::Generate;
use engine::Engine;
use plugin_api::{
    text::{ChatMessage, ContentPart, GenerateRequest, SamplingParams, StreamControl, TextInput},
    ModelKind,
};
use serde_json::json;
use std::io::Write;

#[derive(Args, Clone)]
pub(crate) struct SamplingArgs {
    /// Most new tokens.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_tokens: u32,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) temperature: f32,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub(crate) top_k: u32,
    /// Drop tokens below min-p × the top probability (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) repetition_penalty: f32,
    /// Presence penalty (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) presence_penalty: f32,
    /// Frequency penalty (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) frequency_penalty: f32,
    /// RNG seed (same seed, same output).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Stop string (repeatable); generation stops before it.
    #[arg(long = "stop")]
    pub(crate) stop: Vec<String>,
}

impl SamplingArgs {
    /// The checked request for `inputs` with these flags.
    pub(crate) fn request(&self, inputs: Vec<TextInput>, stream: bool) -> Result<Generate> {
        checked(GenerateRequest {
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
        })
    }
}

/// Largest image file read (the plugin refuses images over its pixel limit from their
/// headers; this bounds what is read to get there).
const MAX_IMAGE_FILE: u64 = 64 << 20;

/// An image file as a content part (`--image`, chat's `/image`).
pub(crate) fn image_part(path: &std::path::Path) -> Result<ContentPart> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("image {}", path.display()))?
        .len();
    if len > MAX_IMAGE_FILE {
        anyhow::bail!(
            "image {}: {} is over the {} limit",
            path.display(),
            human_bytes(len),
            human_bytes(MAX_IMAGE_FILE)
        );
    }
    let data = std::fs::read(path).with_context(|| format!("image {}", path.display()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => "",
    };
    Ok(ContentPart::image(data, mime))
}

/// `req` checked, a refusal naming the flag (or the prompt) it came from.
pub(crate) fn checked(req: GenerateRequest) -> Result<Generate> {
    Generate::new(req).map_err(|e| {
        if e.field.starts_with("inputs") {
            anyhow::anyhow!("the prompt: {}", e.message)
        } else {
            anyhow::anyhow!("--{}: {}", e.field.replace('_', "-"), e.message)
        }
    })
}

#[derive(Args)]
pub(crate) struct GenerateArgs {
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
    /// The prompt (or give it as the last argument).
    #[arg(long, short)]
    pub(crate) prompt: Option<String>,
    /// Prompt as a positional argument.
    #[arg(conflicts_with = "prompt")]
    pub(crate) text: Option<String>,
    /// Send the prompt as a user chat message through the model's chat template.
    #[arg(long)]
    pub(crate) chat: bool,
    /// Force a provider: `mlx`, `ggml`, or a plugin name (default: best probe score).
    #[arg(long)]
    pub(crate) backend: Option<String>,
    /// System prompt (implies --chat).
    #[arg(long)]
    pub(crate) system: Option<String>,
    /// An image for a vision-language model (repeatable; implies --chat): PNG, JPEG,
    /// WebP or GIF, placed before the prompt in the user message.
    #[arg(long = "image", value_name = "PATH")]
    pub(crate) images: Vec<std::path::PathBuf>,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    #[command(flatten)]
    pub(crate) adapters: super::adapter::AdapterArgs,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn cmd_generate(engine: &Engine, a: &GenerateArgs) -> Result<()> {
    let model = match &a.model {
        Some(m) => m.clone(),
        None => engine.default_model(ModelKind::LLM)?,
    };
    let prompt = a
        .prompt
        .clone()
        .or_else(|| a.text.clone())
        .context("no prompt: give --prompt TEXT or TEXT")?;
    let input = if a.chat || a.system.is_some() || !a.images.is_empty() {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::text("system", s));
        }
        let mut parts = a
            .images
            .iter()
            .map(|p| image_part(p))
            .collect::<Result<Vec<_>>>()?;
        parts.push(ContentPart::text(prompt.as_str()));
        msgs.push(ChatMessage {
            role: "user".into(),
            parts: parts.into(),
        });
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
    let req = a.sampling.request(vec![input], !a.json)?;
    let req = a.adapters.apply(engine, &model, req)?;
    let mut out = std::io::stdout().lock();
    let baseline_rss = engine::device::rss_now();
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
