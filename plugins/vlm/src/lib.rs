//! MLXEngine vlm plugin: vision-language models with MLX through mlx-rs.
//!
//! Loads Hugging Face layout checkpoints of the architectures in [`models`] (their
//! processor configs and chat templates with them), decodes and preprocesses images as
//! the Hub's processors do ([`image`]), encodes them with the model's vision tower and
//! connector, and generates with the `lm` crate's loop — the llm plugin's language
//! models, KV cache, continuous batching, sampling and streaming — with each prompt's
//! image features in place of its image tokens. Text-only requests run as on the llm
//! plugin.

pub mod estimate;
/// Image decoding and resampling (the `pixels` crate, shared with the ggml provider).
pub use pixels as image;
pub mod models;
pub mod processor;
pub mod prompt;
pub mod vision;

use lm::{generate, loader::Loaded, prompt_cache, tokenizer::TextTokenizer, LlmError};
use mlx_common::{dtype_name, mlx_backend, Weights};
use plugin_api::{
    text::{GenerateRequest, GenerateResponse},
    EstimateRequest, Features, LoadRequest, MemoryEstimate, ModelInfo, ModelKind, PluginDescriptor,
    PluginError, Probe, ProbeRequest,
};
use plugin_sdk::{LoadedModel, Plugin};
use serde_json::Value as Json;
use std::{path::Path, sync::Mutex};

/// The plugin type exported through the ABI.
pub struct VlmPlugin;

/// `config.json` of a model directory, parsed.
fn config(dir: &Path) -> Result<Json, LlmError> {
    let file = dir.join("config.json");
    if !file.is_file() {
        return Err(LlmError::MissingFile(file));
    }
    let text = std::fs::read_to_string(&file).map_err(|e| LlmError::io(&file, e))?;
    serde_json::from_str(&text).map_err(|e| LlmError::Config {
        file,
        msg: e.to_string(),
    })
}

fn model_type(cfg: &Json) -> &str {
    cfg.get("model_type").and_then(Json::as_str).unwrap_or("")
}

/// Load a model directory: language model and media side, tokenizer, chat template.
pub fn load(dir: &Path, opts: lm::LoadOptions) -> Result<Loaded, LlmError> {
    let cfg = config(dir)?;
    let ty = model_type(&cfg).to_owned();
    let arch = models::find(&ty).ok_or_else(|| LlmError::Architecture {
        plugin: "vlm",
        name: ty.clone(),
        supported: models::supported_list(),
    })?;
    let mut weights = Weights::load(dir, opts.dtype)?;
    if let Some(q) = cfg.get("quantization") {
        weights.quantization = Some(mlx_common::QuantConfig::from_json(
            q,
            &dir.join("config.json"),
        )?);
    }
    weights.dequantize = opts.dequantize;
    let (model, media) = (arch.load)(&cfg, dir, weights, opts.dtype)?;
    let mut eos = lm::models::cfg_ids(
        cfg.get("text_config").unwrap_or(&Json::Null),
        "eos_token_id",
    );
    let gen = dir.join("generation_config.json");
    if gen.is_file() {
        let text = std::fs::read_to_string(&gen).map_err(|e| LlmError::io(&gen, e))?;
        let g: Json = serde_json::from_str(&text).map_err(|e| LlmError::Config {
            file: gen.clone(),
            msg: e.to_string(),
        })?;
        eos.extend(lm::models::cfg_ids(&g, "eos_token_id"));
    }
    let tokenizer = TextTokenizer::from_dir(dir, &eos)?;
    let mut loaded = lm::loader::finish(model, ty, tokenizer, &dir.join("tokenizer.json"), opts)?;
    loaded.media = Some(media);
    Ok(loaded)
}

