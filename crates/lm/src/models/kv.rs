//! The KV cache and attention over it: keys and values of one layer, stored in the
//! model's dtype, in a float dtype of their own, or MLX affine-quantized along the head
//! dimension (the `kv_cache` option: mlx-lm's `QuantizedKVCache`; attention reads the
//! packed cache through `dequantize`, the products mlx-lm's `quantized_matmul` computes).

use mlx_rs::{
    fast,
    ops::indexing::{IndexMutOp, IndexOp},
    Array, Dtype,
};

/// Position offsets of the rows of a batch: one shared offset (single sequence or equal
/// lengths), or one per row (left-padded batches: offset − padding).
pub enum Positions {
    Shared(i32),
    PerRow {
        offsets: Array,
        mask: Array,
    },
    /// Each token's own position per RoPE section ((S, B, L) int32: Qwen2-VL's temporal,
    /// height and width positions of a prompt with images), the padding mask where rows
    /// are padded (else causal).
    Explicit {
        ids: Array,
        mask: Option<Array>,
    },
}

impl Positions {
    /// The additive mask of padded rows, if any.
    fn row_mask(&self) -> Option<&Array> {
        match self {
            Positions::PerRow { mask, .. } => Some(mask),
            Positions::Explicit { mask, .. } => mask.as_ref(),
            Positions::Shared(_) => None,
        }
    }
}

/// How a cache stores keys and values (the model's `kv_cache` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvStore {
    /// In the dtype the model computes in.
    #[default]
    Model,
    /// In this float dtype (cast to the model's for attention).
    Float(Dtype),
    /// MLX affine-quantized along the head dimension, from the end of the first model
    /// call on (as mlx-lm converts its cache after the first prefill step).
    Quantized { bits: i32, group_size: i32 },
}

/// `kv_cache` values: llama.cpp's names, so one registry entry means the same on both
/// providers. q8_0 / q4_0 are blocks of 32 with one f16 scale in llama.cpp; here groups
/// of 32 with a scale and a bias in the model's dtype (the nearest MLX affine setting).
pub const KV_CACHE_TYPES: [&str; 5] = ["f32", "f16", "bf16", "q8_0", "q4_0"];

impl KvStore {
    /// The store a model's registry options ask for (`kv_cache`; absent: the model's dtype).
    pub fn from_options(options: &str) -> Result<Self, String> {
        let v: serde_json::Value = match options.trim() {
            "" => return Ok(KvStore::Model),
            s => serde_json::from_str(s).map_err(|e| format!("options are not JSON: {e}"))?,
        };
        let Some(kv) = v.get("kv_cache") else {
            return Ok(KvStore::Model);
        };
        Ok(match kv.as_str() {
            Some("f32") => KvStore::Float(Dtype::Float32),
            Some("f16") => KvStore::Float(Dtype::Float16),
            Some("bf16") => KvStore::Float(Dtype::Bfloat16),
            Some("q8_0") => KvStore::Quantized {
                bits: 8,
                group_size: 32,
            },
            Some("q4_0") => KvStore::Quantized {
                bits: 4,
                group_size: 32,
            },
            _ => {
                return Err(format!(
                    "option `kv_cache`: expected one of {}, got {kv}",
                    KV_CACHE_TYPES.join(", ")
                ))
            }
        })
    }

    /// Bytes of one cached element for a model computing in `model` (the estimate's and
    /// the budget's figure): packed bits plus a scale and a bias per group.
    pub fn bytes_per_element(self, model: Dtype) -> f64 {
        let size = |d: Dtype| if d == Dtype::Float32 { 4.0 } else { 2.0 };
        match self {
            KvStore::Model => size(model),
            KvStore::Float(d) => size(d),
            KvStore::Quantized { bits, group_size } => {
                f64::from(bits) / 8.0 + 2.0 * size(model) / f64::from(group_size)
            }
        }
    }
}

/// What attention reads: every position so far, float or quantized.
pub enum CachedKv {
    Float {
        keys: Array,
        values: Array,
    },
    /// (packed, scales, biases) of keys and values.
    Quantized {
        keys: [Array; 3],
        values: [Array; 3],
        bits: i32,
        group_size: i32,
    },
}

/// Keys and values of one layer, (B, kv_heads, T, head_dim), grown in steps so that
/// decoding does not copy the whole cache each token.
#[derive(Default)]
pub struct KvCache {
    store: KvStore,
    keys: Option<Array>,
    values: Option<Array>,
    qkeys: Option<[Array; 3]>,
    qvalues: Option<[Array; 3]>,
    /// Tokens stored.
    pub offset: i32,
}

