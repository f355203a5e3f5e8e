//! `mlxengine search | pull | ls | rm` and `info OWNER/NAME`: the model store commands.

use super::print_json;
use anyhow::{Context, Result};
use clap::Args;
use engine::{fit::human, registry::UserRegistry, store, Engine, Source};
use hub::{progress, Hub, RepoRef};
use plugin_api::ModelKind;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct SearchArgs {
    /// Text to look for in model ids.
    pub query: String,
    /// Only models of this kind (llm, vlm, embed, diffusion).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only models of this user or organization.
    #[arg(long)]
    pub author: Option<String>,
    /// Most results.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Skip listing each hit's files (faster; no sizes).
    #[arg(long)]
    pub no_size: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PullArgs {
    /// `owner/name`, optionally `@revision` (branch, tag or commit).
    pub repo: String,
    /// Fetch only files matching these globs instead of the default choice (repeatable).
    #[arg(long)]
    pub include: Vec<String>,
    /// Leave out files matching these globs (repeatable).
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Registry id to add it under (default: the repo name, lowercased).
    #[arg(long)]
    pub id: Option<String>,
    /// Do not add it to the runtime registry.
    #[arg(long)]
    pub no_register: bool,
    /// Download even if no loaded plugin serves its architecture.
    #[arg(long)]
    pub force: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print one JSON object at the end.
    #[arg(long)]
    pub json: bool,
}

/// Hub pipeline tag for a kind.
fn pipeline_tag(kind: ModelKind) -> Option<&'static str> {
    match kind {
        ModelKind::LLM => Some("text-generation"),
        ModelKind::VLM => Some("image-text-to-text"),
        ModelKind::EMBED => Some("sentence-similarity"),
        ModelKind::DIFFUSION => Some("text-to-image"),
        _ => None,
    }
}

fn kind_of_tag(tag: &str) -> Option<ModelKind> {
    match tag {
        "text-generation" | "text2text-generation" => Some(ModelKind::LLM),
        "image-text-to-text" | "visual-question-answering" => Some(ModelKind::VLM),
        "sentence-similarity" | "feature-extraction" => Some(ModelKind::EMBED),
        "text-to-image" => Some(ModelKind::DIFFUSION),
        _ => None,
    }
}

pub fn cmd_search(engine: &Engine, a: &SearchArgs) -> Result<()> {
    let kind = a.kind.as_deref().map(super::parse_kind).transpose()?;
    let tag = match kind {
        Some(k) => Some(pipeline_tag(k).with_context(|| {
            format!("--kind {k}: the Hub has no models of that kind to search")
        })?),
        None => None,
    };
    let hub = Hub::from_env();
    let mut hits = hub.search(&a.query, tag, a.author.as_deref(), a.limit)?;
    for h in &mut hits {
        let k = kind.or_else(|| h.pipeline_tag.as_deref().and_then(kind_of_tag));
        if let (Some(k), Some(arch)) = (k, &h.architecture) {
            h.supported = Some(engine.serves_architecture(k, arch));
        }
        if !a.no_size {
            if let Ok(r) = RepoRef::parse(&h.id) {
                match hub.listing(&r) {
                    Ok(l) => {
                        h.size_bytes = hub::select_files(&l.files, &[], &[])
                            .ok()
                            .map(|s| s.total_bytes())
                    }
                    Err(e) => tracing::warn!(repo = %h.id, "listing failed: {e}"),
                }
            }
        }
    }
    if a.json {
        return print_json(&json!({"endpoint": hub.config().endpoint, "results": hits}));
    }
    if hits.is_empty() {
        println!("no models match `{}` on {}", a.query, hub.config().endpoint);
        return Ok(());
    }
    println!(
        "{:<48} {:>10} {:>6} {:<14} {:<10} {:>9} SUPPORTED",
        "MODEL", "DOWNLOADS", "LIKES", "ARCH", "LIBRARY", "SIZE"
    );
    let opt = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    for h in &hits {
        println!(
            "{:<48} {:>10} {:>6} {:<14} {:<10} {:>9} {}",
            h.id,
            opt(h.downloads),
            opt(h.likes),
            h.architecture.as_deref().unwrap_or("?"),
            h.library.as_deref().unwrap_or("-"),
            h.size_bytes.map_or("-".into(), human),
            match h.supported {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            }
        );
    }
    Ok(())
}

