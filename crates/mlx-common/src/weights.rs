use crate::{
    linear::{Embedding, Linear, Quantized},
    qmode::QuantMode,
};
use mlx_rs::{Array, Dtype};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// A weight-loading error; the message names the file and tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{}: missing file", .0.display())]
    MissingFile(PathBuf),
    #[error("{}: {msg}", .file.display())]
    Invalid { file: PathBuf, msg: String },
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

/// Named tensors being consumed by a model constructor. Floating-point tensors are cast
/// to the load dtype as they are taken; quantized triplets stay quantized unless the
/// caller asks to dequantize.
/// A checkpoint's `quantization` block (mlx-lm's `config.json`): the default group
/// size, bits and mode, and per-layer settings keyed by module path
/// (`model.layers.0.mlp.down_proj`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantConfig {
    pub group_size: i32,
    pub bits: i32,
    pub mode: QuantMode,
    /// Module path → its (group size, bits, mode), or `None` where the layer is not quantized.
    pub layers: HashMap<String, Option<(i32, i32, QuantMode)>>,
}

/// Bit widths and group sizes MLX's affine kernels take.
pub const AFFINE_BITS: [i32; 6] = [2, 3, 4, 5, 6, 8];
pub const AFFINE_GROUPS: [i32; 3] = [32, 64, 128];

impl QuantConfig {
    /// Parse a `quantization` (or `quantization_config`) block; `file` names it in errors.
    pub fn from_json(q: &serde_json::Value, file: &Path) -> Result<Self, WeightsError> {
        let bad = |msg: String| WeightsError::Invalid {
            file: file.into(),
            msg: format!("`quantization`: {msg}"),
        };
        let settings = |v: &serde_json::Value,
                        at: &str|
         -> Result<(i32, i32, QuantMode), WeightsError> {
            let get = |k: &str, default: i64| -> Result<i32, WeightsError> {
                match v.get(k) {
                    None => Ok(default as i32),
                    Some(x) => x
                        .as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| bad(format!("{at}`{k}` is not an integer"))),
                }
            };
            let (gs, bits) = (get("group_size", 64)?, get("bits", 4)?);
            let mode = match v.get("mode").and_then(|m| m.as_str()) {
                None => QuantMode::Affine,
                Some(m) => QuantMode::parse(m).ok_or_else(|| {
                    bad(format!(
                        "{at}mode `{m}` is not supported ({})",
                        crate::QUANT_MODES.join(", ")
                    ))
                })?,
            };
            if let Some((g, b)) = mode.fixed() {
                if (gs, bits) != (g, b) {
                    return Err(bad(format!(
                        "{at}mode `{}` is {b} bits in groups of {g}, not {bits} bits in groups of {gs}",
                        mode.name()
                    )));
                }
            } else if !AFFINE_BITS.contains(&bits) || !AFFINE_GROUPS.contains(&gs) {
                return Err(bad(format!(
                    "{at}{bits} bits, group size {gs}: MLX takes bits {AFFINE_BITS:?} and group sizes {AFFINE_GROUPS:?}"
                )));
            }
            Ok((gs, bits, mode))
        };
        let (group_size, bits, mode) = settings(q, "")?;
        let mut layers = HashMap::new();
        if let Some(map) = q.as_object() {
            for (k, v) in map {
                match v {
                    serde_json::Value::Object(_) => {
                        layers.insert(k.clone(), Some(settings(v, &format!("layer `{k}`: "))?));
                    }
                    serde_json::Value::Bool(false) => {
                        layers.insert(k.clone(), None);
                    }
                    serde_json::Value::Bool(true) => {
                        layers.insert(k.clone(), Some((group_size, bits, mode)));
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            group_size,
            bits,
            mode,
            layers,
        })
    }

    /// The (group size, bits, mode) of module `path`; `None` where the config says it is
    /// not quantized.
    pub fn layer(&self, path: &str) -> Option<(i32, i32, QuantMode)> {
        match self.layers.get(path) {
            Some(l) => *l,
            None => Some((self.group_size, self.bits, self.mode)),
        }
    }
}

pub struct Weights {
    tensors: HashMap<String, Array>,
    source: PathBuf,
    dtype: Dtype,
    /// Default group size / bits of quantized layers (`quantization` in config.json).
    pub quantization: Option<QuantConfig>,
    /// Dequantize quantized layers at load (e.g. on CPUs where quantized kernels are slow).
    pub dequantize: bool,
}

impl Weights {
    /// Tensors from a map (e.g. a GGUF file converted by the caller).
    pub fn from_map(tensors: HashMap<String, Array>, source: PathBuf, dtype: Dtype) -> Self {
        Self {
            tensors,
            source,
            dtype,
            quantization: None,
            dequantize: false,
        }
    }

