//! `mlxengine image`: text-to-image with a `diffusion` model, a progress bar per step,
//! Ctrl-C stopping at the next step, PNG files written whole (beside, then renamed).

use super::print_json;
use anyhow::{bail, Context, Result};
use clap::Args;
use engine::request::Image;
use engine::Engine;
use plugin_api::{image::ImageRequest, text::StreamControl, ModelKind};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Args)]
pub(crate) struct ImageArgs {
    /// Registry id of a diffusion model (default: the registry's default diffusion model).
    #[arg(long, short)]
    pub(crate) model: Option<String>,
    /// What to draw.
    #[arg(long, short)]
    pub(crate) prompt: String,
    /// What to keep out of the picture.
    #[arg(long, visible_alias = "negative")]
    pub(crate) negative_prompt: Option<String>,
    /// Images to make (1–8).
    #[arg(short = 'n', long, default_value_t = 1)]
    pub(crate) count: u32,
    /// Denoising steps (default: the plugin's, 30).
    #[arg(long)]
    pub(crate) steps: Option<u32>,
    /// WIDTHxHEIGHT in pixels, multiples of 8 (default: the model's).
    #[arg(long)]
    pub(crate) size: Option<String>,
    /// Classifier-free guidance scale (1 = none; default 7.5).
    #[arg(long)]
    pub(crate) guidance: Option<f32>,
    /// RNG seed: the same seed gives the same image on this machine (default: random,
    /// printed).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// euler, euler_a, ddim, dpmpp_2m (default: the model's scheduler_config.json).
    #[arg(long)]
    pub(crate) sampler: Option<String>,
    /// Output PNG; with -n > 1, NAME-1.png, NAME-2.png, …
    #[arg(short = 'o', long, default_value = "image.png")]
    pub(crate) output: PathBuf,
    /// Force a provider: `mlx` or a plugin name (default: best probe score).
    #[arg(long)]
    pub(crate) backend: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// Print `{"model":..,"seed":..,"files":[..],"seconds":..}`.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `WIDTHxHEIGHT` → (width, height).
pub(crate) fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("--size `{s}`: expected WIDTHxHEIGHT, e.g. 512x512"))?;
    let side = |v: &str| {
        v.trim()
            .parse::<u32>()
            .with_context(|| format!("--size `{s}`: `{v}` is not a number of pixels"))
    };
    Ok((side(w)?, side(h)?))
}

/// Set by the first Ctrl-C; the second ends the process as usual.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    // SAFETY: restoring the default action is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// The files `-o` names for `n` images.
fn outputs(base: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![base.to_path_buf()];
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let ext = base
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    (1..=n)
        .map(|i| base.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}

/// `bytes` into `file`, whole or not at all (a sibling, then renamed).
fn write_whole(file: &Path, bytes: &[u8]) -> Result<()> {
    let name = file
        .file_name()
        .with_context(|| format!("{}: not a file name", file.display()))?;
    let tmp = file.with_file_name(format!(
        ".{}.{}.part",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, file));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", file.display()))
}

pub(crate) fn cmd_image(engine: &Engine, a: &ImageArgs) -> Result<()> {
    let (width, height) = match &a.size {
        Some(s) => parse_size(s)?,
        None => (0, 0),
    };
    let req = Image::new(ImageRequest {
        prompt: a.prompt.as_str().into(),
        negative_prompt: a.negative_prompt.as_deref().unwrap_or("").into(),
        width,
        height,
        steps: a.steps.unwrap_or(0),
        guidance: a.guidance.unwrap_or(0.0),
        seed: a.seed.into(),
        count: a.count,
        sampler: a.sampler.as_deref().unwrap_or("").into(),
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(dir) = a.output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "-o {}: the folder {} does not exist",
                a.output.display(),
                dir.display()
            );
        }
    }
    let model = match &a.model {
        Some(m) => m.clone(),
        None => engine.default_model(ModelKind::DIFFUSION)?,
    };
    // SAFETY: the handler only stores to an atomic and resets the disposition.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let draw = !a.quiet && !a.json && std::io::stderr().is_terminal();
    let start = Instant::now();
    let result = engine.generate_image(&model, a.backend.as_deref(), &req, &mut |ev| {
        if draw && ev.total > 0 {
            let width = 30u64;
            let filled = (ev.done.min(ev.total) * width / ev.total) as usize;
            let per = start.elapsed().as_secs_f64() / ev.done.max(1) as f64;
            eprint!(
                "\r{} [{}{}] {}/{} {:.2} s/step ",
                ev.stage,
                "#".repeat(filled),
                ".".repeat(width as usize - filled),
                ev.done,
                ev.total,
                per
            );
            let _ = std::io::stderr().flush();
        }
        if STOP.load(Ordering::SeqCst) {
            StreamControl::Stop
        } else {
            StreamControl::Continue
        }
    });
    if draw {
        eprintln!();
    }
    // SAFETY: as above.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
    let out = result?;
    let files = outputs(&a.output, out.images.len());
    for (file, png) in files.iter().zip(out.images.iter()) {
        write_whole(file, png)?;
    }
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        return print_json(&json!({
            "model": model,
            "seed": out.seed,
            "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
            "seconds": secs,
        }));
    }
    for f in &files {
        println!("{}", f.display());
    }
    eprintln!("seed {} · {secs:.1} s", out.seed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names() {
        assert_eq!(parse_size("512x768").unwrap(), (512, 768));
        assert_eq!(parse_size("64X48").unwrap(), (64, 48));
        assert!(parse_size("512").is_err());
        assert!(parse_size("ax5").is_err());
        assert_eq!(
            outputs(Path::new("out/cat.png"), 1),
            [PathBuf::from("out/cat.png")]
        );
        assert_eq!(
            outputs(Path::new("out/cat.png"), 2),
            [
                PathBuf::from("out/cat-1.png"),
                PathBuf::from("out/cat-2.png")
            ]
        );
    }
}
