//! Weight layouts on the real SmolLM2 weights: sharded safetensors with an index, and an
//! MLX-community style affine-quantized checkpoint (`quantization` in config.json, layers
//! quantized iff `*.scales` exist), run both through quantized kernels and dequantized.

use mlx_rs::{Array, Dtype};
use mlxengine_llm::{generate, loader, LoadOptions};
use plugin_api::text::{ChatMessage, GenerateRequest, StreamControl, TextInput};
use std::{collections::HashMap, path::Path};

fn imported(dir: &Path) -> std::path::PathBuf {
    let cache = std::env::var_os("MLXENGINE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/mlxengine")
        });
    let models = std::env::var_os("MLXENGINE_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or(cache.join("models"));
    let gguf = models.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let out = dir.join("hf");
    gguf::hf::import(&gguf, &out).unwrap();
    out
}

fn france(lm: &loader::Loaded) -> (Vec<u32>, String) {
    let msg = ChatMessage::text("user", "What is the capital of France?");
    let req = GenerateRequest {
        inputs: vec![TextInput {
            prompt: "".into(),
            messages: vec![msg].into(),
        }]
        .into(),
        max_tokens: 8,
        ..Default::default()
    };
    let out = generate::generate_alone(lm, &req, &mut |_| StreamControl::Continue).unwrap();
    (
        out.outputs[0].tokens.to_vec(),
        out.outputs[0].text.to_string(),
    )
}

fn copy_side_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

const F32: LoadOptions = LoadOptions {
    dtype: Dtype::Float32,
    dequantize: true,
};

#[test]
fn sharded_safetensors_with_an_index() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = imported(tmp.path());
    let (want, _) = france(&loader::load(&hf, F32).unwrap());
    assert_eq!(want, [504, 3575, 282, 4649, 314, 7042, 30, 2]);

    let tensors = Array::load_safetensors(hf.join("model.safetensors")).unwrap();
    let sharded = tmp.path().join("sharded");
    copy_side_files(&hf, &sharded);
    let mut shards: [HashMap<String, Array>; 2] = Default::default();
    let mut map = serde_json::Map::new();
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    for (i, name) in names.iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i % 2 + 1);
        map.insert(name.clone(), file.into());
        shards[i % 2].insert(name.clone(), tensors[name].clone());
    }
    for (i, s) in shards.into_iter().enumerate() {
        Array::save_safetensors(
            s,
            None,
            sharded.join(format!("model-{:05}-of-00002.safetensors", i + 1)),
        )
        .unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    assert_eq!(france(&loader::load(&sharded, F32).unwrap()).0, want);

    // A missing shard is an error naming it.
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let e = loader::load(&sharded, F32).err().unwrap().to_string();
    assert!(
        e.contains("model-00002-of-00002.safetensors: missing file"),
        "{e}"
    );
}

#[test]
fn mlx_affine_quantized_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = imported(tmp.path());
    let tensors = Array::load_safetensors(hf.join("model.safetensors")).unwrap();
    let q = tmp.path().join("q8");
    copy_side_files(&hf, &q);
    let mut out = HashMap::new();
    let mut quantized = 0;
    for (name, t) in tensors {
        if name.ends_with("_proj.weight") {
            let (w, scales, biases) = mlx_rs::ops::quantize(&t, 64, 8).unwrap();
            let base = name.trim_end_matches(".weight");
            out.insert(format!("{base}.scales"), scales);
            out.insert(format!("{base}.biases"), biases);
            out.insert(name, w);
            quantized += 1;
        } else {
            out.insert(name, t);
        }
    }
    assert_eq!(quantized, 30 * 7);
    Array::save_safetensors(out, None, q.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q.join("config.json")).unwrap()).unwrap();
    cfg["quantization"] = serde_json::json!({"group_size": 64, "bits": 8});
    std::fs::write(q.join("config.json"), cfg.to_string()).unwrap();

    let kernels = loader::load(
        &q,
        LoadOptions {
            dtype: Dtype::Float32,
            dequantize: false,
        },
    )
    .unwrap();
    let (ids_q, text_q) = france(&kernels);
    drop(kernels);
    let (ids_d, _) = france(&loader::load(&q, F32).unwrap());
    assert_eq!(
        ids_q, ids_d,
        "quantized kernels and dequantized weights agree"
    );
    assert_eq!(text_q, "The capital of France is Paris.");

    // `*.scales` without a `quantization` entry is an error naming the tensor.
    cfg.as_object_mut().unwrap().remove("quantization");
    std::fs::write(q.join("config.json"), cfg.to_string()).unwrap();
    let e = loader::load(&q, F32).err().unwrap().to_string();
    assert!(
        e.contains("scales` present but the config's `quantization` gives no group_size and bits"),
        "{e}"
    );
}
