//! `--adapter`, shared by `generate`, `chat` and `bench`: LoRA adapters a request applies.

use anyhow::{Context, Result};
use clap::Args;
use engine::{
    request::{AdapterUse, Generate},
    Engine,
};
use std::path::Path;

#[derive(Args, Clone, Default)]
pub(crate) struct AdapterArgs {
    /// LoRA adapter to apply: a `lora` registry id or an adapter folder (PEFT or mlx-lm),
    /// with an optional scale (`pirate:0.5`); repeatable (the updates add up).
    #[arg(long = "adapter", value_name = "ID|DIR[:SCALE]")]
    pub(crate) adapter: Vec<String>,
}

impl AdapterArgs {
    /// `req` with these adapters, for model `model`: a folder is registered for this run
    /// as adapter `dir-<folder name>` of `model` (of its base, when `model` is an adapter).
    pub(crate) fn apply(&self, engine: &Engine, model: &str, req: Generate) -> Result<Generate> {
        if self.adapter.is_empty() {
            return Ok(req);
        }
        let mut uses = Vec::with_capacity(self.adapter.len());
        for arg in &self.adapter {
            let (name, scale) = match arg.rsplit_once(':') {
                Some((n, s)) if s.parse::<f32>().is_ok() => (n, Some(s)),
                _ => (arg.as_str(), None),
            };
            let id = if Path::new(name).is_dir() {
                self::register_folder(engine, model, Path::new(name))?
            } else {
                name.to_owned()
            };
            let spec = match scale {
                Some(s) => format!("{id}:{s}"),
                None => id,
            };
            uses.push(
                AdapterUse::parse(&spec)
                    .map_err(|e| anyhow::anyhow!("--adapter: {}", e.message))?,
            );
        }
        let mut all = req.adapters().to_vec();
        all.extend(uses);
        req.with_adapters(all)
            .map_err(|e| anyhow::anyhow!("--adapter: {}", e.message))
    }
}

/// Register the adapter folder `dir` for `model` under an id made from its name.
fn register_folder(engine: &Engine, model: &str, dir: &Path) -> Result<String> {
    let entry = engine.entry(model)?;
    let base = entry.base.clone().unwrap_or_else(|| model.to_owned());
    let dir = dir
        .canonicalize()
        .with_context(|| format!("--adapter {}", dir.display()))?;
    let name: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    let id = format!("dir-{}", name.trim_start_matches(['.', '-', '_']));
    if engine.entry(&id).is_err() {
        engine.register_adapter(&id, &base, &dir, None)?;
    }
    Ok(id)
}
