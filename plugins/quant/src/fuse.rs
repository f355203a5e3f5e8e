//! A LoRA adapter fused into an MLX-quantized model, as mlx-lm's `fuse` does it: each
//! adapted layer dequantized (float32), `W += scale · B·A`, and packed again with the
//! layer's own group size, bits and mode from the base's `quantization` block; every
//! other tensor and file copied byte for byte, `config.json` included (the settings do
//! not change). The update smaller than a group's rounding step is lost: the host
//! measures how much survived.

use crate::writer::raw;
use mlx_common::{qmode, QuantConfig};
use mlx_rs::{Array, Dtype};
use plugin_api::{
    quant::{QuantizeReport, QuantizeRequest},
    text::StreamControl,
    ErrorKind, PluginError,
};
use plugin_sdk::Progress;
use safetensors::tensor::TensorView;
use serde::Deserialize;
use serde_json::Value as Json;
use std::path::Path;

/// The `fuse` option of a quantize request: the adapter folder (PEFT or mlx-lm) and the
/// scale its update is fused at.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FuseOptions {
    pub adapter: String,
    #[serde(default = "one")]
    pub scale: f32,
}

fn one() -> f32 {
    1.0
}

fn invalid(msg: impl Into<String>) -> PluginError {
    PluginError::new(ErrorKind::INVALID_REQUEST, msg.into())
}

/// The base's `quantization` block, or why `dir` is not an MLX-quantized model.
pub fn quant_config(dir: &Path) -> Result<QuantConfig, String> {
    let file = dir.join("config.json");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let cfg: Json = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let block = cfg
        .get("quantization")
        .or_else(|| cfg.get("quantization_config"))
        .ok_or_else(|| {
            format!(
                "{}: no `quantization` block (fusing through the quant plugin is for MLX-quantized models; a float one is fused directly)",
                file.display()
            )
        })?;
    QuantConfig::from_json(block, &file).map_err(|e| e.to_string())
}