/// Cache capacity grows in multiples of this many tokens.
const CACHE_STEP: i32 = 256;

/// `old[..prev]` along axis 2 followed by zeros for `grow` more positions.
fn grown(old: Option<Array>, prev: i32, like: &Array, grow: i32) -> mlx_rs::error::Result<Array> {
    let s = like.shape();
    let zeros = mlx_rs::ops::zeros_dtype(&[s[0], s[1], grow, s[3]], like.dtype())?;
    match old {
        Some(old) => mlx_rs::ops::concatenate(&[old.index((.., .., ..prev, ..)), zeros], 2),
        None => Ok(zeros),
    }
}

/// `n` positions rounded up to whole steps.
fn steps(n: i32) -> i32 {
    (n + CACHE_STEP - 1) / CACHE_STEP * CACHE_STEP
}

fn capacity(a: &Option<Array>) -> i32 {
    a.as_ref().map_or(0, |a| a.shape()[2])
}

impl KvCache {
    /// An empty cache storing as `store` says.
    pub fn new(store: KvStore) -> Self {
        Self {
            store,
            ..Default::default()
        }
    }

    /// Append `k`, `v` (B, H, L, D) and return the keys/values of every position so far.
    pub fn update(&mut self, k: Array, v: Array) -> mlx_rs::error::Result<CachedKv> {
        let l = k.shape()[2];
        let prev = self.offset;
        let need = prev + l;
        if let (Some(qk), Some(qv), KvStore::Quantized { bits, group_size }) =
            (&self.qkeys, &self.qvalues, self.store)
        {
            let (nk, nv) = (
                quantize(&k, group_size, bits)?,
                quantize(&v, group_size, bits)?,
            );
            let put = |old: &[Array; 3], new: [Array; 3]| -> mlx_rs::error::Result<[Array; 3]> {
                let cap = old[0].shape()[2];
                let mut out = old.each_ref().map(Clone::clone);
                if need > cap {
                    // What is kept is `..prev`: grow by whole steps past it (as mlx-lm).
                    let grow = steps(need - prev);
                    for (o, n) in out.iter_mut().zip(&new) {
                        *o = grown(Some(o.clone()), prev, n, grow)?;
                    }
                }
                for (o, n) in out.iter_mut().zip(&new) {
                    o.index_mut((.., .., prev..need, ..), n);
                }
                Ok(out)
            };
            let (qk, qv) = (put(qk, nk)?, put(qv, nv)?);
            let upto = |a: &[Array; 3]| a.each_ref().map(|x| x.index((.., .., ..need, ..)));
            let out = CachedKv::Quantized {
                keys: upto(&qk),
                values: upto(&qv),
                bits,
                group_size,
            };
            (self.qkeys, self.qvalues) = (Some(qk), Some(qv));
            self.offset = need;
            return Ok(out);
        }
        let compute = k.dtype();
        let (k, v) = match self.store {
            KvStore::Float(d) if d != compute => (k.as_dtype(d)?, v.as_dtype(d)?),
            _ => (k, v),
        };
        if need > capacity(&self.keys) {
            let grow = steps(need - prev);
            self.keys = Some(grown(self.keys.take(), prev, &k, grow)?);
            self.values = Some(grown(self.values.take(), prev, &v, grow)?);
        }
        let keys = self.keys.as_mut().expect("allocated above");
        let values = self.values.as_mut().expect("allocated above");
        keys.index_mut((.., .., prev..need, ..), &k);
        values.index_mut((.., .., prev..need, ..), &v);
        self.offset = need;
        let (keys, values) = (
            keys.index((.., .., ..need, ..)),
            values.index((.., .., ..need, ..)),
        );
        Ok(match keys.dtype() == compute {
            true => CachedKv::Float { keys, values },
            false => CachedKv::Float {
                keys: keys.as_dtype(compute)?,
                values: values.as_dtype(compute)?,
            },
        })
    }

    /// After a model call: a cache that is to be quantized becomes so (once).
    pub fn settle(&mut self) -> mlx_rs::error::Result<()> {
        let KvStore::Quantized { bits, group_size } = self.store else {
            return Ok(());
        };
        if self.qkeys.is_some() {
            return Ok(());
        }
        let (Some(k), Some(v)) = (self.keys.take(), self.values.take()) else {
            return Ok(());
        };
        // The whole capacity, zeros included: later tokens are written in place.
        self.qkeys = Some(quantize(&k, group_size, bits)?);
        self.qvalues = Some(quantize(&v, group_size, bits)?);
        Ok(())
    }

