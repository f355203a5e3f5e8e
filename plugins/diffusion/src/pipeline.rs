//! The pipelines, keyed by `model_index.json`'s `_class_name` ([`ARCHITECTURES`]): their
//! components loaded from diffusers' folder layout, and text-to-image as diffusers'
//! `__call__` runs it — prompt and negative prompt encoded, the starting noise scaled by
//! the sampler, classifier-free guidance over a batch of both, the sampler's steps, the
//! VAE's decode.

use crate::clip::{ClipConfig, ClipText, ClipTokenizer};
use crate::nn::MlxResult;
use crate::scheduler::{Sampler, SchedulerConfig};
use crate::unet::{Added, Unet, UnetConfig};
use crate::vae::{VaeConfig, VaeDecoder};
use mlx_common::{ModelError, Weights};
use mlx_rs::{ops, random, transforms::eval, Array, Dtype};
use std::path::{Path, PathBuf};

/// A pipeline class this plugin runs.
pub struct Arch {
    /// `_class_name` in `model_index.json`.
    pub class: &'static str,
    /// The registry's `architecture` for it.
    pub architecture: &'static str,
}

/// Every pipeline class served.
pub const ARCHITECTURES: [Arch; 2] = [
    Arch {
        class: "StableDiffusionPipeline",
        architecture: "stable_diffusion",
    },
    Arch {
        class: "StableDiffusionXLPipeline",
        architecture: "stable_diffusion_xl",
    },
];

/// Whether `arch` is SDXL's (two text encoders, pooled embedding and size conditions).
fn is_xl(arch: &Arch) -> bool {
    arch.class == "StableDiffusionXLPipeline"
}

/// The pipeline of `architecture` (registry name or class).
pub fn find(name: &str) -> Option<&'static Arch> {
    ARCHITECTURES
        .iter()
        .find(|a| a.architecture == name || a.class.eq_ignore_ascii_case(name))
}

/// The supported names, for messages.
pub fn supported_list() -> String {
    ARCHITECTURES.map(|a| a.architecture).join(", ")
}

/// `model_index.json`'s class.
pub fn class_of(dir: &Path) -> Result<String, ModelError> {
    let file = dir.join("model_index.json");
    let v = crate::read_json(&file)?;
    v.get("_class_name")
        .and_then(|c| c.as_str())
        .map(str::to_owned)
        .ok_or_else(|| ModelError::Config {
            file,
            msg: "`_class_name` is missing".into(),
        })
}

/// The safetensors of a component folder: `{stem}[.{variant}].safetensors`, or the
/// shards its `.index.json` lists, for the stems diffusers and transformers write.
pub fn component_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::MissingFile(dir.into()));
    }
    for stem in ["diffusion_pytorch_model", "model"] {
        for variant in ["", ".fp16"] {
            let single = dir.join(format!("{stem}{variant}.safetensors"));
            if single.is_file() {
                return Ok(vec![single]);
            }
            let index = dir.join(format!("{stem}{variant}.safetensors.index.json"));
            if index.is_file() {
                let v = crate::read_json(&index)?;
                let map = v
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .ok_or_else(|| ModelError::Config {
                        file: index.clone(),
                        msg: "`weight_map` is missing".into(),
                    })?;
                let mut files = Vec::new();
                for f in map.values() {
                    let name = f.as_str().unwrap_or("");
                    let p = mlx_common::inside(dir, name).map_err(|e| ModelError::Config {
                        file: index.clone(),
                        msg: format!("`weight_map`: {e}"),
                    })?;
                    if !files.contains(&p) {
                        files.push(p);
                    }
                }
                files.sort();
                return Ok(files);
            }
        }
    }
    Err(ModelError::Config {
        file: dir.into(),
        msg: "no diffusion_pytorch_model[.fp16].safetensors or model[.fp16].safetensors (nor an index of shards)"
            .into(),
    })
}

