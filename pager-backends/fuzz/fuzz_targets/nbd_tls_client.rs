#![no_main]
//! What a hostile NBD server sends inside TLS: option replies, then
//! replies to reads, a write and a flush, in records it cuts where it
//! likes, with KeyUpdates between them, read by the client's own TLS
//! stream and reader thread. Input format and checks:
//! pager-backends/fuzz/harness/nbd_tls_client.rs.

// Shared with the corpus replay test, which reads what this leaves unused.
#[allow(dead_code)]
#[path = "../harness/nbd_tls_client.rs"]
mod harness;

use std::sync::OnceLock;
use std::time::Duration;

static FIXTURE: OnceLock<harness::Fixture> = OnceLock::new();

/// Short, so inputs that leave the client waiting stay cheap (they set the
/// pace: a well-formed session takes 3-4 ms), yet far above what a valid
/// handshake or reply needs.
const PATIENCE: harness::Patience = harness::Patience {
    handshake: Duration::from_millis(200),
    request: Duration::from_millis(25),
};

/// Removes the certificate directory when libFuzzer exits (a static is
/// never dropped).
extern "C" fn remove_certs() {
    if let Some(f) = FIXTURE.get() {
        let _ = std::fs::remove_dir_all(f.certs_dir());
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let fx = FIXTURE.get_or_init(|| {
        // SAFETY: registering a function with no preconditions.
        unsafe { libc::atexit(remove_certs) };
        harness::Fixture::new()
    });
    let _ = harness::run(fx, data, PATIENCE);
});
