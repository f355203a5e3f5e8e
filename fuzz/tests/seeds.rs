//! Every fuzz target on its committed seeds (`seeds/<target>/`): the inputs the fuzzer
//! starts from, and any input that once crashed a target, stay handled.

use std::path::Path;

#[test]
fn every_target_handles_its_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (name, target) in mlxengine_fuzz::TARGETS {
        let dir = root.join(name);
        let mut seeds: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("seed entry").path())
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "{name}: no seeds in {}", dir.display());
        for seed in seeds {
            let data = std::fs::read(&seed).expect("read seed");
            eprintln!("{name}: {}", seed.display());
            target(&data);
        }
    }
}
