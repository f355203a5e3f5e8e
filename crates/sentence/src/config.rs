//! The sentence-transformers files around a transformer checkpoint: `modules.json`,
//! `1_Pooling/config.json` (or whatever path modules.json names), the `Normalize` module
//! and `sentence_bert_config.json` (`max_seq_length`). A plain transformers checkpoint
//! without them gets mean pooling, no normalization, the model's own maximum length.

use crate::SentenceError;
use plugin_api::embed::Pooling;
use serde::Deserialize;
use std::path::Path;

/// What sentence-transformers would do after the transformer.
#[derive(Debug, Clone)]
pub struct SentenceConfig {
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    ty: String,
}

#[derive(Deserialize, Default)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct SbertConfig {
    max_seq_length: Option<usize>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, SentenceError> {
    let text = std::fs::read_to_string(path).map_err(|e| SentenceError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| SentenceError::Config {
        file: path.into(),
        msg: e.to_string(),
    })
}

impl SentenceConfig {
    /// Read the sentence-transformers files of `dir`, if any.
    pub fn load(dir: &Path) -> Result<Self, SentenceError> {
        let mut cfg = SentenceConfig {
            pooling: Pooling::MEAN,
            normalize: false,
            max_seq_length: None,
        };
        let sbert = dir.join("sentence_bert_config.json");
        if sbert.is_file() {
            cfg.max_seq_length = read_json::<SbertConfig>(&sbert)?.max_seq_length;
        }
        let modules_path = dir.join("modules.json");
        if !modules_path.is_file() {
            return Ok(cfg);
        }
        let modules: Vec<Module> = read_json(&modules_path)?;
        for m in modules {
            match m.ty.rsplit('.').next().unwrap_or_default() {
                "Transformer" => {}
                "Normalize" => cfg.normalize = true,
                "Pooling" => {
                    let file = crate::inside(dir, &m.path)
                        .map_err(|msg| SentenceError::Config {
                            file: modules_path.clone(),
                            msg: format!("module `{}`: {msg}", m.ty),
                        })?
                        .join("config.json");
                    let p: PoolingConfig = read_json(&file)?;
                    let bad = |what: &str| SentenceError::Config {
                        file: file.clone(),
                        msg: format!("pooling mode {what} is not supported (mean, cls, lasttoken)"),
                    };
                    if p.pooling_mode_max_tokens {
                        return Err(bad("max_tokens"));
                    }
                    if p.pooling_mode_mean_sqrt_len_tokens {
                        return Err(bad("mean_sqrt_len_tokens"));
                    }
                    let modes = [
                        p.pooling_mode_cls_token,
                        p.pooling_mode_mean_tokens,
                        p.pooling_mode_lasttoken,
                    ];
                    if modes.iter().filter(|m| **m).count() != 1 {
                        return Err(bad("combination"));
                    }
                    cfg.pooling = if p.pooling_mode_cls_token {
                        Pooling::CLS
                    } else if p.pooling_mode_lasttoken {
                        Pooling::LAST
                    } else {
                        Pooling::MEAN
                    };
                }
                other => {
                    return Err(SentenceError::Config {
                        file: modules_path.clone(),
                        msg: format!(
                            "sentence-transformers module `{other}` ({}) is not supported",
                            m.ty
                        ),
                    })
                }
            }
        }
        Ok(cfg)
    }
}