    /// Arrays to evaluate so the cache does not hold a growing lazy graph.
    pub fn state(&self) -> Vec<&Array> {
        self.keys
            .iter()
            .chain(self.values.iter())
            .chain(self.qkeys.iter().flatten())
            .chain(self.qvalues.iter().flatten())
            .collect()
    }
}

/// Reshaping a batch between decode steps (continuous batching): rows leave, rows join,
/// padding every row has is dropped. Each works on every stored array alike (float keys
/// and values, or the packed codes, scales and biases), all (B, H, T, ·).
impl KvCache {
    fn stored_mut(&mut self) -> impl Iterator<Item = &mut Array> {
        self.keys
            .iter_mut()
            .chain(self.values.iter_mut())
            .chain(self.qkeys.iter_mut().flatten())
            .chain(self.qvalues.iter_mut().flatten())
    }

    /// Keep the rows `rows` (indices along the batch axis, in their order).
    pub fn select_rows(&mut self, rows: &Array) -> mlx_rs::error::Result<()> {
        for a in self.stored_mut() {
            *a = a.take_axis(rows, 0)?;
        }
        Ok(())
    }

    /// Drop the first `n` positions of every row (padding all rows have).
    pub fn drop_front(&mut self, n: i32) {
        if n == 0 {
            return;
        }
        for a in self.stored_mut() {
            *a = a.index((.., .., n.., ..));
        }
        self.offset -= n;
    }

    /// `n` positions of zeros before every row's (a shorter batch meeting a longer one);
    /// spare capacity past the offset goes.
    pub fn pad_front(&mut self, n: i32) -> mlx_rs::error::Result<()> {
        let offset = self.offset;
        for a in self.stored_mut() {
            let s = a.shape();
            let zeros = mlx_rs::ops::zeros_dtype(&[s[0], s[1], n, s[3]], a.dtype())?;
            *a = mlx_rs::ops::concatenate(&[zeros, a.index((.., .., ..offset, ..))], 2)?;
        }
        self.offset += n;
        Ok(())
    }

    /// `other`'s rows after this cache's; both hold the same number of positions and
    /// store alike.
    pub fn append_rows(&mut self, other: &KvCache) -> mlx_rs::error::Result<()> {
        assert_eq!(
            self.offset, other.offset,
            "caches are aligned before they meet"
        );
        let offset = self.offset;
        let theirs = other.state();
        assert_eq!(theirs.len(), self.state().len(), "caches store alike");
        for (a, b) in self.stored_mut().zip(theirs) {
            *a = mlx_rs::ops::concatenate(
                &[
                    a.index((.., .., ..offset, ..)),
                    b.index((.., .., ..offset, ..)),
                ],
                0,
            )?;
        }
        Ok(())
    }

    /// Row `row`'s positions `from..offset` as a cache of its own (a copy: the batch's
    /// buffers are not kept alive by it).
    pub fn row(&self, row: i32, from: i32) -> mlx_rs::error::Result<KvCache> {
        let offset = self.offset;
        let at = Array::from_slice(&[row], &[1]);
        let mut out = KvCache {
            store: self.store,
            keys: None,
            values: None,
            qkeys: None,
            qvalues: None,
            offset: offset - from,
        };
        let take = |a: &Array| a.index((.., .., from..offset, ..)).take_axis(&at, 0);
        let take3 = |a: &[Array; 3]| -> mlx_rs::error::Result<[Array; 3]> {
            Ok([take(&a[0])?, take(&a[1])?, take(&a[2])?])
        };
        out.keys = self.keys.as_ref().map(take).transpose()?;
        out.values = self.values.as_ref().map(take).transpose()?;
        out.qkeys = self.qkeys.as_ref().map(take3).transpose()?;
        out.qvalues = self.qvalues.as_ref().map(take3).transpose()?;
        Ok(out)
    }

    /// The first `n` positions of this cache (a view; writes after them copy).
    pub fn prefix(&self, n: i32) -> KvCache {
        let cut = |a: &Array| a.index((.., .., ..n, ..));
        KvCache {
            store: self.store,
            keys: self.keys.as_ref().map(cut),
            values: self.values.as_ref().map(cut),
            qkeys: self.qkeys.as_ref().map(|a| a.each_ref().map(cut)),
            qvalues: self.qvalues.as_ref().map(|a| a.each_ref().map(cut)),
            offset: n.min(self.offset),
        }
    }
}

