//! Test fixture: a shared library with no MLXEngine root module.

/// Something to export, so the library is not empty.
#[no_mangle]
pub extern "C" fn not_a_plugin_answer() -> i32 {
    42
}
