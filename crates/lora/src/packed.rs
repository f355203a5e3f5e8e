//! MLX-quantized weights (mlx-lm's checkpoints) read back as float32, without MLX: the
//! packed uint32 `weight` with its per-group `scales` (and `biases` for `affine`).
//!
//! The layout, as MLX's `quantize` writes it: each row of `in` values is a little-endian
//! bit stream of `bits`-wide codes (value `j` at bits `j·bits …`), in uint32 words.
//! `affine`: `w = scale · q + bias` per group, scales and biases in the model's float
//! type. `mxfp4`: codes are FP4 (E2M1: sign, 2 exponent bits, 1 mantissa bit), scales
//! one E8M0 byte per 32 (`2^(s − 127)`), no biases. Group size and bits follow from the
//! shapes, given the layer's (out, in).

use crate::to_f32;
use safetensors::{tensor::TensorView, Dtype};

/// FP4 E2M1 magnitudes by their three low bits.
const E2M1: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// The float32 (out, in) values of a packed layer.
pub fn dequantize(
    weight: &TensorView<'_>,
    scales: &TensorView<'_>,
    biases: Option<&TensorView<'_>>,
    out: usize,
    inp: usize,
) -> Result<Vec<f32>, String> {
    let (ws, ss) = (weight.shape(), scales.shape());
    if weight.dtype() != Dtype::U32 || ws.len() != 2 || ws[0] != out || ws[1] == 0 {
        return Err(format!(
            "packed weight {:?} {ws:?}: uint32 ({out}, in·bits/32) expected for {inp} → {out}",
            weight.dtype()
        ));
    }
    if (ws[1] * 32) % inp != 0 || !matches!((ws[1] * 32) / inp, 2..=6 | 8) {
        return Err(format!(
            "packed weight {ws:?} holds {} bits per value of {inp} inputs (MLX packs 2, 3, 4, 5, 6 or 8)",
            (ws[1] * 32) as f64 / inp as f64
        ));
    }
    let bits = ws[1] * 32 / inp;
    if ss.len() != 2 || ss[0] != out || ss[1] == 0 || !inp.is_multiple_of(ss[1]) {
        return Err(format!(
            "scales {ss:?} are not ({out}, in/group) for {inp} inputs"
        ));
    }
    let group = inp / ss[1];
    let mxfp4 = scales.dtype() == Dtype::U8;
    let scale: Vec<f32> = if mxfp4 {
        if biases.is_some() || (group, bits) != (32, 4) {
            return Err(format!(
                "uint8 scales are mxfp4's (4 bits in groups of 32, no biases); this is {bits} bits in groups of {group}{}",
                if biases.is_some() { " with biases" } else { "" }
            ));
        }
        scales
            .data()
            .iter()
            .map(|&s| f32::from_bits(u32::from(s) << 23))
            .collect()
    } else {
        to_f32(scales.dtype(), scales.data())
            .ok_or_else(|| format!("scales are {:?}, not float", scales.dtype()))?
    };
    let bias: Option<Vec<f32>> = match (mxfp4, biases) {
        (true, _) => None,
        (false, None) => return Err("affine scales without `biases`".into()),
        (false, Some(b)) => {
            if b.shape() != ss {
                return Err(format!("biases {:?} are not like scales {ss:?}", b.shape()));
            }
            Some(
                to_f32(b.dtype(), b.data())
                    .ok_or_else(|| format!("biases are {:?}, not float", b.dtype()))?,
            )
        }
    };
    let row_bytes = ws[1] * 4;
    let data = weight.data();
    let mask = (1u32 << bits) - 1;
    let mut v = vec![0f32; out * inp];
    for (r, row) in v.chunks_exact_mut(inp).enumerate() {
        let bytes = &data[r * row_bytes..(r + 1) * row_bytes];
        for (j, x) in row.iter_mut().enumerate() {
            let bit = j * bits;
            let (byte, shift) = (bit / 8, bit % 8);
            // Up to 8 bits starting anywhere in a byte lie within three bytes.
            let mut word = 0u32;
            for (k, b) in bytes[byte..(byte + 3).min(row_bytes)].iter().enumerate() {
                word |= u32::from(*b) << (8 * k);
            }
            let q = (word >> shift) & mask;
            let g = r * ss[1] + j / group;
            *x = match &bias {
                Some(b) => scale[g] * q as f32 + b[g],
                None => {
                    let m = E2M1[(q & 7) as usize];
                    scale[g] * if q & 8 != 0 { -m } else { m }
                }
            };
        }
    }
    Ok(v)
}