/// `info OWNER/NAME[@REV]`: the repo's files, what it is, and whether it fits.
pub fn cmd_hub_info(engine: &Engine, id: &str, as_json: bool) -> Result<()> {
    let r = RepoRef::parse(id)?;
    let hub = Hub::from_env();
    let i = store::inspect(engine, &hub, &r, &[], &[])?;
    let budget = engine.memory_budget();
    // The estimate for models not downloaded yet (weights as published plus runtime); the
    // refined one needs the files: `mlxengine info <id>` after `pull` gives it.
    let need = engine::fit::estimate_from_registry(
        i.plugin.as_deref().unwrap_or(""),
        Some(i.download_bytes),
        None,
    )
    .map_or(i.download_bytes, |e| e.total_bytes);
    let fits = need <= budget;
    let cached = hub::cache::RepoCache::new(&hub.config().cache_dir, &r.repo);
    if as_json {
        let files: Vec<_> = i
            .listing
            .files
            .iter()
            .map(|f| {
                let chosen = i.selection.files.iter().any(|s| s.path == f.path);
                json!({"path": f.path, "size": f.size, "sha256": f.lfs_sha256, "git_oid": f.git_oid,
                       "selected": chosen, "cached": cached.has(&i.listing.commit, f),
                       "skipped_because": i.selection.skipped.iter().find(|s| s.0 == f.path).map(|s| s.1)})
            })
            .collect();
        return print_json(&json!({
            "repo": r.repo, "revision": r.revision, "commit": i.listing.commit,
            "kind": i.kind.name(), "architecture": i.architecture, "quantization": i.quantization,
            "context_length": i.context_length, "download_bytes": i.download_bytes,
            "plugin": i.plugin.as_ref().ok(), "unsupported_because": i.plugin.as_ref().err(),
            "fit": {"estimated_bytes": need, "budget_bytes": budget, "fits": fits},
            "files": files,
        }));
    }
    println!("{} at {} ({})", r.repo, r.revision, i.listing.commit);
    println!("  kind:          {}", i.kind);
    println!("  architecture:  {}", i.architecture);
    println!(
        "  quantization:  {}",
        i.quantization.as_deref().unwrap_or("none")
    );
    if let Some(c) = i.context_length {
        println!("  context:       {c} tokens");
    }
    match &i.plugin {
        Ok(p) => println!("  served by:     {p}"),
        Err(why) => println!("  served by:     nothing loaded ({why})"),
    }
    println!(
        "  fits:          {} (≈{} needed, budget {})",
        if fits { "yes" } else { "no" },
        human(need),
        human(budget)
    );
    println!("  files ({} to download):", human(i.download_bytes));
    for f in &i.listing.files {
        let skipped = i.selection.skipped.iter().find(|s| s.0 == f.path);
        let mark = if cached.has(&i.listing.commit, f) {
            "cached"
        } else if skipped.is_none() {
            "pull"
        } else {
            "-"
        };
        println!(
            "    {:<7} {:>9}  {}{}",
            mark,
            human(f.size),
            f.path,
            skipped.map_or(String::new(), |s| format!("  ({})", s.1))
        );
    }
    Ok(())
}

