//! The registry: every kind of mistake is an error naming file, line, model and key;
//! merging and runtime injection.

use engine::{ModelEntry, Registry, Source};
use plugin_api::ModelKind;
use std::path::Path;

const GOOD: &str = r#"
[[models]]
id = "mini"
kind = "embed"
architecture = "bert"
source = { hub = "org/mini", revision = "abc" }

[[models]]
id = "local-llm"
kind = "llm"
architecture = "llama"
source = { path = "models/llm" }
extra_eos = ["<|im_end|>"]
features = ["streaming"]
[models.options]
threads = 2
"#;

fn parse(text: &str) -> Result<Registry, String> {
    let mut r = Registry::new();
    r.merge_str(text, "test.toml", Path::new("/base"))
        .map_err(|e| e.to_string())?;
    Ok(r)
}

fn err(text: &str) -> String {
    parse(text).expect_err("registry should be rejected")
}

#[test]
fn valid_registry_parses() {
    let r = parse(GOOD).unwrap();
    let mini = r.get("mini").unwrap();
    assert_eq!(mini.kind, ModelKind::EMBED);
    assert_eq!(
        mini.source,
        Source::Hub {
            repo: "org/mini".into(),
            revision: "abc".into(),
            files: vec![]
        }
    );
    assert_eq!(mini.origin, "test.toml:3");
    let llm = r.get("local-llm").unwrap();
    assert_eq!(llm.source, Source::Path("/base/models/llm".into()));
    assert_eq!(llm.options["threads"], 2);
    assert!(llm.features.contains(plugin_api::Features::STREAMING));
}

#[test]
fn shipped_registry_is_valid() {
    let r = engine::load_registry(&[]).expect("shipped registry.toml parses");
    let m = r
        .get("all-minilm-l6-v2")
        .expect("default embedding model registered");
    assert_eq!(m.kind, ModelKind::EMBED);
    assert_eq!(m.architecture, "bert");
}

#[test]
fn unknown_kind_names_line_id_and_key() {
    let e = err("[[models]]\nid = \"x\"\nkind = \"embedd\"\narchitecture = \"bert\"\nsource = { path = \"/m\" }\n");
    assert!(
        e.starts_with("test.toml:3: model `x`: key `kind`: unknown kind `embedd`"),
        "{e}"
    );
    assert!(e.contains("llm, vlm, embed, diffusion, lora, quant"), "{e}");
}

#[test]
fn ids_that_are_not_folder_names_are_refused() {
    // Ids name folders (`<models>/<id>`): `.`, `..`, hidden names and other characters
    // are refused in files and at run time alike.
    for id in [".", "..", ".hidden", "-x", "a/b", "Upper", ""] {
        let text = format!(
            "[[models]]\nid = {id:?}\nkind = \"embed\"\narchitecture = \"bert\"\nsource = {{ path = \"/m\" }}\n"
        );
        let e = err(&text);
        assert!(
            e.contains("key `id`") && e.contains("is not a model id"),
            "{id:?}: {e}"
        );
        let mut r = Registry::new();
        let entry = ModelEntry::new(id, ModelKind::EMBED, "bert", Source::Path("/m".into()));
        let e = r.add(entry).expect_err(id).to_string();
        assert!(e.contains("is not a model id"), "{id:?}: {e}");
    }
    let long = "a".repeat(129);
    assert!(Registry::new()
        .add(ModelEntry::new(
            &long,
            ModelKind::EMBED,
            "bert",
            Source::Path("/m".into())
        ))
        .is_err());
    for id in ["a", "0.5b", "smollm2-135m_instruct.q4"] {
        let mut r = Registry::new();
        r.add(ModelEntry::new(
            id,
            ModelKind::EMBED,
            "bert",
            Source::Path("/m".into()),
        ))
        .expect(id);
    }
}

#[test]
fn duplicate_id_names_both_places() {
    let text = format!("{GOOD}\n[[models]]\nid = \"mini\"\nkind = \"embed\"\narchitecture = \"bert\"\nsource = {{ path = \"/m\" }}\n");
    let e = err(&text);
    assert!(
        e.contains("model `mini`: key `id`: duplicate id, first defined at test.toml:3"),
        "{e}"
    );
    assert!(e.starts_with("test.toml:19"), "{e}");
}

