//! Every checked-in fuzz corpus / crash input goes through the parser as an
//! ordinary test, so CI catches regressions without nightly or cargo-fuzz.

use std::fs;
use std::path::Path;

const VALID: &[&str] = &[
    "init",
    "data_request",
    "data_request_readahead",
    "data_write",
    "data_unlock",
    "terminate",
    "sync",
];

#[test]
fn fuzz_corpus_inputs_do_not_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in ["fuzz/corpus/parse_request", "tests/fuzz-regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let data = fs::read(e.path()).expect("read corpus file");
            let r = devices::pager::wire::fuzz_parse(&data);
            // The seed corpus names its well-formed requests; they must
            // keep parsing (guards against a parser that rejects everything).
            let name = e.file_name().to_string_lossy().into_owned();
            if VALID.contains(&name.as_str()) {
                assert!(r.is_ok(), "{name}: {r:?}");
            }
            n += 1;
        }
    }
    assert!(n > 0, "no corpus files found");
}
