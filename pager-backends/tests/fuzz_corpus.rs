//! Every checked-in fuzz corpus and crash input of pager-backends/fuzz goes
//! through its target's entry point as an ordinary test, so CI replays them
//! on stable without cargo-fuzz. A panic, a hang or a request left waiting
//! fails here; named seeds must also do what their name says.

use pager_backends::nbd::{NbdOutcome, fuzz_client as nbd};
use pager_backends::unix::{UnixOutcome, fuzz_client as unix};
use std::fs;
use std::path::Path;

/// A named seed and what its outcome must satisfy.
type Seed<O> = (&'static str, fn(&O) -> bool);

/// Runs every file of `fuzz/corpus/<target>` through `run`, holding the
/// named seeds to `seeds`; other files (found by the fuzzer, crash inputs)
/// must only run cleanly.
fn replay<O: std::fmt::Debug>(target: &str, run: fn(&[u8]) -> O, seeds: &[Seed<O>]) {
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
