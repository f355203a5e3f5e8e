use crate::linear::{Linear, Quantized};
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
pub struct Weights {
    tensors: HashMap<String, Array>,
    source: PathBuf,
    dtype: Dtype,
    /// Default group size / bits of quantized layers (`quantization` in config.json).
    pub quantization: Option<(i32, i32)>,
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
        let wname = format!("{prefix}.weight");
        let bias = if bias {
            Some(self.take(&format!("{prefix}.bias"), &[out])?)
        } else {
            self.take_opt(&format!("{prefix}.bias"), &[out])?
        };
        let scales_name = format!("{prefix}.scales");
        if !self.contains(&scales_name) {
            let weight = self.take(&wname, &[out, inp])?;
            return Ok(Linear {
                name: prefix.to_owned(),
                weight,
                bias,
                quantized: None,
            });
        }
        let (group_size, bits) = self.quantization.ok_or_else(|| {
            self.invalid(format!(
                "`{scales_name}` present but the config has no `quantization` (group_size, bits)"
            ))
        })?;
        let packed = self.take_raw(&wname)?;
        let scales = self.take_raw(&scales_name)?;
        let biases = self.take_raw(&format!("{prefix}.biases"))?;
        let want = [out, inp * bits / 32];
        if packed.shape() != want || scales.shape() != [out, inp / group_size] {
            return Err(self.invalid(format!(
                "quantized `{prefix}`: weight {:?} / scales {:?} do not fit {out}×{inp} at {bits} bits, group {group_size}",
                packed.shape(),
                scales.shape()
            )));
        }
        let scales = scales.as_dtype(self.dtype)?;
        let biases = biases.as_dtype(self.dtype)?;
        let q = Quantized {
            scales,
            biases,
            group_size,
            bits,
        };
        if self.dequantize {
            let weight = mlx_rs::ops::dequantize(&packed, &q.scales, &q.biases, group_size, bits)?
                .as_dtype(self.dtype)?;
            return Ok(Linear {
                name: prefix.to_owned(),
                weight,
                bias,
                quantized: None,
            });
        }
        Ok(Linear {
            name: prefix.to_owned(),
            weight: packed,
            bias,
            quantized: Some(q),
        })
    }

    /// Add (or replace) a tensor, e.g. one half of a fused tensor split by `sanitize`.
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
