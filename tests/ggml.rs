//! The ggml (llama.cpp) provider next to the MLX one: score-based dispatch (ggml wins on
//! this CPU), backend pins and overrides, the same greedy output on the SmolLM2 GGUF,
//! K-quant GGUFs (Gemma 3 270M Q4_K_M) served by ggml and refused by MLX with the fallback
//! named, and the request features (streaming, stop strings, batching, cancellation).

mod util;

use mlxengine::{Engine, HostError, ModelEntry, PluginSet, Registry, Source};
use plugin_api::{
    text::{ChatMessage, FinishReason, GenerateRequest, StreamControl, StreamEvent, TextInput},
    ModelKind,
};
use std::{path::PathBuf, process::Command};

fn model_dir(id: &str) -> PathBuf {
    let p = mlxengine::engine::models_dir().join(id);
    assert!(
        p.is_dir(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

fn engine() -> Engine {
    let mut set = PluginSet::default();
    set.load(&util::dylib("mlxengine_llm"))
        .expect("mlx llm plugin loads");
    set.load(&util::dylib("mlxengine_llm_ggml"))
        .expect("ggml llm plugin loads");
    let e = Engine::new(Registry::new(), set);
    e.add_model(ModelEntry::new(
        "smol",
        ModelKind::LLM,
        "llama",
        Source::Path(model_dir("smollm2-135m-instruct")),
    ))
    .unwrap();
    e.add_model(ModelEntry::new(
        "gemma",
        ModelKind::LLM,
        "gemma3",
        Source::Path(model_dir("gemma3-270m")),
    ))
    .unwrap();
    e
}

fn chat(prompt: &str) -> TextInput {
    let m = ChatMessage {
        role: "user".into(),
        content: prompt.into(),
        images: Default::default(),
    };
    TextInput {
        prompt: "".into(),
        messages: vec![m].into(),
    }
}

fn raw(prompt: &str) -> TextInput {
    TextInput {
        prompt: prompt.into(),
        messages: Default::default(),
    }
}

fn gen(
    e: &Engine,
    id: &str,
    backend: Option<&str>,
    inputs: Vec<TextInput>,
    n: u32,
) -> plugin_api::text::GenerateResponse {
    let req = GenerateRequest {
        inputs: inputs.into(),
        max_tokens: n,
        ..Default::default()
    };
    e.generate_on(id, backend, &req, &mut |_| StreamControl::Continue)
        .unwrap()
}

#[test]
fn ggml_is_chosen_on_cpu_and_both_providers_reproduce_the_reference() {
    let e = engine();
    let entry = e.entry("smol").unwrap();
    let cands = e.candidates(&entry, Default::default());
    let score = |name: &str| cands.iter().find(|c| c.plugin == name).unwrap().score;
    assert!(score("ggml-llm") > score("mlx-llm"), "{cands:?}");
    assert_eq!(
        e.select(&entry, Default::default())
            .unwrap()
            .descriptor
            .name
            .as_str(),
        "ggml-llm"
    );

    // MLX (f32 after dequantization) follows the reference up to its first near-tie
    // (top-2 gap < 0.02). llama.cpp's Q4_1 kernels quantize activations to 8 bits, which
    // moves logits by up to ~0.1: ggml follows the reference to the same horizon on at
    // least two prompts (measured: "primes" 10/10, "story" 16/16), and wherever it departs
    // earlier, the reference's top-2 gap at that step is below 0.12 (measured: 0.08, 0.11).
    let mut ggml_full = 0;
    for case in util::reference()["llm"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let input = if case["chat"].as_bool().unwrap() {
            chat(prompt)
        } else {
            raw(prompt)
        };
        let want: Vec<u32> = serde_json::from_value(case["new_ids"].clone()).unwrap();
        let gaps: Vec<f64> = case["top2_gaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_f64().unwrap())
            .collect();
        let horizon = gaps.iter().position(|g| *g < 0.02).unwrap_or(want.len());
        for backend in ["ggml", "mlx"] {
            let out = gen(
                &e,
                "smol",
                Some(backend),
                vec![input.clone()],
                want.len() as u32,
            );
            let got = &out.outputs[0].tokens;
            let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            println!(
                "{backend}: {prompt:?}: {same}/{} reference ids (horizon {horizon})",
                want.len()
            );
            assert_eq!(
                out.outputs[0].prompt_tokens as usize,
                case["input_ids"].as_array().unwrap().len()
            );
            if same >= horizon {
                ggml_full += usize::from(backend == "ggml");
                continue;
            }
            assert_eq!(backend, "ggml", "mlx: {prompt:?}: {got:?} vs {want:?}");
            assert!(
                gaps[same] < 0.12,
                "ggml departs at step {same} where the gap is {}: {got:?} vs {want:?}",
                gaps[same]
            );
        }
    }
    assert!(
        ggml_full >= 2,
        "ggml matched the reference horizon on {ggml_full} prompts"
    );
    assert_eq!(
        e.served_by("smol", Some("ggml")).as_deref(),
        Some("ggml-llm")
    );
    assert_eq!(e.served_by("smol", Some("mlx")).as_deref(), Some("mlx-llm"));
}

#[test]
fn a_k_quant_gguf_runs_on_ggml_and_mlx_names_the_fallback() {
    let e = engine();
    let out = gen(&e, "gemma", None, vec![raw("The capital of France is")], 16);
    let text = out.outputs[0].text.as_str();
    println!("gemma3-270m: {text:?}");
    // A 270M base model: coherent English about the prompt, not necessarily a fact.
    assert!(
        text.split_whitespace().count() >= 8 && text.contains("France"),
        "{text:?}"
    );
    assert_eq!(e.served_by("gemma", None).as_deref(), Some("ggml-llm"));
    let req = GenerateRequest {
        inputs: vec![raw("Hi")].into(),
        max_tokens: 4,
        ..Default::default()
    };
    let err = e
        .generate_on("gemma", Some("mlx"), &req, &mut |_| StreamControl::Continue)
        .unwrap_err();
    assert!(matches!(err, HostError::NoPlugin { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("mlx-llm: unsupported quant type Q5_0, Q4_K, Q6_K"),
        "{msg}"
    );
    assert!(msg.contains("use the ggml backend"), "{msg}");
    assert!(
        msg.contains("ggml-llm: --backend pins backend `mlx`"),
        "{msg}"
    );
}

#[test]
fn registry_backend_pin() {
    let e = engine();
    let mut pinned = ModelEntry::new(
        "smol-mlx",
        ModelKind::LLM,
        "llama",
        Source::Path(model_dir("smollm2-135m-instruct")),
    );
    pinned.backend = Some("mlx".into());
    e.add_model(pinned).unwrap();
    gen(&e, "smol-mlx", None, vec![raw("Hello")], 2);
    assert_eq!(e.served_by("smol-mlx", None).as_deref(), Some("mlx-llm"));
}

#[test]
fn ggml_streaming_stop_strings_batching_and_cancellation() {
    let e = engine();
    let b = Some("ggml");
    // Streaming a multi-byte output yields exactly the final text.
    let mut req = GenerateRequest {
        inputs: vec![raw("日本の首都は")].into(),
        max_tokens: 24,
        stream: true,
        ..Default::default()
    };
    let mut streamed = String::new();
    let out = e.generate_on("smol", b, &req, &mut |ev: &StreamEvent| {
        streamed.push_str(&ev.text);
        StreamControl::Continue
    });
    let out = out.unwrap();
    assert!(!out.outputs[0].text.is_ascii());
    assert_eq!(streamed, out.outputs[0].text.as_str());
    // A stop string across tokens.
    req.inputs = vec![chat("What is the capital of France?")].into();
    // ggml answers "L'Étoile, la Mar…" here; the stop string spans tokens.
    req.stop = vec!["toile, la".into()].into();
    let out = e
        .generate_on("smol", b, &req, &mut |_| StreamControl::Continue)
        .unwrap();
    assert_eq!(out.outputs[0].text.as_str(), "L'É");
    assert_eq!(out.outputs[0].finish, FinishReason::STOP);
    // A batch equals each input alone.
    let inputs = vec![
        chat("What is the capital of France?"),
        raw("Once upon a time, in a small village,"),
        raw("The quick brown fox"),
    ];
    let batch = gen(&e, "smol", b, inputs.clone(), 10);
    for (i, input) in inputs.into_iter().enumerate() {
        let single = gen(&e, "smol", b, vec![input], 10);
        assert_eq!(
            batch.outputs[i].tokens, single.outputs[0].tokens,
            "input #{i}"
        );
    }
    // Cancellation after three events.
    let mut n = 0;
    req.stop = Default::default();
    let out = e
        .generate_on("smol", b, &req, &mut |_| {
            n += 1;
            if n == 3 {
                StreamControl::Stop
            } else {
                StreamControl::Continue
            }
        })
        .unwrap();
    assert_eq!(out.outputs[0].finish, FinishReason::CANCELLED);
    assert_eq!(out.outputs[0].tokens.len(), 3);
    let s = &batch.stats;
    assert!(s.decode_tokens_per_s > 0.0 && s.prefill_tokens_per_s > 0.0 && s.peak_memory_bytes > 0);
}

#[test]
fn cli_default_is_ggml_and_backend_flag_forces_mlx() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mlxengine"))
            .args(args)
            .env("MLXENGINE_HOME", home.path())
            .output()
            .unwrap()
    };
    // The primes prompt's first 10 ids hold for both providers (see above).
    let case = &util::reference()["llm"][2];
    let want = &case["new_ids"].as_array().unwrap()[..10];
    for (flag, plugin) in [(None, "ggml-llm"), (Some("mlx"), "mlx-llm")] {
        let mut args = vec![
            "generate",
            "--model",
            "smollm2-135m-instruct",
            "--chat",
            "--json",
            "--max-tokens",
            "10",
        ];
        if let Some(f) = flag {
            args.extend(["--backend", f]);
        }
        args.push(case["prompt"].as_str().unwrap());
        let o = run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["backend"], plugin);
        assert_eq!(v["token_ids"].as_array().unwrap()[..], want[..]);
    }
    let o = run(&["info", "gemma3-270m", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["plugin"], "ggml-llm");
    let mlx = v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["plugin"] == "mlx-llm")
        .unwrap();
    assert_eq!(mlx["score"], 0);
    assert!(mlx["reason"]
        .as_str()
        .unwrap()
        .contains("unsupported quant type Q5_0, Q4_K, Q6_K"));
}
