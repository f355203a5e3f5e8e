//! Images in: decoded from their bytes (PNG, JPEG, WebP, GIF's first frame) with the
//! size checked from the header before any pixel is decoded, turned upright by their
//! EXIF orientation, and converted to 8-bit RGB as the Hub's processors convert them
//! (transparency composited onto white, Pillow's integer blend).

pub mod resample;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// Most pixels an input image may have (width × height from its header): larger ones
/// are refused before decoding (a small file can claim a huge canvas).
pub const MAX_PIXELS: u64 = 40_000_000;

/// An 8-bit RGB image, row-major.
#[derive(Clone)]
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Rgb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rgb({}×{})", self.width, self.height)
    }
}

impl Rgb {
    /// Resized with a Pillow filter (see [`resample`]); to its own size, a copy (as
    /// Pillow's `Image.resize`).
    pub fn resize(&self, width: usize, height: usize, filter: resample::Filter) -> Self {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        Self {
            width,
            height,
            data: resample::resize(&self.data, self.width, self.height, width, height, filter),
        }
    }

    /// The `w`×`h` region at (`x`, `y`), which must lie inside.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Self {
        let mut data = Vec::with_capacity(w * h * 3);
        for row in y..y + h {
            let start = (row * self.width + x) * 3;
            data.extend_from_slice(&self.data[start..start + w * 3]);
        }
        Self {
            width: w,
            height: h,
            data,
        }
    }
}

impl Rgb {
    /// Padded to a square of its longer side with `color`, the image centred (the
    /// offset rounded down), as LLaVA's `pad_to_square`.
    pub fn pad_square(&self, color: [u8; 3]) -> Self {
        let side = self.width.max(self.height);
        self.pad_to(side, side, color)
    }

    /// Padded to `width`×`height` (each at least its own) with `color`, the image centred,
    /// the odd pixel of padding after it (LLaVA-NeXT's `_pad_for_patching`).
    pub fn pad_to(&self, width: usize, height: usize, color: [u8; 3]) -> Self {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        let mut data = color.repeat(width * height);
        let (x0, y0) = ((width - self.width) / 2, (height - self.height) / 2);
        for row in 0..self.height {
            let dst = ((y0 + row) * width + x0) * 3;
            let src = row * self.width * 3;
            data[dst..dst + self.width * 3].copy_from_slice(&self.data[src..src + self.width * 3]);
        }
        Self {
            width,
            height,
            data,
        }
    }
}

/// What is wrong with an input image (the caller names which one).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not an image this plugin reads (PNG, JPEG, WebP, GIF){0}")]
    Format(String),
    #[error("the image is {width}×{height}: over the {MAX_PIXELS}-pixel limit")]
    TooLarge { width: u32, height: u32 },
    #[error("the image is empty (0 pixels)")]
    Empty,
    #[error("the image does not decode: {0}")]
    Decode(String),
}

/// Decode `bytes` into upright RGB, refusing what is not an image, what claims more
/// than [`MAX_PIXELS`], and what does not decode (a truncated file).
pub fn decode(bytes: &[u8]) -> Result<Rgb, ImageError> {
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ImageError::Decode(e.to_string()))
    };
    let format = reader()?.format();
    match format {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif) => {}
        Some(other) => return Err(ImageError::Format(format!(", not {other:?}"))),
        None => return Err(ImageError::Format(String::new())),
    }
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(ImageError::Empty);
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageError::TooLarge { width, height });
    }
    let mut r = reader()?;
    let mut limits = Limits::default();
    // RGBA at 16 bits per channel is the most a decoder holds per pixel.
    limits.max_alloc = Some(MAX_PIXELS * 8 + (1 << 20));
    r.limits(limits);
    let mut decoder = r
        .into_decoder()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    let orientation = decoder
        .orientation()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| ImageError::Decode(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(to_rgb(img))
}

/// 8-bit RGB; with an alpha channel, composited onto opaque white as Pillow's
/// `alpha_composite` does (7 fractional bits, division by 255 by shifts).
fn to_rgb(img: DynamicImage) -> Rgb {
    let (width, height) = (img.width() as usize, img.height() as usize);
    if !img.color().has_alpha() {
        return Rgb {
            width,
            height,
            data: img.into_rgb8().into_raw(),
        };
    }
    let rgba = img.into_rgba8().into_raw();
    let mut data = Vec::with_capacity(width * height * 3);
    for px in rgba.chunks_exact(4) {
        let a = u32::from(px[3]);
        let (coef1, coef2) = (a << 7, (255 - a) << 7);
        for &c in &px[..3] {
            let tmp = u32::from(c) * coef1 + 255 * coef2 + (0x80 << 7);
            data.push(((((tmp >> 8) + tmp) >> 8) >> 7) as u8);
        }
    }
    Rgb {
        width,
        height,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_and_refuses() {
        let ok = decode(&png(5, 3)).unwrap();
        assert_eq!((ok.width, ok.height, ok.data[3]), (5, 3, 1));
        let bytes = png(40, 30);
        let e = decode(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(matches!(e, ImageError::Decode(_)), "{e}");
        let e = decode(b"GIF89a\x02\x00\x02\x00").unwrap_err();
        assert!(matches!(e, ImageError::Decode(_)), "{e}");
        let e = decode(b"hello, world").unwrap_err();
        assert!(matches!(e, ImageError::Format(_)), "{e}");
    }

    #[test]
    fn a_huge_canvas_is_refused_from_its_header() {
        // A PNG header claiming 100000×100000 pixels, nothing behind it.
        let mut bytes = png(1, 1);
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        // The IHDR chunk's CRC over its type and data, as an encoder would write it.
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode(&bytes).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { .. }), "{e}");
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn transparency_goes_onto_white() {
        let img = image::RgbaImage::from_fn(2, 1, |x, _| {
            image::Rgba([0, 0, 0, if x == 0 { 0 } else { 255 }])
        });
        let rgb = to_rgb(DynamicImage::ImageRgba8(img));
        assert_eq!(rgb.data, [255, 255, 255, 0, 0, 0]);
    }
}
