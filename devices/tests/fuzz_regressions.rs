//! Every checked-in fuzz corpus / crash input goes through the fuzz entry
//! points as an ordinary test, so CI catches regressions without cargo-fuzz:
//! `parse_request` (descriptor walk + parser) and `mmio` (the device behind
//! its transport). Named seeds say what they must do: the well-formed ones
//! must be accepted, the malformed ones refused (not merely survived).

use devices::fuzzing::{MmioOutcome, fuzz_mmio};
use std::fs;
use std::path::Path;

/// Well-formed requests: must parse.
const VALID: &[&str] = &[
    "init",
    "data_request",
    "data_request_readahead",
    "data_write",
    "data_unlock",
    "terminate",
    "sync",
    "indirect",
    "raw_linked",
];

/// Malformed requests: must be refused.
const INVALID: &[&str] = &[
    "empty",
    "huge",
    "overflow_offset",
    "overlap",
    "loop",
    "dangling",
    "zero_length",
    "wrong_direction",
];

/// Files cargo-fuzz adds are named by their SHA-1; anything else is a seed
/// someone wrote on purpose and must be listed above.
fn is_fuzzer_named(name: &str) -> bool {
    name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn fuzz_corpus_inputs_are_accepted_or_refused_as_named() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    let mut seen = Vec::new();
    for dir in ["fuzz/corpus/parse_request", "tests/fuzz-regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = fs::read(e.path()).expect("read corpus file");
            let r = devices::pager::wire::fuzz_parse(&data);
            let name = e.file_name().to_string_lossy().into_owned();
            if VALID.contains(&name.as_str()) {
                assert!(r.is_ok(), "{dir}/{name} must be accepted: {r:?}");
            } else if INVALID.contains(&name.as_str()) {
                assert!(r.is_err(), "{dir}/{name} must be refused: {r:?}");
            } else {
                assert!(
                    is_fuzzer_named(&name)
                        || name.starts_with("crash-")
                        || dir == "tests/fuzz-regressions",
                    "{dir}/{name}: a named seed must be listed in VALID or INVALID"
                );
            }
            seen.push(name);
            n += 1;
        }
    }
    assert!(n > 0, "no corpus files found");
    for name in VALID.iter().chain(INVALID) {
        assert!(seen.iter().any(|s| s == name), "seed {name} is missing");
    }
}

#[test]
fn fuzz_entry_point_sees_what_the_device_sees() {
    use devices::pager::wire::{FuzzReject, ParseError, fuzz_parse};
    use devices::virtio::ChainError;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/parse_request");
    let run = |name: &str| fuzz_parse(&fs::read(root.join(name)).expect("seed"));
    // Refused by the descriptor walk, before the parser.
    assert_eq!(
        run("loop").unwrap_err(),
        FuzzReject::Chain(ChainError::Looped)
    );
    assert_eq!(
        run("dangling").unwrap_err(),
        FuzzReject::Chain(ChainError::Broken)
    );
    assert_eq!(
        run("zero_length").unwrap_err(),
        FuzzReject::Chain(ChainError::ZeroLength(1))
    );
    // 32 + 0xffff_ffff bytes: longer than virtio allows a chain to be
    // (2^32), so virtio-queue ends the walk early and the chain dangles.
    assert_eq!(
        run("huge").unwrap_err(),
        FuzzReject::Chain(ChainError::Broken)
    );
    assert!(matches!(
        run("empty").unwrap_err(),
        FuzzReject::Chain(ChainError::ZeroLength(0))
    ));
    // Refused by the parser.
    assert_eq!(
        run("overlap").unwrap_err(),
        FuzzReject::Parse(ParseError::Overlap)
    );
    assert_eq!(
        run("wrong_direction").unwrap_err(),
        FuzzReject::Parse(ParseError::WrongDirection)
    );
    assert!(matches!(
        run("overflow_offset").unwrap_err(),
        FuzzReject::Parse(ParseError::BadRange(_))
    ));
}

