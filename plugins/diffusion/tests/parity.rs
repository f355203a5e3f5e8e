//! The pipelines against diffusers on the tiny random pipelines of
//! `tests/fixtures/diffusion/` (made by `make_fixtures.py` there; float16 files computed
//! in float32 on both sides): SD 1.5's, SD 2.1's (v-prediction, linear projections, heads
//! per block, gelu text tower) and SDXL's (two text encoders, pooled embedding and size
//! conditions, zeros for an empty negative prompt, transformer depths). CLIP's tokenizers
//! built from `vocab.json` + `merges.txt` give transformers' padded ids (SDXL's second,
//! padding with `!`, too); the text encoders their hidden states and pooled embedding;
//! whole text-to-image runs (Euler and DDIM, with and without guidance and a negative
//! prompt, square and non-square sizes whose latents halve to odd sides) the image
//! diffusers returns from the same starting latents.
//!
//! Tolerances. Hidden states: float32 summation order only (MLX's matmuls against
//! torch's), ~1e-7 relative per accumulation of ≤ 64 terms through 2 layers of values of
//! size ~1: ~1e-6 seen; 1e-4 bounds it. Images: the same per-op rounding through ~40
//! UNet layers per step, up to 5 steps, amplified by the guidance scale (≤ 7.5 × the
//! difference of two predictions) and the VAE, lands on pixels in [0, 1] (the reference
//! rounded to 1e-6): ≤ 1e-5 seen; 1e-3 (a quarter of one 8-bit level) leaves room for
//! other CPUs' kernels, while a wrong layer, norm, timestep or sampler constant moves
//! pixels by more than 0.01.

use mlx_rs::{Array, Dtype};
use mlxengine_diffusion::{
    pipeline::{Job, Pipeline},
    scheduler::Sampler,
};
use serde_json::Value;
use std::path::PathBuf;

fn fixture_of(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/diffusion"
    ))
    .join(name)
}

fn fixture() -> PathBuf {
    fixture_of("sd15")
}

