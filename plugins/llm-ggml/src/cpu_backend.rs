//! llama.cpp's CPU backend, chosen at run time for the CPU this process runs on.
//!
//! The build makes one `libggml-cpu-<variant>.so` per x86 feature level (x64, sse42,
//! sandybridge, haswell, skylakex, icelake, zen4, sapphirerapids, …; llama.cpp's
//! `GGML_CPU_ALL_VARIANTS`). Each reports a score for the running CPU (0 when it needs an
//! instruction the CPU lacks) and llama.cpp loads the best (`GGML_BACKEND_DL`). So one
//! portable build gets AVX-512/VNNI kernels on a Xeon and AVX2 kernels on an EPYC.
//!
//! The modules are looked for, in order: in `MLXENGINE_GGML_BACKENDS` (a directory), beside
//! this plugin (a packaged layout, `scripts/package.sh`), and where this build installed
//! them (a development tree).

use std::{
    ffi::CStr,
    path::{Path, PathBuf},
};

const PREFIX: &str = "libggml-cpu-";
const SUFFIX: &str = ".so";

/// The CPU backend in use.
#[derive(Debug, Clone)]
pub struct CpuBackend {
    /// Directory the variants were loaded from.
    pub dir: PathBuf,
    /// The variant llama.cpp chose (`haswell`, `zen4`, …).
    pub variant: String,
    /// Variants available there.
    pub available: Vec<String>,
}

impl CpuBackend {
    /// One line for probes and `mlxengine device`.
    pub fn describe(&self) -> String {
        format!(
            "llama.cpp CPU backend `{}` (best of {} variants for this CPU)",
            self.variant,
            self.available.len()
        )
    }
}

/// Variant tags of the CPU backend modules in `dir`, sorted.
fn variants_in(dir: &Path) -> Vec<String> {
    let mut tags: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some(name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.to_owned())
        })
        .collect();
    tags.sort();
    tags
}

/// The directory of the shared library this code is in (the plugin), if it can be found.
fn plugin_dir() -> Option<PathBuf> {
    // SAFETY: dladdr only reads the loader's tables; `info` is written by it on success.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = plugin_dir as *const libc::c_void;
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the loader.
    let file = unsafe { CStr::from_ptr(info.dli_fname) }.to_str().ok()?;
    let file = Path::new(file).canonicalize().ok()?;
    file.parent().map(Path::to_path_buf)
}

/// Where the CPU backend modules are looked for, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("MLXENGINE_GGML_BACKENDS") {
        dirs.push(PathBuf::from(d));
    }
    dirs.extend(plugin_dir());
    if let Some(d) = option_env!("MLXENGINE_GGML_BUILD_BACKENDS") {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

/// The CPU backend module mapped into this process, by variant tag.
fn mapped_variant() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|l| {
        let file = Path::new(l.split_whitespace().last()?)
            .file_name()?
            .to_str()?;
        Some(file.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?.to_owned())
    })
}

/// Load the best CPU backend variant (once per process; the caller keeps the result).
pub fn load() -> Result<CpuBackend, String> {
    let dirs = search_dirs();
    let Some((dir, available)) = dirs.iter().find_map(|d| {
        let tags = variants_in(d);
        (!tags.is_empty()).then(|| (d.clone(), tags))
    }) else {
        let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(format!(
            "no llama.cpp CPU backend ({PREFIX}<variant>{SUFFIX}) found in: {} \
             (copy them beside the plugin, or set MLXENGINE_GGML_BACKENDS)",
            list.join(", ")
        ));
    };
    llama_cpp_2::llama_backend::load_backends_from_path(&dir);
    // SAFETY: a lookup in ggml's backend registry by a NUL-terminated name.
    let cpu = unsafe { llama_cpp_sys_2::ggml_backend_reg_by_name(c"CPU".as_ptr()) };
    if cpu.is_null() {
        return Err(format!(
            "none of the llama.cpp CPU backends in {} loads on this CPU (variants: {})",
            dir.display(),
            available.join(", ")
        ));
    }
    let variant = mapped_variant().unwrap_or_else(|| "unknown".into());
    Ok(CpuBackend {
        dir,
        variant,
        available,
    })
}
