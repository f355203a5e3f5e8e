//! Writing GGUF: a model's float twin (every tensor dequantized to F32 or F16).
//!
//! The metadata is copied byte for byte (value types included, which llama.cpp checks),
//! except `general.file_type`, which is rewritten to say what the tensors now are. The
//! output appears only when complete: it is written beside the destination and renamed.

use crate::{reader::byte_size, Gguf, GgufError};
use half::f16;
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

/// Float type of a dequantized GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
}

impl FloatType {
    /// ggml tensor type id.
    fn ggml_type(self) -> u32 {
        match self {
            FloatType::F32 => 0,
            FloatType::F16 => 1,
        }
    }
    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32`, `LLAMA_FTYPE_MOSTLY_F16`).
    fn file_type(self) -> u32 {
        match self {
            FloatType::F32 => 0,
            FloatType::F16 => 1,
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Write `src` to `dst` with every tensor dequantized to `ty` (F16 tensors stay F16 when
/// `ty` is F16; 1-D tensors such as norms stay F32 as llama.cpp's own converter keeps them).
/// Tensor names, shapes and order, and all metadata but `general.file_type`, are unchanged,
/// so llama.cpp and our readers see the same model with float weights.
pub fn dequantize(src: &Gguf, dst: &Path, ty: FloatType) -> Result<(), GgufError> {
    let io = |file: &Path, e: std::io::Error| GgufError::Io {
        file: file.into(),
        msg: e.to_string(),
    };
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
    let out_type = |t: &crate::TensorInfo| {
        if t.shape.len() <= 1 {
            FloatType::F32
        } else {
            ty
        }
    };

    // Header, metadata, tensor table.
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(src.tensors.len() as u64).to_le_bytes());
    let has_file_type = src.get("general.file_type").is_some();
    let n_kv = src.raw_metadata().count() + usize::from(!has_file_type);
    head.extend_from_slice(&(n_kv as u64).to_le_bytes());
    let file_type = |head: &mut Vec<u8>| {
        put_str(head, "general.file_type");
        head.extend_from_slice(&4u32.to_le_bytes()); // u32
        head.extend_from_slice(&ty.file_type().to_le_bytes());
    };
    for (key, raw) in src.raw_metadata() {
        if key == "general.file_type" {
            file_type(&mut head);
        } else {
            head.extend_from_slice(raw);
        }
    }
    if !has_file_type {
        file_type(&mut head);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::with_capacity(src.tensors.len());
    for t in &src.tensors {
        put_str(&mut head, &t.name);
        head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            head.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        let oty = out_type(t).ggml_type();
        head.extend_from_slice(&oty.to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offsets.push(offset);
        let size = byte_size(oty, t.elements()).expect("F32/F16 sizes are known");
        offset = (offset + size).div_ceil(align) * align;
    }
    head.resize(head.len().div_ceil(align) * align, 0);

    let partial = partial_path(dst);
    let write = || -> Result<(), std::io::Error> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&partial)?);
        w.write_all(&head)?;
        let mut written = 0usize;
        for (t, at) in src.tensors.iter().zip(&offsets) {
            w.write_all(&vec![0u8; at - written])?;
            let values = src
                .to_f32(t)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let bytes: Vec<u8> = match out_type(t) {
                FloatType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                FloatType::F16 => values
                    .iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect(),
            };
            w.write_all(&bytes)?;
            written = at + bytes.len();
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&partial);
        return Err(io(dst, e));
    }
    std::fs::rename(&partial, dst).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        io(dst, e)
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
        for ty in [FloatType::F32, FloatType::F16] {
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
        let err = dequantize(&src, &dst, FloatType::F32).unwrap_err();
        assert!(err.to_string().contains("out.gguf"), "{err}");
        assert!(!dst.exists());
    }
}
