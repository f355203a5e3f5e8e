//! MLXEngine `llm` provider on ggml (llama.cpp through `llama-cpp-2`): GGUF models of
//! every quantization llama.cpp reads (K-quants included), on CPU by default.
//!
//! It serves the same plugin-api requests as the MLX provider — chat templates rendered
//! by the same code (`textgen`), the same sampling parameters (llama.cpp's sampler
//! chain), stop strings, streaming with cancellation, batching (one llama.cpp sequence
//! per input) and the same figures — and reports a probe score that makes the host pick
//! it over MLX on CPU-only machines.

use llama_cpp_2::{
    context::params::LlamaContextParams,
    llama_backend::LlamaBackend,
    llama_batch::LlamaBatch,
    model::{params::LlamaModelParams, LlamaModel},
    sampling::LlamaSampler,
    token::LlamaToken,
};
use plugin_api::{
    text::{GenerateRequest, GenerateResponse, StreamControl, StreamEvent, TextInput},
    ErrorKind, Features, LoadRequest, ModelInfo, ModelKind, PluginDescriptor, PluginError, Probe,
    ProbeRequest,
};
use plugin_sdk::{LoadedModel, Plugin};
use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
    time::Instant,
};
use textgen::{cancel_running, Message, SeqOutput, Timings, Utf8Pieces};

/// GGUF `general.architecture` values this provider advertises (llama.cpp reads many
/// more; these are the ones the registry and tests use).
pub const ARCHITECTURES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "olmo2",
    "granite",
    "smollm3",
    "starcoder2",
];

/// Whether a llama.cpp GPU backend is compiled in (cargo features `cuda`, `metal`, `vulkan`).
const GPU_BUILD: bool = cfg!(any(feature = "cuda", feature = "metal", feature = "vulkan"));

/// Prompt tokens per `decode` call during prefill.
const PREFILL_CHUNK: usize = 512;

fn backend() -> Result<&'static LlamaBackend, PluginError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            LlamaBackend::init()
                .map(|mut b| {
                    if std::env::var_os("MLXENGINE_GGML_LOGS").is_none() {
                        b.void_logs();
                    }
                    b
                })
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| PluginError::new(ErrorKind::INTERNAL, format!("llama.cpp backend: {e}")))
}

/// Physical CPU cores (llama.cpp is fastest with one thread per core).
pub fn physical_cores() -> usize {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut cores = std::collections::HashSet::new();
    let mut phys = "";
    for line in cpuinfo.lines() {
        if let Some(v) = line.strip_prefix("physical id") {
            phys = v.trim_start_matches([' ', '\t', ':']);
        } else if let Some(v) = line.strip_prefix("core id") {
            cores.insert(format!("{phys}/{}", v.trim_start_matches([' ', '\t', ':'])));
        }
    }
    if cores.is_empty() {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cores.len()
    }
}

/// The GGUF file a model path names: itself, or the only `.gguf` in a directory.
fn gguf_file(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return path
            .extension()
            .is_some_and(|e| e == "gguf")
            .then(|| path.to_owned());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    files.sort();
    (files.len() == 1).then(|| files.remove(0))
}

fn err(kind: ErrorKind, model: &str, msg: impl std::fmt::Display) -> PluginError {
    PluginError::new(kind, format!("model `{model}`: {msg}"))
}

/// The plugin type exported through the ABI.
pub struct GgmlPlugin;

