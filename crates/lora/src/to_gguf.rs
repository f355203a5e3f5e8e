//! An adapter as llama.cpp's GGUF LoRA, for the ggml provider (llama.cpp reads no PEFT).
//!
//! What `convert_lora_to_gguf.py` writes: `general.type = "adapter"`, `adapter.type =
//! "lora"`, the base's `general.architecture`, and per adapted weight `W` of the base the
//! tensors `<W>.lora_a` (rank, in) and `<W>.lora_b` (out, rank), `B`'s rows in the base's
//! own row order (llama.cpp permutes Llama's Q/K rows; `B` is permuted with them). The
//! layer's scale is folded into `B` and `adapter.lora.alpha` is 0, so llama.cpp applies
//! `B·A` times the request's scale: ranks and rsLoRA need nothing from it.

use crate::{Adapter, LoraError};
use gguf::{
    writer::{write_model, Meta, NewTensor, TensorType},
    Gguf,
};
use std::path::Path;

/// Write `adapter` as a GGUF LoRA for the base model `base` into `dst` (whole or not at
/// all). Every adapted layer must be a weight of the base with the adapter's shapes.
pub fn write(adapter: &Adapter, base: &Gguf, base_id: &str, dst: &Path) -> Result<(), LoraError> {
    let gerr = |e: gguf::GgufError| LoraError::Mismatch {
        dir: adapter.dir.clone(),
        msg: format!("base model `{base_id}`: {e}"),
    };
    let mut places = Vec::with_capacity(adapter.modules.len());
    for m in &adapter.modules {
        places.push(gguf::hf::linear_in_gguf(base, &m.name).map_err(gerr)?);
    }
    // The base's weight shapes, by their GGUF names, in HF (out, in) order.
    let shape_of = |name: &str| {
        base.tensors
            .iter()
            .find(|t| t.name == name)
            .filter(|t| t.shape.len() == 2)
            .map(|t| (t.shape[1], t.shape[0]))
    };
    adapter.check_base(base_id, |layer| {
        let i = adapter.modules.iter().position(|m| m.name == layer)?;
        let (name, _) = places[i].as_ref()?;
        shape_of(name)
    })?;
    let arch = base.architecture().map_err(gerr)?.to_owned();
    let mut tensors = Vec::with_capacity(2 * adapter.modules.len());
    for (m, place) in adapter.modules.iter().zip(places) {
        let (weight, heads) = place.expect("checked above");
        tensors.push(NewTensor {
            name: format!("{weight}.lora_a"),
            shape: vec![m.rank, m.in_features],
            ty: TensorType::F32,
            data: Box::new(move || adapter.a(m).map_err(|e| e.to_string())),
        });
        tensors.push(NewTensor {
            name: format!("{weight}.lora_b"),
            shape: vec![m.out_features, m.rank],
            ty: TensorType::F32,
            data: Box::new(move || {
                let mut b = adapter.b(m).map_err(|e| e.to_string())?;
                b.iter_mut().for_each(|x| *x *= m.scale);
                Ok(match heads {
                    Some(h) => gguf::hf::permute_rows(&b, m.out_features, m.rank, h),
                    None => b,
                })
            }),
        });
    }
    let meta = [
        ("general.architecture", Meta::Str(arch)),
        ("general.type", Meta::Str("adapter".into())),
        ("adapter.type", Meta::Str("lora".into())),
        ("adapter.lora.alpha", Meta::F32(0.0)),
    ];
    write_model(dst, &meta, tensors).map_err(|e| LoraError::Io {
        file: dst.into(),
        msg: e.to_string(),
    })
}
