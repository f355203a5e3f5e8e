//! Both `embed` providers on the real all-MiniLM-L6-v2 weights, through the ABI: the MLX
//! plugin, and the ggml plugin (the checkpoint converted to GGUF, run by llama.cpp).
//! Reference parity, batching equal to one-by-one, truncation and pooling options, and
//! the refusals of bad model files. Every case runs on each provider ([`PROVIDERS`]).

mod util;

use engine::{Engine, ModelEntry, PluginSet, Registry, Source};
use plugin_api::{
    embed::{EmbedRequest, Pooling},
    ErrorKind, ModelKind,
};

/// The plugin libraries that serve `embed`.
const PROVIDERS: [&str; 2] = ["mlxengine_embed", "mlxengine_llm_ggml"];

/// An engine with only `lib` loaded and all-MiniLM-L6-v2 registered as `minilm`.
fn engine_with(lib: &str) -> Engine {
    let mut set = PluginSet::default();
    set.load(&util::dylib(lib)).expect("embed plugin loads");
    let engine = Engine::new(Registry::new(), set);
    engine
        .add_model(ModelEntry::new(
            "minilm",
            ModelKind::EMBED,
            "bert",
            Source::Path(util::minilm_dir()),
        ))
        .unwrap();
    engine
}

fn req(texts: &[String]) -> EmbedRequest {
    EmbedRequest {
        texts: texts.iter().map(|s| s.as_str().into()).collect(),
        truncate: true,
        ..Default::default()
    }
}

#[test]
fn matches_sentence_transformers_reference() {
    for lib in PROVIDERS {
        matches_sentence_transformers_reference_on(lib);
    }
}

fn matches_sentence_transformers_reference_on(lib: &str) {
    println!("provider {lib}");
    let engine = engine_with(lib);
    let reference = util::reference();
    let cases = reference["embed"].as_array().unwrap();
    let texts: Vec<String> = cases
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_owned())
        .collect();
    let out = engine.embed("minilm", &util::emb(req(&texts))).unwrap();
    assert_eq!(out.dim, 384);
    for (i, c) in cases.iter().enumerate() {
        let want: Vec<f32> = serde_json::from_value(c["embedding"].clone()).unwrap();
        let got = &out.data[i * 384..(i + 1) * 384];
        let cos = util::cosine(got, &want);
        println!("{:<40} cosine {cos:.6}", texts[i]);
        // The project's bar for a float32 encoder against the reference (knowledge/
        // test-models.md). What the kernels can move: ggml's GELU is the tanh form through
        // an f16 table (≤ ~5e-4 per activation, relative ~1e-3 of the FFN output), sums are
        // reassociated (~1e-6); a 1e-3 relative error per vector costs ~5e-7 of cosine, so
        // 1e-3 of slack is wide for both providers (measured: 1 − 1e-6 on ggml).
        assert!(cos >= 0.999, "{}: cosine {cos}", texts[i]);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "normalized: {norm}");
    }
}

