//! Plugin API versioning, tested with real libraries built against other versions of the
//! interface crate:
//! - an **older minor of API 2**: today's `plugin-api` with the root module's last fields
//!   (`estimate`, `convert`) and the `Model` trait's last method (`adapter`) taken out,
//!   as a plugin built before they were appended has it. It must load, read as `None`
//!   where fields are missing, and answer UNSUPPORTED for the method it lacks.
//! - **API 1**: the same crate at version 0.1.0. It must be refused, naming both API
//!   versions.
//!
//! The fixture crates are generated from `plugin-api/` (so they follow it) into
//! `CARGO_TARGET_TMPDIR` and built there out of the workspace, offline, as an outside
//! author's plugin would be built.

use engine::plugins::load_library;
use plugin_api::{
    lora::{AdapterOp, AdapterRequest},
    DeviceInfo, ErrorKind, LoadRequest, ModelKind, ModelSpec,
};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR"); // host/

/// `s` with the text from `from` up to (not including) `to` removed; a marker that is
/// gone means plugin-api changed shape and this test must follow it.
fn cut(s: &str, from: &str, to: &str) -> String {
    let a = s
        .find(from)
        .unwrap_or_else(|| panic!("plugin-api/src/lib.rs no longer has {from:?}"));
    let b = a + s[a..]
        .find(to)
        .unwrap_or_else(|| panic!("plugin-api/src/lib.rs no longer has {to:?} after {from:?}"));
    format!("{}{}", &s[..a], &s[b..])
}

/// Copy `plugin-api` to `dir/plugin-api` at `version`, detached from the workspace, with
/// `edit` applied to its `lib.rs`.
fn interface_copy(dir: &Path, version: &str, edit: impl Fn(String) -> String) {
    let src = Path::new(ROOT).join("../plugin-api");
    let dst = dir.join("plugin-api");
    std::fs::create_dir_all(dst.join("src")).unwrap();
    for f in std::fs::read_dir(src.join("src")).unwrap().flatten() {
        let text = std::fs::read_to_string(f.path()).unwrap();
        let text = if f.file_name() == "lib.rs" {
            edit(text)
        } else {
            text
        };
        std::fs::write(dst.join("src").join(f.file_name()), text).unwrap();
    }
    std::fs::write(
        dst.join("Cargo.toml"),
        format!(
            "[package]\nname = \"mlxengine-plugin-api\"\nversion = \"{version}\"\nedition = \"2021\"\n\n\
             [lib]\nname = \"plugin_api\"\n\n[dependencies]\nabi_stable = \"=0.11.3\"\nserde = {{ version = \"1\", features = [\"derive\"] }}\n"
        ),
    )
    .unwrap();
}

/// One target directory for every crate built out of the workspace by the tests
/// (compat fixtures, the SDK template), so abi_stable is compiled once for them all.
fn out_of_tree_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("out-of-tree")
}

/// Build the fixture plugin `name` (its `lib.rs` is `plugin_src`) against the interface
/// copy in `dir`; returns the library.
fn build_fixture(dir: &Path, name: &str, plugin_src: &str) -> PathBuf {
    let crate_dir = dir.join("plugin");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::write(
        crate_dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n\
             [lib]\nname = \"mlxengine_{name}\"\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\nabi_stable = \"=0.11.3\"\nmlxengine-plugin-api = {{ path = \"../plugin-api\" }}\n\n\
             [workspace]\n"
        ),
    )
    .unwrap();
    std::fs::write(crate_dir.join("src/lib.rs"), plugin_src).unwrap();
    // The workspace's lockfile pins the same abi_stable and its dependencies (offline).
    std::fs::copy(
        Path::new(ROOT).join("../Cargo.lock"),
        crate_dir.join("Cargo.lock"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "--offline", "--quiet"])
        .current_dir(&crate_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", out_of_tree_target())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building fixture {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (prefix, suffix) = engine::plugins::library_pattern();
    out_of_tree_target()
        .join("release")
        .join(format!("{prefix}{name}{suffix}"))
}

/// A minimal `llm` plugin written against the root module and `Model` trait of the
/// interface copy it is built with (no SDK: the SDK belongs to the current version).
const OLD_MINOR_PLUGIN: &str = r#"
use abi_stable::{export_root_module, prefix_type::PrefixTypeTrait, sabi_trait::TD_Opaque, std_types::RResult};
use plugin_api::*;

struct Old;
impl Model for Old {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            id: "old".into(), kind: ModelKind::LLM, architecture: "old-arch".into(),
            backend: "cpu".into(), dtype: "float32".into(), dim: 1, max_tokens: 1,
            parameters: 1, weight_bytes: 1,
        }
    }
}

