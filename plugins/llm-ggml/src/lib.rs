//! MLXEngine `llm` provider on ggml (llama.cpp through `llama-cpp-2`): GGUF models of
//! every quantization llama.cpp reads (K-quants included), on CPU by default.
//!
//! It serves the same plugin-api requests as the MLX provider — chat templates rendered
//! by the same code (`textgen`), the same sampling parameters (llama.cpp's sampler
//! chain), stop strings, streaming with cancellation, batching (one llama.cpp sequence
//! per input) and the same figures — and reports a probe score that makes the host pick
//! it over MLX on CPU-only machines.
//!
//! It is also an `embed` provider ([`embed`]): BERT checkpoints converted once to GGUF
//! and run by llama.cpp in embeddings mode. One plugin for both, as both share one
//! llama.cpp runtime per process (its CPU backend variant is loaded once).

use llama_cpp_2::{
    context::LlamaContext,
    llama_backend::LlamaBackend,
    model::{params::LlamaModelParams, LlamaModel},
    token::LlamaToken,
};
use plugin_api::{
    text::{GenerateRequest, GenerateResponse},
    DeviceInfo, ErrorKind, EstimateRequest, Features, LoadRequest, MemoryEstimate, ModelInfo,
    ModelKind, ModelSpec, PluginDescriptor, PluginError, Probe, ProbeRequest,
};
use plugin_sdk::{LoadedModel, Plugin, Sink};
use std::{
    ffi::CStr,
    path::Path,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, OnceLock,
    },
};

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

/// Vision-language architectures (the registry's `model_type` names) served from a GGUF
/// with its `mmproj*.gguf` projector through llama.cpp's `mtmd` ([`media`]).
pub const VLM_ARCHITECTURES: &[&str] = &["qwen2_vl"];

/// `model_type`s of the embedding checkpoints [`embed`] converts.
pub const EMBED_ARCHITECTURES: &[&str] = &["bert"];

/// Whether a llama.cpp GPU backend is compiled in (cargo features `cuda`, `metal`, `vulkan`).
const GPU_BUILD: bool = cfg!(any(feature = "cuda", feature = "metal", feature = "vulkan"));

/// Prompt tokens per `decode` call during prefill.
const PREFILL_CHUNK: usize = 512;

/// Sequences decoded together (llama.cpp sequence ids of the persistent context).
const MAX_SEQS: usize = 16;

/// Smallest KV cache (tokens over all sequences), so requests can join a running batch.
const MIN_KV_CELLS: usize = 4096;

mod adapters;
mod cpu_backend;
pub mod embed;
mod estimate;
mod generate;
#[cfg(test)]
mod gguf_parity;
mod media;
mod prefix;
pub mod quantize;
mod settings;
mod teacher;

pub use teacher::Scorer;

use cpu_backend::CpuBackend;
use settings::Settings;

/// llama.cpp, initialised once per process: the CPU backend variant for this CPU is
/// loaded first (see [`cpu_backend`]), then the llama backend.
fn runtime() -> Result<&'static (LlamaBackend, CpuBackend), PluginError> {
    static RUNTIME: OnceLock<Result<(LlamaBackend, CpuBackend), String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            if std::env::var_os("MLXENGINE_GGML_LOGS").is_none() {
                silence_llama_logs();
            }
            let cpu = cpu_backend::load()?;
            let b = LlamaBackend::init().map_err(|e| format!("llama.cpp backend: {e}"))?;
            Ok((b, cpu))
        })
        .as_ref()
        .map_err(|e| PluginError::new(ErrorKind::INTERNAL, e.as_str()))
}

/// llama.cpp's error lines since the last [`take_llama_errors`], at most
/// [`MAX_KEPT_ERRORS`] bytes: its API answers a failed load with a bare null, the reason is
/// only in its log. Shared by all threads (loads are rare; two at once may mix lines).
static LLAMA_ERRORS: Mutex<String> = Mutex::new(String::new());
/// The level of llama.cpp's last log line (`CONT` lines continue it).
static LAST_LEVEL: AtomicU32 = AtomicU32::new(0);
const MAX_KEPT_ERRORS: usize = 4096;

