//! LLaVA-NeXT (`model_type = "llava_next"`, LLaVA 1.6: llava-v1.6-mistral-7b-hf,
//! vicuna-7b/13b, 34b): LLaVA's tower, projector and text model (`llava.rs`) reading an
//! image at any resolution ("anyres"). The processor picks the grid of
//! `image_grid_pinpoints` that keeps the most of the image and wastes the least, resizes
//! the image into it (aspect kept, bicubic), pads the rest black and cuts it into
//! tower-sized tiles; a squashed copy of the whole image goes first. The model packs the
//! tiles' features back into one feature map, removes the rows or columns that are only
//! padding, ends every row with the learned `image_newline`, and puts the whole image's
//! features in front. Skeleton: `AnyRes` (grid choice, frames, feature count, packing).

use super::llava::{self, Processor};
use crate::image::Rgb;
use crate::processor::Settings;
use lm::LlmError;
use mlx_common::Weights;
use mlx_rs::{ops, ops::indexing::IndexOp, Array, Dtype};
use serde_json::Value as Json;
use std::path::Path;

/// `LlavaNextConfig`'s default grid resolutions (height, width).
const DEFAULT_PINPOINTS: [(usize, usize); 5] =
    [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)];
/// Most tiles one grid may hold (LLaVA-NeXT's largest grids are 3×3 or 2×4 of 336).
const MAX_TILES: usize = 36;

/// Builds the language model and the media side from `dir`'s config and weights.
pub fn load(
    cfg: &Json,
    dir: &Path,
    weights: Weights,
    dtype: Dtype,
) -> Result<super::Built, LlmError> {
    llava::load_with(cfg, dir, weights, dtype, true)
}

/// The anyres side of a LLaVA-NeXT model.
pub struct AnyRes {
    pub grid: Grid,
    /// (text hidden): the feature ending every row of the packed map.
    pub newline: Array,
}

/// The grids an image may be tiled into.
pub struct Grid {
    /// Grid resolutions (height, width), multiples of `tile`.
    pinpoints: Vec<(usize, usize)>,
    /// Tile side in pixels (the tower's `image_size`).
    tile: usize,
    /// Patches per tile side.
    side: usize,
}

impl AnyRes {
    /// From config.json's `image_grid_pinpoints` (checked against the processor's, when
    /// it lists them) and the `image_newline` weight; tiles of `tile` pixels, `side`
    /// patches a side.
    pub fn load(
        cfg: &Json,
        file: &Path,
        settings: &Settings,
        w: &mut Weights,
        hidden: i32,
        tile: usize,
        side: usize,
    ) -> Result<Self, LlmError> {
        let bad = |msg: String| LlmError::Config {
            file: file.into(),
            msg,
        };
        let parse = |v: &Json, name: &str| -> Result<Vec<(usize, usize)>, String> {
            let list = v.as_array().ok_or(format!("`{name}` is not a list"))?;
            if list.is_empty() || list.len() > 64 {
                return Err(format!("`{name}` must list 1 to 64 resolutions"));
            }
            list.iter()
                .map(|p| match p.as_array().map(Vec::as_slice) {
                    Some([h, w]) => match (h.as_u64(), w.as_u64()) {
                        (Some(h), Some(w))
                            if h > 0
                                && w > 0
                                && (h as usize).is_multiple_of(tile)
                                && (w as usize).is_multiple_of(tile)
                                && (h as usize / tile) * (w as usize / tile) <= MAX_TILES =>
                        {
                            Ok((h as usize, w as usize))
                        }
                        _ => Err(format!(
                            "`{name}` entry {p} is not a [height, width] in whole {tile}-pixel tiles (at most {MAX_TILES})"
                        )),
                    },
                    _ => Err(format!("`{name}` entry {p} is not a [height, width] pair")),
                })
                .collect()
        };
        let pinpoints = match cfg.get("image_grid_pinpoints") {
            None => DEFAULT_PINPOINTS.to_vec(),
            Some(v) => parse(v, "image_grid_pinpoints").map_err(bad)?,
        };
        if let Some(v) = settings.cfg.get("image_grid_pinpoints") {
            let theirs = parse(v, "image_grid_pinpoints").map_err(|m| settings.bad(m))?;
            if theirs != pinpoints {
                return Err(settings.bad(format!(
                    "`image_grid_pinpoints` {theirs:?} differ from config.json's {pinpoints:?}"
                )));
            }
        }
        w.rename_prefix("image_newline", "model.image_newline");
        Ok(Self {
            grid: Grid::new(pinpoints, tile, side),
            newline: w.take("model.image_newline", &[hidden])?,
        })
    }

