//! LLaVA (`model_type = "llava"`): LLaVA 1.5 7B/13B (llava-hf), BakLLaVA and the other
//! checkpoints of `LlavaForConditionalGeneration` with a CLIP tower. The tower reads one
//! square frame per image; the hidden states of `vision_feature_layer` (the second to
//! last layer for LLaVA 1.5; a list of layers is concatenated), without the class token
//! under the `default` strategy, go through a two-layer MLP projector (GELU) into the
//! text model's space and take the places of the image's `<image>` tokens — one per
//! patch (576 for 336-pixel frames of 14-pixel patches).
//!
//! The processor (`preprocessor_config.json`, CLIP's or LLaVA's image processor):
//! optionally padded to a square of the mean colour (`do_pad`, LLaVA's expand-to-square),
//! the shortest edge resized to `size.shortest_edge` and the centre cropped to
//! `crop_size` — or resized to `size.height`×`size.width` — then rescaled and
//! normalised (CLIP's mean and std by default).
//! Skeleton: `Config` → `Processor` → `Projector` → `Llava` (the [`Media`] side).

use super::llava_next::AnyRes;
use crate::image::{resample::Filter, Rgb};
use crate::processor::{Normalize, Settings};
use crate::prompt;
use crate::vision::clip::{self, Clip};
use crate::vision::encoder::Act;
use lm::{
    loader::Loaded,
    media::{Media, MediaPrompt},
    LlmError,
};
use mlx_common::{Linear, Weights};
use mlx_rs::{ops, ops::indexing::IndexOp, Array, Dtype};
use plugin_api::text::TextInput;
use serde_json::{json, Value as Json};
use std::path::Path;

/// CLIP's normalisation (`OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`).
const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// `LlamaConfig`'s defaults, which LLaVA 1.5's sparse `text_config` leaves to them.
const LLAMA_DEFAULTS: &[(&str, i64)] = &[
    ("vocab_size", 32000),
    ("hidden_size", 4096),
    ("intermediate_size", 11008),
    ("num_hidden_layers", 32),
    ("num_attention_heads", 32),
    ("max_position_embeddings", 2048),
];

/// How a frame is brought to the tower's size.
enum Fit {
    /// Shortest edge to `edge`, then the centre `crop`×`crop`.
    ShortestEdgeCrop { edge: usize, crop: usize },
    /// Straight to `side`×`side`.
    Square { side: usize },
}

/// The preprocessing settings.
pub struct Processor {
    pad: Option<[u8; 3]>,
    fit: Fit,
    filter: Filter,
    norm: Normalize,
}

