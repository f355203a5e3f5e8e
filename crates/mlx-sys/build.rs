//! Build script of MLXEngine's `mlx-sys`: builds mlx-c 0.7.0 as a static library against
//! a prebuilt MLX from the pinned PyPI wheel and generates the bindings mlx-rs expects.
//!
//! Inputs (all optional; `scripts/setup.sh` fills the defaults):
//! - `MLX_PREFIX`: a directory with `lib/libmlx.{so,dylib}`, `include/` and
//!   `share/cmake/MLX` (the wheel's `mlx/` folder). Default:
//!   `$MLXENGINE_CACHE/mlx/mlx-cpu-0.32.4/mlx` (`MLXENGINE_CACHE` defaults to
//!   `${XDG_CACHE_HOME:-~/.cache}/mlxengine`; on macOS the default wheel is `mlx-metal`).
//! - `MLX_C_SRC`: an mlx-c source tree. Default: `src/mlx-c` of the published mlx-sys
//!   0.7.0 in the cargo registry (placed there by `cargo fetch` on `upstream/Cargo.toml`).
//!
//! The mlx-c sources are copied into `OUT_DIR` and three fixes are applied there
//! (never to the registry copy, never committed):
//! 1. `mlx/c/private/io.h` uses `std::format`, absent from libstdc++ 12;
//! 2. `mlx/c/ops.cpp`: `gather_qmm()` gained a `global_scale` argument in MLX 0.32.4;
//! 3. `mlx/c/half.h` declares `float16_t`/`bfloat16_t` only on ARM; off-ARM they become
//!    16-bit storage types (data only travels by pointer).
//!
//! Outputs for direct dependents (`DEP_MLX_*`): `LIBDIR` (where libmlx lives; final
//! artifacts add it as an rpath, because a library's build script cannot), `INCLUDE`,
//! `VERSION`.

use std::{
    env, fs,
    path::{Path, PathBuf},
};

const MLX_VERSION: &str = "0.32.4";
const MLX_C_CRATE: &str = "mlx-sys-0.7.0";