fn reference_of(name: &str) -> Value {
    let p = fixture_of(name).join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn reference() -> Value {
    reference_of("sd15")
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_delta(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tokenizer_and_text_encoder_match_transformers() {
    let pipe = Pipeline::load(&fixture(), Dtype::Float32).unwrap();
    for case in reference()["prompts"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids = pipe.tokenizer.encode(prompt).unwrap();
        assert_eq!(ids, ids_of(&case["ids"]), "ids of {prompt:?}");
        let out = pipe.text.forward(&[ids]).unwrap();
        let got = out.last.as_dtype(Dtype::Float32).unwrap();
        let d = max_delta(got.as_slice::<f32>(), &floats(&case["hidden"]));
        eprintln!("{prompt:?}: max |Δ hidden| = {d:.2e}");
        assert!(d < 1e-4, "{prompt:?}: max |Δ| = {d}");
    }
}

/// SDXL's second encoder: its tokenizer pads with `!`; the next-to-last hidden state and
/// the projected end-token embedding.
#[test]
fn sdxl_second_text_encoder_matches_transformers() {
    let pipe = Pipeline::load(&fixture_of("sdxl"), Dtype::Float32).unwrap();
    let (tok, text) = pipe.text_2.as_ref().expect("SDXL has two encoders");
    for case in reference_of("sdxl")["prompts"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids = tok.encode(prompt).unwrap();
        assert_eq!(ids, ids_of(&case["ids_2"]), "ids of {prompt:?}");
        let out = text.forward(&[ids]).unwrap();
        let d = max_delta(
            out.penultimate.as_slice::<f32>(),
            &floats(&case["penultimate_2"]),
        );
        let p = max_delta(out.pooled.as_slice::<f32>(), &floats(&case["pooled_2"]));
        eprintln!("{prompt:?}: max |Δ penultimate| = {d:.2e}, |Δ pooled| = {p:.2e}");
        assert!(d < 1e-4 && p < 1e-4, "{prompt:?}: {d} {p}");
    }
}

/// Every recorded run of pipeline `name` from its stored latents.
fn runs_match(name: &str) {
    let pipe = Pipeline::load(&fixture_of(name), Dtype::Float32).unwrap();
    for run in reference_of(name)["runs"].as_array().unwrap() {
        let (w, h) = (
            run["width"].as_u64().unwrap() as u32,
            run["height"].as_u64().unwrap() as u32,
        );
        let job = Job {
            prompt: run["prompt"].as_str().unwrap().into(),
            negative_prompt: run["negative_prompt"].as_str().unwrap().into(),
            width: w,
            height: h,
            steps: run["steps"].as_u64().unwrap() as usize,
            guidance: run["guidance"].as_f64().unwrap() as f32,
            sampler: Sampler::from_name(run["sampler"].as_str().unwrap()).unwrap(),
            count: 1,
            seed: 0,
        };
        // diffusers' latents are (1, 4, h/8, w/8); ours NHWC.
        let lat = Array::from_slice(
            &floats(&run["latents"]),
            &[1, 4, h as i32 / 8, w as i32 / 8],
        )
        .transpose_axes(&[0, 2, 3, 1])
        .unwrap();
        let mut steps = Vec::new();
        let image = pipe
            .run(&job, lat, &mut |done, total| {
                steps.push((done, total));
                true
            })
            .unwrap()
            .expect("not cancelled");
        assert_eq!(image.shape(), [1, h as i32, w as i32, 3]);
        assert_eq!(
            steps.last(),
            Some(&(job.steps, job.steps)),
            "one report per step"
        );
        // The reference is rounded to 1e-6.
        let d = max_delta(image.as_slice::<f32>(), &floats(&run["image"]));
        eprintln!(
            "{name} {} {}x{} {} steps, guidance {}: max |Δ pixel| = {d:.2e}",
            job.sampler.name(),
            w,
            h,
            job.steps,
            job.guidance
        );
        assert!(d < 1e-3, "{name} {:?}: max |Δ| = {d}", job);
    }
}

#[test]
fn sd15_text_to_image_matches_diffusers() {
    runs_match("sd15");
}

/// SD 2.1: v-prediction, linear projections, per-block heads, gelu text tower.
#[test]
fn sd21_text_to_image_matches_diffusers() {
    runs_match("sd21");
}

/// SDXL: two encoders, pooled embedding and size conditions, zeros for an empty
/// negative prompt, transformer depths.
#[test]
fn sdxl_text_to_image_matches_diffusers() {
    runs_match("sdxl");
}

#[test]
fn a_stop_ends_the_run_at_that_step() {
    let pipe = Pipeline::load(&fixture(), Dtype::Float32).unwrap();
    let job = Job {
        prompt: "a red chair".into(),
        negative_prompt: String::new(),
        width: 64,
        height: 64,
        steps: 6,
        guidance: 5.0,
        sampler: Sampler::Euler,
        count: 1,
        seed: 3,
    };
    let mut seen = 0;
    let out = pipe
        .run(&job, pipe.noise(&job).unwrap(), &mut |done, _| {
            seen = done;
            done < 2
        })
        .unwrap();
    assert!(out.is_none());
    assert_eq!(seen, 2, "stopped after the step that asked");
}

#[test]
fn a_seed_gives_the_same_image_and_another_seed_another() {
    let pipe = Pipeline::load(&fixture(), Dtype::Float32).unwrap();
    let job = |seed| Job {
        prompt: "a watercolor of mountains".into(),
        negative_prompt: "blurry".into(),
        width: 48,
        height: 64,
        steps: 3,
        guidance: 4.0,
        // Ancestral: fresh noise every step, from the seed too.
        sampler: Sampler::EulerAncestral,
        count: 2,
        seed,
    };
    let image = |seed| {
        let j = job(seed);
        let img = pipe
            .run(&j, pipe.noise(&j).unwrap(), &mut |_, _| true)
            .unwrap()
            .unwrap();
        img.as_slice::<f32>().to_vec()
    };
    let (a, b, c) = (image(11), image(11), image(12));
    assert_eq!(a, b, "same seed, same pixels");
    assert!(max_delta(&a, &c) > 0.05, "another seed, another image");
    // Two images of one request differ (their noise rows differ).
    let half = a.len() / 2;
    assert!(max_delta(&a[..half], &a[half..]) > 0.05);
}
