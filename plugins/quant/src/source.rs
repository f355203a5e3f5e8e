//! The model being quantized: a Hugging Face layout folder (safetensors, single or
//! sharded, f32/f16/bf16) or a GGUF file (dequantized on the way, HF names). Tensors are
//! read one at a time, so the peak is one float tensor, not the model.

use mlx_rs::{Array, Dtype};
use serde_json::Value as Json;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// An opened source.
pub enum Source {
    Hf {
        dir: PathBuf,
        /// Tensor name → (file, shape), in name order.
        tensors: BTreeMap<String, (PathBuf, Vec<usize>)>,
        config: Json,
    },
    Gguf {
        file: gguf::Gguf,
        config: Json,
    },
}

/// Files of a model folder that are weights in some format: never copied.
fn is_weights(name: &str) -> bool {
    [
        ".safetensors",
        ".safetensors.index.json",
        ".bin",
        ".bin.index.json",
        ".pt",
        ".pth",
        ".gguf",
        ".h5",
        ".msgpack",
        ".onnx",
        ".ckpt",
    ]
    .iter()
    .any(|ext| name.ends_with(ext))
}

fn io(p: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", p.display())
}

impl Source {
    /// Open `path`: a folder with `config.json` and safetensors, or a `.gguf` file (or a
    /// folder holding exactly one and no `config.json`).
    pub fn open(path: &Path) -> Result<Self, String> {
        if let Some(file) = gguf::model_file(path) {
            let g = gguf::Gguf::open(&file).map_err(|e| e.to_string())?;
            if let Some((ty, tensor)) = g.unsupported_types().into_iter().next() {
                return Err(format!(
                    "{}: tensor `{tensor}` is {ty}, which this quantizer cannot dequantize (it reads {})",
                    file.display(),
                    gguf::quants::READS
                ));
            }
            let config = gguf::hf::config(&g).map_err(|e| e.to_string())?;
            return Ok(Source::Gguf { file: g, config });
        }
        let cfg_path = path.join("config.json");
        if !cfg_path.is_file() {
            return Err(format!(
                "{}: not a model folder (no config.json) or a .gguf file",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| io(&cfg_path, e))?;
        let config: Json = serde_json::from_str(&text).map_err(|e| io(&cfg_path, e))?;
        if config.get("quantization").is_some() || config.get("quantization_config").is_some() {
            return Err(format!(
                "{}: the model is already quantized (`quantization` in config.json); quantize its float original",
                cfg_path.display()
            ));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io(path, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!("{}: no .safetensors weights", path.display()));
        }
        let mut tensors = BTreeMap::new();
        for f in files {
            let map = mmap(&f)?;
            let (_, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| io(&f, e))?;
            for (name, info) in meta.tensors() {
                if tensors
                    .insert(name.clone(), (f.clone(), info.shape.clone()))
                    .is_some()
                {
                    return Err(format!(
                        "{}: tensor `{name}` appears in two files",
                        f.display()
                    ));
                }
            }
        }
        Ok(Source::Hf {
            dir: path.to_owned(),
            tensors,
            config,
        })
    }

    /// The model's `config.json`.
    pub fn config(&self) -> &Json {
        match self {
            Source::Hf { config, .. } | Source::Gguf { config, .. } => config,
        }
    }

    /// The float type the checkpoint declares (`torch_dtype`, transformers 5's `dtype`).
    pub fn declared_dtype(&self) -> Option<Dtype> {
        let c = self.config();
        let c = c
            .get("text_config")
            .filter(|_| c.get("torch_dtype").is_none())
            .unwrap_or(c);
        let name = c.get("torch_dtype").or_else(|| c.get("dtype"))?.as_str()?;
        mlx_common::parse_dtype(name)
    }

    /// (HF name, shape) of every tensor [`Source::for_each`] hands out, in its order.
    pub fn tensors(&self) -> Result<Vec<(String, Vec<usize>)>, String> {
        match self {
            Source::Hf { tensors, .. } => Ok(tensors
                .iter()
                .map(|(n, (_, s))| (n.clone(), s.clone()))
                .collect()),
            Source::Gguf { file, .. } => gguf::hf::hf_names(file).map_err(|e| e.to_string()),
        }
    }

    /// Bytes of the weights as stored.
    pub fn bytes(&self) -> u64 {
        match self {
            Source::Hf { tensors, .. } => {
                let mut files: Vec<&PathBuf> = tensors.values().map(|(f, _)| f).collect();
                files.dedup();
                files
                    .iter()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            }
            Source::Gguf { file, .. } => file.path.metadata().map(|m| m.len()).unwrap_or(0),
        }
    }

    /// Every tensor in turn: (HF name, shape, values in the source's float type).
    pub fn for_each(
        &self,
        mut f: impl FnMut(String, Vec<usize>, Array) -> Result<(), String>,
    ) -> Result<(), String> {
        match self {
            Source::Hf { tensors, .. } => {
                let mut open: Option<(PathBuf, memmap2::Mmap)> = None;
                for (name, (file, shape)) in tensors {
                    if open.as_ref().is_none_or(|(p, _)| p != file) {
                        open = Some((file.clone(), mmap(file)?));
                    }
                    let map = &open.as_ref().expect("just opened").1;
                    let st = safetensors::SafeTensors::deserialize(map).map_err(|e| io(file, e))?;
                    let view = st.tensor(name).map_err(|e| io(file, e))?;
                    let a = to_array(&view)
                        .map_err(|e| format!("{}: tensor `{name}`: {e}", file.display()))?;
                    f(name.clone(), shape.clone(), a)?;
                }
                Ok(())
            }
            Source::Gguf { file, .. } => {
                struct Failed(String);
                impl From<gguf::GgufError> for Failed {
                    fn from(e: gguf::GgufError) -> Self {
                        Failed(e.to_string())
                    }
                }
                gguf::hf::for_each_hf_tensor(file, |t| -> Result<(), Failed> {
                    let shape: Vec<i32> = t.shape.iter().map(|d| *d as i32).collect();
                    let a = Array::from_slice(&t.data, &shape);
                    f(t.name, t.shape, a).map_err(Failed)
                })
                .map(|_| ())
                .map_err(|Failed(e)| e)
            }
        }
    }

    /// The files beside the weights a model folder needs (tokenizer, chat template,
    /// generation config …), as (name, bytes): copied from a folder, made from a GGUF's
    /// metadata. `config.json` is not among them (the writer writes its own).
    pub fn side_files(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        match self {
            Source::Hf { dir, .. } => {
                let mut out = Vec::new();
                for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))?.flatten() {
                    let p = e.path();
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !p.is_file()
                        || name == "config.json"
                        || name.starts_with('.')
                        || is_weights(&name)
                    {
                        continue;
                    }
                    out.push((name, std::fs::read(&p).map_err(|e| io(&p, e))?));
                }
                out.sort();
                Ok(out)
            }
            Source::Gguf { file, .. } => {
                let tok = gguf::tokenizer_json_from_gguf(file).map_err(|e| e.to_string())?;
                let cfg = gguf::tokenizer_config_from_gguf(file);
                let json = |v: &Json| serde_json::to_vec_pretty(v).expect("json");
                Ok(vec![
                    ("tokenizer.json".into(), json(&tok)),
                    ("tokenizer_config.json".into(), json(&cfg)),
                ])
            }
        }
    }
}

fn mmap(f: &Path) -> Result<memmap2::Mmap, String> {
    let file = std::fs::File::open(f).map_err(|e| io(f, e))?;
    // SAFETY: read-only map of a weights file; a concurrent truncation would fault, as
    // with every mmap-based loader (safetensors, MLX, llama.cpp).
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io(f, e))
}

/// A safetensors view as an MLX array of its own float type.
pub(crate) fn to_array(v: &safetensors::tensor::TensorView<'_>) -> Result<Array, String> {
    let shape: Vec<i32> = v.shape().iter().map(|d| *d as i32).collect();
    let b = v.data();
    Ok(match v.dtype() {
        safetensors::Dtype::F32 => {
            let x: Vec<f32> = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Array::from_slice(&x, &shape)
        }
        safetensors::Dtype::F16 => {
            let x: Vec<half::f16> = b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                .collect();
            Array::from_slice(&x, &shape)
        }
        safetensors::Dtype::BF16 => {
            let x: Vec<half::bf16> = b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                .collect();
            Array::from_slice(&x, &shape)
        }
        other => return Err(format!("{other:?} weights are not float (f32, f16, bf16)")),
    })
}
