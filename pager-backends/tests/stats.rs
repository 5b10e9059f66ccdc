mod common;

use common::*;
use pager_backends::{Access, KernelId, ObjectOffset, OpenOptions, Pager, PagerError};
use std::sync::Arc;

#[test]
fn instrumented_counts_requests_bytes_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "s", &pattern(65536));
    let p = pager_backends::open_instrumented(
        &format!("file:{}", path.display()),
        &OpenOptions::default(),
    )
    .unwrap();
    let k = KernelId(1);
    p.init(k, Arc::new(Recorder::default())).unwrap();
    let mut buf = vec![0u8; 8192];
    for i in 0..10u64 {
        // Random-ish order so read-ahead stays off: exactly 8 KiB each.
        let off = ((i * 3) % 7) * 8192;
        p.data_request(k, ObjectOffset(off), 8192, Access::READ, &[slice(&mut buf)])
            .unwrap();
    }
    p.data_write(k, ObjectOffset(0), 4096, &[slice(&mut buf)])
        .unwrap();
    assert!(matches!(
        p.data_request(
            k,
            ObjectOffset(1 << 20),
            4096,
            Access::READ,
            &[slice(&mut buf)]
        ),
        Err(PagerError::PastEnd { .. })
    ));
    let s = p.stats();
    assert_eq!(s.data_requests, 11);
    assert_eq!(s.data_writes, 1);
    // In and out as the guest pages: provided in, written back out.
    assert_eq!(s.bytes_out, 4096);
    assert_eq!(s.pages_out, 1);
    assert!(s.bytes_in >= 10 * 8192);
    assert_eq!(s.pages_in, s.bytes_in / 4096);
    assert_eq!(s.inits, 1);
    assert_eq!(s.errors, 1);
    assert_eq!(s.timeouts, 0);
    assert!(!s.dead);
    assert_eq!(s.request_latency.count, 11);
    assert!(s.request_latency.p50 <= s.request_latency.p99);
    assert!(s.request_latency.p99 <= s.request_latency.max);
    // The summed time: six of the 11 requests took at least the median,
    // which the histogram reports at most an eighth high; none took longer
    // than the maximum.
    assert!(s.request_time >= s.request_latency.p50 * 5);
    assert!(s.request_time <= s.request_latency.max * 11);
}

#[test]
fn bad_uris_are_clear_errors() {
    let err = pager_backends::open("ftp://x", &OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, PagerError::Uri(_)));
    assert!(err.to_string().starts_with("bad pager URI"), "{err}");
    let err = pager_backends::open("file:/definitely/not/here", &OpenOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("/definitely/not/here"), "{err}");
}
