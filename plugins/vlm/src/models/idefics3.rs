//! Idefics3 (`model_type = "idefics3"`): SmolVLM 256M / 500M / 2.2B and Idefics3-8B.
//! A SigLIP tower reads each frame, a pixel shuffle folds `scale_factor`² neighbouring
//! patches into one vector, a linear connector maps it into the text model's space, and
//! those vectors take the places of the prompt's `<image>` tokens in a Llama text model.
//!
//! The processor (`preprocessor_config.json` / `processor_config.json`) resizes the
//! image's longest edge to `size.longest_edge` (even sides), rounds both sides up to
//! whole tiles of `max_image_size.longest_edge`, and — with `do_image_splitting` — cuts
//! it into those tiles and appends the whole image squeezed into one tile; each frame
//! becomes `image_seq_len` image tokens, tiles tagged `<row_r_col_c>`, the whole image
//! `<global-img>`, all between `<fake_token_around_image>`.
//! Skeleton: `Config` → `Processor` → `Connector` → `Idefics3` (the [`Media`] side).

use crate::image::{resample::Filter, Rgb};
use crate::processor::{Normalize, Settings};
use crate::prompt;
use crate::vision::siglip::{self, Siglip};
use lm::{
    loader::Loaded,
    media::{Media, MediaPrompt},
    LlmError,
};
use mlx_common::{Linear, Weights};
use mlx_rs::{Array, Dtype};
use plugin_api::text::TextInput;
use serde_json::Value as Json;
use std::path::Path;

/// Most frames one image may become (SmolVLM's 2048 / 512 gives 4×4 + 1).
const MAX_FRAMES_PER_IMAGE: usize = 64;

/// The preprocessing settings (`preprocessor_config.json`, or `processor_config.json`'s
/// `image_processor`), `image_seq_len` from `processor_config.json`.
pub struct Processor {
    longest_edge: usize,
    tile: usize,
    split: bool,
    filter: Filter,
    norm: Normalize,
    image_seq_len: usize,
}

impl Processor {
    /// From the model directory; `seq_default` is what the model's shapes give.
    pub fn from_dir(dir: &Path, seq_default: usize) -> Result<Self, LlmError> {
        let s = Settings::from_dir(dir)?;
        s.require(&[
            ("do_resize", true),
            ("do_rescale", true),
            ("do_convert_rgb", true),
        ])?;
        Ok(Self {
            longest_edge: s.pixels("size", Some("longest_edge"), 4 * 364)?,
            tile: s.pixels("max_image_size", Some("longest_edge"), 364)?,
            split: s.flag("do_image_splitting", true),
            filter: s.filter(1)?,
            norm: s.normalize([0.5; 3], [0.5; 3])?,
            image_seq_len: s
                .processor_int("image_seq_len")
                .map_or(seq_default, |n| n as usize),
        })
    }

    /// The frames of `img` (tiles row by row, then the whole image; or the whole image
    /// alone) and its (rows, cols) of tiles (0, 0 when not split).
    pub fn frames(&self, img: &Rgb) -> (Vec<Rgb>, usize, usize) {
        let (h, w) = longest_edge_size(img.height, img.width, self.longest_edge);
        let img = img.resize(w, h, self.filter);
        let m = self.tile;
        if !self.split {
            return (vec![img.resize(m, m, self.filter)], 0, 0);
        }
        let (h, w) = tiles_size(img.height, img.width, m);
        let img = img.resize(w, h, self.filter);
        if h <= m && w <= m {
            return (vec![img], 0, 0);
        }
        let (rows, cols) = ((h - m) / m + 1, (w - m) / m + 1);
        let mut frames = Vec::with_capacity(rows * cols + 1);
        for r in 0..rows {
            for c in 0..cols {
                frames.push(img.crop(c * m, r * m, m, m));
            }
        }
        frames.push(img.resize(m, m, self.filter));
        (frames, rows, cols)
    }

    /// Normalised pixels (3, H, W) of a frame.
    pub fn pixels(&self, f: &Rgb) -> Vec<f32> {
        self.norm.pixels(f)
    }

    /// The text an image's `<image>` marker becomes.
    fn expansion(&self, rows: usize, cols: usize) -> String {
        let image = "<image>".repeat(self.image_seq_len);
        let global =
            format!("<fake_token_around_image><global-img>{image}<fake_token_around_image>");
        if rows == 0 && cols == 0 {
            return global;
        }
        let mut s = String::new();
        for r in 0..rows {
            for c in 0..cols {
                s.push_str(&format!(
                    "<fake_token_around_image><row_{}_col_{}>{image}",
                    r + 1,
                    c + 1
                ));
            }
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&global);
        s
    }
}