impl Plugin for VlmPlugin {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor {
            name: "mlx-vlm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Vision-language models on MLX (Idefics3/SmolVLM, LLaVA, LLaVA-NeXT; PNG, JPEG, WebP, GIF inputs)"
                    .into(),
            kinds: vec![ModelKind::VLM].into(),
            architectures: models::ARCHITECTURES
                .iter()
                .map(|a| a.model_type.into())
                .collect(),
            formats: plugin_sdk::rstrings(&["safetensors"]),
            features: Features::STREAMING
                .union(Features::BATCHING)
                .union(Features::CONTINUOUS_BATCHING)
                .union(Features::VISION_LANGUAGE)
                .union(Features::MULTI_MODAL_INPUT),
        }
    }

    fn probe(req: &ProbeRequest) -> Probe {
        let backend = mlx_backend();
        let no = |reason: String| Probe {
            score: 0,
            backend: backend.into(),
            reason: reason.into(),
        };
        if let Some(m) = req.model.as_ref().into_option() {
            if !m.path.is_empty() && !Path::new(m.path.as_str()).join("config.json").is_file() {
                return no(
                    "MLX reads Hugging Face layouts (config.json + safetensors); a GGUF vision model runs on ggml"
                        .into(),
                );
            }
            if models::find(m.architecture.as_str()).is_none() {
                return no(format!(
                    "architecture `{}` not supported (supported: {})",
                    m.architecture,
                    models::supported_list()
                ));
            }
        }
        Probe {
            score: if backend == "mlx-cpu" { 10 } else { 100 },
            backend: backend.into(),
            reason: "MLX vision-language".into(),
        }
    }

    fn estimate(req: &EstimateRequest) -> Result<MemoryEstimate, PluginError> {
        estimate::estimate(req)
    }

    fn load(req: &LoadRequest) -> Result<Box<dyn LoadedModel>, PluginError> {
        let spec = &req.model;
        mlx_common::apply_memory_budget(req.memory_budget);
        let ctx = |e: LlmError| {
            let mut p = PluginError::from(e);
            p.message = format!("model `{}`: {}", spec.id, p.message).into();
            p
        };
        let opts = lm::load_options(
            spec.dtype.as_ref().map(|d| d.as_str()).into_option(),
            mlx_backend(),
        )?;
        let cache_on = prompt_cache::enabled_in(spec.options.as_str())
            .map_err(|e| ctx(LlmError::Request(format!("registry options: {e}"))))?;
        let mut loaded = load(Path::new(spec.path.as_str()), opts).map_err(ctx)?;
        loaded.kv_token_bytes = estimate::kv_bytes_per_token(
            &config(Path::new(spec.path.as_str())).map_err(ctx)?,
            opts.dtype,
        );
        let extra: Vec<String> = spec.extra_eos.iter().map(|s| s.to_string()).collect();
        loaded.tokenizer.add_eos_tokens(&extra).map_err(ctx)?;
        Ok(Box::new(VlmModel {
            id: spec.id.to_string(),
            system_prompt: spec
                .system_prompt
                .as_ref()
                .map(|s| s.to_string())
                .into_option(),
            model: Mutex::new(loaded),
            prompt_cache: Mutex::new(prompt_cache::PromptCache::default()),
            cache_on,
            _release: mlx_common::ReleaseCacheOnDrop,
        }))
    }
}

struct VlmModel {
    id: String,
    system_prompt: Option<String>,
    model: Mutex<Loaded>,
    /// Text-only requests' ended sequences (those with images are never cached).
    prompt_cache: Mutex<prompt_cache::PromptCache>,
    cache_on: bool,
    /// Last field: dropped after the arrays, then returns MLX's cached buffers.
    _release: mlx_common::ReleaseCacheOnDrop,
}

// SAFETY: the MLX arrays inside `Loaded` are only touched while `model`'s mutex is held.
unsafe impl Sync for VlmModel {}

impl LoadedModel for VlmModel {
    fn info(&self) -> ModelInfo {
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let (mut parameters, mut weight_bytes) = m.model.sizes();
        if let Some(media) = &m.media {
            let (p, b) = media.sizes();
            parameters += p;
            weight_bytes += b;
        }
        ModelInfo {
            id: self.id.as_str().into(),
            kind: ModelKind::VLM,
            architecture: m.model_type.as_str().into(),
            backend: mlx_backend().into(),
            dtype: dtype_name(m.dtype).into(),
            dim: 0,
            max_tokens: m.model.max_context() as u32,
            parameters,
            weight_bytes,
        }
    }

    fn generate(
        &self,
        req: &GenerateRequest,
        sink: &mut dyn plugin_sdk::Sink,
    ) -> Result<GenerateResponse, PluginError> {
        let adapters = plugin_sdk::adapters_of(req)?;
        if !adapters.is_empty() {
            return Err(self.error(LlmError::Request(
                "LoRA adapters are not supported by the vlm plugin".into(),
            )));
        }
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let mut prompt_cache = self.prompt_cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut call = generate::Call {
            lm: &m,
            prompt_cache: &mut prompt_cache,
            cache_on: self.cache_on,
            system_prompt: self.system_prompt.as_deref(),
            adapters: &[],
        };
        generate::generate(&mut call, req, sink).map_err(|e| self.error(e))
    }
}

impl VlmModel {
    /// `e` as a plugin error naming the model.
    fn error(&self, e: LlmError) -> PluginError {
        let mut p = PluginError::from(e);
        p.message = format!("model `{}`: {}", self.id, p.message).into();
        p
    }
}

plugin_sdk::export_plugin!(VlmPlugin);
