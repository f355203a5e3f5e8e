//! Each architecture against transformers on its tiny random-weight checkpoint of
//! `tests/fixtures/vlm/<model_type>/` (made by `make_fixtures.py` there): the same prompt
//! ids after the chat template and image expansion, float32 logits at every position
//! within 1e-4, and the same greedy continuation through the generation loop — alone,
//! and batched beside a text-only request (rows padded to one length, one read from
//! embeddings and one from ids).
//!
//! Tolerance: the checkpoints are float32 with weights of scale 0.15 and a few layers;
//! the two sides differ only in summation order (MLX's matmuls and attention against
//! torch's), ~1e-7 relative per accumulation over at most a few hundred terms, which
//! stays under 1e-5 absolute on logits of size ~1-10 (seen: 1e-5). 1e-4 leaves room
//! for another CPU's kernels while a wrong layer, norm or position is off by > 0.1.

use lm::{generate::generate_alone, loader::Loaded, models::KvCache, LoadOptions};
use mlx_rs::Dtype;
use mlxengine_vlm::load;
use plugin_api::text::{ChatMessage, ContentPart, GenerateRequest, StreamControl, TextInput};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/vlm"
    ))
}

fn model(arch: &str) -> Loaded {
    let opts = LoadOptions {
        dtype: Dtype::Float32,
        dequantize: true,
    };
    load(&fixtures().join(arch), opts).unwrap()
}

fn reference(arch: &str) -> Vec<serde_json::Value> {
    let p = fixtures().join(arch).join("reference.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The case's messages with its images' bytes in place of `{"type": "image"}`.
fn input(case: &serde_json::Value) -> TextInput {
    let mut images = case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| std::fs::read(fixtures().join("images").join(f.as_str().unwrap())).unwrap());
    let messages = case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage {
            role: m["role"].as_str().unwrap().into(),
            parts: m["content"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| match p["type"].as_str().unwrap() {
                    "text" => ContentPart::text(p["text"].as_str().unwrap()),
                    _ => ContentPart::image(images.next().unwrap(), "image/png"),
                })
                .collect::<Vec<_>>()
                .into(),
        })
        .collect::<Vec<_>>();
    TextInput {
        prompt: "".into(),
        messages: messages.into(),
    }
}

#[test]
fn idefics3_logits_match_transformers_with_one_and_two_images() {
    logits_match("idefics3");
}

#[test]
fn llava_logits_match_transformers_with_one_and_two_images() {
    logits_match("llava");
}

#[test]
fn llava_next_logits_match_transformers_with_one_and_two_images() {
    logits_match("llava_next");
}

#[test]
fn llava_next_greedy_continuations_match_alone_and_batched_with_text() {
    greedy_matches("llava_next");
}

#[test]
fn idefics3_greedy_continuations_match_alone_and_batched_with_text() {
    greedy_matches("idefics3");
}

#[test]
fn llava_greedy_continuations_match_alone_and_batched_with_text() {
    greedy_matches("llava");
}

#[test]
fn qwen2_vl_logits_match_transformers_with_one_and_two_images() {
    logits_match("qwen2_vl");
}

#[test]
fn qwen2_5_vl_logits_match_transformers_with_one_and_two_images() {
    logits_match("qwen2_5_vl");
}

#[test]
fn qwen2_vl_greedy_continuations_match_alone_and_batched_with_text() {
    greedy_matches("qwen2_vl");
}

#[test]
fn qwen2_5_vl_greedy_continuations_match_alone_and_batched_with_text() {
    greedy_matches("qwen2_5_vl");
}

/// mlx-vlm's 4-bit conversion of the Qwen2-VL checkpoint (the Hub's transformers 4
/// config, mlx-vlm's names, the patch conv in MLX's layout, an unquantized tower),
/// against mlx-vlm's own logits and greedy picks on it: the weights are the same
/// dequantized values on both sides, so the tolerance is the float32 one above.
#[test]
fn mlx_vlm_4bit_qwen2_vl_matches_mlx_vlm() {
    logits_match("qwen2_vl_mlx_q4");
    greedy_matches("qwen2_vl_mlx_q4");
}

fn logits_match(arch: &str) {
    let lm = model(arch);
    for case in reference(arch) {
        let name = format!("{arch}, {}", case["name"].as_str().unwrap());
        let media = lm.media.as_ref().unwrap();
        let p = media.prompt(&lm, None, &input(&case), 0).unwrap();
        assert_eq!(p.ids, ids(&case["input_ids"]), "{name}: prompt ids");
        let mut cache: Vec<KvCache> = (0..lm.model.layers()).map(|_| KvCache::default()).collect();
        let logits = lm
            .model
            .forward_embeds(&p.embeds, &mut cache, &p.prefill_positions(), true)
            .unwrap()
            .as_dtype(Dtype::Float32)
            .unwrap();
        logits.eval().unwrap();
        let got: &[f32] = logits.as_slice();
        let want: Vec<f32> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{name}: logits size");
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{name}: {} tokens, max |Δlogit| = {err:.2e}", p.ids.len());
        if err >= 1e-4 {
            // Where it starts, for the report.
            let vocab = want.len() / p.ids.len();
            let first = (0..p.ids.len()).find(|&i| {
                (0..vocab).any(|j| (got[i * vocab + j] - want[i * vocab + j]).abs() >= 1e-4)
            });
            println!(
                "{name}: first position off: {first:?} (id {:?})",
                first.map(|i| p.ids[i])
            );
        }
        assert!(err < 1e-4, "{name}: max abs logit error {err}");
    }
}

fn greedy_matches(arch: &str) {
    let lm = model(arch);
    let text = TextInput {
        prompt: "".into(),
        messages: vec![ChatMessage::text("user", "What is in the picture?")].into(),
    };
    let run = |inputs: Vec<TextInput>, n: u32| {
        let req = GenerateRequest {
            inputs: inputs.into(),
            max_tokens: n,
            ..Default::default()
        };
        generate_alone(&lm, &req, &mut |_| StreamControl::Continue).unwrap()
    };
    for case in reference(arch) {
        let name = format!("{arch}, {}", case["name"].as_str().unwrap());
        let want = ids(&case["new_ids"]);
        if want.is_empty() {
            // mlx-vlm's reference stops before a vision token, which it cannot read back.
            continue;
        }
        let alone = run(vec![input(&case)], want.len() as u32);
        assert_eq!(alone.outputs[0].tokens.to_vec(), want, "{name}: alone");
        assert_eq!(
            alone.outputs[0].prompt_tokens as usize,
            case["input_ids"].as_array().unwrap().len()
        );
        let text_alone = run(vec![text.clone()], 6);
        let both = run(vec![text.clone(), input(&case)], want.len() as u32);
        assert_eq!(
            both.outputs[1].tokens.to_vec(),
            want,
            "{name}: beside a text row"
        );
        assert_eq!(
            both.outputs[0].tokens[..6],
            text_alone.outputs[0].tokens[..],
            "{name}: the text row beside it"
        );
    }
}