impl Plugin for GgmlPlugin {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor {
            name: "ggml-llm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Text generation on ggml / llama.cpp (GGUF, all quantization types, CPU)"
                .into(),
            kinds: vec![ModelKind::LLM].into(),
            architectures: plugin_sdk::rstrings(ARCHITECTURES),
            formats: plugin_sdk::rstrings(&["gguf"]),
            features: Features::STREAMING
                .union(Features::BATCHING)
                .union(Features::CUSTOM_PROMPTS)
                .union(Features::QUANTIZATION),
        }
    }

    fn probe(req: &ProbeRequest) -> Probe {
        let backend = if GPU_BUILD { "ggml-gpu" } else { "ggml-cpu" };
        if let Some(m) = req.model.as_ref().into_option() {
            let path = Path::new(m.path.as_str());
            if !m.path.is_empty() && gguf_file(path).is_none() {
                return Probe {
                    score: 0,
                    backend: backend.into(),
                    reason: "ggml reads GGUF files only; this model is not a GGUF".into(),
                };
            }
        }
        let cores = physical_cores();
        if GPU_BUILD {
            return Probe {
                score: 90,
                backend: backend.into(),
                reason: "llama.cpp with a GPU backend, all layers offloaded".into(),
            };
        }
        Probe {
            score: 60,
            backend: backend.into(),
            reason: format!("llama.cpp CPU kernels (SIMD, quantized matmul), {cores} threads")
                .into(),
        }
    }

    fn load(req: &LoadRequest) -> Result<Box<dyn LoadedModel>, PluginError> {
        let spec = &req.model;
        let id = spec.id.to_string();
        let path = Path::new(spec.path.as_str());
        let file = gguf_file(path).ok_or_else(|| {
            err(
                ErrorKind::UNSUPPORTED,
                &id,
                format!(
                    "{}: no single .gguf file to load (ggml reads GGUF only)",
                    path.display()
                ),
            )
        })?;
        let mut params = LlamaModelParams::default();
        if GPU_BUILD {
            // Offload every layer to the GPU backend compiled in.
            params = params.with_n_gpu_layers(999);
        }
        let model = LlamaModel::load_from_file(backend()?, &file, &params)
            .map_err(|e| err(ErrorKind::LOAD, &id, format!("{}: {e}", file.display())))?;
        let vocab = model.vocab();
        let text_of = |t: LlamaToken| {
            vocab
                .text(t)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let bos = text_of(vocab.bos());
        let eos = text_of(vocab.eos());
        let add_bos = vocab.should_add_bos();
        let mut extra_eos = Vec::new();
        for t in spec.extra_eos.iter() {
            match vocab.tokenize(t.as_bytes(), false, true).as_slice() {
                [one] => extra_eos.push(*one),
                _ => {
                    return Err(err(
                        ErrorKind::LOAD,
                        &id,
                        format!("extra_eos token {t:?} is not a single token"),
                    ))
                }
            }
        }
        let template = model.meta_val_str("tokenizer.chat_template").ok();
        let arch = model
            .meta_val_str("general.architecture")
            .unwrap_or_default();
        Ok(Box::new(GgmlModel {
            id,
            arch,
            system_prompt: spec
                .system_prompt
                .as_ref()
                .map(|s| s.to_string())
                .into_option(),
            template,
            bos,
            eos,
            add_bos,
            extra_eos,
            threads: physical_cores() as i32,
            model: Mutex::new(model),
        }))
    }
}

struct GgmlModel {
    id: String,
    arch: String,
    system_prompt: Option<String>,
    template: Option<String>,
    bos: String,
    eos: String,
    add_bos: bool,
    extra_eos: Vec<LlamaToken>,
    threads: i32,
    model: Mutex<LlamaModel>,
}

struct Seq {
    prompt: Vec<LlamaToken>,
    pos: i32,
    pieces: Utf8Pieces,
    sampler: LlamaSampler,
    /// Index of this sequence's logits in the last decoded batch.
    logits_at: i32,
    out: SeqOutput,
}

fn sampler(req: &GenerateRequest, n_vocab: i32, row: u64, fallback: u64) -> LlamaSampler {
    let s = &req.sampling;
    let mut chain = Vec::new();
    if s.repetition_penalty != 1.0 || s.presence_penalty != 0.0 || s.frequency_penalty != 0.0 {
        // -1: over the whole context, like the MLX provider (prompt included).
        chain.push(LlamaSampler::penalties(
            n_vocab,
            -1,
            s.repetition_penalty,
            s.frequency_penalty,
            s.presence_penalty,
        ));
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if s.top_k > 0 {
            chain.push(LlamaSampler::top_k(s.top_k as i32));
        }
        if s.top_p > 0.0 && s.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(s.top_p, 1));
        }
        if s.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(s.min_p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        let seed = s.seed.into_option().unwrap_or(fallback).wrapping_add(row);
        chain.push(LlamaSampler::dist(seed as u32));
    }
    LlamaSampler::chain_simple(chain)
}

