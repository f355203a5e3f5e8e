//! Plugin loading through the ABI: tolerant discovery, version checks, panics inside
//! plugin calls, and dispatch by kind / architecture / feature.

mod util;

use engine::{Engine, HostError, ModelEntry, PluginSet, Registry, Source};
use plugin_api::{embed::EmbedRequest, ErrorKind, Features, ModelKind};

fn texts(t: &[&str]) -> EmbedRequest {
    EmbedRequest {
        texts: t.iter().map(|s| (*s).into()).collect(),
        truncate: true,
        ..Default::default()
    }
}

/// A plugin dir with the real embed plugin, a library that is not a plugin, a plugin for
/// another API version, a panicking plugin and a file that is not a library at all.
fn mixed_dir() -> tempfile::TempDir {
    let dir = util::plugin_dir(&[
        ("mlxengine_embed", "embed"),
        ("test_not_a_plugin", "notaplugin"),
        ("test_wrong_version", "oldapi"),
        ("test_panicky", "panicky"),
    ]);
    let (prefix, suffix) = engine::plugins::library_pattern();
    std::fs::write(
        dir.path().join(format!("{prefix}garbage{suffix}")),
        b"this is not an ELF file",
    )
    .unwrap();
    dir
}

fn failure<'a>(set: &'a PluginSet, alias: &str) -> &'a str {
    &set.failures
        .iter()
        .find(|f| f.path.to_string_lossy().contains(alias))
        .unwrap_or_else(|| panic!("no load failure recorded for {alias}: {:?}", set.failures))
        .error
}

#[test]
fn bad_libraries_are_reported_and_the_rest_load() {
    let dir = mixed_dir();
    let set = PluginSet::discover(&[dir.path().to_path_buf()]);
    let names: Vec<&str> = set
        .plugins
        .iter()
        .map(|p| p.descriptor.name.as_str())
        .collect();
    assert_eq!(names, ["mlx-embed", "test-panicky"]);
    assert!(failure(&set, "notaplugin").contains("not an MLXEngine plugin"));
    let v = failure(&set, "oldapi");
    let host = format!("version {}", plugin_api::API_VERSION);
    assert!(v.contains("version 999") && v.contains(&host), "{v}");
    assert!(failure(&set, "garbage").contains("cannot open library"));
    assert_eq!(set.failures.len(), 3);
}

#[test]
fn a_fifo_named_like_a_plugin_is_skipped_not_waited_on() {
    // Opening a FIFO blocks until a writer comes: discovery used to hang every command.
    let dir = util::plugin_dir(&[("mlxengine_embed", "embed")]);
    let (prefix, suffix) = engine::plugins::library_pattern();
    let fifo = dir.path().join(format!("{prefix}fifo{suffix}"));
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let d = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let set = PluginSet::discover(&[d]);
        let _ = tx.send((
            set.plugins.len(),
            set.failures
                .iter()
                .map(|f| f.error.clone())
                .collect::<Vec<_>>(),
        ));
    });
    let (loaded, failures) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("discovery returned instead of blocking on the FIFO");
    assert_eq!(loaded, 1);
    assert!(
        failures.len() == 1 && failures[0].contains("not a regular file"),
        "{failures:?}"
    );
}

