//! Knobs shared by all backends, with defaults sane for a VMM.

use crate::thread_hook::ThreadHook;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Opening a remote pager or NBD server: the connect and the whole
    /// handshake (NBD negotiation, TLS, the external pager's hello) share
    /// this one deadline; it is not a timeout per read (deadline.rs).
    pub connect_timeout: Duration,
    /// One request to a remote backend, from send to complete reply. A peer
    /// that misses it is declared dead: its connection is dropped and every
    /// request on it fails, so nothing waits forever.
    pub request_timeout: Duration,
    /// Largest read-ahead window the file backend grows to.
    pub max_readahead: u64,
    /// Size of a `zero`/`anon` object whose URI gives none.
    pub anon_size: u64,
    /// Where anonymous objects keep their (unlinked) swap files.
    pub swap_dir: PathBuf,
    /// Requests in flight per remote connection.
    pub max_in_flight: usize,
    /// Runs first on each remote connection's reader thread, before it
    /// reads a byte from the peer (the VMM confines the thread there). A
    /// backend connects once, when it is opened, and never again.
    pub reader_hook: Option<ThreadHook>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_readahead: 1 << 20,
            anon_size: 1 << 30,
            swap_dir: std::env::temp_dir(),
            max_in_flight: 64,
            reader_hook: None,
        }
    }
}
