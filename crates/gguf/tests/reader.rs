//! The GGUF reader on synthetic files: metadata and tensor table, dequantization of the
//! supported block types, and clear errors for unsupported types and broken files.

use gguf::{Gguf, GgufError, Value};
use half::f16;
use std::io::Write;

/// Build a GGUF v3 file: `kvs` as (key, type, bytes) and tensors as (name, dims innermost
/// first, ggml type, data).
fn write_gguf(
    kvs: &[(&str, u32, Vec<u8>)],
    tensors: &[(&str, Vec<u64>, u32, Vec<u8>)],
) -> tempfile::NamedTempFile {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, t: &str| {
        b.extend((t.len() as u64).to_le_bytes());
        b.extend(t.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, ty, v) in kvs {
        s(&mut b, k);
        b.extend(ty.to_le_bytes());
        b.extend(v);
    }
    let mut offset = 0u64;
    for (name, dims, ty, data) in tensors {
        s(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for (_, _, _, data) in tensors {
        b.extend(data);
        while b.len() % 32 != 0 {
            b.push(0);
        }
    }
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&b).unwrap();
    f
}

fn string(v: &str) -> Vec<u8> {
    let mut b = (v.len() as u64).to_le_bytes().to_vec();
    b.extend(v.as_bytes());
    b
}

#[test]
fn metadata_and_dequantization() {
    // Q8_0 block: scale 0.5, values -64..63 → -32..31.5
    let mut q8 = f16::from_f32(0.5).to_le_bytes().to_vec();
    q8.extend((0..32).map(|i| (i * 4 - 64) as i8 as u8));
    // Q4_1 block: d = 2, m = -1, nibbles 0..15 (low) then 15..0 (high)
    let mut q41 = f16::from_f32(2.0).to_le_bytes().to_vec();
    q41.extend(f16::from_f32(-1.0).to_le_bytes());
    q41.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
    let f = write_gguf(
        &[
            ("general.architecture", 8, string("llama")),
            ("llama.block_count", 4, 2u32.to_le_bytes().to_vec()),
        ],
        &[("a", vec![32], 8, q8), ("b", vec![32], 3, q41)],
    );
    let g = Gguf::open(f.path()).unwrap();
    assert_eq!(g.architecture().unwrap(), "llama");
    assert!(matches!(g.get("llama.block_count"), Some(Value::Int(2))));
    let a = g.to_f32(&g.tensors[0]).unwrap();
    assert_eq!(a[0], -32.0);
    assert_eq!(a[31], 30.0);
    let b = g.to_f32(&g.tensors[1]).unwrap();
    assert_eq!(b[0], -1.0);
    assert_eq!(b[15], 29.0);
    assert_eq!(b[16], 29.0);
    assert_eq!(b[31], -1.0);
}

#[test]
fn k_quants_are_an_unsupported_quant_type_error() {
    let f = write_gguf(
        &[("general.architecture", 8, string("llama"))],
        &[("blk.0.attn_q.weight", vec![256, 1], 12, vec![0u8; 144])],
    );
    let g = Gguf::open(f.path()).unwrap();
    assert_eq!(
        g.unsupported_types(),
        vec![("Q4_K".to_owned(), "blk.0.attn_q.weight".to_owned())]
    );
    let e = g.to_f32(&g.tensors[0]).unwrap_err();
    assert!(matches!(e, GgufError::UnsupportedQuant { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("tensor `blk.0.attn_q.weight`: unsupported quant type Q4_K"),
        "{msg}"
    );
    assert!(
        msg.contains("ggml backend"),
        "the message names the fallback: {msg}"
    );
    let e = gguf::hf::to_hf(&g).err().unwrap().to_string();
    assert!(e.contains("unsupported quant type Q4_K"), "{e}");
}

#[test]
fn broken_files_are_named() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(b"NOPE0000").unwrap();
    let e = Gguf::open(f.path()).err().unwrap().to_string();
    assert!(e.contains("not a GGUF file"), "{e}");
    let full = write_gguf(&[], &[("t", vec![32], 0, vec![0u8; 128])]);
    let bytes = std::fs::read(full.path()).unwrap();
    let mut cut = tempfile::NamedTempFile::new().unwrap();
    cut.write_all(&bytes[..bytes.len() - 64]).unwrap();
    let e = Gguf::open(cut.path()).err().unwrap().to_string();
    assert!(
        e.contains("tensor `t` extends past the end of the file"),
        "{e}"
    );
}
