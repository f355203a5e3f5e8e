//! Resizing as Pillow 13 resizes 8-bit images (`Image.resize` without `reducing_gap`,
//! libImaging/Resample.c): separable passes — horizontal then vertical, or vertical
//! first when the height shrinks by more than twice the width's pixels — each output pixel a
//! weighted sum over the filter's support scaled by the downscale factor (antialiased),
//! weights normalised then fixed to 22 fractional bits, and every pass rounded and
//! clamped back to 8 bits. The Hub's image processors resize through Pillow, so this is
//! what makes our pixels theirs: same weights, same rounding, same intermediate image.

/// Pillow's resampling filters (the `resample` numbers processors' configs use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl Filter {
    /// From `PIL.Image.Resampling`'s value (0 nearest, 1 Lanczos, 2 bilinear, 3 bicubic,
    /// 4 box, 5 Hamming).
    pub fn from_pil(n: i64) -> Option<Self> {
        Some(match n {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }

    fn support(self) -> f64 {
        match self {
            Self::Nearest | Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        }
        match self {
            Self::Nearest | Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    // Pillow writes the constants as C floats.
                    let px = x * std::f64::consts::PI;
                    px.sin() / px * (f64::from(0.54f32) + f64::from(0.46f32) * px.cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: the first input pixel, and fixed-point weights of the next ones.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    k: Vec<i32>,
}

fn coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero, as `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut total = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            total += *wx;
        }
        for x in 0..n {
            let v = if total != 0.0 { w[x] / total } else { w[x] };
            let f = v * f64::from(1u32 << PRECISION_BITS);
            k[xx * ksize + x] = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs { bounds, ksize, k }
}

/// A fixed-point sum back to a level: `>> PRECISION_BITS`, clamped (Pillow's lookup table).
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The rounding half every sum starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// `src` (RGB, `w`×`h`, row-major) resized to `ow`×`oh` with `filter`.
pub fn resize(src: &[u8], w: usize, h: usize, ow: usize, oh: usize, filter: Filter) -> Vec<u8> {
    if (w, h) == (ow, oh) {
        return src.to_vec();
    }
    if filter == Filter::Nearest {
        return nearest(src, w, h, ow, oh);
    }
    let need_h = ow != w;
    let need_v = oh != h;
    // Pillow 13: when the height shrinks by more than twice as many pixels as the width,
    // the vertical pass runs first (each pass rounds to 8 bits, so the order shows).
    let vertical_first = h > oh && (h - oh) as i64 > (w as i64 - ow as i64) * 2;
    let cv = coeffs(h, oh, filter);
    if vertical_first {
        let tmp = vertical(src, w, &cv, 0);
        return if need_h {
            horizontal(&tmp, w, oh, 0, &coeffs(w, ow, filter), ow)
        } else {
            tmp
        };
    }
    if !need_h {
        return vertical(src, w, &cv, 0);
    }
    // Only the rows the vertical pass reads go through the horizontal one.
    let (first, last) = match (cv.bounds.first(), cv.bounds.last()) {
        (Some(f), Some(l)) => (f.0, l.0 + l.1),
        _ => (0, h),
    };
    let tmp = horizontal(src, w, last - first, first, &coeffs(w, ow, filter), ow);
    if need_v {
        vertical(&tmp, ow, &cv, first)
    } else {
        tmp
    }
}

/// Rows `row0..row0 + rows` of `src` (`w` wide) resampled to `ow` wide. Sums are 32-bit
/// as Pillow's (`int`): at 22 fractional bits a level times the largest weight total of
/// any filter (Lanczos, ~1.6) stays under 2³¹.
fn horizontal(src: &[u8], w: usize, rows: usize, row0: usize, ch: &Coeffs, ow: usize) -> Vec<u8> {
    let mut out = vec![0u8; ow * rows * 3];
    for (y, orow) in out.chunks_exact_mut(ow * 3).enumerate() {
        let line = &src[(y + row0) * w * 3..(y + row0 + 1) * w * 3];
        for (xx, (&(xmin, n), o)) in ch.bounds.iter().zip(orow.chunks_exact_mut(3)).enumerate() {
            let k = &ch.k[xx * ch.ksize..xx * ch.ksize + n];
            let (mut s0, mut s1, mut s2) = (HALF, HALF, HALF);
            for (p, &kx) in line[xmin * 3..(xmin + n) * 3].chunks_exact(3).zip(k) {
                s0 = s0.wrapping_add(i32::from(p[0]).wrapping_mul(kx));
                s1 = s1.wrapping_add(i32::from(p[1]).wrapping_mul(kx));
                s2 = s2.wrapping_add(i32::from(p[2]).wrapping_mul(kx));
            }
            o.copy_from_slice(&[clip8(s0), clip8(s1), clip8(s2)]);
        }
    }
    out
}

/// `src` (`w` wide, its first row being source row `row0`) resampled vertically by `cv`:
/// each output row accumulated tap by tap over whole input rows (integer sums, so the
/// order does not change them).
fn vertical(src: &[u8], w: usize, cv: &Coeffs, row0: usize) -> Vec<u8> {
    let n3 = w * 3;
    let mut out = vec![0u8; n3 * cv.bounds.len()];
    let mut acc = vec![0i32; n3];
    for (yy, (&(ymin, n), orow)) in cv.bounds.iter().zip(out.chunks_exact_mut(n3)).enumerate() {
        let k = &cv.k[yy * cv.ksize..yy * cv.ksize + n];
        acc.fill(HALF);
        for (y, &ky) in k.iter().enumerate() {
            let row = &src[(ymin + y - row0) * n3..(ymin + y - row0 + 1) * n3];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(ky));
            }
        }
        for (o, &a) in orow.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Pillow's nearest neighbour (`ImagingScaleAffine`): source coordinates stepped from
/// the first pixel's centre by repeated addition of the scale (the rounding of that
/// running sum decides ties, so it is kept), truncated; a coordinate past the edge
/// leaves the pixel black.
fn nearest(src: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Vec<u8> {
    let steps = |n: usize, out: usize| -> Vec<Option<usize>> {
        let a = n as f64 / out as f64;
        let mut o = a * 0.5;
        (0..out)
            .map(|_| {
                let i = (o >= 0.0 && (o as usize) < n).then_some(o as usize);
                o += a;
                i
            })
            .collect()
    };
    let (xs, ys) = (steps(w, ow), steps(h, oh));
    let mut out = vec![0u8; ow * oh * 3];
    for (y, sy) in ys.iter().enumerate() {
        let Some(sy) = sy else { continue };
        for (x, sx) in xs.iter().enumerate() {
            if let Some(sx) = sx {
                out[(y * ow + x) * 3..(y * ow + x) * 3 + 3]
                    .copy_from_slice(&src[(sy * w + sx) * 3..(sy * w + sx) * 3 + 3]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for f in [
            Filter::Lanczos,
            Filter::Bicubic,
            Filter::Bilinear,
            Filter::Hamming,
        ] {
            for (i, o) in [(512, 64), (64, 128), (451, 128), (7, 3)] {
                let c = coeffs(i, o, f);
                for (xx, &(_, n)) in c.bounds.iter().enumerate() {
                    let s: i64 = c.k[xx * c.ksize..xx * c.ksize + n]
                        .iter()
                        .map(|&k| i64::from(k))
                        .sum();
                    // Each weight rounds by at most half a unit.
                    assert!(
                        (s - (1 << PRECISION_BITS)).abs() <= n as i64,
                        "{f:?} {i}->{o}: {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let src = vec![77u8; 30 * 20 * 3];
        for f in [Filter::Lanczos, Filter::Bicubic, Filter::Bilinear] {
            assert!(
                resize(&src, 30, 20, 64, 9, f).iter().all(|&v| v == 77),
                "{f:?}"
            );
        }
    }
}