/// Named seeds of the `mmio` target and what each must do; any other file
/// in the corpus (fuzzer-found, crash inputs) must only run cleanly.
type MmioSeed = (&'static str, fn(&MmioOutcome) -> bool);

const MMIO_SEEDS: &[MmioSeed] = &[
    // Every register and some config space read before any bring-up.
    ("registers", |o| !o.activated && o.requests == 0),
    // A driver's bring-up through the registers activates the device.
    ("bring_up", |o| o.activated && !o.needed_reset),
    // INIT, DATA_REQUEST, DATA_WRITE, DATA_UNLOCK, SYNC, TERMINATE on the
    // inline object: all taken, none refused.
    ("init_read_write", |o| o.requests == 6 && o.rejected == 0),
    // INIT and two DATA_REQUESTs on the object served by the worker.
    ("blocking_object", |o| o.requests == 3 && o.rejected == 0),
    // Lock, offer, cache and destroy events into posted event buffers.
    ("events", |o| o.events == 4),
    // A chain whose descriptor links back to itself is refused.
    ("looped_chain", |o| o.requests == 1 && o.rejected == 1),
    // An indirect table whose last descriptor points past the table.
    ("indirect_dangling", |o| o.requests == 1 && o.rejected == 1),
    // An avail index further ahead than the ring holds: NEEDS_RESET.
    ("avail_index_out_of_range", |o| {
        o.needed_reset && o.requests == 0
    }),
    ("republished_head", |o| o.needed_reset && o.requests == 0),
    // Status and queue writes in the wrong order never activate it.
    ("wrong_state", |o| !o.activated),
    // A reset with kicks pending: nothing is taken from the gone rings.
    ("reset_after_requests", |o| o.activated && o.requests == 0),
    // Object a at 1 request a second, burst 1: of two reads, the second
    // is parked; the reset drops it at once (the pager never sees it).
    ("parked_then_reset", |o| {
        o.requests == 3
            && o.rejected == 0
            && o.parked == 1
            && o.parked_at_reset == 1
            && o.pager_reads == 1
    }),
    // The same, then a second passes: the rate timer resumes the read.
    ("parked_then_resumed", |o| {
        o.requests == 3
            && o.rejected == 0
            && o.parked == 1
            && o.parked_at_reset == 0
            && o.pager_reads == 2
    }),
    // 4096 bytes a second: the second page is parked, still parked after
    // 100 ms, resumed after a second more.
    ("bytes_parked_then_resumed", |o| {
        o.requests == 3
            && o.rejected == 0
            && o.parked == 1
            && o.parked_at_reset == 0
            && o.pager_reads == 2
    }),
    // A pager's lock request with reply, delivered, answered by the
    // driver with its tag and range: the pager gets its cookie back.
    ("lock_reply_completed", |o| {
        o.events == 1
            && o.replies_asked == 1
            && o.rejected == 0
            && o.lock_completions == 1
            && o.replies_waiting_at_reset == 0
    }),
    // Answered with another tag, or the right tag and another range:
    // refused, the pager hears nothing, the request still waits.
    ("lock_reply_wrong_tag", |o| {
        o.replies_asked == 1
            && o.rejected == 1
            && o.lock_completions == 0
            && o.replies_waiting_at_reset == 1
    }),
    ("lock_reply_wrong_range", |o| {
        o.replies_asked == 1
            && o.rejected == 1
            && o.lock_completions == 0
            && o.replies_waiting_at_reset == 1
    }),
    // Answered twice: the second is refused, the pager hears once.
    ("lock_reply_twice", |o| {
        o.replies_asked == 1
            && o.rejected == 1
            && o.lock_completions == 1
            && o.replies_waiting_at_reset == 0
    }),
    // F_LOCK_COMPLETED not negotiated: the pager's request for a reply is
    // refused, and so is the driver's LOCK_COMPLETED.
    ("lock_reply_without_feature", |o| {
        o.events == 0
            && o.replies_asked == 0
            && o.requests == 2
            && o.rejected == 1
            && o.lock_completions == 0
    }),
];

#[test]
fn mmio_corpus_runs_cleanly_and_named_seeds_do_what_they_say() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/mmio");
    let mut seen = Vec::new();
    for e in fs::read_dir(&root).expect("mmio corpus").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let data = fs::read(e.path()).expect("read corpus file");
        // Panics, hangs (the drain limit) and unbounded queues fail here.
        let out = fuzz_mmio(&data);
        match MMIO_SEEDS.iter().find(|(n, _)| *n == name) {
            Some((_, ok)) => assert!(ok(&out), "mmio seed {name}: {out:?}"),
            None => assert!(
                is_fuzzer_named(&name) || name.starts_with("crash-"),
                "mmio/{name}: a named seed must be listed in MMIO_SEEDS"
            ),
        }
        seen.push(name);
    }
    for (name, _) in MMIO_SEEDS {
        assert!(
            seen.iter().any(|s| s == name),
            "mmio seed {name} is missing"
        );
    }
}
