//! `mlxengine info ID`: a registered model, its files, its candidates and its memory estimate.

use super::{human_bytes, print_json, source_str};
use anyhow::Result;
use engine::Engine;
use serde_json::json;

/// What `info`'s memory estimate is for.
pub(crate) struct InfoOpts<'a> {
    pub(crate) context: Option<u64>,
    pub(crate) batch: u64,
    pub(crate) backend: Option<&'a str>,
    pub(crate) dtype: Option<&'a str>,
}

pub(crate) fn cmd_info(engine: &Engine, id: &str, o: InfoOpts<'_>, as_json: bool) -> Result<()> {
    let mut m = engine.entry(id)?;
    if let Some(d) = o.dtype {
        m.dtype = Some(d.to_owned());
    }
    let local = engine.local_path(&m);
    let cands = engine.candidates(&m, m.features);
    let selected = engine.select_on(&m, m.features, o.backend).ok();
    let chosen = selected.map(|p| p.descriptor.name.to_string());
    let estimate = selected.map(|p| engine.estimate(&m, p, o.context, o.batch));
    let budget = engine.memory_budget();
    let (facts_json, est_json, fits) = match &estimate {
        Some(Ok((f, e))) => (
            json!(f),
            json!(e),
            json!({"fits": e.total_bytes <= budget, "budget_bytes": budget,
                   "available_bytes": engine.device().available_memory}),
        ),
        Some(Err(err)) => (json!(null), json!({"error": err.to_string()}), json!(null)),
        None => (json!(null), json!(null), json!(null)),
    };
    if as_json {
        return print_json(&json!({
            "id": m.id, "name": m.name, "description": m.description, "kind": m.kind.name(),
            "architecture": m.architecture, "source": source_str(&m.source),
            "quantization": m.quantization, "dtype": m.dtype, "parameters": m.parameters,
            "size_bytes": m.size_bytes, "context_length": m.context_length,
            "features": m.features.names(), "backend": m.backend, "defined_at": m.origin,
            "local_path": local.as_ref().ok(),
            "local_error": local.as_ref().err().map(|e| e.to_string()),
            "plugin": chosen,
            "facts": facts_json, "estimate": est_json, "fit": fits,
            "candidates": cands.iter().map(|c| json!({
                "plugin": c.plugin, "score": c.score, "backend": c.backend, "reason": c.reason
            })).collect::<Vec<_>>(),
        }));
    }
    println!("{} ({})", m.id, m.name);
    if !m.description.is_empty() {
        println!("  {}", m.description);
    }
    println!("  kind:          {}", m.kind);
    println!("  architecture:  {}", m.architecture);
    println!("  source:        {}", source_str(&m.source));
    if let Some(p) = m.parameters {
        println!("  parameters:    {:.1} M", p as f64 / 1e6);
    }
    if let Some(s) = m.size_bytes {
        println!("  size:          {}", human_bytes(s));
    }
    if let Some(c) = m.context_length {
        println!("  context:       {c} tokens");
    }
    if let Some(q) = &m.quantization {
        println!("  quantization:  {q}");
    }
    println!("  defined at:    {}", m.origin);
    match &local {
        Ok(p) => println!("  local files:   {}", p.display()),
        Err(e) => println!("  local files:   none ({e})"),
    }
    match &chosen {
        Some(name) => println!("  served by:     {name}"),
        None => println!("  served by:     no plugin"),
    }
    match &estimate {
        Some(Ok((_, e))) => {
            let h = engine::fit::human;
            let budget = engine.memory_budget();
            println!(
                "  memory:        ~{} (weights {} as {}, KV cache {} for {}×{} tokens, runtime {}); {} the {} budget",
                h(e.total_bytes),
                h(e.weights_bytes),
                e.weights_as,
                h(e.kv_cache_bytes),
                e.batch,
                e.context,
                h(e.runtime_bytes),
                if e.total_bytes <= budget { "fits" } else { "does NOT fit" },
                h(budget)
            );
        }
        Some(Err(err)) => println!("  memory:        unknown ({err})"),
        None => {}
    }
    for c in cands {
        println!(
            "    {:<16} score {:>3}  {} {}",
            c.plugin, c.score, c.backend, c.reason
        );
    }
    Ok(())
}