#[test]
fn missing_field_names_model_and_field() {
    let e =
        err("[[models]]\nid = \"nokind\"\narchitecture = \"bert\"\nsource = { path = \"/m\" }\n");
    assert!(e.contains("model `nokind`"), "{e}");
    assert!(e.contains("missing field `kind`"), "{e}");
    assert!(e.starts_with("test.toml:1: model `nokind`"), "{e}");
}

#[test]
fn bad_type_names_line_and_model() {
    let e = err("[[models]]\nid = \"typed\"\nkind = \"embed\"\narchitecture = \"bert\"\ncontext_length = \"long\"\nsource = { path = \"/m\" }\n");
    assert!(e.starts_with("test.toml:5: model `typed`"), "{e}");
    assert!(e.contains("invalid type"), "{e}");
}

#[test]
fn unknown_key_is_rejected() {
    let e = err("[[models]]\nid = \"k\"\nkind = \"embed\"\narchitecture = \"bert\"\narchitectur = \"x\"\nsource = { path = \"/m\" }\n");
    assert!(e.contains("unknown field `architectur`"), "{e}");
    assert!(e.starts_with("test.toml:5: model `k`"), "{e}");
}

#[test]
fn source_mistakes() {
    let both = err("[[models]]\nid = \"s\"\nkind = \"embed\"\narchitecture = \"bert\"\nsource = { path = \"/m\", hub = \"a/b\" }\n");
    assert!(
        both.contains("model `s`: key `source`: give either `hub` or `path`"),
        "{both}"
    );
    let none =
        err("[[models]]\nid = \"s\"\nkind = \"embed\"\narchitecture = \"bert\"\nsource = { }\n");
    assert!(none.contains("needs `hub` or `path`"), "{none}");
    let repo = err("[[models]]\nid = \"s\"\nkind = \"embed\"\narchitecture = \"bert\"\nsource = { hub = \"noslash\" }\n");
    assert!(repo.contains("key `source.hub`"), "{repo}");
}

#[test]
fn bad_values_name_the_key() {
    let id = err("[[models]]\nid = \"Bad Id\"\nkind = \"embed\"\narchitecture = \"bert\"\nsource = { path = \"/m\" }\n");
    assert!(id.contains("key `id`"), "{id}");
    let dtype = err("[[models]]\nid = \"d\"\nkind = \"embed\"\narchitecture = \"bert\"\ndtype = \"fp8\"\nsource = { path = \"/m\" }\n");
    assert!(
        dtype.starts_with("test.toml:5: model `d`: key `dtype`: unknown dtype `fp8`"),
        "{dtype}"
    );
    let kv = err("[[models]]\nid = \"k\"\nkind = \"llm\"\narchitecture = \"llama\"\nkv_cache = \"q3\"\nsource = { path = \"/m\" }\n");
    assert!(
        kv.starts_with("test.toml:5: model `k`: key `kv_cache`: unknown type `q3` (expected one of f32, f16, bf16, q8_0, q4_0)"),
        "{kv}"
    );
    let kv_embed = err("[[models]]\nid = \"e\"\nkind = \"embed\"\narchitecture = \"bert\"\nkv_cache = \"q8_0\"\nsource = { path = \"/m\" }\n");
    assert!(
        kv_embed.contains("key `kv_cache`: only `llm` models have a KV cache"),
        "{kv_embed}"
    );
    let twice = err("[[models]]\nid = \"t\"\nkind = \"llm\"\narchitecture = \"llama\"\nkv_cache = \"q8_0\"\nsource = { path = \"/m\" }\noptions = { kv_cache = \"f16\" }\n");
    assert!(
        twice.contains("set `kv_cache` on the model, not in its options"),
        "{twice}"
    );
    let feat = err("[[models]]\nid = \"f\"\nkind = \"embed\"\narchitecture = \"bert\"\nfeatures = [\"telepathy\"]\nsource = { path = \"/m\" }\n");
    assert!(
        feat.contains("key `features`: unknown feature `telepathy`"),
        "{feat}"
    );
}

