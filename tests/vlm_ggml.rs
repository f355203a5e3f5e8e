//! The ggml route for vision-language models: the tiny Qwen2-VL of
//! `tests/fixtures/vlm/qwen2_vl/` converted by llama.cpp's own converter into a GGUF and
//! its `mmproj` projector (`tests/fixtures/vlm/qwen2_vl_gguf/`, `make_gguf_fixtures.py`),
//! served by the ggml provider through llama.cpp's `mtmd` — chosen over MLX on this CPU —
//! against transformers on the same weights: the prompt's token count (text and image
//! tokens), the greedy continuation and each pick's log-probability; alone, batched
//! beside a text row and beside the same prompt again, streamed; a text-only request to
//! it; a bad image refused naming its part while the model goes on serving.
//!
//! Tolerance on log-probabilities: both sides hold the same float32 weights, with a
//! float32 KV cache and flash attention off (the registry options), so what differs is
//! summation order (~1e-6 relative, as the MLX parity tests) and llama.cpp's vision
//! encoder, whose patch convolution runs through an F16 im2col: each pixel value
//! (|v| ≤ 2.2 after CLIP normalisation) is rounded to 11 significant bits, a relative
//! error of 2^-11 ≈ 4.9e-4 per input of the patch embedding. Through two blocks, the
//! merger and two text layers of weights ~0.15 that stays at the 1e-3 level of the
//! log-probabilities at most (seen: 3.2e-4 on an AMD EPYC); 5e-3 leaves room for
//! another CPU's kernels, while reading another image moves them by 0.75 (asserted
//! > 5e-2).

mod util;

use engine::{Engine, ModelEntry, PluginSet, Registry, Source};
use plugin_api::{
    text::{ChatMessage, ContentPart, GenerateRequest, StreamControl, TextInput},
    ModelKind,
};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/vlm"
    ))
}

fn reference() -> serde_json::Value {
    let p = fixtures().join("qwen2_vl_gguf/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn engine() -> Engine {
    let mut set = PluginSet::default();
    set.load(&util::dylib("mlxengine_vlm"))
        .expect("vlm plugin loads");
    set.load(&util::dylib("mlxengine_llm_ggml"))
        .expect("ggml plugin loads");
    let e = Engine::new(Registry::new(), set);
    let mut m = ModelEntry::new(
        "tiny-qwen2-vl-gguf",
        ModelKind::VLM,
        "qwen2_vl",
        Source::Path(fixtures().join("qwen2_vl_gguf")),
    );
    m.options = serde_json::from_str(util::GGML_FLOAT_OPTIONS).unwrap();
    e.add_model(m).unwrap();
    e
}

fn with_image(image: &str) -> TextInput {
    let bytes = std::fs::read(fixtures().join("images").join(image)).unwrap();
    TextInput {
        prompt: "".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            parts: vec![
                ContentPart::image(bytes, "image/png"),
                ContentPart::text("Describe this image."),
            ]
            .into(),
        }]
        .into(),
    }
}

fn run(
    e: &Engine,
    inputs: Vec<TextInput>,
    n: u32,
    stream: bool,
) -> plugin_api::text::GenerateResponse {
    let req = GenerateRequest {
        inputs: inputs.into(),
        max_tokens: n,
        logprobs: true,
        stream,
        ..Default::default()
    };
    e.generate("tiny-qwen2-vl-gguf", &util::gen(req), &mut |_| {
        StreamControl::Continue
    })
    .unwrap()
}

/// Max |Δ| of the picks' log-probabilities against the reference's.
fn logprob_error(got: &[f32], want: &serde_json::Value) -> f32 {
    got.iter()
        .zip(want.as_array().unwrap())
        .map(|(a, b)| (a - b.as_f64().unwrap() as f32).abs())
        .fold(0.0, f32::max)
}

#[test]
fn qwen2_vl_gguf_follows_transformers_through_mtmd() {
    let e = engine();
    let r = reference();
    let want: Vec<u32> = r["new_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let n = want.len() as u32;
    let input = with_image(r["image"].as_str().unwrap());
    let alone = run(&e, vec![input.clone()], n, false);
    assert_eq!(
        e.served_by("tiny-qwen2-vl-gguf", None).as_deref(),
        Some("ggml-llm"),
        "ggml is chosen on this CPU"
    );
    let out = &alone.outputs[0];
    assert_eq!(
        out.prompt_tokens as usize,
        r["input_ids"].as_array().unwrap().len(),
        "text and image tokens"
    );
    assert_eq!(out.tokens.to_vec(), want, "greedy continuation");
    let err = logprob_error(&out.logprobs, &r["logprobs"]);
    println!("ggml qwen2-vl: max |Δ logprob| = {err:.2e}");
    assert!(err < 5e-3, "log-probabilities off by {err}");

    // Another image must move them past the tolerance (the image is read).
    let other = run(&e, vec![with_image("field-96x80.png")], n, false);
    let moved = logprob_error(&other.outputs[0].logprobs, &r["logprobs"]);
    println!("ggml qwen2-vl, another image: |Δ logprob| = {moved:.2e}");
    assert!(
        moved > 5e-2,
        "another image changes the answer's log-probabilities"
    );

    // Batched beside a text row and beside itself, streamed: the same answer.
    let text = TextInput {
        prompt: "".into(),
        messages: vec![ChatMessage::text("user", "What is in the picture?")].into(),
    };
    let text_alone = run(&e, vec![text.clone()], 4, false);
    let both = run(&e, vec![text, input.clone(), input], n, true);
    assert_eq!(
        both.outputs[0].tokens[..4],
        text_alone.outputs[0].tokens[..]
    );
    for o in &both.outputs[1..] {
        assert_eq!(o.tokens.to_vec(), want, "batched");
        assert!(logprob_error(&o.logprobs, &r["logprobs"]) < 5e-3);
    }
}

#[test]
fn a_bad_image_to_the_gguf_vlm_is_refused_by_part() {
    let e = engine();
    let mut bad = with_image("field-64x48.png");
    bad.messages[0].parts[0] = ContentPart::image(b"not an image".to_vec(), "image/png");
    let req = GenerateRequest {
        inputs: vec![bad].into(),
        max_tokens: 2,
        ..Default::default()
    };
    let err = e
        .generate("tiny-qwen2-vl-gguf", &util::gen(req), &mut |_| {
            StreamControl::Continue
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("messages[0].content[0]"), "{err}");
    // The model still serves.
    let ok = run(&e, vec![with_image("field-64x48.png")], 2, false);
    assert_eq!(ok.outputs[0].tokens.len(), 2);
}
