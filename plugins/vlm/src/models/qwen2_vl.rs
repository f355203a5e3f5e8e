//! Qwen2-VL (`model_type = "qwen2_vl"`): Qwen2-VL 2B/7B/72B and the checkpoints of
//! `Qwen2VLForConditionalGeneration`. Each image is resized to multiples of 28 pixels
//! within `min_pixels`..`max_pixels` keeping its aspect (the processor's smart resize),
//! cut into 14-pixel patches that the ViT reads at their own 2-D positions, and every
//! 2×2 group of patches becomes one `<|image_pad|>` token's features. The text model is
//! Qwen2 with multimodal RoPE: an image's tokens take 3-D positions (the same temporal
//! position, their row and column after the text before them), text continues after
//! the larger side, and every later position is shifted by the prompt's delta (the
//! `lm` crate's explicit positions for the prefill, the per-row shift for decoding).
//!
//! The processor (`preprocessor_config.json`, Qwen2-VL's image processor): the sizes
//! (`min_pixels` / `max_pixels`, or `size.shortest_edge` / `size.longest_edge`),
//! `patch_size`, `merge_size`, `temporal_patch_size` as the tower's, the `resample`
//! filter (bicubic), rescale and CLIP's normalisation.
//! Skeleton: `Processor` → `Qwen2Vl` (the [`Media`] side) → `rope_index`.

use crate::image::{resample::Filter, Rgb};
use crate::processor::{Normalize, Settings};
use crate::prompt;
use crate::vision::qwen_vit::{self, merge_order, QwenVit, Variant};
use lm::{
    loader::Loaded,
    media::{Media, MediaPositions, MediaPrompt},
    LlmError,
};
use mlx_common::Weights;
use mlx_rs::{ops, Array, Dtype};
use plugin_api::text::TextInput;
use serde_json::{json, Value as Json};
use std::path::Path;

/// CLIP's normalisation (`OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`).
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// The largest `max_pixels` taken: 2^26 (an 8192 × 8192 frame).
const MAX_PIXELS: u64 = 1 << 26;

/// The preprocessing settings.
pub struct Processor {
    min_pixels: u64,
    max_pixels: u64,
    patch: usize,
    merge: usize,
    filter: Filter,
    norm: Normalize,
}

impl Processor {
    /// From the model directory; patch, merge and temporal sizes must be the tower's.
    pub fn from_dir(dir: &Path, vision: &qwen_vit::Config) -> Result<Self, LlmError> {
        let s = Settings::from_dir(dir)?;
        s.require(&[
            ("do_resize", true),
            ("do_rescale", true),
            ("do_convert_rgb", true),
        ])?;
        let area = |flat: &str, sub: &str, default: u64| -> Result<u64, LlmError> {
            let v = s
                .cfg
                .get(flat)
                .or_else(|| s.cfg.get("size").and_then(|z| z.get(sub)));
            match v {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .filter(|n| (1..=MAX_PIXELS).contains(n))
                    .ok_or_else(|| {
                        s.bad(format!(
                            "`{flat}` (or `size.{sub}`) = {v} is not a pixel count within 1..={MAX_PIXELS}"
                        ))
                    }),
            }
        };
        let min_pixels = area("min_pixels", "shortest_edge", 56 * 56)?;
        let max_pixels = area("max_pixels", "longest_edge", 28 * 28 * 1280)?;
        if min_pixels > max_pixels {
            return Err(s.bad(format!(
                "`min_pixels` {min_pixels} is above `max_pixels` {max_pixels}"
            )));
        }
        let int = |k: &str, want: i32| -> Result<usize, LlmError> {
            let n = s
                .cfg
                .get(k)
                .and_then(Json::as_i64)
                .unwrap_or(i64::from(want));
            if n != i64::from(want) {
                return Err(s.bad(format!(
                    "`{k}` = {n}, the vision tower's is {want} (config.json `vision_config`)"
                )));
            }
            Ok(n as usize)
        };
        let patch = int("patch_size", vision.patch)?;
        let merge = int("merge_size", vision.merge)?;
        int("temporal_patch_size", vision.temporal)?;
        Ok(Self {
            min_pixels,
            max_pixels,
            patch,
            merge,
            filter: s.filter(3)?,
            norm: s.normalize(CLIP_MEAN, CLIP_STD)?,
        })
    }