fn quantize(x: &Array, group_size: i32, bits: i32) -> mlx_rs::error::Result<[Array; 3]> {
    let (w, s, b) = mlx_rs::ops::quantize(x, group_size, bits)?;
    Ok([w, s, b])
}

/// The cache's keys and values dequantized to `dtype`, for the fused attention kernel:
/// the same products as mlx-lm's `quantized_scaled_dot_product_attention` (quantized_matmul
/// multiplies by the dequantized codes), summed in another order — and on every backend:
/// MLX's CUDA `quantized_matmul` has no kernel for head-dimension-64 keys in groups of 32.
/// One layer's float copy exists at a time (MLX frees it after that layer's attention);
/// the cache itself stays packed.
fn dequantized(
    keys: &[Array; 3],
    values: &[Array; 3],
    (bits, group_size): (i32, i32),
    dtype: Dtype,
) -> mlx_rs::error::Result<(Array, Array)> {
    let f = |a: &[Array; 3]| {
        mlx_rs::ops::dequantize(&a[0], &a[1], &a[2], group_size, bits)?.as_dtype(dtype)
    };
    Ok((f(keys)?, f(values)?))
}

impl CachedKv {
    /// Keys and values as `dtype` floats (a quantized layer dequantized).
    fn float(&self, dtype: Dtype) -> mlx_rs::error::Result<(Array, Array)> {
        match self {
            CachedKv::Float { keys, values } => Ok((keys.clone(), values.clone())),
            CachedKv::Quantized {
                keys,
                values,
                bits,
                group_size,
            } => dequantized(keys, values, (*bits, *group_size), dtype),
        }
    }
}

/// Longest causal query chunk attended by [`composed_causal`] on a GPU.
const COMPOSED_MAX_QUERIES: i32 = 256;

/// Causal attention of `l` queries, the last positions of the keys, from plain matrix
/// products and a softmax (what MLX's own fallback computes). On CUDA the fused kernel
/// builds a cuDNN graph for each (queries, keys) shape it meets: ~50 ms each time a
/// prompt of a new length arrives, or a chat's next turn reads its few new tokens after
/// a cached history. Short chunks, where that build would dominate, go this way; long
/// ones keep the fused kernel. (On CPU MLX composes it so anyway.)
fn composed_causal(q: &Array, k: &Array, v: &Array, scale: f32) -> mlx_rs::error::Result<Array> {
    let (qs, ks) = (q.shape(), k.shape());
    let (b, h, l, d) = (qs[0], qs[1], qs[2], qs[3]);
    let (hkv, s) = (ks[1], ks[2]);
    let g = h / hkv;
    let q = q
        .multiply(Array::from_f32(scale).as_dtype(q.dtype())?)?
        .reshape(&[b, hkv, g, l, d])?;
    let k = k.reshape(&[b, hkv, 1, s, d])?.swap_axes(-1, -2)?;
    let scores = q.matmul(&k)?;
    // Query i sits at key position s - l + i and sees keys up to it.
    let rows = mlx_rs::ops::arange::<i32, i32>(s - l, s, None)?.reshape(&[l, 1])?;
    let cols = mlx_rs::ops::arange::<i32, i32>(0, s, None)?.reshape(&[1, s])?;
    let hidden = Array::from_f32(f32::NEG_INFINITY).as_dtype(scores.dtype())?;
    let scores = mlx_rs::ops::select(&cols.le(&rows)?, &scores, &hidden)?;
    let weights = mlx_rs::ops::softmax_axis(&scores, -1, true)?;
    weights
        .matmul(&v.reshape(&[b, hkv, 1, s, d])?)?
        .reshape(&[b, h, l, d])
}

/// Scaled dot-product attention over `q` (B, H, L, D) and the cached keys and values,
/// with the causal mask (and the padding mask of left-padded batches).
pub fn attention(
    q: &Array,
    kv: &CachedKv,
    scale: f32,
    pos: &Positions,
) -> mlx_rs::error::Result<Array> {
    let l = q.shape()[2];
    let (k, v) = kv.float(q.dtype())?;
    let (k, v) = (&k, &v);
    if let Some(mask) = pos.row_mask() {
        return fast::scaled_dot_product_attention(q, k, v, scale, mask, None);
    }
    if l == 1 {
        fast::scaled_dot_product_attention(q, k, v, scale, None, None)
    } else if l <= COMPOSED_MAX_QUERIES && mlx_common::on_gpu() {
        composed_causal(q, k, v, scale)
    } else {
        fast::scaled_dot_product_attention(
            q,
            k,
            v,
            scale,
            fast::ScaledDotProductAttentionMask::Causal,
            None,
        )
    }
}

