//! Helpers shared by the integration tests: where the built plugins, the test models and
//! the reference outputs are. Tests run after `cargo build --release --workspace`
//! (`scripts/test.sh`), which builds the plugin dylibs next to the test binaries.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The built library `lib<name>.so` in `target/<profile>` (platform naming), or a panic
/// saying how to build it.
pub fn dylib(name: &str) -> PathBuf {
    let p = plugin_sdk::testing::cdylib(name);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (`cargo build --release --workspace`, as scripts/test.sh does)",
        p.display()
    );
    p
}

/// A fresh directory holding copies of the given libraries under plugin names
/// (`libmlxengine_<alias>.so`), for discovery tests.
pub fn plugin_dir(libs: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let (prefix, suffix) = engine::plugins::library_pattern();
    for (lib, alias) in libs {
        std::fs::copy(
            dylib(lib),
            dir.path().join(format!("{prefix}{alias}{suffix}")),
        )
        .expect("copy plugin");
    }
    dir
}

/// `mlxengine` with its own empty config home and plugins from the build dir.
pub fn mlxengine(home: &Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_mlxengine"));
    c.args(args)
        .env("MLXENGINE_HOME", home)
        .env_remove("MLXENGINE_PLUGIN_PATH")
        .env_remove("MLXENGINE_REGISTRY")
        .env_remove("RUST_LOG");
    c
}

/// `mlxengine serve --port 0 ARGS` with its own config home `home`, no API key from the
/// environment, its stderr echoed as `[server] …`: the child and the address it printed
/// (`http://HOST:PORT`).
pub fn serve(home: &Path, args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args(["serve", "--port", "0"])
        .args(args)
        .env("MLXENGINE_HOME", home)
        .env_remove("MLXENGINE_API_KEY")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mlxengine serve");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(url) = line.strip_prefix("mlxengine: listening on ") {
                let _ = tx.send(url.to_owned());
            }
            eprintln!("[server] {line}");
        }
    });
    let url = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the server printed its address");
    (child, url)
}

/// The Python of the pinned mlx-lm venv (`scripts/setup.sh`).
pub fn mlx_lm_python() -> PathBuf {
    let p = engine::paths::cache_dir().join("mlx-lm-venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh (installs mlx-lm)",
        p.display()
    );
    p
}

/// `tests/quant/mlx_lm_check.py` with `args`: its JSON answer.
pub fn mlx_lm_check(args: &[&str]) -> serde_json::Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/quant/mlx_lm_check.py"
    );
    let o = std::process::Command::new(mlx_lm_python())
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json")
}

/// The all-MiniLM-L6-v2 model directory installed by `scripts/setup.sh`.
pub fn minilm_dir() -> PathBuf {
    let p = engine::paths::models_dir().join("all-minilm-l6-v2");
    assert!(
        p.join("model.safetensors").is_file(),
        "{} is missing: run scripts/setup.sh (installs the test models from PyPI)",
        p.display()
    );
    p
}

/// The reference outputs (`tests/fixtures/reference-outputs.json`).
pub fn reference() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/reference-outputs.json");
    serde_json::from_str(&std::fs::read_to_string(&p).expect("reference fixture"))
        .expect("fixture json")
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The shipped SmolLM2 Q4_1 GGUF (installed by `scripts/setup.sh`).
pub fn smollm2_q4_1() -> PathBuf {
    let dir = engine::paths::models_dir().join("smollm2-135m-instruct");
    gguf::model_file(&dir)
        .unwrap_or_else(|| panic!("no GGUF in {}: run scripts/setup.sh", dir.display()))
}

/// ggml provider options for float parity: no flash attention (its CPU path accumulates V
/// in f16), an f32 KV cache.
pub const GGML_FLOAT_OPTIONS: &str = r#"{"flash_attn":"off","kv_type":"f32"}"#;

/// Its float twin: every tensor of the Q4_1 file dequantized to F32 by our GGUF writer
/// (the same weight values, no quantized kernels), made once into the models cache.
pub fn smollm2_f32_twin() -> PathBuf {
    float_twin(
        &smollm2_q4_1(),
        "smollm2-135m-instruct-f32",
        "SmolLM2-135M-Instruct.F32.gguf",
    )
}

/// The shipped Gemma 3 270M Q4_K_M GGUF (Q4_K, Q5_0, Q6_K, Q8_0 and F32 tensors).
pub fn gemma3_q4_k_m() -> PathBuf {
    let dir = engine::paths::models_dir().join("gemma3-270m");
    gguf::model_file(&dir)
        .unwrap_or_else(|| panic!("no GGUF in {}: run scripts/setup.sh", dir.display()))
}

/// Its float twin (1.1 GB), made once into the models cache.
pub fn gemma3_f32_twin() -> PathBuf {
    float_twin(&gemma3_q4_k_m(), "gemma3-270m-f32", "gemma-3-270m.F32.gguf")
}

/// `src` with every tensor dequantized to F32 by our GGUF writer, made once as
/// `<models>/<dir>/<name>` (the writer writes beside and renames: never half a file).
fn float_twin(src: &Path, dir: &str, name: &str) -> PathBuf {
    let dir = engine::paths::models_dir().join(dir);
    let file = dir.join(name);
    if !file.is_file() {
        std::fs::create_dir_all(&dir).expect("models cache is writable");
        let g = gguf::Gguf::open(src).expect("shipped GGUF opens");
        gguf::writer::dequantize(&g, &file, gguf::writer::TensorType::F32)
            .expect("dequantize the shipped GGUF");
    }
    file
}

/// An `llm` model spec as a plugin's own loader takes it (tests that drive a plugin crate
/// in process, such as the ggml scorer).
pub fn llm_spec(id: &str, architecture: &str, path: &Path, options: &str) -> plugin_api::ModelSpec {
    plugin_api::ModelSpec {
        id: id.into(),
        kind: plugin_api::ModelKind::LLM,
        architecture: architecture.into(),
        path: path.display().to_string().into(),
        quantization: None.into(),
        dtype: None.into(),
        context_length: 0,
        system_prompt: None.into(),
        extra_eos: Default::default(),
        options: options.into(),
    }
}

/// `req` as the engine takes it (checked; the tests' requests are valid).
pub fn gen(req: plugin_api::text::GenerateRequest) -> engine::request::Generate {
    engine::request::Generate::new(req).expect("a valid generation request")
}

/// `req` as the engine takes it (checked; the tests' requests are valid).
pub fn emb(req: plugin_api::embed::EmbedRequest) -> engine::request::Embed {
    engine::request::Embed::new(req).expect("a valid embedding request")
}