extern "C" fn descriptor() -> PluginResult<PluginDescriptor> {
    RResult::ROk(PluginDescriptor {
        name: "old-minor".into(), version: "2.0".into(), description: "built before estimate, convert and adapter".into(),
        kinds: vec![ModelKind::LLM].into(), architectures: vec!["old-arch".into()].into(),
        formats: vec!["safetensors".into()].into(), features: Features::NONE,
    })
}
extern "C" fn probe(_: &ProbeRequest) -> PluginResult<Probe> {
    RResult::ROk(Probe { score: 1, backend: "cpu".into(), reason: "fixture".into() })
}
extern "C" fn load_model(_: &LoadRequest) -> PluginResult<ModelBox> {
    RResult::ROk(Model_TO::from_value(Old, TD_Opaque))
}

#[export_root_module]
pub fn root() -> PluginModRef {
    PluginMod { api_version: API_VERSION, descriptor, probe, load_model }.leak_into_prefix()
}
"#;

/// The same plugin for API 1's root module (it had `quantize` where API 2 has more).
const API_1_PLUGIN: &str = r#"
use abi_stable::{export_root_module, prefix_type::PrefixTypeTrait, std_types::RResult};
use plugin_api::*;

extern "C" fn descriptor() -> PluginResult<PluginDescriptor> {
    RResult::RErr(PluginError::unsupported("descriptor"))
}
extern "C" fn probe(_: &ProbeRequest) -> PluginResult<Probe> {
    RResult::RErr(PluginError::unsupported("probe"))
}
extern "C" fn load_model(_: &LoadRequest) -> PluginResult<ModelBox> {
    RResult::RErr(PluginError::unsupported("load"))
}

#[export_root_module]
pub fn root() -> PluginModRef {
    PluginMod { api_version: 1, descriptor, probe, load_model }.leak_into_prefix()
}
"#;

/// Today's lib.rs as a plugin built before `estimate`, `convert` and `Model::adapter`
/// existed would have it.
fn older_minor(lib: String) -> String {
    let lib = cut(
        &lib,
        "    /// The memory loading a model would take",
        "}\n\nimpl RootModule",
    );
    cut(
        &lib,
        "    /// LoRA adapters: load, unload, fuse into the base weights, list.",
        "}\n\n/// An owned, type-erased [`Model`]",
    )
}

#[test]
fn a_plugin_of_an_older_api_2_minor_loads_and_lacks_only_what_it_lacks() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compat-api-2-older-minor");
    interface_copy(&dir, "2.0.0", older_minor);
    let lib = build_fixture(&dir, "old_minor", OLD_MINOR_PLUGIN);

    let plugin = load_library(&lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    assert_eq!(plugin.descriptor.name.as_str(), "old-minor");
    assert!(
        plugin.library().unwrap().estimate().is_none(),
        "absent field reads as None"
    );
    assert!(
        plugin.library().unwrap().convert().is_none(),
        "absent field reads as None"
    );

    let req = LoadRequest {
        model: ModelSpec {
            id: "old".into(),
            kind: ModelKind::LLM,
            architecture: "old-arch".into(),
            path: "".into(),
            quantization: None.into(),
            dtype: None.into(),
            context_length: 0,
            system_prompt: None.into(),
            extra_eos: Default::default(),
            options: "{}".into(),
        },
        device: DeviceInfo::default(),
        memory_budget: 0,
    };
    let model = (plugin.library().unwrap().load_model())(&req)
        .into_result()
        .unwrap();
    assert_eq!(model.info().architecture.as_str(), "old-arch");
    // A method its vtable lacks runs the trait's default: UNSUPPORTED, no crash.
    let e = model
        .adapter(&AdapterRequest {
            op: AdapterOp::LIST,
            ..Default::default()
        })
        .into_result()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UNSUPPORTED, "{e}");
    // So do the methods appended in 2.2.
    let e = model
        .score(&plugin_api::score::ScoreRequest::default())
        .into_result()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UNSUPPORTED, "{e}");
    let e = model
        .tokenize(&plugin_api::score::TokenizeRequest::default())
        .into_result()
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::UNSUPPORTED, "{e}");
}

#[test]
fn a_plugin_of_api_1_is_refused_naming_both_versions() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compat-api-1");
    interface_copy(&dir, "0.1.0", older_minor);
    let lib = build_fixture(&dir, "api_one", API_1_PLUGIN);
    let err = load_library(&lib).expect_err("an API 1 plugin must be refused");
    assert!(
        err.contains("built for plugin API 1 (plugin-api 0.1.0)")
            && err.contains(&format!(
                "this host speaks plugin API {}",
                plugin_api::API_VERSION
            )),
        "{err}"
    );
}
