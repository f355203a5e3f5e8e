//! LoRA adapters on a loaded model: read by the shared `lora` crate (PEFT or mlx-lm),
//! checked against the model's linear layers, held as MLX arrays beside the weights, and
//! put on the layers for the one request that selects them (the model's lock is held for
//! the whole request, so requests with other adapters never see them), or fused into the
//! weights for good.

use crate::{error::LlmError, models::CausalLm};
use mlx_common::{qmode, LoraDelta};
use mlx_rs::{Array, Dtype};
use plugin_sdk::AdapterChoice;
use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

/// One layer's factors: `a` (in, rank) and `b` (rank, out), the layer's scale in `b`.
struct Factors {
    a: Array,
    b: Array,
}

/// An adapter as MLX arrays.
pub struct MlxAdapter {
    layers: HashMap<String, Factors>,
    /// Scale of a request that names no other.
    pub scale: f32,
    /// Bytes its arrays take.
    pub bytes: u64,
}

/// The (in, out) features of a model's linear layers, by checkpoint name.
pub type Shapes = HashMap<String, (usize, usize)>;

/// The shapes of `model`'s linear layers.
pub fn shapes(model: &mut dyn CausalLm) -> Shapes {
    model
        .linears_mut()
        .into_iter()
        .map(|l| (l.name.clone(), l.features()))
        .collect()
}

fn lora_err(e: lora::LoraError) -> LlmError {
    match e {
        lora::LoraError::Io { file, msg } | lora::LoraError::Invalid { file, msg } => {
            LlmError::Weights { file, msg }
        }
        e @ lora::LoraError::Mismatch { .. } => LlmError::Request(e.to_string()),
    }
}

/// Read the adapter in `dir` for the model `base_id` with layers `shapes`, as arrays of
/// `dtype`. Nothing is evaluated here (the caller holds no lock on the model).
pub fn open(
    dir: &Path,
    base_id: &str,
    shapes: &Shapes,
    dtype: Dtype,
    scale: f32,
) -> Result<MlxAdapter, LlmError> {
    let ad = lora::Adapter::open(dir).map_err(lora_err)?;
    ad.check_base(base_id, |name| shapes.get(name).copied())
        .map_err(lora_err)?;
    let mut layers = HashMap::with_capacity(ad.modules.len());
    let mut bytes = 0u64;
    let width = u64::from(dtype_bytes(dtype));
    for m in &ad.modules {
        let (r, n, o) = (m.rank as i32, m.in_features as i32, m.out_features as i32);
        let a = Array::from_slice(&ad.a(m).map_err(lora_err)?, &[r, n]);
        let mut b = ad.b(m).map_err(lora_err)?;
        b.iter_mut().for_each(|x| *x *= m.scale);
        let b = Array::from_slice(&b, &[o, r]);
        layers.insert(
            m.name.clone(),
            Factors {
                a: a.t().as_dtype(dtype)?,
                b: b.t().as_dtype(dtype)?,
            },
        );
        bytes += (m.rank * (m.in_features + m.out_features)) as u64 * width;
    }
    Ok(MlxAdapter {
        layers,
        scale,
        bytes,
    })
}

impl MlxAdapter {
    /// Evaluate its arrays (under the model's lock: MLX evaluates on one thread at a time).
    pub fn eval(&self) -> mlx_rs::error::Result<()> {
        mlx_rs::transforms::eval(self.layers.values().flat_map(|f| [&f.a, &f.b]))
    }
}

fn dtype_bytes(d: Dtype) -> u32 {
    match d {
        Dtype::Float32 => 4,
        _ => 2,
    }
}

/// The adapters loaded on one model, and those fused into its weights.
#[derive(Default)]
pub struct Adapters {
    pub loaded: BTreeMap<String, MlxAdapter>,
    pub fused: Vec<String>,
}

impl Adapters {
    /// Bytes the loaded adapters take.
    pub fn bytes(&self) -> u64 {
        self.loaded.values().map(|a| a.bytes).sum()
    }

    /// Put `choices` on `model`'s layers (none: the base alone). An unknown name is an
    /// error listing what is loaded; scale 0 leaves the adapter out.
    pub fn attach(
        &self,
        model: &mut dyn CausalLm,
        choices: &[AdapterChoice],
    ) -> Result<(), LlmError> {
        let picked = plugin_sdk::resolve_adapters(choices, &self.loaded, |a| a.scale)
            .map_err(LlmError::Request)?;
        for l in model.linears_mut() {
            l.lora.clear();
            for (_, ad, scale) in &picked {
                if let Some(f) = ad.layers.get(&l.name) {
                    let b = if *scale == 1.0 {
                        f.b.clone()
                    } else {
                        f.b.multiply(Array::from_f32(*scale).as_dtype(f.b.dtype())?)?
                    };
                    l.lora.push(LoraDelta { a: f.a.clone(), b });
                }
            }
        }
        Ok(())
    }

    /// Take every adapter off `model`'s layers.
    pub fn detach(model: &mut dyn CausalLm) {
        for l in model.linears_mut() {
            l.lora.clear();
        }
    }

    /// Merge adapter `name` (at its load scale) into `model`'s weights and drop it:
    /// `W += B·A`; packed layers are dequantized, updated and packed again with their
    /// own group size, bits and mode.
    pub fn fuse(&mut self, model: &mut dyn CausalLm, name: &str) -> Result<(), LlmError> {
        let ad = self.loaded.get(name).ok_or_else(|| {
            LlmError::Request(format!("adapter `{name}` is not loaded on this model"))
        })?;
        for l in model.linears_mut() {
            let Some(f) = ad.layers.get(&l.name) else {
                continue;
            };
            let delta = f.a.matmul(&f.b)?.t().multiply(Array::from_f32(ad.scale))?;
            let dense = l.dense_weight()?;
            let fused = dense.add(delta.as_dtype(dense.dtype())?)?;
            match &mut l.quantized {
                None => l.weight = fused,
                Some(q) => {
                    let (w, s, b) = qmode::quantize(&fused, q.group_size, q.bits, q.mode)?;
                    l.weight = w;
                    q.scales = s;
                    q.biases = b;
                }
            }
            mlx_rs::transforms::eval([&l.weight])?;
        }
        self.loaded.remove(name);
        self.fused.push(name.to_owned());
        Ok(())
    }
}
