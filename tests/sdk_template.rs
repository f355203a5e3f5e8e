//! The out-of-tree plugin template (`templates/plugin/`), built and tested as an outside
//! author would: copied out of this repository, its MLXEngine dependencies pointed at
//! this checkout by absolute path, `cargo build` and `cargo test` there (offline, the
//! workspace's lockfile pinning the shared crates), then dropped into a plugin folder of
//! the real host.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.."); // the repository

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            if e.file_name() != "target" {
                copy_dir(&e.path(), &to);
            }
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

fn cargo(dir: &Path, target: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .args(["--release", "--offline"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} in the template copy failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_template_builds_and_tests_out_of_tree_and_loads_in_the_host() {
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-template");
    let copy = work.join("my-plugin");
    let _ = std::fs::remove_dir_all(&copy);
    copy_dir(&Path::new(ROOT).join("templates/plugin"), &copy);
    let root = std::fs::canonicalize(ROOT).unwrap();
    let manifest = copy.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("../../", &format!("{}/", root.display()));
    std::fs::write(&manifest, text).unwrap();
    std::fs::copy(root.join("Cargo.lock"), copy.join("Cargo.lock")).unwrap();

    // Shared with tests/compat.rs's fixtures: abi_stable is compiled once for both.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("out-of-tree");
    cargo(&copy, &target, &["build"]);
    cargo(&copy, &target, &["test"]);

    // Dropped into a plugin folder, the host lists it beside its own plugins.
    let (prefix, suffix) = engine::plugins::library_pattern();
    let lib: PathBuf = target
        .join("release")
        .join(format!("{prefix}ngram_embed{suffix}"));
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(&lib, plugins.path().join(lib.file_name().unwrap())).unwrap();
    let home = tempfile::tempdir().unwrap();
    let mlx = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
            .args(["--plugin-dir", plugins.path().to_str().unwrap()])
            .args(args)
            .env("MLXENGINE_HOME", home.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let out = mlx(&["plugins", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"ngram-embed"), "{v}");
    assert_eq!(v["errors"].as_array().unwrap().len(), 0, "{v}");

    // A model of its own format (no weights the host could read) is registered, sized by
    // the plugin's estimate and served.
    let model = tempfile::tempdir().unwrap();
    std::fs::write(
        model.path().join("config.json"),
        r#"{"model_type": "ngram-hash", "dim": 16, "n": 3}"#,
    )
    .unwrap();
    let dir = model.path().to_str().unwrap();
    mlx(&[
        "add",
        "--id",
        "ngram",
        "--kind",
        "embed",
        "--architecture",
        "ngram-hash",
        "--path",
        dir,
    ]);
    let info: serde_json::Value =
        serde_json::from_slice(&mlx(&["info", "ngram", "--json"]).stdout).unwrap();
    assert_eq!(info["plugin"], "ngram-embed", "{info}");
    assert_eq!(info["estimate"]["weights_as"], "none (hashing)", "{info}");
    let out = mlx(&["embed", "--model", "ngram", "--json", "the cat sat"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("no memory estimate"),
        "admitted by its estimate"
    );
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["dim"], 16, "{e}");
}