/// Every tensor of the component folder `dir`, to be cast to `dtype` as taken.
pub fn component_weights(dir: &Path, dtype: Dtype) -> Result<Weights, ModelError> {
    let files = component_files(dir)?;
    let mut tensors = std::collections::HashMap::new();
    for f in &files {
        if !f.is_file() {
            return Err(ModelError::MissingFile(f.clone()));
        }
        let part = Array::load_safetensors(f).map_err(|e| ModelError::Weights {
            file: f.clone(),
            msg: e.to_string(),
        })?;
        tensors.extend(part);
    }
    let source = if files.len() == 1 {
        files[0].clone()
    } else {
        dir.to_path_buf()
    };
    Ok(Weights::from_map(tensors, source, dtype))
}

/// One text-to-image job, checked by the plugin's request reader.
#[derive(Clone, Debug)]
pub struct Job {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub guidance: f32,
    pub sampler: Sampler,
    pub count: usize,
    pub seed: u64,
}

/// A loaded text-to-image pipeline.
pub struct Pipeline {
    pub arch: &'static Arch,
    pub tokenizer: ClipTokenizer,
    pub text: ClipText,
    /// SDXL's second tokenizer and text encoder (with its projection).
    pub text_2: Option<(ClipTokenizer, ClipText)>,
    /// SDXL: an empty negative prompt is zeros rather than the encoding of "".
    force_zeros: bool,
    pub unet: Unet,
    pub vae: VaeDecoder,
    pub scheduler: SchedulerConfig,
    pub dtype: Dtype,
}

fn strict(w: Weights) -> Result<(), ModelError> {
    w.finish().map_err(ModelError::from)
}

/// A text encoder folder.
fn load_text(dir: &Path, dtype: Dtype) -> Result<ClipText, ModelError> {
    let cfg = ClipConfig::from_file(&dir.join("config.json"))?;
    let mut w = component_weights(dir, dtype)?;
    let text = ClipText::load(cfg, &mut w)?;
    strict(w)?;
    Ok(text)
}

impl Pipeline {
    /// The folder `dir` (diffusers' layout) with weights in `dtype`.
    pub fn load(dir: &Path, dtype: Dtype) -> Result<Self, ModelError> {
        let class = class_of(dir)?;
        let arch = find(&class).ok_or_else(|| ModelError::Architecture {
            plugin: "diffusion",
            name: class.clone(),
            supported: supported_list(),
        })?;
        let tokenizer = ClipTokenizer::from_dir(&dir.join("tokenizer"))?;
        let text = load_text(&dir.join("text_encoder"), dtype)?;
        let xl = is_xl(arch);
        let text_2 = if xl {
            let t = load_text(&dir.join("text_encoder_2"), dtype)?;
            if t.config.projection.is_none() {
                return Err(ModelError::Config {
                    file: dir.join("text_encoder_2").join("config.json"),
                    msg: "SDXL's second text encoder must be `CLIPTextModelWithProjection` (its pooled embedding conditions the UNet)".into(),
                });
            }
            Some((ClipTokenizer::from_dir(&dir.join("tokenizer_2"))?, t))
        } else {
            None
        };
        let index = crate::read_json(&dir.join("model_index.json"))?;
        let force_zeros = index
            .get("force_zeros_for_empty_prompt")
            .and_then(|v| v.as_bool())
            .unwrap_or(xl);
        let unet_dir = dir.join("unet");
        let unet_file = unet_dir.join("config.json");
        let unet_cfg = UnetConfig::from_file(&unet_file)?;
        let bad = |msg: String| ModelError::Config {
            file: unet_file.clone(),
            msg,
        };
        let width = text.config.hidden + text_2.as_ref().map_or(0, |(_, t)| t.config.hidden);
        if unet_cfg.cross_dim != width {
            return Err(bad(format!(
                "`cross_attention_dim` {} differs from the text encoders' width {width}",
                unet_cfg.cross_dim
            )));
        }
        match (unet_cfg.text_time, &text_2) {
            (None, None) => {}
            (Some(tt), Some((_, t2))) => {
                let pooled = t2.config.projection.unwrap_or(t2.config.hidden);
                if tt.input_dim != pooled + 6 * tt.time_dim {
                    return Err(bad(format!(
                        "`projection_class_embeddings_input_dim` {} is not the pooled width {pooled} + 6 × `addition_time_embed_dim` {}",
                        tt.input_dim, tt.time_dim
                    )));
                }
            }
            (None, Some(_)) => {
                return Err(bad(
                    "SDXL's UNet needs `addition_embed_type` \"text_time\"".into(),
                ))
            }
            (Some(_), None) => {
                return Err(bad(
                    "`addition_embed_type` \"text_time\" belongs to SDXL's pipeline, not StableDiffusionPipeline".into(),
                ))
            }
        }
        let mut w = component_weights(&unet_dir, dtype)?;
        let unet = Unet::load(unet_cfg, &mut w)?;
        strict(w)?;
        let vae_dir = dir.join("vae");
        let vae_cfg = VaeConfig::from_file(&vae_dir.join("config.json"))?;
        if vae_cfg.latent_channels != unet.config.in_channels {
            return Err(ModelError::Config {
                file: vae_dir.join("config.json"),
                msg: format!(
                    "`latent_channels` {} differs from the UNet's `in_channels` {}",
                    vae_cfg.latent_channels, unet.config.in_channels
                ),
            });
        }
        // The VAE runs in float32 whatever the load dtype, as diffusers upcasts it
        // (`force_upcast`: SDXL's overflows in float16), and it is small.
        let mut w = component_weights(&vae_dir, Dtype::Float32)?;
        let vae = VaeDecoder::load(vae_cfg, &mut w)?;
        strict(w)?;
        let scheduler =
            SchedulerConfig::from_file(&dir.join("scheduler").join("scheduler_config.json"))?;
        Ok(Self {
            arch,
            tokenizer,
            text,
            text_2,
            force_zeros,
            unet,
            vae,
            scheduler,
            dtype,
        })
    }

