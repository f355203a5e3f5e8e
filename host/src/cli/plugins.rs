//! `mlxengine plugins`: loaded plugins and load failures.

use super::print_json;
use anyhow::Result;
use engine::Engine;
use plugin_api::API_VERSION;
use serde_json::json;

pub(crate) fn cmd_plugins(engine: &Engine, as_json: bool) -> Result<()> {
    let set = engine.plugins();
    let loaded: Vec<_> = set
        .plugins
        .iter()
        .map(|p| {
            let d = &p.descriptor;
            json!({
                "name": d.name.as_str(),
                "version": d.version.as_str(),
                "description": d.description.as_str(),
                "path": p.path,
                "api_version": p.api_version(),
                "isolated": p.isolated(),
                "kinds": d.kinds.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
                "architectures": d.architectures.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                "formats": d.formats.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                "features": d.features.names(),
            })
        })
        .collect();
    let failed: Vec<_> = set
        .failures
        .iter()
        .map(|f| json!({"path": f.path, "error": f.error}))
        .collect();
    if as_json {
        return print_json(&json!({
            "api_version": API_VERSION,
            "search_path": set.dirs,
            "plugins": loaded,
            "errors": failed,
        }));
    }
    println!("plugin API version {API_VERSION}");
    if set.plugins.is_empty() {
        let dirs: Vec<String> = set.dirs.iter().map(|d| d.display().to_string()).collect();
        println!("no plugins loaded (searched: {})", dirs.join(", "));
    }
    for p in &set.plugins {
        let d = &p.descriptor;
        println!("{} {} — {}", d.name, d.version, d.description);
        let kinds: Vec<String> = d.kinds.iter().map(|k| k.to_string()).collect();
        println!("  kinds:         {}", kinds.join(", "));
        let archs: Vec<&str> = d.architectures.iter().map(|a| a.as_str()).collect();
        println!(
            "  architectures: {}",
            if archs.is_empty() {
                "any".into()
            } else {
                archs.join(", ")
            }
        );
        println!("  features:      {}", d.features.names().join(", "));
        println!("  api version:   {}", p.api_version());
        if p.isolated() {
            println!("  runs:          in a child process (isolated)");
        }
        println!("  library:       {}", p.path.display());
    }
    for f in &set.failures {
        println!("not loaded: {}: {}", f.path.display(), f.error);
    }
    Ok(())
}
