//! `mlxengine fuse`: a LoRA adapter merged into its base, as a new Hub-layout model.

use super::human_bytes;
use anyhow::{bail, Context, Result};
use clap::Args;
use engine::request::Quantize;
use engine::{Engine, ModelEntry};
use plugin_api::{quant::QuantizeRequest, text::StreamControl, ModelKind};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub(crate) struct FuseArgs {
    /// The adapter: a `lora` registry id or an adapter folder (PEFT or mlx-lm), with an
    /// optional scale (`pirate:0.5`).
    #[arg(long, value_name = "ID|DIR[:SCALE]")]
    pub(crate) adapter: String,
    /// Registry id of the base model (default: the `lora` entry's base).
    #[arg(long)]
    pub(crate) base: Option<String>,
    /// The new model folder (written beside and renamed into place when complete).
    #[arg(long, short)]
    pub(crate) output: PathBuf,
    /// A GGUF base: quantize the fused model again (llama.cpp's quantizer) into
    /// OUTPUT/model.gguf instead of writing the float32 Hub-layout folder — with the base's
    /// own type (its `general.file_type`), or TYPE (Q8_0, Q6_K, …). An update smaller than
    /// the type's rounding step is lost: how much of it survived is reported.
    #[arg(long, value_name = "TYPE", num_args = 0..=1, default_missing_value = "base")]
    pub(crate) requantize: Option<String>,
}

pub(crate) fn cmd_fuse(engine: &Engine, a: &FuseArgs) -> Result<()> {
    let (name, scale) = match a.adapter.rsplit_once(':') {
        Some((n, s)) if s.parse::<f32>().is_ok() => (n, s.parse::<f32>()?),
        _ => (a.adapter.as_str(), f32::NAN),
    };
    let (dir, entry_base, entry_scale) = if Path::new(name).is_dir() {
        (PathBuf::from(name), None, None)
    } else {
        let e = engine.entry(name)?;
        if e.kind != ModelKind::LORA {
            bail!(
                "--adapter: `{name}` is a `{}` model, not a `lora` adapter",
                e.kind
            );
        }
        (engine.local_path(&e)?, e.base.clone(), e.scale)
    };
    let scale = if scale.is_nan() {
        entry_scale.unwrap_or(1.0)
    } else {
        scale
    };
    let base_id = a
        .base
        .clone()
        .or(entry_base)
        .context("--base: name the base model (the adapter folder does not say)")?;
    let base: ModelEntry = engine.entry(&base_id)?;
    if base.kind != ModelKind::LLM {
        bail!(
            "--base: `{base_id}` is a `{}` model; adapters apply to `llm` models",
            base.kind
        );
    }
    let base_path = engine.local_path(&base).with_context(|| {
        format!("--base: `{base_id}` is not downloaded (`mlxengine pull {base_id}`)")
    })?;
    let adapter = lora::Adapter::open(&dir)?;
    let base_gguf = gguf::model_file(&base_path);
    if base_gguf.is_none() {
        if let Some(q) = mlx_quantization(&base_path)? {
            if a.requantize.as_deref().is_some_and(|t| t != "base") {
                bail!(
                    "--requantize: `{base_id}` is MLX-quantized; its fused layers are packed \
                     again with its own settings (a TYPE is for GGUF bases)"
                );
            }
            return fuse_mlx_quantized(
                engine, &base_id, &base_path, &dir, &adapter, scale, q, &a.output,
            );
        }
    }
    let requantize = match (a.requantize.as_deref(), &base_gguf) {
        (None, _) => None,
        (Some("base"), Some(file)) => {
            let g = gguf::Gguf::open(file)?;
            let ft = g.int("general.file_type")?;
            Some(gguf::file_type_name(ft).map(str::to_owned).with_context(|| {
                format!("--requantize: {}: `general.file_type` {ft} is not a type llama.cpp's quantizer writes", file.display())
            })?)
        }
        (Some(ty), Some(_)) => Some(ty.to_owned()),
        (Some(_), None) => bail!(
            "--requantize: base `{base_id}` is not a GGUF (a float Hub-layout base has nothing to \
             requantize; quantize the fused folder with `mlxengine quantize` as you like)"
        ),
    };
    if a.output.exists() {
        bail!(
            "{}: already exists; choose a new folder",
            a.output.display()
        );
    }
    // Requantizing: the float fusion goes to a folder beside the output, removed after.
    let fused_dir = match requantize {
        Some(_) => a.output.with_file_name(format!(
            ".{}.{}.fused",
            a.output.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        )),
        None => a.output.clone(),
    };
    // A GGUF base is imported to float32 first (its quantized weights dequantized).
    let imported = gguf::model_file(&base_path).map(|file| {
        let tmp = a.output.with_file_name(format!(
            ".{}.{}.import",
            a.output.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        (file, tmp)
    });
    let source = match &imported {
        Some((file, tmp)) => {
            let _ = std::fs::remove_dir_all(tmp);
            gguf::hf::import(file, tmp)?;
            eprintln!("{base_id}: {} imported as float32 to fuse", file.display());
            tmp.clone()
        }
        None => base_path,
    };
    let _ = std::fs::remove_dir_all(&fused_dir);
    let result = lora::fuse::fuse(&source, &adapter, scale, &fused_dir);
    if let Some((_, tmp)) = &imported {
        let _ = std::fs::remove_dir_all(tmp);
    }
    let layers = result?;
    eprintln!(
        "fused {} layers of {} (scale {scale}) into {base_id}",
        layers.len(),
        dir.display()
    );
    if let (Some(ty), Some(base_file)) = (requantize, &base_gguf) {
        let req = QuantizeRequest {
            src: fused_dir.display().to_string().into(),
            dst: a.output.display().to_string().into(),
            bits: 4,
            group_size: 64,
            mode: "affine".into(),
            options: json!({"format": "gguf", "gguf_type": ty})
                .to_string()
                .into(),
        };
        let result = Quantize::new(req, "gguf", false)
            .map_err(anyhow::Error::from)
            .and_then(|req| Ok(engine.quantize(&req, &mut |_| StreamControl::Continue)?));
        let _ = std::fs::remove_dir_all(&fused_dir);
        result?;
        let kept = update_kept(base_file, &a.output.join("model.gguf"), &adapter, scale)?;
        report_kept(
            &format!("requantized as {ty}"),
            kept,
            "Requantize to a finer type (--requantize Q8_0) or keep the float32 folder.",
        );
    }
    list_files(&a.output)
}

/// The `quantization` block's default (bits, group size, mode) where `dir` is an
/// MLX-quantized model (mlx-lm's `config.json`).
fn mlx_quantization(dir: &Path) -> Result<Option<(u32, u32, String)>> {
    let file = dir.join("config.json");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(None);
    };
    let cfg: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}", file.display()))?;
    let Some(q) = cfg
        .get("quantization")
        .or_else(|| cfg.get("quantization_config"))
    else {
        return Ok(None);
    };
    let int = |k: &str, d: u64| q.get(k).and_then(serde_json::Value::as_u64).unwrap_or(d) as u32;
    let mode = q.get("mode").and_then(|m| m.as_str()).unwrap_or("affine");
    Ok(Some((
        int("bits", 4),
        int("group_size", 64),
        mode.to_owned(),
    )))
}

