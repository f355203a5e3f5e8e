//! `mlxengine import`: a GGUF file to a Hugging Face layout directory.

use super::human_bytes;
use anyhow::Result;

pub(crate) fn cmd_import(src: &std::path::Path, dst: &std::path::Path) -> Result<()> {
    let files = gguf::hf::import(src, dst)?;
    for f in files {
        let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        println!("{}  {}", f.display(), human_bytes(size));
    }
    Ok(())
}
