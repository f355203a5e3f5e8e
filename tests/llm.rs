//! The llm plugin through the ABI on the real SmolLM2 weights: streaming, stop strings,
//! batching, cancellation, seeds, bad inputs; and the `generate` / `import` CLI.

mod util;

use engine::{Engine, HostError, ModelEntry, PluginSet, Registry, Source};
use plugin_api::{
    text::{
        ChatMessage, ContentPart, FinishReason, GenerateRequest, SamplingParams, StreamControl,
        StreamEvent, TextInput,
    },
    ErrorKind, ModelKind,
};
use std::{path::PathBuf, process::Command};

fn smollm_dir() -> PathBuf {
    let p = engine::paths::models_dir().join("smollm2-135m-instruct");
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
        .expect("llm plugin loads");
    let engine = Engine::new(Registry::new(), set);
    engine
        .add_model(ModelEntry::new(
            "smol",
            ModelKind::LLM,
            "llama",
            Source::Path(smollm_dir()),
        ))
        .unwrap();
    engine
}

fn raw(prompt: &str) -> TextInput {
    TextInput {
        prompt: prompt.into(),
        messages: Default::default(),
    }
}

fn chat(prompt: &str) -> TextInput {
    let m = ChatMessage::text("user", prompt);
    TextInput {
        prompt: "".into(),
        messages: vec![m].into(),
    }
}

fn request(inputs: Vec<TextInput>, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        inputs: inputs.into(),
        max_tokens,
        ..Default::default()
    }
}

fn run(
    e: &Engine,
    req: &GenerateRequest,
) -> (plugin_api::text::GenerateResponse, Vec<StreamEvent>) {
    let mut events = Vec::new();
    let out = e
        .generate("smol", &util::gen(req.clone()), &mut |ev| {
            events.push(ev.clone());
            StreamControl::Continue
        })
        .unwrap();
    (out, events)
}

#[test]
fn streamed_multibyte_text_equals_the_final_text() {
    let e = engine();
    let mut req = request(vec![raw("日本の首都は")], 24);
    req.stream = true;
    let (out, events) = run(&e, &req);
    let streamed: String = events.iter().map(|ev| ev.text.as_str()).collect();
    let text = out.outputs[0].text.as_str();
    assert!(!text.is_ascii(), "expected non-ASCII output, got {text:?}");
    assert_eq!(streamed, text);
    assert_eq!(
        events.len(),
        out.outputs[0].tokens.len(),
        "one event per token"
    );
    assert_eq!(events.last().unwrap().finish, out.outputs[0].finish);
    // Not streamed: the same text.
    req.stream = false;
    let (again, none) = run(&e, &req);
    assert!(none.is_empty());
    assert_eq!(again.outputs[0].text, out.outputs[0].text);
}

#[test]
fn a_stop_string_split_across_tokens_stops_and_is_not_emitted() {
    let e = engine();
    let mut req = request(vec![chat("What is the capital of France?")], 16);
    let (full, _) = run(&e, &req);
    assert_eq!(
        full.outputs[0].text.as_str(),
        "The capital of France is Paris."
    );
    // "of Fr" spans the tokens " of" and " France".
    req.stop = vec!["of Fr".into()].into();
    req.stream = true;
    let (out, events) = run(&e, &req);
    let o = &out.outputs[0];
    assert_eq!(o.text.as_str(), "The capital ");
    assert_eq!(o.finish, FinishReason::STOP);
    let streamed: String = events.iter().map(|ev| ev.text.as_str()).collect();
    assert_eq!(streamed, "The capital ");
}

#[test]
fn a_batch_of_four_equals_each_prompt_alone() {
    let e = engine();
    let prompts = vec![
        chat("What is the capital of France?"),
        raw("Once upon a time, in a small village,"),
        chat("List three prime numbers."),
        raw("The quick brown fox"),
    ];
    let (batch, _) = run(&e, &request(prompts.clone(), 12));
    assert_eq!(batch.outputs.len(), 4);
    for (i, p) in prompts.into_iter().enumerate() {
        let (single, _) = run(&e, &request(vec![p], 12));
        assert_eq!(
            batch.outputs[i].tokens, single.outputs[0].tokens,
            "input #{i}"
        );
        assert_eq!(batch.outputs[i].text, single.outputs[0].text, "input #{i}");
    }
    assert_eq!(
        batch.stats.prompt_tokens,
        batch
            .outputs
            .iter()
            .map(|o| u64::from(o.prompt_tokens))
            .sum::<u64>()
    );
}

