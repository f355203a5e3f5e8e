//! Device fit: the budget arithmetic around the serving plugin's own memory estimate.
//!
//! Each plugin estimates what a load will cost from the model's files (API 2's
//! `estimate` entry: weights as it will hold them, KV cache, runtime) and the load dtype
//! it will use; the host only adds the parts, compares them with the memory budget and
//! presents them. It knows no plugin's formula. A plugin without an estimate is budgeted
//! at its files' size plus [`UNKNOWN_MARGIN_PERCENT`]. See `docs/device-fit.md`.

pub use model_facts::{facts, Facts};
use plugin_api::MemoryEstimate;
use serde::Serialize;

/// Margin over the file size for a plugin that gives no estimate (and for models not
/// downloaded yet, sized from the registry).
pub const UNKNOWN_MARGIN_PERCENT: u64 = 15;

/// A memory estimate for one model on one provider.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// Plugin the estimate is for.
    pub plugin: String,
    /// What the weights become when loaded.
    pub weights_as: String,
    /// Weights in memory.
    pub weights_bytes: u64,
    /// KV cache for `context` tokens × `batch` sequences.
    pub kv_cache_bytes: u64,
    /// Activations, logits, compute buffers, allocator slack.
    pub runtime_bytes: u64,
    /// Everything.
    pub total_bytes: u64,
    /// Tokens per sequence the estimate is for.
    pub context: u64,
    /// Sequences decoded together.
    pub batch: u64,
    /// The load dtype the plugin will use (passed back to it at load).
    pub dtype: Option<String>,
    /// A choice the plugin made to fit (`float32 would need …; bfloat16 chosen`).
    pub note: String,
    /// Weight bytes per second the plugin streams while decoding here (0 = unmeasured).
    pub decode_bytes_per_s: f64,
}

impl Estimate {
    /// The plugin's own estimate.
    pub fn from_plugin(plugin: &str, m: &MemoryEstimate) -> Self {
        Estimate {
            plugin: plugin.to_owned(),
            weights_as: m.weights_as.to_string(),
            weights_bytes: m.weights_bytes,
            kv_cache_bytes: m.kv_cache_bytes,
            runtime_bytes: m.runtime_bytes,
            total_bytes: m.total_bytes(),
            context: u64::from(m.context),
            batch: u64::from(m.batch),
            dtype: m.dtype.as_ref().map(|d| d.to_string()).into_option(),
            note: m.note.to_string(),
            decode_bytes_per_s: m.decode_bytes_per_s,
        }
    }

    /// For a plugin that gives no estimate: its files plus [`UNKNOWN_MARGIN_PERCENT`].
    pub fn from_files(plugin: &str, f: &Facts, context: u64, batch: u64) -> Self {
        let mut e = Self::sized(plugin, f.file_bytes);
        e.weights_as = format!(
            "{} (file size + {UNKNOWN_MARGIN_PERCENT}%: the plugin gives no estimate)",
            f.quantization
        );
        e.context = context;
        e.batch = batch;
        e
    }

    fn sized(plugin: &str, weights: u64) -> Self {
        let runtime = weights * UNKNOWN_MARGIN_PERCENT / 100;
        Estimate {
            plugin: plugin.to_owned(),
            weights_as: String::new(),
            weights_bytes: weights,
            kv_cache_bytes: 0,
            runtime_bytes: runtime,
            total_bytes: weights + runtime,
            context: 0,
            batch: 1,
            dtype: None,
            note: String::new(),
            decode_bytes_per_s: 0.0,
        }
    }
}

/// An estimate for a model that is not downloaded, from the registry's `size_bytes`
/// (or `parameters` at 2 bytes each): weights plus [`UNKNOWN_MARGIN_PERCENT`] for cache
/// and runtime.
pub fn estimate_from_registry(
    plugin: &str,
    size_bytes: Option<u64>,
    parameters: Option<u64>,
) -> Option<Estimate> {
    let mut e = Estimate::sized(plugin, size_bytes.or(parameters.map(|p| p * 2))?);
    e.weights_as = "as published (not downloaded; from the registry's size)".into();
    Some(e)
}

/// Expected decode speed (tokens/s, one sequence) from the plugin's measured weight
/// streaming rate on this device; `None` where the plugin has not measured it (GPUs).
pub fn expected_decode_tps(e: &Estimate) -> Option<f64> {
    (e.decode_bytes_per_s > 0.0).then(|| e.decode_bytes_per_s / (e.weights_bytes.max(1) as f64))
}

/// A speed class for people: `interactive` (≥ 20 tok/s), `usable` (≥ 5), `slow`.
pub fn speed_class(tps: Option<f64>) -> &'static str {
    match tps {
        Some(t) if t >= 20.0 => "interactive",
        Some(t) if t >= 5.0 => "usable",
        Some(_) => "slow",
        None => "unmeasured",
    }
}

/// `1.5 GB`, `320 MB`: sizes for people.
pub use hub::progress::human_size as human;

/// Parse a size: `4GB`, `512MB`, `1.5G`, `800M`, `1073741824` (decimal units; `GiB`/`MiB`
/// binary).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4GB, 512MB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "`{s}`: unknown size unit `{other}` (B, KB, MB, GB, TB, MiB, GiB)"
            ))
        }
    };
    Ok((n * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4GB").unwrap(), 4_000_000_000);
        assert_eq!(parse_size("512MB").unwrap(), 512_000_000);
        assert_eq!(parse_size("1.5g").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4 parsecs").unwrap_err().contains("parsecs"));
    }
}
