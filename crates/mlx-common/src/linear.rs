use crate::qmode::{self, QuantMode};
use mlx_rs::{ops, Array, Dtype};

/// MLX quantization of a layer: per group of weights a scale (and for `affine` a bias:
/// `w ≈ scale · q + bias`), in `mode`.
#[derive(Clone)]
pub struct Quantized {
    pub scales: Array,
    /// Per-group biases (`affine` only).
    pub biases: Option<Array>,
    pub group_size: i32,
    pub bits: i32,
    pub mode: QuantMode,
    /// The float type its values dequantize to (the load dtype).
    pub dtype: Dtype,
}

impl Quantized {
    /// `x · Wᵀ` for the packed rows `w` these parameters belong to.
    fn matmul(&self, x: &Array, w: &Array) -> mlx_rs::error::Result<Array> {
        qmode::quantized_matmul(
            x,
            w,
            &self.scales,
            self.biases.as_ref(),
            true,
            self.group_size,
            self.bits,
            self.mode,
        )
    }

    /// The float values of the packed `w` (or of rows taken from it, with `rows` of the
    /// scales and biases).
    pub fn dequantize(&self, w: &Array) -> mlx_rs::error::Result<Array> {
        qmode::dequantize(
            w,
            &self.scales,
            self.biases.as_ref(),
            self.group_size,
            self.bits,
            self.mode,
            self.dtype,
        )
    }
}

/// A low-rank update a LoRA adapter puts on a layer for the requests that select it:
/// `y += (x·a)·b`, with `a` (in, rank) and `b` (rank, out), the scale folded into `b`.
#[derive(Clone)]
pub struct LoraDelta {
    pub a: Array,
    pub b: Array,
}

/// A dense layer `y = x·Wᵀ + b`, named after its checkpoint path
/// (`model.layers.0.self_attn.q_proj`).
pub struct Linear {
    /// Checkpoint name (without `.weight`).
    pub name: String,
    /// (out, in) weights, or the packed uint32 weights when `quantized` is set.
    pub weight: Array,
    /// Optional (out) bias.
    pub bias: Option<Array>,
    /// Quantization parameters when the weight is packed.
    pub quantized: Option<Quantized>,
    /// LoRA updates applied on top (set for one request, then cleared).
    pub lora: Vec<LoraDelta>,
}

impl Linear {
    /// `x`: (…, in) → (…, out).
    pub fn forward(&self, x: &Array) -> mlx_rs::error::Result<Array> {
        let y = match (&self.quantized, &self.bias) {
            (Some(q), _) => q.matmul(x, &self.weight)?,
            (None, Some(b)) if x.ndim() == 2 => ops::addmm(b, x, self.weight.t(), None, None)?,
            (None, _) => x.matmul(self.weight.t())?,
        };
        let biased = self.quantized.is_none() && x.ndim() == 2;
        let mut y = match &self.bias {
            Some(b) if !biased => y.add(b)?,
            _ => y,
        };
        // y + (x·a)·b as one addmm: two kernel launches per adapter, not three.
        for d in &self.lora {
            y = ops::addmm(&y, x.matmul(&d.a)?, &d.b, None, None)?;
        }
        Ok(y)
    }

    /// (in, out) features.
    pub fn features(&self) -> (usize, usize) {
        let s = self.weight.shape();
        // Packed rows hold 32 / bits values per uint32.
        let cols = match &self.quantized {
            Some(q) => s[1] as usize * 32 / q.bits as usize,
            None => s[1] as usize,
        };
        (cols, s[0] as usize)
    }

    /// The float weights (out, in), dequantized when packed.
    pub fn dense_weight(&self) -> mlx_rs::error::Result<Array> {
        match &self.quantized {
            Some(q) => q.dequantize(&self.weight),
            None => Ok(self.weight.clone()),
        }
    }

    /// Every array it holds (weight, bias, quantization parameters; not the LoRA updates).
    pub fn arrays(&self) -> Vec<&Array> {
        let mut all = matrix_arrays(&self.weight, self.quantized.as_ref());
        all.extend(&self.bias);
        all
    }

    /// Number of parameters (unpacked) and bytes held.
    pub fn sizes(&self) -> (u64, u64) {
        let (mut params, mut bytes) = matrix_sizes(&self.weight, self.quantized.as_ref());
        if let Some(b) = &self.bias {
            bytes += b.nbytes() as u64;
            params += b.size() as u64;
        }
        (params, bytes)
    }
}

/// A token embedding table (vocab, hidden), full precision or MLX affine-quantized
/// (mlx-lm quantizes `embed_tokens` like a linear layer); a tied output head reads it
/// as a linear layer.
pub struct Embedding {
    /// Checkpoint name (without `.weight`).
    pub name: String,
    /// (vocab, hidden) rows, or the packed uint32 rows when `quantized` is set.
    pub weight: Array,
    /// Quantization parameters when the rows are packed.
    pub quantized: Option<Quantized>,
}

impl Embedding {
    /// Rows of `ids` (any shape) → (…, hidden).
    pub fn lookup(&self, ids: &Array) -> mlx_rs::error::Result<Array> {
        let rows = self.weight.take_axis(ids, 0)?;
        match &self.quantized {
            None => Ok(rows),
            Some(q) => {
                let picked = Quantized {
                    scales: q.scales.take_axis(ids, 0)?,
                    biases: q.biases.as_ref().map(|b| b.take_axis(ids, 0)).transpose()?,
                    ..q.clone()
                };
                picked.dequantize(&rows)
            }
        }
    }

    /// `x`: (…, hidden) → (…, vocab): the table as a tied output head.
    pub fn as_linear(&self, x: &Array) -> mlx_rs::error::Result<Array> {
        match &self.quantized {
            None => x.matmul(self.weight.t()),
            Some(q) => q.matmul(x, &self.weight),
        }
    }

    /// The dtype activations looked up from it have.
    pub fn dtype(&self) -> mlx_rs::Dtype {
        self.quantized
            .as_ref()
            .map_or(self.weight.dtype(), |q| q.dtype)
    }

    /// Every array it holds (rows and quantization parameters).
    pub fn arrays(&self) -> Vec<&Array> {
        matrix_arrays(&self.weight, self.quantized.as_ref())
    }

    /// Number of parameters (unpacked) and bytes held.
    pub fn sizes(&self) -> (u64, u64) {
        matrix_sizes(&self.weight, self.quantized.as_ref())
    }
}

fn matrix_arrays<'a>(weight: &'a Array, q: Option<&'a Quantized>) -> Vec<&'a Array> {
    let mut all = vec![weight];
    if let Some(q) = q {
        all.push(&q.scales);
        all.extend(&q.biases);
    }
    all
}

/// Parameters (unpacked) and bytes of a weight matrix, full or packed with `q`.
fn matrix_sizes(weight: &Array, q: Option<&Quantized>) -> (u64, u64) {
    let mut bytes = weight.nbytes() as u64;
    let mut params = weight.size() as u64;
    if let Some(q) = q {
        params = params * 32 / q.bits as u64;
        bytes += (q.scales.nbytes() + q.biases.as_ref().map_or(0, |b| b.nbytes())) as u64;
    }
    (params, bytes)
}
