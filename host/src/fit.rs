//! Device fit: what a model will cost in memory, estimated from its real files (GGUF
//! tensor tables, safetensors headers, `config.json`) before anything is loaded, and the
//! memory budget that loading is checked against.
//!
//! The estimate follows what the serving plugin will do with the files: the ggml
//! provider maps the GGUF as is and keeps an f16 KV cache of at least
//! [`GGML_MIN_KV_CELLS`] cells; the MLX providers convert weights to the load dtype
//! (float32 on CPU, where MLX's f32 path goes through BLAS; bfloat16 on GPU). The
//! constants of the runtime term are calibrated against measured peak resident memory
//! (see `docs/device-fit.md` and `tests/fit.rs`).

use gguf::Gguf;
use plugin_api::ModelKind;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// KV cells the ggml provider's context always has (mirrors `plugins/llm-ggml`).
pub const GGML_MIN_KV_CELLS: u64 = 4096;
/// Sequences the ggml provider's context holds (mirrors `plugins/llm-ggml`).
pub const GGML_MAX_SEQS: u64 = 16;
/// Prompt tokens per prefill step (both llm providers).
pub const PREFILL_CHUNK: u64 = 512;

// Calibrated against measured peak resident memory on x86-64 Linux (docs/device-fit.md):
/// llama.cpp's fixed overhead (library state, small buffers).
const GGML_BASE: u64 = 13_500_000;
/// llama.cpp's vocabulary tables per token.
const GGML_PER_VOCAB: u64 = 294;
/// MLX's fixed overhead (library state, allocator, BLAS buffers).
const MLX_BASE: u64 = 20_000_000;

/// Shape facts of a model, read from its files.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Facts {
    /// `gguf` or `safetensors`.
    pub format: String,
    /// Bytes of the weight files.
    pub file_bytes: u64,
    /// Parameters (elements of all tensors, unpacked).
    pub parameters: u64,
    /// Storage type: a GGUF file type (`Q4_1`, `Q4_K`), `float32`, `bfloat16`, `mlx-4bit`.
    pub quantization: String,
    /// Transformer layers.
    pub layers: u64,
    /// Key/value heads.
    pub kv_heads: u64,
    /// Size of one head.
    pub head_dim: u64,
    /// Hidden size.
    pub hidden: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Training context length.
    pub context_length: u64,
}

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
}

/// Facts of the model at `path` (a file or directory), for `kind`.
pub fn facts(path: &Path, kind: ModelKind) -> Result<Facts, String> {
    if let Some(g) = gguf::model_file(path) {
        return gguf_facts(&g);
    }
    safetensors_facts(path, kind)
}

fn gguf_facts(file: &Path) -> Result<Facts, String> {
    let g = Gguf::open(file).map_err(|e| e.to_string())?;
    let arch = g.architecture().map_err(|e| e.to_string())?.to_owned();
    let int = |k: &str| g.get(&format!("{arch}.{k}")).and_then(|v| v.as_i64());
    let heads = int("attention.head_count").unwrap_or(1).max(1) as u64;
    let hidden = int("embedding_length").unwrap_or(0) as u64;
    let head_dim = int("attention.key_length")
        .map(|v| v as u64)
        .unwrap_or(hidden / heads);
    let mut types: Vec<(u64, String)> = Vec::new();
    for t in &g.tensors {
        let name = gguf::type_name(t.ggml_type);
        match types.iter_mut().find(|(_, n)| *n == name) {
            Some((c, _)) => *c += t.elements() as u64,
            None => types.push((t.elements() as u64, name)),
        }
    }
    types.sort();
    Ok(Facts {
        format: "gguf".into(),
        file_bytes: std::fs::metadata(file).map_err(|e| e.to_string())?.len(),
        parameters: g.tensors.iter().map(|t| t.elements() as u64).sum(),
        quantization: types.last().map(|(_, n)| n.clone()).unwrap_or_default(),
        layers: int("block_count").unwrap_or(0) as u64,
        kv_heads: int("attention.head_count_kv").map_or(heads, |v| v as u64),
        head_dim,
        hidden,
        vocab: g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map_or(0, |a| a.len() as u64),
        context_length: int("context_length").unwrap_or(0) as u64,
    })
}

