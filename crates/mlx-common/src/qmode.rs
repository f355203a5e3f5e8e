//! MLX quantization modes and the three quantized operations in every mode: mlx-rs wraps
//! them for `affine` only, so the others go through mlx-c directly (`mlx_quantize`,
//! `mlx_dequantize`, `mlx_quantized_matmul` take the mode by name).
//!
//! - `affine`: `w ≈ scale · q + bias` per group (2–8 bits, groups of 32/64/128); scales and
//!   biases in a float type.
//! - `mxfp4`: OCP microscaling FP4 — E2M1 values in groups of 32 sharing a power-of-two
//!   scale (E8M0, stored as uint8); no biases.

use mlx_rs::{Array, Dtype};
use std::ffi::CStr;

/// A quantization mode MLX implements and this engine reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantMode {
    #[default]
    Affine,
    Mxfp4,
}

/// Mode names, as mlx-lm's `config.json` `quantization.mode` gives them.
pub const QUANT_MODES: [&str; 2] = ["affine", "mxfp4"];

impl QuantMode {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "affine" => Some(Self::Affine),
            "mxfp4" => Some(Self::Mxfp4),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Affine => "affine",
            Self::Mxfp4 => "mxfp4",
        }
    }

    fn c_name(self) -> &'static CStr {
        match self {
            Self::Affine => c"affine",
            Self::Mxfp4 => c"mxfp4",
        }
    }

    /// The (group size, bits) the mode fixes (`None`: chosen per layer, affine).
    pub fn fixed(self) -> Option<(i32, i32)> {
        match self {
            Self::Affine => None,
            Self::Mxfp4 => Some((32, 4)),
        }
    }

    /// Whether the mode stores a bias per group.
    pub fn has_biases(self) -> bool {
        self == Self::Affine
    }
}

fn opt_int(v: i32) -> mlx_sys::mlx_optional_int {
    mlx_sys::mlx_optional_int {
        value: v,
        has_value: true,
    }
}

fn failed(op: &str, mode: QuantMode) -> mlx_rs::error::Exception {
    mlx_rs::error::Exception::custom(format!("MLX {op} ({}) failed", mode.name()))
}

/// A stream for a raw call, after an mlx-rs operation has installed mlx-rs's error handler
/// (mlx-c's default one ends the process).
fn stream() -> mlx_rs::error::Result<mlx_rs::Stream> {
    let _ = mlx_rs::ops::zeros::<f32>(&[1])?;
    Ok(mlx_rs::Stream::thread_local_or_default())
}

/// `w` (…, n) quantized along its last axis: (packed uint32, scales, biases if the mode has them).
pub fn quantize(
    w: &Array,
    group_size: i32,
    bits: i32,
    mode: QuantMode,
) -> mlx_rs::error::Result<(Array, Array, Option<Array>)> {
    if mode == QuantMode::Affine {
        let (q, s, b) = mlx_rs::ops::quantize(w, group_size, bits)?;
        return Ok((q, s, Some(b)));
    }
    let s = stream()?;
    // SAFETY: mlx-c fills `res` with new arrays we take ownership of; the inputs outlive
    // the call; the null global scale is a valid empty array handle.
    unsafe {
        let mut res = mlx_sys::mlx_vector_array_new();
        let global = mlx_sys::mlx_array_new();
        let rc = mlx_sys::mlx_quantize(
            &mut res,
            w.as_ptr(),
            opt_int(group_size),
            opt_int(bits),
            mode.c_name().as_ptr(),
            global,
            s.as_ptr(),
        );
        mlx_sys::mlx_array_free(global);
        let n = if rc == 0 {
            mlx_sys::mlx_vector_array_size(res)
        } else {
            0
        };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let mut a = mlx_sys::mlx_array_new();
            mlx_sys::mlx_vector_array_get(&mut a, res, i);
            out.push(Array::from_ptr(a));
        }
        mlx_sys::mlx_vector_array_free(res);
        let mut it = out.into_iter();
        match (rc, it.next(), it.next(), it.next()) {
            (0, Some(q), Some(scales), biases) => Ok((q, scales, biases)),
            _ => Err(failed("quantize", mode)),
        }
    }
}

