//! MLXEngine llm plugin: text generation with MLX through mlx-rs.
//!
//! Loads Hugging Face layout models (safetensors, single or sharded; MLX-community
//! affine-quantized checkpoints) and lone GGUF files (tokenizer and chat template from
//! the metadata), renders chat templates with minijinja, and generates with a KV cache,
//! chunked prefill, sampling, stop strings, streaming with cancellation and batching.
//! The models and the loop are the `lm` crate's (shared with the `vlm` plugin); this
//! crate is the plugin around them.

pub use lm::{
    adapters, batch, estimate, generate, load_options, loader, models, prompt_cache, sampling,
    score, tokenizer, LlmError, LoadOptions, Loaded,
};

use mlx_common::{dtype_name, mlx_backend};
use plugin_api::{
    lora::{AdapterOp, AdapterRequest, AdapterResponse},
    score::{ScoreRequest, ScoreResponse, TokenizeRequest, TokenizeResponse},
    text::{GenerateRequest, GenerateResponse},
    ErrorKind, EstimateRequest, Features, LoadRequest, MemoryEstimate, ModelInfo, ModelKind,
    PluginDescriptor, PluginError, Probe, ProbeRequest,
};
use plugin_sdk::{LoadedModel, Plugin};
use std::{path::Path, sync::Mutex};

/// The plugin type exported through the ABI.
pub struct LlmPlugin;

