//! Fuzz entry point for what a hostile NBD server sends (cargo-fuzz target
//! `nbd_client` in pager-backends/fuzz and the corpus replay test): the
//! handshake (greeting, option replies, the export-name fallback), then
//! simple replies read by the client's own reader loop, on a real socket,
//! in one thread.
//!
//! Input: the bytes the server sends, in order, then end of stream. After
//! the handshake, five requests are out, in this order (request `k` has
//! cookie `(k + 1) << 32 | k`): a 4-page read into two buffers, a 1-page
//! read landing 1 page into them, a write, a flush, and a 2-page read whose
//! caller already gave up waiting (abandoned: its late answer is read and
//! dropped).

use super::reader_loop;
use crate::check::check_object_size;
use crate::error::PagerError;
use crate::inflight::{Inflight, Ticket};
use crate::nbd::proto;
use crate::nbd::transport::{Stream, Transport};
use crate::types::PAGE_SIZE;
use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;
use vm_memory::VolatileSlice;

/// What one input did, for the replay test to hold named seeds to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NbdOutcome {
    /// The handshake's result: the export's size and transmission flags.
    pub export: Option<(u64, u16)>,
    /// Why the handshake failed, if it did.
    pub refused: String,
    /// Requests the server completed successfully.
    pub completed: usize,
    /// Requests it answered with an error.
    pub errors: usize,
    /// Why the reader stopped (it always does: the input ends).
    pub stopped: String,
}

/// The requests out: (command, length, where in the buffers the data
/// goes, abandoned by its caller).
const REQUESTS: [(u16, u64, u64, bool); 5] = [
    (proto::CMD_READ, 4 * PAGE_SIZE, 0, false),
    (proto::CMD_READ, PAGE_SIZE, PAGE_SIZE, false),
    (proto::CMD_WRITE, PAGE_SIZE, 0, false),
    (proto::CMD_FLUSH, 0, 0, false),
    (proto::CMD_READ, 2 * PAGE_SIZE, 0, true),
];

pub fn fuzz_client(data: &[u8]) -> NbdOutcome {
    let mut out = NbdOutcome::default();
    let Ok((ours, mut theirs)) = UnixStream::pair() else {
        return out;
    };
    std::thread::scope(|s| {
        // The hostile server: everything at once, then end of stream. What
        // the client writes (its options) is drained and dropped.
        s.spawn(move || {
            let _ = theirs.write_all(data);
            let _ = theirs.shutdown(Shutdown::Write);
            let _ = std::io::copy(&mut theirs, &mut std::io::sink());
        });
        run(&ours, &mut out);
        let _ = ours.shutdown(Shutdown::Both);
    });
    out
}

fn run(ours: &UnixStream, out: &mut NbdOutcome) {
    let Ok(mut stream) = ours.try_clone().map(Stream::Unix) else {
        return;
    };
    let export = match proto::handshake(&mut stream, "fuzz")
        .and_then(|e| check_object_size(e.size, "nbd server").map(|_| e))
    {
        Ok(e) => e,
        Err(e) => {
            out.refused = e.to_string();
            return;
        }
    };
    out.export = Some((export.size, export.flags));
    let inflight = Arc::new(Inflight::new(REQUESTS.len()));
    let mut pages = vec![0u8; 4 * PAGE_SIZE as usize];
    let (a, b) = pages.split_at_mut(PAGE_SIZE as usize);
    let bufs = [VolatileSlice::from(a), VolatileSlice::from(b)];
    let wait = Duration::from_secs(1);
    let mut tickets: Vec<Ticket> = Vec::new();
    for &(cmd, len, skip, abandon) in &REQUESTS {
        let into = (cmd == proto::CMD_READ).then_some(&bufs[..]);
        let Ok(t) = inflight.start(cmd, len, skip, into, wait) else {
            panic!("a fresh slot is free");
        };
        if abandon {
            // Its caller timed out; the slot waits for the late answer.
            let r = inflight.wait_or_abandon(t, Duration::ZERO, 1, || {});
            assert!(matches!(r, Err(PagerError::Timeout(_))));
        } else {
            tickets.push(t);
        }
    }
    // Returns when the input ends or breaks the protocol; every request
    // not answered by then has failed.
    reader_loop(Transport::Plain(Arc::new(stream)), inflight.clone());
    out.stopped = inflight.dead().unwrap_or_default();
    assert!(
        !out.stopped.is_empty(),
        "the reader stops only on a dead connection"
    );
    for t in tickets {
        // Done already: answered, or failed when the reader stopped.
        match inflight.wait_or_abandon(t, Duration::ZERO, 0, || {}) {
            Ok(()) => out.completed += 1,
            Err(PagerError::Timeout(_)) => panic!("a request was left waiting"),
            Err(PagerError::Dead(_)) => {}
            Err(_) => out.errors += 1,
        }
    }
}
