//! mlx-lm's checkpoint layout, written a tensor at a time: `model.safetensors` (or
//! `model-0000i-of-0000n.safetensors` shards of at most 5 GiB, as mlx-lm's
//! `make_shards`) and `model.safetensors.index.json`. Each shard's tensor data goes to a
//! scratch file as it comes; the shard is assembled (header, then the data) when full.

use mlx_rs::{Array, Dtype};
use serde_json::{json, Value as Json};
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

/// mlx-lm's `MAX_FILE_SIZE_GB`.
pub const MAX_SHARD_BYTES: u64 = 5 << 30;

struct Entry {
    name: String,
    dtype: &'static str,
    shape: Vec<i32>,
    start: u64,
    end: u64,
}

struct Open {
    data: BufWriter<File>,
    path: PathBuf,
    entries: Vec<Entry>,
    size: u64,
}

/// Writes the weights into a folder.
pub struct ShardWriter {
    dir: PathBuf,
    max_shard: u64,
    /// Finished shards: (assembled file, its tensor names).
    done: Vec<(PathBuf, Vec<String>)>,
    open: Option<Open>,
    total: u64,
}

fn io(p: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", p.display())
}

impl ShardWriter {
    /// A writer into `dir` (which exists), with shards of at most `max_shard` bytes.
    pub fn new(dir: &Path, max_shard: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            max_shard,
            done: Vec::new(),
            open: None,
            total: 0,
        }
    }

    /// Bytes of tensor data written so far.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Append tensor `name`.
    pub fn add(&mut self, name: &str, a: &Array) -> Result<(), String> {
        a.eval().map_err(|e| format!("tensor `{name}`: {e}"))?;
        let (dtype, bytes) = raw(a)
            .ok_or_else(|| format!("tensor `{name}`: dtype {:?} cannot be saved", a.dtype()))?;
        let n = bytes.len() as u64;
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.size > 0 && o.size + n > self.max_shard)
        {
            self.close()?;
        }
        if self.open.is_none() {
            let path = self.dir.join(format!(".shard-{}.data", self.done.len()));
            let f = File::create(&path).map_err(|e| io(&path, e))?;
            self.open = Some(Open {
                data: BufWriter::with_capacity(1 << 20, f),
                path,
                entries: Vec::new(),
                size: 0,
            });
        }
        let o = self.open.as_mut().expect("opened above");
        o.data.write_all(bytes).map_err(|e| io(&o.path, e))?;
        o.entries.push(Entry {
            name: name.to_owned(),
            dtype,
            shape: a.shape().to_vec(),
            start: o.size,
            end: o.size + n,
        });
        o.size += n;
        self.total += n;
        Ok(())
    }

    /// Assemble the open shard: header, then its data.
    fn close(&mut self) -> Result<(), String> {
        let Some(mut o) = self.open.take() else {
            return Ok(());
        };
        o.data.flush().map_err(|e| io(&o.path, e))?;
        drop(o.data);
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "mlx"}));
        for e in &o.entries {
            header.insert(
                e.name.clone(),
                json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [e.start, e.end]}),
            );
        }
        let mut h = serde_json::to_vec(&Json::Object(header)).expect("json");
        // The data starts 8-aligned (the safetensors format pads the header with spaces).
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let path = self
            .dir
            .join(format!(".shard-{}.safetensors", self.done.len()));
        let write = || -> std::io::Result<()> {
            let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
            out.write_all(&(h.len() as u64).to_le_bytes())?;
            out.write_all(&h)?;
            std::io::copy(&mut File::open(&o.path)?, &mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        write().map_err(|e| io(&path, e))?;
        std::fs::remove_file(&o.path).map_err(|e| io(&o.path, e))?;
        self.done
            .push((path, o.entries.into_iter().map(|e| e.name).collect()));
        Ok(())
    }

    /// Name the shards as mlx-lm does and write the index; returns the files written.
    pub fn finish(mut self, parameters: u64) -> Result<Vec<PathBuf>, String> {
        self.close()?;
        let n = self.done.len();
        let mut map = std::collections::BTreeMap::new();
        let mut files = Vec::new();
        for (i, (tmp, names)) in self.done.iter().enumerate() {
            let name = if n == 1 {
                "model.safetensors".to_owned()
            } else {
                format!("model-{:05}-of-{n:05}.safetensors", i + 1)
            };
            let dst = self.dir.join(&name);
            std::fs::rename(tmp, &dst).map_err(|e| io(&dst, e))?;
            for t in names {
                map.insert(t.clone(), name.clone());
            }
            files.push(dst);
        }
        let index = json!({
            "metadata": {"total_size": self.total, "total_parameters": parameters},
            "weight_map": map,
        });
        let p = self.dir.join("model.safetensors.index.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&index).expect("json"))
            .map_err(|e| io(&p, e))?;
        files.push(p);
        Ok(files)
    }
}

/// The safetensors dtype name and the bytes of an evaluated, row-major array.
pub(crate) fn raw(a: &Array) -> Option<(&'static str, &[u8])> {
    fn bytes<T>(s: &[T]) -> &[u8] {
        // SAFETY: plain numeric types without padding; the length is the slice's.
        unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), std::mem::size_of_val(s)) }
    }
    Some(match a.dtype() {
        Dtype::Float32 => ("F32", bytes(a.as_slice::<f32>())),
        Dtype::Float16 => ("F16", bytes(a.as_slice::<half::f16>())),
        Dtype::Bfloat16 => ("BF16", bytes(a.as_slice::<half::bf16>())),
        Dtype::Uint32 => ("U32", bytes(a.as_slice::<u32>())),
        Dtype::Uint8 => ("U8", a.as_slice::<u8>()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_at_the_limit_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::new(dir.path(), 64);
        let a = Array::from_slice(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], &[2, 4]); // 32 B
        let b = Array::from_slice(&[7u32; 6], &[6]); // 24 B
        let c = Array::from_slice(&[half::bf16::from_f32(0.5); 12], &[3, 4]); // 24 B
        w.add("a", &a).unwrap();
        w.add("b", &b).unwrap();
        w.add("c", &c).unwrap(); // 80 B > 64: a second shard
        assert_eq!(w.bytes(), 80);
        let files = w.finish(26).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json"
            ]
        );
        let index: Json = serde_json::from_slice(&std::fs::read(&files[2]).unwrap()).unwrap();
        assert_eq!(index["weight_map"]["c"], "model-00002-of-00002.safetensors");
        assert_eq!(index["metadata"]["total_size"], 80);
        let bytes = std::fs::read(&files[0]).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("b").unwrap().data(), bytes_of_u32(&[7; 6]));
        assert_eq!(st.tensor("a").unwrap().shape(), [2, 4]);
        let bytes = std::fs::read(&files[1]).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("c").unwrap().dtype(), safetensors::Dtype::BF16);
        assert!(
            !dir.path().join(".shard-0.data").exists(),
            "scratch files are removed"
        );
    }

    fn bytes_of_u32(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}
