//! The verbs of `mlxengine`, one file each, and the few helpers they share. No logic a
//! library should hold lives here: each verb parses its flags, calls the engine (or the
//! server, or the store) and prints.

pub mod adapter;
pub mod add;
pub mod bench;
pub mod bench_image;
pub mod chat;
pub mod device;
pub mod embed;
pub mod fuse;
pub mod generate;
pub mod hub;
pub mod image;
pub mod import;
pub mod info;
pub mod models;
pub mod perplexity;
pub mod plugins;
pub mod quantize;
pub mod recommend;
pub mod remove;
pub mod serve;

use anyhow::{Context, Result};
use engine::Source;
use plugin_api::ModelKind;
use serde_json::json;

pub(crate) fn print_json(v: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

pub(crate) fn parse_kind(k: &str) -> Result<ModelKind> {
    ModelKind::from_name(k).with_context(|| {
        format!(
            "unknown kind `{k}` (expected one of {})",
            ModelKind::ALL.map(|k| k.name()).join(", ")
        )
    })
}

pub(crate) fn source_str(s: &Source) -> String {
    match s {
        Source::Hub { repo, revision, .. } => format!("hf://{repo}@{revision}"),
        Source::Path(p) => p.display().to_string(),
    }
}

pub(crate) fn human_bytes(b: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Resident memory before the model was loaded and the process's peak since: what the
/// model and its request cost (compared with `info`'s estimate).
pub(crate) fn memory_json(baseline_rss: u64) -> serde_json::Value {
    let peak = engine::device::rss_peak();
    json!({
        "baseline_rss_bytes": baseline_rss,
        "peak_rss_bytes": peak,
        "model_peak_bytes": peak.saturating_sub(baseline_rss),
    })
}
