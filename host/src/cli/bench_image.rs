//! `mlxengine bench-image`: text-to-image timed in one process — a short warm-up run
//! (loading the model and compiling kernels), then `--runs` runs; the time of each
//! denoising step (between the plugin's progress reports), of the whole image, and of
//! the rest (text encoding, VAE decode, PNG), as median and min–max.

use super::{bench::stats, human_bytes, print_json};
use anyhow::{Context, Result};
use clap::Args;
use engine::{request::Image, Engine};
use plugin_api::{image::ImageRequest, text::StreamControl, ModelKind};
use serde_json::json;
use std::time::Instant;

#[derive(Args)]
pub(crate) struct BenchImageArgs {
    /// Registry id of a diffusion model (default: the registry's default).
    #[arg(long, short)]
    pub(crate) model: Option<String>,
    /// WIDTHxHEIGHT (default: the model's).
    #[arg(long)]
    pub(crate) size: Option<String>,
    /// Denoising steps per image.
    #[arg(long, default_value_t = 20)]
    pub(crate) steps: u32,
    /// Sampler (default: euler).
    #[arg(long, default_value = "euler")]
    pub(crate) sampler: String,
    /// Guidance scale (above 1: two UNet rows a step).
    #[arg(long, default_value_t = 7.5)]
    pub(crate) guidance: f32,
    /// Timed runs after the warm-up.
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Force a provider (default: best probe score).
    #[arg(long)]
    pub(crate) backend: Option<String>,
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn cmd_bench_image(engine: &Engine, a: &BenchImageArgs) -> Result<()> {
    let model = match &a.model {
        Some(m) => m.clone(),
        None => engine.default_model(ModelKind::DIFFUSION)?,
    };
    let (width, height) = match &a.size {
        Some(s) => super::image::parse_size(s)?,
        None => (0, 0),
    };
    let req = |steps: u32| {
        Image::new(ImageRequest {
            prompt: "a photograph of an astronaut riding a horse on the moon".into(),
            negative_prompt: "blurry, low quality".into(),
            width,
            height,
            steps,
            guidance: a.guidance,
            seed: Some(1).into(),
            count: 1,
            sampler: a.sampler.as_str().into(),
            ..Default::default()
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
    };
    let backend = a.backend.as_deref();
    let baseline = engine::device::rss_now();
    let t = Instant::now();
    engine.generate_image(&model, backend, &req(2)?, &mut |_| StreamControl::Continue)?;
    let warm_up = t.elapsed().as_secs_f64();
    let (mut step_s, mut image_s, mut rest_s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.runs.max(1) {
        let start = Instant::now();
        let mut last = start;
        let mut steps = Vec::new();
        engine.generate_image(&model, backend, &req(a.steps)?, &mut |ev| {
            if ev.stage.as_str() == "denoise" {
                let now = Instant::now();
                steps.push((now - last).as_secs_f64());
                last = now;
            }
            StreamControl::Continue
        })?;
        let total = start.elapsed().as_secs_f64();
        // The first step's time includes encoding the prompts: the steady state is the
        // median of the others.
        let steady: Vec<f64> = steps.iter().skip(1).copied().collect();
        let per = stats(if steady.is_empty() {
            steps.clone()
        } else {
            steady
        })
        .0;
        step_s.push(per);
        image_s.push(total);
        rest_s.push(total - per * steps.len() as f64);
    }
    let peak = engine::device::rss_peak();
    let (st, im, re) = (stats(step_s), stats(image_s), stats(rest_s));
    let size = a.size.clone().unwrap_or_else(|| "default".into());
    if a.json {
        return print_json(&json!({
            "model": model, "plugin": engine.served_by(&model, backend), "size": size,
            "steps": a.steps, "sampler": a.sampler, "guidance": a.guidance, "runs": a.runs,
            "warm_up_s": warm_up,
            "step_s": {"median": st.0, "min": st.1, "max": st.2},
            "image_s": {"median": im.0, "min": im.1, "max": im.2},
            "other_s": {"median": re.0, "min": re.1, "max": re.2},
            "peak_rss_bytes": peak, "baseline_rss_bytes": baseline,
        }));
    }
    let plugin = engine
        .served_by(&model, backend)
        .context("the model was not loaded")?;
    println!(
        "{model} on {plugin}, {size}, {} {} steps, guidance {} (median, min–max of {} runs; warm-up {warm_up:.1} s):",
        a.steps, a.sampler, a.guidance, a.runs
    );
    println!("  step    {:>8.3} s ({:.3}–{:.3})", st.0, st.1, st.2);
    println!("  image   {:>8.2} s ({:.2}–{:.2})", im.0, im.1, im.2);
    println!("  other   {:>8.2} s (text encoders, VAE decode, PNG)", re.0);
    println!("  peak RSS {}", human_bytes(peak));
    Ok(())
}
