//! GGUF files for MLXEngine, in pure Rust (no MLX): read the container, dequantize
//! tensors, and convert a model to the Hugging Face layout (HF tensor names and
//! `config.json`, `tokenizer.json`, `tokenizer_config.json`), and write a model's float
//! twin ([`writer::dequantize`]), and write a BERT checkpoint ([`bert::convert`], for the
//! ggml embed provider) or a Hub decoder ([`from_hf::convert`], for llama.cpp's quantizer)
//! as GGUF. The MLX `llm` plugin loads a
//! lone `.gguf` through [`hf::to_hf`]; `mlxengine import` writes it with [`hf::import`].

pub mod bert;
pub mod from_hf;
pub mod hf;
pub mod quants;
mod reader;
mod tokenizer;
pub mod writer;

pub use reader::{
    metadata_from_prefix, to_json, type_name, Gguf, TensorInfo, Value, MAX_ARRAY_LEN,
};
pub use tokenizer::{tokenizer_config_from_gguf, tokenizer_json_from_gguf};

use std::path::PathBuf;

/// A GGUF error; the message names the file and the key or tensor.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: {msg}", .file.display())]
    Io { file: PathBuf, msg: String },
    #[error("{}: {msg}", .file.display())]
    Invalid { file: PathBuf, msg: String },
    #[error("{}: tensor `{tensor}`: unsupported quant type {ty} for the MLX provider (MLX reads {reads}; the ggml backend reads every GGUF type)", .file.display(), reads = quants::READS)]
    UnsupportedQuant {
        file: PathBuf,
        tensor: String,
        ty: String,
    },
    #[error("GGUF architecture `{arch}` is not supported (supported: {supported})")]
    Architecture { arch: String, supported: String },
}

/// llama-quantize's name of a `general.file_type` (llama.cpp's `llama_ftype`), for the
/// types its quantizer writes without an importance matrix.
pub fn file_type_name(file_type: i64) -> Option<&'static str> {
    const NAMES: &[(i64, &str)] = &[
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (7, "Q8_0"),
        (8, "Q5_0"),
        (9, "Q5_1"),
        (10, "Q2_K"),
        (11, "Q3_K_S"),
        (12, "Q3_K_M"),
        (13, "Q3_K_L"),
        (14, "Q4_K_S"),
        (15, "Q4_K_M"),
        (16, "Q5_K_S"),
        (17, "Q5_K_M"),
        (18, "Q6_K"),
        (32, "BF16"),
    ];
    NAMES.iter().find(|(t, _)| *t == file_type).map(|(_, n)| *n)
}

/// The GGUF file a model path names: the path itself when it is a `.gguf` file, or the
/// only `.gguf` in a directory that is not a Hugging Face layout (no `config.json`)
/// besides a multimodal projector ([`mmproj_file`]).
pub fn model_file(path: &std::path::Path) -> Option<std::path::PathBuf> {
    if path.is_file() {
        return path
            .extension()
            .is_some_and(|e| e == "gguf")
            .then(|| path.to_owned());
    }
    if path.join("config.json").is_file() {
        return None;
    }
    let mut ggufs = ggufs_in(path, false)?;
    (ggufs.len() == 1).then(|| ggufs.remove(0))
}

/// The multimodal projector of a GGUF model directory: its only `.gguf` whose name
/// starts with `mmproj` (llama.cpp's naming: `mmproj-model-f16.gguf`, `mmproj.gguf`).
pub fn mmproj_file(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut found = ggufs_in(dir, true)?;
    (found.len() == 1).then(|| found.remove(0))
}

/// The `.gguf` files of `dir`, sorted: the projectors or the others.
fn ggufs_in(dir: &std::path::Path, mmproj: bool) -> Option<Vec<std::path::PathBuf>> {
    let mut ggufs: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mmproj"))
                == mmproj
        })
        .collect();
    ggufs.sort();
    Some(ggufs)
}

/// Test helpers shared by the converters' tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::{collections::BTreeMap, path::Path};

    /// Named float32 tensors (shape, values).
    pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

    /// `tensors` as one float32 safetensors file.
    pub fn write_f32_safetensors(path: &Path, tensors: Tensors) {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(k, (shape, v))| (k, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(k, shape, b)| {
                let view =
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b);
                (k.clone(), view.unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, path).unwrap();
    }
}
