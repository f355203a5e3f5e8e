//! Facts about this machine that plugins need to decide whether and how to run.

use abi_stable::std_types::RString;
use plugin_api::{Accelerator, DeviceInfo};

/// Measure this machine: cores, SIMD features, RAM (cgroup limit respected), GPUs.
pub fn probe() -> DeviceInfo {
    let (total, available) = memory();
    DeviceInfo {
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        cpu_cores: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        cpu_features: cpu_features().into_iter().map(RString::from).collect(),
        total_memory: total,
        available_memory: available,
        physical_cores: physical_cores() as u32,
        accelerators: accelerators().into(),
        options: options().into(),
    }
}

/// `DeviceInfo.options`: the folder plugins may keep derived files in (`cache_dir`), when
/// its path is UTF-8 (JSON cannot carry another; plugins then do without).
fn options() -> String {
    let dir = crate::paths::cache_dir().join("derived");
    match dir.to_str() {
        Some(d) => serde_json::json!({ "cache_dir": d }).to_string(),
        None => String::new(),
    }
}

/// NVIDIA GPUs, as `nvidia-smi` lists them (CUDA ordinal order); none where it is absent.
pub fn accelerators() -> Vec<Accelerator> {
    let Ok(out) = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total,memory.free,compute_cap",
            "--format=csv,noheader,nounits",
        ])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let [index, name, total, free, cc] = f[..] else {
                return None;
            };
            let mib = |v: &str| v.parse::<u64>().map_or(0, |m| m << 20);
            Some(Accelerator {
                index: index.parse().ok()?,
                api: "cuda".into(),
                name: name.into(),
                total_memory: mib(total),
                free_memory: mib(free),
                compute_capability: cc.into(),
            })
        })
        .collect()
}

fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! detect {
            ($($name:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($name) { f.push($name); }
            )*};
        }
        detect!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        f.push("neon");
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            f.push("dotprod");
        }
    }
    f
}

/// (total, available) bytes: `/proc/meminfo`, capped by a cgroup v2/v1 memory limit.
fn memory() -> (u64, u64) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    let (mut total, mut avail) = (field("MemTotal:"), field("MemAvailable:"));
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let limit = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"));
    if let Some(limit) = limit.filter(|l| *l > 0 && (total == 0 || *l < total)) {
        let used = read("/sys/fs/cgroup/memory.current")
            .or_else(|| read("/sys/fs/cgroup/memory/memory.usage_in_bytes"))
            .unwrap_or(0);
        total = limit;
        avail = avail.min(limit.saturating_sub(used));
    }
    (total, avail)
}

/// Resident memory of this process now, in bytes (Linux; 0 elsewhere).
pub fn rss_now() -> u64 {
    status_kb("VmRSS:")
}

/// Peak resident memory of this process so far, in bytes (Linux; 0 elsewhere).
pub fn rss_peak() -> u64 {
    status_kb("VmHWM:")
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .map(|v| v.trim().trim_end_matches("kB").trim().to_owned())
            })
        })
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Physical CPU cores (distinct `physical id`/`core id` pairs of `/proc/cpuinfo`), else
/// the logical count.
pub fn physical_cores() -> usize {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut cores = std::collections::HashSet::new();
    let mut phys = "";
    for line in cpuinfo.lines() {
        if let Some(v) = line.strip_prefix("physical id") {
            phys = v.trim_start_matches([' ', '\t', ':']);
        } else if let Some(v) = line.strip_prefix("core id") {
            cores.insert(format!("{phys}/{}", v.trim_start_matches([' ', '\t', ':'])));
        }
    }
    if cores.is_empty() {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        cores.len()
    }
}

/// The CPU's model name (`/proc/cpuinfo`), if known.
pub fn cpu_model() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
}

/// BLAS libraries mapped into this process (after plugins are loaded: what MLX's CPU
/// matmuls will use), from `/proc/self/maps`, symlinks resolved.
pub fn blas_libraries() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains("blas") || p.contains("Accelerate"))
        .map(|p| {
            std::fs::canonicalize(p)
                .map(|c| c.display().to_string())
                .unwrap_or_else(|_| p.to_owned())
        })
        .collect();
    libs.sort();
    libs.dedup();
    libs
}
