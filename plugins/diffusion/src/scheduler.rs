//! The samplers, as diffusers' schedulers compute them from `scheduler/scheduler_config.json`:
//! the training noise schedule (betas → ᾱ), the inference timesteps by the config's
//! spacing, and each sampler's update. Table: [`Sampler::ALL`].

use crate::nn::MlxResult;
use mlx_common::ModelError;
use mlx_rs::{ops, Array};
use serde_json::Value as Json;
use std::path::Path;

/// What the UNet predicts (`prediction_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prediction {
    /// The noise (SD 1.x, SD 2.x base, SDXL).
    Epsilon,
    /// The velocity √ᾱ·ε − √(1−ᾱ)·x₀ (SD 2.x 768).
    Velocity,
}

/// How inference timesteps are spread over the training ones (`timestep_spacing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spacing {
    Leading,
    Linspace,
    Trailing,
}

/// A sampler a request can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    /// Euler (`EulerDiscreteScheduler`).
    Euler,
    /// Euler ancestral (`EulerAncestralDiscreteScheduler`): fresh noise each step.
    EulerAncestral,
    /// DDIM, deterministic (`DDIMScheduler`, η = 0).
    Ddim,
    /// DPM-Solver++ 2M (`DPMSolverMultistepScheduler`: second order, midpoint, the last
    /// step first order).
    DpmPP2M,
}

impl Sampler {
    /// Every sampler: request name, diffusers class, the name image tools print.
    pub const ALL: [(&'static str, &'static str, &'static str, Sampler); 4] = [
        ("euler", "EulerDiscreteScheduler", "Euler", Sampler::Euler),
        (
            "euler_a",
            "EulerAncestralDiscreteScheduler",
            "Euler a",
            Sampler::EulerAncestral,
        ),
        ("ddim", "DDIMScheduler", "DDIM", Sampler::Ddim),
        (
            "dpmpp_2m",
            "DPMSolverMultistepScheduler",
            "DPM++ 2M",
            Sampler::DpmPP2M,
        ),
    ];

    /// By request name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|s| s.0 == name).map(|s| s.3)
    }

    /// The request names, for messages.
    pub fn names() -> String {
        Self::ALL.map(|s| s.0).join(", ")
    }

    /// The request name.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|s| s.3 == self).map_or("", |s| s.0)
    }

    /// The name A1111-style `parameters` carry.
    pub fn label(self) -> &'static str {
        Self::ALL.iter().find(|s| s.3 == self).map_or("", |s| s.2)
    }
}

/// `scheduler_config.json`, resolved.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// ᾱ at each training timestep.
    alphas_cumprod: Vec<f32>,
    pub prediction: Prediction,
    spacing: Spacing,
    steps_offset: i64,
    set_alpha_to_one: bool,
    /// DDIM's `clip_sample` (its class default: on) and range.
    clip_sample: Option<f32>,
    /// The sampler the config's class names (Euler where the class is not one of ours,
    /// e.g. SD 1.5's PNDM: the same training schedule).
    pub default_sampler: Sampler,
    /// The config's class.
    pub class: String,
}