impl Processor {
    /// From the model directory; frames must come out `image_size` square. `do_pad`
    /// pads to a square where `square_pad` (LLaVA's processor; LLaVA-NeXT's pads batches).
    pub fn from_dir(
        dir: &Path,
        image_size: usize,
        square_pad: bool,
    ) -> Result<(Self, Settings), LlmError> {
        let s = Settings::from_dir(dir)?;
        s.require(&[
            ("do_resize", true),
            ("do_rescale", true),
            ("do_convert_rgb", true),
        ])?;
        let norm = s.normalize(CLIP_MEAN, CLIP_STD)?;
        let size = s.cfg.get("size");
        let fit = if size.and_then(|v| v.get("shortest_edge")).is_some() {
            if !s.flag("do_center_crop", true) {
                return Err(s.bad(
                    "`size.shortest_edge` without `do_center_crop` gives frames of any shape; not supported".into(),
                ));
            }
            let edge = s.pixels("size", Some("shortest_edge"), 336)?;
            let (ch, cw) = (
                s.pixels("crop_size", Some("height"), edge as i64)?,
                s.pixels("crop_size", Some("width"), edge as i64)?,
            );
            if ch != cw || ch > edge {
                return Err(s.bad(format!(
                    "`crop_size` {ch}×{cw} must be square and within `size.shortest_edge` {edge}"
                )));
            }
            Fit::ShortestEdgeCrop { edge, crop: ch }
        } else {
            let (h, w) = (
                s.pixels("size", Some("height"), image_size as i64)?,
                s.pixels("size", Some("width"), image_size as i64)?,
            );
            if h != w || s.flag("do_center_crop", false) {
                return Err(s.bad(format!(
                    "`size` {h}×{w} with `do_center_crop` {}: frames must come out square, uncropped",
                    s.flag("do_center_crop", false)
                )));
            }
            Fit::Square { side: h }
        };
        let side = match fit {
            Fit::ShortestEdgeCrop { crop, .. } => crop,
            Fit::Square { side } => side,
        };
        if side != image_size {
            return Err(s.bad(format!(
                "frames come out {side}×{side}, the vision tower reads {image_size}×{image_size}"
            )));
        }
        // The mean colour in levels, truncated (`int(x * 255)`).
        let pad = (square_pad && s.flag("do_pad", false)).then(|| {
            let m = s.triple("image_mean", CLIP_MEAN).unwrap_or(CLIP_MEAN);
            m.map(|c| (c * 255.0).clamp(0.0, 255.0) as u8)
        });
        let filter = s.filter(3)?;
        Ok((
            Self {
                pad,
                fit,
                filter,
                norm,
            },
            s,
        ))
    }

    /// The frame of `img`.
    pub fn frame(&self, img: &Rgb) -> Rgb {
        let padded;
        let img = match self.pad {
            Some(color) => {
                padded = img.pad_square(color);
                &padded
            }
            None => img,
        };
        match self.fit {
            Fit::Square { side } => img.resize(side, side, self.filter),
            Fit::ShortestEdgeCrop { edge, crop } => {
                let (w, h) = shortest_edge_size(img.width, img.height, edge);
                let r = img.resize(w, h, self.filter);
                r.crop((w - crop) / 2, (h - crop) / 2, crop, crop)
            }
        }
    }

    /// Normalised pixels (3, S, S) of a frame.
    pub fn pixels(&self, f: &Rgb) -> Vec<f32> {
        self.norm.pixels(f)
    }

    /// The resample filter.
    pub fn filter(&self) -> Filter {
        self.filter
    }

    /// The side a whole image is squashed to before its frame is made (LLaVA-NeXT):
    /// `size.shortest_edge`, or `size.height`.
    pub fn base_side(&self) -> usize {
        match self.fit {
            Fit::ShortestEdgeCrop { edge, .. } => edge,
            Fit::Square { side } => side,
        }
    }
}

/// (width, height) with the shorter side `edge` and the longer `int(edge · long / short)`
/// (`get_resize_output_image_size` with `default_to_square=False`).
fn shortest_edge_size(w: usize, h: usize, edge: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let long2 = ((edge as f64 * long as f64 / short as f64) as usize).max(edge);
    if w <= h {
        (edge, long2)
    } else {
        (long2, edge)
    }
}

/// The projector: linear, activation, linear.
struct Projector {
    linear_1: Linear,
    act: Act,
    linear_2: Linear,
}

/// The media side of a LLaVA model.
pub struct Llava {
    vision: Clip,
    projector: Projector,
    processor: Processor,
    /// Hidden-state indices of the tower whose features are concatenated.
    layers: Vec<usize>,
    /// Whether the class token's feature is dropped (`default`) or kept (`full`).
    drop_class: bool,
    /// Features (and image tokens) of one frame.
    tokens_per_image: usize,
    /// LLaVA-NeXT's tiling and packing.
    anyres: Option<AnyRes>,
    image_token: u32,
    marker: String,
    dtype: Dtype,
}

