//! GGUF tensor types: their block layout and their dequantization to f32, following
//! ggml's reference `dequantize_row_*` (ggml-quants.c) value for value. Every type a
//! released llama.cpp writes for a model's weights by default is here: the floats, the
//! legacy quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the K-quants (Q2_K … Q6_K). The
//! importance-matrix types (IQ*), ternary (TQ*) and MXFP4 are not.
//!
//! `plugins/llm-ggml` checks each against ggml's own `to_float` on tensors that ggml's
//! quantizer wrote.

use half::{bf16, f16};

/// Elements per K-quant super-block.
const QK_K: usize = 256;

/// (type id, elements per block, bytes per block) of every type [`dequantize`] reads.
const LAYOUTS: [(u32, usize, usize); 13] = [
    (0, 1, 4),       // F32
    (1, 1, 2),       // F16
    (30, 1, 2),      // BF16
    (2, 32, 18),     // Q4_0: d, 16 nibble pairs
    (3, 32, 20),     // Q4_1: d, m, 16 nibble pairs
    (6, 32, 22),     // Q5_0: d, 32 high bits, 16 nibble pairs
    (7, 32, 24),     // Q5_1: d, m, 32 high bits, 16 nibble pairs
    (8, 32, 34),     // Q8_0: d, 32 i8
    (10, QK_K, 84),  // Q2_K: 16 scale/min nibble pairs, 64 crumb quads, d, dmin
    (11, QK_K, 110), // Q3_K: 32 high-bit bytes, 64 crumb quads, 12 packed 6-bit scales, d
    (12, QK_K, 144), // Q4_K: d, dmin, 12 packed 6-bit scales/mins, 128 nibble pairs
    (13, QK_K, 176), // Q5_K: d, dmin, 12 packed scales/mins, 32 high-bit bytes, 128 nibbles
    (14, QK_K, 210), // Q6_K: 128 low nibbles, 64 high crumbs, 16 i8 scales, d
];

/// The types [`dequantize`] reads, for messages.
pub const READS: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// Elements and bytes of one block of type `ty`, if [`dequantize`] reads it.
pub fn block_layout(ty: u32) -> Option<(usize, usize)> {
    LAYOUTS
        .iter()
        .find(|(t, ..)| *t == ty)
        .map(|&(_, e, b)| (e, b))
}

/// Whether [`dequantize`] reads type `ty`.
pub fn is_supported(ty: u32) -> bool {
    block_layout(ty).is_some()
}

/// Appends the values of `data` (whole blocks of type `ty`, as [`block_layout`] gives
/// them) to `out`. The caller checked that `ty` is supported and `data` is whole blocks;
/// a trailing partial block is ignored.
pub fn dequantize(ty: u32, data: &[u8], out: &mut Vec<f32>) {
    let Some((_, bytes)) = block_layout(ty) else {
        return;
    };
    let blocks = data.chunks_exact(bytes);
    match ty {
        0 => out.extend(blocks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        1 => out.extend(blocks.map(|c| h(c, 0))),
        30 => out.extend(blocks.map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        2 => blocks.for_each(|b| q4_0(b, out)),
        3 => blocks.for_each(|b| q4_1(b, out)),
        6 => blocks.for_each(|b| q5(b, false, out)),
        7 => blocks.for_each(|b| q5(b, true, out)),
        8 => blocks.for_each(|b| {
            let d = h(b, 0);
            out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
        }),
        10 => blocks.for_each(|b| q2_k(b, out)),
        11 => blocks.for_each(|b| q3_k(b, out)),
        12 => blocks.for_each(|b| q4_k(b, out)),
        13 => blocks.for_each(|b| q5_k(b, out)),
        14 => blocks.for_each(|b| q6_k(b, out)),
        _ => {}
    }
}

/// The f16 at byte `i` of `b`.
fn h(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = h(b, 0);
    let q = &b[2..18];
    out.extend(q.iter().map(|&x| f32::from((x & 0x0f) as i8 - 8) * d));
    out.extend(q.iter().map(|&x| f32::from((x >> 4) as i8 - 8) * d));
}

fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (h(b, 0), h(b, 2));
    let q = &b[4..20];
    out.extend(q.iter().map(|&x| f32::from(x & 0x0f) * d + m));
    out.extend(q.iter().map(|&x| f32::from(x >> 4) * d + m));
}

/// Q5_0 (`offset` false: d·(q − 16)) and Q5_1 (true: d·q + m).
fn q5(b: &[u8], offset: bool, out: &mut Vec<f32>) {
    let d = h(b, 0);
    let (m, o) = if offset { (h(b, 2), 4) } else { (0.0, 2) };
    let qh = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let qs = &b[o + 4..o + 20];
    let value = |j: usize, high: bool| -> f32 {
        let (low, bit) = if high {
            (qs[j] >> 4, (qh >> (j + 12)) & 0x10)
        } else {
            (qs[j] & 0x0f, ((qh >> j) << 4) & 0x10)
        };
        let q = i32::from(low) | bit as i32;
        if offset {
            q as f32 * d + m
        } else {
            (q - 16) as f32 * d
        }
    };
    out.extend((0..16).map(|j| value(j, false)));
    out.extend((0..16).map(|j| value(j, true)));
}

fn q2_k(b: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (h(b, 80), h(b, 82));
    let mut is = 0;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for half in [&q[..16], &q[16..]] {
                let sc = scales[is];
                is += 1;
                let dl = d * f32::from(sc & 0x0f);
                let ml = dmin * f32::from(sc >> 4);
                out.extend(half.iter().map(|&x| dl * f32::from((x >> shift) & 3) - ml));
            }
        }
    }
}

