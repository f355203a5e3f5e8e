//! `mlxengine quantize --format gguf` (the ggml plugin: our HF → GGUF converter, then
//! llama.cpp's own quantizer) on the shipped SmolLM2: a Hub folder written as GGUF is the
//! shipped model value for value (tensors, tokenizer, template); a Hub folder and the GGUF
//! it came from quantize to the same tensors; llama.cpp serves what was written, Q8_0
//! costing < 1 % perplexity; bad requests are refused by name and leave nothing.

mod util;

use gguf::Gguf;
use std::{collections::BTreeMap, path::Path, process::Output};

const TEXT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/eval/us-founding-texts.txt"
);

fn run(home: &Path, args: &[&str]) -> Output {
    util::mlxengine(home, args).output().expect("run mlxengine")
}

fn ok(home: &Path, args: &[&str]) -> Output {
    let o = run(home, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every tensor of a GGUF as float32, by name, with its ggml type.
fn tensors(file: &Path) -> BTreeMap<String, (u32, Vec<usize>, Vec<f32>)> {
    let g = Gguf::open(file).unwrap();
    g.tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                (t.ggml_type, t.shape.clone(), g.to_f32(t).unwrap()),
            )
        })
        .collect()
}

/// `a` and `b` hold the same tensors: names, types, shapes, values.
fn same_tensors(a: &Path, b: &Path) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, t) in &a {
        assert!(b[name] == *t, "tensor `{name}` differs");
    }
}

/// The perplexity of a GGUF on the ggml provider (float settings: no flash attention,
/// f32 KV cache), 2 chunks of 512.
fn ppl(home: &Path, id: &str, file: &Path) -> f64 {
    let registry = home.join(format!("{id}.toml"));
    std::fs::write(
        &registry,
        format!(
            "[[models]]\nid = \"{id}\"\nkind = \"llm\"\narchitecture = \"llama\"\n\
             source = {{ path = \"{}\" }}\noptions = {{ flash_attn = \"off\", kv_type = \"f32\" }}\n",
            file.display()
        ),
    )
    .unwrap();
    let args = [
        "--registry",
        s(&registry),
        "perplexity",
        "-m",
        id,
        "-f",
        TEXT,
        "--ctx",
        "512",
        "--chunks",
        "2",
        "--backend",
        "ggml",
        "--json",
    ];
    let v: serde_json::Value = serde_json::from_slice(&ok(home, &args).stdout).unwrap();
    let p = v["ppl"].as_f64().unwrap();
    println!("{id}: perplexity {p:.5}");
    p
}

