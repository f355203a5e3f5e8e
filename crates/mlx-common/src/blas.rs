//! OpenBLAS's thread count, which MLX's CPU matmuls inherit.
//!
//! MLX runs each CPU stream's kernels on that stream's thread; only its matmuls (through
//! BLAS) use more cores. A plugin that spreads work over several streams at once wants
//! BLAS single-threaded meanwhile, else every core is asked to run two threads.

use std::{
    ffi::{c_int, c_void},
    sync::{Mutex, OnceLock},
};

type SetThreads = unsafe extern "C" fn(c_int);
type GetThreads = unsafe extern "C" fn() -> c_int;

/// OpenBLAS's setter and getter, when the process has OpenBLAS loaded.
fn openblas() -> Option<(SetThreads, GetThreads)> {
    static FNS: OnceLock<Option<(SetThreads, GetThreads)>> = OnceLock::new();
    *FNS.get_or_init(|| {
        // SAFETY: RTLD_NOLOAD only looks up a library already mapped into the process; the
        // symbols are OpenBLAS's documented `void (int)` and `int (void)` functions.
        unsafe {
            let lib = libc::dlopen(
                c"libopenblas.so.0".as_ptr(),
                libc::RTLD_LAZY | libc::RTLD_NOLOAD,
            );
            if lib.is_null() {
                return None;
            }
            let set = libc::dlsym(lib, c"openblas_set_num_threads".as_ptr());
            let get = libc::dlsym(lib, c"openblas_get_num_threads".as_ptr());
            if set.is_null() || get.is_null() {
                return None;
            }
            Some((
                std::mem::transmute::<*mut c_void, SetThreads>(set),
                std::mem::transmute::<*mut c_void, GetThreads>(get),
            ))
        }
    })
}

/// (guards alive, thread count to restore).
static HELD: Mutex<(usize, c_int)> = Mutex::new((0, 0));

/// Keeps BLAS single-threaded while alive; the count from before the first of several
/// overlapping guards comes back when the last one drops. A no-op without OpenBLAS.
pub struct SingleThreadedBlas(());

impl SingleThreadedBlas {
    /// Make BLAS single-threaded until the guard drops.
    pub fn new() -> Self {
        if let Some((set, get)) = openblas() {
            let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
            if held.0 == 0 {
                // SAFETY: see `openblas`.
                held.1 = unsafe { get() };
                unsafe { set(1) };
            }
            held.0 += 1;
        }
        Self(())
    }
}

impl Default for SingleThreadedBlas {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SingleThreadedBlas {
    fn drop(&mut self) {
        if let Some((set, _)) = openblas() {
            let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
            held.0 -= 1;
            if held.0 == 0 {
                // SAFETY: see `openblas`.
                unsafe { set(held.1) };
            }
        }
    }
}

/// BLAS's current thread count (`None` without OpenBLAS).
pub fn threads() -> Option<usize> {
    // SAFETY: see `openblas`.
    openblas().map(|(_, get)| unsafe { get() } as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the process has OpenBLAS mapped (MLX's CPU BLAS on Linux, see setup.sh),
    /// guards make it single-threaded and the last one to drop restores the count.
    #[test]
    fn guards_nest_and_restore() {
        // make sure MLX (and with it BLAS) is loaded
        let _ = mlx_rs::Array::from_f32(1.0).eval();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        if !maps.contains("libopenblas") {
            eprintln!("OpenBLAS not loaded here: nothing to check");
            return;
        }
        let before = threads().expect("OpenBLAS is mapped but its functions were not found");
        let a = SingleThreadedBlas::new();
        assert_eq!(threads(), Some(1));
        let b = SingleThreadedBlas::new();
        drop(a);
        assert_eq!(threads(), Some(1), "one guard still alive");
        drop(b);
        assert_eq!(threads(), Some(before));
    }
}
