//! `mlxengine remove`: a model out of the user's runtime registry (its files stay).

use anyhow::Result;
use engine::{paths::models_dir, registry::UserRegistry};
use std::path::PathBuf;

pub(crate) fn cmd_remove(registries: &[PathBuf], id: &str) -> Result<()> {
    let user = UserRegistry::lock(registries)?;
    user.remove(id)?;
    println!("removed `{id}` from {}", user.path().display());
    let local = models_dir().join(id);
    if local.exists() {
        println!("(its files in {} were left in place)", local.display());
    }
    Ok(())
}