/// An MLX-quantized base: the quant plugin fuses each adapted layer and packs it again
/// with the layer's own settings (the rest of the model copied as it is).
#[allow(clippy::too_many_arguments)]
fn fuse_mlx_quantized(
    engine: &Engine,
    base_id: &str,
    base_path: &Path,
    adapter_dir: &Path,
    adapter: &lora::Adapter,
    scale: f32,
    (bits, group_size, mode): (u32, u32, String),
    output: &Path,
) -> Result<()> {
    let req = QuantizeRequest {
        src: base_path.display().to_string().into(),
        dst: output.display().to_string().into(),
        bits,
        group_size,
        mode: mode.clone().into(),
        options: json!({"fuse": {"adapter": adapter_dir.display().to_string(), "scale": scale}})
            .to_string()
            .into(),
    };
    let req = Quantize::new(req, "mlx", false)?;
    let report = engine.quantize(&req, &mut |_| StreamControl::Continue)?;
    eprintln!(
        "fused {} layers of {} (scale {scale}) into {base_id}, each packed again with its own \
         settings ({bits} bits, group {group_size}, {mode} unless the config says otherwise)",
        report.tensors_quantized,
        adapter_dir.display()
    );
    let kept = lora::fuse::Kept::of_folders(base_path, output, adapter, scale)?.fraction();
    report_kept(
        "requantized",
        kept,
        "Fuse into a finer quantization of the float original (more bits or a smaller group), \
         or serve the adapter unfused (--adapter).",
    );
    list_files(output)
}

fn report_kept(what: &str, kept: f64, advice: &str) {
    eprintln!(
        "{what}: {:.0}% of the adapter's update survived the rounding",
        100.0 * kept
    );
    if kept < 0.5 {
        eprintln!(
            "warning: most of the update is below the rounding step (the base's weights lie \
             on its grid and round back): the requantized model behaves much like the base. \
             {advice}"
        );
    }
}

fn list_files(dir: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in files {
        let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        println!("{}  {}", f.display(), human_bytes(size));
    }
    Ok(())
}

/// How much of the update survived requantization: the projection of (requantized −
/// base) onto the update `scale·B·A`, over all adapted layers (1: all of it, 0: none; the
/// rest of the difference is the second rounding's noise).
fn update_kept(base: &Path, fused: &Path, adapter: &lora::Adapter, scale: f32) -> Result<f64> {
    let (b, f) = (gguf::Gguf::open(base)?, gguf::Gguf::open(fused)?);
    let mut kept = lora::fuse::Kept::default();
    for m in &adapter.modules {
        let Some((name, heads)) = gguf::hf::linear_in_gguf(&b, &m.name)? else {
            continue;
        };
        let find = |g: &gguf::Gguf| g.tensors.iter().find(|t| t.name == name).cloned();
        let (Some(tb), Some(tf)) = (find(&b), find(&f)) else {
            continue;
        };
        let (vb, vf) = (b.to_f32(&tb)?, f.to_f32(&tf)?);
        let mut m = m.clone();
        m.scale *= scale;
        let mut d = lora::delta(&adapter.a(&m)?, &adapter.b(&m)?, &m);
        if let Some(h) = heads {
            d = gguf::hf::permute_rows(&d, m.out_features, m.in_features, h);
        }
        kept.add(&vb, &vf, &d);
    }
    Ok(kept.fraction())
}
