//! `mlxengine quantize` (the `quant` plugin) against mlx-lm, the pinned CPU wheel, run by
//! `tests/quant/mlx_lm_check.py`: the checkpoint we write equals mlx-lm's tensor by tensor
//! (same bits, groups, recipes, config block); mlx-lm loads ours and continues a prompt
//! as our MLX provider does; bad requests are refused naming the field, tensor, file or
//! key; a failed or cancelled conversion leaves nothing behind.

mod util;

use engine::{request::Quantize, Engine, HostError, ModelEntry, PluginSet, Registry, Source};
use plugin_api::{
    quant::QuantizeRequest,
    text::{GenerateRequest, StreamControl, TextInput},
    ModelKind,
};
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use util::{mlx_lm_check as check, mlx_lm_python as python};

fn run(home: &Path, args: &[&str]) -> Output {
    util::mlxengine(home, args).output().expect("run mlxengine")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn err(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The shipped SmolLM2 Q4_1 GGUF as a float32 Hugging Face folder (`mlxengine import`):
/// what mlx-lm converts.
fn imported(home: &Path) -> PathBuf {
    let dst = home.join("smollm2-hf");
    ok(&run(home, &["import", s(&util::smollm2_q4_1()), s(&dst)]));
    dst
}

#[test]
fn mlx_checkpoints_equal_mlx_lm_s_tensor_by_tensor() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let hf = imported(h);
    let gguf = util::smollm2_q4_1();
    // (bits, group size, recipe, our source): the GGUF (dequantized on the way) and the
    // imported folder hold the same float32 values, so either must give mlx-lm's result.
    let cases: [(&str, &str, Option<&str>, &str, &Path); 4] = [
        ("4", "64", None, "affine", &gguf),
        ("8", "32", None, "affine", &hf),
        ("3", "64", Some("mixed_3_6"), "affine", &gguf),
        ("4", "32", None, "mxfp4", &gguf),
    ];
    for (bits, group, recipe, mode, src) in cases {
        let tag = format!("{bits}-{group}-{}-{mode}", recipe.unwrap_or("plain"));
        let ours = h.join(format!("ours-{tag}"));
        let theirs = h.join(format!("theirs-{tag}"));
        let mut args = vec![
            "quantize",
            s(src),
            "-o",
            s(&ours),
            "--bits",
            bits,
            "--group-size",
            group,
            "--mode",
            mode,
            "--json",
        ];
        let mut theirs_args = vec![
            "-m",
            "mlx_lm",
            "convert",
            "--hf-path",
            s(&hf),
            "--mlx-path",
            s(&theirs),
            "-q",
            "--q-bits",
            bits,
            "--q-group-size",
            group,
            "--q-mode",
            mode,
        ];
        if let Some(r) = recipe {
            args.extend(["--recipe", r]);
            theirs_args.extend(["--quant-predicate", r]);
        }
        let o = run(h, &args);
        ok(&o);
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(report["plugin"], "mlx-quant");
        // 30 layers × 7 linear layers + the (tied) embedding table.
        assert_eq!(report["tensors_quantized"], 211, "{tag}");
        let o = Command::new(python()).args(&theirs_args).output().unwrap();
        ok(&o);
        let c = check(&["compare", s(&ours), s(&theirs)]);
        println!("{tag}: {} tensors; differ {}", c["count"], c["differ"]);
        for k in ["only_ours", "only_theirs", "differ"] {
            assert_eq!(c[k], serde_json::json!([]), "{tag}: {k}");
        }
        // mxfp4 keeps no biases: its scales are shared exponents.
        let per_layer = if mode == "mxfp4" { 2 } else { 3 };
        assert_eq!(
            c["count"],
            211 * per_layer + 61,
            "{tag}: packed weights, scales, biases + 61 norms"
        );
        assert_eq!(c["quantization"][0], c["quantization"][1], "{tag}: config");
        assert_eq!(
            c["quantization_config"][0], c["quantization_config"][1],
            "{tag}: config"
        );
        if recipe.is_some() {
            let q = &c["quantization"][0];
            assert_eq!(q["model.layers.0.mlp.down_proj"]["bits"], 6);
            assert_eq!(q["model.layers.4.mlp.down_proj"]["bits"], 3);
        }
    }
}

/// An engine with the MLX `llm` plugin and the quant plugin.
fn engine() -> Engine {
    let mut set = PluginSet::default();
    for lib in ["mlxengine_llm", "mlxengine_quant"] {
        set.load(&util::dylib(lib)).expect("plugin loads");
    }
    Engine::new(Registry::new(), set)
}

/// Our MLX provider's greedy continuation of `prompt` on the checkpoint `dir`.
fn our_greedy(e: &Engine, id: &str, dir: &Path, prompt: &str, n: u32) -> (Vec<u32>, u32) {
    let (ids, _, prompt_tokens) = our_greedy_kv(e, id, dir, None, prompt, n);
    (ids, prompt_tokens)
}

/// As [`our_greedy`] with the registry's `kv_cache` set, and each pick's log-probability.
fn our_greedy_kv(
    e: &Engine,
    id: &str,
    dir: &Path,
    kv_cache: Option<&str>,
    prompt: &str,
    n: u32,
) -> (Vec<u32>, Vec<f32>, u32) {
    let mut entry = ModelEntry::new(id, ModelKind::LLM, "llama", Source::Path(dir.to_owned()));
    entry.kv_cache = kv_cache.map(str::to_owned);
    e.add_model(entry).unwrap();
    let req = GenerateRequest {
        inputs: vec![TextInput {
            prompt: prompt.into(),
            messages: Default::default(),
        }]
        .into(),
        max_tokens: n,
        logprobs: true,
        ..Default::default()
    };
    let out = e
        .generate(id, &util::gen(req), &mut |_| StreamControl::Continue)
        .unwrap();
    let o = &out.outputs[0];
    (o.tokens.to_vec(), o.logprobs.to_vec(), o.prompt_tokens)
}

#[test]
fn mlx_lm_loads_our_checkpoints_and_continues_as_we_do() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let plain = h.join("q4");
    ok(&run(
        h,
        &["quantize", s(&util::smollm2_q4_1()), "-o", s(&plain)],
    ));
    // Per-layer rules: mixed bits and group sizes, one layer left in float.
    let rules = h.join("rules.toml");
    std::fs::write(
        &rules,
        "[[layer]]\nmatch = \"model.layers.0.*\"\nquantize = false\n\n\
         [[layer]]\nmatch = \"model.layers.*.mlp.down_proj\"\nbits = 8\ngroup_size = 32\n",
    )
    .unwrap();
    let mixed = h.join("rules");
    ok(&run(
        h,
        &[
            "quantize",
            s(&util::smollm2_q4_1()),
            "-o",
            s(&mixed),
            "--layers",
            s(&rules),
        ],
    ));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mixed.join("config.json")).unwrap()).unwrap();
    let q = &cfg["quantization"];
    assert_eq!(
        q["model.layers.3.mlp.down_proj"],
        serde_json::json!({"group_size": 32, "bits": 8, "mode": "affine"})
    );
    assert_eq!(q["model.layers.3.self_attn.q_proj"]["bits"], 4);
    assert!(
        q.get("model.layers.0.mlp.down_proj").is_none(),
        "layer 0 stays float"
    );

    // mxfp4: 4-bit floats with a power-of-two scale per 32, no biases.
    let mx = h.join("mxfp4");
    ok(&run(
        h,
        &[
            "quantize",
            s(&util::smollm2_q4_1()),
            "-o",
            s(&mx),
            "--mode",
            "mxfp4",
        ],
    ));
    let e = engine();
    let prompt = "The three primary colors are";
    for (id, dir) in [("q4", &plain), ("rules", &mixed), ("mxfp4", &mx)] {
        let want = check(&["generate", s(dir), prompt, "24"]);
        let want_ids: Vec<u32> = serde_json::from_value(want["ids"].clone()).unwrap();
        let gaps: Vec<f64> = serde_json::from_value(want["gaps"].clone()).unwrap();
        let (got, prompt_tokens) = our_greedy(&e, id, dir, prompt, 24);
        assert_eq!(
            prompt_tokens as usize,
            want["prompt_ids"].as_array().unwrap().len()
        );
        // Both compute x·W with W dequantized from the same codes (we dequantize at load
        // on CPU, mlx-lm's quantized matmul on the fly): float32 sums in another order,
        // ~1e-6 relative. They must agree up to the first near-tie (top-2 gap < 0.02, the
        // bound the float reference uses), where either token is a correct answer.
        let horizon = gaps.iter().position(|g| *g < 0.02).unwrap_or(gaps.len());
        let same = got
            .iter()
            .zip(&want_ids)
            .take_while(|(a, b)| a == b)
            .count();
        println!("{id}: {same}/24 of mlx-lm's greedy ids (near-tie horizon {horizon})");
        assert!(
            same >= horizon,
            "{id}: departs at step {same}: {got:?} vs {want_ids:?}"
        );
        assert!(
            horizon >= 4,
            "{id}: the check must cover some steps (horizon {horizon})"
        );
    }
}

