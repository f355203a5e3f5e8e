//! MLXEngine diffusion plugin: text-to-image with MLX through mlx-rs.
//!
//! Loads diffusers' folder layout (`model_index.json` + `text_encoder/`, `tokenizer/`,
//! `unet/`, `vae/`, `scheduler/`; safetensors, `fp16` variants) of the pipelines in
//! [`pipeline::ARCHITECTURES`], runs them as diffusers does ([`pipeline::Pipeline::run`]:
//! CLIP text encoder, UNet under classifier-free guidance, the samplers of
//! [`scheduler::Sampler::ALL`], VAE decode) and answers PNG files that carry their
//! generation parameters ([`png_out`]). A progress report per step; a cancel stops at the
//! next one.

pub mod clip;
pub mod estimate;
pub mod nn;
pub mod pipeline;
pub mod png_out;
pub mod scheduler;
pub mod unet;
pub mod vae;

use mlx_common::{dtype_name, mlx_backend, ModelError};
use pipeline::{Job, Pipeline};
use plugin_api::{
    image::{ImageRequest, ImageResponse},
    text::StreamControl,
    ErrorKind, EstimateRequest, Features, LoadRequest, MemoryEstimate, ModelInfo, ModelKind,
    PluginDescriptor, PluginError, Probe, ProbeRequest,
};
use plugin_sdk::{LoadedModel, Plugin, Progress};
use scheduler::Sampler;
use serde_json::Value as Json;
use std::{path::Path, sync::Mutex};

/// A JSON file, parsed.
pub(crate) fn read_json(file: &Path) -> Result<Json, ModelError> {
    if !file.is_file() {
        return Err(ModelError::MissingFile(file.into()));
    }
    let text = std::fs::read_to_string(file).map_err(|e| ModelError::io(file, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: file.into(),
        msg: e.to_string(),
    })
}

/// Denoising steps when a request names none.
pub const DEFAULT_STEPS: usize = 30;
/// Guidance when a request names none (diffusers' default for SD).
pub const DEFAULT_GUIDANCE: f32 = 7.5;

/// The load dtype: the registry's, else float32 on the CPU (MLX's CPU kernels are
/// fastest there) and float16 on GPUs.
pub fn load_dtype(requested: Option<&str>) -> Result<mlx_rs::Dtype, PluginError> {
    match requested {
        Some(name) => mlx_common::parse_dtype(name).ok_or_else(|| {
            PluginError::new(
                ErrorKind::INVALID_REQUEST,
                format!("dtype `{name}` is not one of float32, float16, bfloat16"),
            )
        }),
        None if mlx_common::on_gpu() => Ok(mlx_rs::Dtype::Float16),
        None => Ok(mlx_rs::Dtype::Float32),
    }
}

/// The plugin type exported through the ABI.
pub struct DiffusionPlugin;

impl Plugin for DiffusionPlugin {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor {
            name: "mlx-diffusion".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description:
                "Text-to-image on MLX: Stable Diffusion 1.x/2.x and SDXL pipelines in diffusers' layout"
                    .into(),
            kinds: vec![ModelKind::DIFFUSION].into(),
            architectures: pipeline::ARCHITECTURES
                .iter()
                .map(|a| a.architecture.into())
                .collect(),
            formats: plugin_sdk::rstrings(&["safetensors"]),
            features: Features::DIFFUSION,
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
            if !m.path.is_empty()
                && !Path::new(m.path.as_str())
                    .join("model_index.json")
                    .is_file()
            {
                return no("diffusers' folder layout (model_index.json) is needed".into());
            }
            if pipeline::find(m.architecture.as_str()).is_none() {
                return no(format!(
                    "architecture `{}` not supported (supported: {})",
                    m.architecture,
                    pipeline::supported_list()
                ));
            }
        }
        Probe {
            score: if backend == "mlx-cpu" { 10 } else { 100 },
            backend: backend.into(),
            reason: "MLX diffusion".into(),
        }
    }

    fn estimate(req: &EstimateRequest) -> Result<MemoryEstimate, PluginError> {
        estimate::estimate(req)
    }

    fn load(req: &LoadRequest) -> Result<Box<dyn LoadedModel>, PluginError> {
        let spec = &req.model;
        mlx_common::apply_memory_budget(req.memory_budget);
        let ctx = |e: ModelError| {
            let mut p = PluginError::from(e);
            p.message = format!("model `{}`: {}", spec.id, p.message).into();
            p
        };
        let dtype = load_dtype(spec.dtype.as_ref().map(|d| d.as_str()).into_option())?;
        mlx_common::activation::prepare();
        let pipe = Pipeline::load(Path::new(spec.path.as_str()), dtype).map_err(ctx)?;
        Ok(Box::new(DiffusionModel {
            id: spec.id.to_string(),
            pipe: Mutex::new(pipe),
            _release: mlx_common::ReleaseCacheOnDrop,
        }))
    }
}