/// Height and width after the longest edge becomes `edge` (the other side even), as
/// the processor's `_resize_output_size_rescale_to_max_len` computes them, then capped
/// at 4096.
fn longest_edge_size(h: usize, w: usize, edge: usize) -> (usize, usize) {
    let aspect = w as f64 / h as f64;
    let (mut h2, mut w2);
    if w >= h {
        w2 = edge;
        h2 = (w2 as f64 / aspect) as usize;
        if h2 % 2 != 0 {
            h2 += 1;
        }
    } else {
        h2 = edge;
        w2 = (h2 as f64 * aspect) as usize;
        if w2 % 2 != 0 {
            w2 += 1;
        }
    }
    let (h2, w2) = (h2.max(1), w2.max(1));
    const CAP: usize = 4096;
    let aspect = w2 as f64 / h2 as f64;
    if w2 >= h2 && w2 > CAP {
        (((CAP as f64 / aspect) as usize).max(1), CAP)
    } else if h2 > w2 && h2 > CAP {
        (CAP, ((CAP as f64 * aspect) as usize).max(1))
    } else {
        (h2, w2)
    }
}

/// Both sides rounded up to whole tiles of `m` (`resize_for_vision_encoder`).
fn tiles_size(h: usize, w: usize, m: usize) -> (usize, usize) {
    let aspect = w as f64 / h as f64;
    let up = |x: f64| (x / m as f64).ceil() as usize * m;
    if w >= h {
        let w2 = up(w as f64);
        let h2 = up(((w2 as f64 / aspect) as usize) as f64);
        (h2.max(m), w2)
    } else {
        let h2 = up(h as f64);
        let w2 = up(((h2 as f64 * aspect) as usize) as f64);
        (h2, w2.max(m))
    }
}

/// The connector: pixel shuffle, then a linear map without bias.
struct Connector {
    proj: Linear,
    scale: i32,
}

impl Connector {
    fn forward(&self, x: &Array) -> mlx_rs::error::Result<Array> {
        let s = x.shape();
        let (b, seq, d) = (s[0], s[1], s[2]);
        let side = (seq as f64).sqrt() as i32;
        let k = self.scale;
        let x = x
            .reshape(&[b, side, side / k, d * k])?
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[b, side / k, side / k, d * k * k])?
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[b, seq / (k * k), d * k * k])?;
        self.proj.forward(&x)
    }
}

/// The media side of an Idefics3 model.
pub struct Idefics3 {
    vision: Siglip,
    connector: Connector,
    processor: Processor,
    image_token: u32,
    dtype: Dtype,
}

/// Builds the language model and the media side from `dir`'s config and weights.
pub fn load(
    cfg: &Json,
    dir: &Path,
    weights: Weights,
    dtype: Dtype,
) -> Result<super::Built, LlmError> {
    let file = dir.join("config.json");
    let bad = |msg: String| LlmError::Config {
        file: file.clone(),
        msg,
    };
    let mut w = weights;
    // mlx-vlm's conversions name the parts without `model.`.
    w.rename_prefix("language_model.model.", "model.text_model.");
    w.rename_prefix("language_model.lm_head.", "lm_head.");
    w.rename_prefix("vision_model.", "model.vision_model.");
    w.rename_prefix("connector.", "model.connector.");
    let vcfg = siglip::config(cfg.get("vision_config").unwrap_or(&Json::Null), &file)?;
    let scale = cfg.get("scale_factor").and_then(Json::as_i64).unwrap_or(2) as i32;
    let side = vcfg.side();
    if !(1..=8).contains(&scale) || side % scale != 0 {
        return Err(bad(format!(
            "`scale_factor` {scale} does not divide the {side}×{side} patch grid"
        )));
    }
    let mut text = cfg
        .get("text_config")
        .cloned()
        .ok_or_else(|| bad("missing `text_config`".into()))?;
    if text.get("model_type").and_then(Json::as_str) != Some("llama") {
        return Err(bad(format!(
            "`text_config.model_type` {} is not supported (llama)",
            text.get("model_type").unwrap_or(&Json::Null)
        )));
    }
    if let (Some(t), Json::Object(m)) = (cfg.get("tie_word_embeddings"), &mut text) {
        m.entry("tie_word_embeddings").or_insert(t.clone());
    }
    let text_hidden = text.get("hidden_size").and_then(Json::as_i64).unwrap_or(0) as i32;
    let image_token = cfg
        .get("image_token_id")
        .and_then(Json::as_u64)
        .ok_or_else(|| bad("missing `image_token_id`".into()))? as u32;
    let vision = Siglip::load(vcfg, &mut w, "model.vision_model")?;
    let d = vision.config.hidden_size;
    let connector = Connector {
        proj: w.linear(
            "model.connector.modality_projection.proj",
            d * scale * scale,
            text_hidden,
            false,
        )?,
        scale,
    };
    let seq = (side * side / (scale * scale)) as usize;
    let processor = Processor::from_dir(dir, seq)?;
    if processor.tile % vision.config.patch_size as usize != 0
        || !(processor.tile / vision.config.patch_size as usize).is_multiple_of(scale as usize)
    {
        return Err(bad(format!(
            "tiles of {} pixels do not split into patches of {} shuffled by {scale}",
            processor.tile, vision.config.patch_size
        )));
    }
    let per_tile =
        (processor.tile / vision.config.patch_size as usize).pow(2) / (scale * scale) as usize;
    if processor.image_seq_len != per_tile {
        return Err(bad(format!(
            "`image_seq_len` {} differs from the {per_tile} features a {}-pixel tile gives",
            processor.image_seq_len, processor.tile
        )));
    }
    w.rename_prefix("model.text_model.", "model.");
    let lm = lm::loader::build_model(&text, &file, w)?;
    let media = Idefics3 {
        vision,
        connector,
        processor,
        image_token,
        dtype,
    };
    mlx_rs::transforms::eval(media.parameters())?;
    Ok((lm, Box::new(media)))
}

