#![no_main]
//! Feeds arbitrary headers and descriptor lists to the virtio-pager request
//! parser. Input format: see `devices::pager::wire::fuzz_parse`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::pager::wire::fuzz_parse(data);
});