struct DiffusionModel {
    id: String,
    pipe: Mutex<Pipeline>,
    /// Last field: dropped after the arrays, then returns MLX's cached buffers.
    _release: mlx_common::ReleaseCacheOnDrop,
}

// SAFETY: the MLX arrays inside `Pipeline` are only touched while `pipe`'s mutex is held.
unsafe impl Sync for DiffusionModel {}

impl DiffusionModel {
    fn error(&self, kind: ErrorKind, msg: String) -> PluginError {
        PluginError::new(kind, format!("model `{}`: {msg}", self.id))
    }
}

/// The job `req` asks of `pipe`: the model's defaults where it leaves a field at 0, its
/// sizes checked against the VAE's factor, the sampler by name.
pub fn job_of(pipe: &Pipeline, req: &ImageRequest, seed: u64) -> Result<Job, String> {
    let f = pipe.factor();
    let side = pipe.default_size();
    let (width, height) = match (req.width, req.height) {
        (0, 0) => (side, side),
        (0, h) => (side, h),
        (w, 0) => (w, side),
        (w, h) => (w, h),
    };
    if width % f != 0 || height % f != 0 {
        return Err(format!(
            "`size` {width}x{height}: both sides must be multiples of {f} (the VAE's factor)"
        ));
    }
    let sampler = match req.sampler.as_str() {
        "" => pipe.scheduler.default_sampler,
        name => Sampler::from_name(name).ok_or_else(|| {
            format!(
                "`sampler` `{name}` is not served by this plugin (served: {})",
                Sampler::names()
            )
        })?,
    };
    Ok(Job {
        prompt: req.prompt.to_string(),
        negative_prompt: req.negative_prompt.to_string(),
        width,
        height,
        steps: if req.steps == 0 {
            DEFAULT_STEPS
        } else {
            req.steps as usize
        },
        guidance: if req.guidance == 0.0 {
            DEFAULT_GUIDANCE
        } else {
            req.guidance
        },
        sampler,
        count: req.count.max(1) as usize,
        seed,
    })
}

impl LoadedModel for DiffusionModel {
    fn info(&self) -> ModelInfo {
        let p = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        let (parameters, weight_bytes) = p.sizes();
        ModelInfo {
            id: self.id.as_str().into(),
            kind: ModelKind::DIFFUSION,
            architecture: p.arch.architecture.into(),
            backend: mlx_backend().into(),
            dtype: dtype_name(p.dtype).into(),
            dim: p.text.config.hidden as u32,
            max_tokens: p.tokenizer.max_len as u32,
            parameters,
            weight_bytes,
        }
    }

    fn generate_image(
        &self,
        req: &ImageRequest,
        progress: &mut dyn Progress,
    ) -> Result<ImageResponse, PluginError> {
        if !req.init_image.is_empty() || !req.mask.is_empty() {
            return Err(self.error(
                ErrorKind::UNSUPPORTED,
                "img2img and inpainting (`init_image`, `mask`) are not served yet".into(),
            ));
        }
        let pipe = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        let seed = req.seed.into_option().unwrap_or_else(random_seed);
        let job =
            job_of(&pipe, req, seed).map_err(|m| self.error(ErrorKind::INVALID_REQUEST, m))?;
        let mlx =
            |e: mlx_rs::error::Exception| self.error(ErrorKind::INTERNAL, format!("MLX: {e}"));
        let noise = pipe.noise(&job).map_err(mlx)?;
        let mut step = |done: usize, total: usize| {
            let msg = format!("step {done}/{total}");
            progress.step("denoise", done as u64, total as u64, &msg) == StreamControl::Continue
        };
        let image = pipe.run(&job, noise, &mut step).map_err(|e| {
            let p = PluginError::from(e);
            self.error(p.kind, p.message.to_string())
        })?;
        let Some(image) = image else {
            return Err(self.error(ErrorKind::CANCELLED, "cancelled".into()));
        };
        let flat = image.reshape(&[-1]).map_err(mlx)?;
        let pixels: &[f32] = flat
            .try_as_slice::<f32>()
            .map_err(|e| self.error(ErrorKind::INTERNAL, format!("reading the image: {e}")))?;
        let per = (job.width * job.height * 3) as usize;
        let label = job.sampler.label();
        let mut images = Vec::with_capacity(job.count);
        for chunk in pixels.chunks(per) {
            let params = png_out::Parameters {
                prompt: &job.prompt,
                negative_prompt: &job.negative_prompt,
                steps: job.steps,
                sampler: label,
                guidance: job.guidance,
                seed,
                width: job.width,
                height: job.height,
                model: &self.id,
            };
            let png = png_out::encode(&png_out::to_bytes(chunk), job.width, job.height, &params)
                .map_err(|m| self.error(ErrorKind::INTERNAL, m))?;
            images.push(png.into());
        }
        Ok(ImageResponse {
            images: images.into(),
            seed,
        })
    }
}

/// A seed when the request names none: from the clock and the process.
fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (std::process::id() as u64).rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11
}

plugin_sdk::export_plugin!(DiffusionPlugin);
