//! Raw bindings to mlx-c 0.7.0, built against MLX from the pinned PyPI wheel.
//!
//! Drop-in replacement for the crates.io `mlx-sys` 0.7.0 (patched in by the workspace), so
//! that `mlx-rs` builds on Linux (CPU and CUDA wheels) as well as macOS. See `build.rs`.
#![allow(non_upper_case_globals)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// mlx-rs 0.33 seeds its default RNG with `mach_approximate_time()`, a macOS libSystem
/// symbol. Off Apple platforms we provide it (nanoseconds since the Unix epoch).
#[cfg(not(target_vendor = "apple"))]
#[no_mangle]
pub extern "C" fn mach_approximate_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