fn safetensors_facts(dir: &Path, kind: ModelKind) -> Result<Facts, String> {
    let cfg_path = dir.join("config.json");
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path).map_err(|e| format!("{}: {e}", cfg_path.display()))?,
    )
    .map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    let text = cfg.get("text_config").unwrap_or(&cfg);
    let num = |k: &str| text.get(k).and_then(Value::as_u64);
    let bits = cfg
        .get("quantization")
        .and_then(|q| q.get("bits"))
        .and_then(Value::as_u64);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no .safetensors or .gguf files", dir.display()));
    }
    let (mut file_bytes, mut params) = (0u64, 0u64);
    let mut dtypes: Vec<(u64, String)> = Vec::new();
    for f in &files {
        file_bytes += std::fs::metadata(f).map_err(|e| e.to_string())?.len();
        for (name, dtype, elements) in safetensors_header(f)? {
            // Packed quantized weights hold 32/bits values per u32; scales/biases are
            // not parameters.
            let n = match (bits, dtype.as_str()) {
                (Some(b), "U32") => elements * (32 / b.max(1)),
                (Some(_), _) if name.ends_with(".scales") || name.ends_with(".biases") => 0,
                _ => elements,
            };
            params += n;
            match dtypes.iter_mut().find(|(_, d)| *d == dtype) {
                Some((c, _)) => *c += n,
                None => dtypes.push((n, dtype)),
            }
        }
    }
    dtypes.sort();
    let quantization = match bits {
        Some(b) => format!("mlx-{b}bit"),
        None => match dtypes.last().map(|(_, d)| d.as_str()) {
            Some("F32") => "float32".into(),
            Some("F16") => "float16".into(),
            Some("BF16") => "bfloat16".into(),
            Some(other) => other.to_lowercase(),
            None => String::new(),
        },
    };
    let heads = num("num_attention_heads").unwrap_or(1).max(1);
    let hidden = num("hidden_size").unwrap_or(0);
    let llm = kind != ModelKind::EMBED;
    Ok(Facts {
        format: "safetensors".into(),
        file_bytes,
        parameters: params,
        quantization,
        layers: num("num_hidden_layers").unwrap_or(0),
        kv_heads: if llm {
            num("num_key_value_heads").unwrap_or(heads)
        } else {
            0
        },
        head_dim: num("head_dim").unwrap_or(hidden / heads),
        hidden,
        vocab: num("vocab_size").unwrap_or(0),
        context_length: num("max_position_embeddings").unwrap_or(0),
    })
}

/// (name, dtype, elements) of every tensor in a safetensors file, from its header only.
fn safetensors_header(file: &Path) -> Result<Vec<(String, String, u64)>, String> {
    use std::io::Read;
    let bad = |m: String| format!("{}: {m}", file.display());
    let mut f = std::fs::File::open(file).map_err(|e| bad(e.to_string()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad(format!("header of {len} bytes is not plausible")));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(|e| bad(e.to_string()))?;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&buf).map_err(|e| bad(format!("header: {e}")))?;
    Ok(header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let dtype = v["dtype"].as_str().unwrap_or("F32").to_owned();
            let elements = v["shape"]
                .as_array()
                .map_or(0, |s| s.iter().filter_map(Value::as_u64).product());
            (k, dtype, elements)
        })
        .collect())
}

/// Bytes per element of an MLX load dtype name.
fn dtype_bytes(dtype: &str) -> u64 {
    match dtype {
        "float32" => 4,
        _ => 2,
    }
}

/// The load dtype the MLX providers choose (mirrors `plugins/llm` `load_options`):
/// the registry's or `--dtype` if set, else float32 on CPU and bfloat16 on GPU.
pub fn mlx_dtype(requested: Option<&str>, backend: &str) -> String {
    match requested {
        Some(d) => d.to_owned(),
        None if backend == "mlx-cpu" => "float32".into(),
        None => "bfloat16".into(),
    }
}