/// Fuse `opts.adapter` into the MLX-quantized model `req.src`, writing into the existing,
/// empty folder `req.dst`.
pub fn fuse(
    req: &QuantizeRequest,
    opts: &FuseOptions,
    progress: &mut dyn Progress,
) -> Result<QuantizeReport, PluginError> {
    let src = Path::new(req.src.as_str());
    let qc = quant_config(src).map_err(invalid)?;
    let adapter =
        lora::Adapter::open(Path::new(&opts.adapter)).map_err(|e| invalid(e.to_string()))?;
    let total = adapter.modules.len() as u64;
    let (mut done, mut cancelled) = (0u64, false);
    let result = lora::fuse::rewrite(src, &adapter, Path::new(req.dst.as_str()), |m, t| {
        if progress.step("fuse", done, total, &m.name) == StreamControl::Stop {
            cancelled = true;
            return Err(lora::LoraError::Invalid {
                file: src.into(),
                msg: "cancelled".into(),
            });
        }
        done += 1;
        let mlx = |e: mlx_rs::error::Exception| lora::LoraError::Invalid {
            file: src.into(),
            msg: format!("layer `{}`: {e}", m.name),
        };
        let mut scaled = m.clone();
        scaled.scale *= opts.scale;
        let a = Array::from_slice(&adapter.a(&scaled)?, &[m.rank as i32, m.in_features as i32]);
        let b = Array::from_slice(
            &adapter.b(&scaled)?,
            &[m.out_features as i32, m.rank as i32],
        );
        let delta = b
            .matmul(&a)
            .and_then(|d| d.multiply(Array::from_f32(scaled.scale)))
            .map_err(mlx)?;
        let weight = format!("{}.weight", m.name);
        let w = t
            .get(&weight)?
            .expect("rewrite checked the weight is there");
        let fused = match t.get(&format!("{}.scales", m.name))? {
            None => {
                // A layer the base keeps in float: updated in its own dtype.
                let dense = to_array(&w).map_err(|e| bad(src, &weight, e))?;
                let f = dense
                    .as_dtype(Dtype::Float32)
                    .and_then(|d| d.add(&delta))
                    .and_then(|d| d.as_dtype(dense.dtype()))
                    .map_err(mlx)?;
                vec![(weight, f)]
            }
            Some(s) => {
                let (gs, bits, mode) = qc.layer(&m.name).ok_or_else(|| {
                    bad(
                        src,
                        &weight,
                        "packed, but `quantization` says the layer is not quantized".into(),
                    )
                })?;
                let biases_name = format!("{}.biases", m.name);
                let bias = t.get(&biases_name)?;
                let packed = to_array(&w).map_err(|e| bad(src, &weight, e))?;
                let scales = to_array(&s).map_err(|e| bad(src, &weight, e))?;
                let biases = bias
                    .as_ref()
                    .map(to_array)
                    .transpose()
                    .map_err(|e| bad(src, &biases_name, e))?;
                // In float32 from the stored numbers (MLX would round to the scales' type).
                let b32 = biases.as_ref().map(float32).transpose().map_err(mlx)?;
                let dense = qmode::dequantize(
                    &packed,
                    &float32(&scales).map_err(mlx)?,
                    b32.as_ref(),
                    gs,
                    bits,
                    mode,
                    Dtype::Float32,
                )
                .map_err(mlx)?;
                if dense.shape() != [m.out_features as i32, m.in_features as i32] {
                    return Err(lora::LoraError::Mismatch {
                        dir: adapter.dir.clone(),
                        msg: format!(
                            "layer `{}` is {} → {} in the adapter; the base's packed `{weight}` holds {:?}",
                            m.name, m.in_features, m.out_features, dense.shape()
                        ),
                    });
                }
                let sum = dense.add(&delta).map_err(mlx)?;
                let (q, s2, b2) = qmode::quantize(&sum, gs, bits, mode).map_err(mlx)?;
                // Scales and biases in the base's float type (MLX returns the input's).
                let s2 = s2.as_dtype(scales.dtype()).map_err(mlx)?;
                let mut out = vec![(weight, q), (format!("{}.scales", m.name), s2)];
                if let (Some(b2), Some(b0)) = (b2, &biases) {
                    out.push((biases_name, b2.as_dtype(b0.dtype()).map_err(mlx)?));
                }
                out
            }
        };
        fused
            .into_iter()
            .map(|(name, a)| {
                a.eval().map_err(mlx)?;
                let shape = a.shape().iter().map(|d| *d as usize).collect();
                let (dtype, data) = raw(&a).ok_or_else(|| bad(src, &name, "dtype".into()))?;
                let dtype = st_dtype(dtype);
                let data = data.to_vec();
                Ok((name, lora::fuse::Replacement { dtype, shape, data }))
            })
            .collect()
    });
    if cancelled {
        return Err(PluginError::new(ErrorKind::CANCELLED, "fuse cancelled"));
    }
    let layers = result.map_err(|e| match e {
        lora::LoraError::Io { .. } => PluginError::new(ErrorKind::INTERNAL, e.to_string()),
        _ => invalid(e.to_string()),
    })?;
    let size = |d: &Path| -> u64 {
        std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    Ok(QuantizeReport {
        dst: req.dst.clone(),
        tensors_quantized: layers.len() as u32,
        bytes_in: size(src),
        bytes_out: size(Path::new(req.dst.as_str())),
    })
}

/// Scales or biases in float32 (mxfp4's byte scales as they are).
fn float32(a: &Array) -> mlx_rs::error::Result<Array> {
    match a.dtype() {
        Dtype::Uint8 => Ok(a.clone()),
        _ => a.as_dtype(Dtype::Float32),
    }
}

fn bad(src: &Path, tensor: &str, msg: String) -> lora::LoraError {
    lora::LoraError::Invalid {
        file: src.into(),
        msg: format!("tensor `{tensor}`: {msg}"),
    }
}

fn st_dtype(name: &str) -> safetensors::Dtype {
    match name {
        "F32" => safetensors::Dtype::F32,
        "F16" => safetensors::Dtype::F16,
        "BF16" => safetensors::Dtype::BF16,
        "U32" => safetensors::Dtype::U32,
        _ => safetensors::Dtype::U8,
    }
}

/// A safetensors view as an MLX array of its own type (the float types, uint32 packed
/// weights, uint8 mxfp4 scales).
fn to_array(v: &TensorView<'_>) -> Result<Array, String> {
    let shape: Vec<i32> = v.shape().iter().map(|d| *d as i32).collect();
    let b = v.data();
    Ok(match v.dtype() {
        safetensors::Dtype::U32 => {
            let x: Vec<u32> = b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Array::from_slice(&x, &shape)
        }
        safetensors::Dtype::U8 => Array::from_slice(b, &shape),
        _ => return crate::source::to_array(v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_common::QuantMode;

    fn view<'a>(a: &'a Array) -> TensorView<'a> {
        a.eval().unwrap();
        let (dtype, data) = raw(a).unwrap();
        let shape = a.shape().iter().map(|d| *d as usize).collect();
        TensorView::new(st_dtype(dtype), shape, data).unwrap()
    }

    /// The host reads packed layers back without MLX (`lora::packed`) to tell how much of
    /// an update survived: it must read them as MLX does. Both compute `scale·q + bias`
    /// in float32 from the same stored numbers (mxfp4: a power of two times an exact
    /// E2M1 value, exact), so they may differ by the rounding of that one multiply-add
    /// (fused or not): at most one ulp of |scale·q| + |bias|.
    #[test]
    fn packed_layers_read_without_mlx_as_mlx_reads_them() {
        let (out, inp) = (8usize, 256usize);
        let w = mlx_rs::random::normal::<f32>(&[out as i32, inp as i32], None, None, None)
            .unwrap()
            .multiply(Array::from_f32(0.05))
            .unwrap();
        let mut cases: Vec<(i32, i32, QuantMode, Dtype)> = Vec::new();
        for bits in mlx_common::AFFINE_BITS {
            for gs in mlx_common::AFFINE_GROUPS {
                cases.push((gs, bits, QuantMode::Affine, Dtype::Float32));
            }
            cases.push((64, bits, QuantMode::Affine, Dtype::Bfloat16));
        }
        cases.push((32, 4, QuantMode::parse("mxfp4").unwrap(), Dtype::Float32));
        for (gs, bits, mode, dt) in cases {
            let x = w.as_dtype(dt).unwrap();
            let (q, s, b) = qmode::quantize(&x, gs, bits, mode).unwrap();
            // As the fuse reads them.
            let b32 = b.as_ref().map(|b| float32(b).unwrap());
            let s32 = float32(&s).unwrap();
            let want =
                qmode::dequantize(&q, &s32, b32.as_ref(), gs, bits, mode, Dtype::Float32).unwrap();
            want.eval().unwrap();
            let bias = b.as_ref().map(view);
            let got = lora::packed::dequantize(&view(&q), &view(&s), bias.as_ref(), out, inp)
                .unwrap_or_else(|e| panic!("{bits} bits, group {gs}: {e}"));
            let scales = lora_f32(&s);
            let biases = b.as_ref().map(lora_f32);
            for (i, (g, w)) in got.iter().zip(want.as_slice::<f32>()).enumerate() {
                let k = (i / inp) * (inp / gs as usize) + (i % inp) / gs as usize;
                let bound = (g - biases.as_ref().map_or(0.0, |b| b[k])).abs()
                    + biases.as_ref().map_or(0.0, |b| b[k].abs());
                let ulp = f32::EPSILON * bound.max(scales[k].abs());
                assert!(
                    (g - w).abs() <= ulp,
                    "{} {bits} bits, group {gs}, {dt:?}: value {i} is {g}, MLX reads {w}",
                    mode.name()
                );
            }
        }
        // A packed weight that is not what the scales say is refused, not misread.
        let (q, s, b) = qmode::quantize(&w, 64, 4, QuantMode::Affine).unwrap();
        let bias = b.as_ref().map(view);
        let err =
            lora::packed::dequantize(&view(&q), &view(&s), bias.as_ref(), out, 200).unwrap_err();
        assert!(err.contains("bits per value"), "{err}");
        let err = lora::packed::dequantize(&view(&q), &view(&s), None, out, inp).unwrap_err();
        assert!(err.contains("without `biases`"), "{err}");
    }

    fn lora_f32(a: &Array) -> Vec<f32> {
        let f = a.as_dtype(Dtype::Float32).unwrap();
        f.eval().unwrap();
        f.as_slice::<f32>().to_vec()
    }
}
