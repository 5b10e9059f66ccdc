#![no_main]
//! A hostile driver against the virtio-pager device behind its virtio-mmio
//! transport: register reads and writes of any offset, width and value,
//! any guest memory (descriptor tables, rings, headers), kicks, and pager
//! events. Input format and the checks: see `devices::fuzzing`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::fuzzing::fuzz_mmio(data);
});