#[test]
fn the_sink_can_cancel_a_generation() {
    let e = engine();
    let mut req = request(vec![raw("Once upon a time, in a small village,")], 64);
    req.stream = true;
    let mut n = 0;
    let out = e
        .generate("smol", &util::gen(req.clone()), &mut |_| {
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
    // The model serves the next request normally.
    let (next, _) = run(&e, &request(vec![raw("Hello")], 2));
    assert_eq!(next.outputs[0].tokens.len(), 2);
}

#[test]
fn same_seed_same_sample_and_stats_are_reported() {
    let e = engine();
    let mut req = request(vec![raw("Once upon a time")], 16);
    req.sampling = SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        seed: Some(42).into(),
        ..Default::default()
    };
    let (a, _) = run(&e, &req);
    let (b, _) = run(&e, &req);
    assert_eq!(a.outputs[0].tokens, b.outputs[0].tokens);
    req.sampling.seed = Some(43).into();
    let (c, _) = run(&e, &req);
    assert_ne!(a.outputs[0].tokens, c.outputs[0].tokens);
    let s = &a.stats;
    assert_eq!(s.generated_tokens, 16);
    assert!(
        s.prefill_tokens_per_s > 0.0
            && s.decode_tokens_per_s > 0.0
            && s.time_to_first_token_ms > 0.0
    );
    assert!(
        s.peak_memory_bytes > 100_000_000,
        "peak memory {}",
        s.peak_memory_bytes
    );
    req.logprobs = true;
    let (lp, _) = run(&e, &req);
    assert_eq!(lp.outputs[0].logprobs.len(), 16);
    assert!(lp.outputs[0].logprobs.iter().all(|l| *l <= 0.0));
}

fn plugin_error(r: Result<plugin_api::text::GenerateResponse, HostError>) -> (ErrorKind, String) {
    match r {
        Err(HostError::Plugin { error, .. }) => (error.kind, error.to_string()),
        Err(other) => panic!("expected a plugin error, got: {other}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn bad_inputs_are_clear_errors_and_the_host_keeps_running() {
    let e = engine();
    let sink = &mut |_: &StreamEvent| StreamControl::Continue;
    let err = e
        .generate("nope", &util::gen(request(vec![raw("hi")], 4)), sink)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("unknown model `nope` (registered: smol)"),
        "{err}"
    );

    // Refused where it enters (the CLI or the server), before any plugin sees it.
    let bad = engine::request::Generate::new(request(vec![raw("hi")], 0)).unwrap_err();
    assert_eq!(bad.field, "max_tokens");
    assert!(
        bad.message.contains("max_tokens must be at least 1"),
        "{bad}"
    );

    let long = "word ".repeat(9000);
    let (kind, msg) =
        plugin_error(e.generate("smol", &util::gen(request(vec![raw(&long)], 4)), sink));
    assert_eq!(kind, ErrorKind::CONTEXT_LENGTH);
    assert!(
        msg.contains("input #0: the prompt has 9001 tokens, the model's context is 8192"),
        "{msg}"
    );

    let tmp = tempfile::tempdir().unwrap();
    // Missing weight file.
    let missing = tmp.path().join("missing");
    std::fs::create_dir(&missing).unwrap();
    std::fs::write(missing.join("config.json"), r#"{"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 16, "num_hidden_layers": 1, "vocab_size": 10}"#).unwrap();
    e.add_model(ModelEntry::new(
        "missing",
        ModelKind::LLM,
        "llama",
        Source::Path(missing.clone()),
    ))
    .unwrap();
    let (kind, msg) =
        plugin_error(e.generate("missing", &util::gen(request(vec![raw("hi")], 4)), sink));
    assert_eq!(kind, ErrorKind::NOT_FOUND);
    assert!(msg.contains("model.safetensors: missing file"), "{msg}");

    // Corrupt (truncated) GGUF.
    let corrupt = tmp.path().join("corrupt.gguf");
    let bytes = std::fs::read(smollm_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 2]).unwrap();
    e.add_model(ModelEntry::new(
        "corrupt",
        ModelKind::LLM,
        "llama",
        Source::Path(corrupt),
    ))
    .unwrap();
    // The plugin's probe already sees the truncation, so no provider is chosen.
    let msg = e
        .generate("corrupt", &util::gen(request(vec![raw("hi")], 4)), sink)
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("no loaded plugin can serve model `corrupt`: mlx-llm:")
            && msg.contains("corrupt.gguf")
            && msg.contains("extends past the end of the file"),
        "{msg}"
    );

    // A config whose model_type the plugin does not know.
    let mamba = tmp.path().join("mamba");
    std::fs::create_dir(&mamba).unwrap();
    std::fs::write(mamba.join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    e.add_model(ModelEntry::new(
        "mamba-local",
        ModelKind::LLM,
        "llama",
        Source::Path(mamba),
    ))
    .unwrap();
    let (kind, msg) =
        plugin_error(e.generate("mamba-local", &util::gen(request(vec![raw("hi")], 4)), sink));
    assert_eq!(kind, ErrorKind::UNSUPPORTED);
    assert!(
        msg.contains("model_type `mamba` is not supported by the llm plugin (supported: llama"),
        "{msg}"
    );
    // ... and one registered as such is refused before anything is read or downloaded.
    let src = Source::Hub {
        repo: "state-spaces/mamba-130m".into(),
        revision: "main".into(),
        files: vec![],
    };
    e.add_model(ModelEntry::new("mamba-hub", ModelKind::LLM, "mamba", src))
        .unwrap();
    let err = e
        .generate("mamba-hub", &util::gen(request(vec![raw("hi")], 4)), sink)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mlx-llm: does not support architecture `mamba` (supports: llama"),
        "{err}"
    );

    // Still serving.
    let (ok, _) = run(&e, &request(vec![raw("Hello")], 2));
    assert_eq!(ok.outputs[0].tokens.len(), 2);
}

fn mlxengine(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args(args)
        .env("MLXENGINE_HOME", home)
        .env_remove("MLXENGINE_PLUGIN_PATH")
        .env_remove("MLXENGINE_REGISTRY")
        .output()
        .unwrap()
}

#[test]
fn cli_generate_json_on_the_default_model_matches_the_reference() {
    let home = tempfile::tempdir().unwrap();
    let r = util::reference();
    let case = &r["llm"][0];
    let o = mlxengine(
        home.path(),
        &[
            "generate",
            "--backend",
            "mlx",
            "--chat",
            "--json",
            "--max-tokens",
            "8",
            case["prompt"].as_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["model"], "smollm2-135m-instruct");
    assert_eq!(v["token_ids"], case["new_ids"]);
    assert_eq!(
        v["prompt_tokens"],
        case["input_ids"].as_array().unwrap().len()
    );
    assert_eq!(v["finish_reason"], "stop");
    assert_eq!(v["text"], "The capital of France is Paris.");
    for k in ["ttft_ms", "prefill_tps", "decode_tps"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}");
    }
}

#[test]
fn cli_import_then_generate_from_the_hf_layout() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("smol-hf");
    let gguf = smollm_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let o = mlxengine(
        home.path(),
        &["import", gguf.to_str().unwrap(), out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let o = mlxengine(
        home.path(),
        &[
            "add",
            "--id",
            "smol-hf",
            "--kind",
            "llm",
            "--architecture",
            "llama",
            "--path",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = mlxengine(
        home.path(),
        &[
            "generate",
            "--model",
            "smol-hf",
            "--chat",
            "--json",
            "--max-tokens",
            "8",
            "What is the capital of France?",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["token_ids"], util::reference()["llm"][0]["new_ids"]);
    // Importing onto an existing directory is refused and leaves it alone.
    let o = mlxengine(
        home.path(),
        &["import", gguf.to_str().unwrap(), out.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
}

#[test]
fn registry_system_prompt_applies_when_the_user_gives_none() {
    let e = engine();
    let mut entry = ModelEntry::new(
        "pirate",
        ModelKind::LLM,
        "llama",
        Source::Path(smollm_dir()),
    );
    entry.system_prompt = Some("You are a pirate.".into());
    e.add_model(entry).unwrap();
    let prompt_tokens = |id: &str, input: TextInput| {
        e.generate(id, &util::gen(request(vec![input], 1)), &mut |_| {
            StreamControl::Continue
        })
        .unwrap()
        .outputs[0]
            .prompt_tokens
    };
    let default = prompt_tokens("smol", chat("Hi"));
    let pirate = prompt_tokens("pirate", chat("Hi"));
    assert_ne!(
        default, pirate,
        "the registry's system prompt replaces the template's default"
    );
    let explicit = TextInput {
        prompt: "".into(),
        messages: vec![
            ChatMessage::text("system", "You are a pirate."),
            ChatMessage::text("user", "Hi"),
        ]
        .into(),
    };
    assert_eq!(prompt_tokens("smol", explicit.clone()), pirate);
    // A system message from the user wins over the registry's.
    let mut own = explicit;
    own.messages[0].parts = vec![ContentPart::text("Be brief.")].into();
    assert_ne!(prompt_tokens("pirate", own), pirate);
}

#[test]
fn cli_chat_keeps_history_and_obeys_commands() {
    use std::io::Write;
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args(["chat", "--backend", "mlx", "--max-tokens", "8"])
        .env("MLXENGINE_HOME", home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\n/reset\nWhat is the capital of France?\n/exit\nnever sent\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out.matches("The capital of France is Paris.").count(),
        2,
        "{out}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("(history cleared)"));
}