impl Idefics3 {
    /// Features (frames · image_seq_len, text hidden) of an image's frames.
    fn features(&self, frames: &[Rgb]) -> Result<Array, LlmError> {
        let m = self.processor.tile as i32;
        let px = self.processor.norm.batch(frames);
        let x = Array::from_slice(&px, &[frames.len() as i32, 3, m, m]).as_dtype(self.dtype)?;
        let h = self.vision.forward(&x)?;
        let f = self.connector.forward(&h)?;
        let d = f.shape()[2];
        Ok(f.reshape(&[-1, d])?)
    }

    /// The processed frames of each image of `input`, with their (rows, cols).
    pub fn images(&self, input: &TextInput) -> Result<Vec<(Vec<Rgb>, usize, usize)>, LlmError> {
        let mut out = Vec::new();
        for (place, img) in prompt::images(input)? {
            let (frames, rows, cols) = self.processor.frames(&img);
            if frames.len() > MAX_FRAMES_PER_IMAGE {
                return Err(LlmError::Request(format!(
                    "{place}: the image becomes {} frames (at most {MAX_FRAMES_PER_IMAGE})",
                    frames.len()
                )));
            }
            out.push((frames, rows, cols));
        }
        Ok(out)
    }

    /// Rendered, expanded and tokenized prompt of `input`, and its images' frames.
    pub fn tokens(
        &self,
        lm: &Loaded,
        system_prompt: Option<&str>,
        input: &TextInput,
        index: usize,
    ) -> Result<(Vec<u32>, Vec<Rgb>), LlmError> {
        let images = self.images(input)?;
        let expansions: Vec<String> = images
            .iter()
            .map(|(_, rows, cols)| self.processor.expansion(*rows, *cols))
            .collect();
        let frames: Vec<Rgb> = images.into_iter().flat_map(|(f, _, _)| f).collect();
        let ids = prompt::expand(lm, system_prompt, input, index, "<image>", &expansions)?;
        let want = frames.len() * self.processor.image_seq_len;
        prompt::count_image_tokens(lm, &ids, self.image_token, "<image>", want)?;
        Ok((ids, frames))
    }
}

impl Media for Idefics3 {
    fn prompt(
        &self,
        lm: &Loaded,
        system_prompt: Option<&str>,
        input: &TextInput,
        index: usize,
    ) -> Result<MediaPrompt, LlmError> {
        let (ids, frames) = self.tokens(lm, system_prompt, input, index)?;
        prompt::check_context(lm, &ids, index)?;
        let feats = self.features(&frames)?;
        prompt::splice(lm, ids, self.image_token, &feats)
    }

    fn parameters(&self) -> Vec<&Array> {
        let mut all = self.vision.parameters();
        all.extend(self.connector.proj.arrays());
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_processor() {
        // SmolVLM: 2048 longest edge, 512 tiles.
        assert_eq!(longest_edge_size(300, 451, 2048), (1362, 2048));
        assert_eq!(tiles_size(1362, 2048, 512), (1536, 2048));
        assert_eq!(longest_edge_size(70, 50, 128), (128, 92));
        assert_eq!(tiles_size(128, 92, 64), (128, 128));
    }
}