    /// (height, width) an image of `h` × `w` is resized to (transformers'
    /// `smart_resize`, Python's rounding: half to even).
    pub fn size(&self, h: usize, w: usize) -> Result<(usize, usize), String> {
        let f = (self.patch * self.merge) as f64;
        let (hf, wf) = (h as f64, w as f64);
        if hf.max(wf) / hf.min(wf) > 200.0 {
            return Err(format!(
                "the image is {w}×{h}: its aspect ratio is over 200, more than this model's processor takes"
            ));
        }
        let mut hb = (hf / f).round_ties_even() * f;
        let mut wb = (wf / f).round_ties_even() * f;
        if hb * wb > self.max_pixels as f64 {
            let beta = (hf * wf / self.max_pixels as f64).sqrt();
            hb = f.max((hf / beta / f).floor() * f);
            wb = f.max((wf / beta / f).floor() * f);
        } else if hb * wb < self.min_pixels as f64 {
            let beta = (self.min_pixels as f64 / (hf * wf)).sqrt();
            hb = (hf * beta / f).ceil() * f;
            wb = (wf * beta / f).ceil() * f;
        }
        Ok((hb as usize, wb as usize))
    }

    /// `img` resized.
    pub fn frame(&self, img: &Rgb) -> Result<Rgb, String> {
        let (h, w) = self.size(img.height, img.width)?;
        Ok(img.resize(w, h, self.filter))
    }

    /// Normalised patches (gh · gw, 3 · patch²) of a frame in the tower's order, with
    /// the patch grid (gh, gw).
    pub fn patches(&self, f: &Rgb) -> (Vec<f32>, usize, usize) {
        let px = self.norm.pixels(f);
        let p = self.patch;
        let (gh, gw) = (f.height / p, f.width / p);
        let plane = f.width * f.height;
        let mut out = Vec::with_capacity(px.len());
        for (r, c) in merge_order(gh as i32, gw as i32, self.merge as i32) {
            let (r, c) = (r as usize, c as usize);
            for ch in 0..3 {
                for y in 0..p {
                    let at = ch * plane + (r * p + y) * f.width + c * p;
                    out.extend_from_slice(&px[at..at + p]);
                }
            }
        }
        (out, gh, gw)
    }

    /// Image tokens of a gh × gw patch grid.
    pub fn tokens(&self, gh: usize, gw: usize) -> usize {
        gh * gw / (self.merge * self.merge)
    }
}

/// The most patches one image takes: the processor's `max_pixels` over the patch area
/// (transformers' defaults where the files do not say).
pub fn patches_per_image(cfg: &Json, dir: &Path) -> u64 {
    let patch = cfg
        .get("vision_config")
        .and_then(|v| v.get("patch_size"))
        .and_then(Json::as_u64)
        .unwrap_or(14)
        .max(1);
    let max = Settings::from_dir(dir)
        .ok()
        .and_then(|s| {
            s.cfg
                .get("max_pixels")
                .or_else(|| s.cfg.get("size").and_then(|z| z.get("longest_edge")))
                .and_then(Json::as_u64)
        })
        .unwrap_or(28 * 28 * 1280)
        .min(MAX_PIXELS);
    max / (patch * patch)
}

/// The media side of a Qwen2-VL model.
pub struct Qwen2Vl {
    vision: QwenVit,
    processor: Processor,
    image_token: u32,
    marker: String,
    dtype: Dtype,
}

/// Builds the language model and the media side from `dir`'s config and weights.
pub fn load(
    cfg: &Json,
    dir: &Path,
    weights: Weights,
    dtype: Dtype,
) -> Result<super::Built, LlmError> {
    load_with(cfg, dir, weights, dtype, Variant::Qwen2)
}