impl SchedulerConfig {
    /// From `file`.
    pub fn from_file(file: &Path) -> Result<Self, ModelError> {
        let c = crate::read_json(file)?;
        let bad = |msg: String| ModelError::Config {
            file: file.into(),
            msg,
        };
        let num = |k: &str, d: f64| c.get(k).and_then(Json::as_f64).unwrap_or(d);
        let n = c
            .get("num_train_timesteps")
            .and_then(Json::as_i64)
            .unwrap_or(1000);
        if !(2..=100_000).contains(&n) {
            return Err(bad(format!("`num_train_timesteps` = {n} is out of range")));
        }
        let (start, end) = (num("beta_start", 0.0001), num("beta_end", 0.02));
        if !(start > 0.0 && end > start && end < 1.0) {
            return Err(bad(format!(
                "`beta_start` {start} and `beta_end` {end} must satisfy 0 < start < end < 1"
            )));
        }
        // In float32, as torch computes them.
        let betas: Vec<f32> = match c.get("trained_betas") {
            Some(Json::Array(a)) => {
                let b: Vec<f32> = a.iter().map(|v| v.as_f64().unwrap_or(-1.0) as f32).collect();
                if b.len() as i64 != n || b.iter().any(|&x| !(0.0..1.0).contains(&x)) {
                    return Err(bad(format!(
                        "`trained_betas` must hold {n} values in [0, 1)"
                    )));
                }
                b
            }
            _ => match c
                .get("beta_schedule")
                .and_then(Json::as_str)
                .unwrap_or("linear")
            {
                "scaled_linear" => linspace(start.sqrt() as f32, end.sqrt() as f32, n as usize)
                    .into_iter()
                    .map(|b| b * b)
                    .collect(),
                "linear" => linspace(start as f32, end as f32, n as usize),
                "squaredcos_cap_v2" => {
                    let f = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                    (0..n)
                        .map(|i| {
                            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                            (1.0 - f(t2) / f(t1)).min(0.999) as f32
                        })
                        .collect()
                }
                other => {
                    return Err(bad(format!(
                        "`beta_schedule` \"{other}\" is not supported (scaled_linear, linear, squaredcos_cap_v2)"
                    )))
                }
            },
        };
        let mut acc = 1f32;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        let prediction = match c
            .get("prediction_type")
            .and_then(Json::as_str)
            .unwrap_or("epsilon")
        {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::Velocity,
            other => {
                return Err(bad(format!(
                    "`prediction_type` \"{other}\" is not supported (epsilon, v_prediction)"
                )))
            }
        };
        let class = c
            .get("_class_name")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_owned();
        let default_sampler = Sampler::ALL
            .iter()
            .find(|s| s.1 == class)
            .map_or(Sampler::Euler, |s| s.3);
        // Each class's own default where the key is absent (`from_config` keeps them).
        let spacing_default = match default_sampler {
            Sampler::Ddim => "leading",
            _ if class == "PNDMScheduler" => "leading",
            _ => "linspace",
        };
        let spacing = match c
            .get("timestep_spacing")
            .and_then(Json::as_str)
            .unwrap_or(spacing_default)
        {
            "leading" => Spacing::Leading,
            "linspace" => Spacing::Linspace,
            "trailing" => Spacing::Trailing,
            other => {
                return Err(bad(format!(
                    "`timestep_spacing` \"{other}\" is not supported (leading, linspace, trailing)"
                )))
            }
        };
        for k in [
            "use_karras_sigmas",
            "rescale_betas_zero_snr",
            "thresholding",
        ] {
            if c.get(k).and_then(Json::as_bool) == Some(true) {
                return Err(bad(format!("`{k}` = true is not supported yet")));
            }
        }
        let clip = c.get("clip_sample").and_then(Json::as_bool);
        Ok(Self {
            alphas_cumprod,
            prediction,
            spacing,
            steps_offset: c.get("steps_offset").and_then(Json::as_i64).unwrap_or(0),
            set_alpha_to_one: c
                .get("set_alpha_to_one")
                .and_then(Json::as_bool)
                .unwrap_or(true),
            clip_sample: clip
                .unwrap_or(true)
                .then(|| num("clip_sample_range", 1.0) as f32),
            default_sampler,
            class,
        })
    }

