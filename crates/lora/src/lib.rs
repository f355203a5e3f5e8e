//! LoRA adapters, the format code both `llm` providers share: PEFT
//! (`adapter_config.json` + `adapter_model.safetensors`) and mlx-lm
//! (`adapter_config.json` + `adapters.safetensors`) read into one form — per adapted
//! linear layer its rank, shapes, scale and low-rank factors — checked against a base
//! model's layers, written as llama.cpp's GGUF LoRA ([`to_gguf`]), or merged into a
//! Hub-layout model ([`fuse`]; MLX-quantized layers read back by [`packed`]).
//!
//! The update of a layer `y = x·Wᵀ` is `y + scale · (x·Aᵀ)·Bᵀ`, with `A` (rank, in) and
//! `B` (out, rank) in PEFT's orientation whatever the file's; `scale` is PEFT's
//! `lora_alpha / r` (`/ √r` with `use_rslora`) or mlx-lm's `scale`.
//!
//! Reading is strict: every tensor of the file belongs to a layer's `A` or `B`, both are
//! there with agreeing ranks, and what this code cannot apply (DoRA, `modules_to_save`,
//! biases, embedding adapters, other PEFT methods) is refused by name.

mod config;
pub mod fuse;
pub mod packed;
pub mod to_gguf;

pub use config::Format;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// A LoRA error; the message names the file and the key, tensor or layer.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{}: {msg}", .file.display())]
    Io { file: PathBuf, msg: String },
    #[error("{}: {msg}", .file.display())]
    Invalid { file: PathBuf, msg: String },
    /// The adapter does not fit the base model (a layer it adapts is missing there, or
    /// has other shapes).
    #[error("adapter {}: {msg}", .dir.display())]
    Mismatch { dir: PathBuf, msg: String },
}

pub(crate) fn invalid(file: &Path, msg: impl Into<String>) -> LoraError {
    LoraError::Invalid {
        file: file.into(),
        msg: msg.into(),
    }
}

pub(crate) fn io(file: &Path, e: impl std::fmt::Display) -> LoraError {
    LoraError::Io {
        file: file.into(),
        msg: e.to_string(),
    }
}

/// Where one factor lies in the weights file.
#[derive(Debug, Clone)]
struct Factor {
    tensor: String,
    dtype: Dtype,
    /// Byte range in the file.
    range: std::ops::Range<usize>,
    /// Stored transposed to PEFT's orientation (mlx-lm keeps `A` as (in, rank), `B` as
    /// (rank, out)).
    transposed: bool,
}

/// One adapted linear layer.
#[derive(Debug, Clone)]
pub struct Module {
    /// The layer's checkpoint name in the Hugging Face layout
    /// (`model.layers.0.self_attn.q_proj`).
    pub name: String,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// Multiplier of `B·A` at adapter scale 1.
    pub scale: f32,
    a: Factor,
    b: Factor,
}

/// A LoRA adapter opened from its folder; the factors stay in the mapped file until
/// asked for.
pub struct Adapter {
    /// The adapter's folder.
    pub dir: PathBuf,
    pub format: Format,
    /// Adapted layers, by name.
    pub modules: Vec<Module>,
    /// The weights file.
    pub file: PathBuf,
    map: Mmap,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("dir", &self.dir)
            .field("format", &self.format)
            .field("modules", &self.modules.len())
            .finish()
    }
}

/// Most layers one adapter may adapt (a 100-layer model with every projection adapted
/// has 700).
const MAX_MODULES: usize = 1 << 14;