/// Keep llama.cpp's and ggml's error lines (for load errors), hand a running
/// quantization its progress lines, drop the rest.
fn silence_llama_logs() {
    unsafe extern "C" fn keep_errors(
        level: llama_cpp_sys_2::ggml_log_level,
        text: *const std::os::raw::c_char,
        _user_data: *mut std::os::raw::c_void,
    ) {
        let level = if level == llama_cpp_sys_2::GGML_LOG_LEVEL_CONT {
            LAST_LEVEL.load(Ordering::Relaxed)
        } else {
            LAST_LEVEL.store(level, Ordering::Relaxed);
            level
        };
        if text.is_null() {
            return;
        }
        // SAFETY: llama.cpp passes a NUL-terminated string valid for this call.
        let line = unsafe { CStr::from_ptr(text) }.to_string_lossy();
        if level == llama_cpp_sys_2::GGML_LOG_LEVEL_INFO {
            quantize::log_line(&line);
        }
        if level != llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR {
            return;
        }
        let mut kept = LLAMA_ERRORS.lock().unwrap_or_else(|p| p.into_inner());
        kept.push_str(&line);
        if kept.len() > MAX_KEPT_ERRORS {
            let cut = kept.len() - MAX_KEPT_ERRORS;
            let cut = (cut..kept.len())
                .find(|&i| kept.is_char_boundary(i))
                .unwrap_or(0);
            kept.drain(..cut);
        }
    }
    // SAFETY: installs a callback that only reads its text argument; llama_log_set also
    // sets ggml's logger, mtmd (the vision projector) and its helper have their own.
    unsafe {
        llama_cpp_sys_2::llama_log_set(Some(keep_errors), std::ptr::null_mut());
        llama_cpp_sys_2::mtmd_log_set(Some(keep_errors), std::ptr::null_mut());
        llama_cpp_sys_2::mtmd_helper_log_set(Some(keep_errors), std::ptr::null_mut());
    }
}

/// llama.cpp's error lines since the last call, as one line (empty if none).
fn take_llama_errors() -> String {
    let mut kept = LLAMA_ERRORS.lock().unwrap_or_else(|p| p.into_inner());
    let lines: Vec<&str> = kept
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let out = lines.join("; ");
    kept.clear();
    out
}

fn backend() -> Result<&'static LlamaBackend, PluginError> {
    runtime().map(|(b, _)| b)
}

/// Threads for llama.cpp: one per physical core (it is fastest so), as the host measured
/// them; the logical CPUs when the device says nothing.
fn compute_threads(device: &DeviceInfo) -> usize {
    match device.physical_cores {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
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
            description:
                "Text generation on ggml / llama.cpp (GGUF, all quantization types, CPU), \
                 vision-language GGUFs with their projector (llama.cpp's mtmd), BERT \
                 sentence embeddings (converted to GGUF once), and GGUF quantization with \
                 llama.cpp's quantizer"
                    .into(),
            kinds: vec![
                ModelKind::LLM,
                ModelKind::VLM,
                ModelKind::EMBED,
                ModelKind::QUANT,
            ]
            .into(),
            architectures: ARCHITECTURES
                .iter()
                .chain(VLM_ARCHITECTURES)
                .chain(EMBED_ARCHITECTURES)
                .map(|a| (*a).into())
                .collect(),
            formats: plugin_sdk::rstrings(&["gguf", "safetensors"]),
            features: Features::STREAMING
                .union(Features::EMBEDDINGS)
                .union(Features::BATCHING)
                .union(Features::CONTINUOUS_BATCHING)
                .union(Features::CUSTOM_PROMPTS)
                .union(Features::QUANTIZATION)
                .union(Features::LORA_ADAPTERS)
                .union(Features::VISION_LANGUAGE)
                .union(Features::MULTI_MODAL_INPUT),
        }
    }

    fn probe(req: &ProbeRequest) -> Probe {
        let backend = if GPU_BUILD { "ggml-gpu" } else { "ggml-cpu" };
        let refuse = |reason: String| Probe {
            score: 0,
            backend: backend.into(),
            reason: reason.into(),
        };
        let mut settings = Settings::device_default(GPU_BUILD, compute_threads(&req.device));
        if let Some(m) = req.model.as_ref().into_option() {
            if m.kind == ModelKind::QUANT {
                let (score, reason) = quantize::probe(m);
                return Probe {
                    score,
                    backend: backend.into(),
                    reason: reason.into(),
                };
            }
            if m.kind == ModelKind::EMBED {
                if let Err(e) = runtime() {
                    return refuse(e.message.to_string());
                }
                return embed::probe(m, &req.device, backend);
            }
            if EMBED_ARCHITECTURES.contains(&m.architecture.as_str()) {
                return refuse(format!(
                    "`{}` is an encoder, not a generator",
                    m.architecture
                ));
            }
            let path = Path::new(m.path.as_str());
            if !m.path.is_empty() && gguf::model_file(path).is_none() {
                return refuse("ggml reads GGUF files only; this model is not a GGUF".into());
            }
            if m.kind == ModelKind::VLM {
                if !VLM_ARCHITECTURES.contains(&m.architecture.as_str()) {
                    return refuse(format!(
                        "vision-language architecture `{}` not served on ggml (supported: {})",
                        m.architecture,
                        VLM_ARCHITECTURES.join(", ")
                    ));
                }
                if !m.path.is_empty() && gguf::mmproj_file(path).is_none() {
                    return refuse(
                        "a vision-language GGUF needs its projector beside it (one mmproj*.gguf)"
                            .into(),
                    );
                }
            }
            settings = match settings.with_options(m.options.as_str()) {
                Ok(s) => s,
                Err(e) => return refuse(format!("registry options: {e}")),
            };
        }
        let cpu = match runtime() {
            Ok((_, cpu)) => cpu,
            Err(e) => return refuse(e.message.to_string()),
        };
        let (score, what) = if GPU_BUILD {
            (
                90,
                "llama.cpp with a GPU backend, all layers offloaded".to_owned(),
            )
        } else {
            (60, cpu.describe())
        };
        Probe {
            score,
            backend: backend.into(),
            reason: format!("{what}; {}", settings.describe()).into(),
        }
    }

    fn convert(
        req: &plugin_api::quant::QuantizeRequest,
        progress: &mut dyn plugin_sdk::Progress,
    ) -> Result<plugin_api::quant::QuantizeReport, PluginError> {
        quantize::convert(req, progress)
    }

    fn load(req: &LoadRequest) -> Result<Box<dyn LoadedModel>, PluginError> {
        if req.model.kind == ModelKind::QUANT {
            return Err(PluginError::unsupported(
                "loading a `quant` entry (conversions run through `convert`)",
            ));
        }
        if req.model.kind == ModelKind::EMBED {
            return Ok(Box::new(embed::GgmlEncoder::open(&req.model, &req.device)?));
        }
        Ok(Box::new(GgmlModel::open(&req.model, &req.device)?))
    }

    fn estimate(req: &EstimateRequest) -> Result<MemoryEstimate, PluginError> {
        if req.model.kind == ModelKind::EMBED {
            return embed::estimate(req);
        }
        estimate::estimate(req)
    }
}