    fn train_steps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// The plan for `steps` inference steps of `sampler`.
    pub fn schedule(&self, sampler: Sampler, steps: usize) -> Schedule {
        let n = self.train_steps();
        let offset = self.steps_offset as f64;
        let ts: Vec<f64> = match (self.spacing, sampler) {
            // DPM-Solver spreads steps + 1 points and drops the last.
            (Spacing::Leading, Sampler::DpmPP2M) => {
                let ratio = (n / (steps + 1)) as f64;
                (1..=steps)
                    .rev()
                    .map(|i| (i as f64 * ratio).round() + offset)
                    .collect()
            }
            (Spacing::Linspace, Sampler::DpmPP2M) => (1..=steps)
                .rev()
                .map(|i| (i as f64 * (n - 1) as f64 / steps as f64).round())
                .collect(),
            (Spacing::Leading, _) => {
                let ratio = (n / steps) as f64;
                (0..steps)
                    .rev()
                    .map(|i| (i as f64 * ratio).round() + offset)
                    .collect()
            }
            (Spacing::Linspace, _) => {
                let v: Vec<f64> = (0..steps)
                    .map(|i| {
                        if steps == 1 {
                            0.0
                        } else {
                            i as f64 * (n - 1) as f64 / (steps - 1) as f64
                        }
                    })
                    .rev()
                    .collect();
                if sampler == Sampler::Ddim {
                    v.into_iter().map(f64::round).collect()
                } else {
                    v.into_iter().map(|t| t as f32 as f64).collect()
                }
            }
            (Spacing::Trailing, _) => {
                let ratio = n as f64 / steps as f64;
                (0..steps)
                    .map(|i| (n as f64 - i as f64 * ratio).round() - 1.0)
                    .collect()
            }
        };
        let sigma_all: Vec<f64> = self
            .alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt() as f64)
            .collect();
        let mut sigmas: Vec<f64> = ts
            .iter()
            .map(|&t| {
                let t = t.clamp(0.0, (n - 1) as f64);
                let (lo, frac) = (t.floor() as usize, t - t.floor());
                let hi = (lo + 1).min(n - 1);
                sigma_all[lo] + (sigma_all[hi] - sigma_all[lo]) * frac
            })
            .collect();
        sigmas.push(0.0);
        let max = sigmas.iter().cloned().fold(0.0, f64::max);
        let init_noise_sigma = match sampler {
            Sampler::Ddim | Sampler::DpmPP2M => 1.0,
            _ if matches!(self.spacing, Spacing::Linspace | Spacing::Trailing) => max,
            _ => (max * max + 1.0).sqrt(),
        };
        Schedule {
            sampler,
            timesteps: ts,
            sigmas: sigmas.into_iter().map(|s| s as f32 as f64).collect(),
            init_noise_sigma: init_noise_sigma as f32,
            config: self.clone(),
            stride: (n / steps) as i64,
            previous_x0: None,
        }
    }
}

