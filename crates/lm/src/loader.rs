//! Loading a model from a Hugging Face layout directory or a lone GGUF file, and
//! converting a GGUF into the HF layout (`mlxengine import`).
//!
//! Both paths meet in the same place: a `config.json`-shaped JSON value, `Weights` under
//! HF tensor names, and a [`TextTokenizer`]; the architecture code never sees GGUF.

use crate::{
    error::LlmError,
    models::{self, CausalLm},
    tokenizer::TextTokenizer,
};
use gguf::Gguf;
use mlx_common::Weights;
use mlx_rs::{Array, Dtype};
use serde_json::Value as Json;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// A loaded model with its tokenizer.
pub struct Loaded {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: TextTokenizer,
    pub model_type: String,
    pub dtype: Dtype,
    /// KV-cache bytes of one token of one sequence (0 when the files do not say).
    pub kv_token_bytes: u64,
    /// How the KV cache stores keys and values (the `kv_cache` option).
    pub kv_store: crate::models::KvStore,
    /// LoRA adapters loaded on it.
    pub adapters: crate::adapters::Adapters,
    /// A multimodal model's media side (`vlm`): prompts with images go through it.
    pub media: Option<Box<dyn crate::media::Media>>,
}

/// Options that decide how weights are materialised.
#[derive(Clone, Copy)]
pub struct LoadOptions {
    pub dtype: Dtype,
    /// Dequantize quantized layers at load (fast f32/BLAS path on CPU).
    pub dequantize: bool,
}

/// `model_type` of a model path (directory with config.json, or a .gguf file) without
/// loading weights: used to reject unknown architectures early.
pub fn model_type(path: &Path) -> Result<String, LlmError> {
    if let Some(file) = gguf_file(path) {
        let g = Gguf::open(&file)?;
        return Ok(gguf::hf::model_type(&g)?.to_owned());
    }
    let cfg = read_config(&config_path(path)?)?;
    cfg.get("model_type")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .ok_or_else(|| LlmError::Config {
            file: path.join("config.json"),
            msg: "missing `model_type`".into(),
        })
}

/// The GGUF file a model path names (see [`gguf::model_file`]).
pub fn gguf_file(path: &Path) -> Option<PathBuf> {
    gguf::model_file(path)
}

fn config_path(dir: &Path) -> Result<PathBuf, LlmError> {
    let p = dir.join("config.json");
    if p.is_file() {
        Ok(p)
    } else if dir.exists() {
        Err(LlmError::MissingFile(p))
    } else {
        Err(LlmError::MissingFile(dir.to_owned()))
    }
}

fn read_config(path: &Path) -> Result<Json, LlmError> {
    let text = std::fs::read_to_string(path).map_err(|e| LlmError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| LlmError::Config {
        file: path.into(),
        msg: e.to_string(),
    })
}

/// Load a model directory or GGUF file.
pub fn load(path: &Path, opts: LoadOptions) -> Result<Loaded, LlmError> {
    if let Some(file) = gguf_file(path) {
        let g = Gguf::open(&file)?;
        let tokenizer = TextTokenizer::from_gguf(&g)?;
        let mut tensors = HashMap::with_capacity(g.tensors.len());
        // One tensor at a time: its float32 data is freed once MLX holds it in the load
        // dtype, so the peak is the loaded model plus one tensor, not two models.
        let cfg = gguf::hf::for_each_hf_tensor(&g, |t| -> Result<(), LlmError> {
            let shape: Vec<i32> = t.shape.iter().map(|d| *d as i32).collect();
            let mut a = Array::from_slice(&t.data, &shape);
            drop(t.data);
            if opts.dtype != Dtype::Float32 {
                a = a.as_dtype(opts.dtype)?;
                a.eval()?;
            }
            tensors.insert(t.name, a);
            Ok(())
        })?;
        let weights = Weights::from_map(tensors, file.clone(), opts.dtype);
        let model_type = cfg
            .get("model_type")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned();
        let model = build_model(&cfg, &file, weights)?;
        return finish(model, model_type, tokenizer, &file, opts);
    }
    let (model, model_type, cfg) = load_model(path, opts)?;
    let mut eos = models::cfg_ids(&cfg, "eos_token_id");
    let gen = path.join("generation_config.json");
    if gen.is_file() {
        eos.extend(models::cfg_ids(&read_config(&gen)?, "eos_token_id"));
    }
    let tokenizer = TextTokenizer::from_dir(path, &eos)?;
    finish(
        model,
        model_type,
        tokenizer,
        &path.join("tokenizer.json"),
        opts,
    )
}

/// Load only the network of an HF-layout directory (no tokenizer): for parity tests and
/// tools. Returns the model, its `model_type` and the parsed config.json.
pub fn load_model(
    path: &Path,
    opts: LoadOptions,
) -> Result<(Box<dyn CausalLm>, String, Json), LlmError> {
    let cfg_file = config_path(path)?;
    let cfg = read_config(&cfg_file)?;
    let model_type = cfg
        .get("model_type")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_owned();
    if !models::supports(&model_type) {
        return Err(LlmError::Architecture {
            plugin: "llm",
            name: model_type,
            supported: models::supported_list(),
        });
    }
    let mut weights = Weights::load(path, opts.dtype)?;
    if let Some(q) = cfg
        .get("quantization")
        .or_else(|| cfg.get("quantization_config"))
    {
        weights.quantization = Some(mlx_common::QuantConfig::from_json(q, &cfg_file)?);
    }
    weights.dequantize = opts.dequantize;
    let model = build_model(&cfg, &cfg_file, weights)?;
    Ok((model, model_type, cfg))
}

/// The language model `cfg` (config.json) describes, from `weights` (strict: every
/// tensor used). `file` names the config in errors.
pub fn build_model(
    cfg: &Json,
    file: &Path,
    mut weights: Weights,
) -> Result<Box<dyn CausalLm>, LlmError> {
    let model_type = cfg
        .get("model_type")
        .and_then(Json::as_str)
        .unwrap_or_default();
    let arch = models::ARCHITECTURES
        .iter()
        .find(|a| a.model_type == model_type)
        .ok_or_else(|| LlmError::Architecture {
            plugin: "llm",
            name: model_type.to_owned(),
            supported: models::supported_list(),
        })?;
    let model = (arch.load)(cfg, file, &mut weights)?;
    weights.finish()?;
    Ok(model)
}

/// A [`Loaded`] from a built language model and its tokenizer: ids checked against the
/// embedding table, every weight evaluated on this thread, the model's EOS ids added.
pub fn finish(
    model: Box<dyn CausalLm>,
    model_type: String,
    mut tokenizer: TextTokenizer,
    tokenizer_file: &Path,
    opts: LoadOptions,
) -> Result<Loaded, LlmError> {
    mlx_common::tokens::check_ids(&tokenizer.tokenizer, model.vocab_size(), tokenizer_file)?;
    // Everything materialized here, on the loading thread's stream: the model is then
    // plain data that any thread can serve.
    mlx_rs::transforms::eval(model.parameters())?;
    for id in model.eos_ids() {
        if !tokenizer.eos_ids.contains(&id) {
            tokenizer.eos_ids.push(id);
        }
    }
    Ok(Loaded {
        model,
        tokenizer,
        model_type,
        dtype: opts.dtype,
        kv_token_bytes: 0,
        kv_store: Default::default(),
        adapters: Default::default(),
        media: None,
    })
}
