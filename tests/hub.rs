//! The model store against real local servers: the project's Hub test server
//! (`tests/hub/hub_server.py`: Hub API shapes, LFS redirects to a second origin, Range,
//! paging, access rules and fault injection), the official `huggingface_hub` client
//! against it, and olah (a Hub mirror people deploy) serving git repos made from the
//! packaged test models. Every fault test fails if the cache ever holds a wrong file.

mod util;

use serde_json::{json, Value};
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const TOKEN: &str = "hf_TestToken0123456789secret";

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn write(p: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

const TINY_WEIGHTS: usize = 3 << 20;

/// A repo root with the test repos (big files are symlinks to the packaged models).
fn repos() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let llama = json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                       "max_position_embeddings": 2048});
    for repo in [
        "testorg/tiny",
        "private/tiny",
        "gated/tiny",
        "evil/traversal",
    ] {
        write(
            &r.join(repo).join("config.json"),
            llama.to_string().as_bytes(),
        );
        write(
            &r.join(repo).join("model.safetensors"),
            &noise(TINY_WEIGHTS, 7),
        );
        write(
            &r.join(repo).join("tokenizer.json"),
            br#"{"version":"1.0","model":{}}"#,
        );
    }
    write(&r.join("testorg/tiny/README.md"), b"# tiny\n");
    // Two listing pages (the test server's pages hold 3 entries).
    write(&r.join("private/tiny/README.md"), b"# private\n");
    write(&r.join("private/tiny/notes.txt"), b"notes\n");
    write(
        &r.join("testorg/tiny/pytorch_model.bin"),
        &noise(1 << 20, 8),
    );
    write(&r.join("testorg/tiny/onnx/model.onnx"), &noise(1000, 9));
    let mamba = json!({"model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"]});
    write(
        &r.join("testorg/mamba-unsupported/config.json"),
        mamba.to_string().as_bytes(),
    );
    write(
        &r.join("testorg/mamba-unsupported/model.safetensors"),
        &noise(2 << 20, 3),
    );
    let link = |src: &Path, dst: &Path| {
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(src, dst).unwrap();
    };
    let minilm = util::minilm_dir();
    for f in walk(&minilm) {
        let rel = f.strip_prefix(&minilm).unwrap();
        link(&f, &r.join("testorg/minilm-pulled").join(rel));
    }
    let gguf =
        engine::paths::models_dir().join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    link(
        &gguf,
        &r.join("testorg/smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf"),
    );
    write(
        &r.join("testorg/smollm2-gguf/README.md"),
        b"# SmolLM2 GGUF\n",
    );
    root
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The Hub test server, killed when dropped.
struct HubServer {
    child: Child,
    port: u16,
    cdn_port: u16,
    root: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl HubServer {
    fn start(root: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let mut s = Self {
            child: Self::spawn(root, &log, 0, 0).0,
            port: 0,
            cdn_port: 0,
            root: root.to_owned(),
            log,
            _dir: dir,
        };
        s.restart_on(0, 0);
        s
    }

    fn spawn(root: &Path, log: &Path, port: u16, cdn: u16) -> (Child, Value) {
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/hub/hub_server.py"
            ))
            .args([
                "--root",
                root.to_str().unwrap(),
                "--log",
                log.to_str().unwrap(),
            ])
            .args(["--port", &port.to_string(), "--cdn-port", &cdn.to_string()])
            .args(["--token", TOKEN])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the Hub test server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line).expect("server address line");
        (child, v)
    }

    fn restart_on(&mut self, port: u16, cdn: u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, v) = Self::spawn(&self.root, &self.log, port, cdn);
        self.child = child;
        self.port = v["port"].as_u64().unwrap() as u16;
        self.cdn_port = v["cdn_port"].as_u64().unwrap() as u16;
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn faults(&self, v: Value) {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/_ctl", self.url()))
            .json(&v)
            .send()
            .unwrap();
        assert!(r.status().is_success());
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Body GETs of the file whose path or LFS object is `name`.
    fn body_gets(&self, lfs_sha: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["method"] == "GET" && r["path"].as_str().unwrap().contains(lfs_sha))
            .collect()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An isolated user: own HF cache, runtime registry and models folder.
struct User {
    hf: tempfile::TempDir,
    home: tempfile::TempDir,
    models: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl User {
    fn new(endpoint: &str) -> Self {
        let u = Self {
            hf: tempfile::tempdir().unwrap(),
            home: tempfile::tempdir().unwrap(),
            models: tempfile::tempdir().unwrap(),
            env: vec![("HF_ENDPOINT".into(), endpoint.into())],
        };
        std::fs::create_dir_all(u.cache()).unwrap();
        u
    }

    fn cache(&self) -> PathBuf {
        self.hf.path().join("hub")
    }

    fn with(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mlxengine"));
        c.args(args)
            .env("HF_HOME", self.hf.path())
            .env("MLXENGINE_HOME", self.home.path())
            .env("MLXENGINE_MODELS", self.models.path())
            .env("MLXENGINE_HUB_ATTEMPTS", "8")
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN")
            .env_remove("HF_TOKEN_PATH")
            .env_remove("HF_HUB_OFFLINE")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "mlxengine {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "mlxengine {args:?} should fail:\n{}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stderr).unwrap()
    }

    /// Every file under the cache (blobs, snapshots, incomplete files).
    fn cache_files(&self) -> Vec<String> {
        if !self.cache().exists() {
            return vec![];
        }
        walk(&self.cache())
            .into_iter()
            .map(|p| p.strip_prefix(self.cache()).unwrap().display().to_string())
            .collect()
    }

    /// Assert that every blob in the cache is whole and right: named by the sha256 or
    /// git sha1 of its bytes, and that no snapshot entry points at anything else.
    fn assert_cache_sound(&self) {
        use sha2::Digest;
        for p in walk(&self.cache()) {
            let rel = p.strip_prefix(self.cache()).unwrap().display().to_string();
            if rel.contains("/blobs/") && !rel.ends_with(".incomplete") {
                let bytes = std::fs::read(&p).unwrap();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let sha256 = hex(&sha2::Sha256::digest(&bytes));
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {}\0", bytes.len()).as_bytes());
                h.update(&bytes);
                let git = hex(&h.finalize());
                assert!(
                    name == sha256 || name == git,
                    "blob {rel} does not match its name"
                );
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_of(p: &Path) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

fn pulled_file(u: &User, repo: &str, file: &str) -> PathBuf {
    let root = u
        .cache()
        .join(format!("models--{}", repo.replace('/', "--")));
    let commit = std::fs::read_to_string(root.join("refs/main")).expect("refs/main written");
    root.join("snapshots").join(commit.trim()).join(file)
}

#[test]
fn pull_picks_the_needed_files_and_verifies_them() {
    let root = repos();
    let hub = HubServer::start(root.path());
    let u = User::new(&hub.url());
    let out: Value =
        serde_json::from_str(&u.ok(&["pull", "testorg/tiny", "--json", "--id", "tiny"])).unwrap();
    assert_eq!(
        out["files"],
        json!(["config.json", "model.safetensors", "tokenizer.json"]),
        "not README, not the .bin beside .safetensors, not ONNX"
    );
    assert_eq!(out["registered_as"], "tiny");
    let f = pulled_file(&u, "testorg/tiny", "model.safetensors");
    assert_eq!(
        std::fs::read(&f).unwrap(),
        std::fs::read(root.path().join("testorg/tiny/model.safetensors")).unwrap()
    );
    assert!(std::fs::symlink_metadata(&f)
        .unwrap()
        .file_type()
        .is_symlink());
    u.assert_cache_sound();
    // The runtime registry got the model with fields from the Hub.
    let info: Value = serde_json::from_str(&u.ok(&["info", "tiny", "--json"])).unwrap();
    assert_eq!(info["architecture"], "llama");
    assert_eq!(info["kind"], "llm");
    assert_eq!(info["context_length"], 2048);
    assert!(info["local_path"].as_str().unwrap().contains("snapshots"));
    // A second pull downloads nothing.
    let before = hub.requests().len();
    let again: Value = serde_json::from_str(&u.ok(&["pull", "testorg/tiny", "--json"])).unwrap();
    assert_eq!(again["downloaded_bytes"], 0);
    assert_eq!(again["registered_as"], "tiny");
    assert!(hub.requests()[before..]
        .iter()
        .all(|r| !r["path"].as_str().unwrap().contains("/lfs/")));
    // --include replaces the choice; `ls` shows it; `rm` frees it.
    let inc: Value = serde_json::from_str(&u.ok(&[
        "pull",
        "testorg/tiny",
        "--include",
        "*.bin",
        "--json",
        "--no-register",
    ]))
    .unwrap();
    assert_eq!(inc["files"], json!(["pytorch_model.bin"]));
    let ls: Value = serde_json::from_str(&u.ok(&["ls", "--json"])).unwrap();
    assert_eq!(ls["models"][0]["repo"], "testorg/tiny");
    assert_eq!(ls["models"][0]["registered_as"], json!(["tiny"]));
    assert!(ls["models"][0]["size_bytes"].as_u64().unwrap() >= (TINY_WEIGHTS + (1 << 20)) as u64);
    u.ok(&["rm", "testorg/tiny"]);
    assert!(u
        .cache_files()
        .iter()
        .all(|f| !f.contains("models--testorg--tiny")));
    let rm_again = u.fails(&["rm", "testorg/tiny"]);
    assert!(rm_again.contains("not in the cache"), "{rm_again}");
}

#[test]
fn listings_are_capped_and_the_token_goes_to_the_endpoint_only() {
    let root = repos();
    let hub = HubServer::start(root.path());
    let u = User::new(&hub.url()).with("HF_TOKEN", TOKEN);
    // A listing whose next page is on another origin: followed, without the token.
    hub.faults(json!({"next_on_cdn": true}));
    u.ok(&["pull", "testorg/tiny", "--quiet", "--no-register"]);
    let trees: Vec<Value> = hub
        .requests()
        .into_iter()
        .filter(|r| r["path"].as_str().unwrap().contains("/tree/"))
        .collect();
    assert!(
        trees.iter().any(|r| r["origin"] == "cdn"),
        "the listing had a page on the second origin: {trees:?}"
    );
    for r in &trees {
        assert_eq!(
            r["auth"],
            json!(r["origin"] == "api"),
            "the token goes to the endpoint and nowhere else: {r}"
        );
    }
    // Nor with the redirects of LFS files to the second origin.
    let cdn: Vec<Value> = hub
        .requests()
        .into_iter()
        .filter(|r| r["origin"] == "cdn")
        .collect();
    assert!(cdn
        .iter()
        .any(|r| r["path"].as_str().unwrap().starts_with("/lfs/")));
    assert!(cdn.iter().all(|r| r["auth"] == false), "{cdn:?}");
    // A private repo's next page on another origin: no token goes there, so it answers
    // 401, and the error says that instead of blaming the token.
    let e = u.fails(&["pull", "private/tiny", "--quiet", "--no-register"]);
    assert!(
        e.contains("a page on another origin") && e.contains("answered 401"),
        "{e}"
    );
    assert!(!e.contains("was not accepted") && !e.contains(TOKEN), "{e}");
    // A server that always announces another page: the listing stops at the cap.
    hub.faults(json!({"next_on_cdn": false, "endless_pages": true}));
    let e = u.fails(&["pull", "private/tiny", "--quiet", "--no-register"]);
    assert!(e.contains("more than 1000 pages"), "{e}");
    hub.faults(json!({"endless_pages": false}));
}

#[test]
fn a_cut_body_resumes_with_range() {
    let root = repos();
    let hub = HubServer::start(root.path());
    let u = User::new(&hub.url());
    let cut = 1_000_000;
    hub.faults(json!({"cut": [cut]}));
    u.ok(&["pull", "testorg/tiny", "--no-register", "--quiet"]);
    let sha = sha256_of(&root.path().join("testorg/tiny/model.safetensors"));
    let gets = hub.body_gets(&sha);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0]["bytes"], cut);
    assert_eq!(gets[1]["range"], format!("bytes={cut}-"));
    assert_eq!(gets[1]["status"], 206);
    let sent: u64 = gets.iter().map(|g| g["bytes"].as_u64().unwrap()).sum();
    assert_eq!(sent, TINY_WEIGHTS as u64, "resumed, not downloaded again");
    assert_eq!(
        sha256_of(&pulled_file(&u, "testorg/tiny", "model.safetensors")),
        sha
    );
    u.assert_cache_sound();
}

#[test]
fn a_corrupted_body_is_retried_and_never_cached() {
    let root = repos();
    let hub = HubServer::start(root.path());
    let sha = sha256_of(&root.path().join("testorg/tiny/model.safetensors"));
    // Once: detected, deleted, downloaded again.
    let u = User::new(&hub.url());
    hub.faults(json!({"corrupt": 1}));
    u.ok(&["pull", "testorg/tiny", "--no-register", "--quiet"]);
    assert_eq!(hub.body_gets(&sha).len(), 2);
    assert_eq!(
        sha256_of(&pulled_file(&u, "testorg/tiny", "model.safetensors")),
        sha
    );
    u.assert_cache_sound();
    // Every time: fails clearly, nothing of it in the cache.
    let u = User::new(&hub.url());
    hub.faults(json!({"corrupt": 10}));
    let err = u.fails(&["pull", "testorg/tiny", "--no-register", "--quiet"]);
    hub.faults(json!({"corrupt": 0}));
    assert!(
        err.contains("failed verification") && err.contains("model.safetensors"),
        "{err}"
    );
    assert!(err.contains("sha256"), "{err}");
    assert!(
        u.cache_files()
            .iter()
            .all(|f| f.starts_with(".locks/")
                || !f.contains(&sha) && !f.ends_with("model.safetensors")),
        "{:?}",
        u.cache_files()
    );
    u.assert_cache_sound();
}

#[test]
fn error_pages_and_errors_are_never_cached() {
    let root = repos();
    let hub = HubServer::start(root.path());
    let sha = sha256_of(&root.path().join("testorg/tiny/model.safetensors"));
    // A 403 error page for the body (listing and metadata were fine): fails at once.
    let u = User::new(&hub.url());
    hub.faults(json!({"status": [403]}));
    let err = u.fails(&["pull", "testorg/tiny", "--no-register", "--quiet"]);
    assert!(err.contains("forbidden"), "{err}");
    assert!(
        u.cache_files()
            .iter()
            .all(|f| f.starts_with(".locks/") || !f.contains(&sha)),
        "{:?}",
        u.cache_files()
    );
    u.assert_cache_sound();
    // 5xx and 503 + Retry-After are retried.
    hub.faults(json!({"status": [500, 502], "busy": 1}));
    u.ok(&["pull", "testorg/tiny", "--no-register", "--quiet"]);
    assert_eq!(
        sha256_of(&pulled_file(&u, "testorg/tiny", "model.safetensors")),
        sha
    );
    u.assert_cache_sound();
}

#[test]
fn the_server_dies_mid_download_and_comes_back() {
    let root = repos();
    let mut hub = HubServer::start(root.path());
    let u = User::new(&hub.url());
    hub.faults(json!({"die_after": 1_500_000}));
    let mut pull = u
        .command(&["pull", "testorg/tiny", "--no-register"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the server to die, then bring it back on the same ports after a moment.
    let t = Instant::now();
    while hub.child.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the server should have died"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (p, c) = (hub.port, hub.cdn_port);
    hub.restart_on(p, c);
    let status = pull.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(pull.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("retrying"), "{err}");
    let sha = sha256_of(&root.path().join("testorg/tiny/model.safetensors"));
    let gets = hub.body_gets(&sha);
    assert!(
        gets.iter().any(|g| g["range"] == "bytes=1500000-"),
        "resumed where the dead server stopped: {gets:?}"
    );
    assert_eq!(
        sha256_of(&pulled_file(&u, "testorg/tiny", "model.safetensors")),
        sha
    );
    u.assert_cache_sound();
}

#[test]
fn bad_input_gets_clear_errors_and_writes_nothing() {
    let root = repos();
    let hub = HubServer::start(root.path());
    let u = User::new(&hub.url());
    for (args, want) in [
        (vec!["pull", "not a repo"], "invalid model id `not a repo`"),
        (vec!["pull", "a/b/c"], "expected `owner/name`"),
        (vec!["pull", "../etc"], "invalid model id"),
        (
            vec!["pull", "testorg/tiny@../../x"],
            "revision `../../x` is not a valid",
        ),
        (vec!["pull", "testorg/nope"], "`testorg/nope` was not found"),
        (vec!["pull", "testorg/tiny@v9"], "has no revision `v9`"),
        (vec!["pull", "private/tiny"], "needs authentication"),
        (vec!["pull", "gated/tiny"], "gated model"),
        (
            vec!["pull", "testorg/tiny", "--include", "["],
            "--include `[`",
        ),
        (
            vec!["pull", "testorg/tiny", "--include", "*.gif"],
            "nothing to download",
        ),
        (
            vec!["pull", "evil/traversal"],
            "unsafe file name `../../outside.txt`",
        ),
    ] {
        let err = u.fails(&args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(!root.path().join("outside.txt").exists());
    assert!(u.cache_files().is_empty(), "{:?}", u.cache_files());

    // An architecture no plugin serves is refused before its weights are fetched.
    let before = hub.requests().len();
    let err = u.fails(&["pull", "testorg/mamba-unsupported"]);
    assert!(
        err.contains("`mamba2`") && err.contains("nothing was downloaded"),
        "{err}"
    );
    assert!(hub.requests()[before..].iter().all(|r| !r["path"]
        .as_str()
        .unwrap()
        .contains("safetensors")
        && r["origin"] != "cdn"));

    // A token opens the private repo, distinct messages for gated; never printed.
    let t = u.with("HF_TOKEN", TOKEN);
    t.ok(&["pull", "private/tiny", "--quiet", "--no-register"]);
    let o = t.run(&["-vv", "pull", "gated/tiny"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("gated model"), "{err}");
    let bad = User::new(&hub.url()).with("HF_TOKEN", "hf_wrongtoken_abcdef");
    let o = bad.run(&["-vv", "pull", "private/tiny"]);
    let err2 = String::from_utf8_lossy(&o.stderr);
    assert!(err2.contains("was not accepted"), "{err2}");
    for text in [&err, &err2] {
        assert!(
            !text.contains(TOKEN) && !text.contains("hf_wrongtoken"),
            "{text}"
        );
    }
    assert!(hub.requests().iter().any(|r| r["path"]
        .as_str()
        .unwrap()
        .starts_with("/api/models/private/tiny")
        && r["auth"] == true));
}

#[test]
fn a_disk_full_write_error_is_reported_and_loses_nothing() {
    let root = repos();
    let hub = HubServer::start(root.path());
    let u = User::new(&hub.url());
    let sha = sha256_of(&root.path().join("testorg/tiny/model.safetensors"));
    // Writes to the partial file fail with ENOSPC, as on a full disk.
    let blobs = u.cache().join("models--testorg--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::os::unix::fs::symlink("/dev/full", blobs.join(format!("{sha}.incomplete"))).unwrap();
    let err = u.fails(&["pull", "testorg/tiny", "--quiet", "--no-register"]);
    assert!(
        err.contains("No space left on device") && err.contains(&sha),
        "{err}"
    );
    assert!(!blobs.join(&sha).exists());
    assert!(u
        .cache_files()
        .iter()
        .all(|f| !f.ends_with("model.safetensors")));
    // Space is back: the same command finishes.
    std::fs::remove_file(blobs.join(format!("{sha}.incomplete"))).unwrap();
    u.ok(&["pull", "testorg/tiny", "--quiet", "--no-register"]);
    u.assert_cache_sound();
}

#[test]
fn concurrent_pulls_of_one_model_download_it_once() {
    let root = repos();
    let hub = HubServer::start(root.path());
    let u = User::new(&hub.url());
    hub.faults(json!({"rate": 2_000_000}));
    let a = u
        .command(&["pull", "testorg/tiny", "--quiet"])
        .spawn()
        .unwrap();
    let b = u
        .command(&["pull", "testorg/tiny", "--quiet"])
        .spawn()
        .unwrap();
    for mut c in [a, b] {
        assert!(c.wait().unwrap().success());
    }
    hub.faults(json!({"rate": 0}));
    let sha = sha256_of(&root.path().join("testorg/tiny/model.safetensors"));
    assert_eq!(
        hub.body_gets(&sha).len(),
        1,
        "one download, the other waited"
    );
    u.assert_cache_sound();
    let reg = std::fs::read_to_string(u.home.path().join("registry.toml")).unwrap();
    assert_eq!(reg.matches("[[models]]").count(), 1, "{reg}");
}

#[test]
fn search_and_info_describe_hub_models() {
    let root = repos();
    let hub = HubServer::start(root.path());
    let u = User::new(&hub.url());
    let v: Value = serde_json::from_str(&u.ok(&["search", "testorg", "--json"])).unwrap();
    let ids: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "all pages followed: {ids:?}");
    let hit = |id: &str| {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == id)
            .unwrap()
            .clone()
    };
    let minilm = hit("testorg/minilm-pulled");
    assert_eq!(minilm["architecture"], "bert");
    assert_eq!(minilm["supported"], true);
    assert_eq!(minilm["library"], "sentence-transformers");
    let st = std::fs::metadata(util::minilm_dir().join("model.safetensors")).unwrap();
    assert!(minilm["size_bytes"].as_u64().unwrap() > st.len());
    assert_eq!(hit("testorg/mamba-unsupported")["supported"], false);
    assert_eq!(hit("testorg/tiny")["supported"], true);
    let embed: Value =
        serde_json::from_str(&u.ok(&["search", "mini", "--kind", "embed", "--json"])).unwrap();
    assert_eq!(embed["results"].as_array().unwrap().len(), 1);
    let limited: Value =
        serde_json::from_str(&u.ok(&["search", "", "--limit", "2", "--json", "--no-size"]))
            .unwrap();
    assert_eq!(limited["results"].as_array().unwrap().len(), 2);
    assert!(hub
        .requests()
        .iter()
        .any(|r| r["path"].as_str().unwrap().contains("cursor=")));

    let info: Value =
        serde_json::from_str(&u.ok(&["info", "testorg/smollm2-gguf", "--json"])).unwrap();
    assert_eq!(info["architecture"], "llama");
    assert_eq!(info["kind"], "llm");
    assert_eq!(info["quantization"], "q4_1");
    assert_eq!(info["context_length"], 8192);
    assert_eq!(info["fit"]["fits"], true);
    assert!(info["plugin"].is_string());
    let files = info["files"].as_array().unwrap();
    assert!(files
        .iter()
        .any(|f| f["path"] == "README.md" && f["selected"] == false));
    // The architecture came from a Range read of the GGUF header, not the whole file.
    let head = hub
        .requests()
        .into_iter()
        .find(|r| r["origin"] == "cdn" && r["method"] == "GET")
        .unwrap();
    assert!(
        head["range"].as_str().unwrap().starts_with("bytes=0-"),
        "{head}"
    );
    assert!(head["bytes"].as_u64().unwrap() < 20 << 20);
}

/// Embed with the pulled MiniLM; compare with the reference vectors.
fn check_embed(u: &User, id: &str) {
    let reference = util::reference();
    let case = &reference["embed"][0];
    let text = case["text"].as_str().unwrap();
    let want: Vec<f32> = serde_json::from_value(case["embedding"].clone()).unwrap();
    let v: Value = serde_json::from_str(&u.ok(&["embed", "-m", id, "--json", text])).unwrap();
    let got: Vec<f32> = v["embeddings"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert!(util::cosine(&got, &want) > 0.999);
}

#[test]
fn pulled_models_run_and_stay_usable_offline() {
    let root = repos();
    // A second copy for a registry entry that is downloaded on first use.
    let lazy = root.path().join("testorg/minilm-lazy");
    std::fs::create_dir_all(&lazy).unwrap();
    for f in walk(&util::minilm_dir()) {
        let rel = f.strip_prefix(util::minilm_dir()).unwrap();
        std::fs::create_dir_all(lazy.join(rel).parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&f, lazy.join(rel)).unwrap();
    }
    let hub = HubServer::start(root.path());
    let u = User::new(&hub.url());
    u.ok(&["pull", "testorg/minilm-pulled", "--quiet"]);
    check_embed(&u, "minilm-pulled");
    u.ok(&["pull", "testorg/smollm2-gguf", "--quiet", "--id", "smol"]);
    let generate = |u: &User| {
        let g: Value = serde_json::from_str(&u.ok(&[
            "generate",
            "-m",
            "smol",
            "--max-tokens",
            "4",
            "--json",
            "The capital of France is",
        ]))
        .unwrap();
        assert_eq!(g["generated_tokens"], 4, "{g}");
        assert_eq!(g["model"], "smol");
    };
    generate(&u);
    // A registry model that is not local yet is downloaded on first use.
    let reg = u.home.path().join("registry.toml");
    let mut text = std::fs::read_to_string(&reg).unwrap();
    text.push_str(concat!(
        "\n[[models]]\nid = \"lazy\"\nkind = \"embed\"\narchitecture = \"bert\"\n",
        "source = { hub = \"testorg/minilm-lazy\", revision = \"main\", files = [",
        "\"config.json\", \"model.safetensors\", \"tokenizer.json\", \"tokenizer_config.json\", ",
        "\"modules.json\", \"1_Pooling/config.json\"] }\n"
    ));
    std::fs::write(&reg, &text).unwrap();
    check_embed(&u, "lazy");
    // Server gone, offline: the cached models still run.
    drop(hub);
    let off = u.with("HF_HUB_OFFLINE", "1");
    check_embed(&off, "minilm-pulled");
    check_embed(&off, "lazy");
    generate(&off);
    // Offline and not cached: the error names what is missing.
    off.ok(&["rm", "testorg/minilm-lazy"]);
    let err = off.fails(&["embed", "-m", "lazy", "hello"]);
    assert!(
        err.contains("offline") && err.contains("model.safetensors"),
        "{err}"
    );
}

fn venv_python() -> PathBuf {
    let p = engine::paths::cache_dir().join("test-venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: run scripts/setup.sh",
        p.display()
    );
    p
}

#[test]
fn huggingface_hub_agrees_with_the_test_server_and_shares_the_cache() {
    let root = repos();
    let hub = HubServer::start(root.path());
    let u = User::new(&hub.url());
    u.ok(&["pull", "testorg/tiny", "--quiet", "--no-register"]);
    let o = Command::new(venv_python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/hub/hf_client_check.py"
        ))
        .args([
            &hub.url(),
            u.cache().to_str().unwrap(),
            root.path().to_str().unwrap(),
        ])
        .env_remove("HF_TOKEN")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(
        o.stdout
            .rsplit(|b| *b == b'\n')
            .find(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

/// olah serving git repos made from the packaged test models (LFS objects laid out by
/// hand, no git-lfs needed).
#[test]
fn pull_from_olah_then_run() {
    let olah = engine::paths::cache_dir().join("olah-venv/bin/olah-cli");
    assert!(
        olah.is_file(),
        "{} is missing: run scripts/setup.sh",
        olah.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("mirrors/models/testorg/minilm-olah");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    let minilm = util::minilm_dir();
    for f in walk(&minilm) {
        let rel = f.strip_prefix(&minilm).unwrap();
        let dst = repo.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        if rel == Path::new("model.safetensors") {
            // An LFS pointer in git, the object in .git/lfs/objects (as git-lfs stores it).
            let sha = sha256_of(&f);
            let size = std::fs::metadata(&f).unwrap().len();
            let obj = repo
                .join(".git/lfs/objects")
                .join(&sha[..2])
                .join(&sha[2..4])
                .join(&sha);
            std::fs::create_dir_all(obj.parent().unwrap()).unwrap();
            std::fs::hard_link(&f, &obj)
                .or_else(|_| std::fs::copy(&f, &obj).map(|_| ()))
                .unwrap();
            std::fs::write(
                &dst,
                format!(
                    "version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n"
                ),
            )
            .unwrap();
        } else {
            std::fs::copy(&f, &dst).unwrap();
        }
    }
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "minilm"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = format!(
        "[basic]\nhost = \"127.0.0.1\"\nport = {port}\nrepos-path = \"{0}/cache\"\nmirror-scheme = \"http\"\nmirror-netloc = \"127.0.0.1:{port}\"\nmirror-lfs-netloc = \"127.0.0.1:{port}\"\nmirrors-path = [\"{0}/mirrors\"]\nhf-scheme = \"http\"\nhf-netloc = \"127.0.0.1:9\"\nhf-lfs-netloc = \"127.0.0.1:9\"\n[accessibility]\noffline = true\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("olah.toml"), conf).unwrap();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _olah = Kill(
        Command::new(&olah)
            .args(["-c", "olah.toml", "--log-path"])
            .arg(dir.path().join("logs"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let ready = format!("{url}/api/models/testorg/minilm-olah/revision/main");
    let t = Instant::now();
    while !reqwest::blocking::get(&ready).is_ok_and(|r| r.status().is_success()) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "olah did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let u = User::new(&url);
    let out: Value =
        serde_json::from_str(&u.ok(&["pull", "testorg/minilm-olah", "--json"])).unwrap();
    assert_eq!(out["registered_as"], "minilm-olah");
    assert!(out["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "model.safetensors"));
    assert_eq!(
        sha256_of(&pulled_file(&u, "testorg/minilm-olah", "model.safetensors")),
        sha256_of(&minilm.join("model.safetensors"))
    );
    u.assert_cache_sound();
    check_embed(&u, "minilm-olah");
}