fn q3_k(b: &[u8], out: &mut Vec<f32>) {
    let (hm, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = h(b, 108);
    // The 16 6-bit scales: low nibbles in bytes 0–7, high crumbs in bytes 8–11.
    let mut scales = [0i8; 16];
    for (j, s) in scales.iter_mut().enumerate() {
        let low = if j < 8 {
            packed[j] & 0x0f
        } else {
            packed[j - 8] >> 4
        };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        *s = ((low | (high << 4)) as i8).wrapping_sub(32);
    }
    let mut is = 0;
    let mut m = 1u8;
    for q in qs.chunks_exact(32) {
        for shift in [0, 2, 4, 6] {
            for (q, hm) in [(&q[..16], &hm[..16]), (&q[16..], &hm[16..])] {
                let dl = d * f32::from(scales[is]);
                is += 1;
                out.extend(q.iter().zip(hm).map(|(&x, &hb)| {
                    let v = ((x >> shift) & 3) as i8 - if hb & m != 0 { 0 } else { 4 };
                    dl * f32::from(v)
                }));
            }
            m <<= 1;
        }
    }
}

/// Scale and min `j` (0–7) of the 12 packed bytes of a Q4_K/Q5_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (h(b, 0), h(b, 2));
    let (packed, qs) = (&b[4..16], &b[16..144]);
    for (i, q) in qs.chunks_exact(32).enumerate() {
        let (s1, m1) = scale_min_k4(2 * i, packed);
        let (s2, m2) = scale_min_k4(2 * i + 1, packed);
        let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
        out.extend(q.iter().map(|&x| d1 * f32::from(x & 0x0f) - m1));
        out.extend(q.iter().map(|&x| d2 * f32::from(x >> 4) - m2));
    }
}

fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (h(b, 0), h(b, 2));
    let (packed, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (i, ql) in qs.chunks_exact(32).enumerate() {
        let (s1, m1) = scale_min_k4(2 * i, packed);
        let (s2, m2) = scale_min_k4(2 * i + 1, packed);
        let (d1, m1) = (d * f32::from(s1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(s2), dmin * f32::from(m2));
        let (u1, u2) = (1u8 << (2 * i), 2u8 << (2 * i));
        let high = |x: u8, u: u8| if x & u != 0 { 16.0 } else { 0.0 };
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&x, &hb)| d1 * (f32::from(x & 0x0f) + high(hb, u1)) - m1),
        );
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&x, &hb)| d2 * (f32::from(x >> 4) + high(hb, u2)) - m2),
        );
    }
}

fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = h(b, 208);
    for n in 0..2 {
        let (ql, qh, sc) = (&ql[64 * n..], &qh[32 * n..], &sc[8 * n..]);
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q = |low: u8, shift: u32| -> f32 {
                f32::from((low | (((qh[l] >> shift) & 3) << 4)) as i8 - 32)
            };
            let s = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = s(0) * q(ql[l] & 0x0f, 0);
            y[l + 32] = s(2) * q(ql[l + 32] & 0x0f, 2);
            y[l + 64] = s(4) * q(ql[l] >> 4, 4);
            y[l + 96] = s(6) * q(ql[l + 32] >> 4, 6);
        }
        out.extend_from_slice(&y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_the_ggml_block_sizes() {
        // sizeof(block_q*) in ggml-common.h, written out.
        for (ty, bytes) in [
            (10, 84),
            (11, 110),
            (12, 144),
            (13, 176),
            (14, 210),
            (6, 22),
        ] {
            assert_eq!(block_layout(ty).unwrap().1, bytes, "type {ty}");
        }
        assert!(block_layout(16).is_none(), "IQ2_XXS is not read");
    }

    #[test]
    fn a_q6_k_block_of_known_codes() {
        // d = 1, every scale 1, low nibbles 0x0f, high crumbs 3 → code 63 − 32 = 31.
        let mut b = vec![0u8; 210];
        b[..128].fill(0xff);
        b[128..192].fill(0xff);
        b[192..208].fill(1);
        b[208..210].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        let mut out = Vec::new();
        dequantize(14, &b, &mut out);
        assert_eq!(out, vec![31.0; 256]);
    }
}
