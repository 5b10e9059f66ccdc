//! Every checked-in fuzz corpus / crash input goes through the fuzz entry
//! point (descriptor walk + parser) as an ordinary test, so CI catches
//! regressions without nightly or cargo-fuzz. Named seeds say what they
//! must do: the well-formed ones must be accepted, the malformed ones
//! refused (not merely survived).

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
                    is_fuzzer_named(&name) || dir == "tests/fuzz-regressions",
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
