//! This plugin's memory estimate: the checkpoint's weights at the load dtype (the
//! llm plugin's dtype policy), the text model's KV cache for the planned context, and
//! the activations of one image's patches through the vision tower (the architecture
//! table's most per image: 17 frames for SmolVLM's 4×4 tiles and the whole image, 1
//! for LLaVA, `max_pixels` for Qwen2-VL) plus one prefill chunk.

use mlx_common::{dtype_name, estimate::MLX_BASE_BYTES, mlx_backend};
use mlx_rs::Dtype;
use plugin_api::{ErrorKind, EstimateRequest, MemoryEstimate, PluginError};
use serde_json::Value as Json;
use std::path::Path;

fn bytes_of(d: Dtype) -> u64 {
    match d {
        Dtype::Float32 => 4,
        _ => 2,
    }
}

fn int(v: &Json, k: &str) -> u64 {
    v.get(k).and_then(Json::as_u64).unwrap_or(0)
}

/// The text model's settings: `text_config`, or the top level (Qwen2-VL's Hub configs).
fn text_of(cfg: &Json) -> &Json {
    cfg.get("text_config").unwrap_or(cfg)
}

/// KV-cache bytes of one token of one sequence: keys and values of every text layer.
pub fn kv_bytes_per_token(cfg: &Json, dtype: Dtype) -> u64 {
    let t = text_of(cfg);
    let heads = int(t, "num_attention_heads").max(1);
    let kv = t
        .get("num_key_value_heads")
        .and_then(Json::as_u64)
        .unwrap_or(heads);
    let head_dim = t
        .get("head_dim")
        .and_then(Json::as_u64)
        .unwrap_or(int(t, "hidden_size") / heads);
    int(t, "num_hidden_layers")
        .saturating_mul(2 * kv * head_dim)
        .saturating_mul(bytes_of(dtype))
}

/// The estimate for `req`'s model.
pub fn estimate(req: &EstimateRequest) -> Result<MemoryEstimate, PluginError> {
    let dir = Path::new(req.model.path.as_str());
    let fail =
        |msg: String| PluginError::new(ErrorKind::LOAD, format!("model `{}`: {msg}", req.model.id));
    let text = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| fail(format!("{}: {e}", dir.join("config.json").display())))?;
    let cfg: Json = serde_json::from_str(&text).map_err(|e| fail(format!("config.json: {e}")))?;
    let opts = lm::load_options(
        req.model.dtype.as_ref().map(|d| d.as_str()).into_option(),
        mlx_backend(),
    )?;
    let stored = match cfg
        .get("torch_dtype")
        .or_else(|| cfg.get("dtype"))
        .and_then(Json::as_str)
    {
        Some("float32") | None => 4,
        _ => 2,
    };
    let files: u64 = std::fs::read_dir(dir)
        .map_err(|e| fail(format!("{}: {e}", dir.display())))?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let weights_bytes = files / stored * bytes_of(opts.dtype);
    let t = text_of(&cfg);
    let max_ctx = t
        .get("max_position_embeddings")
        .and_then(Json::as_u64)
        .unwrap_or(4096);
    let context = if req.context == 0 {
        max_ctx.min(4096)
    } else {
        u64::from(req.context).min(max_ctx)
    };
    let batch = u64::from(req.batch.max(1));
    let kv_cache_bytes = kv_bytes_per_token(&cfg, opts.dtype)
        .saturating_mul(context)
        .saturating_mul(batch);
    let v = cfg.get("vision_config").unwrap_or(&Json::Null);
    let patches = cfg
        .get("model_type")
        .and_then(Json::as_str)
        .and_then(crate::models::find)
        .map_or(0, |a| (a.patches_per_image)(&cfg, dir));
    // Qwen2-VL names the tower's width `embed_dim` (its `hidden_size` is the text's).
    let width = match int(v, "embed_dim") {
        0 => int(v, "hidden_size"),
        w => w,
    };
    let inner = int(v, "intermediate_size").max(4 * width);
    let vision = patches.saturating_mul(4 * width + inner).saturating_mul(4);
    let chunk = lm::generate::PREFILL_CHUNK as u64
        * (8 * int(t, "hidden_size") + int(t, "intermediate_size") + int(t, "vocab_size"))
        * 4;
    Ok(MemoryEstimate {
        weights_as: dtype_name(opts.dtype).into(),
        dtype: Some(abi_stable::std_types::RString::from(dtype_name(opts.dtype))).into(),
        weights_bytes,
        kv_cache_bytes,
        runtime_bytes: MLX_BASE_BYTES + vision + chunk,
        context: context as u32,
        batch: batch as u32,
        decode_bytes_per_s: 0.0,
        note: "".into(),
        options: "".into(),
    })
}
