//! The diffusion plugin through the host: the tiny random SD 1.5-shaped pipeline of
//! `tests/fixtures/diffusion/sd15/` (its diffusers outputs beside it; the numerical
//! parity is `plugins/diffusion/tests/parity.rs`) served by `mlxengine image` and by
//! `POST /v1/images/generations`: PNG files with their parameters inside, the same seed
//! giving the same bytes through both, several images a request, each bad field a clear
//! error naming it, an image request to a text model refused by name, and nothing left
//! behind by a failed run.

mod util;

use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/diffusion/sd15"
    ))
}

fn registry(dir: &Path) -> PathBuf {
    let p = dir.join("diffusion.toml");
    std::fs::write(
        &p,
        format!(
            "[[models]]\nid = \"tiny-sd\"\nkind = \"diffusion\"\narchitecture = \"stable_diffusion\"\ndefault = true\nsource = {{ path = \"{}\" }}\n\n\
             [[models]]\nid = \"smol\"\nkind = \"llm\"\narchitecture = \"llama\"\nsource = {{ path = \"{}\" }}\n",
            fixture().display(),
            engine::paths::models_dir().join("smollm2-135m-instruct").display()
        ),
    )
    .unwrap();
    p
}

/// (width, height, RGB bytes, the `parameters` text) of a PNG.
fn read_png(bytes: &[u8]) -> (u32, u32, Vec<u8>, String) {
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let frame = r.next_frame(&mut buf).unwrap();
    let info = r.info();
    let params = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .unwrap_or_default();
    (frame.width, frame.height, buf, params)
}

fn image_cli(home: &Path, reg: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--registry", reg.to_str().unwrap(), "image"];
    args.extend_from_slice(extra);
    util::mlxengine(home, &args).output().unwrap()
}

