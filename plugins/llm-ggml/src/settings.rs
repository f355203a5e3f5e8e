//! llama.cpp context settings: the registry's per-model `[models.options]` over defaults
//! chosen for the device.
//!
//! Defaults, measured (SmolLM2-135M Q4_1; BENCHMARKS.md, "CPU portability" and "CPU:
//! the server next to llama-server"): flash attention is on. A context holds up to 16
//! sequences and the prompt cache's entries in one unified KV cache, so each decoded row
//! attends over every cell in use, its own or not, masked; llama.cpp's flash-attention
//! kernel skips masked cells, the plain path computes them. On a 2-core EPYC, 16 streams
//! of unique prompts ran at 29.1 tok/s with it off and 55.8 on (llama-server 54.9), and
//! a lone sequence ties. Off won 1.8x decode for a lone sequence on a 2-core Sapphire
//! Rapids (88.9 vs 49.7 tok/s, 512-token prompt) and lost ~13% at 16 threads on the H200
//! host's Xeon: a single-stream workload on such a CPU can set `flash_attn = "off"`.
//! GPU builds keep llama.cpp's choice (`auto`). The KV cache stays f16 (llama.cpp's
//! default). A model's registry options override any of it.

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use serde_json::Value;

/// Flash attention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashAttn {
    On,
    Off,
    Auto,
}

impl FlashAttn {
    fn name(self) -> &'static str {
        match self {
            FlashAttn::On => "on",
            FlashAttn::Off => "off",
            FlashAttn::Auto => "auto",
        }
    }
}

/// KV cache element types offered (K and V alike).
const KV_TYPES: &[(&str, KvCacheType)] = &[
    ("f32", KvCacheType::F32),
    ("f16", KvCacheType::F16),
    ("bf16", KvCacheType::BF16),
    ("q8_0", KvCacheType::Q8_0),
    ("q4_0", KvCacheType::Q4_0),
];

/// The settings a model's contexts are made with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub flash_attn: FlashAttn,
    /// Index into `KV_TYPES`.
    kv: usize,
    pub threads: i32,
    /// Keep ended sequences' KV cells for later prompts that start the same way.
    pub prompt_cache: bool,
}

/// Option keys the registry may set for this provider (`kv_cache` is the registry's
/// provider-neutral key, which the host passes in the options; `kv_type` its older name).
pub const KEYS: &[&str] = &[
    "flash_attn",
    "kv_cache",
    "kv_type",
    "threads",
    "prompt_cache",
];

impl Settings {
    /// The defaults for this build on a machine with `cores` physical cores.
    pub fn device_default(gpu_build: bool, cores: usize) -> Self {
        Settings {
            flash_attn: if gpu_build {
                FlashAttn::Auto
            } else {
                FlashAttn::On
            },
            kv: 1,
            threads: cores.clamp(1, 1024) as i32,
            prompt_cache: true,
        }
    }

    /// `defaults` overridden by the registry options (a JSON object); an unknown key or
    /// a bad value is an error naming it.
    pub fn with_options(mut self, options: &str) -> Result<Self, String> {
        if options.trim().is_empty() {
            return Ok(self);
        }
        let v: Value =
            serde_json::from_str(options).map_err(|e| format!("options are not JSON: {e}"))?;
        let Some(map) = v.as_object() else {
            return Err("options must be a table".into());
        };
        if let (Some(a), Some(b)) = (map.get("kv_cache"), map.get("kv_type")) {
            if a != b {
                return Err(format!(
                    "`kv_cache` = {a} and option `kv_type` = {b} disagree; give one"
                ));
            }
        }
        for (key, val) in map {
            let bad = |want: &str| format!("option `{key}`: expected {want}, got {val}");
            match key.as_str() {
                "flash_attn" => {
                    self.flash_attn = match val.as_str() {
                        Some("on") => FlashAttn::On,
                        Some("off") => FlashAttn::Off,
                        Some("auto") => FlashAttn::Auto,
                        _ => return Err(bad("\"on\", \"off\" or \"auto\"")),
                    }
                }
                "kv_type" | "kv_cache" => {
                    let names: Vec<&str> = KV_TYPES.iter().map(|(n, _)| *n).collect();
                    self.kv = val
                        .as_str()
                        .and_then(|s| names.iter().position(|n| *n == s))
                        .ok_or_else(|| bad(&format!("one of {}", names.join(", "))))?;
                }
                "prompt_cache" => {
                    self.prompt_cache = val.as_bool().ok_or_else(|| bad("true or false"))?
                }
                "threads" => {
                    self.threads = val
                        .as_u64()
                        .filter(|n| (1..=1024).contains(n))
                        .ok_or_else(|| bad("an integer from 1 to 1024"))?
                        as i32
                }
                _ => {
                    return Err(format!(
                        "unknown option `{key}` (this provider reads {})",
                        KEYS.join(", ")
                    ))
                }
            }
        }
        // llama.cpp quantizes the V cache only inside flash attention: `auto` becomes on.
        if self.kv >= 3 && self.flash_attn == FlashAttn::Auto {
            self.flash_attn = FlashAttn::On;
        }
        if self.kv >= 3 && self.flash_attn != FlashAttn::On {
            return Err(format!(
                "a quantized KV cache ({}) needs option flash_attn = \"on\" on this provider",
                self.kv_name()
            ));
        }
        Ok(self)
    }

