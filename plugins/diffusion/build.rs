fn main() {
    // The plugin dylib finds libmlx without LD_LIBRARY_PATH: an rpath to the MLX the
    // build used, then `$ORIGIN/mlx/lib` for a packaged layout with libmlx beside it.
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/mlx/lib");
}