/// The hidden-state indices `vision_feature_layer` names, of a tower of `n` layers.
fn feature_layers(v: Option<&Json>, n: i32, file: &Path) -> Result<Vec<usize>, LlmError> {
    let one = |k: &Json| -> Result<usize, LlmError> {
        let i = k.as_i64().ok_or_else(|| LlmError::Config {
            file: file.into(),
            msg: format!("`vision_feature_layer` holds {k}, not a layer index"),
        })?;
        let idx = if i < 0 { i64::from(n) + 1 + i } else { i };
        if !(0..=i64::from(n)).contains(&idx) {
            return Err(LlmError::Config {
                file: file.into(),
                msg: format!("`vision_feature_layer` {i} is outside the tower's {n} layers"),
            });
        }
        Ok(idx as usize)
    };
    match v {
        None => one(&json!(-2)).map(|i| vec![i]),
        Some(Json::Array(list)) if !list.is_empty() && list.len() <= 8 => {
            list.iter().map(one).collect()
        }
        Some(Json::Array(_)) => Err(LlmError::Config {
            file: file.into(),
            msg: "`vision_feature_layer` must list 1 to 8 layers".into(),
        }),
        Some(k) => one(k).map(|i| vec![i]),
    }
}

/// Builds the language model and the media side from `dir`'s config and weights.
pub fn load(
    cfg: &Json,
    dir: &Path,
    weights: Weights,
    dtype: Dtype,
) -> Result<super::Built, LlmError> {
    load_with(cfg, dir, weights, dtype, false)
}