fn log_softmax_at(logits: &[f32], token: usize) -> f32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + logits
        .iter()
        .map(|x| f64::from(x - m).exp())
        .sum::<f64>()
        .ln() as f32;
    logits.get(token).map_or(0.0, |l| l - lse)
}

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches("kB").trim().to_owned())
            })
        })
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl GgmlModel {
    fn prompt_tokens(
        &self,
        model: &LlamaModel,
        input: &TextInput,
        i: usize,
    ) -> Result<Vec<LlamaToken>, PluginError> {
        let bad = |msg: String| err(ErrorKind::INVALID_REQUEST, &self.id, msg);
        let vocab = model.vocab();
        let tokens = if input.messages.is_empty() {
            if input.prompt.is_empty() {
                return Err(bad(format!("input #{i}: the prompt is empty")));
            }
            vocab.tokenize(input.prompt.as_bytes(), self.add_bos, true)
        } else {
            if input.messages.iter().any(|m| !m.images.is_empty()) {
                return Err(bad(format!(
                    "input #{i}: image inputs need a vision-language (vlm) model"
                )));
            }
            let template = self.template.as_deref().ok_or_else(|| {
                bad("the model has no chat template; send a raw prompt instead".into())
            })?;
            let mut msgs: Vec<Message<'_>> = Vec::new();
            if let Some(sys) = self
                .system_prompt
                .as_deref()
                .filter(|_| !input.messages.iter().any(|m| m.role.as_str() == "system"))
            {
                msgs.push(Message {
                    role: "system",
                    content: sys,
                });
            }
            msgs.extend(input.messages.iter().map(|m| Message {
                role: m.role.as_str(),
                content: m.content.as_str(),
            }));
            let text = textgen::render_chat(template, &msgs, &self.bos, &self.eos).map_err(bad)?;
            vocab.tokenize(text.as_bytes(), false, true)
        };
        if tokens.is_empty() {
            return Err(bad(format!("input #{i}: the prompt has no tokens")));
        }
        Ok(tokens)
    }
}

impl LoadedModel for GgmlModel {
    fn info(&self) -> ModelInfo {
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        ModelInfo {
            id: self.id.as_str().into(),
            kind: ModelKind::LLM,
            architecture: self.arch.as_str().into(),
            backend: if GPU_BUILD { "ggml-gpu" } else { "ggml-cpu" }.into(),
            dtype: "gguf".into(),
            dim: m.n_embd() as u32,
            max_tokens: m.n_ctx_train(),
            parameters: m.n_params(),
            weight_bytes: m.size(),
        }
    }

