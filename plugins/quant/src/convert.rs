//! One conversion: the source's tensors in turn, each quantized or kept as the plan
//! says, written in mlx-lm's layout with a `config.json` whose `quantization` block
//! mlx-lm and the `llm` plugin read.

use crate::{
    plan::{Decision, Options, Plan, Setting},
    source::Source,
    writer::{ShardWriter, MAX_SHARD_BYTES},
};
use mlx_common::QuantMode;
use mlx_rs::Dtype;
use plugin_api::{
    quant::{QuantizeReport, QuantizeRequest},
    text::StreamControl,
    ErrorKind, PluginError,
};
use plugin_sdk::Progress;
use serde_json::{json, Value as Json};
use std::path::Path;

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::new(ErrorKind::INVALID_REQUEST, msg.into())
}

/// Checkpoint tensors inference never reads, dropped as mlx-lm's `sanitize` drops them
/// (mlx-lm refuses a checkpoint that still has them).
fn dropped(name: &str, config: &Json) -> bool {
    name.contains("rotary_emb.inv_freq")
        || (name == "lm_head.weight"
            && config.get("tie_word_embeddings").and_then(Json::as_bool) == Some(true))
}

/// Convert `req.src` into the existing, empty folder `req.dst`.
pub fn convert(
    req: &QuantizeRequest,
    progress: &mut dyn Progress,
) -> Result<QuantizeReport, PluginError> {
    let opts: Options = match req.options.as_str() {
        "" => Options::default(),
        s => serde_json::from_str(s).map_err(|e| invalid(format!("options: {e}")))?,
    };
    if let Some(f) = &opts.fuse {
        if opts.recipe.is_some() || !opts.layers.is_empty() || opts.dtype.is_some() {
            return Err(invalid(
                "options: `fuse` keeps the base's own quantization (no recipe, layers or dtype)",
            ));
        }
        return crate::fuse::fuse(req, f, progress);
    }
    let mode = match req.mode.as_str() {
        "" => QuantMode::Affine,
        m => QuantMode::parse(m).ok_or_else(|| {
            invalid(format!(
                "mode `{m}` is not supported ({})",
                mlx_common::QUANT_MODES.join(", ")
            ))
        })?,
    };
    if let Some((g, b)) = mode.fixed() {
        if (req.group_size as i32, req.bits as i32) != (g, b) {
            return Err(invalid(format!(
                "mode `{}` is {b} bits in groups of {g} (got {} bits, group {})",
                mode.name(),
                req.bits,
                req.group_size
            )));
        }
        if opts.recipe.is_some()
            || opts
                .layers
                .iter()
                .any(|r| r.bits.is_some() || r.group_size.is_some())
        {
            return Err(invalid(format!(
                "mode `{}` has one setting: recipes and per-layer bits or group sizes are for `affine` (rules with `quantize = false` apply)",
                mode.name()
            )));
        }
    }
    let src = Path::new(req.src.as_str());
    if !src.exists() {
        return Err(PluginError::new(
            ErrorKind::NOT_FOUND,
            format!("{}: no such file or folder", src.display()),
        ));
    }
    let source = Source::open(src).map_err(invalid)?;
    let dtype = match opts.dtype.as_deref() {
        Some(d) => Some(
            mlx_common::parse_dtype(d)
                .ok_or_else(|| invalid(format!("dtype `{d}`: use float32, float16 or bfloat16")))?,
        ),
        None => source.declared_dtype(),
    };
    let mut config = source.config().clone();
    let text = config.get("text_config").unwrap_or(&config);
    let layers = text
        .get("num_hidden_layers")
        .and_then(Json::as_u64)
        .unwrap_or(0) as usize;
    let default = Setting {
        group_size: req.group_size as i32,
        bits: req.bits as i32,
    };
    let plan = Plan::new(default, &opts, layers).map_err(invalid)?;
    // Every decision first: a refused tensor stops the conversion before anything is written.
    let tensors: Vec<(String, Vec<usize>)> = source
        .tensors()
        .map_err(invalid)?
        .into_iter()
        .filter(|(n, _)| !dropped(n, &config))
        .collect();
    let decisions = tensors
        .iter()
        .map(|(n, s)| plan.decide(n, s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let dst = Path::new(req.dst.as_str());
    let mut out = ShardWriter::new(dst, MAX_SHARD_BYTES);
    let mut block =
        json!({"group_size": default.group_size, "bits": default.bits, "mode": mode.name()});
    let (mut quantized, mut parameters, mut done) = (0u32, 0u64, 0usize);
    let mut plan_of = tensors.iter().zip(&decisions);
    let internal = |e: String| PluginError::new(ErrorKind::INTERNAL, e);
    let cancelled = std::cell::Cell::new(false);
    source
        .for_each(|name, shape, w| {
            if dropped(&name, &config) {
                return Ok(());
            }
            let (planned, decision) = plan_of
                .next()
                .ok_or("the source changed while it was read")?;
            if planned.0 != name {
                return Err(format!("the source changed while it was read (`{name}`)"));
            }
            if progress.step("quantize", done as u64, tensors.len() as u64, &name)
                == StreamControl::Stop
            {
                cancelled.set(true);
                return Err("cancelled".into());
            }
            done += 1;
            parameters += shape.iter().product::<usize>() as u64;
            let mlx = |e: mlx_rs::error::Exception| format!("tensor `{name}`: {e}");
            let w = match dtype {
                Some(d) if w.dtype() != d && is_float(w.dtype()) => w.as_dtype(d).map_err(mlx)?,
                _ => w,
            };
            match decision {
                Decision::Quantize(s) => {
                    let (q, scales, biases) =
                        mlx_common::qmode::quantize(&w, s.group_size, s.bits, mode)
                            .map_err(mlx)?;
                    let path = name.strip_suffix(".weight").expect("decided on a .weight");
                    out.add(&name, &q)?;
                    out.add(&format!("{path}.scales"), &scales)?;
                    if let Some(b) = &biases {
                        out.add(&format!("{path}.biases"), b)?;
                    }
                    quantized += 1;
                    if plan.per_layer() {
                        block[path] = json!({"group_size": s.group_size, "bits": s.bits, "mode": mode.name()});
                    }
                }
                Decision::Keep | Decision::Float | Decision::Indivisible => out.add(&name, &w)?,
            }
            Ok(())
        })
        .map_err(|e| {
            if cancelled.get() {
                PluginError::new(ErrorKind::CANCELLED, "quantization cancelled")
            } else {
                internal(e)
            }
        })?;
    let bytes_out = out.bytes();
    out.finish(parameters).map_err(internal)?;
    if let Some(d) = opts.dtype.as_deref().and_then(mlx_common::parse_dtype) {
        config["torch_dtype"] = json!(mlx_common::dtype_name(d));
    }
    config["quantization"] = block.clone();
    config["quantization_config"] = block;
    let write = |name: &str, bytes: &[u8]| {
        let p = dst.join(name);
        std::fs::write(&p, bytes).map_err(|e| internal(format!("{}: {e}", p.display())))
    };
    write(
        "config.json",
        &serde_json::to_vec_pretty(&config).expect("json"),
    )?;
    for (name, bytes) in source.side_files().map_err(internal)? {
        write(&name, &bytes)?;
    }
    Ok(QuantizeReport {
        dst: req.dst.clone(),
        tensors_quantized: quantized,
        bytes_in: source.bytes(),
        bytes_out,
    })
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::Float32 | Dtype::Float16 | Dtype::Bfloat16)
}