#[test]
fn a_quantized_kv_cache_continues_as_mlx_lm_s() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let q4 = h.join("q4");
    ok(&run(
        h,
        &["quantize", s(&util::smollm2_q4_1()), "-o", s(&q4)],
    ));
    let e = engine();
    let prompt = "The three primary colors are";
    let n = 16;
    let floats = check(&["generate", s(&q4), prompt, &n.to_string()]);
    let float_lp: Vec<f64> = serde_json::from_value(floats["logprobs"].clone()).unwrap();
    let (_, ours_float, _) = our_greedy_kv(&e, "float", &q4, None, prompt, n);
    // `kv_cache` q8_0 / q4_0 are MLX affine 8 / 4 bits in groups of 32: mlx-lm's
    // QuantizedKVCache with kv_bits 8 / 4 and kv_group_size 32, quantized after the prompt.
    for (kv, bits) in [("q8_0", "8"), ("q4_0", "4")] {
        let want = check(&["generate", s(&q4), prompt, &n.to_string(), bits, "32"]);
        let want_ids: Vec<u32> = serde_json::from_value(want["ids"].clone()).unwrap();
        let want_lp: Vec<f64> = serde_json::from_value(want["logprobs"].clone()).unwrap();
        let gaps: Vec<f64> = serde_json::from_value(want["gaps"].clone()).unwrap();
        let (got, lp, _) = our_greedy_kv(&e, kv, &q4, Some(kv), prompt, n);
        let horizon = gaps.iter().position(|g| *g < 0.02).unwrap_or(gaps.len());
        let same = got
            .iter()
            .zip(&want_ids)
            .take_while(|(a, b)| a == b)
            .count();
        assert!(
            same >= horizon,
            "{kv}: departs at {same}: {got:?} vs {want_ids:?}"
        );
        assert!(horizon >= 4, "{kv}: horizon {horizon}");
        // What the quantized cache does to each pick's log-probability, against each
        // side's own float cache (which removes the ~1e-4 the two float paths differ by).
        // The same rounding of nearly the same keys and values moves both alike; where a
        // value sits within ~1e-5 of a rounding boundary the two sides round it apart:
        // at 8 bits, where the whole shift is small (~2e-2), that leaves a residual of
        // about half of it (measured 0.40); at 4 bits flips are 16× rarer against a
        // shift ~200× larger (measured 0.00). The bound, 0.8, still fails a cache that
        // ignores the option (residual 1) or rounds at other bits (≫ 1).
        let shift = |q: &[f64], f: &[f64]| -> Vec<f64> {
            q.iter().zip(f).take(horizon).map(|(a, b)| a - b).collect()
        };
        let ours: Vec<f64> = shift(
            &lp.iter().map(|x| f64::from(*x)).collect::<Vec<_>>(),
            &ours_float.iter().map(|x| f64::from(*x)).collect::<Vec<_>>(),
        );
        let theirs = shift(&want_lp, &float_lp);
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let residual: Vec<f64> = ours.iter().zip(&theirs).map(|(a, b)| a - b).collect();
        let r = norm(&residual) / norm(&theirs);
        println!(
            "{kv}: {same}/{n} ids as mlx-lm; shift of the log-probabilities {:.2e} (mlx-lm) / {:.2e} (ours), residual {r:.2}",
            norm(&theirs),
            norm(&ours)
        );
        assert!(
            norm(&theirs) > 1e-3,
            "{kv}: mlx-lm's cache did not change anything"
        );
        assert!(
            r < 0.8,
            "{kv}: residual {r}: ours {ours:?} vs mlx-lm {theirs:?}"
        );
    }
}

