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
fn importance_matrix_types_are_an_unsupported_quant_type_error() {
    let f = write_gguf(
        &[("general.architecture", 8, string("llama"))],
        &[("blk.0.attn_q.weight", vec![256, 1], 16, vec![0u8; 66])],
    );
    let g = Gguf::open(f.path()).unwrap();
    assert_eq!(
        g.unsupported_types(),
        vec![("IQ2_XXS".to_owned(), "blk.0.attn_q.weight".to_owned())]
    );
    let e = g.to_f32(&g.tensors[0]).unwrap_err();
    assert!(matches!(e, GgufError::UnsupportedQuant { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("tensor `blk.0.attn_q.weight`: unsupported quant type IQ2_XXS"),
        "{msg}"
    );
    assert!(
        msg.contains("Q4_K") && msg.contains("ggml backend"),
        "the message names what MLX reads and the fallback: {msg}"
    );
    let e = gguf::hf::to_hf(&g).err().unwrap().to_string();
    assert!(e.contains("unsupported quant type IQ2_XXS"), "{e}");
}

#[test]
fn k_quant_tensors_are_read_checked_for_whole_blocks_and_truncation() {
    // Q4_K: d = 1, dmin = 0.5, the 8 scales/mins packed as 6 bits (scale j+1, min j),
    // nibbles i % 16.
    let mut b = f16::from_f32(1.0).to_le_bytes().to_vec();
    b.extend(f16::from_f32(0.5).to_le_bytes());
    let (sc, mn): (Vec<u8>, Vec<u8>) = ((1..=8).collect(), (0..8).collect());
    let mut packed = [0u8; 12];
    for j in 0..4 {
        packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        packed[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        packed[j + 8] = (sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4);
    }
    b.extend(packed);
    b.extend((0..128u8).map(|i| (i % 16) | ((15 - i % 16) << 4)));
    let f = write_gguf(
        &[("general.architecture", 8, string("llama"))],
        &[("w", vec![256, 1], 12, b.clone())],
    );
    let g = Gguf::open(f.path()).unwrap();
    assert!(g.unsupported_types().is_empty());
    let v = g.to_f32(&g.tensors[0]).unwrap();
    assert_eq!(v.len(), 256);
    // Element 32·s + l lies in sub-block s: scale s+1, min s, nibble (low half) l % 16.
    for (i, x) in v.iter().enumerate() {
        let (s, l) = (i / 32, i % 32);
        let nib = if s % 2 == 0 { l % 16 } else { 15 - l % 16 };
        let want = (s as f32 + 1.0) * nib as f32 - 0.5 * s as f32;
        assert_eq!(*x, want, "element {i}");
    }

    // Rows of 128 are not whole super-blocks of 256.
    let f = write_gguf(
        &[("general.architecture", 8, string("llama"))],
        &[("w", vec![128, 2], 12, b.clone())],
    );
    let g = Gguf::open(f.path()).unwrap();
    let e = g.to_f32(&g.tensors[0]).unwrap_err().to_string();
    assert!(
        e.contains("tensor `w` (Q4_K): rows of 128 elements are not whole blocks of 256"),
        "{e}"
    );

    // Two super-blocks claimed, one stored: refused at open, before any read.
    let f = write_gguf(
        &[("general.architecture", 8, string("llama"))],
        &[("w", vec![256, 2], 12, b)],
    );
    let e = Gguf::open(f.path()).err().unwrap().to_string();
    assert!(e.contains("tensor `w` extends past the end"), "{e}");
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

#[test]
fn claimed_lengths_and_offsets_are_bounded_by_the_file() {
    let err = |f: &tempfile::NamedTempFile| Gguf::open(f.path()).err().unwrap().to_string();
    // 10^9 strings claimed in a 1 GB sparse file: refused before anything is allocated
    // for them (this reserved 32 GB and aborted the process).
    let mut arr = 8u32.to_le_bytes().to_vec();
    arr.extend(1_000_000_000u64.to_le_bytes());
    let f = write_gguf(&[("tokenizer.ggml.tokens", 9, arr)], &[]);
    f.as_file().set_len(1 << 30).unwrap();
    let e = err(&f);
    assert!(
        e.contains("tokenizer.ggml.tokens") && e.contains("at most 4194304"),
        "{e}"
    );
    // Under that cap, but more strings than the rest of the file can hold (8 bytes each
    // at the least).
    let mut arr = 8u32.to_le_bytes().to_vec();
    arr.extend(4_000_000u64.to_le_bytes());
    let e = err(&write_gguf(&[("tokenizer.ggml.tokens", 9, arr)], &[]));
    assert!(e.contains("does not fit in the"), "{e}");
    // Within the file but past what any model needs.
    let n = gguf::MAX_ARRAY_LEN as u64 + 1;
    let mut arr = 0u32.to_le_bytes().to_vec();
    arr.extend(n.to_le_bytes());
    arr.extend(vec![0u8; n as usize]);
    let e = err(&write_gguf(&[("big", 9, arr)], &[]));
    assert!(e.contains("`big`") && e.contains("at most 4194304"), "{e}");
    // A tensor offset near 2^64 must not wrap around the bounds check. The offset field
    // of the only tensor sits after the header (24 bytes), its name (8 + 1), dimension
    // count (4), one dimension (8) and type (4).
    let f = write_gguf(&[], &[("t", vec![32], 0, vec![0u8; 128])]);
    let mut bytes = std::fs::read(f.path()).unwrap();
    bytes[49..57].copy_from_slice(&(u64::MAX - 16).to_le_bytes());
    std::fs::write(f.path(), &bytes).unwrap();
    assert!(
        err(&f).contains("tensor `t` extends past the end"),
        "{}",
        err(&f)
    );
    // A shape whose element count overflows.
    let f = write_gguf(&[], &[("s", vec![1 << 40, 1 << 40], 0, vec![0u8; 32])]);
    assert!(err(&f).contains("tensor `s`: shape"), "{}", err(&f));
}
