//! Writing GGUF: a model's float twin (every tensor dequantized to F32 or F16), and new
//! models from other formats ([`write_model`], used by [`crate::bert`]).
//!
//! A twin's metadata is copied byte for byte (value types included, which llama.cpp
//! checks), except `general.file_type`, which is rewritten to say what the tensors now are.
//! Every output appears only when complete: it is written beside the destination and
//! renamed.

use crate::{reader::byte_size, Gguf, GgufError};
use half::f16;
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

/// The type tensors are written as: a float type, or Q8_0 (blocks of 32 int8 values with
/// an f16 scale, llama.cpp's most accurate quantization, ~8.5 bits per value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Q8_0,
}

impl TensorType {
    /// ggml tensor type id.
    pub fn ggml_type(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q8_0 => 8,
        }
    }
    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32`, `_MOSTLY_F16`, `_MOSTLY_Q8_0`).
    pub fn file_type(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q8_0 => 7,
        }
    }
}

/// `values` as Q8_0 blocks (`values.len()` a multiple of 32): per block the f16 scale
/// `max|x| / 127`, then each value divided by it and rounded (ggml's `quantize_row_q8_0`).
fn q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * inv).round() as i8 as u8));
    }
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Write `src` to `dst` with every tensor dequantized to `ty` (F16 tensors stay F16 when
/// `ty` is F16; 1-D tensors such as norms stay F32 as llama.cpp's own converter keeps them).
/// Tensor names, shapes and order, and all metadata but `general.file_type`, are unchanged,
/// so llama.cpp and our readers see the same model with float weights.
pub fn dequantize(src: &Gguf, dst: &Path, ty: TensorType) -> Result<(), GgufError> {
    if let Some((name, tensor)) = src.unsupported_types().into_iter().next() {
        return Err(GgufError::UnsupportedQuant {
            file: src.path.clone(),
            tensor,
            ty: name,
        });
    }
    let align = src
        .get("general.alignment")
        .and_then(crate::Value::as_i64)
        .unwrap_or(32)
        .max(1) as usize;
    let mut kv = Vec::new();
    let has_file_type = src.get("general.file_type").is_some();
    let n_kv = src.raw_metadata().count() + usize::from(!has_file_type);
    let file_type = Meta::U32(ty.file_type());
    for (key, raw) in src.raw_metadata() {
        if key == "general.file_type" {
            file_type.put(&mut kv, key);
        } else {
            kv.extend_from_slice(raw);
        }
    }
    if !has_file_type {
        file_type.put(&mut kv, "general.file_type");
    }
    let tensors = src
        .tensors
        .iter()
        .map(|t| NewTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            ty: stored_type(ty, &t.shape),
            data: Box::new(move || src.to_f32(t).map_err(|e| e.to_string())),
        })
        .collect();
    write_file(dst, &kv, n_kv, align, tensors)
}

/// A metadata value to write, with its GGUF value type.
#[derive(Debug, Clone)]
pub enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

impl Meta {
    /// GGUF value type ids.
    const U32_T: u32 = 4;
    const I32_T: u32 = 5;
    const F32_T: u32 = 6;
    const BOOL_T: u32 = 7;
    const STR_T: u32 = 8;
    const ARRAY_T: u32 = 9;

    /// Append the pair `key` = `self` as GGUF encodes it.
    fn put(&self, out: &mut Vec<u8>, key: &str) {
        put_str(out, key);
        let ty = |t: u32, out: &mut Vec<u8>| out.extend_from_slice(&t.to_le_bytes());
        match self {
            Meta::U32(v) => {
                ty(Self::U32_T, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::F32(v) => {
                ty(Self::F32_T, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Meta::Bool(v) => {
                ty(Self::BOOL_T, out);
                out.push(u8::from(*v));
            }
            Meta::Str(s) => {
                ty(Self::STR_T, out);
                put_str(out, s);
            }
            Meta::Strs(v) => {
                ty(Self::ARRAY_T, out);
                ty(Self::STR_T, out);
                out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                v.iter().for_each(|s| put_str(out, s));
            }
            Meta::I32s(v) => {
                ty(Self::ARRAY_T, out);
                ty(Self::I32_T, out);
                out.extend_from_slice(&(v.len() as u64).to_le_bytes());
                v.iter()
                    .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
            }
        }
    }
}

/// A tensor to write: its row-major shape, the float type to store, and a function that
/// gives its values (called once, in file order, so one tensor is in memory at a time).
pub struct NewTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub ty: TensorType,
    pub data: Box<dyn FnOnce() -> Result<Vec<f32>, String> + 'a>,
}

/// The type a tensor of `shape` is stored as in a model of type `ty`: 1-D tensors (norms,
/// biases) stay F32, as llama.cpp's converter keeps them; Q8_0 needs rows of whole
/// blocks (a multiple of 32), others are F16.
pub fn stored_type(ty: TensorType, shape: &[usize]) -> TensorType {
    match ty {
        _ if shape.len() <= 1 => TensorType::F32,
        TensorType::Q8_0 if shape.last().is_some_and(|n| !n.is_multiple_of(32)) => TensorType::F16,
        _ => ty,
    }
}

/// Write a new GGUF model: `metadata` in order (`general.alignment` 32), then `tensors`.
/// The file appears only when complete.
pub fn write_model(
    dst: &Path,
    metadata: &[(&str, Meta)],
    tensors: Vec<NewTensor<'_>>,
) -> Result<(), GgufError> {
    let mut kv = Vec::new();
    for (key, value) in metadata {
        value.put(&mut kv, key);
    }
    write_file(dst, &kv, metadata.len(), 32, tensors)
}

/// Header, the encoded metadata pairs `kv` (`n_kv` of them), tensor table, tensor data
/// aligned to `align`; written beside `dst`, then renamed onto it.
fn write_file(
    dst: &Path,
    kv: &[u8],
    n_kv: usize,
    align: usize,
    tensors: Vec<NewTensor<'_>>,
) -> Result<(), GgufError> {
    let io = |e: std::io::Error| GgufError::Io {
        file: dst.into(),
        msg: e.to_string(),
    };
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(n_kv as u64).to_le_bytes());
    head.extend_from_slice(kv);
    let mut offset = 0usize;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in &tensors {
        put_str(&mut head, &t.name);
        head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            head.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        let oty = t.ty.ggml_type();
        head.extend_from_slice(&oty.to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offsets.push(offset);
        let bad = |msg: String| GgufError::Invalid {
            file: dst.into(),
            msg: format!("tensor `{}`: {msg}", t.name),
        };
        if t.ty == TensorType::Q8_0 && t.shape.last().is_none_or(|n| !n.is_multiple_of(32)) {
            return Err(bad(format!(
                "shape {:?}: Q8_0 rows must be whole blocks of 32",
                t.shape
            )));
        }
        let size = t
            .shape
            .iter()
            .try_fold(1usize, |n, d| n.checked_mul(*d))
            .and_then(|n| byte_size(oty, n))
            .ok_or_else(|| bad(format!("shape {:?} is too large", t.shape)))?;
        offset = (offset + size).div_ceil(align) * align;
    }
    head.resize(head.len().div_ceil(align) * align, 0);

    let partial = partial_path(dst);
    let write = || -> Result<(), std::io::Error> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&partial)?);
        w.write_all(&head)?;
        let mut written = 0usize;
        for (t, at) in tensors.into_iter().zip(&offsets) {
            w.write_all(&vec![0u8; at - written])?;
            let n: usize = t.shape.iter().product();
            let values = (t.data)()
                .map_err(|e| std::io::Error::other(format!("tensor `{}`: {e}", t.name)))?;
            if values.len() != n {
                return Err(std::io::Error::other(format!(
                    "tensor `{}`: {} values for shape {:?}",
                    t.name,
                    values.len(),
                    t.shape
                )));
            }
            // Encoded a block of values at a time: the tensor is in memory once, as f32.
            let mut size = 0;
            for chunk in values.chunks(1 << 16) {
                let bytes: Vec<u8> = match t.ty {
                    TensorType::F32 => chunk.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    TensorType::F16 => chunk
                        .iter()
                        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                        .collect(),
                    TensorType::Q8_0 => q8_0(chunk),
                };
                w.write_all(&bytes)?;
                size += bytes.len();
            }
            written = at + size;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&partial);
        return Err(io(e));
    }
    std::fs::rename(&partial, dst).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        io(e)
    })
}

/// Where a file is written before it is renamed into place (same directory, so the rename
/// is atomic; process id and a per-process count keep concurrent writers apart).
fn partial_path(dst: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = dst.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.partial", std::process::id()));
    dst.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF with one Q8_0 matrix, one F32 vector and typed metadata.
    fn sample(path: &Path) {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        put_str(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        put_str(&mut b, "llama");
        put_str(&mut b, "general.file_type");
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes());
        put_str(&mut b, "llama.context_length");
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&2048u32.to_le_bytes());
        // w: 2 x 32 Q8_0 (two blocks), v: 32 F32.
        put_str(&mut b, "w");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&32u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        put_str(&mut b, "v");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&32u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&96u64.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32, 0);
        for blk in 0..2 {
            b.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
            b.extend((0..32).map(|i| (i as i8 - 16 * blk) as u8));
        }
        b.resize(b.len() + (96 - 68), 0);
        for i in 0..32 {
            b.extend_from_slice(&(i as f32 * 0.25).to_le_bytes());
        }
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn dequantized_twin_keeps_metadata_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("q.gguf");
        sample(&src_path);
        let src = Gguf::open(&src_path).unwrap();
        for ty in [TensorType::F32, TensorType::F16] {
            let dst_path = dir.path().join(format!("{ty:?}.gguf"));
            dequantize(&src, &dst_path, ty).unwrap();
            let dst = Gguf::open(&dst_path).unwrap();
            assert_eq!(dst.str("general.architecture"), Some("llama"));
            assert_eq!(dst.int("general.file_type").unwrap(), ty.file_type() as i64);
            assert_eq!(dst.int("llama.context_length").unwrap(), 2048);
            // Raw bytes of untouched pairs are identical (value types preserved).
            let raw = |g: &Gguf, k: &str| {
                g.raw_metadata()
                    .find(|(key, _)| *key == k)
                    .unwrap()
                    .1
                    .to_vec()
            };
            assert_eq!(
                raw(&src, "llama.context_length"),
                raw(&dst, "llama.context_length")
            );
            assert_eq!(dst.tensors[0].ggml_type, ty.ggml_type());
            assert_eq!(dst.tensors[1].ggml_type, 0, "1-D tensors stay F32");
            for (a, b) in src.tensors.iter().zip(&dst.tensors) {
                assert_eq!((&a.name, &a.shape), (&b.name, &b.shape));
                // Q8_0 values (multiples of 0.5 below 2^11) are exact in F16 too.
                assert_eq!(src.to_f32(a).unwrap(), dst.to_f32(b).unwrap(), "{}", a.name);
            }
            let leftovers: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains("partial"))
                .collect();
            assert!(leftovers.is_empty());
        }
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("q.gguf");
        sample(&src_path);
        let src = Gguf::open(&src_path).unwrap();
        let dst = dir.path().join("missing-dir").join("out.gguf");
        let err = dequantize(&src, &dst, TensorType::F32).unwrap_err();
        assert!(err.to_string().contains("out.gguf"), "{err}");
        assert!(!dst.exists());
    }

    #[test]
    fn new_models_round_trip_metadata_and_q8_0_within_half_a_step() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new.gguf");
        let w: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) / 7.0).collect();
        let tensors = vec![
            NewTensor {
                name: "w".into(),
                shape: vec![2, 32],
                ty: TensorType::Q8_0,
                data: Box::new(|| Ok(w.clone())),
            },
            NewTensor {
                name: "odd".into(),
                shape: vec![2, 3],
                ty: stored_type(TensorType::Q8_0, &[2, 3]),
                data: Box::new(|| Ok(vec![1.0; 6])),
            },
        ];
        let meta = [
            ("general.architecture", Meta::Str("bert".into())),
            ("bert.block_count", Meta::U32(3)),
            ("x.flag", Meta::Bool(true)),
            ("x.eps", Meta::F32(0.5)),
            ("x.names", Meta::Strs(vec!["a".into(), "b".into()])),
            ("x.ids", Meta::I32s(vec![-1, 2])),
        ];
        write_model(&out, &meta, tensors).unwrap();
        let g = Gguf::open(&out).unwrap();
        assert_eq!(g.str("general.architecture"), Some("bert"));
        assert_eq!(g.int("bert.block_count").unwrap(), 3);
        assert_eq!(g.int("x.flag").unwrap(), 1);
        assert_eq!(g.get("x.eps").and_then(crate::Value::as_f64), Some(0.5));
        let ids = g.get("x.ids").unwrap().as_array().unwrap();
        assert_eq!(ids[0].as_i64(), Some(-1));
        assert_eq!(g.tensors[0].ggml_type, 8);
        assert_eq!(
            g.tensors[1].ggml_type, 1,
            "rows of 3 are not whole Q8_0 blocks: F16"
        );
        let back = g.to_f32(&g.tensors[0]).unwrap();
        for (block, got) in w.chunks(32).zip(back.chunks(32)) {
            let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for (a, b) in block.iter().zip(got) {
                // Half a step of rounding, plus the scale's own rounding to f16 (relative
                // 2^-11) over up to 127 steps.
                assert!((a - b).abs() <= step * (0.5 + 127.0 / 2048.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn a_tensor_whose_values_fail_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new.gguf");
        let tensors = vec![NewTensor {
            name: "w".into(),
            shape: vec![4],
            ty: TensorType::F32,
            data: Box::new(|| Ok(vec![0.0; 3])),
        }];
        let e = write_model(&out, &[], tensors).unwrap_err().to_string();
        assert!(
            e.contains("new.gguf") && e.contains("tensor `w`: 3 values"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Q8_0 rows that are not whole blocks are refused before anything is written.
        let tensors = vec![NewTensor {
            name: "q".into(),
            shape: vec![2, 48],
            ty: TensorType::Q8_0,
            data: Box::new(|| Ok(vec![0.0; 96])),
        }];
        let e = write_model(&out, &[], tensors).unwrap_err().to_string();
        assert!(
            e.contains("tensor `q`") && e.contains("whole blocks of 32"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