#[test]
fn bad_requests_are_refused_naming_what_is_wrong_and_leave_nothing() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let gguf = util::smollm2_q4_1();
    let dst = h.join("out");
    let q = |extra: &[&str]| {
        let mut a = vec!["quantize", s(&gguf), "-o", s(&dst)];
        a.extend_from_slice(extra);
        run(h, &a)
    };
    let e = err(&q(&["--bits", "7"]));
    assert!(
        e.contains("`bits`: 7 bits: MLX quantizes to [2, 3, 4, 5, 6, 8]"),
        "{e}"
    );
    let e = err(&q(&["--group-size", "48"]));
    assert!(e.contains("`group_size`: 48"), "{e}");
    let e = err(&q(&["--format", "onnx"]));
    assert!(
        e.contains("`format`: `onnx` is not an output format (mlx, gguf)"),
        "{e}"
    );
    let e = err(&q(&["--recipe", "mixed_9_9"]));
    assert!(e.contains("unknown recipe `mixed_9_9`"), "{e}");
    // SmolLM2's 576-wide rows are not whole groups of 128.
    let e = err(&q(&["--group-size", "128"]));
    assert!(
        e.contains(
            "tensor `model.embed_tokens.weight`: rows of 576 inputs are not whole groups of 128"
        ) && e.contains("--allow-float"),
        "{e}"
    );
    let rules = h.join("bad.toml");
    std::fs::write(&rules, "[[layer]]\nmatch = \"lm_head\"\nbitz = 6\n").unwrap();
    let e = err(&q(&["--layers", s(&rules)]));
    assert!(
        e.contains("bad.toml: [[layer]] #1: unknown key `bitz`"),
        "{e}"
    );
    let e = err(&q(&["--mode", "nvfp4"]));
    assert!(
        e.contains("`mode`: `nvfp4` is not supported (affine, mxfp4)"),
        "{e}"
    );
    let e = err(&q(&["--mode", "mxfp4", "--group-size", "64"]));
    assert!(
        e.contains("`mxfp4` is 4 bits in groups of 32 (got 4 bits, group 64)"),
        "{e}"
    );
    let e = err(&q(&["--mode", "mxfp4", "--recipe", "mixed_4_6"]));
    assert!(e.contains("mode `mxfp4` has one setting"), "{e}");
    let e = err(&run(h, &["quantize", s(&h.join("nope")), "-o", s(&dst)]));
    assert!(e.contains("nope: no such file or folder"), "{e}");
    let leftovers: Vec<_> = std::fs::read_dir(h)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("out"))
        .collect();
    assert!(leftovers.is_empty(), "nothing written: {leftovers:?}");

    // With --allow-float, the 576-wide layers stay float (as mlx-lm leaves them) and
    // only the down projections (1536 inputs) are quantized.
    let o = q(&["--group-size", "128", "--allow-float", "--json"]);
    ok(&o);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["tensors_quantized"], 30);
    // An existing destination is refused, and replaced with --force once the new model is
    // complete.
    let e = err(&q(&[]));
    assert!(
        e.contains("already exists (pass --force to replace it)"),
        "{e}"
    );
    ok(&q(&["--force", "--bits", "8"]));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dst.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantization"]["bits"], 8);
    let names: Vec<String> = std::fs::read_dir(h)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(".out.")),
        "no partial or old folder: {names:?}"
    );
}

#[test]
fn a_cancelled_conversion_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let dst = home.path().join("cancelled");
    let req = QuantizeRequest {
        src: util::smollm2_q4_1().display().to_string().into(),
        dst: dst.display().to_string().into(),
        bits: 4,
        group_size: 64,
        mode: "affine".into(),
        options: "".into(),
    };
    let req = Quantize::new(req, "mlx", false).unwrap();
    let e = engine();
    let mut seen = 0;
    let r = e.quantize(&req, &mut |ev| {
        seen = ev.done;
        if ev.done == 20 {
            StreamControl::Stop
        } else {
            StreamControl::Continue
        }
    });
    assert!(matches!(r, Err(HostError::Cancelled { .. })), "{r:?}");
    assert_eq!(seen, 20);
    let left: Vec<_> = std::fs::read_dir(home.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "nothing left: {left:?}");
}
