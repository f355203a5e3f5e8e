fn main() {
    // llama.cpp is built as shared libraries (the `dynamic-backends` feature needs them):
    // libllama/libggml/libggml-base, plus one libggml-cpu-<variant>.so per x86 feature
    // level. The plugin finds them without LD_LIBRARY_PATH: first beside itself (a
    // packaged layout, see scripts/package.sh), then where this build installed them.
    // DT_RPATH rather than DT_RUNPATH: llama.cpp's libraries carry no search path of their
    // own, and only an RPATH also applies to the libraries they need (libggml-base).
    println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN");
    println!("cargo:rerun-if-env-changed=DEP_LLAMA_BACKENDS_DIR");
    if let Ok(backends) = std::env::var("DEP_LLAMA_BACKENDS_DIR") {
        let lib = std::path::Path::new(&backends).with_file_name("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        println!("cargo:rustc-env=MLXENGINE_GGML_BUILD_BACKENDS={backends}");
    }
}
