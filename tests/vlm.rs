//! The vlm plugin through the host: the tiny random Idefics3 of
//! `tests/fixtures/vlm/idefics3/` (its transformers outputs beside it) served by the
//! engine, the CLI (`generate --image`) and `mlxengine serve` to the official `openai`
//! client; text-only requests to it, images to a text-only model, and every kind of bad
//! image, each refused with an error naming the part while the host goes on serving;
//! the tiny LLaVA through the CLI; remote image URLs fetched by a server started with
//! `--allow-remote-images`, from a local HTTP server, within their limits.

mod util;

use engine::{Engine, HostError, ModelEntry, PluginSet, Registry, Source};
use plugin_api::{
    text::{ChatMessage, ContentPart, GenerateRequest, StreamControl, TextInput},
    ErrorKind, ModelKind,
};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/vlm"
    ))
}

fn reference() -> serde_json::Value {
    let p = fixtures().join("idefics3/reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn image(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

fn engine() -> Engine {
    let mut set = PluginSet::default();
    set.load(&util::dylib("mlxengine_vlm"))
        .expect("vlm plugin loads");
    set.load(&util::dylib("mlxengine_llm"))
        .expect("llm plugin loads");
    let engine = Engine::new(Registry::new(), set);
    engine
        .add_model(ModelEntry::new(
            "tiny-idefics3",
            ModelKind::VLM,
            "idefics3",
            Source::Path(fixtures().join("idefics3")),
        ))
        .unwrap();
    engine
        .add_model(ModelEntry::new(
            "smol",
            ModelKind::LLM,
            "llama",
            Source::Path(engine::paths::models_dir().join("smollm2-135m-instruct")),
        ))
        .unwrap();
    engine
}

fn user(parts: Vec<ContentPart>) -> TextInput {
    TextInput {
        prompt: "".into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            parts: parts.into(),
        }]
        .into(),
    }
}

fn run(e: &Engine, model: &str, input: TextInput, max_tokens: u32) -> Result<Vec<u32>, HostError> {
    let req = util::gen(GenerateRequest {
        inputs: vec![input].into(),
        max_tokens,
        ..Default::default()
    });
    e.generate(model, &req, &mut |_| StreamControl::Continue)
        .map(|r| r.outputs[0].tokens.to_vec())
}

fn plugin_error(r: Result<Vec<u32>, HostError>) -> plugin_api::PluginError {
    match r {
        Err(HostError::Plugin { error, .. }) => error,
        other => panic!("expected a plugin error, got {other:?}"),
    }
}

#[test]
fn images_through_the_engine_and_bad_input_refused() {
    let e = engine();
    let case = &reference()["cases"][0];
    let want = ids(&case["new_ids"]);
    let good = || {
        user(vec![
            ContentPart::image(image("field-96x80.png"), "image/png"),
            ContentPart::text("Describe this image."),
        ])
    };
    assert_eq!(
        run(&e, "tiny-idefics3", good(), want.len() as u32).unwrap(),
        want
    );
    // A text-only request to the VLM.
    let text = run(&e, "tiny-idefics3", user(vec![ContentPart::text("hi")]), 4).unwrap();
    assert_eq!(text.len(), 4);

    // Bad images: each names the part and what is wrong; the model keeps serving.
    let png = image("field-96x80.png");
    let mut huge = png.clone();
    huge[16..24].copy_from_slice(&[0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0]); // 100000×100000
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not an image", b"hello, world".to_vec(), "not an image"),
        (
            "truncated",
            png[..png.len() / 2].to_vec(),
            "does not decode",
        ),
        ("huge canvas", huge, "does not decode"),
        ("empty", Vec::new(), "not an image"),
    ];
    for (what, bytes, says) in bad {
        let err = plugin_error(run(
            &e,
            "tiny-idefics3",
            user(vec![
                ContentPart::text("look"),
                ContentPart::image(bytes, "image/png"),
            ]),
            4,
        ));
        assert_eq!(err.kind, ErrorKind::INVALID_REQUEST, "{what}: {err:?}");
        let msg = err.message.as_str();
        assert!(
            msg.contains("tiny-idefics3") && msg.contains("messages[0].content[1]"),
            "{what}: {msg}"
        );
        assert!(msg.contains(says), "{what}: {msg}");
    }
    // More image tokens than the context holds (2048 positions; 24 per image here).
    let many: Vec<ContentPart> = (0..90)
        .map(|_| ContentPart::image(image("field-50x70.png"), "image/png"))
        .collect();
    let err = plugin_error(run(&e, "tiny-idefics3", user(many), 4));
    assert_eq!(err.kind, ErrorKind::CONTEXT_LENGTH, "{err:?}");
    assert_eq!(
        run(&e, "tiny-idefics3", good(), want.len() as u32).unwrap(),
        want
    );

    // An image sent to a text-only model.
    let err = run(&e, "smol", good(), 4).unwrap_err().to_string();
    assert!(
        err.contains("model `smol` is a `llm` model, not `vlm`"),
        "{err}"
    );
}

