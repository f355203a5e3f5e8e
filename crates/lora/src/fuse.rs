//! An adapter merged into a Hugging Face layout model: `W += scale · B·A` for every
//! adapted layer, written as a new model folder (the same safetensors files and tensor
//! names, each tensor in its stored dtype and shape; `config.json`, tokenizer and the
//! other files copied) that transformers, mlx-lm and this engine load like the base.
//!
//! [`fuse`] does it for a float base. [`rewrite`] is the part every base shares — which
//! tensors change is the caller's: the quant plugin passes an update that dequantizes
//! an MLX-quantized layer, adds the update and packs it again with MLX. Every tensor the
//! update does not replace is copied byte for byte.

use crate::{invalid, io, packed, to_f32, Adapter, LoraError, Module};
use memmap2::Mmap;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

/// A tensor written in place of the base's tensor of the same name (same dtype and
/// shape: the layout of the model does not change).
pub struct Replacement {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The safetensors files of a model folder, mapped, with the file of each tensor.
pub struct Tensors {
    dir: PathBuf,
    /// (file name, map), in name order.
    files: Vec<(String, Mmap)>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

impl Tensors {
    /// Map every `.safetensors` file of `dir` (a tensor in two files is an error).
    pub fn open(dir: &Path) -> Result<Self, LoraError> {
        let mut names: Vec<String> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let e = e.map_err(|e| io(dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors") && !name.starts_with('.') {
                names.push(name);
            }
        }
        names.sort();
        if names.is_empty() {
            return Err(io(dir, "no .safetensors weights"));
        }
        let (mut files, mut index) = (Vec::new(), HashMap::new());
        for (i, name) in names.into_iter().enumerate() {
            let path = dir.join(&name);
            let f = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
            // SAFETY: read only, as every model file is.
            let map = unsafe { Mmap::map(&f) }.map_err(|e| io(&path, e))?;
            let (_, meta) =
                SafeTensors::read_metadata(&map).map_err(|e| invalid(&path, e.to_string()))?;
            for t in meta.tensors().into_keys() {
                if let Some(j) = index.insert(t.clone(), i) {
                    let other: &(String, Mmap) = &files[j];
                    return Err(invalid(
                        &path,
                        format!("tensor `{t}` is in {} too", other.0),
                    ));
                }
            }
            files.push((name, map));
        }
        Ok(Self {
            dir: dir.to_owned(),
            files,
            index,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the model has tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Tensor `name`, or `None` where the model has none of that name.
    pub fn get(&self, name: &str) -> Result<Option<TensorView<'_>>, LoraError> {
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let (file, map) = &self.files[i];
        let st = SafeTensors::deserialize(map)
            .map_err(|e| invalid(&self.dir.join(file), e.to_string()))?;
        st.tensor(name)
            .map(Some)
            .map_err(|e| invalid(&self.dir.join(file), e.to_string()))
    }

    /// Layer `m`'s weight as float32 (out, in), dequantized where the model packs it the
    /// MLX way (`{layer}.scales`, and `.biases` for affine, beside a uint32 weight).
    pub fn weight_f32(&self, m: &Module) -> Result<Vec<f32>, LoraError> {
        let name = format!("{}.weight", m.name);
        let file = |n: &str| self.index.get(n).map(|&i| self.dir.join(&self.files[i].0));
        let w = self.get(&name)?.ok_or_else(|| LoraError::Mismatch {
            dir: self.dir.clone(),
            msg: format!("layer `{}` has no weight `{name}`", m.name),
        })?;
        let path = file(&name).expect("found");
        let Some(scales) = self.get(&format!("{}.scales", m.name))? else {
            check_shape(&path, &name, w.shape(), m)?;
            return to_f32(w.dtype(), w.data()).ok_or_else(|| {
                invalid(
                    &path,
                    format!("tensor `{name}`: dtype {:?} is not float", w.dtype()),
                )
            });
        };
        let biases = self.get(&format!("{}.biases", m.name))?;
        packed::dequantize(&w, &scales, biases.as_ref(), m.out_features, m.in_features)
            .map_err(|msg| invalid(&path, format!("`{}`: {msg}", m.name)))
    }
}

fn check_shape(file: &Path, name: &str, shape: &[usize], m: &Module) -> Result<(), LoraError> {
    if shape != [m.out_features, m.in_features] {
        return Err(LoraError::Mismatch {
            dir: file.parent().unwrap_or(file).to_owned(),
            msg: format!(
                "layer `{}` is {} → {} in the adapter; `{name}` in {} has shape {shape:?}",
                m.name,
                m.in_features,
                m.out_features,
                file.display()
            ),
        });
    }
    Ok(())
}

/// Fuse `adapter` at `scale` into the float model in `base` (`config.json` and
/// `model.safetensors` or shards with their index), writing the folder `dst` whole or
/// not at all. Every adapted layer must be a weight of the base with the adapter's
/// shapes; quantized bases are refused (the quant plugin fuses MLX-quantized ones).
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
            "a quantized model: fusing here needs float weights (`mlxengine fuse` imports a \
             GGUF base to float first and has the quant plugin fuse an MLX-quantized one)",
        ));
    }
    let partial = dst.with_file_name(format!(
        ".{}.{}.partial",
        dst.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| io(&partial, e))?;
    let result = rewrite(base, adapter, &partial, |m, t| {
        let name = format!("{}.weight", m.name);
        let w = t.get(&name)?.expect("rewrite checked the weight is there");
        let mut v = t.weight_f32(m)?;
        let mut m = m.clone();
        m.scale *= scale;
        let d = crate::delta(&adapter.a(&m)?, &adapter.b(&m)?, &m);
        v.iter_mut().zip(&d).for_each(|(x, y)| *x += y);
        let data = from_f32(w.dtype(), &v);
        let r = Replacement {
            dtype: w.dtype(),
            shape: w.shape().to_vec(),
            data,
        };
        Ok(vec![(name, r)])
    });
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

/// Write the model in `base` into the existing, empty folder `out` with the tensors
/// `update` returns for each of `adapter`'s layers in place of the base's: the same
/// files, names, dtypes and shapes; every other tensor and file copied as it is. A
/// layer's update is computed once, when the first file holding one of its tensors
/// (`weight`, `scales`, `biases`) is written, and kept until its last one is. Returns
/// the layers updated.
pub fn rewrite(
    base: &Path,
    adapter: &Adapter,
    out: &Path,
    mut update: impl FnMut(&Module, &Tensors) -> Result<Vec<(String, Replacement)>, LoraError>,
) -> Result<Vec<String>, LoraError> {
    let t = Tensors::open(base)?;
    // The files each layer's tensors lie in.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for m in &adapter.modules {
        let weight = format!("{}.weight", m.name);
        if !t.has(&weight) {
            return Err(LoraError::Mismatch {
                dir: adapter.dir.clone(),
                msg: format!(
                    "layer `{}` has no weight `{weight}` in {}",
                    m.name,
                    base.display()
                ),
            });
        }
        let files = ["weight", "scales", "biases"]
            .iter()
            .filter_map(|s| t.index.get(&format!("{}.{s}", m.name)).copied());
        let (lo, hi) = files.fold((usize::MAX, 0), |(lo, hi), i| (lo.min(i), hi.max(i)));
        spans.push((lo, hi));
    }
    for e in std::fs::read_dir(base).map_err(|e| io(base, e))? {
        let e = e.map_err(|e| io(base, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let src = e.path();
        if name.ends_with(".safetensors")
            || name.starts_with('.')
            || !e.file_type().map_err(|x| io(&src, x))?.is_file()
        {
            continue;
        }
        std::fs::copy(&src, out.join(&name)).map_err(|e| io(&src, e))?;
    }
    let mut pending: BTreeMap<String, Replacement> = BTreeMap::new();
    let mut done = vec![false; adapter.modules.len()];
    for (i, (file, map)) in t.files.iter().enumerate() {
        for (k, m) in adapter.modules.iter().enumerate() {
            if spans[k].0 == i && !done[k] {
                for (name, r) in update(m, &t)? {
                    pending.insert(name, r);
                }
                done[k] = true;
            }
        }
        let src = base.join(file);
        let st = SafeTensors::deserialize(map).map_err(|e| invalid(&src, e.to_string()))?;
        let (_, meta) =
            SafeTensors::read_metadata(map).map_err(|e| invalid(&src, e.to_string()))?;
        let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
        for (name, v) in st.tensors() {
            let view = match pending.get(&name) {
                None => v,
                Some(r) => {
                    if r.dtype != v.dtype() || r.shape != v.shape() {
                        return Err(invalid(
                            &src,
                            format!(
                                "tensor `{name}`: the update is {:?} {:?}, the model's {:?} {:?}",
                                r.dtype,
                                r.shape,
                                v.dtype(),
                                v.shape()
                            ),
                        ));
                    }
                    TensorView::new(r.dtype, r.shape.clone(), &r.data)
                        .map_err(|e| invalid(&src, format!("tensor `{name}`: {e}")))?
                }
            };
            views.push((name, view));
        }
        let dst = out.join(file);
        safetensors::serialize_to_file(views, meta.metadata().clone(), &dst)
            .map_err(|e| io(&dst, e))?;
        // Replacements of layers that end in this file are written: drop them.
        for (k, m) in adapter.modules.iter().enumerate() {
            if spans[k].1 == i {
                let prefix = format!("{}.", m.name);
                pending.retain(|n, _| !n.starts_with(&prefix));
            }
        }
    }
    if let Some(name) = pending.keys().next() {
        return Err(invalid(
            base,
            format!("the update names tensor `{name}`, which the model does not have"),
        ));
    }
    Ok(adapter.modules.iter().map(|m| m.name.clone()).collect())
}

/// How much of the update `scale · B·A` a fused model kept: the projection of
/// (fused − base) onto the update over all adapted layers (1: all of it, 0: none — a
/// requantized layer whose update is below the rounding step rounds back to the base).
#[derive(Debug, Default, Clone, Copy)]
pub struct Kept {
    dot: f64,
    norm: f64,
}

impl Kept {
    /// Add one layer: its weights before and after, and its update.
    pub fn add(&mut self, base: &[f32], fused: &[f32], delta: &[f32]) {
        for ((x, y), z) in base.iter().zip(fused).zip(delta) {
            self.dot += f64::from(y - x) * f64::from(*z);
            self.norm += f64::from(*z) * f64::from(*z);
        }
    }

    /// The fraction kept.
    pub fn fraction(&self) -> f64 {
        self.dot / self.norm.max(f64::MIN_POSITIVE)
    }

    /// [`Kept`] of the Hub-layout folders `base` and `fused` (float or MLX-quantized
    /// layers, read in float32).
    pub fn of_folders(
        base: &Path,
        fused: &Path,
        adapter: &Adapter,
        scale: f32,
    ) -> Result<Self, LoraError> {
        let (b, f) = (Tensors::open(base)?, Tensors::open(fused)?);
        let mut kept = Kept::default();
        for m in &adapter.modules {
            let mut m = m.clone();
            m.scale *= scale;
            let d = crate::delta(&adapter.a(&m)?, &adapter.b(&m)?, &m);
            kept.add(&b.weight_f32(&m)?, &f.weight_f32(&m)?, &d);
        }
        Ok(kept)
    }
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