    fn generate(
        &self,
        req: &GenerateRequest,
        sink: &mut dyn FnMut(&StreamEvent) -> StreamControl,
    ) -> Result<GenerateResponse, PluginError> {
        let started = Instant::now();
        let bad = |msg: String| err(ErrorKind::INVALID_REQUEST, &self.id, msg);
        if req.inputs.is_empty() {
            return Err(bad("the request has no inputs".into()));
        }
        if req.max_tokens == 0 {
            return Err(bad("max_tokens must be at least 1".into()));
        }
        let model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let ctx_train = model.n_ctx_train() as usize;
        let prompts = req
            .inputs
            .iter()
            .enumerate()
            .map(|(i, inp)| self.prompt_tokens(&model, inp, i))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, p) in prompts.iter().enumerate() {
            if p.len() >= ctx_train {
                return Err(bad(format!(
                    "input #{i}: the prompt has {} tokens, the model's context is {ctx_train}",
                    p.len()
                )));
            }
        }
        let b = prompts.len();
        let per_seq = prompts
            .iter()
            .map(|p| (p.len() + req.max_tokens as usize).min(ctx_train))
            .max()
            .unwrap_or(1);
        let per_seq = per_seq.div_ceil(256) * 256;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new((per_seq * b) as u32))
            .with_n_batch(PREFILL_CHUNK as u32)
            .with_n_ubatch(PREFILL_CHUNK as u32)
            .with_n_seq_max(b as u32)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let mut ctx = model.new_context(backend()?, params).map_err(|e| {
            err(
                ErrorKind::RESOURCE_EXHAUSTED,
                &self.id,
                format!("llama.cpp context: {e}"),
            )
        })?;
        let vocab = model.vocab();
        let n_vocab = model.n_vocab();
        let stops: Vec<String> = req
            .stop
            .iter()
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let fallback_seed = started.elapsed().as_nanos() as u64 ^ u64::from(std::process::id());
        let mut seqs: Vec<Seq> = prompts
            .into_iter()
            .enumerate()
            .map(|(i, prompt)| {
                let mut s = sampler(req, n_vocab, i as u64, fallback_seed);
                s.accept_many(prompt.iter());
                Seq {
                    pos: 0,
                    out: SeqOutput::new(prompt.len()),
                    prompt,
                    pieces: Utf8Pieces::default(),
                    sampler: s,
                    logits_at: 0,
                }
            })
            .collect();

        // Prefill each sequence; its logits for the next token are sampled right after.
        let mut batch = LlamaBatch::new(PREFILL_CHUNK.max(b), b as i32);
        let prefill_start = Instant::now();
        let mut first: Vec<Option<(LlamaToken, Option<f32>)>> = vec![None; b];
        for (i, seq) in seqs.iter_mut().enumerate() {
            let n = seq.prompt.len();
            for (c, chunk) in seq.prompt.chunks(PREFILL_CHUNK).enumerate() {
                batch.clear();
                for (j, t) in chunk.iter().enumerate() {
                    let pos = c * PREFILL_CHUNK + j;
                    batch
                        .add(*t, pos as i32, &[i as i32], pos == n - 1)
                        .map_err(|e| err(ErrorKind::INTERNAL, &self.id, e))?;
                }
                ctx.decode(&mut batch)
                    .map_err(|e| err(ErrorKind::INTERNAL, &self.id, format!("decode: {e}")))?;
            }
            seq.pos = n as i32;
            seq.logits_at = batch.n_tokens() - 1;
            let tok = seq.sampler.sample(&ctx, seq.logits_at);
            let lp = req
                .logprobs
                .then(|| log_softmax_at(ctx.get_logits_ith(seq.logits_at), tok.0 as usize));
            first[i] = Some((tok, lp));
        }
        let prefill_s = prefill_start.elapsed().as_secs_f64();
        let first_token_at = Instant::now();
        let mut pending = first;
        let mut cancelled = false;
        loop {
            // Account the tokens sampled in the previous step.
            for (row, seq) in seqs.iter_mut().enumerate() {
                let Some((tok, logprob)) = pending[row].take() else {
                    continue;
                };
                let eos = vocab.is_eog(tok) || self.extra_eos.contains(&tok);
                let last = seq.out.tokens.len() + 1 >= req.max_tokens as usize
                    || seq.pos as usize + 1 >= ctx_train;
                let mut text = if eos {
                    String::new()
                } else {
                    seq.pieces.push(&vocab.token_to_piece(tok, false, None))
                };
                if eos || last {
                    text.push_str(&seq.pieces.flush());
                }
                let ev = seq
                    .out
                    .accept(row, tok.0 as u32, logprob, &text, eos, last, &stops);
                if req.stream && sink(&ev) == StreamControl::Stop {
                    cancelled = true;
                    break;
                }
            }
            if cancelled {
                cancel_running(seqs.iter_mut().map(|s| &mut s.out), sink);
                break;
            }
            if seqs.iter().all(|s| !s.out.running()) {
                break;
            }
            // One decode step for every running sequence.
            batch.clear();
            for (row, seq) in seqs.iter_mut().enumerate().filter(|(_, s)| s.out.running()) {
                let last = LlamaToken(
                    *seq.out
                        .tokens
                        .last()
                        .expect("running sequences have a token") as i32,
                );
                seq.logits_at = batch.n_tokens();
                batch
                    .add(last, seq.pos, &[row as i32], true)
                    .map_err(|e| err(ErrorKind::INTERNAL, &self.id, e))?;
                seq.pos += 1;
            }
            ctx.decode(&mut batch)
                .map_err(|e| err(ErrorKind::INTERNAL, &self.id, format!("decode: {e}")))?;
            for (row, seq) in seqs.iter_mut().enumerate().filter(|(_, s)| s.out.running()) {
                let tok = seq.sampler.sample(&ctx, seq.logits_at);
                let lp = req
                    .logprobs
                    .then(|| log_softmax_at(ctx.get_logits_ith(seq.logits_at), tok.0 as usize));
                pending[row] = Some((tok, lp));
            }
        }
        drop(ctx);
        let done = Instant::now();
        let timings = Timings {
            started,
            prefill_s,
            first_token: first_token_at,
            done,
        };
        let stats = textgen::stats(
            &seqs.iter().map(|s| &s.out).collect::<Vec<_>>(),
            &timings,
            peak_rss(),
        );
        let outputs = seqs.into_iter().map(|s| s.out.into_output()).collect();
        Ok(GenerateResponse { outputs, stats })
    }
}

plugin_sdk::export_plugin!(GgmlPlugin);