/// [`load`] for either tower.
pub(crate) fn load_with(
    cfg: &Json,
    dir: &Path,
    weights: Weights,
    dtype: Dtype,
    variant: Variant,
) -> Result<super::Built, LlmError> {
    let file = dir.join("config.json");
    let bad = |msg: String| LlmError::Config {
        file: file.clone(),
        msg,
    };
    let mut w = weights;
    // The Hub's layout is `model.*`, `visual.*`, `lm_head`; transformers 5's modules and
    // mlx-vlm's conversions nest them otherwise.
    w.rename_prefix("model.language_model.", "model.");
    w.rename_prefix("model.visual.", "visual.");
    w.rename_prefix("language_model.model.", "model.");
    w.rename_prefix("language_model.lm_head.", "lm_head.");
    w.rename_prefix("vision_tower.", "visual.");
    let vcfg = qwen_vit::Config::from_json(
        variant,
        cfg.get("vision_config").unwrap_or(&json!({})),
        &file,
    )?;
    let text = text_config(cfg, &file)?;
    let text_hidden = text.get("hidden_size").and_then(Json::as_i64).unwrap_or(0);
    if i64::from(vcfg.out_hidden) != text_hidden {
        return Err(bad(format!(
            "the vision merger gives {} features per token, the text model is {text_hidden} wide",
            vcfg.out_hidden
        )));
    }
    let image_token = cfg
        .get("image_token_id")
        .and_then(Json::as_u64)
        .unwrap_or(151_655) as u32;
    let processor = Processor::from_dir(dir, &vcfg)?;
    let marker = Settings::from_dir(dir)?
        .processor_str("image_token")
        .unwrap_or("<|image_pad|>")
        .to_owned();
    let vision = QwenVit::load(vcfg, &mut w, "visual", dtype)?;
    let lm = lm::loader::build_model(&text, &file, w)?;
    let media = Qwen2Vl {
        vision,
        processor,
        image_token,
        marker,
        dtype,
    };
    mlx_rs::transforms::eval(media.parameters())?;
    Ok((lm, Box::new(media)))
}

/// The text model's config as the `lm` crate's Qwen2 reads it: `text_config`
/// (transformers 5) or the top level (the Hub's transformers 4 configs), with the
/// multimodal RoPE sections transformers defaults to.
fn text_config(cfg: &Json, file: &Path) -> Result<Json, LlmError> {
    let mut text = match cfg.get("text_config") {
        Some(t) => t.clone(),
        None => {
            let mut t = cfg.clone();
            if let Json::Object(o) = &mut t {
                o.remove("vision_config");
            }
            t
        }
    };
    let Json::Object(t) = &mut text else {
        return Err(LlmError::Config {
            file: file.into(),
            msg: "`text_config` is not an object".into(),
        });
    };
    t.insert("model_type".into(), json!("qwen2"));
    if let Some(tie) = cfg.get("tie_word_embeddings") {
        t.entry("tie_word_embeddings").or_insert(tie.clone());
    }
    // Where the RoPE settings live: `rope_parameters` with its theta (transformers 5),
    // else `rope_scaling` beside `rope_theta`.
    let key = if t
        .get("rope_parameters")
        .is_some_and(|p| p.get("rope_theta").is_some())
    {
        "rope_parameters"
    } else {
        "rope_scaling"
    };
    let rope = t.entry(key).or_insert_with(|| json!({"type": "mrope"}));
    if rope.is_null() {
        *rope = json!({"type": "mrope"});
    }
    if let Json::Object(r) = rope {
        r.entry("mrope_section").or_insert(json!([16, 24, 24]));
    }
    Ok(text)
}

impl Qwen2Vl {
    /// Text-model tokens (image tokens, hidden) of the frames, in order.
    fn features(&self, frames: &[(Vec<f32>, usize, usize)]) -> Result<Array, LlmError> {
        let p = self.vision.config.patch;
        let mut out = Vec::with_capacity(frames.len());
        for (px, gh, gw) in frames {
            let (gh, gw) = (*gh as i32, *gw as i32);
            let x = Array::from_slice(px, &[gh * gw, 3 * p * p]).as_dtype(self.dtype)?;
            out.push(self.vision.forward(&x, gh, gw)?);
        }
        Ok(ops::concatenate(&out.iter().collect::<Vec<_>>(), 0)?)
    }
}