impl Adapter {
    /// Open the adapter in `dir` (PEFT or mlx-lm layout, told apart by the weights file).
    pub fn open(dir: &Path) -> Result<Self, LoraError> {
        if !dir.is_dir() {
            return Err(io(dir, "not a folder (an adapter is a folder with adapter_config.json and its safetensors)"));
        }
        let cfg_file = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_file).map_err(|e| io(&cfg_file, e))?;
        let cfg: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| invalid(&cfg_file, e.to_string()))?;
        let format = Format::of(dir).ok_or_else(|| {
            io(
                dir,
                "no adapter weights: expected adapter_model.safetensors (PEFT) or \
                 adapters.safetensors (mlx-lm)",
            )
        })?;
        let settings = config::Settings::read(format, &cfg, &cfg_file)?;
        let file = dir.join(format.weights_file());
        let f = std::fs::File::open(&file).map_err(|e| io(&file, e))?;
        // SAFETY: the file is only read; a concurrent writer could change what the map
        // shows, as with any mapped model file.
        let map = unsafe { Mmap::map(&f) }.map_err(|e| io(&file, e))?;
        let modules = read_modules(&map, &file, format, &settings)?;
        Ok(Self {
            dir: dir.to_owned(),
            format,
            modules,
            file,
            map,
        })
    }

    /// `A` of `m` as float32, (rank, in) row-major.
    pub fn a(&self, m: &Module) -> Result<Vec<f32>, LoraError> {
        self.values(&m.a, m.rank, m.in_features)
    }

    /// `B` of `m` as float32, (out, rank) row-major.
    pub fn b(&self, m: &Module) -> Result<Vec<f32>, LoraError> {
        self.values(&m.b, m.out_features, m.rank)
    }

    /// Values of `f` as a (rows, cols) row-major matrix.
    fn values(&self, f: &Factor, rows: usize, cols: usize) -> Result<Vec<f32>, LoraError> {
        let v = to_f32(f.dtype, &self.map[f.range.clone()]).ok_or_else(|| {
            invalid(
                &self.file,
                format!("tensor `{}`: dtype {:?}", f.tensor, f.dtype),
            )
        })?;
        if !f.transposed {
            return Ok(v);
        }
        // Stored (cols, rows).
        let mut t = vec![0f32; v.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[r * cols + c] = v[c * rows + r];
            }
        }
        Ok(t)
    }

    /// Low-rank parameters (elements of every `A` and `B`).
    pub fn parameters(&self) -> u64 {
        self.modules
            .iter()
            .map(|m| (m.rank * (m.in_features + m.out_features)) as u64)
            .sum()
    }

    /// Check the adapter against its base: `base(name)` gives the (in, out) features of
    /// the base's linear layer `name`, or `None` when it has none by that name. The first
    /// layer that is missing or shaped otherwise is named in the error.
    pub fn check_base(
        &self,
        base_id: &str,
        base: impl Fn(&str) -> Option<(usize, usize)>,
    ) -> Result<(), LoraError> {
        let bad = |msg: String| LoraError::Mismatch {
            dir: self.dir.clone(),
            msg,
        };
        for m in &self.modules {
            match base(&m.name) {
                None => {
                    return Err(bad(format!(
                        "layer `{}` is not a linear layer of base model `{base_id}` (an \
                         adapter for another architecture?)",
                        m.name
                    )))
                }
                Some((i, o)) if (i, o) != (m.in_features, m.out_features) => {
                    return Err(bad(format!(
                        "layer `{}` is {} → {} in the adapter, {i} → {o} in base model \
                         `{base_id}` (an adapter for another model?)",
                        m.name, m.in_features, m.out_features
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// One tensor of the file as read from its header.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    range: std::ops::Range<usize>,
}

fn read_modules(
    map: &[u8],
    file: &Path,
    format: Format,
    settings: &config::Settings,
) -> Result<Vec<Module>, LoraError> {
    let st = SafeTensors::deserialize(map).map_err(|e| invalid(file, e.to_string()))?;
    if st.len() > 2 * MAX_MODULES {
        return Err(invalid(
            file,
            format!(
                "{} tensors; at most {} layers are read",
                st.len(),
                MAX_MODULES
            ),
        ));
    }
    // (layer, is_b) → tensor
    let mut parts: BTreeMap<String, [Option<(String, Raw)>; 2]> = BTreeMap::new();
    for (name, view) in st.tensors() {
        let (layer, is_b) = format
            .factor_of(&name)
            .map_err(|why| invalid(file, format!("tensor `{name}`: {why}")))?;
        if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(invalid(
                file,
                format!(
                    "tensor `{name}`: dtype {:?} (F32, F16 or BF16 expected)",
                    view.dtype()
                ),
            ));
        }
        if view.shape().len() != 2 || view.shape().contains(&0) {
            return Err(invalid(
                file,
                format!(
                    "tensor `{name}`: shape {:?}, a matrix expected",
                    view.shape()
                ),
            ));
        }
        let start = view.data().as_ptr() as usize - map.as_ptr() as usize;
        let raw = Raw {
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            range: start..start + view.data().len(),
        };
        let slot = &mut parts.entry(layer).or_default()[usize::from(is_b)];
        if slot.is_some() {
            return Err(invalid(
                file,
                format!(
                    "tensor `{name}`: a second {} factor for its layer",
                    if is_b { "B" } else { "A" }
                ),
            ));
        }
        *slot = Some((name, raw));
    }
    if parts.is_empty() {
        return Err(invalid(file, "no LoRA tensors"));
    }
    let mut modules = Vec::with_capacity(parts.len());
    for (layer, [a, b]) in parts {
        let (Some((an, a)), Some((bn, b))) = (a, b) else {
            return Err(invalid(
                file,
                format!("layer `{layer}`: has only one of its two LoRA factors (A and B)"),
            ));
        };
        // PEFT: A (rank, in), B (out, rank). mlx-lm: a (in, rank), b (rank, out).
        let t = format.transposed();
        let (rank_a, in_f) = if t {
            (a.shape[1], a.shape[0])
        } else {
            (a.shape[0], a.shape[1])
        };
        let (out_f, rank_b) = if t {
            (b.shape[1], b.shape[0])
        } else {
            (b.shape[0], b.shape[1])
        };
        if rank_a != rank_b {
            return Err(invalid(
                file,
                format!(
                    "layer `{layer}`: `{an}` {:?} and `{bn}` {:?} disagree on the rank",
                    a.shape, b.shape
                ),
            ));
        }
        modules.push(Module {
            scale: settings.scale(rank_a),
            name: layer,
            rank: rank_a,
            in_features: in_f,
            out_features: out_f,
            a: Factor {
                tensor: an,
                dtype: a.dtype,
                range: a.range,
                transposed: t,
            },
            b: Factor {
                tensor: bn,
                dtype: b.dtype,
                range: b.range,
                transposed: t,
            },
        });
    }
    Ok(modules)
}

/// Little-endian float32/float16/bfloat16 bytes as float32 (`None` for other dtypes).
pub(crate) fn to_f32(dtype: Dtype, raw: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// `scale · B·A` (out, in) row-major: the update a layer's weight gets when fused.
pub fn delta(a: &[f32], b: &[f32], m: &Module) -> Vec<f32> {
    let (r, n) = (m.rank, m.in_features);
    let mut d = vec![0f32; m.out_features * n];
    for (o, row) in d.chunks_exact_mut(n).enumerate() {
        for k in 0..r {
            let w = b[o * r + k] * m.scale;
            if w == 0.0 {
                continue;
            }
            let a_row = &a[k * n..(k + 1) * n];
            row.iter_mut().zip(a_row).for_each(|(x, y)| *x += w * y);
        }
    }
    d
}

#[cfg(test)]
mod tests;