    /// Load every safetensors file of a model directory: `model.safetensors`, or the
    /// shards listed by `model.safetensors.index.json`.
    pub fn load(dir: &Path, dtype: Dtype) -> Result<Self, WeightsError> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.is_file() {
            let bad = |msg: String| WeightsError::Invalid {
                file: index.clone(),
                msg,
            };
            let text = std::fs::read_to_string(&index).map_err(|e| bad(e.to_string()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad("missing `weight_map`".into()))?;
            let mut files: Vec<PathBuf> = map
                .values()
                .filter_map(|f| f.as_str())
                .map(|f| crate::inside(dir, f).map_err(|e| bad(format!("`weight_map`: {e}"))))
                .collect::<Result<_, _>>()?;
            files.sort();
            files.dedup();
            files
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut tensors = HashMap::new();
        for file in &files {
            if !file.is_file() {
                return Err(WeightsError::MissingFile(file.clone()));
            }
            let part = Array::load_safetensors(file).map_err(|e| WeightsError::Invalid {
                file: file.clone(),
                msg: e.to_string(),
            })?;
            tensors.extend(part);
        }
        let source = if files.len() == 1 {
            files[0].clone()
        } else {
            dir.to_path_buf()
        };
        Ok(Self::from_map(tensors, source, dtype))
    }

    /// The file (or directory) the tensors came from, for messages.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The load dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn invalid(&self, msg: String) -> WeightsError {
        WeightsError::Invalid {
            file: self.source.clone(),
            msg,
        }
    }

    /// Whether a tensor called `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Remove the tensor `name` as stored (no cast, no shape check).
    pub fn take_raw(&mut self, name: &str) -> Result<Array, WeightsError> {
        self.tensors
            .remove(name)
            .ok_or_else(|| self.invalid(format!("missing tensor `{name}`")))
    }

    /// Remove the tensor `name`, checking its shape and casting it to the load dtype.
    pub fn take(&mut self, name: &str, shape: &[i32]) -> Result<Array, WeightsError> {
        let t = self.take_raw(name)?;
        if t.shape() != shape {
            return Err(self.invalid(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                t.shape()
            )));
        }
        Ok(if t.dtype() == self.dtype {
            t
        } else {
            t.as_dtype(self.dtype)?
        })
    }

    /// Remove the tensor `name` if present (same checks as [`take`](Self::take)).
    pub fn take_opt(&mut self, name: &str, shape: &[i32]) -> Result<Option<Array>, WeightsError> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Take the dense layer `{prefix}.weight` (out × in) with an optional `{prefix}.bias`.
    /// The layer is quantized iff `{prefix}.scales` exists (MLX affine layout: packed
    /// uint32 weight, scales and biases per group); it is then dequantized when
    /// [`dequantize`](Self::dequantize) is set.
    pub fn linear(
        &mut self,
        prefix: &str,
        inp: i32,
        out: i32,
        bias: bool,
    ) -> Result<Linear, WeightsError> {
        let bias = if bias {
            Some(self.take(&format!("{prefix}.bias"), &[out])?)
        } else {
            self.take_opt(&format!("{prefix}.bias"), &[out])?
        };
        let (weight, quantized) = self.matrix(prefix, out, inp)?;
        Ok(Linear {
            name: prefix.to_owned(),
            weight,
            bias,
            quantized,
            lora: Vec::new(),
        })
    }

