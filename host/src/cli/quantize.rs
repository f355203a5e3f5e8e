//! `mlxengine quantize`: a model (a folder, a `.gguf`, or a registry id with local files)
//! into a quantized copy — mlx-lm's MLX checkpoint format, or GGUF.

use super::{human_bytes, print_json};
use anyhow::{bail, Context, Result};
use engine::{request::Quantize, Engine};
use plugin_api::{quant::QuantizeRequest, text::StreamControl};
use serde_json::{json, Value as Json};
use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    time::Instant,
};

#[derive(clap::Args)]
pub(crate) struct QuantizeArgs {
    /// The model: a Hugging Face layout folder (f32/f16/bf16 safetensors), a .gguf file,
    /// or a registry id whose files are local.
    src: String,
    /// The folder to write (must not exist unless --force).
    #[arg(short = 'o', long = "output", value_name = "DST")]
    dst: PathBuf,
    /// Bits per weight (MLX affine: 2, 3, 4, 5, 6, 8; default 4).
    #[arg(long)]
    bits: Option<u32>,
    /// Weights per scale and bias (MLX affine: 32, 64, 128; default 64, mxfp4: 32).
    #[arg(long = "group-size")]
    group_size: Option<u32>,
    /// Quantization mode: `affine` (scale and bias per group) or `mxfp4` (4-bit floats,
    /// a power-of-two scale per 32).
    #[arg(long, default_value = "affine")]
    mode: String,
    /// Output format: `mlx` (mlx-lm's checkpoint) or `gguf` (llama.cpp's quantizer; the
    /// default when DST ends in .gguf or --type is given).
    #[arg(long)]
    format: Option<String>,
    /// mlx-lm's mixed recipe (mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6): more bits for
    /// v_proj/down_proj in some layers and for lm_head.
    #[arg(long)]
    recipe: Option<String>,
    /// Per-layer rules in a TOML file: `[[layer]]` tables with `match` (a module path,
    /// `*` for any run of characters) and `bits`, `group_size` or `quantize = false`;
    /// the first match decides.
    #[arg(long, value_name = "FILE")]
    layers: Option<PathBuf>,
    /// Float type of the kept tensors and the scales (default: the model's own).
    #[arg(long)]
    dtype: Option<String>,
    /// Keep layers whose inputs are not whole groups in float (mlx-lm does so silently).
    #[arg(long = "allow-float")]
    allow_float: bool,
    /// GGUF output type (llama-quantize's names): Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, F16, …
    #[arg(long = "type", value_name = "TYPE")]
    gguf_type: Option<String>,
    /// Replace DST if it exists (only once the new model is complete).
    #[arg(long)]
    force: bool,
    /// Print a JSON report (tensors, bytes in/out, seconds) instead of text.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(short, long)]
    quiet: bool,
}

/// The `[[layer]]` tables of a rules file, checked, as the plugin's `layers` option.
fn layer_rules(file: &Path) -> Result<Json> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("{}", file.display()))?;
    let mut rules = Vec::new();
    for (key, v) in &doc {
        if key != "layer" {
            bail!(
                "{}: unknown key `{key}` (expected [[layer]] tables)",
                file.display()
            );
        }
        let tables = v
            .as_array()
            .with_context(|| format!("{}: `layer` must be [[layer]] tables", file.display()))?;
        for (i, t) in tables.iter().enumerate() {
            let at = format!("{}: [[layer]] #{}", file.display(), i + 1);
            let t = t.as_table().with_context(|| format!("{at}: not a table"))?;
            let mut rule = serde_json::Map::new();
            for (k, v) in t {
                let val = match (k.as_str(), v) {
                    ("match", toml::Value::String(s)) => json!(s),
                    ("bits" | "group_size", toml::Value::Integer(n)) => json!(n),
                    ("quantize", toml::Value::Boolean(b)) => json!(b),
                    ("match" | "bits" | "group_size" | "quantize", _) => {
                        bail!("{at}: `{k}` has the wrong type ({})", v.type_str())
                    }
                    _ => bail!("{at}: unknown key `{k}` (match, bits, group_size, quantize)"),
                };
                rule.insert(k.clone(), val);
            }
            if !rule.contains_key("match") {
                bail!("{at}: `match` is missing");
            }
            for (k, allowed) in [
                ("bits", &engine::request::QUANT_BITS[..]),
                ("group_size", &engine::request::QUANT_GROUPS[..]),
            ] {
                if let Some(n) = rule.get(k).and_then(Json::as_i64) {
                    if !allowed.iter().any(|a| i64::from(*a) == n) {
                        bail!("{at}: `{k}` = {n} (MLX takes {allowed:?})");
                    }
                }
            }
            rules.push(Json::Object(rule));
        }
    }
    Ok(Json::Array(rules))
}

