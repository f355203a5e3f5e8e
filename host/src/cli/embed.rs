//! `mlxengine embed`.

use super::memory_json;
use anyhow::{bail, Context, Result};
use clap::Args;
use engine::request::{Embed, MAX_TEXTS};
use engine::Engine;
use plugin_api::embed::{EmbedRequest, Pooling};
use std::io::Read;

#[derive(Args)]
pub(crate) struct EmbedArgs {
    /// Registry id of an embedding model.
    #[arg(long, short)]
    pub(crate) model: String,
    /// Texts to embed; `-` reads one text per line from stdin.
    #[arg(required = true)]
    pub(crate) texts: Vec<String>,
    /// Pooling: default (the model's), mean, cls, last.
    #[arg(long, default_value = "default")]
    pub(crate) pooling: String,
    /// Do not L2-normalize (default: as the model's configuration says).
    #[arg(long)]
    pub(crate) no_normalize: bool,
    /// Fail on texts longer than the model's maximum instead of truncating them.
    #[arg(long)]
    pub(crate) no_truncate: bool,
    /// Force a provider: `mlx`, `ggml`, or a plugin name (default: best probe score).
    #[arg(long)]
    pub(crate) backend: Option<String>,
    /// Print `{"model":..,"dim":..,"embeddings":[[...]]}`.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn cmd_embed(engine: &Engine, args: &EmbedArgs) -> Result<()> {
    let mut texts = Vec::new();
    for t in &args.texts {
        if t == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading texts from stdin")?;
            texts.extend(s.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        } else {
            texts.push(t.clone());
        }
    }
    if texts.is_empty() {
        bail!("no texts to embed");
    }
    let pooling = Pooling::from_name(&args.pooling).with_context(|| {
        format!(
            "unknown pooling `{}` (default, mean, cls, last)",
            args.pooling
        )
    })?;
    let started = std::time::Instant::now();
    let baseline_rss = engine::device::rss_now();
    // One request takes at most MAX_TEXTS texts: a longer list (a file on stdin) goes in
    // several, answered in order.
    let (mut data, mut dim, mut prompt_tokens) = (Vec::new(), 0usize, 0u64);
    for (c, chunk) in texts.chunks(MAX_TEXTS).enumerate() {
        let req = Embed::new(EmbedRequest {
            texts: chunk.iter().map(|t| t.as_str().into()).collect(),
            pooling,
            normalize: if args.no_normalize { Some(false) } else { None }.into(),
            truncate: !args.no_truncate,
            options: "".into(),
        })
        .map_err(|e| match e.index {
            Some(i) => anyhow::anyhow!("text #{}: {}", c * MAX_TEXTS + i, e.message),
            None => anyhow::anyhow!("the texts: {e}"),
        })?;
        let out = engine.embed_on(&args.model, args.backend.as_deref(), &req)?;
        dim = out.dim as usize;
        prompt_tokens += out.prompt_tokens;
        data.extend_from_slice(&out.data);
    }
    let rows: Vec<&[f32]> = data.chunks(dim.max(1)).collect();
    if args.json {
        // Serialized directly (not through `json!`) so floats print as f32, not widened.
        #[derive(serde::Serialize)]
        struct Out<'a> {
            model: &'a str,
            dim: usize,
            embeddings: &'a [&'a [f32]],
            memory: serde_json::Value,
        }
        println!(
            "{}",
            serde_json::to_string(&Out {
                model: &args.model,
                dim,
                embeddings: &rows,
                memory: memory_json(baseline_rss),
            })?
        );
        return Ok(());
    }
    println!(
        "{} text(s) → {dim}-dim vectors ({} tokens, {:.1} ms)",
        rows.len(),
        prompt_tokens,
        started.elapsed().as_secs_f64() * 1e3
    );
    for (t, r) in texts.iter().zip(&rows) {
        let head: Vec<String> = r.iter().take(6).map(|v| format!("{v:+.4}")).collect();
        println!("[{} …]  {t}", head.join(", "));
    }
    if rows.len() > 1 {
        println!("cosine similarity:");
        for i in 0..rows.len() {
            let line: Vec<String> = (0..rows.len())
                .map(|j| format!("{:+.3}", cosine(rows[i], rows[j])))
                .collect();
            println!("  {}", line.join("  "));
        }
    }
    Ok(())
}

pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}
