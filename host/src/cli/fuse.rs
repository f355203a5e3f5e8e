//! `mlxengine fuse`: a LoRA adapter merged into its base, as a new Hub-layout model.

use super::human_bytes;
use anyhow::{bail, Context, Result};
use clap::Args;
use engine::{Engine, ModelEntry};
use plugin_api::ModelKind;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub(crate) struct FuseArgs {
    /// The adapter: a `lora` registry id or an adapter folder (PEFT or mlx-lm), with an
    /// optional scale (`pirate:0.5`).
    #[arg(long, value_name = "ID|DIR[:SCALE]")]
    pub(crate) adapter: String,
    /// Registry id of the base model (default: the `lora` entry's base).
    #[arg(long)]
    pub(crate) base: Option<String>,
    /// The new model folder (written beside and renamed into place when complete).
    #[arg(long, short)]
    pub(crate) output: PathBuf,
}

pub(crate) fn cmd_fuse(engine: &Engine, a: &FuseArgs) -> Result<()> {
    let (name, scale) = match a.adapter.rsplit_once(':') {
        Some((n, s)) if s.parse::<f32>().is_ok() => (n, s.parse::<f32>()?),
        _ => (a.adapter.as_str(), f32::NAN),
    };
    let (dir, entry_base, entry_scale) = if Path::new(name).is_dir() {
        (PathBuf::from(name), None, None)
    } else {
        let e = engine.entry(name)?;
        if e.kind != ModelKind::LORA {
            bail!(
                "--adapter: `{name}` is a `{}` model, not a `lora` adapter",
                e.kind
            );
        }
        (engine.local_path(&e)?, e.base.clone(), e.scale)
    };
    let scale = if scale.is_nan() {
        entry_scale.unwrap_or(1.0)
    } else {
        scale
    };
    let base_id = a
        .base
        .clone()
        .or(entry_base)
        .context("--base: name the base model (the adapter folder does not say)")?;
    let base: ModelEntry = engine.entry(&base_id)?;
    if base.kind != ModelKind::LLM {
        bail!(
            "--base: `{base_id}` is a `{}` model; adapters apply to `llm` models",
            base.kind
        );
    }
    let base_path = engine.local_path(&base).with_context(|| {
        format!("--base: `{base_id}` is not downloaded (`mlxengine pull {base_id}`)")
    })?;
    let adapter = lora::Adapter::open(&dir)?;
    // A GGUF base is imported to float32 first (its quantized weights dequantized).
    let imported = gguf::model_file(&base_path).map(|file| {
        let tmp = a.output.with_file_name(format!(
            ".{}.{}.import",
            a.output.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        (file, tmp)
    });
    let source = match &imported {
        Some((file, tmp)) => {
            let _ = std::fs::remove_dir_all(tmp);
            gguf::hf::import(file, tmp)?;
            eprintln!("{base_id}: {} imported as float32 to fuse", file.display());
            tmp.clone()
        }
        None => base_path,
    };
    let result = lora::fuse::fuse(&source, &adapter, scale, &a.output);
    if let Some((_, tmp)) = &imported {
        let _ = std::fs::remove_dir_all(tmp);
    }
    let layers = result?;
    eprintln!(
        "fused {} layers of {} (scale {scale}) into {base_id}",
        layers.len(),
        dir.display()
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&a.output)?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        println!("{}  {}", f.display(), human_bytes(size));
    }
    Ok(())
}