#[test]
fn real_embed_plugin_through_the_abi() {
    let mut set = PluginSet::default();
    let p = set
        .load(&util::dylib("mlxengine_embed"))
        .expect("embed plugin loads")
        .clone();
    assert_eq!(p.descriptor.name.as_str(), "mlx-embed");
    assert_eq!(p.api_version(), plugin_api::API_VERSION);
    assert!(p.descriptor.kinds.contains(&ModelKind::EMBED));
    assert!(p
        .descriptor
        .features
        .contains(Features::EMBEDDINGS.union(Features::BATCHING)));

    // Runtime injection, then dispatch to the injected model.
    let engine = Engine::new(Registry::new(), set);
    let entry = ModelEntry::new(
        "injected-minilm",
        ModelKind::EMBED,
        "bert",
        Source::Path(util::minilm_dir()),
    );
    engine.add_model(entry).unwrap();
    let out = engine
        .embed(
            "injected-minilm",
            &util::emb(texts(&["A man is eating food."])),
        )
        .unwrap();
    assert_eq!(out.dim, 384);
    let reference = util::reference();
    let want: Vec<f32> =
        serde_json::from_value(reference["embed"][0]["embedding"].clone()).unwrap();
    let cos = util::cosine(&out.data, &want);
    assert!(cos >= 0.999, "cosine {cos}");
    assert!(engine.remove_model("injected-minilm"));
    assert!(matches!(
        engine.embed("injected-minilm", &util::emb(texts(&["x"]))),
        Err(HostError::UnknownModel { .. })
    ));
}

#[test]
fn a_panicking_plugin_returns_an_error_and_the_host_keeps_working() {
    let dir = mixed_dir();
    let engine = Engine::new(
        Registry::new(),
        PluginSet::discover(&[dir.path().to_path_buf()]),
    );
    let boom = tempfile::tempdir().unwrap();
    engine
        .add_model(ModelEntry::new(
            "boom",
            ModelKind::EMBED,
            "panic-test",
            Source::Path(boom.path().into()),
        ))
        .unwrap();
    for _ in 0..2 {
        match engine.embed("boom", &util::emb(texts(&["hi"]))) {
            Err(HostError::Plugin { error, plugin, .. }) => {
                assert_eq!(error.kind, ErrorKind::PANIC);
                assert_eq!(plugin, "test-panicky");
                assert!(
                    error.message.contains("deliberate panic in embed"),
                    "{error}"
                );
            }
            other => panic!(
                "expected a plugin panic error, got {:?}",
                other.map(|r| r.dim)
            ),
        }
    }
    // A panic while loading is an error too.
    let on_load = boom.path().join("panic-on-load");
    std::fs::create_dir(&on_load).unwrap();
    engine
        .add_model(ModelEntry::new(
            "boom-load",
            ModelKind::EMBED,
            "panic-test",
            Source::Path(on_load),
        ))
        .unwrap();
    let e = engine
        .embed("boom-load", &util::emb(texts(&["hi"])))
        .unwrap_err()
        .to_string();
    assert!(e.contains("plugin panic: deliberate panic in load"), "{e}");
    // The real plugin in the same process still serves requests.
    engine
        .add_model(ModelEntry::new(
            "minilm",
            ModelKind::EMBED,
            "bert",
            Source::Path(util::minilm_dir()),
        ))
        .unwrap();
    assert_eq!(
        engine
            .embed("minilm", &util::emb(texts(&["still alive"])))
            .unwrap()
            .dim,
        384
    );
}

#[test]
fn an_isolated_plugin_that_crashes_fails_the_call_and_is_started_again() {
    // In process, the segfault below would end this test binary: isolated, it is one
    // call's error, the child is started again, and the model reloads in it.
    std::env::set_var("MLXENGINE_WORKER_EXE", env!("CARGO_BIN_EXE_mlxengine"));
    let mut set = PluginSet::default();
    let p = set
        .load_isolated(&util::dylib("test_panicky"))
        .expect("the isolated plugin starts");
    assert!(p.isolated());
    assert_eq!(p.descriptor.name.as_str(), "test-panicky");
    assert!(
        set.load(&util::dylib("mlxengine_embed")).is_some(),
        "{:?}",
        set.failures
    );
    let engine = Engine::new(Registry::new(), set);
    let boom = tempfile::tempdir().unwrap();
    engine
        .add_model(ModelEntry::new(
            "boom",
            ModelKind::EMBED,
            "panic-test",
            Source::Path(boom.path().into()),
        ))
        .unwrap();
    for round in 0..2 {
        let e = engine
            .embed("boom", &util::emb(texts(&["segfault"])))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("signal 11 (SIGSEGV)") && e.contains("started again"),
            "round {round}: {e}"
        );
        // The next call runs in a new child, with the model loaded again: the panic
        // path answers as it does in process.
        match engine.embed("boom", &util::emb(texts(&["hi"]))) {
            Err(HostError::Plugin { error, .. }) => {
                assert_eq!(error.kind, ErrorKind::PANIC, "{error}");
                assert!(
                    error.message.contains("deliberate panic in embed"),
                    "{error}"
                );
            }
            other => panic!("expected a panic error, got {:?}", other.map(|r| r.dim)),
        }
    }
    // The in-process plugin beside it serves as before.
    engine
        .add_model(ModelEntry::new(
            "minilm",
            ModelKind::EMBED,
            "bert",
            Source::Path(util::minilm_dir()),
        ))
        .unwrap();
    let v = engine
        .embed("minilm", &util::emb(texts(&["still alive"])))
        .unwrap();
    assert_eq!(v.dim, 384);
}

