//! The template plugin driven through the real ABI, without the host
//! (`plugin_sdk::testing`): build with `cargo build --release`, then `cargo test --release`.

use plugin_api::{ErrorKind, ModelKind};
use plugin_sdk::testing::{self, TestPlugin};
use std::path::PathBuf;

fn model_dir(config: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ngram-template-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    dir
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn embeds_through_the_abi() {
    let plugin = TestPlugin::open(&testing::cdylib("mlxengine_ngram_embed")).unwrap();
    assert_eq!(plugin.descriptor.name.as_str(), "ngram-embed");
    let dir = model_dir(r#"{"model_type": "ngram-hash", "dim": 256, "n": 3}"#);
    let spec = testing::spec("ngram", ModelKind::EMBED, "ngram-hash", &dir);
    assert!(plugin.probe(Some(spec.clone())).unwrap().score > 0);
    let est = plugin.estimate(spec.clone(), 128, 4).unwrap();
    assert_eq!(est.total_bytes(), 256 * 4 * 4);

    let model = plugin.load(spec).unwrap();
    assert_eq!(model.info().dim, 256);
    let out = testing::embed(
        &model,
        &[
            "The cat sat on the mat.",
            "the cat sat on the mat",
            "Quantum chromodynamics",
        ],
    )
    .unwrap();
    let rows: Vec<&[f32]> = out.data.chunks(out.dim as usize).collect();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        assert!((cosine(r, r) - 1.0).abs() < 1e-5, "normalized");
    }
    let near = cosine(rows[0], rows[1]);
    let far = cosine(rows[0], rows[2]);
    assert!(near > 0.9 && far < 0.5, "near {near}, far {far}");
}

#[test]
fn bad_configs_name_the_file_and_key() {
    let plugin = TestPlugin::open(&testing::cdylib("mlxengine_ngram_embed")).unwrap();
    for (config, want) in [
        (
            r#"{"model_type": "ngram-hash", "dim": 256, "n": 3, "bias": 1}"#,
            "unknown key `bias`",
        ),
        (
            r#"{"model_type": "ngram-hash", "dim": 100000000, "n": 3}"#,
            "`dim` must be an integer from 1 to 65536",
        ),
        (
            r#"{"model_type": "bert", "dim": 8, "n": 3}"#,
            "`model_type` must be",
        ),
    ] {
        let dir = model_dir(config);
        let err = plugin
            .load(testing::spec("bad", ModelKind::EMBED, "ngram-hash", &dir))
            .err()
            .expect("refused");
        assert_eq!(err.kind, ErrorKind::LOAD);
        assert!(
            err.message.contains("config.json") && err.message.contains(want),
            "{err}"
        );
    }
}