fn registry(dir: &Path) -> PathBuf {
    let p = dir.join("vlm.toml");
    let entry = |arch: &str| {
        format!(
            "[[models]]\nid = \"tiny-{arch}\"\nkind = \"vlm\"\narchitecture = \"{arch}\"\nsource = {{ path = \"{}\" }}\n",
            fixtures().join(arch).display()
        )
    };
    let all: String = ["idefics3", "llava", "qwen2_vl", "qwen2_5_vl"]
        .into_iter()
        .map(entry)
        .collect();
    std::fs::write(&p, all).unwrap();
    p
}

/// `mlxengine generate --image` for the reference's first case: its text as JSON.
fn cli_one_image(home: &Path, reg: &str) -> serde_json::Value {
    cli_one_image_on(home, reg, "tiny-idefics3")
}

fn cli_one_image_on(home: &Path, reg: &str, model: &str) -> serde_json::Value {
    let img = fixtures().join("images/field-96x80.png");
    let o = util::mlxengine(
        home,
        &[
            "--registry",
            reg,
            "generate",
            "--model",
            model,
            "--json",
            "--max-tokens",
            "8",
            "--image",
            img.to_str().unwrap(),
            "Describe this image.",
        ],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn cli_generate_with_images() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let reg = reg.to_str().unwrap();
    let r = reference();
    let v = cli_one_image(home.path(), reg);
    assert_eq!(v["backend"], "mlx-vlm");
    assert_eq!(v["token_ids"], r["cases"][0]["new_ids"], "{v}");
    assert_eq!(
        v["prompt_tokens"],
        r["cases"][0]["input_ids"].as_array().unwrap().len()
    );
    // Two images, and an image file that is not there.
    let imgs = fixtures().join("images");
    let o = util::mlxengine(
        home.path(),
        &[
            "--registry",
            reg,
            "generate",
            "--model",
            "tiny-idefics3",
            "--json",
            "--max-tokens",
            "3",
            "--image",
            imgs.join("field-96x80.png").to_str().unwrap(),
            "--image",
            imgs.join("field-50x70.png").to_str().unwrap(),
            "Which is brighter?",
        ],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let two: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        two["prompt_tokens"].as_u64().unwrap() > v["prompt_tokens"].as_u64().unwrap() + 20,
        "{two}"
    );
    let o = util::mlxengine(
        home.path(),
        &[
            "--registry",
            reg,
            "generate",
            "--model",
            "tiny-idefics3",
            "--image",
            "/no/such.png",
            "hi",
        ],
    )
    .output()
    .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/no/such.png"), "{err}");
    // `bench --image`: the same prompt, timed in one process.
    let o = util::mlxengine(
        home.path(),
        &[
            "--registry",
            reg,
            "bench",
            "--model",
            "tiny-idefics3",
            "--image",
            imgs.join("field-96x80.png").to_str().unwrap(),
            "--prompt",
            "Describe this image.",
            "--max-tokens",
            "4",
            "--runs",
            "1",
            "--json",
        ],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(b["prompt_tokens"], v["prompt_tokens"], "{b}");
    assert!(b["ttft_ms"]["median"].as_f64().unwrap() > 0.0, "{b}");
}

/// The other architectures from the registry through the CLI: the greedy continuation
/// transformers gives (Qwen2-VL's through its multimodal positions and their shift).
#[test]
fn llava_and_qwen2_vl_through_the_cli() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    for arch in ["llava", "qwen2_vl", "qwen2_5_vl"] {
        let p = fixtures().join(arch).join("reference.json");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let v = cli_one_image_on(home.path(), reg.to_str().unwrap(), &format!("tiny-{arch}"));
        assert_eq!(v["backend"], "mlx-vlm", "{arch}");
        assert_eq!(v["token_ids"], r["cases"][0]["new_ids"], "{arch}: {v}");
        assert_eq!(
            v["prompt_tokens"],
            r["cases"][0]["input_ids"].as_array().unwrap().len(),
            "{arch}"
        );
    }
}

/// A one-thread HTTP/1.0 server on loopback for the remote-image test: `/a.png` (the
/// fixture image), `/hop/N` (N redirects, then `/a.png`), `/page` (HTML), `/big` (a
/// 2 MiB "image" without Content-Length), `/slow` (answers after 4 s), anything else
/// 404. Returns its base URL.
fn image_host() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let png = image("field-96x80.png");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let png = png.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                if r.read_line(&mut line).is_err() {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).map_or(true, |n| n == 0) || h.trim().is_empty() {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let head = |status: &str, extra: &str| {
                    format!("HTTP/1.0 {status}\r\nConnection: close\r\n{extra}\r\n")
                };
                let _ = match path.as_str() {
                    "/a.png" => conn
                        .write_all(
                            head(
                                "200 OK",
                                &format!(
                                    "Content-Type: image/png\r\nContent-Length: {}\r\n",
                                    png.len()
                                ),
                            )
                            .as_bytes(),
                        )
                        .and_then(|_| conn.write_all(&png)),
                    "/page" => conn.write_all(
                        (head("200 OK", "Content-Type: text/html\r\n") + "<html></html>")
                            .as_bytes(),
                    ),
                    "/big" => conn
                        .write_all(head("200 OK", "Content-Type: image/png\r\n").as_bytes())
                        .and_then(|_| conn.write_all(&vec![0u8; 2 << 20])),
                    "/slow" => {
                        std::thread::sleep(std::time::Duration::from_secs(4));
                        conn.write_all(head("200 OK", "Content-Type: image/png\r\n").as_bytes())
                    }
                    p if p.starts_with("/hop/") => {
                        let n: u32 = p[5..].parse().unwrap_or(0);
                        let next = if n <= 1 {
                            "/a.png".into()
                        } else {
                            format!("/hop/{}", n - 1)
                        };
                        conn.write_all(
                            head("302 Found", &format!("Location: {next}\r\n")).as_bytes(),
                        )
                    }
                    _ => conn.write_all(head("404 Not Found", "").as_bytes()),
                };
            });
        }
    });
    base
}

