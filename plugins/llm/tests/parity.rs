//! Every architecture against transformers on tiny random-weight models
//! (`tests/fixtures/parity/<arch>/`, made by `make_fixtures.py` there): float32 logits at
//! every position within 1e-4, and the same greedy continuation (through the KV cache).

use mlx_rs::{ops::indexing::IndexOp, Array, Dtype};
use mlxengine_llm::{
    loader::{self, LoadOptions},
    models::{KvCache, Positions},
    sampling::argmax,
};
use std::path::PathBuf;

fn fixture(arch: &str) -> (PathBuf, serde_json::Value) {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/parity"
    ))
    .join(arch);
    let r = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
        .unwrap();
    (dir, r)
}

fn parity(arch: &str) {
    let (dir, r) = fixture(arch);
    let opts = LoadOptions {
        dtype: Dtype::Float32,
        dequantize: true,
    };
    let (model, model_type, _) = loader::load_model(&dir, opts).unwrap();
    let input: Vec<i32> = r["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap() as i32)
        .collect();
    let n = input.len() as i32;
    let ids = Array::from_slice(&input, &[1, n]);
    let mut cache: Vec<KvCache> = (0..model.layers()).map(|_| KvCache::default()).collect();
    let logits = model
        .forward(&ids, &mut cache, &Positions::Shared(0), true)
        .unwrap();
    let logits = logits.as_dtype(Dtype::Float32).unwrap();
    logits.eval().unwrap();
    let got: &[f32] = logits.as_slice();
    let want: Vec<f32> = r["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{arch}: logits size");
    let max_err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("{arch} ({model_type}): max |Δlogit| = {max_err:.2e}");
    assert!(max_err < 1e-4, "{arch}: max abs logit error {max_err}");

    // Greedy continuation through the cache, one token at a time.
    let vocab = model.vocab_size();
    let mut next = argmax(&got[got.len() - vocab..]);
    let mut out = vec![next];
    let greedy: Vec<u32> = r["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    for step in 0..greedy.len() - 1 {
        let ids = Array::from_slice(&[next as i32], &[1, 1]);
        let l = model
            .forward(&ids, &mut cache, &Positions::Shared(n + step as i32), false)
            .unwrap();
        let l = l.index((0, 0, ..)).as_dtype(Dtype::Float32).unwrap();
        l.eval().unwrap();
        next = argmax(l.as_slice());
        out.push(next);
    }
    assert_eq!(out, greedy, "{arch}: greedy continuation");
}

#[test]
fn llama_with_llama3_rope_scaling() {
    parity("llama");
}

#[test]
fn qwen2() {
    parity("qwen2");
}

#[test]
fn qwen3() {
    parity("qwen3");
}

#[test]
fn mistral() {
    parity("mistral");
}

#[test]
fn phi3() {
    parity("phi3");
}

#[test]
fn gemma3_with_sliding_window() {
    parity("gemma3");
}