#[test]
fn toml_syntax_error_names_line() {
    let e = err("[[models]]\nid = \"syn\"\nkind = embed\n");
    assert!(e.starts_with("test.toml:3"), "{e}");
}

#[test]
fn merge_is_all_or_nothing_and_rejects_duplicates_across_files() {
    let mut r = parse(GOOD).unwrap();
    let extra = "[[models]]\nid = \"new-one\"\nkind = \"embed\"\narchitecture = \"bert\"\nsource = { path = \"/n\" }\n\n[[models]]\nid = \"mini\"\nkind = \"embed\"\narchitecture = \"bert\"\nsource = { path = \"/m\" }\n";
    let e = r
        .merge_str(extra, "extra.toml", Path::new("/"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "extra.toml:8: model `mini`: key `id`: duplicate id, already defined at test.toml:3"
        ),
        "{e}"
    );
    assert!(
        r.get("new-one").is_none(),
        "a failed merge must not add anything"
    );
}

#[test]
fn runtime_injection_and_removal() {
    let mut r = parse(GOOD).unwrap();
    let entry = ModelEntry::new(
        "injected",
        ModelKind::EMBED,
        "BERT",
        Source::Path("/x".into()),
    );
    r.add(entry.clone()).unwrap();
    assert_eq!(r.get("injected").unwrap().architecture, "bert");
    assert_eq!(r.get("injected").unwrap().origin, "runtime");
    assert!(r
        .add(entry)
        .unwrap_err()
        .to_string()
        .contains("duplicate id"));
    assert!(r.remove("injected").is_some());
    assert!(r.get("injected").is_none());
}

#[test]
fn entry_round_trips_through_toml() {
    let mut e = ModelEntry::new(
        "rt",
        ModelKind::LLM,
        "llama",
        Source::Hub {
            repo: "a/b".into(),
            revision: "v1".into(),
            files: vec!["x.gguf".into()],
        },
    );
    e.dtype = Some("float16".into());
    e.context_length = Some(2048);
    let r = parse(&e.to_toml()).unwrap();
    let back = r.get("rt").unwrap();
    assert_eq!(back.source, e.source);
    assert_eq!(back.dtype, e.dtype);
    assert_eq!(back.context_length, Some(2048));
}

#[test]
fn lora_entries_name_their_base_and_only_they_have_one() {
    let lora = |extra: &str| {
        format!(
            "[[models]]\nid = \"pirate\"\nkind = \"lora\"\narchitecture = \"llama\"\n{extra}\nsource = {{ path = \"a\" }}\n"
        )
    };
    let r = parse(&lora("base = \"local-llm\"\nscale = 0.5")).unwrap();
    let e = r.get("pirate").unwrap();
    assert_eq!((e.base.as_deref(), e.scale), (Some("local-llm"), Some(0.5)));
    // The runtime registry's TOML keeps them.
    let again = parse(&e.to_toml()).unwrap();
    assert_eq!(
        again.get("pirate").unwrap().base.as_deref(),
        Some("local-llm")
    );
    let e = err(&lora(""));
    assert!(
        e.contains("test.toml:3: model `pirate`: key `base`: a `lora` entry names"),
        "{e}"
    );
    let e = err(&lora("base = \"Not An Id\""));
    assert!(
        e.contains("key `base`") && e.contains("is not a model id"),
        "{e}"
    );
    let e = err(&lora("base = \"x\"\nscale = 1e9"));
    assert!(
        e.contains("test.toml:6: model `pirate`: key `scale`: 1000000000 is not a scale"),
        "{e}"
    );
    let e = err("[[models]]\nid = \"m\"\nkind = \"llm\"\narchitecture = \"llama\"\nbase = \"x\"\nsource = { path = \"a\" }\n");
    assert!(
        e.contains("key `base`: only `lora` entries have a base, not `llm`"),
        "{e}"
    );
    let e = err("[[models]]\nid = \"m\"\nkind = \"llm\"\narchitecture = \"llama\"\nscale = 2.0\nsource = { path = \"a\" }\n");
    assert!(
        e.contains("key `scale`: only `lora` entries have a scale"),
        "{e}"
    );
}
