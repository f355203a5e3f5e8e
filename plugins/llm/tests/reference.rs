//! SmolLM2-135M-Instruct (Q4_1 GGUF, real weights) against the reference outputs of
//! transformers on the dequantized model: exact prompt token ids through the model's own
//! chat template, and greedy continuations — from the GGUF, and from its `import`ed HF
//! layout. Uses the plugin's Rust API directly (the ABI path is covered in tests/llm.rs).

use mlxengine_llm::{generate, loader, LoadOptions};
use plugin_api::text::{ChatMessage, GenerateRequest, StreamControl, TextInput};
use std::path::PathBuf;

fn model_dir() -> PathBuf {
    let cache = std::env::var_os("MLXENGINE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            base.join("mlxengine")
        });
    let models = std::env::var_os("MLXENGINE_MODELS")
        .map(PathBuf::from)
        .unwrap_or(cache.join("models"));
    let dir = models.join("smollm2-135m-instruct");
    assert!(
        dir.is_dir(),
        "{} missing: run scripts/setup.sh",
        dir.display()
    );
    dir
}

fn reference() -> Vec<serde_json::Value> {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/reference-outputs.json"
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["llm"].as_array().unwrap().clone()
}

fn input(case: &serde_json::Value) -> TextInput {
    let prompt = case["prompt"].as_str().unwrap();
    if case["chat"].as_bool().unwrap() {
        let msg = ChatMessage::text("user", prompt);
        TextInput {
            prompt: "".into(),
            messages: vec![msg].into(),
        }
    } else {
        TextInput {
            prompt: prompt.into(),
            messages: Default::default(),
        }
    }
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Number of leading steps that must match: up to the first near-tie (< 0.02) step.
fn horizon(case: &serde_json::Value) -> usize {
    case["top2_gaps"]
        .as_array()
        .unwrap()
        .iter()
        .position(|g| g.as_f64().unwrap() < 0.02)
        .unwrap_or(usize::MAX)
}

fn check(lm: &loader::Loaded, label: &str) {
    for case in reference() {
        let inp = input(&case);
        let prompt = generate::prompt_ids(lm, None, &inp, 0).unwrap();
        assert_eq!(
            prompt,
            ids(&case["input_ids"]),
            "{label}: prompt ids for {}",
            case["prompt"]
        );
        let want = ids(&case["new_ids"]);
        let req = GenerateRequest {
            inputs: vec![inp].into(),
            max_tokens: want.len() as u32,
            ..Default::default()
        };
        let out = generate::generate_alone(lm, &req, &mut |_| StreamControl::Continue).unwrap();
        let got: Vec<u32> = out.outputs[0].tokens.to_vec();
        let h = horizon(&case).min(want.len());
        assert_eq!(
            got[..h.min(got.len())],
            want[..h],
            "{label}: greedy ids for {}",
            case["prompt"]
        );
        let exact = got == want;
        println!(
            "{label}: {:?}: {} / {} ids match{}",
            case["prompt"],
            got.iter().zip(&want).take_while(|(a, b)| a == b).count(),
            want.len(),
            if exact { " (all)" } else { "" }
        );
    }
}

#[test]
fn gguf_and_imported_hf_layout_match_the_reference() {
    let opts = LoadOptions {
        dtype: mlx_rs::Dtype::Float32,
        dequantize: true,
    };
    let lm = loader::load(&model_dir(), opts).unwrap();
    check(&lm, "gguf");
    drop(lm);

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2-hf");
    let gguf = model_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let files = gguf::hf::import(&gguf, &out).unwrap();
    assert_eq!(files.len(), 4);
    for f in &files {
        assert!(f.is_file(), "{}", f.display());
    }
    let lm = loader::load(&out, opts).unwrap();
    check(&lm, "imported");
}
