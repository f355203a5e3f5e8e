//! The GGUF container: header, metadata, tensor table, tensor data.
//!
//! Dequantization ([`crate::quants`]) covers the float types, the legacy quants and the
//! K-quants; any other type is refused with "unsupported quant type X".

use crate::{quants, GgufError};
use std::{collections::BTreeMap, path::Path};

/// A metadata value.
#[derive(Debug, Clone)]
pub enum Value {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Float(f) => Some(*f as i64),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types this reader knows by name (for messages) and size.
pub fn type_name(t: u32) -> String {
    let names = [
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (6, "Q5_0"),
        (7, "Q5_1"),
        (8, "Q8_0"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (12, "Q4_K"),
        (13, "Q5_K"),
        (14, "Q6_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (30, "BF16"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    names
        .iter()
        .find(|(n, _)| *n == t)
        .map_or_else(|| format!("type {t}"), |(_, s)| (*s).to_owned())
}

/// One tensor's entry in the table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major shape (GGUF lists dimensions innermost first; this is reversed).
    pub shape: Vec<usize>,
    pub ggml_type: u32,
    pub offset: usize,
}

impl TensorInfo {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed GGUF file (memory-mapped).
pub struct Gguf {
    pub path: std::path::PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    /// Each metadata pair's bytes in the file (key, type and value), in file order: a
    /// writer copies them verbatim, so value types survive a rewrite.
    raw_kv: Vec<(String, std::ops::Range<usize>)>,
    data_start: usize,
    map: memmap2::Mmap,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// `buf` is only the start of the file (a Range read): running past it is "truncated",
    /// so the caller reads more, never a verdict on the file.
    prefix: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(TRUNCATED)?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in a string".into())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::Int(i64::from(self.take(1)?[0])),
            1 => Value::Int(i64::from(self.take(1)?[0] as i8)),
            2 => Value::Int(i64::from(u16::from_le_bytes(
                self.take(2)?.try_into().unwrap(),
            ))),
            3 => Value::Int(i64::from(i16::from_le_bytes(
                self.take(2)?.try_into().unwrap(),
            ))),
            4 => Value::Int(i64::from(self.u32()?)),
            5 => Value::Int(i64::from(self.u32()? as i32)),
            6 => Value::Float(f64::from(f32::from_le_bytes(
                self.take(4)?.try_into().unwrap(),
            ))),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err("arrays nested too deeply".into());
                }
                let ety = self.u32()?;
                let n = self.u64()?;
                // Each element takes at least `min_size(ety)` bytes of the file: a claimed
                // length the rest of the file cannot hold is refused before anything is
                // allocated for it, and no real model needs arrays past MAX_ARRAY_LEN.
                if n > MAX_ARRAY_LEN as u64 {
                    return Err(format!(
                        "array of {n} elements; this reader takes at most {MAX_ARRAY_LEN}"
                    ));
                }
                let left = (self.buf.len() - self.pos) as u64;
                if n.saturating_mul(min_size(ety)) > left {
                    return Err(if self.prefix {
                        TRUNCATED.into()
                    } else {
                        format!(
                            "array of {n} elements does not fit in the {left} bytes left in the file"
                        )
                    });
                }
                let n = n as usize;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::Int(self.u64()? as i64),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            t => return Err(format!("unknown metadata value type {t}")),
        })
    }
}

const TRUNCATED: &str = "file is truncated";

/// Most elements of one metadata array (the largest real ones, token lists and merges,
/// hold a few hundred thousand).
pub const MAX_ARRAY_LEN: usize = 1 << 22;

/// The fewest bytes one metadata value of type `ty` takes in the file.
fn min_size(ty: u32) -> u64 {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        // A string's length, a nested array's type and length, 64-bit numbers.
        8 | 10..=12 => 8,
        9 => 12,
        // Unknown types fail when the first element is read.
        _ => 1,
    }
}

/// Bytes of `n` elements of a supported type.
pub(crate) fn byte_size(ty: u32, n: usize) -> Option<usize> {
    let (block, bytes) = quants::block_layout(ty)?;
    (n / block).checked_mul(bytes)
}