#[test]
fn hub_folders_and_ggufs_quantize_to_the_same_model_llama_cpp_serves() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let shipped = util::smollm2_q4_1();
    let hf = h.join("smollm2-hf");
    ok(h, &["import", s(&shipped), s(&hf)]);

    // HF → GGUF at F32: the shipped file's float twin, value for value (Q/K rows permuted
    // back, nothing rounded), with the shipped tokenizer and template.
    let f32_file = h.join("from-hf.f32.gguf");
    ok(
        h,
        &[
            "quantize",
            s(&hf),
            "-o",
            s(&f32_file),
            "--type",
            "F32",
            "-q",
        ],
    );
    let twin = util::smollm2_f32_twin();
    same_tensors(&f32_file, &twin);
    let (ours, theirs) = (
        Gguf::open(&f32_file).unwrap(),
        Gguf::open(&shipped).unwrap(),
    );
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.context_length",
    ] {
        let (a, b) = (ours.get(key), theirs.get(key));
        assert!(a.is_some(), "{key} missing");
        assert_eq!(
            a.map(gguf::to_json),
            b.map(gguf::to_json),
            "metadata `{key}`"
        );
    }

    // Q4_K_M from the shipped GGUF (llama.cpp requantizes from its own dequantization) and
    // from the Hub folder (our F32 GGUF first): the same float values in, so the same
    // quantized tensors out — and llama.cpp's mix of types (Q4_K, Q6_K for some layers).
    let from_gguf = h.join("from-gguf.Q4_K_M.gguf");
    let from_hf = h.join("q4km");
    let o = ok(
        h,
        &[
            "quantize",
            s(&shipped),
            "-o",
            s(&from_gguf),
            "--type",
            "Q4_K_M",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["plugin"], "ggml-llm");
    assert!(
        report["tensors_quantized"].as_u64().unwrap() >= 30 * 7,
        "{report}"
    );
    ok(
        h,
        &[
            "quantize",
            s(&hf),
            "-o",
            s(&from_hf),
            "--format",
            "gguf",
            "--type",
            "q4_k_m",
            "-q",
        ],
    );
    same_tensors(&from_gguf, &from_hf.join("model.gguf"));
    let a = tensors(&from_gguf);
    let types: std::collections::BTreeSet<u32> = a.values().map(|t| t.0).collect();
    // ggml type ids: F32 0, Q4_K 12, Q6_K 14.
    assert!(
        types.contains(&12) && types.contains(&14),
        "types {types:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&from_hf)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["model.gguf"], "the intermediate F32 GGUF is removed");

    // llama.cpp serves them: the F32 GGUF we wrote scores the text as the float twin does
    // (same weights, same tokenizer, same kernels: equal up to nothing), and Q8_0 made
    // from the Hub folder costs < 1 % (a rounding step of 1/254 of each block's range).
    let q8 = h.join("from-hf.Q8_0.gguf");
    ok(
        h,
        &["quantize", s(&hf), "-o", s(&q8), "--type", "Q8_0", "-q"],
    );
    let p_twin = ppl(h, "twin", &twin);
    let p_ours = ppl(h, "ours-f32", &f32_file);
    assert!(
        (p_ours / p_twin - 1.0).abs() < 1e-6,
        "F32: ours {p_ours} vs twin {p_twin}"
    );
    let p_q8 = ppl(h, "ours-q8", &q8);
    let d8 = p_q8 / p_twin - 1.0;
    println!("Q8_0 Δppl {:+.3} %", d8 * 100.0);
    assert!(d8.abs() < 0.01, "Q8_0: {:+.3} %", d8 * 100.0);
    let p_q4 = ppl(h, "ours-q4km", &from_gguf);
    assert!(
        p_q4 > p_q8,
        "fewer bits cost more: Q4_K_M {p_q4}, Q8_0 {p_q8}"
    );
}

#[test]
fn gguf_requests_it_cannot_do_are_refused_by_name_and_leave_nothing() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let shipped = util::smollm2_q4_1();
    let qwen = h.join("qwen");
    std::fs::create_dir(&qwen).unwrap();
    std::fs::write(qwen.join("config.json"), r#"{"model_type":"qwen2"}"#).unwrap();
    let x = h.join("x.gguf");
    let x = s(&x);
    let cases: [(Vec<&str>, &str); 5] = [
        (
            vec![s(&shipped), "-o", x, "--type", "IQ2_XS"],
            "type `IQ2_XS` is not one llama.cpp quantizes to",
        ),
        (
            vec![s(&shipped), "-o", x, "--format", "gguf"],
            "needs a llama.cpp type (`--type`)",
        ),
        (
            vec![
                s(&shipped),
                "-o",
                x,
                "--type",
                "Q4_0",
                "--recipe",
                "mixed_4_6",
            ],
            "option `recipe` applies to MLX output",
        ),
        (
            vec![s(&shipped), "-o", x, "--format", "mlx"],
            "a .gguf file is written with format `gguf`",
        ),
        (
            vec![s(&qwen), "-o", x, "--type", "Q8_0"],
            "`model_type` `qwen2` is not one our GGUF converter writes",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["quantize"];
        all.extend(args);
        let o = run(h, &all);
        assert!(!o.status.success(), "{all:?} succeeded");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(want), "{all:?}: want {want:?} in {e}");
        let left: Vec<_> = std::fs::read_dir(h)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("x.gguf"))
            .collect();
        assert!(left.is_empty(), "{all:?} left {left:?}");
    }
}
