//! `mlxengine device`: this machine, the memory budget, and each plugin's probe.

use super::print_json;
use anyhow::Result;
use engine::Engine;
use serde_json::json;

pub(crate) fn cmd_device(engine: &Engine, as_json: bool) -> Result<()> {
    use engine::{device, fit::human};
    let d = engine.device();
    let probes: Vec<serde_json::Value> = engine
        .plugins()
        .plugins
        .iter()
        .map(|p| {
            let pr = engine.probe_device(p);
            json!({"plugin": p.descriptor.name.as_str(), "score": pr.score,
                   "backend": pr.backend.as_str(), "reason": pr.reason.as_str()})
        })
        .collect();
    let mlx_backend = probes
        .iter()
        .filter_map(|p| p["backend"].as_str())
        .find(|b| b.starts_with("mlx-"))
        .map(str::to_owned);
    let v = json!({
        "os": d.os.as_str(), "arch": d.arch.as_str(),
        "cpu": device::cpu_model(),
        "logical_cores": d.cpu_cores, "physical_cores": d.physical_cores,
        "cpu_features": d.cpu_features.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
        "total_memory_bytes": d.total_memory, "available_memory_bytes": d.available_memory,
        "memory_budget_bytes": engine.memory_budget(),
        "mlx_backend": mlx_backend,
        "gpus": d.accelerators.iter().map(|a| json!({"name": a.name.as_str(), "memory_bytes": a.total_memory, "api": a.api.as_str(), "compute_capability": a.compute_capability.as_str()})).collect::<Vec<_>>(),
        "blas": device::blas_libraries(),
        "plugins": probes,
    });
    if as_json {
        return print_json(&v);
    }
    println!(
        "{} {} — {}",
        d.os,
        d.arch,
        v["cpu"].as_str().unwrap_or("unknown CPU")
    );
    println!(
        "  cores:   {} physical, {} logical; SIMD: {}",
        v["physical_cores"],
        d.cpu_cores,
        d.cpu_features
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  memory:  {} total, {} available (cgroup limits respected); budget {}",
        human(d.total_memory),
        human(d.available_memory),
        human(engine.memory_budget())
    );
    println!(
        "  MLX:     {}",
        mlx_backend.as_deref().unwrap_or("no MLX plugin loaded")
    );
    for a in d.accelerators.iter() {
        println!(
            "  GPU:     {} {}: {}, {}, compute capability {}",
            a.api,
            a.index,
            a.name,
            human(a.total_memory),
            a.compute_capability
        );
    }
    println!("  BLAS:    {}", device::blas_libraries().join(", "));
    for p in &probes {
        println!(
            "  plugin {:<10} score {:>3} on {:<9} {}",
            p["plugin"].as_str().unwrap_or(""),
            p["score"],
            p["backend"].as_str().unwrap_or(""),
            p["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