/// The multimodal RoPE positions of `ids` (transformers' `get_rope_index`): text counts
/// up by one; the i-th image's tokens (`grids[i]`: merged rows × columns, in order)
/// take the position after the text before it plus (0, row, column); the text after
/// an image starts past the larger of its sides.
pub fn rope_index(ids: &[u32], token: u32, grids: &[(usize, usize)]) -> MediaPositions {
    let l = ids.len();
    let mut pos = vec![0i32; 3 * l];
    let (mut at, mut next, mut grid) = (0, 0i32, grids.iter());
    while at < l {
        match (ids[at] == token).then(|| grid.next()).flatten() {
            Some(&(h, w)) => {
                let n = (h * w).min(l - at);
                for j in 0..n {
                    pos[at + j] = next;
                    pos[l + at + j] = next + (j / w) as i32;
                    pos[2 * l + at + j] = next + (j % w) as i32;
                }
                at += n;
                next += h.max(w) as i32;
            }
            None => {
                pos[at] = next;
                pos[l + at] = next;
                pos[2 * l + at] = next;
                at += 1;
                next += 1;
            }
        }
    }
    MediaPositions {
        ids: pos,
        sections: 3,
        delta: next - l as i32,
    }
}

impl Media for Qwen2Vl {
    fn prompt(
        &self,
        lm: &Loaded,
        system_prompt: Option<&str>,
        input: &TextInput,
        index: usize,
    ) -> Result<MediaPrompt, LlmError> {
        let (mut frames, mut grids, mut expansions) = (Vec::new(), Vec::new(), Vec::new());
        let mut want = 0;
        let m = self.processor.merge;
        for (place, img) in prompt::images(input)? {
            let f = self
                .processor
                .frame(&img)
                .map_err(|e| LlmError::Request(format!("{place}: {e}")))?;
            let (px, gh, gw) = self.processor.patches(&f);
            let n = self.processor.tokens(gh, gw);
            expansions.push(self.marker.repeat(n));
            grids.push((gh / m, gw / m));
            frames.push((px, gh, gw));
            want += n;
        }
        let ids = prompt::expand(lm, system_prompt, input, index, &self.marker, &expansions)?;
        prompt::count_image_tokens(lm, &ids, self.image_token, &self.marker, want)?;
        prompt::check_context(lm, &ids, index)?;
        let feats = self.features(&frames)?;
        let positions = rope_index(&ids, self.image_token, &grids);
        let mut p = prompt::splice(lm, ids, self.image_token, &feats)?;
        p.positions = Some(positions);
        Ok(p)
    }

    fn parameters(&self) -> Vec<&Array> {
        self.vision.parameters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processor(min: u64, max: u64) -> Processor {
        Processor {
            min_pixels: min,
            max_pixels: max,
            patch: 14,
            merge: 2,
            filter: Filter::Bicubic,
            norm: Normalize {
                mean: CLIP_MEAN,
                std: CLIP_STD,
                rescale: 1.0 / 255.0,
            },
        }
    }

    #[test]
    fn smart_resize_follows_transformers() {
        let p = processor(56 * 56, 28 * 28 * 1280);
        // round(512 / 28) = 18 → 504.
        assert_eq!(p.size(512, 512).unwrap(), (504, 504));
        // 42 / 28 = 1.5 rounds to 2 (half to even), 70 / 28 = 2.5 to 2.
        assert_eq!(p.size(42, 70).unwrap(), (56, 56));
        // Over max_pixels: scaled down by sqrt(h·w / max), floored to 28.
        assert_eq!(p.size(2000, 3000).unwrap(), (812, 1204));
        // Under min_pixels: scaled up, ceiled.
        assert_eq!(p.size(20, 30).unwrap(), (56, 84));
        assert!(p.size(10, 2100).is_err());
    }

    #[test]
    fn rope_index_places_image_tokens_on_their_grid() {
        // text(2) image(2×3 grid) text(2)
        let ids = [7, 8, 5, 5, 5, 5, 5, 5, 9, 10];
        let p = rope_index(&ids, 5, &[(2, 3)]);
        let l = ids.len();
        assert_eq!(&p.ids[..l], &[0, 1, 2, 2, 2, 2, 2, 2, 5, 6]);
        assert_eq!(&p.ids[l..2 * l], &[0, 1, 2, 2, 2, 3, 3, 3, 5, 6]);
        assert_eq!(&p.ids[2 * l..], &[0, 1, 2, 3, 4, 2, 3, 4, 5, 6]);
        // Largest position 6, 10 tokens: the next token turns as position 10 − 3.
        assert_eq!(p.delta, -3);
    }
}
