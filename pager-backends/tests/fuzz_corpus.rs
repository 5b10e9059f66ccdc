//! Every checked-in fuzz corpus and crash input of pager-backends/fuzz goes
//! through its target's entry point as an ordinary test, so CI replays them
//! on stable without cargo-fuzz. A panic, a hang or a request left waiting
//! fails here; named seeds must also do what their name says.

// The nbd_tls_client target's harness lives with the target (it needs a
// TLS server and a certificate, which the library does not have).
#[path = "../fuzz/harness/nbd_tls_client.rs"]
mod nbd_tls_client;

use nbd_tls_client::{Fixture, Patience, TlsOutcome};
use pager_backends::PagerError;
use pager_backends::nbd::{NbdOutcome, fuzz_client as nbd};
use pager_backends::unix::{UnixOutcome, fuzz_client as unix};
use std::fs;
use std::path::Path;
use std::time::Duration;

/// A named seed and what its outcome must satisfy.
type Seed<O> = (&'static str, fn(&O) -> bool);

/// Runs every file of `fuzz/corpus/<target>` through `run`, holding the
/// named seeds to `seeds`; other files (found by the fuzzer, crash inputs)
/// must only run cleanly.
fn replay<O: std::fmt::Debug>(target: &str, run: impl Fn(&[u8]) -> O, seeds: &[Seed<O>]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seen = Vec::new();
    for e in fs::read_dir(&dir).expect("corpus directory").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let out = run(&fs::read(e.path()).expect("read corpus file"));
        match seeds.iter().find(|(n, _)| *n == name) {
            Some((_, ok)) => assert!(ok(&out), "{target}/{name}: {out:?}"),
            None => assert!(
                fuzzer_named(&name) || name.starts_with("crash-"),
                "{target}/{name}: a named seed must be listed with what it must do"
            ),
        }
        seen.push(name);
    }
    for (name, _) in seeds {
        assert!(
            seen.iter().any(|s| s == name),
            "{target}: seed {name} is missing"
        );
    }
}

