//! This plugin's memory estimate: every component's parameters at the load dtype (from
//! the safetensors headers), and the larger of the two activation peaks at the model's
//! default size for `batch` images — the UNet's (a guided batch of 2·batch rows: the
//! first level's feature maps and skips, and its self-attention scores, which MLX's
//! CPU attention materialises in float32) and the VAE decoder's (its widest feature maps
//! at full resolution and its single-head attention at the latent's).

use crate::{load_dtype, unet::UnetConfig, vae::VaeConfig};
use mlx_common::{dtype_name, estimate::MLX_BASE_BYTES};
use mlx_rs::Dtype;
use plugin_api::{ErrorKind, EstimateRequest, MemoryEstimate, PluginError};
use std::path::Path;

fn bytes_of(d: Dtype) -> u64 {
    match d {
        Dtype::Float32 => 4,
        _ => 2,
    }
}

/// Feature maps alive at once at the UNet's first level, in units of one (rows × pixels
/// × first width) map: the skips kept for the way up (layers + 1), the resnet's and
/// transformer's intermediates, the GEGLU's 8× widening of one map.
const UNET_MAPS: u64 = 16;
/// The same for the VAE decoder at full resolution: input, two resnet intermediates,
/// the upsampled map.
const VAE_MAPS: u64 = 4;

/// Activation bytes of `batch` images at `width` × `height` pixels.
pub fn activation_bytes(
    unet: &UnetConfig,
    vae: &VaeConfig,
    width: u64,
    height: u64,
    batch: u64,
    dtype: Dtype,
) -> u64 {
    let f = vae.factor() as u64;
    let tokens = (width / f) * (height / f);
    let rows = 2 * batch;
    let b = bytes_of(dtype);
    let c0 = unet.block_out[0] as u64;
    let unet_maps = rows * tokens * c0 * b * UNET_MAPS;
    // Scores and their softmax, float32.
    let scores = rows * unet.first_heads() as u64 * tokens * tokens * 4 * 2;
    let vae_maps = batch * width * height * vae.first_width() as u64 * 4 * VAE_MAPS;
    let vae_attn = batch * tokens * tokens * 4 * 2;
    (unet_maps + scores).max(vae_maps + vae_attn)
}

/// The estimate for `req`'s model.
pub fn estimate(req: &EstimateRequest) -> Result<MemoryEstimate, PluginError> {
    let dir = Path::new(req.model.path.as_str());
    let fail =
        |msg: String| PluginError::new(ErrorKind::LOAD, format!("model `{}`: {msg}", req.model.id));
    let facts = mlx_common::estimate::request_facts(req)?;
    let dtype = load_dtype(mlx_common::estimate::requested_dtype(req))?;
    let unet = UnetConfig::from_file(&dir.join("unet").join("config.json"))
        .map_err(|e| fail(e.to_string()))?;
    let vae = VaeConfig::from_file(&dir.join("vae").join("config.json"))
        .map_err(|e| fail(e.to_string()))?;
    let side = unet.sample_size as u64 * vae.factor() as u64;
    let batch = req.batch.max(1) as u64;
    let weights_bytes = facts.parameters.saturating_mul(bytes_of(dtype));
    Ok(MemoryEstimate {
        weights_as: dtype_name(dtype).into(),
        dtype: Some(dtype_name(dtype).into()).into(),
        weights_bytes,
        kv_cache_bytes: 0,
        runtime_bytes: MLX_BASE_BYTES + activation_bytes(&unet, &vae, side, side, batch, dtype),
        context: 0,
        batch: batch as u32,
        decode_bytes_per_s: 0.0,
        note: format!("activations for {batch} image(s) of {side}x{side}").into(),
        options: "".into(),
    })
}