/// 256 texts of mixed lengths (1 to ~300 words, some over the 256-token maximum).
fn mixed_texts() -> Vec<String> {
    let words = [
        "the", "model", "runs", "locally", "on", "a", "small", "machine", "with", "plugins",
        "écoute", "naïve", "東京", "über", "weights", "tokens", "batch", "padding", "mask",
        "vector",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..256)
        .map(|i| {
            let n = match i % 8 {
                0 => 1,
                1 => 300,
                _ => 1 + (next() % 60) as usize,
            };
            (0..n)
                .map(|_| words[(next() % words.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[test]
fn a_batch_of_256_equals_one_by_one() {
    for lib in PROVIDERS {
        a_batch_of_256_equals_one_by_one_on(lib);
    }
}

fn a_batch_of_256_equals_one_by_one_on(lib: &str) {
    println!("provider {lib}");
    let engine = engine_with(lib);
    let texts = mixed_texts();
    let batch = engine.embed("minilm", &util::emb(req(&texts))).unwrap();
    assert_eq!(batch.data.len(), 256 * 384);
    let mut worst = 1.0f64;
    for (i, t) in texts.iter().enumerate() {
        let single = engine
            .embed("minilm", &util::emb(req(std::slice::from_ref(t))))
            .unwrap();
        let cos = util::cosine(&batch.data[i * 384..(i + 1) * 384], &single.data);
        worst = worst.min(cos);
        // Same weights, same kernels: a text's rows meet other texts only in masked
        // attention (exact zeros) and in how products are split across threads and
        // tiles, which reorders f32 sums (relative ~1e-6 per layer): 1e-4 of cosine
        // is far above that and far below a wrong mask or a mixed-up row.
        assert!(cos >= 0.9999, "text #{i} ({} chars): cosine {cos}", t.len());
    }
    println!("worst cosine batch vs single over 256 texts: {worst:.7}");
}

#[test]
fn over_long_text_without_truncation_is_an_invalid_request() {
    for lib in PROVIDERS {
        over_long_text_without_truncation_is_an_invalid_request_on(lib);
    }
}

fn over_long_text_without_truncation_is_an_invalid_request_on(lib: &str) {
    println!("provider {lib}");
    let engine = engine_with(lib);
    let long = vec!["word ".repeat(400)];
    let mut r = req(&long);
    r.truncate = false;
    let e = engine.embed("minilm", &util::emb(r.clone())).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("text #0 has 402 tokens, more than the model's maximum of 256"),
        "{msg}"
    );
    match e {
        engine::HostError::Plugin { error, .. } => {
            assert_eq!(error.kind, ErrorKind::INVALID_REQUEST)
        }
        other => panic!("{other}"),
    }
    // With truncation (the default) it is embedded from its first 256 tokens.
    assert_eq!(
        engine.embed("minilm", &util::emb(req(&long))).unwrap().dim,
        384
    );
}

#[test]
fn empty_request_is_rejected() {
    // Refused where it enters, before any plugin sees it.
    let e = engine::request::Embed::new(req(&[])).unwrap_err();
    assert_eq!(e.field, "texts");
    assert!(e.to_string().contains("the request has no texts"), "{e}");
}

#[test]
fn pooling_and_normalization_options() {
    for lib in PROVIDERS {
        pooling_and_normalization_options_on(lib);
    }
}

fn pooling_and_normalization_options_on(lib: &str) {
    println!("provider {lib}");
    let engine = engine_with(lib);
    let t = vec!["A man is eating food.".to_owned()];
    let mean = engine.embed("minilm", &util::emb(req(&t))).unwrap();
    let mut raw = req(&t);
    raw.normalize = Some(false).into();
    let raw = engine.embed("minilm", &util::emb(raw.clone())).unwrap();
    let norm: f32 = raw.data.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() > 0.01,
        "unnormalized vector should not have unit norm ({norm})"
    );
    assert!(util::cosine(&raw.data, &mean.data) > 0.99999);
    let mut cls = req(&t);
    cls.pooling = Pooling::CLS;
    let cls = engine.embed("minilm", &util::emb(cls.clone())).unwrap();
    assert!(
        util::cosine(&cls.data, &mean.data) < 0.99,
        "CLS pooling must differ from mean pooling"
    );
}

/// A copy of all-MiniLM-L6-v2 (links) with `file` replaced by `bytes`, registered as `id`.
fn minilm_with(engine: &Engine, id: &str, file: &str, bytes: &[u8]) -> tempfile::TempDir {
    let src = util::minilm_dir();
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        if f.file_name() != file {
            std::os::unix::fs::symlink(f.path(), dir.path().join(f.file_name())).unwrap();
        }
    }
    std::fs::write(dir.path().join(file), bytes).unwrap();
    engine
        .add_model(ModelEntry::new(
            id,
            ModelKind::EMBED,
            "bert",
            Source::Path(dir.path().to_owned()),
        ))
        .unwrap();
    dir
}

/// The load error of model `id`, checked to be of kind LOAD; the good model still serves.
fn load_error(engine: &Engine, id: &str) -> String {
    let e = engine
        .embed(id, &util::emb(req(&["zzzzqx".to_owned()])))
        .unwrap_err();
    let msg = e.to_string();
    match e {
        engine::HostError::Plugin { error, .. } => assert_eq!(error.kind, ErrorKind::LOAD),
        other => panic!("{other}"),
    }
    let ok = engine.embed("minilm", &util::emb(req(&["still here".to_owned()])));
    assert_eq!(ok.unwrap().dim, 384);
    msg
}

#[test]
fn a_tokenizer_with_ids_past_the_embedding_table_is_refused_at_load() {
    for lib in PROVIDERS {
        a_tokenizer_with_ids_past_the_embedding_table_is_refused_at_load_on(lib);
    }
}

fn a_tokenizer_with_ids_past_the_embedding_table_is_refused_at_load_on(lib: &str) {
    println!("provider {lib}");
    // A token id of 10^9 used to index the embedding table unchecked: the request that met
    // it crashed the host. The model is now refused at load, naming the file and token.
    let mut tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(util::minilm_dir().join("tokenizer.json")).unwrap())
            .unwrap();
    tok["model"]["vocab"]["zzzzqx"] = serde_json::json!(1_000_000_000u64);
    let engine = engine_with(lib);
    let _dir = minilm_with(
        &engine,
        "bad-tokenizer",
        "tokenizer.json",
        &serde_json::to_vec(&tok).unwrap(),
    );
    let msg = load_error(&engine, "bad-tokenizer");
    assert!(
        msg.contains("tokenizer.json") && msg.contains("\"zzzzqx\" has id 1000000000"),
        "{msg}"
    );
}

#[test]
fn special_tokens_and_types_past_their_tables_are_refused_per_request() {
    for lib in PROVIDERS {
        special_tokens_and_types_past_their_tables_are_refused_per_request_on(lib);
    }
}

fn special_tokens_and_types_past_their_tables_are_refused_per_request_on(lib: &str) {
    println!("provider {lib}");
    // The post-processor's special-token ids and type ids are not in the vocabulary the
    // load check reads: every request's encoding is checked against both tables.
    let tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(util::minilm_dir().join("tokenizer.json")).unwrap())
            .unwrap();
    let engine = engine_with(lib);
    let mut cls = tok.clone();
    cls["post_processor"]["special_tokens"]["[CLS]"]["ids"] = serde_json::json!([1_000_000_000u64]);
    let _a = minilm_with(
        &engine,
        "bad-cls",
        "tokenizer.json",
        &serde_json::to_vec(&cls).unwrap(),
    );
    let msg = load_error(&engine, "bad-cls");
    assert!(
        msg.contains("tokenizer.json") && msg.contains("token id 1000000000"),
        "{msg}"
    );
    let mut ty = tok;
    ty["post_processor"]["single"][0]["SpecialToken"]["type_id"] = serde_json::json!(7);
    let _b = minilm_with(
        &engine,
        "bad-type",
        "tokenizer.json",
        &serde_json::to_vec(&ty).unwrap(),
    );
    let msg = load_error(&engine, "bad-type");
    assert!(msg.contains("token type 7"), "{msg}");
}

#[test]
fn module_paths_outside_the_model_folder_are_refused() {
    for lib in PROVIDERS {
        module_paths_outside_the_model_folder_are_refused_on(lib);
    }
}

fn module_paths_outside_the_model_folder_are_refused_on(lib: &str) {
    println!("provider {lib}");
    // modules.json names folders of the model; `..` would read files anywhere.
    let modules = br#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
        {"idx":1,"name":"1","path":"../../../../etc","type":"sentence_transformers.models.Pooling"}]"#;
    let engine = engine_with(lib);
    let _dir = minilm_with(&engine, "escaping", "modules.json", modules);
    let msg = load_error(&engine, "escaping");
    assert!(
        msg.contains("modules.json") && msg.contains("not a path inside the model folder"),
        "{msg}"
    );
}