/// The context settings for `spec` on `device`: the device's defaults, then the
/// registry's options.
fn settings_for(spec: &ModelSpec, device: &DeviceInfo) -> Result<Settings, PluginError> {
    Settings::device_default(GPU_BUILD, compute_threads(device))
        .with_options(spec.options.as_str())
        .map_err(|e| {
            err(
                ErrorKind::INVALID_REQUEST,
                &spec.id,
                format!("registry options: {e}"),
            )
        })
}

/// Load the GGUF `file` for model `id` (every layer on the GPU backend if one is compiled
/// in); a failure carries llama.cpp's own error lines.
fn load_gguf(id: &str, file: &Path) -> Result<LlamaModel, PluginError> {
    let mut params = LlamaModelParams::default();
    if GPU_BUILD {
        params = params.with_n_gpu_layers(999);
    }
    let backend = backend()?;
    take_llama_errors();
    LlamaModel::load_from_file(backend, file, &params).map_err(|e| {
        let why = match take_llama_errors() {
            w if w.is_empty() => String::new(),
            w => format!(" (llama.cpp: {w})"),
        };
        err(ErrorKind::LOAD, id, format!("{}: {e}{why}", file.display()))
    })
}

impl GgmlModel {
    /// Load the GGUF `spec` names with the settings its registry options ask for.
    fn open(spec: &ModelSpec, device: &DeviceInfo) -> Result<Self, PluginError> {
        let id = spec.id.to_string();
        let path = Path::new(spec.path.as_str());
        let file = gguf::model_file(path).ok_or_else(|| {
            err(
                ErrorKind::UNSUPPORTED,
                &id,
                format!(
                    "{}: no single .gguf file to load (ggml reads GGUF only)",
                    path.display()
                ),
            )
        })?;
        let settings = settings_for(spec, device)?;
        let model = load_gguf(&id, &file)?;
        let vision = if spec.kind == ModelKind::VLM {
            let mmproj = gguf::mmproj_file(path).ok_or_else(|| {
                err(
                    ErrorKind::LOAD,
                    &id,
                    format!(
                        "{}: no single mmproj*.gguf (the vision projector) beside the model",
                        path.display()
                    ),
                )
            })?;
            Some(media::Vision::open(
                &id,
                path,
                &mmproj,
                &model,
                compute_threads(device),
            )?)
        } else {
            None
        };
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
        // KV-cache bytes per cell (a token of one sequence), as the estimate counts them.
        let (num, den) = settings.kv_bytes_per_element();
        let kv_cell_bytes = model_facts::facts(&file)
            .map(|f| {
                estimate::kv_elements_per_cell(&f)
                    .saturating_mul(num)
                    .div_ceil(den)
            })
            .unwrap_or(0);
        let template = model.meta_val_str("tokenizer.chat_template").ok();
        let arch = model
            .meta_val_str("general.architecture")
            .unwrap_or_default();
        // A prompt cache needs a KV cache whose prefix is all there: not a recurrent
        // model's state, and not a sliding-window cache, which reuses cells that fall out
        // of a sequence's window (a prefix copied from such an entry misses context).
        let sliding = model
            .meta_val_str(&format!("{arch}.attention.sliding_window"))
            .ok()
            .and_then(|w| w.trim().parse::<u64>().ok())
            .is_some_and(|w| w > 0);
        let cuttable = !model.is_recurrent() && !model.is_hybrid() && !sliding;
        Ok(GgmlModel {
            id,
            file,
            adapters: Mutex::default(),
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
            prompt_cache: settings.prompt_cache && cuttable,
            settings,
            kv_cell_bytes,
            ctx: Mutex::new(None),
            vision,
            model: Box::new(model),
        })
    }
}

