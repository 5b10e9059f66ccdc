#![no_main]
//! What a hostile external pager sends the kernel side: the hello reply,
//! replies to waiting requests and unprompted messages, read by the unix
//! client's own code. Input format: `pager_backends::unix::fuzz_client`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pager_backends::unix::fuzz_client(data);
});
