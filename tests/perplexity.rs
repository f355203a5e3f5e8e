//! `mlxengine perplexity` (`Model::tokenize` + `Model::score`, plugin-api 2.2) on the
//! committed evaluation text (`tests/fixtures/eval/`): both providers compute the same
//! figure on the same float weights; on a checkpoint `mlxengine quantize` wrote, ours
//! equals mlx-lm's own perplexity; 8-bit costs < 1 % over float.

mod util;

use std::path::Path;

const TEXT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/eval/us-founding-texts.txt"
);
/// Two chunks of 512 (510 scored tokens): enough for the differences below to be
/// measured, not for a publishable figure (docs/quantization.md uses the whole text).
const CHUNKS: &str = "2";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(home: &Path, args: &[&str]) -> std::process::Output {
    let o = util::mlxengine(home, args).output().expect("run mlxengine");
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The perplexity of registry model `id` on `backend`, in `chunks` chunks of `ctx`.
fn ppl_at(home: &Path, registry: &Path, id: &str, backend: &str, ctx: &str, chunks: &str) -> f64 {
    let args = [
        "--registry",
        s(registry),
        "perplexity",
        "-m",
        id,
        "-f",
        TEXT,
        "--ctx",
        ctx,
        "--chunks",
        chunks,
        "--backend",
        backend,
        "--json",
    ];
    let v: serde_json::Value = serde_json::from_slice(&run(home, &args).stdout).unwrap();
    let (n, c): (u64, u64) = (ctx.parse().unwrap(), chunks.parse().unwrap());
    assert_eq!(v["chunks"], c);
    assert_eq!(
        v["scored"],
        c * (n / 2 - 1),
        "the second half of each chunk but its last token"
    );
    let p = v["ppl"].as_f64().unwrap();
    println!("{id} on {backend} (ctx {ctx}): perplexity {p:.4}");
    p
}

/// At the context llama.cpp's figures are quoted for.
fn ppl(home: &Path, registry: &Path, id: &str, backend: &str) -> f64 {
    ppl_at(home, registry, id, backend, "512", CHUNKS)
}

#[test]
fn providers_agree_on_float_weights_and_mlx_quantization_costs_what_it_may() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (q8, q4) = (h.join("q8"), h.join("q4"));
    for (dir, bits) in [(&q8, "8"), (&q4, "4")] {
        run(
            h,
            &[
                "quantize",
                s(&util::smollm2_q4_1()),
                "-o",
                s(dir),
                "--bits",
                bits,
                "--group-size",
                "64",
            ],
        );
    }
    let registry = h.join("models.toml");
    let entry = |id: &str, path: &Path, options: &str| {
        format!(
            "[[models]]\nid = \"{id}\"\nkind = \"llm\"\narchitecture = \"llama\"\nsource = {{ path = \"{}\" }}\n{options}\n",
            path.display()
        )
    };
    std::fs::write(
        &registry,
        [
            entry(
                "smol-f32",
                &util::smollm2_f32_twin(),
                "options = { flash_attn = \"off\", kv_type = \"f32\" }",
            ),
            entry("smol-q8", &q8, ""),
            entry("smol-q4", &q4, ""),
        ]
        .concat(),
    )
    .unwrap();
    // The same float32 values (the shipped Q4_1 file dequantized) through two
    // implementations: MLX reads the GGUF at float32, llama.cpp its float twin with float
    // settings. They differ by summation order only (~1e-5 of a logit), which moves a
    // perplexity by ~1e-5 relative; 0.5 % is the agreement the issue asks of two
    // implementations, and far below what a wrong mask, position or BOS does (tens of %).
    let float_mlx = ppl(h, &registry, "smollm2-135m-instruct", "mlx");
    let float_ggml = ppl(h, &registry, "smol-f32", "ggml");
    let rel = (float_mlx / float_ggml - 1.0).abs();
    assert!(
        rel < 0.005,
        "MLX {float_mlx} vs llama.cpp {float_ggml}: {:.3} %",
        rel * 100.0
    );
    // Quantized from those float weights by `mlxengine quantize`, served by MLX.
    let p8 = ppl(h, &registry, "smol-q8", "mlx");
    let p4 = ppl(h, &registry, "smol-q4", "mlx");
    let d8 = p8 / float_mlx - 1.0;
    let d4 = p4 / float_mlx - 1.0;
    println!(
        "Δppl: 8-bit {:+.2} %, 4-bit g64 {:+.2} %",
        d8 * 100.0,
        d4 * 100.0
    );
    // 8 bits: a rounding step of 1/255 of each group's range, ~0.1 % of a weight's size;
    // its effect on the log-likelihood is second order. 1 % is the bound.
    assert!(d8.abs() < 0.01, "8-bit: {:+.2} %", d8 * 100.0);
    // 4 bits costs much more on a 135M model (docs/quantization.md: +46 % on the whole
    // text, the same in mlx-lm); what must hold is that our figure is mlx-lm's on the
    // same checkpoint (mlx-lm runs its quantized matmul, we dequantize at load: summation
    // order only, as for the float comparison above). At a short context: MLX's quantized
    // matmul is scalar on x86, and mlx-lm needs ~0.2 s a position here.
    let ours = ppl_at(h, &registry, "smol-q4", "mlx", "64", "3");
    let theirs = util::mlx_lm_check(&["perplexity", s(&q4), TEXT, "64", "3"])["ppl"]
        .as_f64()
        .unwrap();
    println!("smol-q4 on mlx-lm (ctx 64): perplexity {theirs:.4}");
    assert!(
        (ours / theirs - 1.0).abs() < 0.005,
        "ours {ours} vs mlx-lm {theirs}"
    );
    assert!(d4 > d8, "fewer bits cost more: 4-bit {d4}, 8-bit {d8}");
}

