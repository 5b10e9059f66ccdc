#![no_main]
//! Feeds arbitrary descriptor tables and headers through what the device
//! runs for one available chain: virtio-queue's walk, `collect_chain`, then
//! the virtio-pager request parser. Input format and the invariants checked:
//! see `devices::pager::wire::fuzz_parse`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = devices::pager::wire::fuzz_parse(data);
});
