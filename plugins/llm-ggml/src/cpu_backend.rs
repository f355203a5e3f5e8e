//! llama.cpp's CPU backend, chosen at run time for the CPU this process runs on.
//!
//! The build makes one `libggml-cpu-<variant>.so` per x86 feature level (x64, sse42,
//! sandybridge, haswell, skylakex, icelake, zen4, sapphirerapids, …; llama.cpp's
//! `GGML_CPU_ALL_VARIANTS`). Each reports a score for the running CPU from CPUID (0 when
//! it needs an instruction the CPU lacks); the best one is registered with ggml
//! (`GGML_BACKEND_DL`). So one portable build gets AVX-512/VNNI kernels on a Xeon and AVX2
//! kernels on an EPYC.
//!
//! The choice is made here rather than by ggml's `ggml_backend_load_all`, for one reason
//! measured on an H200 host's Xeon (a KVM guest): CPUID reports AMX, the kernel grants it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)` returns 0) and a forked probe ran `ldtilecfg`,
//! `tilezero` and `tilerelease` cleanly — yet ggml's AMX variant (`sapphirerapids`) died
//! with "Illegal instruction" repacking the first Q4_1 tensor, taking the host with it.
//! So AMX variants (llama.cpp's AMX path only speeds up prefill of Q4_0/Q4_1/Q8_0) are
//! candidates only with `MLXENGINE_GGML_AMX=1`; elsewhere the best AVX-512 variant serves.
//! `MLXENGINE_GGML_CPU_VARIANT` forces one variant (for benchmarks and diagnosis).
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
    /// The variant llama.cpp chose (`haswell`, `zen4`, …).
    pub variant: String,
    /// Variants available there.
    pub available: Vec<String>,
    /// Chosen by `MLXENGINE_GGML_CPU_VARIANT` rather than by score.
    pub forced: bool,
}

impl CpuBackend {
    /// One line for probes and `mlxengine device`.
    pub fn describe(&self) -> String {
        if self.forced {
            return format!(
                "llama.cpp CPU backend `{}` (forced by MLXENGINE_GGML_CPU_VARIANT)",
                self.variant
            );
        }
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

/// Variants whose kernels use AMX tiles (llama.cpp's `GGML_CPU_ALL_VARIANTS` table).
const AMX_VARIANTS: &[&str] = &["sapphirerapids"];

/// The score a variant module gives this CPU (0: it cannot run here), or an error.
fn score(path: &Path) -> Result<i32, String> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: bad path", path.display()))?;
    // SAFETY: the module is one of llama.cpp's CPU backends; opening it registers nothing
    // (that is ggml_backend_load's job), and its score function only reads CPUID.
    unsafe {
        let h = libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if h.is_null() {
            let e = libc::dlerror();
            let msg = if e.is_null() {
                "dlopen failed".to_owned()
            } else {
                CStr::from_ptr(e).to_string_lossy().into_owned()
            };
            return Err(format!("{}: {msg}", path.display()));
        }
        let f = libc::dlsym(h, c"ggml_backend_score".as_ptr());
        let s = if f.is_null() {
            0
        } else {
            let f: extern "C" fn() -> i32 = std::mem::transmute(f);
            f()
        };
        libc::dlclose(h);
        Ok(s)
    }
}

/// Choose and register the best CPU backend variant (once per process; the caller keeps
/// the result).
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
    let path = |tag: &str| dir.join(format!("{PREFIX}{tag}{SUFFIX}"));
    let forced = std::env::var("MLXENGINE_GGML_CPU_VARIANT").ok();
    let amx = std::env::var_os("MLXENGINE_GGML_AMX").is_some_and(|v| v == "1");
    let mut best: Option<(i32, &str)> = None;
    let mut unloadable = Vec::new();
    for tag in &available {
        let is_forced = forced.as_deref() == Some(tag.as_str());
        if forced.is_some() && !is_forced
            || (!amx && !is_forced && AMX_VARIANTS.contains(&tag.as_str()))
        {
            continue;
        }
        let s = score(&path(tag)).unwrap_or_else(|e| {
            unloadable.push(e);
            0
        });
        if s > 0 && best.is_none_or(|(b, _)| s > b) {
            best = Some((s, tag));
        }
    }
    let Some((_, tag)) = best else {
        return Err(match forced {
            Some(f) if !available.contains(&f) => format!(
                "MLXENGINE_GGML_CPU_VARIANT={f}: no such variant in {} ({})",
                dir.display(),
                available.join(", ")
            ),
            Some(f) => format!("MLXENGINE_GGML_CPU_VARIANT={f}: it does not run on this CPU"),
            _ => format!(
                "none of the llama.cpp CPU backends in {} runs on this CPU (variants: {}{}){}",
                dir.display(),
                available.join(", "),
                if amx {
                    ""
                } else {
                    "; AMX variants need MLXENGINE_GGML_AMX=1"
                },
                if unloadable.is_empty() {
                    String::new()
                } else {
                    format!("; could not open: {}", unloadable.join("; "))
                }
            ),
        });
    };
    register(&path(tag))?;
    // GPU builds: their backend modules sit beside the CPU ones.
    for gpu in ["cuda", "hip", "vulkan", "metal"] {
        let p = dir.join(format!("libggml-{gpu}{SUFFIX}"));
        if p.is_file() {
            register(&p)?;
        }
    }
    Ok(CpuBackend {
        variant: tag.to_owned(),
        available,
        forced: forced.is_some(),
    })
}

/// Register a backend module with ggml (it stays loaded for the process).
fn register(path: &Path) -> Result<(), String> {
    let file = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{}: bad path", path.display()))?;
    // SAFETY: a llama.cpp backend module, loaded and registered by ggml itself.
    let reg = unsafe { llama_cpp_sys_2::ggml_backend_load(file.as_ptr()) };
    if reg.is_null() {
        return Err(format!("llama.cpp could not load {}", path.display()));
    }
    Ok(())
}
