//! Device fit on the real models: memory estimates from the files against measured peak
//! resident memory, admission control under a budget, the MLX dtype policy, `device`
//! and `recommend`.

mod util;

use std::process::{Command, Output};

fn run(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args(args)
        .env("MLXENGINE_HOME", home)
        .env_remove("MLXENGINE_MEMORY_BUDGET")
        .output()
        .expect("run mlxengine")
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json")
}

#[test]
fn estimates_are_within_15_percent_of_measured_peak_memory() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let prompt = "Tell me a story about a lighthouse keeper.";
    let mut worst: f64 = 0.0;
    // (what, the run, the matching `info` arguments minus --context)
    let llm_cases: [(&str, &str, &[&str]); 4] = [
        ("smollm2-135m-instruct", "ggml", &[]),
        ("gemma3-270m", "ggml", &[]),
        ("smollm2-135m-instruct", "mlx", &["--dtype", "float32"]),
        ("smollm2-135m-instruct", "mlx", &["--dtype", "bfloat16"]),
    ];
    for (model, backend, extra) in llm_cases {
        // An MLX dtype is pinned through an injected registry entry over the same files.
        let mut id = model.to_owned();
        let mut pre: Vec<String> = Vec::new();
        if let Some(d) = extra.get(1) {
            id = format!("{model}-{d}");
            let file = h.join(format!("{id}.toml"));
            let src = engine::paths::models_dir().join(model);
            std::fs::write(
                &file,
                format!(
                    "[[models]]\nid = \"{id}\"\nkind = \"llm\"\narchitecture = \"llama\"\ndtype = \"{d}\"\n[models.source]\npath = \"{}\"\n",
                    src.display()
                ),
            )
            .unwrap();
            pre = vec!["--registry".into(), file.display().to_string()];
        }
        let mut args: Vec<&str> = pre.iter().map(String::as_str).collect();
        args.extend([
            "generate",
            "--model",
            &id,
            "--backend",
            backend,
            "--json",
            "--max-tokens",
            "32",
            prompt,
        ]);
        let g = json(&run(h, &args));
        let measured = g["memory"]["model_peak_bytes"].as_u64().unwrap() as f64;
        let context =
            g["prompt_tokens"].as_u64().unwrap() + g["generated_tokens"].as_u64().unwrap();
        let ctx = context.to_string();
        let mut info: Vec<&str> = pre.iter().map(String::as_str).collect();
        info.extend([
            "info",
            &id,
            "--backend",
            backend,
            "--context",
            &ctx,
            "--json",
        ]);
        let i = json(&run(h, &info));
        let est = i["estimate"]["total_bytes"].as_u64().unwrap() as f64;
        let err = est / measured - 1.0;
        eprintln!(
            "{id:<34} {backend:<5} {:<32} measured {:>7.1} MB  estimated {:>7.1} MB  error {:+.1}%",
            i["estimate"]["weights_as"].as_str().unwrap(),
            measured / 1e6,
            est / 1e6,
            err * 100.0
        );
        if let Some(d) = extra.get(1) {
            assert_eq!(g["dtype"], *d, "the model ran in the dtype estimated");
        }
        worst = worst.max(err.abs());
    }
    // Embeddings on each provider: one sentence, and 256 short ones in one call.
    for (backend, n) in [("ggml", 1usize), ("ggml", 256), ("mlx", 1), ("mlx", 256)] {
        let texts: Vec<String> = (0..n)
            .map(|i| format!("This is sentence number {i}."))
            .collect();
        let mut args = vec![
            "embed",
            "--model",
            "all-minilm-l6-v2",
            "--backend",
            backend,
            "--json",
        ];
        args.extend(texts.iter().map(String::as_str));
        let e = json(&run(h, &args));
        let measured = e["memory"]["model_peak_bytes"].as_u64().unwrap() as f64;
        let batch = n.to_string();
        let i = json(&run(
            h,
            &[
                "info",
                "all-minilm-l6-v2",
                "--backend",
                backend,
                "--context",
                "10",
                "--batch",
                &batch,
                "--json",
            ],
        ));
        let est = i["estimate"]["total_bytes"].as_u64().unwrap() as f64;
        let err = est / measured - 1.0;
        eprintln!(
            "all-minilm-l6-v2 × {n:<3}                      {backend:<5} {:<32} measured {:>7.1} MB  estimated {:>7.1} MB  error {:+.1}%",
            i["estimate"]["weights_as"].as_str().unwrap(),
            measured / 1e6,
            est / 1e6,
            err * 100.0
        );
        worst = worst.max(err.abs());
    }
    assert!(worst <= 0.15, "worst estimate error {:.1}%", worst * 100.0);
}