/// Estimate the memory model `f` takes when served by `plugin` (on `backend`) for
/// `batch` sequences of `context` tokens.
pub fn estimate(
    f: &Facts,
    plugin: &str,
    backend: &str,
    dtype: Option<&str>,
    context: u64,
    batch: u64,
) -> Estimate {
    let context = context.max(1);
    let batch = batch.max(1);
    let kv_per_token = 2 * f.layers * f.kv_heads * f.head_dim;
    let (weights_as, weights, kv, runtime) = if plugin.starts_with("ggml") {
        // The GGUF is memory-mapped as is (every page is read while decoding); an f16 KV
        // cache of at least 4096 cells shared by all sequences (sliding-window layers
        // get full-size caches too with 16 unified sequences); the vocabulary's tables
        // (~300 bytes a token) and the compute buffers a prefill chunk touches.
        let cells = (context * batch)
            .div_ceil(256)
            .saturating_mul(256)
            .max(GGML_MIN_KV_CELLS);
        let tokens = (context * batch).min(PREFILL_CHUNK + GGML_MAX_SEQS);
        let runtime = GGML_BASE + GGML_PER_VOCAB * f.vocab + tokens * f.hidden * 48;
        (
            format!("{} (memory-mapped GGUF)", f.quantization),
            f.file_bytes,
            cells * kv_per_token * 2,
            runtime,
        )
    } else if plugin.contains("embed") {
        // Float32 weights; per batch of texts (up to 256): hidden states, the 4×hidden
        // feed-forward activations and the freed ones MLX keeps cached for reuse (the
        // batches of a request run in parallel on the CPU), and attention scores.
        let rows = batch.min(256) * context;
        let act = rows * (f.hidden * 72 + context * 48);
        ("float32".into(), f.parameters * 4, 0, MLX_BASE + act)
    } else {
        let dt = mlx_dtype(dtype, backend);
        let quantized_kept = backend != "mlx-cpu" && f.quantization.starts_with("mlx-");
        let weights = if quantized_kept {
            f.file_bytes
        } else {
            f.parameters * dtype_bytes(&dt)
        };
        let steps = context.div_ceil(256) * 256;
        let kv = kv_per_token * steps * batch * dtype_bytes(&dt);
        // A GGUF is converted one tensor at a time: the largest (the embedding table)
        // exists once more in float32 at the peak. Activations of one prefill chunk and
        // its logits.
        let transient = if f.format == "gguf" {
            f.vocab * f.hidden * 4
        } else {
            0
        };
        let chunk = PREFILL_CHUNK.min(context) * batch;
        let act = chunk * (f.hidden * 48 + f.vocab * 4);
        (
            if quantized_kept {
                f.quantization.clone()
            } else {
                dt
            },
            weights,
            kv,
            MLX_BASE + transient + act,
        )
    };
    Estimate {
        plugin: plugin.to_owned(),
        weights_as,
        weights_bytes: weights,
        kv_cache_bytes: kv,
        runtime_bytes: runtime,
        total_bytes: weights + kv + runtime,
        context,
        batch,
    }
}

/// An estimate for a model that is not downloaded, from the registry's `size_bytes`
/// (or `parameters` at 2 bytes each): weights plus 15% for cache and runtime.
pub fn estimate_from_registry(
    plugin: &str,
    size_bytes: Option<u64>,
    parameters: Option<u64>,
) -> Option<Estimate> {
    let weights = size_bytes.or(parameters.map(|p| p * 2))?;
    let runtime = weights * 15 / 100;
    Some(Estimate {
        plugin: plugin.to_owned(),
        weights_as: "as published (not downloaded; from the registry's size)".into(),
        weights_bytes: weights,
        kv_cache_bytes: 0,
        runtime_bytes: runtime,
        total_bytes: weights + runtime,
        context: 0,
        batch: 1,
    })
}

/// Effective bytes per second a provider streams weights at while decoding one sequence,
/// measured on the 2-core x86-64 reference machine (docs/device-fit.md): SmolLM2-135M
/// decodes at ~65 tok/s from its 98 MB GGUF on ggml and ~10 tok/s from 538 MB of f32
/// weights on MLX's CPU path.
fn decode_bandwidth(plugin: &str, backend: &str) -> Option<f64> {
    match (plugin, backend) {
        (p, "ggml-cpu") if p.starts_with("ggml") => Some(6.4e9),
        (_, "mlx-cpu") => Some(5.4e9),
        _ => None,
    }
}

/// Expected decode speed (tokens/s, one sequence) on this kind of machine, scaled by
/// physical cores relative to the 2-core reference; `None` where not measured (GPUs).
pub fn expected_decode_tps(e: &Estimate, backend: &str, physical_cores: usize) -> Option<f64> {
    let bw = decode_bandwidth(&e.plugin, backend)?;
    let scale = (physical_cores.max(1) as f64 / 2.0).min(4.0);
    Some(bw * scale / (e.weights_bytes.max(1) as f64))
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
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else {
        format!("{:.0} MB", b / 1e6)
    }
}

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