pub fn cmd_pull(registries: &[PathBuf], engine: &Engine, a: &PullArgs) -> Result<()> {
    let r = RepoRef::parse(&a.repo)?;
    let hub = Hub::from_env();
    let i = store::inspect(engine, &hub, &r, &a.include, &a.exclude)?;
    if !a.force {
        store::require_supported(&i)?;
    }
    let mode = if a.json {
        progress::Mode::detect(true)
    } else {
        progress::Mode::detect(a.quiet)
    };
    let entry = i.entry(a.id.as_deref());
    let register = !a.no_register && i.plugin.is_ok();
    if register {
        // Before any byte is downloaded: the id it would be registered under is valid.
        engine::registry::check_id(&entry.id)
            .map_err(|e| anyhow::anyhow!("{}: {e}; choose one with --id", r.repo))?;
    }
    let p = progress::Progress::new(mode);
    let snap = hub.pull(&i.listing, &i.selection.files, &p)?;
    let registered = if register {
        Some(UserRegistry::lock(registries)?.register_pulled(&entry)?)
    } else {
        None
    };
    if a.json {
        return print_json(&json!({
            "repo": r.repo, "revision": r.revision, "commit": snap.commit,
            "path": snap.dir, "files": snap.files, "downloaded_bytes": snap.downloaded_bytes,
            "total_bytes": i.download_bytes, "registered_as": registered,
            "kind": i.kind.name(), "architecture": i.architecture,
        }));
    }
    if !a.quiet {
        println!(
            "{} ({} files, {}; {} downloaded) in {}",
            r,
            snap.files.len(),
            human(i.download_bytes),
            human(snap.downloaded_bytes),
            snap.dir.display()
        );
        match &registered {
            Some(id) => println!("registered as `{id}`: mlxengine {} -m {id} …", verb(i.kind)),
            None if i.plugin.is_err() => {
                println!("not registered: no loaded plugin serves it")
            }
            None => {}
        }
    }
    Ok(())
}

fn verb(k: ModelKind) -> &'static str {
    match k {
        ModelKind::EMBED => "embed",
        _ => "generate",
    }
}

pub fn cmd_ls(engine: &Engine, as_json: bool) -> Result<()> {
    let cfg = hub::HubConfig::from_env();
    let repos = hub::cache::scan(&cfg.cache_dir);
    let reg = engine.registry();
    let ids = |repo: &str| -> Vec<String> {
        reg.models()
            .filter(|m| matches!(&m.source, Source::Hub { repo: r, .. } if r == repo))
            .map(|m| m.id.clone())
            .collect()
    };
    if as_json {
        let v: Vec<_> = repos
            .iter()
            .map(|r| {
                let mut o = serde_json::to_value(r).unwrap_or_default();
                o["registered_as"] = json!(ids(&r.repo));
                o
            })
            .collect();
        return print_json(&json!({"cache_dir": cfg.cache_dir, "models": v}));
    }
    if repos.is_empty() {
        println!("no models in {}", cfg.cache_dir.display());
        return Ok(());
    }
    println!(
        "{:<48} {:>9} {:>6}  {:<12} REGISTERED AS",
        "MODEL", "SIZE", "FILES", "REVISION"
    );
    let mut total = 0;
    for r in &repos {
        total += r.size_bytes;
        let rev = r
            .refs
            .iter()
            .map(|(n, _)| n.as_str())
            .next()
            .map(str::to_owned)
            .or_else(|| r.snapshots.last().map(|c| c[..c.len().min(12)].to_owned()))
            .unwrap_or_else(|| "-".into());
        let partial = if r.incomplete_bytes > 0 {
            format!(" (+{} partial)", human(r.incomplete_bytes))
        } else {
            String::new()
        };
        println!(
            "{:<48} {:>9} {:>6}  {:<12} {}{}",
            r.repo,
            human(r.size_bytes),
            r.files,
            rev,
            ids(&r.repo).join(", "),
            partial
        );
    }
    println!("{} in {}", human(total), cfg.cache_dir.display());
    Ok(())
}

pub fn cmd_rm(repo: &str) -> Result<()> {
    hub::validate_repo_id(repo)?;
    let cfg = hub::HubConfig::from_env();
    let freed = hub::cache::remove(&cfg.cache_dir, repo)?;
    println!(
        "removed `{repo}` from {} ({} freed); registry entries that use it stay and download it again when used",
        cfg.cache_dir.display(),
        human(freed)
    );
    Ok(())
}
