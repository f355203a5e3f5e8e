#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| mlxengine_fuzz::registry(data));
