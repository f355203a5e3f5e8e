//! LoRA adapters on the real SmolLM2-135M-Instruct, with a real adapter: the rank-8 PEFT
//! adapter `tests/fixtures/lora/smollm2-pirate` (trained by `make_adapter.py` on the
//! shipped GGUF dequantized to float32; every answer starts with "Arr, matey!"), against
//! peft's own greedy outputs with and without it.

mod util;

use engine::{request::AdapterUse, Engine, HostError, ModelEntry, PluginSet, Registry, Source};
use plugin_api::{
    text::{ChatMessage, GenerateRequest, GenerateResponse, StreamControl, TextInput},
    ModelKind,
};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/lora/smollm2-pirate")
}

fn reference() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture().join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["prompts"].as_array().unwrap().clone()
}

/// An engine with `libs`, the shipped SmolLM2 as `smol` and the adapter as `pirate`.
fn engine(libs: &[&str]) -> Engine {
    let mut set = PluginSet::default();
    for lib in libs {
        set.load(&util::dylib(lib)).expect("plugin loads");
    }
    let e = Engine::new(Registry::new(), set);
    let dir = util::smollm2_q4_1().parent().unwrap().to_owned();
    e.add_model(ModelEntry::new(
        "smol",
        ModelKind::LLM,
        "llama",
        Source::Path(dir),
    ))
    .unwrap();
    e.register_adapter("pirate", "smol", &fixture(), None)
        .unwrap();
    e
}

fn chat(prompt: &str) -> TextInput {
    TextInput {
        prompt: "".into(),
        messages: vec![ChatMessage::text("user", prompt)].into(),
    }
}