    /// The (vocab, hidden) table `{prefix}.weight`, quantized when the checkpoint is.
    pub fn embedding(
        &mut self,
        prefix: &str,
        vocab: i32,
        hidden: i32,
    ) -> Result<Embedding, WeightsError> {
        let (weight, quantized) = self.matrix(prefix, vocab, hidden)?;
        Ok(Embedding {
            name: prefix.to_owned(),
            weight,
            quantized,
        })
    }

    /// The (rows, cols) matrix `{prefix}.weight`: full, or packed with its scales and
    /// biases (dequantized when [`Weights::dequantize`] is set) at the bits and group size
    /// the config gives this layer.
    fn matrix(
        &mut self,
        prefix: &str,
        rows: i32,
        cols: i32,
    ) -> Result<(Array, Option<Quantized>), WeightsError> {
        let wname = format!("{prefix}.weight");
        let scales_name = format!("{prefix}.scales");
        if !self.contains(&scales_name) {
            return Ok((self.take(&wname, &[rows, cols])?, None));
        }
        let (group_size, bits, mode) = self
            .quantization
            .as_ref()
            .and_then(|q| q.layer(prefix))
            .ok_or_else(|| {
                self.invalid(format!(
                    "`{scales_name}` present but the config's `quantization` gives no group_size and bits for `{prefix}`"
                ))
            })?;
        let packed = self.take_raw(&wname)?;
        let scales = self.take_raw(&scales_name)?;
        let biases_name = format!("{prefix}.biases");
        let biases = if mode.has_biases() {
            Some(self.take_raw(&biases_name)?)
        } else if self.contains(&biases_name) {
            return Err(self.invalid(format!(
                "`{biases_name}`: mode `{}` has no biases",
                mode.name()
            )));
        } else {
            None
        };
        let want = [rows, cols * bits / 32];
        let groups = [rows, cols / group_size];
        if cols % group_size != 0
            || packed.shape() != want
            || scales.shape() != groups
            || biases.as_ref().is_some_and(|b| b.shape() != groups)
        {
            return Err(self.invalid(format!(
                "quantized `{prefix}`: weight {:?} / scales {:?} / biases {:?} do not fit {rows}×{cols} at {bits} bits, group {group_size} ({})",
                packed.shape(),
                scales.shape(),
                biases.as_ref().map(|b| b.shape().to_vec()),
                mode.name()
            )));
        }
        // Affine scales and biases take the load dtype; mxfp4's are exponents (uint8).
        let float = |a: Array| -> Result<Array, WeightsError> {
            Ok(if mode == QuantMode::Affine {
                a.as_dtype(self.dtype)?
            } else {
                a
            })
        };
        let q = Quantized {
            scales: float(scales)?,
            biases: biases.map(float).transpose()?,
            group_size,
            bits,
            mode,
            dtype: self.dtype,
        };
        if self.dequantize {
            return Ok((q.dequantize(&packed)?, None));
        }
        Ok((packed, Some(q)))
    }

    pub fn insert(&mut self, name: &str, t: Array) {
        self.tensors.insert(name.to_owned(), t);
    }

    /// Rename tensors starting with `from` to start with `to` instead.
    pub fn rename_prefix(&mut self, from: &str, to: &str) {
        let keys: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| k.starts_with(from))
            .cloned()
            .collect();
        for k in keys {
            if let Some(t) = self.tensors.remove(&k) {
                self.tensors.insert(format!("{to}{}", &k[from.len()..]), t);
            }
        }
    }

    /// Drop tensors whose name matches `pred`.
    pub fn drop_where(&mut self, pred: impl Fn(&str) -> bool) {
        self.tensors.retain(|k, _| !pred(k));
    }

    /// Strict loading: fail if any tensor was not consumed.
    pub fn finish(self) -> Result<(), WeightsError> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let mut left: Vec<_> = self.tensors.into_keys().collect();
        left.sort();
        let n = left.len();
        left.truncate(5);
        Err(WeightsError::Invalid {
            file: self.source,
            msg: format!("{n} unexpected tensor(s): {}", left.join(", ")),
        })
    }
}
