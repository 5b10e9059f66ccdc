#![no_main]
//! A hostile kernel file through `vmm run --kernel`'s loader: the checks,
//! linux-loader's load into a 16 MiB guest and its PVH note lookup. What
//! is checked on success: `vmm::boot::loader::fuzz_load`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = vmm::boot::loader::fuzz_load(data);
});