/// [`load`], with LLaVA-NeXT's any-resolution tiling where `anyres`.
pub(crate) fn load_with(
    cfg: &Json,
    dir: &Path,
    weights: Weights,
    dtype: Dtype,
    anyres: bool,
) -> Result<super::Built, LlmError> {
    let file = dir.join("config.json");
    let bad = |msg: String| LlmError::Config {
        file: file.clone(),
        msg,
    };
    let mut w = weights;
    // transformers 4's layout (and mlx-vlm's conversions) without the `model.` level.
    w.rename_prefix("language_model.model.", "model.language_model.");
    w.rename_prefix("language_model.lm_head.", "lm_head.");
    w.rename_prefix("vision_tower.", "model.vision_tower.");
    w.rename_prefix("multi_modal_projector.", "model.multi_modal_projector.");
    // The Hub's checkpoints nest the tower's parts under `vision_model.`; transformers 5
    // writes them without it.
    w.rename_prefix("model.vision_tower.vision_model.", "model.vision_tower.");
    // Without a `vision_config`, `LlavaConfig` builds CLIP ViT-L/14 at 336 pixels.
    let llava_tower = json!({"hidden_size": 1024, "intermediate_size": 4096, "patch_size": 14,
        "image_size": 336, "num_hidden_layers": 24, "num_attention_heads": 16});
    let vjson = cfg.get("vision_config").unwrap_or(&llava_tower);
    match vjson.get("model_type").and_then(Json::as_str) {
        None | Some("clip_vision_model") => {}
        Some(other) => {
            return Err(bad(format!(
                "`vision_config.model_type` `{other}` is not supported (clip_vision_model)"
            )))
        }
    }
    let vcfg = clip::config(vjson, &file)?;
    let layers = feature_layers(cfg.get("vision_feature_layer"), vcfg.num_layers, &file)?;
    let drop_class = match cfg
        .get("vision_feature_select_strategy")
        .and_then(Json::as_str)
        .unwrap_or("default")
    {
        "default" => true,
        "full" => false,
        other => {
            return Err(bad(format!(
                "`vision_feature_select_strategy` `{other}` is not supported (default, full)"
            )))
        }
    };
    let mut text = cfg.get("text_config").cloned().unwrap_or_else(|| json!({}));
    let Json::Object(t) = &mut text else {
        return Err(bad("`text_config` is not an object".into()));
    };
    let ty = t
        .entry("model_type")
        .or_insert_with(|| json!("llama"))
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if ty == "llama" {
        for (k, v) in LLAMA_DEFAULTS {
            t.entry(*k).or_insert_with(|| json!(v));
        }
    }
    if let Some(tie) = cfg.get("tie_word_embeddings") {
        t.entry("tie_word_embeddings").or_insert(tie.clone());
    }
    let text_hidden = t.get("hidden_size").and_then(Json::as_i64).unwrap_or(0) as i32;
    let image_token = cfg
        .get("image_token_index")
        .or_else(|| cfg.get("image_token_id"))
        .and_then(Json::as_u64)
        .unwrap_or(32000) as u32;
    let act = Act::from_name(
        cfg.get("projector_hidden_act")
            .and_then(Json::as_str)
            .unwrap_or("gelu"),
        "projector_hidden_act",
        &file,
    )
    .map_err(|_| {
        bad(
            "`projector_hidden_act` is not supported (gelu, gelu_pytorch_tanh, quick_gelu, silu)"
                .into(),
        )
    })?;
    let bias = cfg
        .get("multimodal_projector_bias")
        .and_then(Json::as_bool)
        .unwrap_or(true);
    let keep = *layers.iter().max().unwrap_or(&0) as i32;
    let side = vcfg.side() as usize;
    let image_size = vcfg.image_size as usize;
    let vision = Clip::load(vcfg, &mut w, "model.vision_tower", keep)?;
    let d = vision.config.hidden_size * layers.len() as i32;
    let p = "model.multi_modal_projector";
    let projector = Projector {
        linear_1: w.linear(&format!("{p}.linear_1"), d, text_hidden, bias)?,
        act,
        linear_2: w.linear(&format!("{p}.linear_2"), text_hidden, text_hidden, bias)?,
    };
    let (processor, settings) = Processor::from_dir(dir, image_size, !anyres)?;
    let tokens_per_image = side * side + usize::from(!drop_class);
    // The processor's own count, where its config gives one: patches + extra − CLS.
    if let Some(ps) = settings.processor_int("patch_size") {
        let extra = settings
            .processor_int("num_additional_image_tokens")
            .unwrap_or(0) as usize;
        let strategy_drop = settings
            .processor_str("vision_feature_select_strategy")
            .map_or(drop_class, |s| s == "default");
        let ps = ps.max(1) as usize;
        let n = ((image_size / ps).pow(2) + extra).checked_sub(usize::from(strategy_drop));
        if n != Some(tokens_per_image) {
            let n = n.map_or("no".into(), |n| n.to_string());
            return Err(settings.bad(format!(
                "the processor expands an image into {n} tokens, the model gives {tokens_per_image} features"
            )));
        }
    }
    let marker = settings
        .processor_str("image_token")
        .unwrap_or("<image>")
        .to_owned();
    let anyres = if anyres {
        if !drop_class {
            return Err(bad(
                "LLaVA-NeXT packs each tile's patch features: `vision_feature_select_strategy` must be `default`".into(),
            ));
        }
        let a = AnyRes::load(cfg, &file, &settings, &mut w, text_hidden, image_size, side)?;
        Some(a)
    } else {
        None
    };
    w.rename_prefix("model.language_model.", "model.");
    let lm = lm::loader::build_model(&text, &file, w)?;
    let media = Llava {
        vision,
        projector,
        processor,
        layers,
        drop_class,
        tokens_per_image,
        anyres,
        image_token,
        marker,
        dtype,
    };
    mlx_rs::transforms::eval(media.parameters())?;
    Ok((lm, Box::new(media)))
}