/// The persistent llama.cpp context (its KV cache is shared by the sequences of a call).
struct Ctx {
    ctx: LlamaContext<'static>,
    /// KV cells (tokens, over all sequences).
    cells: usize,
    /// Sequence ids.
    seqs: usize,
    /// What ended sequences left in the KV cells, for prompts that start the same way.
    cache: prefix::PromptCache<LlamaToken>,
}

struct GgmlModel {
    id: String,
    /// The GGUF file (adapters are converted against it).
    file: std::path::PathBuf,
    /// LoRA adapters loaded into the model.
    adapters: Mutex<adapters::Adapters>,
    arch: String,
    system_prompt: Option<String>,
    template: Option<String>,
    bos: String,
    eos: String,
    add_bos: bool,
    extra_eos: Vec<LlamaToken>,
    settings: Settings,
    /// Whether ended sequences' KV cells are kept for reuse (the `prompt_cache` option,
    /// and a KV cache that keeps every position: not a recurrent or sliding-window one).
    prompt_cache: bool,
    /// KV-cache bytes of one token of one sequence.
    kv_cell_bytes: u64,
    /// Declared before `model`, which it borrows: dropped first.
    ctx: Mutex<Option<Ctx>>,
    /// The projector of a vision-language model (it refers to `model`: dropped first).
    vision: Option<media::Vision>,
    /// Boxed so its address is stable for the context's borrow.
    model: Box<LlamaModel>,
}

impl LoadedModel for GgmlModel {
    fn info(&self) -> ModelInfo {
        let m = &self.model;
        ModelInfo {
            id: self.id.as_str().into(),
            kind: if self.vision.is_some() {
                ModelKind::VLM
            } else {
                ModelKind::LLM
            },
            architecture: self.arch.as_str().into(),
            backend: if GPU_BUILD { "ggml-gpu" } else { "ggml-cpu" }.into(),
            dtype: "gguf".into(),
            dim: m.n_embd() as u32,
            max_tokens: m.n_ctx_train(),
            parameters: m.n_params(),
            weight_bytes: m.size() + self.adapter_bytes(),
        }
    }

    fn generate(
        &self,
        req: &GenerateRequest,
        sink: &mut dyn Sink,
    ) -> Result<GenerateResponse, PluginError> {
        self.run(req, sink)
    }

    fn adapter(
        &self,
        req: &plugin_api::lora::AdapterRequest,
    ) -> Result<plugin_api::lora::AdapterResponse, PluginError> {
        self.adapter_op(req)
    }

    fn tokenize(
        &self,
        req: &plugin_api::score::TokenizeRequest,
    ) -> Result<plugin_api::score::TokenizeResponse, PluginError> {
        Ok(self.tokenize_text(req))
    }

    fn score(
        &self,
        req: &plugin_api::score::ScoreRequest,
    ) -> Result<plugin_api::score::ScoreResponse, PluginError> {
        self.score_tokens(req)
    }
}

plugin_sdk::export_plugin!(GgmlPlugin);
