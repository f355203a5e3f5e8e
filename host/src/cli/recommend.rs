//! `mlxengine recommend`: registry models that fit this machine, ranked.

use super::print_json;
use anyhow::{Context, Result};
use engine::{Engine, ModelEntry};
use plugin_api::ModelKind;
use serde_json::json;

pub(crate) fn cmd_recommend(engine: &Engine, kind: Option<&str>, as_json: bool) -> Result<()> {
    use engine::fit::{self, human};
    let kind = kind
        .map(|k| ModelKind::from_name(k).with_context(|| format!("unknown kind `{k}`")))
        .transpose()?;
    let budget = engine.memory_budget();
    let entries: Vec<ModelEntry> = engine
        .registry()
        .models()
        .filter(|m| kind.is_none_or(|k| m.kind == k))
        .cloned()
        .collect();
    let mut rows = Vec::new();
    for m in &entries {
        let plugin = engine.select_on(m, m.features, m.backend.as_deref());
        let (plugin_name, backend, est, why) = match plugin {
            Err(e) => (None, String::new(), None, Some(e.to_string())),
            Ok(p) => {
                let backend = engine.probe_model(p, m).backend.to_string();
                match engine.estimate(m, p, None, 1) {
                    Ok((_, e)) => (Some(p.descriptor.name.to_string()), backend, Some(e), None),
                    Err(err) => {
                        let e = fit::estimate_from_registry(
                            p.descriptor.name.as_str(),
                            m.size_bytes,
                            m.parameters,
                        );
                        let why = e.is_none().then(|| err.to_string());
                        (Some(p.descriptor.name.to_string()), backend, e, why)
                    }
                }
            }
        };
        let fits = est.as_ref().is_some_and(|e| e.total_bytes <= budget);
        let tps = est
            .as_ref()
            .filter(|_| m.kind == ModelKind::LLM)
            .and_then(fit::expected_decode_tps);
        let reason = match (&est, &why) {
            (_, Some(w)) => w.clone(),
            (Some(e), None) if !fits => format!(
                "needs about {}, more than the memory budget of {} (available {})",
                human(e.total_bytes),
                human(budget),
                human(engine.device().available_memory)
            ),
            (Some(e), None) => format!(
                "about {} of the {} budget",
                human(e.total_bytes),
                human(budget)
            ),
            (None, None) => "no estimate".into(),
        };
        rows.push(json!({
            "id": m.id, "kind": m.kind.name(), "plugin": plugin_name, "backend": backend,
            "fits": fits, "estimate_bytes": est.as_ref().map(|e| e.total_bytes),
            "weights_as": est.as_ref().map(|e| e.weights_as.clone()),
            "expected_decode_tps": tps,
            "speed_class": if m.kind == ModelKind::LLM { fit::speed_class(tps) } else { "n/a" },
            "local": engine.local_path(m).is_ok(),
            "reason": reason,
        }));
    }
    // Fitting models first; among them, LLMs by expected speed, then smaller first.
    rows.sort_by(|a, b| {
        let key = |r: &serde_json::Value| {
            (
                !r["fits"].as_bool().unwrap_or(false),
                -(r["expected_decode_tps"].as_f64().unwrap_or(0.0) as i64),
                r["estimate_bytes"].as_u64().unwrap_or(u64::MAX),
            )
        };
        key(a).cmp(&key(b))
    });
    if as_json {
        return print_json(&json!({"budget_bytes": budget, "models": rows}));
    }
    println!(
        "memory budget {} ({} physical cores)",
        human(budget),
        engine.device().physical_cores
    );
    for r in &rows {
        let est = r["estimate_bytes"].as_u64().map_or("?".into(), human);
        let speed = r["expected_decode_tps"]
            .as_f64()
            .map_or(String::new(), |t| format!(", ~{t:.0} tok/s"));
        println!(
            "{} {:<24} {:<6} {:>8}  {} on {}{} — {}",
            if r["fits"].as_bool().unwrap_or(false) {
                "✓"
            } else {
                "✗"
            },
            r["id"].as_str().unwrap_or(""),
            r["kind"].as_str().unwrap_or(""),
            est,
            r["weights_as"].as_str().unwrap_or("?"),
            r["plugin"].as_str().unwrap_or("no plugin"),
            speed,
            r["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
