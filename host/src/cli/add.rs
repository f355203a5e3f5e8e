//! `mlxengine add`: a model in the user's runtime registry (the shipped registry.toml is
//! never touched).

use super::parse_kind;
use anyhow::{bail, Context, Result};
use clap::Args;
use engine::{registry::UserRegistry, ModelEntry, Source};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct AddArgs {
    /// New model id.
    #[arg(long)]
    pub(crate) id: String,
    /// Kind: llm, vlm, embed, diffusion, lora, quant.
    #[arg(long)]
    pub(crate) kind: String,
    /// Architecture (`model_type` in config.json).
    #[arg(long)]
    pub(crate) architecture: String,
    /// Local model directory or file.
    #[arg(long, conflicts_with = "hub", required_unless_present = "hub")]
    pub(crate) path: Option<PathBuf>,
    /// Hugging Face repo `owner/name`.
    #[arg(long)]
    pub(crate) hub: Option<String>,
    /// Hub revision.
    #[arg(long, default_value = "main", requires = "hub")]
    pub(crate) revision: String,
    /// Display name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Load-time dtype (float32, float16, bfloat16).
    #[arg(long)]
    pub(crate) dtype: Option<String>,
    /// `lora` entries: registry id of the base model the adapter applies to.
    #[arg(long)]
    pub(crate) base: Option<String>,
    /// `lora` entries: the adapter's scale when a request gives none (default 1).
    #[arg(long)]
    pub(crate) scale: Option<f32>,
}

pub(crate) fn cmd_add(registries: &[PathBuf], a: &AddArgs) -> Result<()> {
    let kind = parse_kind(&a.kind)?;
    let source = match (&a.path, &a.hub) {
        (Some(p), None) => {
            let p = std::path::absolute(p).with_context(|| format!("path {}", p.display()))?;
            if !p.exists() {
                bail!("--path {}: no such file or directory", p.display());
            }
            Source::Path(p)
        }
        (None, Some(h)) => Source::Hub {
            repo: h.clone(),
            revision: a.revision.clone(),
            files: vec![],
        },
        _ => bail!("give exactly one of --path or --hub"),
    };
    let mut entry = ModelEntry::new(&a.id, kind, &a.architecture, source);
    entry.name = a.name.clone().unwrap_or_else(|| a.id.clone());
    entry.dtype = a.dtype.clone();
    entry.base = a.base.clone();
    entry.scale = a.scale;
    let user = UserRegistry::lock(registries)?;
    user.add(&entry, "mlxengine add")?;
    println!("added `{}` to {}", a.id, user.path().display());
    Ok(())
}