/// `n` float32 values from `a` to `b` as `torch.linspace` computes them (from the start
/// for the first half, from the end for the second).
fn linspace(a: f32, b: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                a + step * i as f32
            } else {
                b - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// Inference timesteps and the sampler's state for one generation.
pub struct Schedule {
    pub sampler: Sampler,
    /// The UNet's timestep at each step.
    pub timesteps: Vec<f64>,
    /// Euler's σ at each step, and 0 after the last.
    sigmas: Vec<f64>,
    /// The starting noise's scale.
    pub init_noise_sigma: f32,
    config: SchedulerConfig,
    /// DDIM's distance to the previous timestep (training steps / inference steps).
    stride: i64,
    /// DPM-Solver++'s x₀ prediction of the step before.
    previous_x0: Option<Array>,
}

fn scalar(x: f64) -> Array {
    Array::from_f32(x as f32)
}

impl Schedule {
    /// Steps to run.
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// The UNet's input at step `i`: the latents scaled as the sampler wants them.
    pub fn scale_input(&self, i: usize, x: &Array) -> MlxResult<Array> {
        match self.sampler {
            Sampler::Ddim | Sampler::DpmPP2M => Ok(x.clone()),
            _ => {
                let s = self.sigmas[i];
                x.divide(scalar((s * s + 1.0).sqrt()))
            }
        }
    }

    /// The latents after step `i`, from the (guided) prediction `out`; `noise` draws the
    /// fresh noise an ancestral step adds (shaped as `x`).
    pub fn step(
        &mut self,
        i: usize,
        out: &Array,
        x: &Array,
        noise: &mut dyn FnMut() -> MlxResult<Array>,
    ) -> MlxResult<Array> {
        let f32 = mlx_rs::Dtype::Float32;
        let (out, x) = (out.as_dtype(f32)?, x.as_dtype(f32)?);
        match self.sampler {
            Sampler::Euler | Sampler::EulerAncestral => {
                let sigma = self.sigmas[i];
                let next = self.sigmas[i + 1];
                let x0 = match self.config.prediction {
                    Prediction::Epsilon => x.subtract(&out.multiply(scalar(sigma))?)?,
                    Prediction::Velocity => out
                        .multiply(scalar(-sigma / (sigma * sigma + 1.0).sqrt()))?
                        .add(&x.divide(scalar(sigma * sigma + 1.0))?)?,
                };
                let derivative = x.subtract(&x0)?.divide(scalar(sigma))?;
                if self.sampler == Sampler::Euler {
                    return x.add(&derivative.multiply(scalar(next - sigma))?);
                }
                let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
                let down = (next * next - up * up).sqrt();
                let prev = x.add(&derivative.multiply(scalar(down - sigma))?)?;
                prev.add(&noise()?.multiply(scalar(up))?)
            }
            Sampler::DpmPP2M => {
                // In the variance-preserving parametrisation: x = α·x₀ + σ·ε with
                // α = 1/√(s² + 1), σ = s·α for the schedule's s.
                let vp = |s: f64| {
                    let a = 1.0 / (s * s + 1.0).sqrt();
                    (a, s * a)
                };
                let (a_s, s_s) = vp(self.sigmas[i]);
                let x0 = match self.config.prediction {
                    Prediction::Epsilon => x
                        .subtract(&out.multiply(scalar(s_s))?)?
                        .divide(scalar(a_s))?,
                    Prediction::Velocity => x
                        .multiply(scalar(a_s))?
                        .subtract(&out.multiply(scalar(s_s))?)?,
                };
                let next = self.sigmas[i + 1];
                let last = i + 1 == self.len();
                let prev = self.previous_x0.replace(x0.clone());
                if next == 0.0 {
                    // λ → ∞: the step lands on x₀.
                    return Ok(x0);
                }
                let (a_t, s_t) = vp(next);
                let lambda = |a: f64, s: f64| a.ln() - s.ln();
                let h = lambda(a_t, s_t) - lambda(a_s, s_s);
                let first = x
                    .multiply(scalar(s_t / s_s))?
                    .subtract(&x0.multiply(scalar(a_t * ((-h).exp() - 1.0)))?)?;
                match prev {
                    Some(m1) if i > 0 && !last => {
                        let (a_1, s_1) = vp(self.sigmas[i - 1]);
                        let r0 = (lambda(a_s, s_s) - lambda(a_1, s_1)) / h;
                        let d1 = x0.subtract(&m1)?.multiply(scalar(1.0 / r0))?;
                        first.subtract(&d1.multiply(scalar(0.5 * a_t * ((-h).exp() - 1.0)))?)
                    }
                    _ => Ok(first),
                }
            }
            Sampler::Ddim => {
                let ac = &self.config.alphas_cumprod;
                let t = self.timesteps[i] as i64;
                let prev_t = t - self.stride;
                let a_t = ac[t.clamp(0, ac.len() as i64 - 1) as usize] as f64;
                let a_prev = if prev_t >= 0 {
                    ac[prev_t as usize] as f64
                } else if self.config.set_alpha_to_one {
                    1.0
                } else {
                    ac[0] as f64
                };
                let b_t = 1.0 - a_t;
                let (mut x0, eps) = match self.config.prediction {
                    Prediction::Epsilon => (
                        x.subtract(&out.multiply(scalar(b_t.sqrt()))?)?
                            .divide(scalar(a_t.sqrt()))?,
                        out.clone(),
                    ),
                    Prediction::Velocity => (
                        x.multiply(scalar(a_t.sqrt()))?
                            .subtract(&out.multiply(scalar(b_t.sqrt()))?)?,
                        out.multiply(scalar(a_t.sqrt()))?
                            .add(&x.multiply(scalar(b_t.sqrt()))?)?,
                    ),
                };
                // The pipelines keep the predicted ε when x₀ is clipped
                // (`use_clipped_model_output` off).
                if let Some(r) = self.config.clip_sample {
                    x0 = ops::clip(&x0, (Array::from_f32(-r), Array::from_f32(r)))?;
                }
                x0.multiply(scalar(a_prev.sqrt()))?
                    .add(&eps.multiply(scalar((1.0 - a_prev).sqrt()))?)
            }
        }
    }
}