    /// The packed features (count, hidden) of one image of `h`×`w` from its frames'
    /// projected features `f` (frames, side², hidden), the whole image first.
    pub fn pack(&self, f: &Array, h: usize, w: usize) -> Result<Array, LlmError> {
        let g = &self.grid;
        let (gh, gw) = g.best(h, w);
        let (th, tw) = ((gh / g.tile) as i32, (gw / g.tile) as i32);
        let s = g.side as i32;
        let d = f.shape()[2];
        let base = f.index(0);
        let map = f
            .index(1..)
            .reshape(&[th, tw, s, s, d])?
            .transpose_axes(&[0, 2, 1, 3, 4])?
            .reshape(&[th * s, tw * s, d])?;
        let (rows, cols) = g.unpadded(h, w);
        let (r0, c0) = (
            ((th * s) as usize - rows) / 2,
            ((tw * s) as usize - cols) / 2,
        );
        let map = map.index((
            r0 as i32..(r0 + rows) as i32,
            c0 as i32..(c0 + cols) as i32,
            ..,
        ));
        let nl = ops::broadcast_to(
            self.newline.as_dtype(map.dtype())?.reshape(&[1, 1, d])?,
            &[rows as i32, 1, d],
        )?;
        let packed = ops::concatenate(&[&map, &nl], 1)?.reshape(&[-1, d])?;
        Ok(ops::concatenate(&[&base, &packed], 0)?)
    }
}

impl Grid {
    /// `pinpoints` (height, width) of whole `tile`-pixel tiles of `side` patches a side.
    pub fn new(pinpoints: Vec<(usize, usize)>, tile: usize, side: usize) -> Self {
        Self {
            pinpoints,
            tile,
            side,
        }
    }

    /// LLaVA-NeXT's default grids of 336-pixel tiles of 14-pixel patches.
    pub fn llava_v16() -> Self {
        Self::new(DEFAULT_PINPOINTS.to_vec(), 336, 24)
    }

    /// The grid (height, width) for an image of `h`×`w` (`select_best_resolution`): the
    /// most of the image kept, then the least area wasted; the first such in the list.
    pub fn best(&self, h: usize, w: usize) -> (usize, usize) {
        let mut best = self.pinpoints[0];
        let (mut max_eff, mut min_waste) = (0usize, usize::MAX);
        for &(gh, gw) in &self.pinpoints {
            let scale = (gw as f64 / w as f64).min(gh as f64 / h as f64);
            let (dw, dh) = ((w as f64 * scale) as usize, (h as f64 * scale) as usize);
            let eff = (dw * dh).min(w * h);
            let waste = gw * gh - eff;
            if eff > max_eff || (eff == max_eff && waste < min_waste) {
                (max_eff, min_waste, best) = (eff, waste, (gh, gw));
            }
        }
        best
    }

    /// The frames of `img`: the whole image squashed to `base`×`base` then through the
    /// processor, then the grid's tiles row by row.
    pub fn frames(&self, img: &Rgb, proc: &Processor, base: usize) -> Vec<Rgb> {
        let (gh, gw) = self.best(img.height, img.width);
        let (nh, nw) = patch_output_size(img.height, img.width, gh, gw);
        let filter = proc.filter();
        let grid = img.resize(nw, nh, filter).pad_to(gw, gh, [0; 3]);
        let mut frames = vec![proc.frame(&img.resize(base, base, filter))];
        for r in 0..gh / self.tile {
            for c in 0..gw / self.tile {
                let t = grid.crop(c * self.tile, r * self.tile, self.tile, self.tile);
                frames.push(proc.frame(&t));
            }
        }
        frames
    }

    /// Rows and columns of the packed feature map of an `h`×`w` image after unpadding
    /// (`unpad_image`), before the newline column.
    pub fn unpadded(&self, h: usize, w: usize) -> (usize, usize) {
        let (gh, gw) = self.best(h, w);
        let (ch, cw) = (gh / self.tile * self.side, gw / self.tile * self.side);
        // Python's int(round(x, 7)).
        let round7 = |x: f64| ((x * 1e7).round() / 1e7) as usize;
        if w as f64 / h as f64 > cw as f64 / ch as f64 {
            let nh = round7(h as f64 * (cw as f64 / w as f64));
            (ch - (ch - nh.min(ch)) / 2 * 2, cw)
        } else {
            let nw = round7(w as f64 * (ch as f64 / h as f64));
            (ch, cw - (cw - nw.min(cw)) / 2 * 2)
        }
    }

    /// Features an `h`×`w` image becomes, `base` of them from the whole image.
    pub fn feature_count(&self, h: usize, w: usize, base: usize) -> usize {
        let (rows, cols) = self.unpadded(h, w);
        base + rows * (cols + 1)
    }
}

/// The size an `h`×`w` image is resized to inside a `gh`×`gw` grid, aspect kept, the
/// short way rounded up (`get_patch_output_size`).
fn patch_output_size(h: usize, w: usize, gh: usize, gw: usize) -> (usize, usize) {
    let (sw, sh) = (gw as f64 / w as f64, gh as f64 / h as f64);
    if sw < sh {
        (((h as f64 * sw).ceil() as usize).min(gh), gw)
    } else {
        (gh, ((w as f64 * sh).ceil() as usize).min(gw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_and_counts_follow_transformers() {
        let a = Grid::llava_v16();
        // A 640×480 photo: 672×672 keeps the most (transformers picks the same).
        assert_eq!(a.best(480, 640), (672, 672));
        assert_eq!(patch_output_size(480, 640, 672, 672), (504, 672));
        // LlavaNextProcessor: 576 base + unpadded 36×48 rows with a newline each.
        assert_eq!(a.unpadded(480, 640), (36, 48));
        assert_eq!(a.feature_count(480, 640, 576), 576 + 36 * 49);
        // A tall image picks the 1×3 column.
        assert_eq!(a.best(1000, 300), (1008, 336));
    }
}