impl Plugin for LlmPlugin {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor {
            name: "mlx-llm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Text generation on MLX (safetensors, MLX-quantized, GGUF Q4_0/Q4_1/Q8_0)"
                .into(),
            kinds: vec![ModelKind::LLM].into(),
            architectures: models::ARCHITECTURES
                .iter()
                .map(|a| a.model_type.into())
                .collect(),
            formats: plugin_sdk::rstrings(&["safetensors", "gguf", "mlx-quantized"]),
            features: Features::STREAMING
                .union(Features::BATCHING)
                .union(Features::CONTINUOUS_BATCHING)
                .union(Features::CUSTOM_PROMPTS)
                .union(Features::QUANTIZATION)
                .union(Features::LORA_ADAPTERS),
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
            if let Err(e) = models::KvStore::from_options(m.options.as_str())
                .and_then(|_| prompt_cache::enabled_in(m.options.as_str()))
            {
                return no(format!("registry options: {e}"));
            }
            if !models::supports(&m.architecture) {
                return no(format!(
                    "architecture `{}` not supported (supported: {})",
                    m.architecture,
                    models::supported_list()
                ));
            }
            if let Some(file) = loader::gguf_file(Path::new(m.path.as_str())) {
                match gguf::Gguf::open(&file) {
                    Ok(g) => {
                        let bad: Vec<String> = g
                            .unsupported_types()
                            .into_iter()
                            .map(|(ty, _)| ty)
                            .collect();
                        if !bad.is_empty() {
                            return no(format!(
                                "unsupported quant type {} (MLX reads {}; use the ggml backend)",
                                bad.join(", "),
                                gguf::quants::READS
                            ));
                        }
                        if let Err(e) = gguf::hf::model_type(&g) {
                            return no(format!(
                                "{e} for GGUF files in the MLX provider; use the ggml backend"
                            ));
                        }
                    }
                    Err(e) => return no(e.to_string()),
                }
            }
        }
        match backend {
            // MLX's x86 CPU kernels are slow (scalar f16/quantized, f32 via BLAS only):
            // a CPU-specialised provider should win where one is installed.
            "mlx-cpu" => Probe {
                score: 10,
                backend: backend.into(),
                reason: "MLX on CPU (portable, f32 through BLAS)".into(),
            },
            _ => Probe {
                score: 100,
                backend: backend.into(),
                reason: "MLX on GPU".into(),
            },
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
        let opts = load_options(
            spec.dtype.as_ref().map(|d| d.as_str()).into_option(),
            mlx_backend(),
        )?;
        let path = Path::new(spec.path.as_str());
        let model_type = loader::model_type(path).map_err(ctx)?;
        if !models::supports(&model_type) {
            return Err(ctx(LlmError::Architecture {
                plugin: "llm",
                name: model_type,
                supported: models::supported_list(),
            }));
        }
        let kv_store = models::KvStore::from_options(spec.options.as_str())
            .map_err(|e| ctx(LlmError::Request(format!("registry options: {e}"))))?;
        let cache_on = prompt_cache::enabled_in(spec.options.as_str())
            .map_err(|e| ctx(LlmError::Request(format!("registry options: {e}"))))?;
        let mut loaded = loader::load(path, opts).map_err(ctx)?;
        // As the estimate counts it: keys and values of every layer, as the cache stores them.
        loaded.kv_store = kv_store;
        loaded.kv_token_bytes = model_facts::facts(path)
            .map(|f| {
                (estimate::kv_elements_per_token(&f) as f64
                    * kv_store.bytes_per_element(opts.dtype))
                .ceil() as u64
            })
            .unwrap_or(0);
        let extra: Vec<String> = spec.extra_eos.iter().map(|s| s.to_string()).collect();
        loaded.tokenizer.add_eos_tokens(&extra).map_err(ctx)?;
        Ok(Box::new(LlmModel {
            shapes: adapters::shapes(loaded.model.as_mut()),
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

struct LlmModel {
    id: String,
    /// Its linear layers' shapes, for adapters to be checked against without the lock.
    shapes: adapters::Shapes,
    system_prompt: Option<String>,
    model: Mutex<Loaded>,
    /// Ended sequences' KV caches (locked inside `model`'s lock).
    prompt_cache: Mutex<prompt_cache::PromptCache>,
    /// The registry's `prompt_cache` setting.
    cache_on: bool,
    /// Last field: dropped after the arrays, then returns MLX's cached buffers.
    _release: mlx_common::ReleaseCacheOnDrop,
}

// SAFETY: the MLX arrays inside `Loaded` are only touched while `model`'s mutex is held.
unsafe impl Sync for LlmModel {}

impl LoadedModel for LlmModel {
    fn info(&self) -> ModelInfo {
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let (parameters, weight_bytes) = m.model.sizes();
        let weight_bytes = weight_bytes + m.adapters.bytes();
        ModelInfo {
            id: self.id.as_str().into(),
            kind: ModelKind::LLM,
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
        let choices = plugin_sdk::adapters_of(req)?;
        let mut guard = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let m = &mut *guard;
        // The adapters are on the layers for this request only: the lock keeps every
        // other request out until they are off again.
        m.adapters
            .attach(m.model.as_mut(), &choices)
            .map_err(|e| self.error(e))?;
        let mut prompt_cache = self.prompt_cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut call = generate::Call {
            lm: &*m,
            prompt_cache: &mut prompt_cache,
            cache_on: self.cache_on,
            system_prompt: self.system_prompt.as_deref(),
            adapters: &choices,
        };
        let resp = generate::generate(&mut call, req, sink);
        drop(prompt_cache);
        adapters::Adapters::detach(m.model.as_mut());
        resp.map_err(|e| self.error(e))
    }

    fn adapter(&self, req: &AdapterRequest) -> Result<AdapterResponse, PluginError> {
        let name = req.name.as_str();
        let named = || {
            if name.is_empty() {
                Err(self.error(LlmError::Request("the adapter needs a name".into())))
            } else {
                Ok(())
            }
        };
        match req.op {
            AdapterOp::LOAD => {
                named()?;
                if !req.scale.is_finite() {
                    return Err(self.error(LlmError::Request(format!(
                        "adapter `{name}`: scale {} is not a number",
                        req.scale
                    ))));
                }
                let dtype = self.model.lock().unwrap_or_else(|p| p.into_inner()).dtype;
                // Read and checked before the lock: requests go on meanwhile.
                let ad = adapters::open(
                    Path::new(req.path.as_str()),
                    &self.id,
                    &self.shapes,
                    dtype,
                    req.scale,
                )
                .map_err(|e| self.error(e))?;
                let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
                ad.eval().map_err(|e| self.error(e.into()))?;
                m.adapters.loaded.insert(name.to_owned(), ad);
            }
            AdapterOp::UNLOAD => {
                named()?;
                let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
                if m.adapters.loaded.remove(name).is_none() {
                    return Err(self.error(LlmError::Request(format!(
                        "adapter `{name}` is not loaded on this model"
                    ))));
                }
            }
            AdapterOp::FUSE => {
                named()?;
                let mut guard = self.model.lock().unwrap_or_else(|p| p.into_inner());
                let m = &mut *guard;
                m.adapters
                    .fuse(m.model.as_mut(), name)
                    .map_err(|e| self.error(e))?;
            }
            AdapterOp::LIST => {}
            other => {
                return Err(PluginError::new(
                    ErrorKind::UNSUPPORTED,
                    format!("adapter operation {} is not supported", other.0),
                ))
            }
        }
        if req.op != AdapterOp::LIST {
            // Cached keys and values were computed under the adapters as they were.
            self.prompt_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
        }
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        Ok(AdapterResponse {
            loaded: m
                .adapters
                .loaded
                .keys()
                .map(|k| k.as_str().into())
                .collect(),
            fused: m.adapters.fused.iter().map(|k| k.as_str().into()).collect(),
        })
    }

    fn tokenize(&self, req: &TokenizeRequest) -> Result<TokenizeResponse, PluginError> {
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        score::tokenize(&m, req).map_err(|e| self.error(e))
    }

    fn score(&self, req: &ScoreRequest) -> Result<ScoreResponse, PluginError> {
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        score::score(&m, req).map_err(|e| self.error(e))
    }
}

impl LlmModel {
    /// `e` as a plugin error naming the model.
    fn error(&self, e: LlmError) -> PluginError {
        let mut p = PluginError::from(e);
        p.message = format!("model `{}`: {}", self.id, p.message).into();
        p
    }
}

plugin_sdk::export_plugin!(LlmPlugin);
