//! Fuzz entry point for what a hostile external pager sends the kernel side
//! (cargo-fuzz target `unix_client` in pager-backends/fuzz and the corpus
//! replay test): the hello reply, then replies and unprompted messages read
//! by the client's own reader loop, on a real socket, in one thread.
//!
//! Input: the bytes the pager sends, in order, then end of stream. Nine
//! requests are out when the reader starts, in this order (request `k` has
//! id `(k + 1) << 32 | k`): one of each kind the client sends (extent, init
//! of kernel 1, a data request offering 4 pages in 2 buffers, unlock, data
//! write, sync, describe, terminate), then a 2-page data request whose
//! caller already gave up waiting (abandoned: its late answer is read and
//! dropped). Unprompted messages reach a control handle registered for
//! kernel 1.

use super::{Reply, Shared, hello, reader_loop};
use crate::error::PagerError;
use crate::inflight::{Inflight, Ticket};
use crate::pager::KernelControl;
use crate::types::{Access, ObjectOffset, PAGE_SIZE};
use crate::unix::proto as p;
use std::collections::HashMap;
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use vm_memory::VolatileSlice;

/// What one input did, for the replay test to hold named seeds to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnixOutcome {
    /// The hello exchange succeeded.
    pub hello: bool,
    /// Why it failed, if it did.
    pub refused: String,
    /// Requests answered with a well-formed reply (T_ERROR included).
    pub answered: usize,
    /// Of those, T_ERROR replies.
    pub errors: usize,
    /// Unprompted messages that reached the control handle.
    pub unprompted: u64,
    /// Why the reader stopped (it always does: the input ends).
    pub stopped: String,
}

/// Counts the pager's unprompted calls.
#[derive(Default)]
struct Counter(AtomicU64);

impl KernelControl for Counter {
    fn lock_request(
        &self,
        _: ObjectOffset,
        _: u64,
        _: Access,
        _: bool,
        _: bool,
    ) -> crate::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn offer(&self, _: ObjectOffset, data: &[u8], _: Access) -> crate::Result<()> {
        assert!(!data.is_empty() && (data.len() as u64).is_multiple_of(PAGE_SIZE));
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn set_cache(&self, _: bool) -> crate::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn destroy(&self, reason: &str) -> crate::Result<()> {
        assert!(reason.len() <= p::MAX_TEXT);
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The requests out: (kind, bytes of buffer offered, abandoned by its
/// caller).
const REQUESTS: [(u16, u64, bool); 9] = [
    (p::T_EXTENT, 0, false),
    (p::T_INIT, 0, false),
    (p::T_DATA_REQUEST, 4 * PAGE_SIZE, false),
    (p::T_DATA_UNLOCK, 0, false),
    (p::T_DATA_WRITE, 0, false),
    (p::T_SYNC, 0, false),
    (p::T_DESCRIBE, 0, false),
    (p::T_TERMINATE, 0, false),
    (p::T_DATA_REQUEST, 2 * PAGE_SIZE, true),
];

pub fn fuzz_client(data: &[u8]) -> UnixOutcome {
    let mut out = UnixOutcome::default();
    let Ok((ours, mut theirs)) = UnixStream::pair() else {
        return out;
    };
    std::thread::scope(|s| {
        // The hostile pager: everything at once, then end of stream. What
        // the client writes (its hello) waits unread in the socket buffer.
        s.spawn(move || {
            let _ = theirs.write_all(data);
            let _ = theirs.shutdown(Shutdown::Write);
            // Keeps its end open until the client is done.
            let _ = std::io::copy(&mut theirs, &mut std::io::sink());
        });
        run(&ours, &mut out);
        let _ = ours.shutdown(Shutdown::Both);
    });
    out
}

fn run(ours: &UnixStream, out: &mut UnixOutcome) {
    let mut sock = ours;
    let (peer_max, version) = match hello(&mut sock, Path::new("<fuzz>")) {
        Ok(m) => m,
        Err(e) => {
            out.refused = e.to_string();
            return;
        }
    };
    out.hello = true;
    assert!(peer_max >= p::MIN_MAX_PAYLOAD);
    let counter = Arc::new(Counter::default());
    let control: Arc<dyn KernelControl> = counter.clone();
    let shared = Arc::new(Shared {
        inflight: Inflight::new(REQUESTS.len()),
        controls: RwLock::new(HashMap::from([(1, control)])),
        peer_max,
        version,
    });
    let mut pages = vec![0u8; 4 * PAGE_SIZE as usize];
    let (a, b) = pages.split_at_mut(PAGE_SIZE as usize);
    let bufs = [VolatileSlice::from(a), VolatileSlice::from(b)];
    let wait = Duration::from_secs(1);
    let mut tickets: Vec<(u16, u64, Ticket)> = Vec::new();
    for &(kind, cap, abandon) in &REQUESTS {
        let into = (cap > 0).then_some(&bufs[..]);
        let Ok(t) = shared.inflight.start(kind, cap, 0, into, wait) else {
            panic!("a fresh slot is free");
        };
        if abandon {
            // Its caller timed out; the slot waits for the late answer.
            let r = shared.inflight.wait_or_abandon(t, Duration::ZERO, 1, || {});
            assert!(matches!(r, Err(PagerError::Timeout(_))));
        } else {
            tickets.push((kind, cap, t));
        }
    }
    let Ok(reader) = ours.try_clone() else {
        return;
    };
    // Returns when the input ends or breaks the protocol; every request
    // not answered by then has failed.
    reader_loop(reader, shared.clone());
    out.stopped = shared.inflight.dead().unwrap_or_default();
    assert!(
        !out.stopped.is_empty(),
        "the reader stops only on a dead connection"
    );
    for (kind, cap, t) in tickets {
        // Done already: either answered or failed by the reader's exit.
        match shared.inflight.wait_or_abandon(t, Duration::ZERO, 0, || {}) {
            Ok(reply) => {
                out.answered += 1;
                check(kind, cap, reply, out);
            }
            Err(PagerError::Timeout(_)) => panic!("request {kind:#x} left waiting"),
            Err(_) => {}
        }
    }
    out.unprompted = counter.0.load(Ordering::Relaxed);
}

/// What the client accepted must be what its request can take.
fn check(kind: u16, cap: u64, reply: Reply, out: &mut UnixOutcome) {
    match reply {
        Reply::Provided { bytes, .. } => {
            assert_eq!(kind, p::T_DATA_REQUEST);
            assert!(bytes > 0 && bytes <= cap && bytes.is_multiple_of(PAGE_SIZE));
        }
        Reply::Error(payload) => {
            out.errors += 1;
            // Decoded in the context of the request it answers, as the
            // client's methods do.
            let _ = p::decode_error(&payload, ObjectOffset(0), cap, 1 << 20, 1);
        }
        Reply::Describe(text) => assert!(text.len() <= p::MAX_TEXT),
        Reply::Info(_) | Reply::Ok | Reply::Unavailable { .. } | Reply::Unlock(_) => {}
        Reply::Extent(size) => assert!(size <= crate::MAX_OBJECT_SIZE),
    }
}
