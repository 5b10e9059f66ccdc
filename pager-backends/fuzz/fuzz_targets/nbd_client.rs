#![no_main]
//! What a hostile NBD server sends: the handshake's greeting and option
//! replies, then simple replies to waiting reads, a write and a flush, read
//! by the NBD client's own code. Input format:
//! `pager_backends::nbd::fuzz_client`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pager_backends::nbd::fuzz_client(data);
});
