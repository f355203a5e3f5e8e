fn main() {
    // This crate's test binaries find libmlx without LD_LIBRARY_PATH (rpath to the MLX the
    // build used, as the plugins do).
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