#[test]
fn cli_writes_pngs_with_their_parameters() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let out = home.path().join("fox.png");
    let o = image_cli(
        home.path(),
        &reg,
        &[
            "-p",
            "a red fox in the snow",
            "--negative-prompt",
            "blurry",
            "--size",
            "80x48",
            "--steps",
            "3",
            "--seed",
            "7",
            "--sampler",
            "euler_a",
            "--json",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["seed"], 7);
    assert_eq!(v["files"][0], out.to_str().unwrap());
    let first = std::fs::read(&out).unwrap();
    let (w, h, pixels, params) = read_png(&first);
    assert_eq!((w, h), (80, 48));
    assert_eq!(pixels.len(), 80 * 48 * 3);
    assert_eq!(
        params,
        "a red fox in the snow\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, CFG scale: 7.5, Seed: 7, Size: 80x48, Model: tiny-sd"
    );
    // Not a flat picture.
    let (lo, hi) = pixels
        .iter()
        .fold((255u8, 0u8), |(l, h), &p| (l.min(p), h.max(p)));
    assert!(hi - lo > 64, "levels {lo}..{hi}");
    // Two images: NAME-1, NAME-2, different pictures; the same seed again: the same file.
    let o = image_cli(
        home.path(),
        &reg,
        &[
            "-p",
            "a red fox in the snow",
            "--negative-prompt",
            "blurry",
            "--size",
            "80x48",
            "--steps",
            "3",
            "--seed",
            "7",
            "--sampler",
            "euler_a",
            "-n",
            "2",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let one = std::fs::read(home.path().join("fox-1.png")).unwrap();
    let two = std::fs::read(home.path().join("fox-2.png")).unwrap();
    assert_ne!(read_png(&one).2, read_png(&two).2, "two images differ");
    let again = image_cli(
        home.path(),
        &reg,
        &[
            "-p",
            "a red fox in the snow",
            "--negative-prompt",
            "blurry",
            "--size",
            "80x48",
            "--steps",
            "3",
            "--seed",
            "7",
            "--sampler",
            "euler_a",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(again.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), first, "same seed, same bytes");
}

#[test]
fn cli_refuses_bad_fields_by_name_and_writes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let out = home.path().join("x.png");
    let o = out.to_str().unwrap();
    for (args, says) in [
        (vec!["-p", "a fox", "--size", "100x64"], "`width`"),
        (vec!["-p", "a fox", "--size", "64"], "--size `64`"),
        (vec!["-p", "a fox", "--steps", "1000"], "`steps`"),
        (vec!["-p", "a fox", "-n", "9"], "`count`"),
        (vec!["-p", "a fox", "--sampler", "plms"], "`sampler`"),
        (vec!["-p", "a fox", "--guidance", "0.5"], "`guidance`"),
        (vec!["-p", ""], "`prompt`"),
        // Known to the engine, not served by this plugin.
        (
            vec!["-p", "a fox", "--sampler", "lcm", "--steps", "1"],
            "`sampler` `lcm`",
        ),
        // A model of another kind.
        (vec!["-p", "a fox", "--model", "smol"], "smol"),
    ] {
        let mut a = args.clone();
        a.extend(["-o", o]);
        let r = image_cli(home.path(), &reg, &a);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} left a file");
    }
    let leftovers: Vec<_> = std::fs::read_dir(home.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn server_answers_images_in_openai_shape() {
    use base64::Engine as _;
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let (mut child, url) = util::serve(home.path(), &["--registry", reg.to_str().unwrap()]);
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .unwrap();
    let post = |body: serde_json::Value| -> (u16, serde_json::Value) {
        let r = client
            .post(format!("{url}/v1/images/generations"))
            .json(&body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap())
    };
    let (status, v) = post(serde_json::json!({
        "model": "tiny-sd", "prompt": "a red fox in the snow", "negative_prompt": "blurry",
        "size": "80x48", "steps": 3, "seed": 7, "sampler": "euler_a", "n": 2,
        "response_format": "b64_json",
    }));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["seed"], 7);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let png = base64::engine::general_purpose::STANDARD
        .decode(data[0]["b64_json"].as_str().unwrap())
        .unwrap();
    let (w, h, pixels, params) = read_png(&png);
    assert_eq!((w, h), (80, 48));
    assert!(
        params.contains("Seed: 7, Size: 80x48, Model: tiny-sd"),
        "{params}"
    );
    // The CLI's picture for the same settings (a fresh process: same seed, same bytes).
    let out = home.path().join("cli.png");
    let o = image_cli(
        home.path(),
        &reg,
        &[
            "-p",
            "a red fox in the snow",
            "--negative-prompt",
            "blurry",
            "--size",
            "80x48",
            "--steps",
            "3",
            "--seed",
            "7",
            "--sampler",
            "euler_a",
            "-n",
            "2",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cli = std::fs::read(home.path().join("cli-1.png")).unwrap();
    assert_eq!(read_png(&cli).2, pixels, "server and CLI agree");
    // Bad requests: 400 naming the parameter; the server keeps serving.
    for (body, param) in [
        (
            serde_json::json!({"prompt": "a fox", "size": "100x64"}),
            "size",
        ),
        (
            serde_json::json!({"prompt": "a fox", "size": "big"}),
            "size",
        ),
        (serde_json::json!({"prompt": "a fox", "n": 9}), "n"),
        (
            serde_json::json!({"prompt": "a fox", "steps": 1000}),
            "steps",
        ),
        (
            serde_json::json!({"prompt": "a fox", "sampler": "plms"}),
            "sampler",
        ),
        (
            serde_json::json!({"prompt": "a fox", "response_format": "url"}),
            "response_format",
        ),
        (serde_json::json!({"prompt": ""}), "prompt"),
    ] {
        let (status, e) = post(body.clone());
        assert_eq!(status, 400, "{body}: {e}");
        assert_eq!(e["error"]["param"], param, "{body}: {e}");
    }
    let (status, e) = post(serde_json::json!({"prompt": "a fox", "model": "smol"}));
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("smol"),
        "{e}"
    );
    let (status, _) = post(serde_json::json!({"prompt": "a fox", "size": "64x64", "steps": 1}));
    assert_eq!(status, 200, "still serving, the default model");
    let _ = child.kill();
    let _ = child.wait();
}