#[test]
fn a_text_too_short_for_the_context_is_refused_with_the_counts() {
    let home = tempfile::tempdir().unwrap();
    let short = home.path().join("short.txt");
    std::fs::write(&short, "Four score and seven years ago.").unwrap();
    let o = util::mlxengine(
        home.path(),
        &["perplexity", "-m", "smollm2-135m-instruct", "-f", s(&short)],
    )
    .output()
    .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("the text has") && e.contains("needs at least 1024 (2 × ctx)"),
        "{e}"
    );
}

#[test]
fn a_quantized_kv_cache_on_the_ggml_provider_costs_what_its_rounding_may() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let registry = h.join("models.toml");
    let entry = |id: &str, kv: &str| {
        format!(
            "[[models]]\nid = \"{id}\"\nkind = \"llm\"\narchitecture = \"llama\"\n{kv}\nsource = {{ path = \"{}\" }}\n",
            util::smollm2_q4_1().display()
        )
    };
    std::fs::write(
        &registry,
        [
            entry("kv-f16", ""),
            entry("kv-q8", "kv_cache = \"q8_0\""),
            entry("kv-q4", "kv_cache = \"q4_0\""),
        ]
        .concat(),
    )
    .unwrap();
    let p16 = ppl(h, &registry, "kv-f16", "ggml");
    let p8 = ppl(h, &registry, "kv-q8", "ggml");
    let p4 = ppl(h, &registry, "kv-q4", "ggml");
    let (d8, d4) = (p8 / p16 - 1.0, p4 / p16 - 1.0);
    println!(
        "KV cache Δppl: q8_0 {:+.3} %, q4_0 {:+.3} %",
        d8 * 100.0,
        d4 * 100.0
    );
    // q8_0 rounds each key and value to 1/254 of its block's range: an error of ~0.2 % on
    // attention scores, second order on the log-likelihood; 1 % as for 8-bit weights.
    assert!(d8.abs() < 0.01, "q8_0 KV: {:+.3} %", d8 * 100.0);
    // q4_0 (1/14 of the range) must move it measurably: the option reached llama.cpp.
    assert!(
        (p4 - p16).abs() > (p8 - p16).abs(),
        "q4_0 {p4}, q8_0 {p8}, f16 {p16}"
    );
}