fn main() {
    for var in [
        "MLX_PREFIX",
        "MLX_C_SRC",
        "MLXENGINE_CACHE",
        "XDG_CACHE_HOME",
        "CARGO_HOME",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let prefix = mlx_prefix(&target_os);
    let libdir = prefix.join("lib");
    let libname = if target_os == "macos" {
        "libmlx.dylib"
    } else {
        "libmlx.so"
    };
    if !libdir.join(libname).is_file() {
        fail(&format!(
            "{} not found. Run `scripts/setup.sh` (downloads the pinned MLX {MLX_VERSION} wheel) \
             or set MLX_PREFIX to a directory holding lib/{libname}, include/ and share/cmake/MLX.",
            libdir.join(libname).display()
        ));
    }

    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let mlx_c = out.join("mlx-c");
    let src = mlx_c_source();
    println!("cargo:rerun-if-changed={}", src.display());
    if mlx_c.exists() {
        fs::remove_dir_all(&mlx_c).expect("remove stale mlx-c copy");
    }
    copy_dir(&src, &mlx_c).unwrap_or_else(|e| fail(&format!("copy {}: {e}", src.display())));
    patch_mlx_c(&mlx_c);

    let dst = cmake::Config::new(&mlx_c)
        .define("MLX_C_USE_SYSTEM_MLX", "ON")
        .define("MLX_DIR", prefix.join("share/cmake/MLX"))
        .define("MLX_C_BUILD_EXAMPLES", "OFF")
        .define("BUILD_SHARED_LIBS", "OFF")
        // mlx-c is a thin C layer; the heavy lifting is in libmlx, so always optimise it.
        .profile("Release")
        .build();
    println!("cargo:rustc-link-search=native={}/lib", dst.display());
    println!("cargo:rustc-link-search=native={}/build", dst.display());
    println!("cargo:rustc-link-lib=static=mlxc");
    println!("cargo:rustc-link-search=native={}", libdir.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    if target_os == "macos" {
        println!("cargo:rustc-link-lib=dylib=c++");
    } else {
        println!("cargo:rustc-link-lib=dylib=stdc++");
    }

    println!("cargo::metadata=libdir={}", libdir.display());
    let include = env::join_paths([prefix.join("include"), mlx_c.clone()]).unwrap();
    println!("cargo::metadata=include={}", include.to_string_lossy());
    println!("cargo::metadata=version={}", mlx_version(&prefix));

    generate_bindings(
        &mlx_c,
        &out,
        &env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default(),
    );
}

fn fail(msg: &str) -> ! {
    // A panic in a build script prints its message; keep it one readable paragraph.
    panic!("\n\nmlx-sys (MLXEngine): {msg}\n\n");
}

fn cache_root() -> PathBuf {
    if let Some(dir) = env::var_os("MLXENGINE_CACHE") {
        return PathBuf::from(dir);
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| fail("neither MLXENGINE_CACHE, XDG_CACHE_HOME nor HOME is set"));
    base.join("mlxengine")
}

fn mlx_prefix(target_os: &str) -> PathBuf {
    let prefix = match env::var_os("MLX_PREFIX") {
        Some(p) => PathBuf::from(p),
        None => {
            // Bindings and mlx-c only depend on the headers, which are identical across
            // the cpu/cuda wheels; the CUDA libmlx is swapped in at run time (see docs).
            let wheel = if target_os == "macos" {
                "mlx-metal"
            } else {
                "mlx-cpu"
            };
            cache_root()
                .join("mlx")
                .join(format!("{wheel}-{MLX_VERSION}"))
                .join("mlx")
        }
    };
    prefix.canonicalize().unwrap_or(prefix)
}

fn mlx_c_source() -> PathBuf {
    if let Some(p) = env::var_os("MLX_C_SRC") {
        return PathBuf::from(p);
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| fail("CARGO_HOME is not set"));
    let registry = cargo_home.join("registry").join("src");
    let mut found = fs::read_dir(&registry)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join(MLX_C_CRATE).join("src").join("mlx-c"))
        .filter(|p| p.join("CMakeLists.txt").is_file())
        .collect::<Vec<_>>();
    found.sort();
    found.pop().unwrap_or_else(|| {
        fail(&format!(
            "the mlx-c sources of {MLX_C_CRATE} are not in {}. Run \
             `cargo fetch --manifest-path crates/mlx-sys/upstream/Cargo.toml` \
             (scripts/setup.sh does) or set MLX_C_SRC.",
            registry.display()
        ))
    })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// Replace `from` by `to` in `text`, failing the build if `from` is absent (the sources
/// are not the expected mlx-c 0.7.0).
fn replace(text: &mut String, file: &str, from: &str, to: &str) {
    if !text.contains(from) {
        fail(&format!(
            "{file}: expected text not found, is this mlx-c 0.7.0? ({from:?})"
        ));
    }
    *text = text.replace(from, to);
}

fn edit(root: &Path, file: &str, f: impl FnOnce(&mut String)) {
    let path = root.join(file);
    let mut text =
        fs::read_to_string(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    f(&mut text);
    fs::write(&path, text).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
}

fn patch_mlx_c(root: &Path) {
    // 1. std::format is missing from libstdc++ 12.
    edit(root, "mlx/c/private/io.h", |s| {
        let file = "io.h";
        replace(
            s,
            file,
            "std::format(\"unable to read {} bytes (read {} instead)\", n, read_n)",
            "\"unable to read \" + std::to_string(n) + \" bytes (read \" + std::to_string(read_n) + \" instead)\"",
        );
        replace(
            s,
            file,
            "std::format(\n              \"unable to write {} bytes (wrote {} instead)\", n, wrote_n)",
            "\"unable to write \" + std::to_string(n) + \" bytes (wrote \" + std::to_string(wrote_n) + \" instead)\"",
        );
        replace(
            s,
            file,
            "std::format(\"[mlx_io_reader] {} in {}\", msg, label())",
            "\"[mlx_io_reader] \" + msg + \" in \" + label()",
        );
        replace(
            s,
            file,
            "std::format(\"[mlx_io_writer] {} in {}\", msg, label())",
            "\"[mlx_io_writer] \" + msg + \" in \" + label()",
        );
        replace(
            s,
            file,
            "#include <streambuf>\n",
            "#include <streambuf>\n#include <string>\n#include <stdexcept>\n",
        );
        if s.contains("std::format") {
            fail("io.h: std::format still used after patching");
        }
    });
    // 2. MLX 0.32.4 added `global_scale` before `sorted_indices` in gather_qmm().
    edit(root, "mlx/c/ops.cpp", |s| {
        let start = s
            .find("extern \"C\" int mlx_gather_qmm(")
            .unwrap_or_else(|| fail("ops.cpp: mlx_gather_qmm not found"));
        let rel = s[start..]
            .find("sorted_indices,\n            mlx_stream_get_(s)")
            .unwrap_or_else(|| fail("ops.cpp: gather_qmm call shape changed"));
        s.insert_str(
            start + rel,
            "std::nullopt /* global_scale (MLX >= 0.32.4) */,\n            ",
        );
    });
    // 3. float16_t / bfloat16_t exist only on ARM; declare 16-bit storage types elsewhere.
    edit(root, "mlx/c/half.h", |s| {
        replace(
            s,
            "half.h",
            "#ifdef __cplusplus\n}\n#endif\n\n#endif",
            "#if !defined(HAS_FLOAT16) && !defined(HAS_BFLOAT16)\n\
             #include <stdint.h>\n#define HAS_FLOAT16\n#define HAS_BFLOAT16\n\
             /* bit patterns of IEEE binary16 / bfloat16; data only travels by pointer */\n\
             typedef uint16_t float16_t;\ntypedef uint16_t bfloat16_t;\n#endif\n\n\
             #ifdef __cplusplus\n}\n#endif\n\n#endif",
        );
    });
}

fn mlx_version(prefix: &Path) -> String {
    let header = fs::read_to_string(prefix.join("include/mlx/version.h")).unwrap_or_default();
    let num = |key: &str| {
        header
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("#define {key} "))
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "{}.{}.{}",
        num("MLX_VERSION_MAJOR"),
        num("MLX_VERSION_MINOR"),
        num("MLX_VERSION_PATCH")
    )
}

fn generate_bindings(mlx_c: &Path, out: &Path, target_arch: &str) {
    let mut headers = fs::read_dir(mlx_c.join("mlx/c"))
        .unwrap_or_else(|e| fail(&format!("mlx-c headers: {e}")))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "h"))
        .collect::<Vec<_>>();
    headers.sort();
    let mut builder = bindgen::Builder::default()
        .rust_target("1.73.0".parse().expect("rust target"))
        .clang_arg(format!("-I{}", mlx_c.display()))
        .blocklist_function("malloc")
        .blocklist_function("realloc");
    for h in &headers {
        builder = builder.header(h.to_string_lossy());
    }
    if target_arch != "aarch64" {
        // mlx-rs reads float16 values as `float16_t.0` (bindgen's shape on ARM).
        builder = builder.blocklist_type("float16_t").raw_line(
            "#[repr(transparent)] #[derive(Debug, Default, Copy, Clone, Hash, PartialEq, Eq)] \
             pub struct float16_t(pub u16);",
        );
    }
    builder
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen failed (is libclang installed?): {e}")))
        .write_to_file(out.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("write bindings: {e}")));
}