/// One progress line, redrawn in place on a terminal.
struct Bar {
    draw: bool,
    last: Option<Instant>,
}

impl Bar {
    fn show(&mut self, done: u64, total: u64, what: &str) {
        if !self.draw
            || self
                .last
                .is_some_and(|t| t.elapsed().as_millis() < 100 && done < total)
        {
            return;
        }
        self.last = Some(Instant::now());
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(0) as usize;
        let what: String = what.chars().take(48).collect();
        eprint!(
            "\r[{}{}] {done}/{total} {what:<48}",
            "#".repeat(filled),
            ".".repeat(width as usize - filled)
        );
        let _ = std::io::stderr().flush();
    }

    fn end(&self) {
        if self.last.is_some() {
            eprintln!();
        }
    }
}

pub(crate) fn cmd_quantize(engine: &Engine, a: &QuantizeArgs) -> Result<()> {
    // A registry id with local files, or a path.
    let src = if Path::new(&a.src).exists() {
        PathBuf::from(&a.src)
    } else if let Ok(entry) = engine.entry(&a.src) {
        engine.local_path(&entry)?
    } else {
        bail!(
            "{}: no such file or folder, and no registered model of that id",
            a.src
        );
    };
    let format = match &a.format {
        Some(f) => f.clone(),
        None if a.gguf_type.is_some() || a.dst.extension().is_some_and(|e| e == "gguf") => {
            "gguf".into()
        }
        None => "mlx".into(),
    };
    let mut options = serde_json::Map::new();
    options.insert("format".into(), json!(format));
    if let Some(r) = &a.recipe {
        options.insert("recipe".into(), json!(r));
    }
    if let Some(f) = &a.layers {
        options.insert("layers".into(), layer_rules(f)?);
    }
    if let Some(d) = &a.dtype {
        options.insert("dtype".into(), json!(d));
    }
    if a.allow_float {
        options.insert("allow_float".into(), json!(true));
    }
    if let Some(t) = &a.gguf_type {
        options.insert("gguf_type".into(), json!(t));
    }
    let req = QuantizeRequest {
        src: src.display().to_string().into(),
        dst: a.dst.display().to_string().into(),
        bits: a.bits.unwrap_or(4),
        group_size: a
            .group_size
            .unwrap_or(if a.mode == "mxfp4" { 32 } else { 64 }),
        mode: a.mode.as_str().into(),
        options: Json::Object(options).to_string().into(),
    };
    let req = Quantize::new(req, &format, a.force)?;
    let plugin = engine.quantizer(&req)?.descriptor.name.to_string();
    let mut bar = Bar {
        draw: !a.quiet && !a.json && std::io::stderr().is_terminal(),
        last: None,
    };
    let start = Instant::now();
    let result = engine.quantize(&req, &mut |ev| {
        bar.show(ev.done, ev.total, ev.message.as_str());
        StreamControl::Continue
    });
    bar.end();
    let report = result?;
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        return print_json(&json!({
            "src": src.display().to_string(),
            "dst": report.dst.as_str(),
            "plugin": plugin,
            "format": format,
            "tensors_quantized": report.tensors_quantized,
            "bytes_in": report.bytes_in,
            "bytes_out": report.bytes_out,
            "seconds": secs,
        }));
    }
    println!(
        "{}: {} tensors quantized by {plugin}, weights {} → {} in {secs:.1} s",
        report.dst.as_str(),
        report.tensors_quantized,
        human_bytes(report.bytes_in),
        human_bytes(report.bytes_out),
    );
    Ok(())
}