#[test]
fn a_dtype_ggml_does_not_run_falls_to_mlx_and_a_second_segment_to_an_error() {
    let mut set = PluginSet::default();
    for lib in PROVIDERS {
        set.load(&util::dylib(lib)).expect("embed plugin loads");
    }
    let engine = Engine::new(Registry::new(), set);
    let mut entry = ModelEntry::new(
        "minilm-bf16",
        ModelKind::EMBED,
        "bert",
        Source::Path(util::minilm_dir()),
    );
    entry.dtype = Some("bfloat16".into());
    engine.add_model(entry.clone()).unwrap();
    // ggml converts to float32/float16 only: its probe refuses, MLX serves the entry.
    let ggml = engine
        .candidates(&entry, plugin_api::Features::EMBEDDINGS)
        .into_iter()
        .find(|c| c.plugin == "ggml-llm")
        .unwrap();
    assert_eq!(ggml.score, 0, "{ggml:?}");
    assert!(ggml.reason.contains("bfloat16"), "{ggml:?}");
    let out = engine
        .embed(
            "minilm-bf16",
            &util::emb(req(&["A man is eating food.".to_owned()])),
        )
        .unwrap();
    assert_eq!(out.dim, 384);

    // A tokenizer that marks its tokens as a second segment (type 1, inside the table):
    // llama.cpp's BERT would embed them as type 0, so ggml refuses; MLX runs them.
    let mut tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(util::minilm_dir().join("tokenizer.json")).unwrap())
            .unwrap();
    for piece in tok["post_processor"]["single"].as_array_mut().unwrap() {
        for v in piece.as_object_mut().unwrap().values_mut() {
            v["type_id"] = serde_json::json!(1);
        }
    }
    let bytes = serde_json::to_vec(&tok).unwrap();
    for (lib, refused) in [("mlxengine_llm_ggml", true), ("mlxengine_embed", false)] {
        let engine = engine_with(lib);
        let _dir = minilm_with(&engine, "segment-b", "tokenizer.json", &bytes);
        let r = engine.embed("segment-b", &util::emb(req(&["a b".to_owned()])));
        match (refused, r) {
            (true, Err(engine::HostError::Plugin { error, .. })) => {
                assert_eq!(error.kind, ErrorKind::INVALID_REQUEST);
                assert!(
                    error.message.contains("token type ids other than 0"),
                    "{error}"
                );
            }
            (false, Ok(out)) => assert_eq!(out.dim, 384),
            (_, other) => panic!("{lib}: {other:?}"),
        }
    }
}
