//! The `mlxengine` binary: JSON output, human output, exit codes and one-line errors,
//! `--registry` merging, `add` / `remove` on the user's runtime registry.

mod util;

use std::process::Output;

use util::mlxengine;

fn run(home: &std::path::Path, args: &[&str]) -> Output {
    mlxengine(home, args).output().expect("run mlxengine")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn embed_json_matches_reference() {
    let home = tempfile::tempdir().unwrap();
    util::minilm_dir();
    let reference = util::reference();
    for case in reference["embed"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let o = run(
            home.path(),
            &["embed", "--model", "all-minilm-l6-v2", "--json", text],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON document");
        assert_eq!(v["model"], "all-minilm-l6-v2");
        assert_eq!(v["dim"], 384);
        let got: Vec<Vec<f32>> = serde_json::from_value(v["embeddings"].clone()).unwrap();
        assert_eq!(got.len(), 1);
        let want: Vec<f32> = serde_json::from_value(case["embedding"].clone()).unwrap();
        let cos = util::cosine(&got[0], &want);
        assert!(cos >= 0.999, "{text}: cosine {cos}");
    }
}

/// Where MLX cannot JIT-compile its fused CPU kernels (here: a `g++` that fails, and an
/// empty temp dir so no kernel is cached), embeddings still come out right, unfused, with
/// a warning, and a batch of many texts (run on the worker pool) works too.
#[test]
fn embed_without_a_working_cpu_compiler() {
    let home = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let gpp = bin.path().join("g++");
    std::fs::write(
        &gpp,
        "#!/bin/sh\ncase \"$*\" in *--version*) echo fake; exit 0;; esac\necho nope >&2; exit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gpp, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let case = &util::reference()["embed"][0];
    let text = case["text"].as_str().unwrap();
    // The MLX provider (the fused GELU is its), not the CPU's default ggml one.
    let mut args = vec![
        "-v",
        "embed",
        "--model",
        "all-minilm-l6-v2",
        "--backend",
        "mlx",
        "--json",
        text,
    ];
    let filler: Vec<String> = (0..200).map(|i| format!("filler sentence {i}")).collect();
    args.extend(filler.iter().map(String::as_str));
    let o = mlxengine(home.path(), &args)
        .env("TMPDIR", tmp.path())
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("could not compile the fused GELU"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let got: Vec<Vec<f32>> = serde_json::from_value(v["embeddings"].clone()).unwrap();
    assert_eq!(got.len(), 201);
    let want: Vec<f32> = serde_json::from_value(case["embedding"].clone()).unwrap();
    let cos = util::cosine(&got[0], &want);
    assert!(cos >= 0.999, "{text}: cosine {cos}");
}

#[test]
fn plugins_json_lists_the_embed_plugin() {
    let home = tempfile::tempdir().unwrap();
    let o = run(home.path(), &["plugins", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["api_version"], plugin_api::API_VERSION);
    let embed = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "mlx-embed")
        .expect("mlx-embed listed");
    assert_eq!(embed["kinds"], serde_json::json!(["embed"]));
    assert_eq!(embed["api_version"], plugin_api::API_VERSION);
    assert!(embed["features"]
        .as_array()
        .unwrap()
        .contains(&"embeddings".into()));
    // Test fixtures in the build dir are not named like plugins, so they are not loaded.
    assert_eq!(v["errors"].as_array().unwrap().len(), 0, "{v}");
}

#[test]
fn plugin_dir_flag_reports_broken_libraries_without_failing() {
    let home = tempfile::tempdir().unwrap();
    let dir = util::plugin_dir(&[
        ("test_not_a_plugin", "broken"),
        ("test_wrong_version", "old"),
    ]);
    let o = run(
        home.path(),
        &["--plugin-dir", dir.path().to_str().unwrap(), "plugins"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("mlx-embed"), "{out}");
    assert!(
        out.contains("libmlxengine_broken.so: not an MLXEngine plugin"),
        "{out}"
    );
    assert!(out.contains("built for plugin API version 999"), "{out}");
}

#[test]
fn models_and_info() {
    let home = tempfile::tempdir().unwrap();
    let o = run(home.path(), &["models", "--kind", "embed", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let m = &v["models"][0];
    assert_eq!(m["id"], "all-minilm-l6-v2");
    assert_eq!(m["local"], true);
    let o = run(home.path(), &["models", "--kind", "diffusion", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()["models"],
        serde_json::json!([])
    );
    let o = run(home.path(), &["info", "all-minilm-l6-v2", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    // On CPU the ggml provider outscores MLX's CPU path for embeddings.
    assert_eq!(v["plugin"], "ggml-llm", "{v}");
    let score = |name: &str| {
        v["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["plugin"] == name)
            .map(|c| c["score"].as_u64().unwrap())
    };
    assert_eq!(
        (score("ggml-llm"), score("mlx-embed")),
        (Some(60), Some(50)),
        "{v}"
    );
    let o = run(home.path(), &["models", "--kind", "sound"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown kind `sound`"));
}

#[test]
fn a_reader_that_went_away_ends_the_command_quietly() {
    // `mlxengine models | head -0`: stdout's reader is gone before anything is written.
    let home = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = mlxengine(home.path(), &["models"])
        .stdout(writer)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(141), "{err}");
}

#[test]
fn errors_exit_non_zero_with_one_line() {
    let home = tempfile::tempdir().unwrap();
    let o = run(home.path(), &["embed", "--model", "no-such-model", "hello"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: unknown model `no-such-model` (registered: all-minilm-l6-v2"),
        "{err}"
    );
}

#[test]
fn extra_registry_merge_and_its_mistakes() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra.toml");
    std::fs::write(
        &extra,
        format!(
            "[[models]]\nid = \"my-minilm\"\nkind = \"embed\"\narchitecture = \"bert\"\nsource = {{ path = \"{}\" }}\n",
            util::minilm_dir().display()
        ),
    )
    .unwrap();
    let x = extra.to_str().unwrap();
    let o = run(
        home.path(),
        &[
            "--registry",
            x,
            "embed",
            "--json",
            "--model",
            "my-minilm",
            "A man is eating food.",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[models]]\nid = \"all-minilm-l6-v2\"\nkind = \"embed\"\narchitecture = \"bert\"\nsource = { path = \"/m\" }\n").unwrap();
    let o = run(
        home.path(),
        &["--registry", bad.to_str().unwrap(), "models"],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(
            "bad.toml:2: model `all-minilm-l6-v2`: key `id`: duplicate id, already defined at"
        ),
        "{err}"
    );
}

#[test]
fn add_and_remove_use_the_runtime_registry_only() {
    let home = tempfile::tempdir().unwrap();
    let path = util::minilm_dir();
    let o = run(
        home.path(),
        &[
            "add",
            "--id",
            "added",
            "--kind",
            "embed",
            "--architecture",
            "bert",
            "--path",
            path.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(home.path().join("registry.toml").is_file());
    let o = run(
        home.path(),
        &["embed", "--model", "added", "--json", "hello"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Adding the same id again, or a bad kind, is refused and changes nothing.
    let before = std::fs::read_to_string(home.path().join("registry.toml")).unwrap();
    let o = run(
        home.path(),
        &[
            "add",
            "--id",
            "added",
            "--kind",
            "embed",
            "--architecture",
            "bert",
            "--path",
            path.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("duplicate id"), "{}", stderr(&o));
    let o = run(
        home.path(),
        &[
            "add",
            "--id",
            "x",
            "--kind",
            "sound",
            "--architecture",
            "bert",
            "--path",
            "/",
        ],
    );
    assert!(!o.status.success());
    assert_eq!(
        before,
        std::fs::read_to_string(home.path().join("registry.toml")).unwrap()
    );
    // Shipped models cannot be removed; added ones can.
    let o = run(home.path(), &["remove", "all-minilm-l6-v2"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not in your runtime registry"),
        "{}",
        stderr(&o)
    );
    let o = run(home.path(), &["remove", "added"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(home.path(), &["embed", "--model", "added", "hello"]);
    assert!(stderr(&o).contains("unknown model `added`"));
}

#[test]
fn a_gguf_llama_cpp_refuses_says_why() {
    // A GGUF header llama.cpp cannot load (no hyperparameters): its API says only "null
    // result"; the reason from its log must reach the user.
    let home = tempfile::tempdir().unwrap();
    let s = |t: &str| {
        let mut b = (t.len() as u64).to_le_bytes().to_vec();
        b.extend(t.as_bytes());
        b
    };
    let mut gguf = b"GGUF".to_vec();
    gguf.extend(3u32.to_le_bytes());
    gguf.extend(0u64.to_le_bytes());
    gguf.extend(1u64.to_le_bytes());
    gguf.extend(s("general.architecture"));
    gguf.extend(8u32.to_le_bytes());
    gguf.extend(s("llama"));
    gguf.resize(gguf.len().div_ceil(32) * 32, 0);
    let file = home.path().join("broken.gguf");
    std::fs::write(&file, gguf).unwrap();
    let reg = home.path().join("broken.toml");
    std::fs::write(
        &reg,
        format!(
            "[[models]]\nid = \"broken\"\nkind = \"llm\"\narchitecture = \"llama\"\nbackend = \"ggml\"\nsource = {{ path = {:?} }}\n",
            file.display().to_string()
        ),
    )
    .unwrap();
    let o = run(
        home.path(),
        &[
            "--registry",
            reg.to_str().unwrap(),
            "generate",
            "-m",
            "broken",
            "--max-tokens",
            "2",
            "hi",
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("broken.gguf") && err.contains("llama.cpp: ") && err.contains("key not found"),
        "{err}"
    );
}

#[test]
fn an_isolated_provider_answers_as_the_in_process_one() {
    // The same greedy generation (streamed to the terminal, through the pipe's event
    // frames) and the same embedding, with the plugins in child processes.
    let home = tempfile::tempdir().unwrap();
    let ask = [
        "generate",
        "--json",
        "--max-tokens",
        "24",
        "--chat",
        "Name three colours.",
    ];
    let inproc: serde_json::Value = serde_json::from_str(&stdout(&run(home.path(), &ask))).unwrap();
    let mut args = vec!["--isolate", "llm_ggml,embed"];
    args.extend(ask);
    let o = run(home.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let isolated: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(isolated["token_ids"], inproc["token_ids"]);
    assert_eq!(isolated["text"], inproc["text"]);
    let emb = [
        "embed",
        "--model",
        "all-minilm-l6-v2",
        "--json",
        "isolated or not",
    ];
    let a = stdout(&run(home.path(), &emb));
    let mut args = vec!["--isolate", "all"];
    args.extend(emb);
    let b = run(home.path(), &args);
    assert!(b.status.success(), "{}", stderr(&b));
    // (Its `memory` figures are this process's: the model's memory is the child's.)
    let vectors =
        |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["embeddings"].clone();
    assert_eq!(vectors(&stdout(&b)), vectors(&a));
    let o = run(home.path(), &["--isolate", "llm_ggml", "plugins", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ggml = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "ggml-llm")
        .unwrap();
    assert_eq!(ggml["isolated"], true, "{v}");
}