#[test]
fn a_kind_no_plugin_serves_is_a_clear_error() {
    let dir = util::plugin_dir(&[("mlxengine_embed", "embed")]);
    let engine = Engine::new(
        Registry::new(),
        PluginSet::discover(&[dir.path().to_path_buf()]),
    );
    let llm = ModelEntry::new(
        "some-llm",
        ModelKind::LLM,
        "llama",
        Source::Path(util::minilm_dir()),
    );
    let e = engine.select(&llm, Features::NONE).unwrap_err().to_string();
    assert_eq!(
        e,
        "no loaded plugin can serve model `some-llm`: no loaded plugin serves kind `llm`"
    );

    let wrong_arch = ModelEntry::new(
        "t5",
        ModelKind::EMBED,
        "t5",
        Source::Path(util::minilm_dir()),
    );
    let e = engine
        .select(&wrong_arch, Features::NONE)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("mlx-embed: does not support architecture `t5` (supports: bert)"),
        "{e}"
    );

    let mut needs = ModelEntry::new(
        "needs",
        ModelKind::EMBED,
        "bert",
        Source::Path(util::minilm_dir()),
    );
    needs.features = Features::STREAMING;
    let e = engine
        .select(&needs, needs.features)
        .unwrap_err()
        .to_string();
    assert!(e.contains("mlx-embed: lacks feature(s) streaming"), "{e}");

    let empty = Engine::new(Registry::new(), PluginSet::discover(&[]));
    let e = empty.select(&llm, Features::NONE).unwrap_err().to_string();
    assert!(e.contains("no plugins are loaded"), "{e}");
}

#[test]
fn a_wrong_kind_request_names_both_kinds() {
    let dir = util::plugin_dir(&[("mlxengine_embed", "embed")]);
    let engine = Engine::new(
        Registry::new(),
        PluginSet::discover(&[dir.path().to_path_buf()]),
    );
    engine
        .add_model(ModelEntry::new(
            "chat",
            ModelKind::LLM,
            "llama",
            Source::Path("/nonexistent".into()),
        ))
        .unwrap();
    let e = engine
        .embed("chat", &util::emb(texts(&["x"])))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "model `chat` is a `llm` model, not `embed`");
}

#[test]
fn a_model_without_local_files_names_where_it_looked() {
    let dir = util::plugin_dir(&[("mlxengine_embed", "embed")]);
    let engine = Engine::new(
        Registry::new(),
        PluginSet::discover(&[dir.path().to_path_buf()]),
    );
    let src = Source::Hub {
        repo: "nobody/nothing".into(),
        revision: "main".into(),
        files: vec![],
    };
    engine
        .add_model(ModelEntry::new(
            "absent-model",
            ModelKind::EMBED,
            "bert",
            src,
        ))
        .unwrap();
    let e = engine
        .embed("absent-model", &util::emb(texts(&["x"])))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("model `absent-model` is not available locally"),
        "{e}"
    );
    assert!(e.contains("models--nobody--nothing"), "{e}");
    assert!(e.contains("downloading it failed"), "{e}");
}
