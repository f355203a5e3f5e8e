//! Shape facts of a model, read from its files' headers (GGUF tensor tables and
//! metadata, safetensors headers, `config.json`) without loading any weights: what the
//! host shows in `info` and what each plugin's memory estimate starts from.

use gguf::Gguf;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

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
    /// Key/value heads (attention heads for encoders, which keep no cache).
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

/// Facts of the model at `path`: a `.gguf` file, or a directory with `config.json` and
/// safetensors (or one GGUF). Errors name the file.
pub fn facts(path: &Path) -> Result<Facts, String> {
    if let Some(g) = gguf::model_file(path) {
        return gguf_facts(&g);
    }
    if path.join("model_index.json").is_file() {
        return diffusers_facts(path);
    }
    safetensors_facts(path)
}

/// A diffusers pipeline folder (`model_index.json`): the safetensors of its component
/// folders (one variant each: the plain files, else `fp16`), summed; shape facts are the
/// first text encoder's (`hidden`, `layers`, `context_length`).
fn diffusers_facts(dir: &Path) -> Result<Facts, String> {
    let index = dir.join("model_index.json");
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(&index).map_err(|e| format!("{}: {e}", index.display()))?,
    )
    .map_err(|e| format!("{}: {e}", index.display()))?;
    let components: Vec<&String> = v
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, c)| {
                    !k.starts_with('_') && c.as_array().is_some_and(|a| a[0].is_string())
                })
                .map(|(k, _)| k)
                .collect()
        })
        .unwrap_or_default();
    let (mut file_bytes, mut params) = (0u64, 0u64);
    let mut dtypes: Vec<(u64, String)> = Vec::new();
    for c in components {
        let sub = dir.join(c);
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        let files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        let plain: Vec<&PathBuf> = files
            .iter()
            .filter(|p| !p.to_string_lossy().ends_with(".fp16.safetensors"))
            .collect();
        let chosen: Vec<&PathBuf> = if plain.is_empty() {
            files.iter().collect()
        } else {
            plain
        };
        for f in chosen {
            file_bytes =
                file_bytes.saturating_add(std::fs::metadata(f).map_err(|e| e.to_string())?.len());
            for (_, dtype, n) in safetensors_header(f)? {
                params = params.saturating_add(n);
                match dtypes.iter_mut().find(|(_, d)| *d == dtype) {
                    Some((c, _)) => *c = c.saturating_add(n),
                    None => dtypes.push((n, dtype)),
                }
            }
        }
    }
    if params == 0 {
        return Err(format!("{}: no component safetensors", dir.display()));
    }
    dtypes.sort();
    let text_cfg = dir.join("text_encoder").join("config.json");
    let text: Value = std::fs::read_to_string(&text_cfg)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let num = |k: &str| text.get(k).and_then(Value::as_u64).unwrap_or(0);
    Ok(Facts {
        format: "diffusers".into(),
        file_bytes,
        parameters: params,
        quantization: dtype_label(dtypes.last().map(|(_, d)| d.as_str())),
        layers: num("num_hidden_layers"),
        kv_heads: 0,
        head_dim: 0,
        hidden: num("hidden_size"),
        vocab: num("vocab_size"),
        context_length: num("max_position_embeddings"),
    })
}

/// The storage name of a safetensors dtype (`F32` → `float32`).
fn dtype_label(d: Option<&str>) -> String {
    match d {
        Some("F32") => "float32".into(),
        Some("F16") => "float16".into(),
        Some("BF16") => "bfloat16".into(),
        Some(other) => other.to_lowercase(),
        None => String::new(),
    }
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
            Some((c, _)) => *c = c.saturating_add(t.elements() as u64),
            None => types.push((t.elements() as u64, name)),
        }
    }
    types.sort();
    Ok(Facts {
        format: "gguf".into(),
        file_bytes: std::fs::metadata(file).map_err(|e| e.to_string())?.len(),
        // Saturating: the counts are the file's claims (found by fuzzing).
        parameters: g
            .tensors
            .iter()
            .fold(0u64, |a, t| a.saturating_add(t.elements() as u64)),
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

fn safetensors_facts(dir: &Path) -> Result<Facts, String> {
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
        file_bytes =
            file_bytes.saturating_add(std::fs::metadata(f).map_err(|e| e.to_string())?.len());
        for (name, dtype, elements) in safetensors_header(f)? {
            // Packed quantized weights hold 32/bits values per u32; scales/biases are
            // not parameters.
            let n = match (bits, dtype.as_str()) {
                (Some(b), "U32") => elements.saturating_mul(32 / b.max(1)),
                (Some(_), _) if name.ends_with(".scales") || name.ends_with(".biases") => 0,
                _ => elements,
            };
            params = params.saturating_add(n);
            match dtypes.iter_mut().find(|(_, d)| *d == dtype) {
                Some((c, _)) => *c = c.saturating_add(n),
                None => dtypes.push((n, dtype)),
            }
        }
    }
    dtypes.sort();
    let quantization = match bits {
        Some(b) => format!("mlx-{b}bit"),
        None => dtype_label(dtypes.last().map(|(_, d)| d.as_str())),
    };
    let heads = num("num_attention_heads").unwrap_or(1).max(1);
    let hidden = num("hidden_size").unwrap_or(0);
    Ok(Facts {
        format: "safetensors".into(),
        file_bytes,
        parameters: params,
        quantization,
        layers: num("num_hidden_layers").unwrap_or(0),
        kv_heads: num("num_key_value_heads").unwrap_or(heads),
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
            let elements = v["shape"].as_array().map_or(0, |s| {
                s.iter()
                    .filter_map(Value::as_u64)
                    .fold(1u64, u64::saturating_mul)
            });
            (k, dtype, elements)
        })
        .collect())
}
