//! `mlxengine serve` driven by the official `openai` Python client (installed by
//! `scripts/setup.sh` into the cache's test venv) on the real models: API shapes, equality
//! with the CLI, concurrency with continuous batching, disconnects, overload, timeouts,
//! auth, metrics (parsed by `prometheus-client`) and graceful shutdown.

mod util;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A running server on a free port, stopped (SIGKILL) when dropped. One at a time: the
/// scenarios measure latency-sensitive behaviour (drains, deadlines) that two servers
/// competing for two cores would blur.
struct Server {
    child: Child,
    url: String,
    _home: tempfile::TempDir,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_SERVER: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Server {
    fn start(args: &[&str]) -> Self {
        let guard = ONE_SERVER.lock().unwrap_or_else(|p| p.into_inner());
        let home = tempfile::tempdir().unwrap();
        let (child, url) = util::serve(home.path(), args);
        Self {
            child,
            url,
            _home: home,
            _one_at_a_time: guard,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    let p = engine::paths::cache_dir().join("test-venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh (installs openai and prometheus-client)",
        p.display()
    );
    p
}

/// Run a scenario of `tests/server/openai_client.py`; its JSON result.
fn scenario(server: &Server, name: &str, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/server/openai_client.py"
    );
    let o = Command::new(python())
        .arg(script)
        .arg(name)
        .arg(&server.url)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run python");
    assert!(
        o.status.success(),
        "scenario `{name}` failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().unwrap_or("")).expect("scenario result json")
}

fn cli(args: &[&str]) -> serde_json::Value {
    let home = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args(args)
        .env("MLXENGINE_HOME", home.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn openai_client_results_equal_the_cli() {
    let server = Server::start(&[]);
    let r = scenario(&server, "api", &[], &[]);
    let chat = cli(&[
        "generate",
        "--model",
        "smollm2-135m-instruct",
        "--chat",
        "--json",
        "--max-tokens",
        "24",
        "--temperature",
        "0",
        "--seed",
        "7",
        "What is the capital of France?",
    ]);
    assert_eq!(
        r["chat"], chat["text"],
        "server chat vs CLI generate --chat"
    );
    let completion = cli(&[
        "generate",
        "--model",
        "smollm2-135m-instruct",
        "--json",
        "--max-tokens",
        "12",
        "The capital of France is",
    ]);
    assert_eq!(
        r["completion"], completion["text"],
        "server completion vs CLI"
    );
    let emb = cli(&[
        "embed",
        "--model",
        "all-minilm-l6-v2",
        "--json",
        "A man is eating food.",
    ]);
    let a: Vec<f32> = serde_json::from_value(r["embedding"].clone()).unwrap();
    let b: Vec<f32> = serde_json::from_value(emb["embeddings"][0].clone()).unwrap();
    assert!(util::cosine(&a, &b) > 0.999_999, "server embedding vs CLI");
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_stays_up() {
    let server = Server::start(&["--max-body-mb", "8"]);
    let r = scenario(&server, "errors", &[], &[]);
    assert!(r["checked"].as_array().unwrap().len() >= 14, "{r}");
}

#[test]
fn an_empty_api_key_is_refused_at_start() {
    // An empty key must not turn authentication off silently (flag or environment).
    let home = tempfile::tempdir().unwrap();
    for (args, env) in [
        (&["serve", "--port", "0", "--api-key", ""][..], None),
        (&["serve", "--port", "0"][..], Some("")),
        (&["serve", "--port", "0"][..], Some("  ")),
    ] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mlxengine"));
        c.args(args).env("MLXENGINE_HOME", home.path());
        match env {
            Some(v) => c.env("MLXENGINE_API_KEY", v),
            None => c.env_remove("MLXENGINE_API_KEY"),
        };
        let mut child = c
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("{args:?} {env:?}: it served instead of refusing the empty key");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "{args:?} {env:?}: exit status {}",
            o.status
        );
        assert!(
            err.contains("the API key (--api-key or MLXENGINE_API_KEY) is empty"),
            "{args:?} {env:?}: {err}"
        );
    }
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut_off() {
    // Half-open connections used to be held for ever (axum::serve sets no header timeout).
    use std::io::{Read, Write};
    let server = Server::start(&["--header-timeout", "1"]);
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    // Closed by the server (EOF, or a 408 then EOF), not by our own read timeout.
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("still open after {:?}: {e}", started.elapsed()),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A well-behaved client on the same server is served.
    let mut ok = std::net::TcpStream::connect(&addr).unwrap();
    ok.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    ok.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[test]
fn a_client_that_never_finishes_its_body_gets_408() {
    // Only headers were timed: a client that sent its headers and then part of its body
    // held the connection (and a server task) for ever.
    use std::io::{Read, Write};
    let server = Server::start(&["--body-timeout", "1"]);
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"input\": \"",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no answer after {:?}: {e}", started.elapsed()),
        }
        if text.windows(4).any(|w| w == b"\r\n\r\n") && text.ends_with(b"}") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("--body-timeout"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn api_key_guards_every_endpoint_but_health() {
    let key = "sk-test-0123456789";
    let server = Server::start(&["--api-key", key]);
    scenario(&server, "auth", &[key], &[("MLXENGINE_TEST_KEY", key)]);
}

#[test]
fn sixteen_concurrent_streams_batch_and_finish() {
    let server = Server::start(&["--preload", "default"]);
    let r = scenario(&server, "concurrency", &["32"], &[]);
    eprintln!("concurrency: {r}");
    assert_eq!(r["clients"], 16);
    // llama.cpp is not batch-invariant: the batch's size changes how activations are
    // quantized and summed, so greedy texts drift from the serial ones after a few words
    // (reported, not asserted). What must hold is that every answer is about its own
    // prompt's number: a sequence reading another's KV cache, or a misrouted token, would
    // answer about another number or garble the text.
    assert_eq!(r["about_own_number"], 16, "{r}");
}

#[test]
fn an_isolated_provider_batches_sixteen_streams() {
    // Continuous batching through the pipe: joins (poll_join), events and finished
    // sequences all cross it, for 16 concurrent streams.
    let server = Server::start(&["--preload", "default", "--isolate", "llm_ggml"]);
    let r = scenario(&server, "concurrency", &["8"], &[]);
    eprintln!("isolated concurrency: {r}");
    assert_eq!(r["clients"], 16);
}

#[test]
fn identical_greedy_requests_at_once_get_one_answer() {
    // They used to be decoded in other KV cells each and part within a dozen tokens. The
    // default model's prompt cache would replay the lone request's answer to each of
    // them: the batch they follow is made on the same weights with the cache off.
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("nocache.toml");
    let weights = engine::paths::models_dir().join("smollm2-135m-instruct");
    std::fs::write(
        &registry,
        format!(
            "[[models]]\nid = \"smollm2-nocache\"\nkind = \"llm\"\narchitecture = \"llama\"\n\
             source = {{ path = {:?} }}\noptions = {{ prompt_cache = false }}\n",
            weights.display().to_string()
        ),
    )
    .unwrap();
    let registry = registry.to_str().unwrap();
    let server = Server::start(&["--registry", registry, "--preload", "smollm2-nocache"]);
    let r = scenario(
        &server,
        "identical",
        &[],
        &[("MLXENGINE_TEST_LLM", "smollm2-nocache")],
    );
    eprintln!("identical: {r}");
}

/// A server preloading `id`, the Llama-architecture folder `model` as the only entry of
/// a registry written into `dir`.
fn serve_alone(dir: &std::path::Path, id: &str, model: &std::path::Path) -> Server {
    let registry = dir.join(format!("{id}.toml"));
    std::fs::write(
        &registry,
        format!(
            "[[models]]\nid = \"{id}\"\nkind = \"llm\"\narchitecture = \"llama\"\n\
             source = {{ path = {:?} }}\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    Server::start(&["--registry", registry.to_str().unwrap(), "--preload", id])
}

#[test]
fn preloaded_mlx_models_serve_from_their_worker() {
    // `--preload` loads on a blocking thread; the model's worker serves it from another.
    // MLX streams belong to a thread: weights left lazy at load (a safetensors read, a
    // cast) failed every request with "There is no Stream(cpu, 0) in current thread".
    // An MLX checkpoint (safetensors: only the MLX provider serves it).
    let dir = tempfile::tempdir().unwrap();
    let q8 = dir.path().join("q8");
    let gguf = engine::paths::models_dir().join("smollm2-135m-instruct");
    let o = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args([
            "quantize",
            gguf.to_str().unwrap(),
            "-q",
            "--bits",
            "8",
            "-o",
        ])
        .arg(&q8)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let server = serve_alone(dir.path(), "smollm2-q8", &q8);
    let r = scenario(&server, "preloaded", &["smollm2-q8"], &[]);
    eprintln!("preloaded: {r}");
}

#[test]
fn concurrent_streams_batch_on_the_mlx_provider() {
    // SmolLM2 as float32 safetensors: only the MLX provider serves it. 16 clients at once
    // join one running call (continuous batching) and each gets an answer about its own
    // prompt; serially the same prompts run one call each.
    let dir = tempfile::tempdir().unwrap();
    let f32_dir = dir.path().join("smol-f32");
    let gguf = engine::paths::models_dir().join("smollm2-135m-instruct");
    let gguf = std::fs::read_dir(&gguf)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "gguf"))
        .expect("the default model's GGUF");
    let o = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .env("MLXENGINE_HOME", dir.path().join("home"))
        .arg("import")
        .arg(&gguf)
        .arg(&f32_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let server = serve_alone(dir.path(), "smollm2-mlx", &f32_dir);
    let r = scenario(
        &server,
        "concurrency",
        &["32"],
        &[("MLXENGINE_TEST_LLM", "smollm2-mlx")],
    );
    eprintln!("mlx concurrency: {r}");
    assert_eq!(r["clients"], 16);
    assert_eq!(r["about_own_number"], 16, "{r}");
}

#[test]
fn requests_with_different_adapters_share_one_base() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/lora/smollm2-pirate");
    let fixture = fixture.canonicalize().unwrap();
    // A corrupt adapter: the config without its weights.
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(
        fixture.join("adapter_config.json"),
        broken.join("adapter_config.json"),
    )
    .unwrap();
    std::fs::write(broken.join("adapter_model.safetensors"), b"not safetensors").unwrap();
    let registry = dir.path().join("lora.toml");
    let entry = |id: &str, scale: f32| {
        format!(
            "[[models]]\nid = \"{id}\"\nkind = \"lora\"\narchitecture = \"llama\"\n\
             base = \"smollm2-135m-instruct\"\nscale = {scale:?}\nsource = {{ path = {:?} }}\n\n",
            fixture.display().to_string()
        )
    };
    std::fs::write(
        &registry,
        entry("pirate", 1.0) + &entry("pirate-half", 0.5) + &entry("pirate-late", 1.0),
    )
    .unwrap();
    let server = Server::start(&[
        "--registry",
        registry.to_str().unwrap(),
        "--preload",
        "default",
    ]);
    let r = scenario(
        &server,
        "lora",
        &[fixture.to_str().unwrap(), broken.to_str().unwrap()],
        &[],
    );
    eprintln!("lora: {r}");
    assert_eq!(r["jobs"], 9);
}

#[test]
fn disconnect_frees_the_slot() {
    let server = Server::start(&["--preload", "default"]);
    scenario(&server, "disconnect", &[], &[]);
}

#[test]
fn embeddings_are_bounded_by_the_queue_and_the_time_limit() {
    let server = Server::start(&["--max-queue", "1", "--request-timeout", "3"]);
    let r = scenario(&server, "embed_limits", &[], &[]);
    eprintln!("embed limits: {r}");
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(&["--preload", "default", "--max-queue", "1"]);
    let r = scenario(&server, "overload", &[], &[]);
    eprintln!("overload: {r}");
}

#[test]
fn requests_past_their_time_limit_are_cancelled() {
    let server = Server::start(&["--preload", "default", "--request-timeout", "1"]);
    scenario(&server, "timeout", &[], &[]);
}

#[test]
fn metrics_parse_as_prometheus_text_and_admin_endpoints_work() {
    let server = Server::start(&[]);
    scenario(&server, "metrics", &[], &[]);
}

#[test]
fn idle_models_are_unloaded_and_reload_on_demand() {
    let server = Server::start(&["--idle-unload", "1"]);
    scenario(&server, "idle", &[], &[]);
}

#[test]
fn a_budget_for_one_model_swaps_two_on_demand() {
    // SmolLM2 needs ~235 MB and Gemma 3 270M ~435 MB on ggml (`mlxengine info`).
    let server = Server::start(&["--memory-budget", "520MB"]);
    let r = scenario(&server, "swap", &[], &[]);
    eprintln!("swap: {r}");
}

#[test]
fn a_model_over_the_budget_is_refused_and_nothing_is_loaded() {
    let server = Server::start(&["--memory-budget", "200MB"]);
    let r = scenario(&server, "over_budget", &[], &[]);
    eprintln!("over budget: {r}");
}

#[test]
fn a_request_kv_cache_counts_against_the_budget_and_is_given_back() {
    let server = Server::start(&["--memory-budget", "300MB", "--preload", "default"]);
    let pid = server.pid().to_string();
    let r = scenario(&server, "kv_budget", &[&pid], &[]);
    eprintln!("kv_budget: {r}");
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let mut server = Server::start(&["--preload", "default", "--shutdown-timeout", "30"]);
    let r = scenario(&server, "shutdown", &[&server.pid().to_string()], &[]);
    assert_eq!(r["finish"], "length");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}
