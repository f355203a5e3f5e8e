//! Template plugin: sentence embeddings from hashed character n-grams (the "hashing
//! trick" of fastText / Vowpal Wabbit). A real, small `embed` plugin with no weights:
//! copy it to start a plugin of any kind. A model is a directory with a `config.json`:
//!
//! ```json
//! {"model_type": "ngram-hash", "dim": 256, "n": 3}
//! ```
//!
//! Each text is lowercased and padded with a space at both ends; every window of `n`
//! characters is hashed (FNV-1a, 64 bit) to a bucket (`hash % dim`) and a sign (the top
//! bit), the signed counts are summed, and the vector is L2-normalized. Texts that share
//! many n-grams get a high cosine similarity.

use plugin_api::{
    embed::{EmbedRequest, EmbedResponse, Pooling},
    ErrorKind, EstimateRequest, Features, LoadRequest, MemoryEstimate, ModelInfo, ModelKind,
    PluginDescriptor, PluginError, Probe, ProbeRequest,
};
use plugin_sdk::{rstrings, LoadedModel, Plugin};
use serde_json::Value;
use std::path::Path;

/// The architecture name registry entries use (`architecture = "ngram-hash"`).
pub const ARCHITECTURE: &str = "ngram-hash";
/// Largest vector size accepted from a `config.json` (bounds the allocation per text).
pub const MAX_DIM: u64 = 65_536;
/// Longest n-gram accepted.
pub const MAX_N: u64 = 8;

struct NgramPlugin;

impl Plugin for NgramPlugin {
    fn descriptor() -> PluginDescriptor {
        PluginDescriptor {
            name: "ngram-embed".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Hashed character n-gram embeddings (template plugin)".into(),
            kinds: vec![ModelKind::EMBED].into(),
            architectures: rstrings(&[ARCHITECTURE]),
            formats: rstrings(&["config-only"]),
            features: Features::EMBEDDINGS.union(Features::BATCHING),
        }
    }

    fn probe(_req: &ProbeRequest) -> Probe {
        // Portable and cheap: a low score, so a real model plugin wins where both apply.
        Probe {
            score: 5,
            backend: "cpu".into(),
            reason: "pure Rust, no SIMD".into(),
        }
    }

    fn estimate(req: &EstimateRequest) -> Result<MemoryEstimate, PluginError> {
        let cfg = Config::read(Path::new(req.model.path.as_str()))?;
        // No weights; one f32 vector per text of a batch.
        Ok(MemoryEstimate {
            weights_as: "none (hashing)".into(),
            runtime_bytes: cfg.dim as u64 * 4 * u64::from(req.batch.max(1)),
            context: req.context,
            batch: req.batch,
            ..Default::default()
        })
    }

    fn load(req: &LoadRequest) -> Result<Box<dyn LoadedModel>, PluginError> {
        let cfg = Config::read(Path::new(req.model.path.as_str())).map_err(|mut e| {
            e.message = format!("model `{}`: {}", req.model.id, e.message).into();
            e
        })?;
        Ok(Box::new(NgramModel {
            id: req.model.id.to_string(),
            cfg,
        }))
    }
}

plugin_sdk::export_plugin!(NgramPlugin);

/// A model's `config.json`, checked.
#[derive(Debug, Clone, Copy)]
struct Config {
    dim: usize,
    n: usize,
}

impl Config {
    fn read(dir: &Path) -> Result<Self, PluginError> {
        let file = dir.join("config.json");
        let bad =
            |msg: String| PluginError::new(ErrorKind::LOAD, format!("{}: {msg}", file.display()));
        let text = std::fs::read_to_string(&file).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::NOT_FOUND
            } else {
                ErrorKind::LOAD
            };
            PluginError::new(kind, format!("{}: {e}", file.display()))
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map = v
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        for key in map.keys() {
            if !["model_type", "dim", "n"].contains(&key.as_str()) {
                return Err(bad(format!("unknown key `{key}` (model_type, dim, n)")));
            }
        }
        if map.get("model_type").and_then(Value::as_str) != Some(ARCHITECTURE) {
            return Err(bad(format!("`model_type` must be \"{ARCHITECTURE}\"")));
        }
        let int = |key: &str, max: u64| {
            map.get(key)
                .and_then(Value::as_u64)
                .filter(|n| (1..=max).contains(n))
                .map(|n| n as usize)
                .ok_or_else(|| bad(format!("`{key}` must be an integer from 1 to {max}")))
        };
        Ok(Config {
            dim: int("dim", MAX_DIM)?,
            n: int("n", MAX_N)?,
        })
    }
}

struct NgramModel {
    id: String,
    cfg: Config,
}

impl NgramModel {
    fn vector(&self, text: &str, normalize: bool) -> Vec<f32> {
        let chars: Vec<char> = format!(" {} ", text.to_lowercase()).chars().collect();
        let mut v = vec![0f32; self.cfg.dim];
        for gram in chars.windows(self.cfg.n) {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for c in gram {
                for b in c.to_string().bytes() {
                    h ^= u64::from(b);
                    h = h.wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            let sign = if h >> 63 == 1 { -1.0 } else { 1.0 };
            v[(h % self.cfg.dim as u64) as usize] += sign;
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if normalize && norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

impl LoadedModel for NgramModel {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            id: self.id.as_str().into(),
            kind: ModelKind::EMBED,
            architecture: ARCHITECTURE.into(),
            backend: "cpu".into(),
            dtype: "float32".into(),
            dim: self.cfg.dim as u32,
            max_tokens: u32::MAX,
            parameters: 0,
            weight_bytes: 0,
        }
    }

    fn embed(&self, req: &EmbedRequest) -> Result<EmbedResponse, PluginError> {
        if req.texts.is_empty() {
            return Err(PluginError::new(
                ErrorKind::INVALID_REQUEST,
                format!("model `{}`: `texts` is empty", self.id),
            ));
        }
        if ![Pooling::MODEL_DEFAULT, Pooling::MEAN].contains(&req.pooling) {
            return Err(PluginError::new(
                ErrorKind::UNSUPPORTED,
                format!(
                    "model `{}`: pooling `{}` (n-gram hashing sums all n-grams: default or mean)",
                    self.id,
                    req.pooling.name()
                ),
            ));
        }
        let normalize = req.normalize.into_option().unwrap_or(true);
        let mut data = Vec::with_capacity(req.texts.len() * self.cfg.dim);
        let mut tokens = 0u64;
        for t in req.texts.iter() {
            data.extend(self.vector(t.as_str(), normalize));
            tokens += t.chars().count() as u64;
        }
        Ok(EmbedResponse {
            dim: self.cfg.dim as u32,
            data: data.into(),
            prompt_tokens: tokens,
        })
    }
}
