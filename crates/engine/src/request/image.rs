//! The image generation request (`diffusion` kind).

use super::{check_options, invalid, InvalidRequest};
use plugin_api::image::ImageRequest;
use std::ops::Deref;

/// Most images in one request.
pub const MAX_IMAGES: u32 = 8;
/// Longest side in pixels.
pub const MAX_SIDE: u32 = 2048;
/// Most denoising steps.
pub const MAX_STEPS: u32 = 150;
/// Largest guidance scale.
pub const MAX_GUIDANCE: f32 = 50.0;
/// Longest prompt (or negative prompt) in bytes: far past what a 77-token text encoder
/// reads, short enough that tokenizing it costs nothing.
pub const MAX_PROMPT_BYTES: usize = 16 << 10;
/// Largest encoded starting image or mask.
pub const MAX_INIT_BYTES: usize = 32 << 20;
/// Sampler names a request may use (plugin-api's list); a plugin may serve fewer and
/// says so.
pub const SAMPLERS: [&str; 5] = ["euler", "euler_a", "ddim", "dpmpp_2m", "lcm"];

/// An image request whose fields hold: a non-empty prompt of at most
/// [`MAX_PROMPT_BYTES`]; each side 0 (the model's default) or a multiple of 8 from 8 to
/// [`MAX_SIDE`]; steps 0 (default) to [`MAX_STEPS`]; guidance 0 (default) or finite in
/// [1, [`MAX_GUIDANCE`]] (1 = no guidance); count 1 to [`MAX_IMAGES`] (0 = 1); a sampler
/// of [`SAMPLERS`] or empty; strength in [0, 1]; a mask only with a starting image;
/// `options` a JSON object or empty.
#[derive(Debug, Clone)]
pub struct Image(ImageRequest);

impl Image {
    /// Check `req`.
    pub fn new(mut req: ImageRequest) -> Result<Self, InvalidRequest> {
        if req.prompt.trim().is_empty() {
            return Err(invalid("prompt", "the prompt is empty"));
        }
        for (field, text) in [
            ("prompt", &req.prompt),
            ("negative_prompt", &req.negative_prompt),
        ] {
            if text.len() > MAX_PROMPT_BYTES {
                return Err(invalid(
                    field,
                    format!("{} bytes; at most {MAX_PROMPT_BYTES}", text.len()),
                ));
            }
        }
        for (field, side) in [("width", req.width), ("height", req.height)] {
            if side != 0 && (side % 8 != 0 || side > MAX_SIDE) {
                return Err(invalid(
                    field,
                    format!("{side} pixels; a side is a multiple of 8 from 8 to {MAX_SIDE}"),
                ));
            }
        }
        if req.steps > MAX_STEPS {
            return Err(invalid(
                "steps",
                format!(
                    "{}; at most {MAX_STEPS} (0 = the model's default)",
                    req.steps
                ),
            ));
        }
        let g = req.guidance;
        if !g.is_finite() || (g != 0.0 && !(1.0..=MAX_GUIDANCE).contains(&g)) {
            return Err(invalid(
                "guidance",
                format!("{g}; 0 (the model's default) or from 1 (none) to {MAX_GUIDANCE}"),
            ));
        }
        if req.count > MAX_IMAGES {
            return Err(invalid(
                "count",
                format!(
                    "{} images; one request makes at most {MAX_IMAGES}",
                    req.count
                ),
            ));
        }
        req.count = req.count.max(1);
        if !req.sampler.is_empty() && !SAMPLERS.contains(&req.sampler.as_str()) {
            return Err(invalid(
                "sampler",
                format!(
                    "`{}` is not a sampler (one of {})",
                    req.sampler,
                    SAMPLERS.join(", ")
                ),
            ));
        }
        if !req.strength.is_finite() || !(0.0..=1.0).contains(&req.strength) {
            return Err(invalid(
                "strength",
                format!("{}; from 0 to 1", req.strength),
            ));
        }
        for (field, bytes) in [("init_image", &req.init_image), ("mask", &req.mask)] {
            if bytes.len() > MAX_INIT_BYTES {
                return Err(invalid(
                    field,
                    format!("{} bytes; at most {MAX_INIT_BYTES}", bytes.len()),
                ));
            }
        }
        if !req.mask.is_empty() && req.init_image.is_empty() {
            return Err(invalid(
                "mask",
                "a mask needs a starting image (`init_image`)",
            ));
        }
        check_options(req.options.as_str())?;
        Ok(Self(req))
    }
}

impl Deref for Image {
    type Target = ImageRequest;
    fn deref(&self) -> &ImageRequest {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> ImageRequest {
        ImageRequest {
            prompt: "a fox".into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let field = |r: ImageRequest| Image::new(r).unwrap_err().field;
        assert_eq!(field(ImageRequest::default()), "prompt");
        assert_eq!(
            field(ImageRequest {
                width: 513,
                ..req()
            }),
            "width"
        );
        assert_eq!(
            field(ImageRequest {
                height: 4096,
                ..req()
            }),
            "height"
        );
        assert_eq!(
            field(ImageRequest {
                steps: 1000,
                ..req()
            }),
            "steps"
        );
        assert_eq!(
            field(ImageRequest {
                guidance: f32::NAN,
                ..req()
            }),
            "guidance"
        );
        assert_eq!(
            field(ImageRequest {
                guidance: 0.5,
                ..req()
            }),
            "guidance"
        );
        assert_eq!(field(ImageRequest { count: 9, ..req() }), "count");
        assert_eq!(
            field(ImageRequest {
                sampler: "plms".into(),
                ..req()
            }),
            "sampler"
        );
        assert_eq!(
            field(ImageRequest {
                strength: 1.5,
                ..req()
            }),
            "strength"
        );
        assert_eq!(
            field(ImageRequest {
                mask: vec![1u8].into(),
                ..req()
            }),
            "mask"
        );
        assert_eq!(
            field(ImageRequest {
                options: "[1]".into(),
                ..req()
            }),
            "options"
        );
        let long = "a".repeat(MAX_PROMPT_BYTES + 1);
        assert_eq!(
            field(ImageRequest {
                negative_prompt: long.into(),
                ..req()
            }),
            "negative_prompt"
        );
    }

    #[test]
    fn defaults_pass_and_count_becomes_one() {
        let r = Image::new(req()).unwrap();
        assert_eq!(r.count, 1);
        let r = Image::new(ImageRequest {
            width: 768,
            height: 512,
            steps: 20,
            guidance: 7.5,
            count: 4,
            sampler: "euler_a".into(),
            ..req()
        })
        .unwrap();
        assert_eq!((r.width, r.height, r.count), (768, 512, 4));
    }
}
