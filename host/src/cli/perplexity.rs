//! `mlxengine perplexity`: a model's perplexity on a text file, computed as llama.cpp's
//! `llama-perplexity` does (chunks of `--ctx` tokens, the second half of each scored).

use super::print_json;
use anyhow::{Context, Result};
use engine::Engine;
use std::{path::PathBuf, time::Instant};

#[derive(clap::Args)]
pub(crate) struct PerplexityArgs {
    /// Registry id of an `llm` model.
    #[arg(short, long)]
    model: String,
    /// The text to score (UTF-8).
    #[arg(short, long)]
    file: PathBuf,
    /// Tokens per chunk (llama.cpp's `-c`).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Read at most this many chunks (llama.cpp's `--chunks`).
    #[arg(long)]
    chunks: Option<usize>,
    /// Backend or plugin to run on (`mlx`, `ggml`, …).
    #[arg(long)]
    backend: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn cmd_perplexity(engine: &Engine, a: &PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("{}", a.file.display()))?;
    let start = Instant::now();
    let p = engine.perplexity(&a.model, a.backend.as_deref(), &text, a.ctx, a.chunks)?;
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&p)?;
        v["model"] = a.model.as_str().into();
        v["seconds"] = secs.into();
        return print_json(&v);
    }
    let running: Vec<String> = p
        .running
        .iter()
        .enumerate()
        .map(|(i, r)| format!("[{}]{r:.4}", i + 1))
        .collect();
    println!("{}", running.join(","));
    println!(
        "{}: perplexity {:.4} over {} tokens ({} chunks of {}, plugin {}) in {secs:.1} s",
        a.model, p.ppl, p.scored, p.chunks, p.ctx, p.plugin
    );
    Ok(())
}
