//! What every architecture's image processor reads the same way: the settings file
//! (`preprocessor_config.json`, or `processor_config.json`'s `image_processor`), its
//! flags, filter and normalisation, checked once with errors that name the file and key.

use crate::image::{resample::Filter, Rgb};
use lm::LlmError;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// A JSON file of the model directory, if present.
pub fn read_json(path: &Path) -> Result<Option<Json>, LlmError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| LlmError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| LlmError::Config {
            file: path.into(),
            msg: e.to_string(),
        })
}

/// The image processor's settings and the processor's own (`processor_config.json`).
pub struct Settings {
    pub cfg: Json,
    pub file: PathBuf,
    pub processor: Option<Json>,
}

impl Settings {
    /// From the model directory.
    pub fn from_dir(dir: &Path) -> Result<Self, LlmError> {
        let pre = dir.join("preprocessor_config.json");
        let proc_file = dir.join("processor_config.json");
        let processor = read_json(&proc_file)?;
        let (cfg, file) = match read_json(&pre)? {
            Some(c) => (c, pre),
            None => match processor.as_ref().and_then(|p| p.get("image_processor")) {
                Some(c) => (c.clone(), proc_file),
                None => return Err(LlmError::MissingFile(pre)),
            },
        };
        Ok(Self {
            cfg,
            file,
            processor,
        })
    }

    /// An error about this file.
    pub fn bad(&self, msg: String) -> LlmError {
        LlmError::Config {
            file: self.file.clone(),
            msg,
        }
    }

    /// Boolean `k`, `default` when absent.
    pub fn flag(&self, k: &str, default: bool) -> bool {
        self.cfg.get(k).and_then(Json::as_bool).unwrap_or(default)
    }

    /// Refuses a flag set to what this processor does not do.
    pub fn require(&self, keys: &[(&str, bool)]) -> Result<(), LlmError> {
        for &(k, must) in keys {
            if self.flag(k, must) != must {
                return Err(self.bad(format!("`{k}: {}` is not supported", !must)));
            }
        }
        Ok(())
    }

    /// `k` as three numbers (or one for all channels), `default` when absent.
    pub fn triple(&self, k: &str, default: [f32; 3]) -> Result<[f32; 3], LlmError> {
        match self.cfg.get(k) {
            None => Ok(default),
            Some(Json::Array(v)) if v.len() == 3 && v.iter().all(Json::is_number) => {
                let f = |i: usize| v[i].as_f64().unwrap_or(0.0) as f32;
                Ok([f(0), f(1), f(2)])
            }
            Some(Json::Number(n)) => Ok([n.as_f64().unwrap_or(0.0) as f32; 3]),
            Some(other) => Err(self.bad(format!("`{k}` = {other} is not three numbers"))),
        }
    }

    /// A size in pixels under `k` (`{k}.{sub}` when `sub` is given), within 1..=4096.
    pub fn pixels(&self, k: &str, sub: Option<&str>, default: i64) -> Result<usize, LlmError> {
        let v = self.cfg.get(k);
        let v = match sub {
            Some(s) => v.and_then(|v| v.get(s)),
            None => v,
        };
        let n = v.and_then(Json::as_i64).unwrap_or(default);
        let name = sub.map_or(k.to_owned(), |s| format!("{k}.{s}"));
        if !(1..=4096).contains(&n) {
            return Err(self.bad(format!("`{name}` = {n} is out of range 1..=4096")));
        }
        Ok(n as usize)
    }

    /// The `resample` filter (Pillow's number), `default` when absent.
    pub fn filter(&self, default: i64) -> Result<Filter, LlmError> {
        let n = self
            .cfg
            .get("resample")
            .and_then(Json::as_i64)
            .unwrap_or(default);
        Filter::from_pil(n)
            .ok_or_else(|| self.bad(format!("`resample` = {n} is not a Pillow filter")))
    }

    /// Rescale and normalisation, `mean` / `std` defaults when absent.
    pub fn normalize(&self, mean: [f32; 3], std: [f32; 3]) -> Result<Normalize, LlmError> {
        let std = self.triple("image_std", std)?;
        if std.iter().any(|s| *s <= 0.0) {
            return Err(self.bad(format!("`image_std` {std:?} must be positive")));
        }
        let on = self.flag("do_normalize", true);
        Ok(Normalize {
            mean: if on {
                self.triple("image_mean", mean)?
            } else {
                [0.0; 3]
            },
            std: if on { std } else { [1.0; 3] },
            rescale: self
                .cfg
                .get("rescale_factor")
                .and_then(Json::as_f64)
                .unwrap_or(1.0 / 255.0) as f32,
        })
    }

    /// `k` of `processor_config.json`, as an integer.
    pub fn processor_int(&self, k: &str) -> Option<u64> {
        self.processor.as_ref()?.get(k)?.as_u64()
    }

    /// `k` of `processor_config.json`, as a string.
    pub fn processor_str(&self, k: &str) -> Option<&str> {
        self.processor.as_ref()?.get(k)?.as_str()
    }
}

/// Rescale then normalise: (v · rescale − mean) / std per channel.
#[derive(Clone, Copy, Debug)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub rescale: f32,
}

impl Normalize {
    /// Normalised pixels (3, H, W) of a frame.
    pub fn pixels(&self, f: &Rgb) -> Vec<f32> {
        let n = f.width * f.height;
        let mut out = vec![0f32; 3 * n];
        for (i, px) in f.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n + i] = (f32::from(px[c]) * self.rescale - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    /// Frames (N, 3, H, W) of one size as pixels.
    pub fn batch(&self, frames: &[Rgb]) -> Vec<f32> {
        let mut px = Vec::with_capacity(frames.iter().map(|f| 3 * f.width * f.height).sum());
        for f in frames {
            px.extend(self.pixels(f));
        }
        px
    }
}
