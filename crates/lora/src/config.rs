//! The two adapter layouts: their `adapter_config.json` fields and tensor names.

use crate::invalid;
use serde_json::Value as Json;
use std::path::Path;

/// An adapter's on-disk layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Hugging Face PEFT: `adapter_model.safetensors`, tensors
    /// `base_model.model.<layer>.lora_A.weight` (rank, in) and `….lora_B.weight` (out, rank).
    Peft,
    /// mlx-lm (`mlx_lm.lora`): `adapters.safetensors`, tensors `<layer>.lora_a` (in, rank)
    /// and `<layer>.lora_b` (rank, out).
    MlxLm,
}

impl Format {
    /// The layout of the adapter in `dir`, by its weights file.
    pub fn of(dir: &Path) -> Option<Self> {
        [Self::Peft, Self::MlxLm]
            .into_iter()
            .find(|f| dir.join(f.weights_file()).is_file())
    }

    /// The weights file's name.
    pub fn weights_file(self) -> &'static str {
        match self {
            Self::Peft => "adapter_model.safetensors",
            Self::MlxLm => "adapters.safetensors",
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Peft => "PEFT",
            Self::MlxLm => "mlx-lm",
        }
    }

    /// Factors are stored transposed from PEFT's orientation.
    pub(crate) fn transposed(self) -> bool {
        self == Self::MlxLm
    }

    /// The layer a tensor belongs to, and whether it is `B`; why not when it is no LoRA
    /// factor this code applies.
    pub(crate) fn factor_of(self, tensor: &str) -> Result<(String, bool), String> {
        match self {
            Self::Peft => {
                let rest = tensor
                    .strip_prefix("base_model.model.")
                    .ok_or("not a PEFT LoRA tensor (names start with `base_model.model.`)")?;
                if rest.contains("lora_magnitude_vector") {
                    return Err("DoRA (`use_dora`) is not supported".into());
                }
                if rest.contains("lora_embedding_") {
                    return Err("LoRA on embedding layers is not supported".into());
                }
                if rest.contains("modules_to_save") {
                    return Err("`modules_to_save` (fully trained layers) is not supported".into());
                }
                // `<layer>.lora_A.weight`, or with the adapter's name:
                // `<layer>.lora_A.<name>.weight`.
                for (key, is_b) in [(".lora_A.", false), (".lora_B.", true)] {
                    if let Some(at) = rest.find(key) {
                        let tail = &rest[at + key.len()..];
                        if tail == "weight"
                            || tail
                                .strip_suffix(".weight")
                                .is_some_and(|n| !n.contains('.'))
                        {
                            return Ok((rest[..at].to_owned(), is_b));
                        }
                        if tail.ends_with("bias") {
                            return Err("LoRA biases (`lora_bias`) are not supported".into());
                        }
                    }
                }
                Err("not a LoRA factor (`lora_A`/`lora_B` weights)".into())
            }
            Self::MlxLm => {
                if let Some(layer) = tensor.strip_suffix(".lora_a") {
                    return Ok((layer.to_owned(), false));
                }
                if let Some(layer) = tensor.strip_suffix(".lora_b") {
                    return Ok((layer.to_owned(), true));
                }
                if tensor.ends_with(".m") {
                    return Err("DoRA (`fine_tune_type = \"dora\"`) is not supported".into());
                }
                Err("not a LoRA factor (`lora_a`/`lora_b`)".into())
            }
        }
    }
}

/// What `adapter_config.json` says about the scale.
pub(crate) enum Settings {
    /// PEFT: `lora_alpha`, divided by the rank (or its square root with `use_rslora`).
    Peft { alpha: f32, rslora: bool },
    /// mlx-lm: `lora_parameters.scale`, as is.
    MlxLm { scale: f32 },
}

impl Settings {
    /// Read and check the config; `file` names it in errors.
    pub(crate) fn read(format: Format, cfg: &Json, file: &Path) -> Result<Self, crate::LoraError> {
        let bad = |msg: String| invalid(file, msg);
        let truthy = |k: &str| cfg.get(k).and_then(Json::as_bool).unwrap_or(false);
        let nonempty = |k: &str| match cfg.get(k) {
            None | Some(Json::Null) => false,
            Some(Json::Array(a)) => !a.is_empty(),
            Some(Json::Object(o)) => !o.is_empty(),
            Some(Json::String(s)) => !s.is_empty(),
            Some(_) => true,
        };
        match format {
            Format::Peft => {
                if let Some(t) = cfg.get("peft_type").and_then(Json::as_str) {
                    if t != "LORA" {
                        return Err(bad(format!(
                            "`peft_type` `{t}`: only LoRA adapters (`LORA`) are supported"
                        )));
                    }
                }
                for (key, what) in [
                    ("use_dora", "DoRA"),
                    ("fan_in_fan_out", "GPT-2 style Conv1D layers"),
                    ("lora_bias", "LoRA biases"),
                ] {
                    if truthy(key) {
                        return Err(bad(format!("`{key}`: {what} is not supported")));
                    }
                }
                for (key, what) in [
                    (
                        "modules_to_save",
                        "fully trained layers saved beside the adapter",
                    ),
                    ("alpha_pattern", "per-layer alphas"),
                    ("layer_replication", "replicated layers"),
                    (
                        "target_parameters",
                        "adapters on parameters rather than layers",
                    ),
                ] {
                    if nonempty(key) {
                        return Err(bad(format!("`{key}`: {what} are not supported")));
                    }
                }
                if let Some(b) = cfg.get("bias").and_then(Json::as_str) {
                    if b != "none" {
                        return Err(bad(format!(
                            "`bias` `{b}`: trained biases are not supported (only `none`)"
                        )));
                    }
                }
                let alpha = cfg
                    .get("lora_alpha")
                    .and_then(Json::as_f64)
                    .filter(|a| a.is_finite())
                    .ok_or_else(|| bad("`lora_alpha` is missing or not a number".into()))?;
                Ok(Self::Peft {
                    alpha: alpha as f32,
                    rslora: truthy("use_rslora"),
                })
            }
            Format::MlxLm => {
                let kind = cfg
                    .get("fine_tune_type")
                    .and_then(Json::as_str)
                    .unwrap_or("lora");
                if kind != "lora" {
                    return Err(bad(format!(
                        "`fine_tune_type` `{kind}`: only `lora` adapters are supported"
                    )));
                }
                if truthy("use_dora") {
                    return Err(bad("`use_dora`: DoRA is not supported".into()));
                }
                let scale = cfg
                    .get("lora_parameters")
                    .and_then(|p| p.get("scale"))
                    .and_then(Json::as_f64)
                    .filter(|s| s.is_finite())
                    .ok_or_else(|| {
                        bad("`lora_parameters.scale` is missing or not a number".into())
                    })?;
                Ok(Self::MlxLm {
                    scale: scale as f32,
                })
            }
        }
    }

    /// The multiplier of `B·A` for a layer of `rank`.
    pub(crate) fn scale(&self, rank: usize) -> f32 {
        match *self {
            Self::Peft { alpha, rslora } => {
                let r = rank as f32;
                if rslora {
                    alpha / r.sqrt()
                } else {
                    alpha / r
                }
            }
            Self::MlxLm { scale } => scale,
        }
    }
}
