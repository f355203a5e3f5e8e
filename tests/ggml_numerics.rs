//! The ggml provider's numerics, checked in a way that holds on every CPU.
//!
//! The reference (`tests/fixtures/reference-outputs.json`) is transformers in float32 on
//! the shipped SmolLM2 Q4_1 GGUF dequantized to f32. Two checks:
//!
//! 1. The float twin (the same file dequantized to F32 by our GGUF writer: identical
//!    weight values) through llama.cpp with float settings (no flash attention, f32 KV
//!    cache) reproduces the reference's first-step logits. Only summation order differs
//!    between two float32 implementations; the bound is the reference's own near-tie
//!    threshold (0.02), the size of change it says a correct float kernel may make.
//! 2. The shipped Q4_1 file, teacher-forced along the reference continuation, stays within
//!    the error that llama.cpp's activation quantization explains (derived below) of the
//!    float twin's logits at every step, and agrees with its argmax wherever the twin's
//!    lead is large against the noise measured at that step. Greedy sequences are not
//!    compared here: which near-tie flips depends on each CPU's SIMD path.

mod util;

use mlxengine_llm_ggml::Scorer;
use std::path::Path;

fn spec(path: &Path, options: &str) -> plugin_api::ModelSpec {
    util::llm_spec("smol", "llama", path, options)
}

use util::GGML_FLOAT_OPTIONS as FLOAT;

struct Case {
    prompt: String,
    input_ids: Vec<u32>,
    new_ids: Vec<u32>,
    top5_ids: Vec<usize>,
    top5_logits: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let ids = |v: &serde_json::Value| -> Vec<u32> { serde_json::from_value(v.clone()).unwrap() };
    util::reference()["llm"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            prompt: c["prompt"].as_str().unwrap().to_owned(),
            input_ids: ids(&c["input_ids"]),
            new_ids: ids(&c["new_ids"]),
            top5_ids: serde_json::from_value(c["first_top5_ids"].clone()).unwrap(),
            top5_logits: serde_json::from_value(c["first_top5_logits"].clone()).unwrap(),
        })
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// Centered logits (softmax does not see a common offset).
fn centered(v: &[f32]) -> Vec<f64> {
    let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / v.len() as f64;
    v.iter().map(|x| f64::from(*x) - mean).collect()
}

fn rms(v: &[f64]) -> f64 {
    (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
}

#[test]
fn the_float_twin_reproduces_the_reference_logits() {
    let twin = Scorer::open(&spec(&util::smollm2_f32_twin(), FLOAT)).unwrap();
    for case in cases() {
        let rows = twin.logits(&case.input_ids, &case.new_ids[..1]).unwrap();
        let worst = case
            .top5_ids
            .iter()
            .zip(&case.top5_logits)
            .map(|(&id, &want)| (rows[0][id] - want).abs())
            .fold(0f32, f32::max);
        println!(
            "{:?}: max |Δlogit| over the reference top 5 = {worst:.2e}",
            case.prompt
        );
        assert!(worst < 0.02, "{:?}: {worst}", case.prompt);
        assert_eq!(argmax(&rows[0]), case.top5_ids[0], "{:?}", case.prompt);
    }
}

/// Bound on the relative RMS error of the centered logits that activation quantization
/// explains. llama.cpp's Q4_1 and Q8_0 kernels multiply the weights (exact: the twin has
/// the same values) by activations rounded to 8 bits in blocks of 32 (Q8_1/Q8_0: scale
/// d = max|x|/127, rounding error uniform in ±d/2). For one block the relative RMS
/// rounding error is (d/√12)/rms(x) = (max|x|/rms(x)) / (127·√12); max|x|/rms(x) is at
/// most √32 (all energy in one element), so ε_q ≤ √32/(127·√12) = 0.0129. SmolLM2 has
/// 30 layers with 4 quantized-input matmuls each (QKV, output, gate/up, down) plus the
/// output matrix: N = 121 independent roundings. Pre-norm residual blocks neither
/// amplify nor damp a relative perturbation of the residual stream on average, so
/// independent errors add in quadrature: ε ≤ √N · ε_q = 11 · 0.0129 = 0.142. An f16 KV
/// cache adds 2^-11 relative per element, and the default flash-attention path sums V in
/// f16 (one 2^-11 rounding per cell, ≤ √n·2^-11 ≈ 0.006 over these prompts' n < 200
/// cells): negligible against it. A real bug (a wrong
/// tensor, RoPE or norm) moves the logits by their own size (relative error ≳ 0.5).
const REL_BOUND: f64 = 0.142;

/// Argmax agreement is required where the twin's top-2 gap exceeds this many standard
/// deviations of the measured per-logit error at that step: the gap between two logits
/// moves by the difference of two errors (σ·√2), so 6σ is 4.2 of its standard deviations
/// (a flip probability of ~1e-5 per step under Gaussian noise), on any CPU's noise level.
const GAP_SIGMAS: f64 = 6.0;

#[test]
fn q4_1_logits_stay_within_the_activation_quantization_bound() {
    let q4 = Scorer::open(&spec(&util::smollm2_q4_1(), "")).unwrap();
    let twin = Scorer::open(&spec(&util::smollm2_f32_twin(), FLOAT)).unwrap();
    let (mut checked, mut decided_at_bound, mut worst_rel) = (0, 0, 0f64);
    for case in cases() {
        let a = q4.logits(&case.input_ids, &case.new_ids).unwrap();
        let b = twin.logits(&case.input_ids, &case.new_ids).unwrap();
        for (step, (qa, fb)) in a.iter().zip(&b).enumerate() {
            let (ca, cb) = (centered(qa), centered(fb));
            let diff: Vec<f64> = ca.iter().zip(&cb).map(|(x, y)| x - y).collect();
            let sigma = rms(&diff);
            let rel = sigma / rms(&cb);
            worst_rel = worst_rel.max(rel);
            assert!(
                rel < REL_BOUND,
                "{:?} step {step}: relative logit error {rel:.4} ≥ {REL_BOUND}",
                case.prompt
            );
            let top = argmax(fb);
            let second = (0..fb.len())
                .filter(|&i| i != top)
                .fold(usize::MAX, |s, i| {
                    if s == usize::MAX || fb[i] > fb[s] {
                        i
                    } else {
                        s
                    }
                });
            let gap = f64::from(fb[top] - fb[second]);
            // Steps decided even at the largest noise the bound allows: a property of the
            // float logits alone (the same on every CPU), all of them checked below.
            decided_at_bound += usize::from(gap > GAP_SIGMAS * REL_BOUND * rms(&cb));
            if gap > GAP_SIGMAS * sigma {
                checked += 1;
                assert_eq!(
                    argmax(qa),
                    top,
                    "{:?} step {step}: twin leads by {gap:.3} = {:.1}σ (σ = {sigma:.4})",
                    case.prompt,
                    gap / sigma
                );
            }
        }
    }
    println!(
        "worst relative logit error {worst_rel:.4} (bound {REL_BOUND}); {checked} argmax checks \
         ({decided_at_bound} would be checked at the bound's noise)"
    );
    // Not vacuous on any CPU: every step decided at the bound's noise was checked.
    assert!(decided_at_bound >= 8, "{decided_at_bound}");
}