    /// Pixels per latent along a side.
    pub fn factor(&self) -> u32 {
        self.vae.config.factor() as u32
    }

    /// The size the model was trained at (width = height).
    pub fn default_size(&self) -> u32 {
        self.unet.config.sample_size as u32 * self.factor()
    }

    /// The text context (1, L, width) of `prompt` and, for SDXL, its pooled embedding
    /// (1, pooled): the last hidden state (SD), or both encoders' next-to-last states side
    /// by side and the second's projected end token (SDXL).
    fn encode(&self, prompt: &str) -> Result<(Array, Option<Array>), ModelError> {
        let ids = vec![self.tokenizer.encode(prompt)?];
        let out = self.text.forward(&ids)?;
        let Some((tok_2, text_2)) = &self.text_2 else {
            return Ok((out.last, None));
        };
        let out_2 = text_2.forward(&[tok_2.encode(prompt)?])?;
        let ctx = ops::concatenate(&[out.penultimate, out_2.penultimate], 2)?;
        Ok((ctx, Some(out_2.pooled)))
    }

    /// [`encode`](Self::encode) of the negative prompt: SDXL's zeros for an empty one.
    fn encode_negative(
        &self,
        negative: &str,
        like: &(Array, Option<Array>),
    ) -> Result<(Array, Option<Array>), ModelError> {
        if negative.is_empty() && self.force_zeros {
            let zeros = |a: &Array| ops::zeros_like(a);
            return Ok((zeros(&like.0)?, like.1.as_ref().map(zeros).transpose()?));
        }
        self.encode(negative)
    }

    /// Starting noise for `job` (N, h, w, latent channels), float32, from its seed.
    pub fn noise(&self, job: &Job) -> MlxResult<Array> {
        let f = self.factor() as i32;
        let key = random::key(job.seed)?;
        random::normal::<f32>(
            &[
                job.count as i32,
                job.height as i32 / f,
                job.width as i32 / f,
                self.unet.config.in_channels,
            ][..],
            None,
            None,
            &key,
        )
    }