#[test]
fn remote_images_are_fetched_within_limits_when_allowed() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let host = image_host();
    let (mut child, url) = util::serve(
        home.path(),
        &[
            "--registry",
            reg.to_str().unwrap(),
            "--allow-remote-images",
            "--remote-image-max-mb",
            "1",
            "--remote-image-timeout",
            "2",
        ],
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .unwrap();
    let ask = |image_url: &str| -> (u16, serde_json::Value) {
        let body = serde_json::json!({
            "model": "tiny-idefics3",
            "max_tokens": 8,
            "temperature": 0,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": "Describe this image."},
            ]}],
        });
        let r = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json().unwrap())
    };
    let r = reference();
    let (status, ok) = ask(&format!("{host}/a.png"));
    assert_eq!(status, 200, "{ok}");
    assert_eq!(
        ok["usage"]["prompt_tokens"],
        r["cases"][0]["input_ids"].as_array().unwrap().len()
    );
    let cli = cli_one_image(home.path(), reg.to_str().unwrap());
    assert_eq!(
        ok["choices"][0]["message"]["content"], cli["text"],
        "fetched vs file"
    );
    let (status, hops) = ask(&format!("{host}/hop/3"));
    assert_eq!(status, 200, "three redirects are followed: {hops}");
    for (path, says) in [
        ("/hop/4", "more than 3 redirects"),
        ("/page", "`text/html`, not an image type"),
        ("/big", "larger than 1 MB"),
        ("/slow", "no answer within 2 s"),
        ("/missing", "404"),
    ] {
        let (status, e) = ask(&format!("{host}{path}"));
        let msg = e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(status, 400, "{path}: {e}");
        assert_eq!(
            e["error"]["param"], "messages[0].content[0].image_url",
            "{path}: {e}"
        );
        assert!(msg.contains(says) && msg.contains(path), "{path}: {msg}");
    }
    // Still serving.
    assert_eq!(ask(&format!("{host}/a.png")).0, 200);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn openai_client_sends_images() {
    let home = tempfile::tempdir().unwrap();
    let reg = registry(home.path());
    let (mut child, url) = util::serve(home.path(), &["--registry", reg.to_str().unwrap()]);
    let python = engine::paths::cache_dir().join("test-venv/bin/python");
    let o = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/server/openai_client.py"
        ))
        .args(["vlm", &url])
        .arg(fixtures())
        .output()
        .expect("run python");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        o.status.success(),
        "scenario vlm failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let r = reference();
    assert_eq!(
        v["prompt_tokens"],
        r["cases"][0]["input_ids"].as_array().unwrap().len()
    );
    assert_eq!(
        v["two_prompt_tokens"],
        r["cases"][1]["input_ids"].as_array().unwrap().len()
    );
    let cli = cli_one_image(home.path(), reg.to_str().unwrap());
    assert_eq!(v["text"], cli["text"], "server vs CLI");
}