    /// Bytes per KV cache element as a fraction (numerator, denominator): ggml's block
    /// sizes (q8_0: 34 bytes per 32 values, q4_0: 18 per 32).
    pub fn kv_bytes_per_element(&self) -> (u64, u64) {
        match self.kv_name() {
            "f32" => (4, 1),
            "q8_0" => (34, 32),
            "q4_0" => (18, 32),
            _ => (2, 1),
        }
    }

    fn kv_name(&self) -> &'static str {
        KV_TYPES[self.kv].0
    }

    /// The settings applied to llama.cpp context parameters.
    pub fn apply(&self, p: LlamaContextParams) -> LlamaContextParams {
        let fa = match self.flash_attn {
            FlashAttn::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttn::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            FlashAttn::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
        };
        let kv = KV_TYPES[self.kv].1;
        p.with_flash_attention_policy(fa)
            .with_type_k(kv)
            .with_type_v(kv)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
    }

    /// e.g. `flash attention off, KV cache f16, 2 threads`.
    pub fn describe(&self) -> String {
        format!(
            "flash attention {}, KV cache {}, {} threads",
            self.flash_attn.name(),
            self.kv_name(),
            self.threads
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_override_defaults_and_bad_ones_are_named() {
        let d = Settings::device_default(false, 2);
        assert_eq!(d.describe(), "flash attention on, KV cache f16, 2 threads");
        let s = d
            .clone()
            .with_options(r#"{"flash_attn":"off","kv_type":"bf16","threads":4}"#)
            .unwrap();
        assert_eq!(
            s.describe(),
            "flash attention off, KV cache bf16, 4 threads"
        );
        assert!(d.prompt_cache);
        let q8 = d.clone().with_options(r#"{"kv_cache":"q8_0"}"#).unwrap();
        assert_eq!(
            q8.describe(),
            "flash attention on, KV cache q8_0, 2 threads"
        );
        assert_eq!(q8.kv_bytes_per_element(), (34, 32));
        let off = d.clone().with_options(r#"{"prompt_cache":false}"#).unwrap();
        assert!(!off.prompt_cache);
        assert_eq!(d.clone().with_options("{}").unwrap(), d);
        for (opts, want) in [
            (r#"{"flash":"on"}"#, "unknown option `flash`"),
            (
                r#"{"kv_type":"f8"}"#,
                "option `kv_type`: expected one of f32",
            ),
            (r#"{"threads":0}"#, "option `threads`: expected an integer"),
            (
                r#"{"prompt_cache":1}"#,
                "option `prompt_cache`: expected true or false",
            ),
            (
                r#"{"kv_type":"q4_0","flash_attn":"off"}"#,
                "needs option flash_attn = \"on\"",
            ),
            (
                r#"{"kv_cache":"q8_0","kv_type":"f16"}"#,
                "`kv_cache` = \"q8_0\" and option `kv_type` = \"f16\" disagree",
            ),
            ("[1]", "options must be a table"),
        ] {
            let e = d.clone().with_options(opts).unwrap_err();
            assert!(e.contains(want), "{opts}: {e}");
        }
    }
}