/// Attention where a query only sees the last `window` positions (itself included), on
/// top of the causal / padding masks; `None` or a window covering every key is plain
/// [`attention`].
pub fn attention_windowed(
    q: &Array,
    kv: &CachedKv,
    scale: f32,
    pos: &Positions,
    window: Option<i32>,
) -> mlx_rs::error::Result<Array> {
    let l = q.shape()[2];
    let (k, v) = kv.float(q.dtype())?;
    let s = k.shape()[2];
    let Some(window) = window.filter(|w| *w < s) else {
        return attention(q, &CachedKv::Float { keys: k, values: v }, scale, pos);
    };
    // Query i sits at key index s - l + i; it sees keys j with q - window < j <= q.
    let mut m = vec![-1e9f32; (l * s) as usize];
    for i in 0..l {
        let qpos = s - l + i;
        for j in (qpos - window + 1).max(0)..=qpos {
            m[(i * s + j) as usize] = 0.0;
        }
    }
    let mut mask = Array::from_slice(&m, &[1, 1, l, s]).as_dtype(q.dtype())?;
    if let Some(rows) = pos.row_mask() {
        // Both must allow a key. A padding query's own position stays allowed by both,
        // so no row is fully masked.
        mask = rows.add(&mask)?;
    }
    fast::scaled_dot_product_attention(q, &k, &v, scale, &mask, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_longer_than_the_spare_room_grows_the_cache_past_it() {
        // 100 tokens leave a capacity of 256; 300 more need 400 (the old growth gave 356).
        for store in [
            KvStore::Model,
            KvStore::Quantized {
                bits: 8,
                group_size: 32,
            },
        ] {
            let mut c = KvCache::new(store);
            let kv = |t: i32| mlx_rs::ops::ones::<f32>(&[1, 2, t, 64]).unwrap();
            c.update(kv(100), kv(100)).unwrap();
            c.settle().unwrap();
            let out = c.update(kv(300), kv(300)).unwrap();
            let (k, _) = out.float(Dtype::Float32).unwrap();
            assert_eq!(k.shape(), &[1, 2, 400, 64], "{store:?}");
            assert_eq!(c.offset, 400);
            let total = k.sum(None).unwrap().item_cast::<f32>();
            assert_eq!(total, 400.0 * 2.0 * 64.0, "{store:?}: every row written");
        }
    }

    #[test]
    fn composed_causal_attention_is_the_fused_kernels() {
        // 8 query heads over 2 key heads (GQA), 5 new positions after 7 cached ones.
        let q = mlx_rs::random::normal::<f32>(&[2, 8, 5, 64], None, None, None).unwrap();
        let k = mlx_rs::random::normal::<f32>(&[2, 2, 12, 64], None, None, None).unwrap();
        let v = mlx_rs::random::normal::<f32>(&[2, 2, 12, 64], None, None, None).unwrap();
        let fused = fast::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            0.125,
            fast::ScaledDotProductAttentionMask::Causal,
            None,
        )
        .unwrap();
        let composed = composed_causal(&q, &k, &v, 0.125).unwrap();
        assert_eq!(composed.shape(), fused.shape());
        // Both are float32 sums of the same 12 terms in other orders: a few ulps of
        // values of magnitude ~1.
        let diff = composed.subtract(&fused).unwrap().abs().unwrap();
        let worst = diff.max(None).unwrap().item_cast::<f32>();
        assert!(worst < 1e-5, "largest difference {worst}");
    }

    #[test]
    fn kv_cache_options_name_the_key_and_the_types() {
        assert_eq!(KvStore::from_options("").unwrap(), KvStore::Model);
        assert_eq!(
            KvStore::from_options(r#"{"kv_cache":"q8_0"}"#).unwrap(),
            KvStore::Quantized {
                bits: 8,
                group_size: 32
            }
        );
        let e = KvStore::from_options(r#"{"kv_cache":"q3"}"#).unwrap_err();
        assert!(
            e.contains("option `kv_cache`: expected one of f32, f16"),
            "{e}"
        );
        // 8 bits + a f32 scale and bias per 32: 1.25 bytes; 4 bits: 0.75.
        let q8 = KvStore::from_options(r#"{"kv_cache":"q8_0"}"#).unwrap();
        assert_eq!(q8.bytes_per_element(Dtype::Float32), 1.25);
        assert_eq!(KvStore::Model.bytes_per_element(Dtype::Bfloat16), 2.0);
    }
}