#[test]
fn a_budget_below_the_need_refuses_with_what_would_fit() {
    let home = tempfile::tempdir().unwrap();
    let o = run(
        home.path(),
        &[
            "--memory-budget",
            "100MB",
            "generate",
            "--model",
            "smollm2-135m-instruct",
            "hi",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for want in [
        "model `smollm2-135m-instruct` needs about",
        "weights 98 MB",
        "memory budget is 100 MB",
        "--memory-budget",
        "smaller quantization",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    // The environment variable works the same; a bad size names the flag.
    let o = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args(["generate", "hi"])
        .env("MLXENGINE_HOME", home.path())
        .env("MLXENGINE_MEMORY_BUDGET", "lots")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("--memory-budget: `lots` is not a size"));
}

#[test]
fn mlx_on_cpu_loads_float32_when_it_fits_else_bfloat16() {
    let home = tempfile::tempdir().unwrap();
    let gen = |budget: &str| {
        json(&run(
            home.path(),
            &[
                "--memory-budget",
                budget,
                "generate",
                "--backend",
                "mlx",
                "--json",
                "--chat",
                "--max-tokens",
                "8",
                "What is the capital of France?",
            ],
        ))
    };
    // float32 needs ~700 MB, bfloat16 ~420 MB (`info --backend mlx [--dtype bfloat16]`).
    let roomy = gen("4GB");
    assert_eq!(roomy["dtype"], "float32");
    let tight = gen("600MB");
    assert_eq!(tight["dtype"], "bfloat16");
    assert!(tight["text"].as_str().unwrap().contains("Paris"), "{tight}");
    let o = run(
        home.path(),
        &[
            "--memory-budget",
            "300MB",
            "generate",
            "--backend",
            "mlx",
            "hi",
        ],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("float32 would need"));
}

#[test]
fn device_and_recommend_describe_this_machine() {
    let home = tempfile::tempdir().unwrap();
    let d = json(&run(home.path(), &["device", "--json"]));
    assert!(d["physical_cores"].as_u64().unwrap() >= 1);
    assert!(d["total_memory_bytes"].as_u64().unwrap() > 1 << 30);
    assert!(
        d["memory_budget_bytes"].as_u64().unwrap() < d["available_memory_bytes"].as_u64().unwrap()
    );
    assert_eq!(d["mlx_backend"], "mlx-cpu");
    assert!(
        d["blas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b.as_str().unwrap().contains("openblas")),
        "MLX's BLAS is OpenBLAS after setup: {d}"
    );
    let plugins = d["plugins"].as_array().unwrap();
    assert!(plugins
        .iter()
        .any(|p| p["plugin"] == "ggml-llm" && p["score"] == 60));

    // A registry entry far larger than this machine (not downloaded: estimated from its
    // registry size) is listed as not fitting, with the reason.
    let reg = home.path().join("big.toml");
    std::fs::write(
        &reg,
        "[[models]]\nid = \"huge-405b\"\nkind = \"llm\"\narchitecture = \"llama\"\nsize_bytes = 230000000000\n[models.source]\nhub = \"meta-llama/Llama-3.1-405B-Instruct\"\n",
    )
    .unwrap();
    let r = json(&run(
        home.path(),
        &[
            "--registry",
            reg.to_str().unwrap(),
            "recommend",
            "--kind",
            "llm",
            "--json",
        ],
    ));
    let models = r["models"].as_array().unwrap();
    let ids: Vec<&str> = models.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids[..2],
        ["smollm2-135m-instruct", "gemma3-270m"],
        "fastest fitting first"
    );
    for m in &models[..2] {
        assert_eq!(m["fits"], true);
        assert!(m["estimate_bytes"].as_u64().unwrap() > 100_000_000);
        assert_eq!(m["speed_class"], "interactive");
    }
    let huge = models.iter().find(|m| m["id"] == "huge-405b").unwrap();
    assert_eq!(huge["fits"], false);
    assert!(
        huge["reason"]
            .as_str()
            .unwrap()
            .contains("more than the memory budget"),
        "{huge}"
    );
    assert_eq!(ids.last(), Some(&"huge-405b"));
}