/// cargo-fuzz names what it adds by the input's SHA-1.
fn fuzzer_named(name: &str) -> bool {
    name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn stopped(o: &UnixOutcome, why: &str) -> bool {
    o.hello && o.answered == 0 && o.stopped.contains(why)
}

#[test]
fn unix_client_corpus() {
    let seeds: &[Seed<UnixOutcome>] = &[
        ("hello_only", |o| {
            o.hello && o.answered == 0 && o.stopped.contains("closed the connection")
        }),
        ("hello_refused", |o| {
            !o.hello && o.refused.contains("refused the connection: go away")
        }),
        ("hello_bad_magic", |o| o.refused.contains("bad magic")),
        ("hello_low_limit", |o| {
            o.refused.contains("below the minimum")
        }),
        // One well-formed reply for each of the eight waiting requests.
        ("all_answered", |o| o.answered == 8 && o.errors == 0),
        ("all_errors", |o| o.answered == 8 && o.errors == 8),
        // Lock, offer, cache and destroy for kernel 1 reach its control;
        // a lock request for an unknown kernel is dropped.
        ("unprompted", |o| o.unprompted == 4 && o.answered == 1),
        ("provided_too_much", |o| {
            stopped(o, "for 16384 bytes of buffer")
        }),
        ("provided_short", |o| stopped(o, "in a 4112-byte message")),
        ("unknown_id", |o| stopped(o, "unknown or finished request")),
        ("answered_twice", |o| {
            o.answered == 1 && o.stopped.contains("unknown or finished request")
        }),
        ("wrong_reply_type", |o| {
            stopped(o, "does not answer a request")
        }),
        ("reserved_flags", |o| stopped(o, "reserved flags")),
        ("oversized", |o| {
            stopped(o, "exceeds the 16777216-byte limit")
        }),
        ("unprompted_kernel_id", |o| stopped(o, "kernel-side id")),
        ("bad_utf8", |o| stopped(o, "not UTF-8")),
        // The abandoned request's late data is read and dropped; the
        // connection goes on to answer the extent request.
        ("late_answer_dropped", |o| {
            o.answered == 1 && o.stopped.contains("closed the connection")
        }),
    ];
    replay("unix_client", unix, seeds);
}

fn refused(o: &NbdOutcome, why: &str) -> bool {
    o.export.is_none() && o.refused.contains(why)
}

#[test]
fn nbd_client_corpus() {
    let seeds: &[Seed<NbdOutcome>] = &[
        ("handshake_only", |o| {
            o.export == Some((1 << 20, 5)) && o.completed == 0
        }),
        ("all_answered", |o| o.completed == 4 && o.errors == 0),
        ("all_errors", |o| o.completed == 0 && o.errors == 4),
        ("out_of_order", |o| o.completed == 4),
        ("short_read", |o| o.stopped.contains("mid-reply")),
        ("unknown_cookie", |o| {
            o.stopped.contains("unknown or finished")
        }),
        ("answered_twice", |o| {
            o.completed == 1 && o.stopped.contains("unknown or finished")
        }),
        ("bad_reply_magic", |o| o.stopped.contains("bad reply magic")),
        ("not_nbd", |o| refused(o, "not an NBD server")),
        ("oldstyle", |o| refused(o, "oldstyle")),
        ("not_fixed_newstyle", |o| refused(o, "fixed newstyle")),
        ("export_unknown", |o| {
            refused(o, "export not found: no such export")
        }),
        // A server without NBD_OPT_GO: the export-name option instead.
        ("export_name_fallback", |o| o.export == Some((1 << 20, 1))),
        ("export_name_fallback_zeroes", |o| {
            o.export == Some((1 << 20, 1))
        }),
        ("ack_without_export", |o| {
            refused(o, "without NBD_INFO_EXPORT")
        }),
        ("reply_to_other_option", |o| refused(o, "reply to option 1")),
        ("huge_option_reply", |o| refused(o, "is too large")),
        ("malformed_info_export", |o| {
            refused(o, "malformed NBD_INFO_EXPORT")
        }),
        ("short_info", |o| refused(o, "short NBD_REP_INFO")),
        ("huge_export", |o| refused(o, "a memory object has at most")),
        ("unknown_info_ignored", |o| o.export == Some((4096, 2))),
        // NBD_REP_INFO after NBD_REP_INFO, never an ACK: given up, not
        // waited on for as long as the server keeps talking.
        ("endless_info", |o| {
            refused(o, "more than 64 replies to NBD_OPT_GO")
        }),
        // The abandoned read's late data is read and dropped; the flush's
        // answer after it still arrives.
        ("late_answer_dropped", |o| {
            o.completed == 1 && o.stopped.contains("peer closed")
        }),
        ("late_answer_cut_short", |o| o.stopped.contains("mid-reply")),
    ];
    replay("nbd_client", nbd, seeds);
}

/// A page of `fill` for each byte given.
fn pages(fills: &[u8]) -> Vec<u8> {
    fills.iter().flat_map(|&f| [f; 4096]).collect()
}

/// All five calls answered, with the data the valid seeds send.
fn served(o: &TlsOutcome) -> bool {
    o.export == Some((1 << 20, false))
        && o.calls.iter().all(Result::is_ok)
        && o.reads
            == [
                pages(&[0x11, 0x12]),
                pages(&[0x33]),
                pages(&[0x41, 0x42, 0x43, 0x44]),
            ]
}

/// The first `ok` calls succeeded, and every later one found the
/// connection dead.
fn died_after(o: &TlsOutcome, ok: usize, why: &str) -> bool {
    o.calls.len() == 5
        && o.calls[..ok].iter().all(Result::is_ok)
        && o.calls[ok..]
            .iter()
            .all(|r| matches!(r, Err(PagerError::Dead(_))))
        && o.described.contains(why)
}

fn tls_refused(o: &TlsOutcome, why: &str) -> bool {
    o.export.is_none()
        && o.refused
            .as_ref()
            .is_some_and(|e| e.to_string().contains(why))
}

/// The first read timed out and was abandoned, its buffers untouched.
fn abandoned_first(o: &TlsOutcome) -> bool {
    matches!(o.calls.first(), Some(Err(PagerError::Timeout(_))))
        && o.reads
            .first()
            .is_some_and(|r| r.iter().all(|&b| b == 0xee))
}

#[test]
fn nbd_tls_client_corpus() {
    // Long enough that a valid reply is never late on a loaded machine;
    // the seeds that time out a request on purpose wait this long.
    let patience = Patience {
        handshake: Duration::from_secs(30),
        request: Duration::from_secs(3),
    };
    let fx = Fixture::new();
    let seeds: &[Seed<TlsOutcome>] = &[
        ("valid_session", served),
        ("valid_session_tls12", served),
        // Headers and data cut into records of 1, 3, 7, ... bytes, with
        // KeyUpdates between them (TLS 1.3).
        ("valid_session_odd_records", served),
        ("valid_session_odd_records_tls12", served),
        ("key_updates_between_replies", served),
        // NBD_INFO_BLOCK_SIZE of one page: every call is page requests.
        ("block_size_splits_requests", served),
        // A page and a half: a read ends there and is zeroes after; the
        // read at page 2 and the 4-page read are past the end and send
        // nothing.
        ("export_ends_mid_page", |o| {
            o.export == Some((6144, false))
                && matches!(
                    o.calls[..],
                    [
                        Ok(()),
                        Ok(()),
                        Err(PagerError::PastEnd { .. }),
                        Ok(()),
                        Err(PagerError::BadRange { .. })
                    ]
                )
                && o.reads[0] == [vec![0x11; 6144], vec![0; 2048]].concat()
        }),
        ("all_errors", |o| {
            o.calls.len() == 5 && o.calls.iter().all(|r| matches!(r, Err(PagerError::Io(_))))
        }),
        ("option_reply_cut_short", |o| {
            tls_refused(o, "closed the connection during the handshake")
        }),
        ("option_reply_cut_short_no_close_notify", |o| {
            tls_refused(o, "closed the connection during the handshake")
        }),
        ("not_an_option_reply", |o| {
            tls_refused(o, "bad option reply magic")
        }),
        ("unknown_cookie", |o| {
            died_after(o, 0, "unknown or finished request")
        }),
        ("read_reply_cut_short", |o| died_after(o, 0, "mid-reply")),
        ("read_reply_cut_short_no_close_notify", |o| {
            died_after(o, 0, "mid-reply")
        }),
        // The write's reply carries 20 bytes too many, taken for the next
        // reply's header.
        ("reply_with_trailing_data", |o| {
            died_after(o, 2, "bad reply magic")
        }),
        // The first read's late answer is read and dropped; the write's
        // answer after it still arrives.
        ("late_answer_dropped", |o| {
            abandoned_first(o) && o.calls[1].is_ok() && o.calls[2..].iter().all(Result::is_err)
        }),
        ("late_answer_cut_short", |o| {
            abandoned_first(o)
                && o.calls[1..]
                    .iter()
                    .all(|r| matches!(r, Err(PagerError::Dead(_))))
                && o.described.contains("mid-reply")
        }),
    ];
    replay(
        "nbd_tls_client",
        |data| nbd_tls_client::run(&fx, data, patience),
        seeds,
    );
}
