//! `mlxengine models`: the registered models.

use super::{human_bytes, parse_kind, print_json, source_str};
use anyhow::Result;
use engine::{Engine, ModelEntry};
use serde_json::json;

pub(crate) fn cmd_models(engine: &Engine, kind: Option<&str>, as_json: bool) -> Result<()> {
    let kind = kind.map(parse_kind).transpose()?;
    let reg = engine.registry();
    let models: Vec<&ModelEntry> = reg
        .models()
        .filter(|m| kind.is_none_or(|k| m.kind == k))
        .collect();
    if as_json {
        let list: Vec<_> = models
            .iter()
            .map(|m| {
                json!({
                    "id": m.id, "name": m.name, "kind": m.kind.name(), "architecture": m.architecture,
                    "source": source_str(&m.source), "parameters": m.parameters,
                    "size_bytes": m.size_bytes, "context_length": m.context_length,
                    "quantization": m.quantization, "local": engine.local_path(m).is_ok(),
                })
            })
            .collect();
        return print_json(&json!({ "models": list }));
    }
    println!(
        "{:<24} {:<9} {:<12} {:>9}  {:<6} source",
        "ID", "KIND", "ARCH", "SIZE", "LOCAL"
    );
    for m in models {
        let size = m.size_bytes.map(human_bytes).unwrap_or_else(|| "?".into());
        let local = if engine.local_path(m).is_ok() {
            "yes"
        } else {
            "no"
        };
        println!(
            "{:<24} {:<9} {:<12} {:>9}  {:<6} {}",
            m.id,
            m.kind.name(),
            m.architecture,
            size,
            local,
            source_str(&m.source)
        );
    }
    Ok(())
}