    /// Run `job` from `latents` (N, h, w, c; unscaled standard normal — [`noise`]
    /// draws them), calling `step(done, total)` after each step; it answers `false` to
    /// stop (then `Ok(None)`). The images (N, H, W, 3) in [0, 1], float32.
    pub fn run(
        &self,
        job: &Job,
        latents: Array,
        step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Option<Array>, ModelError> {
        let n = job.count as i32;
        let guided = job.guidance > 1.0;
        let pos = self.encode(&job.prompt)?;
        let rows = |a: &Array| repeat_rows(a, n);
        let (ctx, pooled) = if guided {
            let neg = self.encode_negative(&job.negative_prompt, &pos)?;
            let ctx = ops::concatenate(&[rows(&neg.0)?, rows(&pos.0)?], 0)?;
            let pooled = match (&neg.1, &pos.1) {
                (Some(a), Some(b)) => Some(ops::concatenate(&[rows(a)?, rows(b)?], 0)?),
                _ => None,
            };
            (ctx, pooled)
        } else {
            (rows(&pos.0)?, pos.1.as_ref().map(rows).transpose()?)
        };
        // SDXL's size conditions: original size, crop corner, target size (no crop).
        let batch = ctx.shape()[0];
        let (h, w) = (job.height as f32, job.width as f32);
        let ids: Vec<f32> = (0..batch).flat_map(|_| [h, w, 0.0, 0.0, h, w]).collect();
        let time_ids = Array::from_slice(&ids, &[batch, 6]);
        eval([&ctx])?;
        let mut schedule = self.scheduler.schedule(job.sampler, job.steps);
        let mut x = latents
            .as_dtype(Dtype::Float32)?
            .multiply(Array::from_f32(schedule.init_noise_sigma))?;
        let mut key = random::key(job.seed.wrapping_add(1))?;
        let total = schedule.len();
        for i in 0..total {
            let input = if guided {
                ops::concatenate(&[&x, &x], 0)?
            } else {
                x.clone()
            };
            let input = schedule.scale_input(i, &input)?.as_dtype(self.dtype)?;
            let rows = input.shape()[0];
            let t = Array::from_slice(&vec![schedule.timesteps[i] as f32; rows as usize], &[rows]);
            let added = pooled.as_ref().map(|p| Added {
                text_embeds: p,
                time_ids: &time_ids,
            });
            let out = self.unet.forward(&input, &t, &ctx, added)?;
            let out = if guided {
                let halves = out.split_equal(2, 0)?;
                let (uncond, text) = (&halves[0], &halves[1]);
                uncond.add(
                    &text
                        .subtract(uncond)?
                        .multiply(Array::from_f32(job.guidance))?,
                )?
            } else {
                out
            };
            let mut noise = || -> MlxResult<Array> {
                let (a, b) = random::split(&key, 2)?;
                key = a;
                random::normal::<f32>(x.shape(), None, None, &b)
            };
            let next = schedule.step(i, &out, &x, &mut noise)?;
            eval([&next])?;
            x = next;
            if !step(i + 1, total) {
                return Ok(None);
            }
        }
        let image = self.vae.decode(&x)?;
        eval([&image])?;
        Ok(Some(image))
    }

    /// Parameter count and bytes of every component.
    pub fn sizes(&self) -> (u64, u64) {
        let mut parts = vec![self.text.sizes(), self.unet.sizes(), self.vae.sizes()];
        if let Some((_, t)) = &self.text_2 {
            parts.push(t.sizes());
        }
        parts
            .iter()
            .fold((0, 0), |(p, b), (pp, bb)| (p + pp, b + bb))
    }
}

/// Each row of `x` (1, …) repeated `n` times along the batch.
fn repeat_rows(x: &Array, n: i32) -> MlxResult<Array> {
    if n == 1 {
        return Ok(x.clone());
    }
    let mut shape = x.shape().to_vec();
    shape[0] = n;
    ops::broadcast_to(x, &shape)
}
