//! An adapter merged into a Hugging Face layout model: `W += scale · B·A` for every
//! adapted layer, written as a new model folder (the same safetensors files and tensor
//! names, each tensor in its stored dtype; `config.json`, tokenizer and the other files
//! copied) that transformers, mlx-lm and this engine load like the base.

use crate::{invalid, io, to_f32, Adapter, LoraError};
use memmap2::Mmap;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

/// Fuse `adapter` at `scale` into the float model in `base` (`config.json` and
/// `model.safetensors` or shards with their index), writing the folder `dst` whole or
/// not at all. Every adapted layer must be a weight of the base with the adapter's
/// shapes; MLX-quantized bases are refused (dequantize them first).
pub fn fuse(
    base: &Path,
    adapter: &Adapter,
    scale: f32,
    dst: &Path,
) -> Result<Vec<String>, LoraError> {
    if dst.exists() {
        return Err(io(dst, "already exists; choose a new folder"));
    }
    let cfg_file = base.join("config.json");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_file).map_err(|e| io(&cfg_file, e))?)
            .map_err(|e| invalid(&cfg_file, e.to_string()))?;
    if cfg.get("quantization").is_some() || cfg.get("quantization_config").is_some() {
        return Err(invalid(
            &cfg_file,
            "a quantized model: fusing needs float weights (a GGUF base is imported to float \
             first; an MLX-quantized one has to be dequantized)",
        ));
    }
    let mut files: Vec<String> = Vec::new();
    for e in std::fs::read_dir(base).map_err(|e| io(base, e))? {
        let e = e.map_err(|e| io(base, e))?;
        if e.file_type().map_err(|x| io(&e.path(), x))?.is_file() {
            files.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    files.sort();
    let shards: Vec<&String> = files
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    if shards.is_empty() {
        return Err(io(base, "no .safetensors weights"));
    }
    let by_weight: HashMap<String, &crate::Module> = adapter
        .modules
        .iter()
        .map(|m| (format!("{}.weight", m.name), m))
        .collect();
    let partial = dst.with_file_name(format!(
        ".{}.{}.partial",
        dst.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| io(&partial, e))?;
    let result = (|| {
        let mut fused = Vec::new();
        for f in &files {
            let (src, out) = (base.join(f), partial.join(f));
            if !f.ends_with(".safetensors") {
                std::fs::copy(&src, &out).map_err(|e| io(&src, e))?;
                continue;
            }
            fused.extend(fuse_file(&src, &out, adapter, &by_weight, scale)?);
        }
        if let Some(m) = adapter.modules.iter().find(|m| !fused.contains(&m.name)) {
            return Err(LoraError::Mismatch {
                dir: adapter.dir.clone(),
                msg: format!(
                    "layer `{}` has no weight `{}.weight` in {}",
                    m.name,
                    m.name,
                    base.display()
                ),
            });
        }
        Ok(fused)
    })();
    match result {
        Ok(fused) => {
            std::fs::rename(&partial, dst).map_err(|e| io(dst, e))?;
            Ok(fused)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(e)
        }
    }
}

/// One safetensors file of the base with the adapted weights updated; the layers fused.
fn fuse_file(
    src: &Path,
    dst: &Path,
    adapter: &Adapter,
    by_weight: &HashMap<String, &crate::Module>,
    scale: f32,
) -> Result<Vec<String>, LoraError> {
    let f = std::fs::File::open(src).map_err(|e| io(src, e))?;
    // SAFETY: read only, as every model file is.
    let map = unsafe { Mmap::map(&f) }.map_err(|e| io(src, e))?;
    let st = SafeTensors::deserialize(&map).map_err(|e| invalid(src, e.to_string()))?;
    let (_, meta) = SafeTensors::read_metadata(&map).map_err(|e| invalid(src, e.to_string()))?;
    let mut updated: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut fused = Vec::new();
    for (name, view) in st.tensors() {
        let Some(m) = by_weight.get(&name) else {
            continue;
        };
        let shape = view.shape();
        if shape != [m.out_features, m.in_features] {
            return Err(LoraError::Mismatch {
                dir: adapter.dir.clone(),
                msg: format!(
                    "layer `{}` is {} → {} in the adapter; `{name}` in {} has shape {shape:?}",
                    m.name,
                    m.in_features,
                    m.out_features,
                    src.display()
                ),
            });
        }
        let mut w = to_f32(view.dtype(), view.data()).ok_or_else(|| {
            invalid(
                src,
                format!(
                    "tensor `{name}`: dtype {:?} (a float model expected)",
                    view.dtype()
                ),
            )
        })?;
        let mut m = (*m).clone();
        m.scale *= scale;
        let d = crate::delta(&adapter.a(&m)?, &adapter.b(&m)?, &m);
        w.iter_mut().zip(&d).for_each(|(x, y)| *x += y);
        updated.insert(name.clone(), from_f32(view.dtype(), &w));
        fused.push(m.name.clone());
    }
    let views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let data = updated.get(&name).map_or(v.data(), Vec::as_slice);
            let view =
                TensorView::new(v.dtype(), v.shape().to_vec(), data).expect("same shape and size");
            (name, view)
        })
        .collect();
    safetensors::serialize_to_file(views, meta.metadata().clone(), dst).map_err(|e| io(dst, e))?;
    Ok(fused)
}

fn from_f32(dtype: Dtype, v: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Dtype::F16 => v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        _ => v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}
