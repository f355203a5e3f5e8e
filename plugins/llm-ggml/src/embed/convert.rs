//! The GGUF twin of a BERT checkpoint in the host's cache: `<cache>/ggml-bert/<hash>.gguf`,
//! the hash over what the conversion reads (config, tokenizer, weights) and how it writes
//! (converter version, float type). Written once, whole or not at all; a changed
//! checkpoint gets a new name. Hashing the weights takes ~0.2 s per 100 MB, so the hash
//! is remembered under the inputs' paths, sizes and modification times
//! (`<cache>/ggml-bert/stamps/`): an unchanged checkpoint is not read again.

use crate::err;
use gguf::writer::TensorType;
use plugin_api::{ErrorKind, ModelSpec, PluginError};
use sha2::{Digest, Sha256};
use std::{
    io::Read,
    path::{Path, PathBuf},
};

/// Bumped whenever the converter writes something different for the same input.
const CONVERTER_VERSION: &str = "mlxengine-bert-gguf-2";

/// The float type the registry's `dtype` asks for: float32 by default (llama.cpp's f32
/// products keep activations in f32, and were the fastest on a 2-core AVX2 EPYC: 256
/// sentences at 146/s, against 83/s with f16 weights and 96/s with Q8_0); float16 halves
/// the weights' memory.
pub fn float_type(spec: &ModelSpec) -> Result<TensorType, PluginError> {
    match spec.dtype.as_ref().map(|d| d.as_str()).into_option() {
        None | Some("float32" | "f32") => Ok(TensorType::F32),
        Some("float16" | "f16") => Ok(TensorType::F16),
        Some(other) => Err(err(
            ErrorKind::INVALID_REQUEST,
            &spec.id,
            format!("dtype `{other}` is not supported by ggml embeddings (float32, float16)"),
        )),
    }
}

/// The name a float type is reported under.
pub fn type_name(ty: TensorType) -> &'static str {
    match ty {
        TensorType::F32 => "float32",
        TensorType::F16 => "float16",
        TensorType::Q8_0 => "q8_0",
    }
}

/// The files a conversion reads.
pub const INPUTS: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// The GGUF of the checkpoint in `dir` as `ty`, converted now if the cache lacks it.
pub fn converted(dir: &Path, cache: &Path, ty: TensorType) -> Result<PathBuf, String> {
    let folder = cache.join("ggml-bert");
    let key = remembered_key(dir, ty, &folder.join("stamps"))?;
    let file = folder.join(format!("{key}.gguf"));
    if file.is_file() {
        return Ok(file);
    }
    std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    sweep_partials(&folder);
    let opts = gguf::bert::Options {
        ty,
        pooling: gguf::bert::pooling::NONE,
    };
    gguf::bert::convert(dir, &file, opts).map_err(|e| e.to_string())?;
    Ok(file)
}

/// [`key`], read from `stamps` when the inputs' paths, sizes and modification times are
/// those it was computed for (and saved there otherwise, unless an input changed while it
/// was hashed; a stamp that cannot be written only costs the next load the hashing). An
/// edit that keeps a file's size and modification time (`touch -r`) is not seen.
fn remembered_key(dir: &Path, ty: TensorType, stamps: &Path) -> Result<String, String> {
    let before = stat_hash(dir, ty)?;
    let stamp = stamps.join(&before);
    if let Ok(k) = std::fs::read_to_string(&stamp) {
        if k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(k);
        }
    }
    let k = key(dir, ty)?;
    if stat_hash(dir, ty)? != before {
        return Ok(k); // changed meanwhile: hashed again next time
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = stamp.with_extension(format!("{}.{n}.partial", std::process::id()));
    let saved = std::fs::create_dir_all(stamps)
        .and_then(|()| std::fs::write(&tmp, &k))
        .and_then(|()| std::fs::rename(&tmp, &stamp));
    if saved.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(k)
}

/// Hex SHA-256 over the converter version, the float type and each input's real path,
/// size and modification time.
fn stat_hash(dir: &Path, ty: TensorType) -> Result<String, String> {
    let mut h = Sha256::new();
    h.update(CONVERTER_VERSION.as_bytes());
    h.update([ty.ggml_type() as u8]);
    for name in INPUTS {
        let path = dir.join(name);
        let real = std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", path.display()))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(real.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(meta.len().to_le_bytes());
        h.update(mtime.to_le_bytes());
    }
    Ok(hex(&h.finalize()))
}

/// Remove what killed conversions left in `folder`: `.partial` files untouched for an
/// hour (a live conversion writes its file continuously and takes seconds).
fn sweep_partials(folder: &Path) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if stale && e.file_name().to_string_lossy().ends_with(".partial") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 over the converter version, the float type and each input file's name and
/// bytes. A file the Hugging Face cache stores as a link to a blob named by its own
/// SHA-256 is keyed by that name instead of being read.
fn key(dir: &Path, ty: TensorType) -> Result<String, String> {
    let mut h = Sha256::new();
    h.update(CONVERTER_VERSION.as_bytes());
    h.update([ty.ggml_type() as u8]);
    for name in INPUTS {
        let path = dir.join(name);
        h.update(name.as_bytes());
        h.update([0]);
        let real = std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let blob = real
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .filter(|_| real.parent().is_some_and(|p| p.ends_with("blobs")));
        match blob {
            Some(sha) => h.update(sha.as_bytes()),
            None => {
                let mut f =
                    std::fs::File::open(&real).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f
                        .read(&mut buf)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
        }
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_contents_and_type() {
        let dir = std::env::temp_dir().join(format!("ggml-bert-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in INPUTS {
            std::fs::write(dir.join(f), f).unwrap();
        }
        let a = key(&dir, TensorType::F32).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a, key(&dir, TensorType::F32).unwrap());
        assert_ne!(a, key(&dir, TensorType::F16).unwrap());
        let stamps = dir.join("stamps");
        assert_eq!(remembered_key(&dir, TensorType::F32, &stamps).unwrap(), a);
        assert_eq!(std::fs::read_dir(&stamps).unwrap().count(), 1);
        // Remembered: a stamp's word is taken while the inputs look the same...
        let stamp = std::fs::read_dir(&stamps)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&stamp, "f".repeat(64)).unwrap();
        assert_eq!(
            remembered_key(&dir, TensorType::F32, &stamps).unwrap(),
            "f".repeat(64)
        );
        // ...and a changed input (another size and time) is hashed again.
        std::fs::write(dir.join("tokenizer.json"), "changed").unwrap();
        assert_ne!(a, key(&dir, TensorType::F32).unwrap());
        assert_eq!(
            remembered_key(&dir, TensorType::F32, &stamps).unwrap(),
            key(&dir, TensorType::F32).unwrap()
        );
        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        let e = key(&dir, TensorType::F32).unwrap_err();
        assert!(e.contains("model.safetensors"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