impl Llava {
    /// Features (image tokens, text hidden) of the frames of `images` ((frames, height,
    /// width) of each, in order).
    fn features(
        &self,
        frames: &[Rgb],
        images: &[(usize, usize, usize)],
    ) -> Result<Array, LlmError> {
        let s = self.vision.config.image_size;
        let px = self.processor.norm.batch(frames);
        let x = Array::from_slice(&px, &[frames.len() as i32, 3, s, s]).as_dtype(self.dtype)?;
        let states = self.vision.forward(&x, &self.layers)?;
        let states = states
            .iter()
            .map(|h| {
                if self.drop_class {
                    h.index((.., 1.., ..))
                } else {
                    h.clone()
                }
            })
            .collect::<Vec<_>>();
        let h = if states.len() == 1 {
            states[0].clone()
        } else {
            ops::concatenate(&states.iter().collect::<Vec<_>>(), -1)?
        };
        let p = &self.projector;
        let f = p
            .linear_2
            .forward(&p.act.apply(&p.linear_1.forward(&h)?)?)?;
        let d = f.shape()[2];
        let Some(a) = &self.anyres else {
            return Ok(f.reshape(&[-1, d])?);
        };
        let mut packed = Vec::with_capacity(images.len());
        let mut k = 0;
        for &(n, h, w) in images {
            packed.push(a.pack(&f.index(k as i32..(k + n) as i32), h, w)?);
            k += n;
        }
        Ok(ops::concatenate(&packed.iter().collect::<Vec<_>>(), 0)?)
    }

    /// Rendered, expanded and tokenized prompt of `input`, its images' frames, and
    /// (frames, height, width) of each image.
    #[allow(clippy::type_complexity)]
    pub fn tokens(
        &self,
        lm: &Loaded,
        system_prompt: Option<&str>,
        input: &TextInput,
        index: usize,
    ) -> Result<(Vec<u32>, Vec<Rgb>, Vec<(usize, usize, usize)>), LlmError> {
        let mut frames = Vec::new();
        let mut images = Vec::new();
        let mut expansions = Vec::new();
        let mut want = 0;
        for (_, img) in prompt::images(input)? {
            let (f, n) = match &self.anyres {
                None => (vec![self.processor.frame(&img)], self.tokens_per_image),
                Some(a) => (
                    a.grid
                        .frames(&img, &self.processor, self.processor.base_side()),
                    a.grid
                        .feature_count(img.height, img.width, self.tokens_per_image),
                ),
            };
            images.push((f.len(), img.height, img.width));
            frames.extend(f);
            expansions.push(self.marker.repeat(n));
            want += n;
        }
        let ids = prompt::expand(lm, system_prompt, input, index, &self.marker, &expansions)?;
        prompt::count_image_tokens(lm, &ids, self.image_token, &self.marker, want)?;
        Ok((ids, frames, images))
    }
}

impl Media for Llava {
    fn prompt(
        &self,
        lm: &Loaded,
        system_prompt: Option<&str>,
        input: &TextInput,
        index: usize,
    ) -> Result<MediaPrompt, LlmError> {
        let (ids, frames, images) = self.tokens(lm, system_prompt, input, index)?;
        prompt::check_context(lm, &ids, index)?;
        let feats = self.features(&frames, &images)?;
        prompt::splice(lm, ids, self.image_token, &feats)
    }

    fn parameters(&self) -> Vec<&Array> {
        let mut all = self.vision.parameters();
        all.extend(self.projector.linear_1.arrays());
        all.extend(self.projector.linear_2.arrays());
        all.extend(self.anyres.as_ref().map(|a| &a.newline));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_follows_transformers() {
        // int(336 * 640 / 480) = 448.
        assert_eq!(shortest_edge_size(640, 480, 336), (448, 336));
        assert_eq!(shortest_edge_size(480, 640, 336), (336, 448));
        assert_eq!(shortest_edge_size(50, 70, 32), (32, 44));
    }

    #[test]
    fn feature_layers_count_from_the_end() {
        let f = Path::new("config.json");
        assert_eq!(feature_layers(None, 24, f).unwrap(), vec![23]);
        assert_eq!(
            feature_layers(Some(&json!([-2, -5, 3])), 24, f).unwrap(),
            vec![23, 20, 3]
        );
        assert!(feature_layers(Some(&json!(-26)), 24, f).is_err());
        assert!(feature_layers(Some(&json!(25)), 24, f).is_err());
    }
}