/// The metadata of a GGUF file from its first bytes (a download's prefix): `Ok(None)` when
/// `buf` ends before the metadata does, `Err` when it is not GGUF.
pub fn metadata_from_prefix(buf: &[u8]) -> Result<Option<BTreeMap<String, Value>>, String> {
    let mut r = Reader {
        buf,
        pos: 0,
        prefix: true,
    };
    let short = |e: String| e == TRUNCATED;
    match r.take(4) {
        Ok(m) if m == b"GGUF" => {}
        Ok(_) => return Err("not a GGUF file (bad magic)".into()),
        Err(_) => return Ok(None),
    }
    let head = (|| -> Result<(u32, u64), String> {
        Ok((r.u32()?, {
            r.u64()?;
            r.u64()?
        }))
    })();
    let (version, n_kv) = match head {
        Ok(h) => h,
        Err(e) if short(e.clone()) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2, 3)"));
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let kv = (|| -> Result<(String, Value), String> {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r.value(ty, 0)?;
            Ok((key, v))
        })();
        match kv {
            Ok((k, v)) => {
                metadata.insert(k, v);
            }
            Err(e) if short(e.clone()) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(metadata))
}

impl Gguf {
    /// Open and parse the header, metadata and tensor table.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = std::fs::File::open(path).map_err(|e| GgufError::Io {
            file: path.into(),
            msg: e.to_string(),
        })?;
        // SAFETY: the file is opened read-only; a concurrent truncation would fault, as with
        // any mmap-based model loader (llama.cpp, MLX, safetensors).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| GgufError::Io {
            file: path.into(),
            msg: e.to_string(),
        })?;
        let bad = |msg: String| GgufError::Invalid {
            file: path.into(),
            msg,
        };
        let mut r = Reader {
            buf: &map,
            pos: 0,
            prefix: false,
        };
        if r.take(4).map_err(&bad)? != b"GGUF" {
            return Err(bad("not a GGUF file (bad magic)".into()));
        }
        let version = r.u32().map_err(&bad)?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!(
                "GGUF version {version} is not supported (2, 3)"
            )));
        }
        let n_tensors = r.u64().map_err(&bad)? as usize;
        let n_kv = r.u64().map_err(&bad)? as usize;
        let mut metadata = BTreeMap::new();
        let mut raw_kv = Vec::new();
        for _ in 0..n_kv {
            let start = r.pos;
            let key = r.string().map_err(&bad)?;
            let ty = r.u32().map_err(&bad)?;
            let v = r
                .value(ty, 0)
                .map_err(|e| bad(format!("metadata `{key}`: {e}")))?;
            raw_kv.push((key.clone(), start..r.pos));
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = r.string().map_err(&bad)?;
            let nd = r.u32().map_err(&bad)? as usize;
            if nd > 4 {
                return Err(bad(format!("tensor `{name}` has {nd} dimensions")));
            }
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                dims.push(r.u64().map_err(&bad)? as usize);
            }
            dims.reverse();
            let ggml_type = r.u32().map_err(&bad)?;
            let offset = r.u64().map_err(&bad)? as usize;
            tensors.push(TensorInfo {
                name,
                shape: dims,
                ggml_type,
                offset,
            });
        }
        let align = metadata
            .get("general.alignment")
            .and_then(Value::as_i64)
            .unwrap_or(32)
            .max(1) as usize;
        let data_start = r.pos.div_ceil(align) * align;
        let g = Self {
            path: path.into(),
            version,
            metadata,
            tensors,
            raw_kv,
            data_start,
            map,
        };
        for t in &g.tensors {
            let elements = t
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| {
                    bad(format!(
                        "tensor `{}`: shape {:?} overflows",
                        t.name, t.shape
                    ))
                })?;
            if quants::is_supported(t.ggml_type) && byte_size(t.ggml_type, elements).is_none() {
                return Err(bad(format!(
                    "tensor `{}`: {elements} elements of {} overflow the file's address space",
                    t.name,
                    type_name(t.ggml_type)
                )));
            }
            if let Some(size) = byte_size(t.ggml_type, elements) {
                // Checked: an offset or size near 2^64 must not wrap past the test.
                let end = g
                    .data_start
                    .checked_add(t.offset)
                    .and_then(|e| e.checked_add(size));
                if end.is_none_or(|e| e > g.map.len()) {
                    return Err(bad(format!(
                        "tensor `{}` extends past the end of the file (truncated download?)",
                        t.name
                    )));
                }
            }
        }
        Ok(g)
    }

    /// Metadata value `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Metadata string `key`.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// Metadata integer `key`, or an error naming it.
    pub fn int(&self, key: &str) -> Result<i64, GgufError> {
        self.get(key)
            .and_then(Value::as_i64)
            .ok_or_else(|| GgufError::Invalid {
                file: self.path.clone(),
                msg: format!("missing metadata `{key}`"),
            })
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.str("general.architecture")
            .ok_or_else(|| GgufError::Invalid {
                file: self.path.clone(),
                msg: "missing metadata `general.architecture`".into(),
            })
    }

    /// Tensor types present that the MLX provider cannot read, with an example tensor.
    pub fn unsupported_types(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for t in &self.tensors {
            let name = type_name(t.ggml_type);
            if !quants::is_supported(t.ggml_type) && !out.iter().any(|(n, _)| *n == name) {
                out.push((name, t.name.clone()));
            }
        }
        out
    }

    /// The metadata pairs as stored: (key, the pair's bytes), in file order.
    pub fn raw_metadata(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.raw_kv
            .iter()
            .map(|(k, r)| (k.as_str(), &self.map[r.clone()]))
    }

    fn bytes(&self, t: &TensorInfo) -> &[u8] {
        let size = byte_size(t.ggml_type, t.elements()).unwrap_or(0);
        let start = self.data_start + t.offset;
        &self.map[start..start + size]
    }

    /// The tensor as an f32 array (dequantized), in row-major `shape`.
    pub fn to_f32(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        // Only types whose size `open` checked against the file are read (and allocated
        // for): an unsupported one may claim any number of elements (found by fuzzing).
        let (Some((block, _)), Some(_)) = (
            quants::block_layout(t.ggml_type),
            byte_size(t.ggml_type, t.elements()),
        ) else {
            return Err(GgufError::UnsupportedQuant {
                file: self.path.clone(),
                tensor: t.name.clone(),
                ty: type_name(t.ggml_type),
            });
        };
        // ggml quantizes rows: a row of a blocked type is whole blocks.
        let row = t.shape.last().copied().unwrap_or(1);
        if !row.is_multiple_of(block) {
            return Err(GgufError::Invalid {
                file: self.path.clone(),
                msg: format!(
                    "tensor `{}` ({}): rows of {row} elements are not whole blocks of {block}",
                    t.name,
                    type_name(t.ggml_type)
                ),
            });
        }
        let mut out = Vec::with_capacity(t.elements());
        quants::dequantize(t.ggml_type, self.bytes(t), &mut out);
        Ok(out)
    }

    /// Metadata as JSON (large arrays such as the vocabulary summarised), for `info`.
    pub fn metadata_summary(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.metadata {
            let j = match v {
                Value::Array(a) if a.len() > 16 => {
                    serde_json::json!(format!("[{} values]", a.len()))
                }
                Value::Str(s) if s.len() > 200 => {
                    serde_json::json!(format!("{}…", s.chars().take(200).collect::<String>()))
                }
                other => to_json(other),
            };
            m.insert(k.clone(), j);
        }
        serde_json::Value::Object(m)
    }
}

/// A metadata value as JSON.
pub fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Int(i) => (*i).into(),
        Value::Float(f) => (*f).into(),
        Value::Bool(b) => (*b).into(),
        Value::Str(s) => s.clone().into(),
        Value::Array(a) => a.iter().map(to_json).collect(),
    }
}