/// One mlx-c call that writes one array: `f(&mut result, none, stream)`, `none` being
/// the null handle for an absent optional input.
fn call_one(
    op: &str,
    mode: QuantMode,
    f: impl FnOnce(*mut mlx_sys::mlx_array, mlx_sys::mlx_array, mlx_sys::mlx_stream) -> i32,
) -> mlx_rs::error::Result<Array> {
    let s = stream()?;
    // SAFETY: the result handle is new and owned by the returned Array; the null handle
    // is freed after the call, which only reads it.
    unsafe {
        let mut res = mlx_sys::mlx_array_new();
        let none = mlx_sys::mlx_array_new();
        let rc = f(&mut res, none, s.as_ptr());
        mlx_sys::mlx_array_free(none);
        let out = Array::from_ptr(res);
        if rc != 0 {
            return Err(failed(op, mode));
        }
        Ok(out)
    }
}

/// The float (`dtype`) values of packed `w`.
pub fn dequantize(
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    group_size: i32,
    bits: i32,
    mode: QuantMode,
    dtype: Dtype,
) -> mlx_rs::error::Result<Array> {
    if mode == QuantMode::Affine {
        let b = biases.ok_or_else(|| failed("dequantize without biases", mode))?;
        return mlx_rs::ops::dequantize(w, scales, b, group_size, bits)?.as_dtype(dtype);
    }
    // SAFETY: the inputs outlive the call.
    call_one("dequantize", mode, |res, none, s| unsafe {
        mlx_sys::mlx_dequantize(
            res,
            w.as_ptr(),
            scales.as_ptr(),
            biases.map_or(none, Array::as_ptr),
            opt_int(group_size),
            opt_int(bits),
            mode.c_name().as_ptr(),
            none,
            mlx_sys::mlx_optional_dtype {
                value: dtype as mlx_sys::mlx_dtype,
                has_value: true,
            },
            s,
        )
    })
}

/// `x · Wᵀ` (or `x · W` without `transpose`) for packed `w`.
#[allow(clippy::too_many_arguments)]
pub fn quantized_matmul(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    transpose: bool,
    group_size: i32,
    bits: i32,
    mode: QuantMode,
) -> mlx_rs::error::Result<Array> {
    if mode == QuantMode::Affine {
        let b = biases.ok_or_else(|| failed("quantized_matmul without biases", mode))?;
        return mlx_rs::ops::quantized_matmul(x, w, scales, b, transpose, group_size, bits);
    }
    // SAFETY: the inputs outlive the call.
    call_one("quantized_matmul", mode, |res, none, s| unsafe {
        mlx_sys::mlx_quantized_matmul(
            res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            biases.map_or(none, Array::as_ptr),
            transpose,
            opt_int(group_size),
            opt_int(bits),
            mode.c_name().as_ptr(),
            s,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mxfp4_round_trips_within_its_grid_and_multiplies_as_its_values() {
        let w = mlx_rs::random::normal::<f32>(&[64, 128], None, None, None).unwrap();
        let (q, scales, biases) = quantize(&w, 32, 4, QuantMode::Mxfp4).unwrap();
        assert!(biases.is_none());
        assert_eq!(q.shape(), &[64, 16]);
        assert_eq!(
            (scales.shape(), scales.dtype()),
            (&[64, 4][..], Dtype::Uint8)
        );
        let d = dequantize(&q, &scales, None, 32, 4, QuantMode::Mxfp4, Dtype::Float32).unwrap();
        // E2M1 has 1 mantissa bit: a value is off by at most half a step, ≤ 1/4 of its
        // group's largest value (scale · 2 = the top of the grid's 4·scale … 6·scale).
        let err = w
            .subtract(&d)
            .unwrap()
            .abs()
            .unwrap()
            .max(None)
            .unwrap()
            .item_cast::<f32>();
        let top = w.abs().unwrap().max(None).unwrap().item_cast::<f32>();
        assert!(err <= top / 4.0, "{err} vs {top}");
        let x = mlx_rs::random::normal::<f32>(&[2, 128], None, None, None).unwrap();
        let y = quantized_matmul(&x, &q, &scales, None, true, 32, 4, QuantMode::Mxfp4).unwrap();
        let want = x.matmul(d.t()).unwrap();
        let diff = y
            .subtract(&want)
            .unwrap()
            .abs()
            .unwrap()
            .max(None)
            .unwrap()
            .item_cast::<f32>();
        assert!(diff < 1e-3, "{diff}");
    }
}