fn greedy(
    e: &Engine,
    model: &str,
    backend: Option<&str>,
    prompt: &str,
    adapters: Vec<AdapterUse>,
    max_tokens: u32,
) -> Result<GenerateResponse, HostError> {
    let req = util::gen(GenerateRequest {
        inputs: vec![chat(prompt)].into(),
        max_tokens,
        ..Default::default()
    })
    .with_adapters(adapters)
    .unwrap();
    e.generate_on(model, backend, &req, &mut |_| StreamControl::Continue)
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Steps that must agree with the float32 reference: up to its first near-tie (top-2
/// gap < 0.02). Two float32 implementations of one network differ by summation order
/// (~1e-6 relative per dot product, ~1e-4 of logits of size ~20 after 30 layers); a wrong
/// factor, scale or orientation moves logits by whole units.
fn horizon(gaps: &serde_json::Value) -> usize {
    let g: Vec<f64> = serde_json::from_value(gaps.clone()).unwrap();
    g.iter().position(|g| *g < 0.02).unwrap_or(g.len())
}

fn check(what: &str, got: &[u32], want: &[u32], horizon: usize) {
    let same = got.iter().zip(want).take_while(|(a, b)| a == b).count();
    println!(
        "{what}: {same}/{} reference ids (horizon {horizon})",
        want.len()
    );
    assert!(
        same >= horizon.min(want.len()),
        "{what}: departs at step {same}: {got:?} vs {want:?}"
    );
}

#[test]
fn mlx_follows_peft_with_the_adapter_and_the_base_without_it() {
    let e = engine(&["mlxengine_llm"]);
    for case in reference() {
        let prompt = case["prompt"].as_str().unwrap();
        let want = ids(&case["adapter_ids"]);
        let out = greedy(&e, "pirate", None, prompt, vec![], want.len() as u32).unwrap();
        assert_eq!(
            out.outputs[0].prompt_tokens as usize,
            case["input_ids"].as_array().unwrap().len()
        );
        check(
            &format!("adapter {prompt:?}"),
            &out.outputs[0].tokens,
            &want,
            horizon(&case["adapter_gaps"]),
        );
        assert!(
            out.outputs[0].text.starts_with("Arr, matey!"),
            "{}",
            out.outputs[0].text
        );
        let base = ids(&case["base_ids"]);
        let plain = greedy(&e, "smol", None, prompt, vec![], base.len() as u32).unwrap();
        check(
            &format!("base {prompt:?}"),
            &plain.outputs[0].tokens,
            &base,
            horizon(&case["base_gaps"]),
        );
    }
    // One copy of the base served both: the adapter is on it, not in a second model.
    assert_eq!(e.loaded_ids(), vec!["smol".to_owned()]);
    let st = &e.adapters()[0];
    assert_eq!(
        (st.id.as_str(), st.loaded_on.clone()),
        ("pirate", vec!["smol".to_owned()])
    );
    // Rank 8 on q/k/v/o of 30 layers: 921,600 parameters, float32 on CPU.
    assert_eq!(st.bytes, 921_600 * 4);
}

#[test]
fn scale_zero_is_the_base_and_the_adapter_can_be_named_per_request() {
    let e = engine(&["mlxengine_llm"]);
    let case = &reference()[1];
    let prompt = case["prompt"].as_str().unwrap();
    let base = greedy(&e, "smol", None, prompt, vec![], 24).unwrap();
    let zero = greedy(
        &e,
        "pirate",
        None,
        prompt,
        vec![AdapterUse::new("pirate", Some(0.0)).unwrap()],
        24,
    )
    .unwrap();
    assert_eq!(zero.outputs[0].tokens, base.outputs[0].tokens);
    // The base with the adapter named in the request is the `lora` entry.
    let named = greedy(
        &e,
        "smol",
        None,
        prompt,
        vec![AdapterUse::new("pirate", None).unwrap()],
        24,
    )
    .unwrap();
    let entry = greedy(&e, "pirate", None, prompt, vec![], 24).unwrap();
    assert_eq!(named.outputs[0].tokens, entry.outputs[0].tokens);
    assert_ne!(named.outputs[0].tokens, base.outputs[0].tokens);
    // Half the scale is neither.
    let half = greedy(
        &e,
        "smol",
        None,
        prompt,
        vec![AdapterUse::new("pirate", Some(0.5)).unwrap()],
        24,
    )
    .unwrap();
    assert_ne!(half.outputs[0].tokens, base.outputs[0].tokens);
    assert_ne!(half.outputs[0].tokens, entry.outputs[0].tokens);
}

/// The same adapter in mlx-lm's layout (`adapters.safetensors`: `lora_a` (in, rank),
/// `lora_b` (rank, out), `scale` = alpha / r), written by MLX itself from the PEFT file.
fn mlx_lm_copy(dst: &Path) {
    let script = r#"
import json, sys
import mlx.core as mx
src, dst = sys.argv[1], sys.argv[2]
w = mx.load(src + "/adapter_model.safetensors")
out = {}
for k, v in w.items():
    layer = k.removeprefix("base_model.model.")
    if ".lora_A." in layer:
        out[layer.split(".lora_A.")[0] + ".lora_a"] = v.T
    else:
        out[layer.split(".lora_B.")[0] + ".lora_b"] = v.T
mx.save_safetensors(dst + "/adapters.safetensors", out)
cfg = json.load(open(src + "/adapter_config.json"))
json.dump({"fine_tune_type": "lora", "num_layers": 30,
           "lora_parameters": {"rank": cfg["r"], "scale": cfg["lora_alpha"] / cfg["r"],
                               "dropout": 0.0, "keys": ["self_attn.q_proj", "self_attn.k_proj",
                                                        "self_attn.v_proj", "self_attn.o_proj"]}},
          open(dst + "/adapter_config.json", "w"))
"#;
    std::fs::create_dir_all(dst).unwrap();
    let out = std::process::Command::new(util::mlx_lm_python())
        .args(["-c", script])
        .arg(fixture())
        .arg(dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_mlx_lm_layout_of_the_same_adapter_gives_the_same_answers() {
    let e = engine(&["mlxengine_llm"]);
    let t = tempfile::tempdir().unwrap();
    mlx_lm_copy(t.path());
    e.register_adapter("pirate-mlx", "smol", t.path(), None)
        .unwrap();
    for case in reference().iter().take(2) {
        let prompt = case["prompt"].as_str().unwrap();
        let peft = greedy(&e, "pirate", None, prompt, vec![], 24).unwrap();
        let mlx = greedy(&e, "pirate-mlx", None, prompt, vec![], 24).unwrap();
        // The same float16 factors and scale: the same update, bit for bit.
        assert_eq!(mlx.outputs[0].tokens, peft.outputs[0].tokens, "{prompt:?}");
    }
}

fn write_peft(dir: &Path, cfg: &str, tensors: &[(&str, Vec<usize>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s)| {
            (
                n.to_string(),
                s.clone(),
                vec![0u8; 4 * s.iter().product::<usize>()],
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
}

#[test]
fn bad_adapters_are_clear_errors_and_the_base_keeps_serving() {
    let e = engine(&["mlxengine_llm"]);
    let t = tempfile::tempdir().unwrap();
    let cfg = r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16}"#;
    // Made for a model with hidden size 896 (Qwen2-0.5B's): the shapes disagree.
    let p = "base_model.model.model.layers.0.self_attn.q_proj";
    write_peft(
        &t.path().join("other"),
        cfg,
        &[
            (&format!("{p}.lora_A.weight"), vec![8, 896]),
            (&format!("{p}.lora_B.weight"), vec![896, 8]),
        ],
    );
    // A layer SmolLM2 does not have.
    let q = "base_model.model.model.layers.40.self_attn.q_proj";
    write_peft(
        &t.path().join("deep"),
        cfg,
        &[
            (&format!("{q}.lora_A.weight"), vec![8, 576]),
            (&format!("{q}.lora_B.weight"), vec![576, 8]),
        ],
    );
    // The fixture's weights cut short.
    let cut = t.path().join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    std::fs::copy(
        fixture().join("adapter_config.json"),
        cut.join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(fixture().join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        cut.join("adapter_model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let cases = [
        ("other", "layer `model.layers.0.self_attn.q_proj` is 896 → 896 in the adapter, 576 → 576 in base model `smol`"),
        ("deep", "layer `model.layers.40.self_attn.q_proj` is not a linear layer of base model `smol`"),
        ("cut", "adapter_model.safetensors"),
    ];
    for (name, want) in cases {
        e.register_adapter(name, "smol", &t.path().join(name), None)
            .unwrap();
        let err = greedy(&e, name, None, "Hi", vec![], 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{name}: {err}");
        // The base serves on, the adapter is not left half-loaded.
        assert!(greedy(&e, "smol", None, "Hi", vec![], 4).is_ok());
        assert!(e
            .adapters()
            .iter()
            .all(|a| a.id != name || a.loaded_on.is_empty()));
    }
    // Unknown adapter, an adapter of another base, a model that is no adapter.
    let err = greedy(
        &e,
        "smol",
        None,
        "Hi",
        vec![AdapterUse::new("nope", None).unwrap()],
        4,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown model `nope`"), "{err}");
    let dir = util::smollm2_q4_1().parent().unwrap().to_owned();
    e.add_model(ModelEntry::new(
        "smol2",
        ModelKind::LLM,
        "llama",
        Source::Path(dir),
    ))
    .unwrap();
    let err = greedy(
        &e,
        "smol2",
        None,
        "Hi",
        vec![AdapterUse::new("pirate", None).unwrap()],
        4,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("adapter `pirate`: its base is `smol`"),
        "{err}"
    );
    let err = greedy(
        &e,
        "smol",
        None,
        "Hi",
        vec![AdapterUse::new("smol2", None).unwrap()],
        4,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("adapter `smol2`: a `llm` model, not a `lora` adapter"),
        "{err}"
    );
    // An adapter that does not fit the memory budget is refused before it loads.
    greedy(&e, "smol", None, "Hi", vec![], 2).unwrap();
    let (in_use, _) = e.memory_in_use();
    e.set_memory_budget(in_use + 1_000_000);
    let err = greedy(&e, "pirate", None, "Hi", vec![], 2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapter `pirate` needs up to 3 MB on model `smol`"),
        "{err}"
    );
    e.set_memory_budget(in_use + 8_000_000);
    assert!(greedy(&e, "pirate", None, "Hi", vec![], 2).is_ok());
    let (with, _) = e.memory_in_use();
    assert_eq!(
        with - in_use,
        921_600 * 4,
        "the adapter counts in the memory in use"
    );
}

#[test]
fn ggml_follows_peft_with_the_converted_adapter() {
    let e = engine(&["mlxengine_llm_ggml"]);
    // The float twin (the shipped weights as F32, float settings): only summation order
    // differs from peft, so the same near-tie horizon holds as for MLX.
    let mut twin = ModelEntry::new(
        "smol-f32",
        ModelKind::LLM,
        "llama",
        Source::Path(util::smollm2_f32_twin()),
    );
    twin.options = serde_json::from_str(util::GGML_FLOAT_OPTIONS).unwrap();
    e.add_model(twin).unwrap();
    e.register_adapter("pirate-f32", "smol-f32", &fixture(), None)
        .unwrap();
    for case in reference() {
        let prompt = case["prompt"].as_str().unwrap();
        let want = ids(&case["adapter_ids"]);
        let out = greedy(&e, "pirate-f32", None, prompt, vec![], want.len() as u32).unwrap();
        check(
            &format!("ggml twin + adapter {prompt:?}"),
            &out.outputs[0].tokens,
            &want,
            horizon(&case["adapter_gaps"]),
        );
        // The shipped Q4_1 file quantizes activations to 8 bits: its logits stay within
        // 0.142 of their RMS (~3 here) of the float ones, ±0.4 (tests/ggml_numerics.rs
        // derives the bound). The adapter's opening tokens lead by 9.6 logits or more in
        // the reference: they cannot flip.
        let q = greedy(&e, "pirate", None, prompt, vec![], 8).unwrap();
        assert!(
            q.outputs[0].text.starts_with("Arr, matey!"),
            "{prompt:?}: {}",
            q.outputs[0].text
        );
    }
    assert_eq!(e.served_by("smol", None).as_deref(), Some("ggml-llm"));
    // The base on the same (kept) context right after: the adapter is off again.
    let plain = greedy(
        &e,
        "smol",
        None,
        "What is the largest ocean on Earth?",
        vec![],
        8,
    )
    .unwrap();
    assert!(
        !plain.outputs[0].text.starts_with("Arr"),
        "{}",
        plain.outputs[0].text
    );
    // A mix of two adapters is refused by name on ggml (one adapter per context call).
    e.register_adapter("pirate-too", "smol", &fixture(), None)
        .unwrap();
    let mix = vec![
        AdapterUse::new("pirate", None).unwrap(),
        AdapterUse::new("pirate-too", None).unwrap(),
    ];
    let err = greedy(&e, "smol", None, "Hi", mix, 4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one adapter per request"), "{err}");
    // Unloading takes it off: the next request loads it again.
    assert!(e.unload_adapter("pirate").unwrap());
    assert!(e
        .adapters()
        .iter()
        .find(|a| a.id == "pirate")
        .unwrap()
        .loaded_on
        .is_empty());
    let again = greedy(&e, "pirate", None, "What is two plus two?", vec![], 8).unwrap();
    assert!(
        again.outputs[0].text.starts_with("Arr, matey!"),
        "{}",
        again.outputs[0].text
    );
}

#[test]
fn a_weighted_mix_on_mlx_is_the_sum_of_the_updates() {
    // Two copies of the adapter at 0.5 each are the adapter at 1.
    let e = engine(&["mlxengine_llm"]);
    e.register_adapter("pirate-too", "smol", &fixture(), None)
        .unwrap();
    let prompt = reference()[1]["prompt"].as_str().unwrap().to_owned();
    let one = greedy(&e, "pirate", None, &prompt, vec![], 16).unwrap();
    let mix = vec![
        AdapterUse::new("pirate", Some(0.5)).unwrap(),
        AdapterUse::new("pirate-too", Some(0.5)).unwrap(),
    ];
    let two = greedy(&e, "smol", None, &prompt, mix, 16).unwrap();
    assert_eq!(one.outputs[0].tokens, two.outputs[0].tokens);
}

#[test]
fn fused_equals_unfused_and_loads_as_a_model() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("smol-pirate");
    let reg = home.path().join("lora.toml");
    let base = util::smollm2_q4_1().parent().unwrap().to_owned();
    std::fs::write(
        &reg,
        format!(
            "[[models]]\nid = \"smol\"\nkind = \"llm\"\narchitecture = \"llama\"\nsource = {{ path = {:?} }}\n\n\
             [[models]]\nid = \"pirate\"\nkind = \"lora\"\narchitecture = \"llama\"\nbase = \"smol\"\nsource = {{ path = {:?} }}\n",
            base.display().to_string(),
            fixture().display().to_string()
        ),
    )
    .unwrap();
    let o = util::mlxengine(
        home.path(),
        &[
            "--registry",
            reg.to_str().unwrap(),
            "fuse",
            "--adapter",
            "pirate",
            "-o",
        ],
    )
    .arg(&out)
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("fused 120 layers"), "{err}");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Nothing is left beside it.
    let names: Vec<String> = std::fs::read_dir(home.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.contains("partial") && !n.contains("import")),
        "{names:?}"
    );
    // The fused folder, as an ordinary model, answers as base + adapter does: W + B·A
    // and W·x + B·(A·x) differ by summation order only (the reference's near-tie horizon).
    let e = engine(&["mlxengine_llm"]);
    e.add_model(ModelEntry::new(
        "fused",
        ModelKind::LLM,
        "llama",
        Source::Path(out.clone()),
    ))
    .unwrap();
    for case in reference() {
        let prompt = case["prompt"].as_str().unwrap();
        let want = ids(&case["adapter_ids"]);
        let fused = greedy(&e, "fused", None, prompt, vec![], want.len() as u32).unwrap();
        check(
            &format!("fused {prompt:?}"),
            &fused.outputs[0].tokens,
            &want,
            horizon(&case["adapter_gaps"]),
        );
    }
    // Requantized with the base's own type (Q4_1) most of the update rounds away (the base's
    // weights lie on that grid): said, not hidden. Q8_0's step is 16 times finer: it keeps it.
    let fuse_q = |ty: Option<&str>, dst: &Path| {
        let mut c = util::mlxengine(
            home.path(),
            &[
                "--registry",
                reg.to_str().unwrap(),
                "fuse",
                "--adapter",
                "pirate",
                "--requantize",
            ],
        );
        c.args(ty).arg("-o").arg(dst);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let kept = |err: &str| -> f64 {
        let at = err
            .find("% of the adapter's update survived")
            .expect("reported");
        err[..at].rsplit(' ').next().unwrap().parse().unwrap()
    };
    let q41 = fuse_q(None, &home.path().join("q41"));
    assert!(
        q41.contains("requantized as Q4_1") && kept(&q41) < 50.0 && q41.contains("warning"),
        "{q41}"
    );
    let q8 = fuse_q(Some("Q8_0"), &home.path().join("q8"));
    assert!(kept(&q8) > 95.0 && !q8.contains("warning"), "{q8}");
    let g = engine(&["mlxengine_llm_ggml"]);
    g.add_model(ModelEntry::new(
        "fused-q8",
        ModelKind::LLM,
        "llama",
        Source::Path(home.path().join("q8/model.gguf")),
    ))
    .unwrap();
    for case in reference() {
        let prompt = case["prompt"].as_str().unwrap();
        let out = greedy(&g, "fused-q8", None, prompt, vec![], 8).unwrap();
        assert!(
            out.outputs[0].text.starts_with("Arr, matey!"),
            "{prompt:?}: {}",
            out.outputs[0].text
        );
    }
    // A second fuse into the same folder is refused; nothing changes.
    let o = util::mlxengine(
        home.path(),
        &[
            "--registry",
            reg.to_str().unwrap(),
            "fuse",
            "--adapter",
            "pirate",
            "-o",
        ],
    )
    .arg(&out)
    .output()
    .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Every tensor of a safetensors folder: name → (dtype, shape, bytes).
fn tensors_of(dir: &Path) -> std::collections::BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (n, v) in st.tensors() {
                let t = (
                    format!("{:?}", v.dtype()),
                    v.shape().to_vec(),
                    v.data().to_vec(),
                );
                out.insert(n, t);
            }
        }
    }
    out
}

#[test]
fn fusing_into_an_mlx_quantized_base_keeps_its_settings() {
    let home = tempfile::tempdir().unwrap();
    let reg = home.path().join("q.toml");
    let run = |args: &[&str]| {
        let o = util::mlxengine(home.path(), args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.success(), err)
    };
    let kept = |err: &str| -> f64 {
        let at = err
            .find("% of the adapter's update survived")
            .expect("reported");
        err[..at].rsplit(' ').next().unwrap().parse().unwrap()
    };
    let gguf = util::smollm2_q4_1();
    let mut toml = String::new();
    // 8-bit affine (float32 scales), mlx-lm's mixed 3/6-bit recipe in bfloat16 (per-layer
    // settings in the config), mxfp4 (byte scales, no biases).
    let bases: [(&str, &[&str]); 3] = [
        ("q8", &["--bits", "8"]),
        ("q36", &["--recipe", "mixed_3_6", "--dtype", "bfloat16"]),
        (
            "fp4",
            &["--mode", "mxfp4", "--bits", "4", "--group-size", "32"],
        ),
    ];
    for (id, opts) in bases {
        let dir = home.path().join(id);
        let mut args = vec![
            "quantize",
            gguf.to_str().unwrap(),
            "-q",
            "-o",
            dir.to_str().unwrap(),
        ];
        args.extend(opts);
        let (ok, err) = run(&args);
        assert!(ok, "{err}");
        toml += &format!(
            "[[models]]\nid = \"{id}\"\nkind = \"llm\"\narchitecture = \"llama\"\nsource = {{ path = {:?} }}\n\n",
            dir.display().to_string()
        );
    }
    std::fs::write(&reg, &toml).unwrap();
    let fixture = fixture();
    let adapted: Vec<String> = lora::Adapter::open(&fixture)
        .unwrap()
        .modules
        .iter()
        .map(|m| m.name.clone())
        .collect();
    let mut report = std::collections::HashMap::new();
    for (id, _) in bases {
        let (base, out) = (
            home.path().join(id),
            home.path().join(format!("{id}-pirate")),
        );
        let (ok, err) = run(&[
            "--registry",
            reg.to_str().unwrap(),
            "fuse",
            "--adapter",
            fixture.to_str().unwrap(),
            "--base",
            id,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{id}: {err}");
        assert!(err.contains("fused 120 layers"), "{id}: {err}");
        // The same settings: config.json as it was; every tensor of a layer the adapter
        // does not touch byte for byte the base's; the adapted ones in the same dtype and
        // shape, packed anew.
        assert_eq!(
            std::fs::read(base.join("config.json")).unwrap(),
            std::fs::read(out.join("config.json")).unwrap(),
            "{id}"
        );
        let (b, f) = (tensors_of(&base), tensors_of(&out));
        assert_eq!(
            b.keys().collect::<Vec<_>>(),
            f.keys().collect::<Vec<_>>(),
            "{id}"
        );
        let mut changed = 0;
        for (name, (dt, shape, bytes)) in &b {
            let (dt2, shape2, bytes2) = &f[name];
            assert_eq!((dt, shape), (dt2, shape2), "{id}: `{name}`");
            let layer = name.rsplit_once('.').unwrap().0;
            if adapted.iter().any(|a| a == layer) {
                changed += usize::from(bytes != bytes2);
            } else {
                assert!(bytes == bytes2, "{id}: `{name}` changed");
            }
        }
        assert!(changed >= 120, "{id}: {changed} adapted tensors changed");
        report.insert(id, (kept(&err), err));
        toml += &format!(
            "[[models]]\nid = \"{id}-pirate\"\nkind = \"llm\"\narchitecture = \"llama\"\nsource = {{ path = {:?} }}\n\n",
            out.display().to_string()
        );
    }
    // At 8 bits the rounding step is 16 times finer than at 4, and the whole update
    // survives: the fused model answers as the adapter does (the opening's gaps are ≥ 9.6
    // logits in the reference, far beyond 8-bit rounding of the weights).
    let (q8, err) = &report["q8"];
    assert!(*q8 > 90.0 && !err.contains("warning"), "{err}");
    let e = engine(&["mlxengine_llm"]);
    e.add_model(ModelEntry::new(
        "q8-pirate",
        ModelKind::LLM,
        "llama",
        Source::Path(home.path().join("q8-pirate")),
    ))
    .unwrap();
    for case in reference() {
        let prompt = case["prompt"].as_str().unwrap();
        let out = greedy(&e, "q8-pirate", None, prompt, vec![], 8).unwrap();
        assert!(
            out.outputs[0].text.starts_with("Arr, matey!"),
            "{prompt:?}: {}",
            out.outputs[0].text
        );
    }
    // At 3-4 bits most of this adapter's update is below half a step of the base's grid
    // and rounds back: reported with a warning, as for GGUF's Q4_1.
    for id in ["q36", "fp4"] {
        let (k, err) = &report[id];
        assert!(*k < 50.0 && err.contains("warning"), "{id}: {err}");
    }
    // Refused by name, nothing written: an adapter of other shapes, a GGUF type.
    let t = home.path().join("other");
    let p = "base_model.model.model.layers.0.self_attn.q_proj";
    write_peft(
        &t,
        r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16}"#,
        &[
            (&format!("{p}.lora_A.weight"), vec![8, 896]),
            (&format!("{p}.lora_B.weight"), vec![896, 8]),
        ],
    );
    let bad = home.path().join("bad");
    let (ok, err) = run(&[
        "--registry",
        reg.to_str().unwrap(),
        "fuse",
        "--adapter",
        t.to_str().unwrap(),
        "--base",
        "q8",
        "-o",
        bad.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("model.layers.0.self_attn.q_proj") && err.contains("896"),
        "{err}"
    );
    let (ok, err) = run(&[
        "--registry",
        reg.to_str().unwrap(),
        "fuse",
        "--adapter",
        fixture.to_str().unwrap(),
        "--base",
        "q8",
        "--requantize",
        "Q8_0",
        "-o",
        bad.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("MLX-quantized"), "{err}");
    let names: Vec<String> = std::fs::read_dir(home.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n != "bad" && !n.contains("partial")),
        "{names:?}"
    );
}
