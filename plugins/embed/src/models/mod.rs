//! Architectures of the embed plugin, one file each, and the shared weight loading.
//!
//! Loading follows one path for every architecture: read the safetensors (single file or
//! sharded with `model.safetensors.index.json`), `sanitize` (drop unused tensors, strip
//! task prefixes), build the model taking each tensor by name with its expected shape,
//! then fail if any tensor is left over. A missing, misshapen or extra tensor is an error
//! naming the tensor and the file.

pub mod bert;

use crate::error::EmbedError;
use mlx_rs::{Array, Dtype};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// The architecture table: `model_type` values this plugin can load.
pub const ARCHITECTURES: &[&str] = &["bert"];

/// Whether `model_type` is in [`ARCHITECTURES`] (checked before anything is downloaded).
pub fn supports(model_type: &str) -> bool {
    ARCHITECTURES.contains(&model_type)
}

/// Named tensors being consumed by a model constructor.
pub struct Weights {
    tensors: HashMap<String, Array>,
    source: PathBuf,
    dtype: Dtype,
}

impl Weights {
    /// Load every `*.safetensors` of a model directory, cast to `dtype`.
    pub fn load(dir: &Path, dtype: Dtype) -> Result<Self, EmbedError> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| EmbedError::io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| EmbedError::Config {
                    file: index.clone(),
                    msg: e.to_string(),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| EmbedError::Config {
                    file: index.clone(),
                    msg: "missing `weight_map`".into(),
                })?;
            let mut files: Vec<PathBuf> = map
                .values()
                .filter_map(|f| f.as_str())
                .map(|f| dir.join(f))
                .collect();
            files.sort();
            files.dedup();
            files
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut tensors = HashMap::new();
        for file in &files {
            if !file.is_file() {
                return Err(EmbedError::MissingFile(file.clone()));
            }
            let part = Array::load_safetensors(file).map_err(|e| EmbedError::Weights {
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
        Ok(Self {
            tensors,
            source,
            dtype,
        })
    }

    /// Remove the tensor `name`, checking its shape and casting it to the load dtype.
    pub fn take(&mut self, name: &str, shape: &[i32]) -> Result<Array, EmbedError> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| EmbedError::Weights {
                file: self.source.clone(),
                msg: format!("missing tensor `{name}`"),
            })?;
        if t.shape() != shape {
            return Err(EmbedError::Weights {
                file: self.source.clone(),
                msg: format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?}",
                    t.shape()
                ),
            });
        }
        let t = if t.dtype() == self.dtype {
            t
        } else {
            t.as_dtype(self.dtype)?
        };
        Ok(t)
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
            let t = self.tensors.remove(&k).expect("key listed above");
            self.tensors.insert(format!("{to}{}", &k[from.len()..]), t);
        }
    }

    /// Drop tensors whose name matches `pred`.
    pub fn drop_where(&mut self, pred: impl Fn(&str) -> bool) {
        self.tensors.retain(|k, _| !pred(k));
    }

    /// Strict loading: fail if any tensor was not consumed.
    pub fn finish(self) -> Result<(), EmbedError> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let mut left: Vec<_> = self.tensors.into_keys().collect();
        left.sort();
        let n = left.len();
        left.truncate(5);
        Err(EmbedError::Weights {
            file: self.source,
            msg: format!("{n} unexpected tensor(s): {}", left.join(", ")),
        })
    }
}

/// A dense layer `y = x·Wᵀ + b` with a checkpoint name, so that later plugins (quant,
/// lora) can find and replace it.
pub struct Linear {
    pub name: String,
    pub weight: Array,
    pub bias: Option<Array>,
}

impl Linear {
    /// `x`: (N, in) → (N, out).
    pub fn forward(&self, x: &Array) -> mlx_rs::error::Result<Array> {
        match &self.bias {
            Some(b) => mlx_rs::ops::addmm(b, x, self.weight.t(), None, None),
            None => x.matmul(self.weight.t()),
        }
    }
}

/// Take `{prefix}.weight` (out, in) and `{prefix}.bias` (out).
pub fn linear(w: &mut Weights, prefix: &str, inp: i32, out: i32) -> Result<Linear, EmbedError> {
    Ok(Linear {
        name: prefix.to_owned(),
        weight: w.take(&format!("{prefix}.weight"), &[out, inp])?,
        bias: Some(w.take(&format!("{prefix}.bias"), &[out])?),
    })
}
