//! `vmm run --stats`: the per-object statistics printed at exit agree with
//! what the guest did and what its pagers did (issue 10 item 5).

mod support;
use pager_backends::OpenOptions;
use pager_backends::anon::AnonPager;
use std::collections::HashMap;
use std::sync::Arc;
use support::{Output, Silent, kvm_available, vmm};

const PAGE: usize = 4096;

/// The `key=value` fields of object `name`'s block on stderr, with the
/// row label each came from (`data_request`'s `p50` is `data_request.p50`).
fn object_fields(out: &Output, name: &str) -> HashMap<String, String> {
    let head = format!("vmm: object {name} (");
    let mut lines = out.stderr.lines().skip_while(|l| !l.starts_with(&head));
    assert!(
        lines.next().is_some(),
        "no statistics for object {name}:\n{}",
        out.stderr
    );
    let mut fields = HashMap::new();
    for row in lines.map_while(|l| l.strip_prefix("vmm:   ")) {
        let mut words = row.split_whitespace();
        let label = words.next().unwrap_or_default();
        for w in words {
            if let Some((k, v)) = w.split_once('=') {
                fields.insert(format!("{label}.{k}"), v.to_string());
            }
        }
    }
    fields
}

fn number(fields: &HashMap<String, String>, key: &str) -> u64 {
    fields
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in {fields:?}"))
}

#[test]
fn stats_show_a_mapped_host_file_paged_in_once() {
    if !kvm_available("stats_show_a_mapped_host_file_paged_in_once") {
        return;
    }
    // 21 pages, the last one partial: several clustered data_requests.
    let len = 20 * PAGE + 100;
    let path = std::env::temp_dir().join(format!("duality-stats-{}", std::process::id()));
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &data).expect("temp file");
    let obj = format!("h=file:{}?ro", path.display());
    let out = vmm(
        &["run", "--stats", "--object", &obj, "--init", "sum", "h"],
        &[],
    );
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line(&format!("sum: h size={len} ")).is_some(),
        "{}",
        out.stdout
    );
    // The guest kernel's own counts are still there.
    assert!(
        out.line("vm_statistics: faults=").is_some(),
        "{}",
        out.stdout
    );

    let f = object_fields(&out, "h");
    assert!(number(&f, "requests.data_request") > 0, "{f:?}");
    assert_eq!(number(&f, "requests.init"), 1, "{f:?}");
    let pages = len.div_ceil(PAGE) as u64;
    assert_eq!(number(&f, "paging.pages_in"), pages, "{f:?}");
    assert_eq!(number(&f, "paging.bytes_in"), pages * PAGE as u64, "{f:?}");
    assert_eq!(number(&f, "paging.pages_out"), 0, "{f:?}");
    assert_eq!(number(&f, "failures.errors"), 0, "{f:?}");
    assert_eq!(number(&f, "failures.timeouts"), 0, "{f:?}");
    assert_eq!(f.get("failures.dead").map(String::as_str), Some("no"));
    assert_eq!(
        number(&f, "data_request.n"),
        number(&f, "requests.data_request")
    );
    for q in ["p50", "p99", "max"] {
        let v = f
            .get(&format!("data_request.{q}"))
            .unwrap_or_else(|| panic!("no data_request {q}: {f:?}"));
        assert!(
            ["ns", "us", "ms", "s"].iter().any(|u| v.ends_with(u)),
            "{q}={v}"
        );
    }
    // Nothing was written back, so no write quantiles to show.
    assert_eq!(number(&f, "data_write.n"), 0, "{f:?}");
    assert!(!f.contains_key("data_write.p50"), "{f:?}");
}

#[test]
fn stats_count_a_silent_pagers_timeout_apart_from_errors() {
    if !kvm_available("stats_count_a_silent_pagers_timeout_apart_from_errors") {
        return;
    }
    let sock = std::env::temp_dir().join(format!("duality-stats-silent-{}", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let inner = AnonPager::new(1 << 20, &OpenOptions::default()).expect("anon pager");
    support::serve_unix(&sock, Arc::new(Silent::new(inner)));
    let obj = format!("q=unix:{}", sock.display());
    let out = vmm(
        &[
            "run",
            "--stats",
            "--pager-timeout",
            "1",
            "--object",
            &obj,
            "--init",
            "objsum",
            "q",
        ],
        &[],
    );
    let _ = std::fs::remove_file(&sock);
    assert_ne!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    let f = object_fields(&out, "q");
    // objsum stops at its first failed read: one request, timed out.
    assert_eq!(number(&f, "requests.data_request"), 1, "{f:?}");
    assert_eq!(number(&f, "failures.timeouts"), 1, "{f:?}");
    // The timeout is not an error too; after it the connection is dead, so
    // the only errors can be the syncs that follow.
    assert!(
        number(&f, "failures.errors") <= number(&f, "requests.sync"),
        "{f:?}"
    );
    assert_eq!(number(&f, "paging.pages_in"), 0, "{f:?}");
    assert!(f.contains_key("data_request.p99"), "{f:?}");
}

fn sha256_of(data: &[u8]) -> String {
    let path = std::env::temp_dir().join(format!("duality-stats-hash-{}", std::process::id()));
    std::fs::write(&path, data).expect("temp file");
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .expect("run sha256sum");
    let _ = std::fs::remove_file(&path);
    let s = String::from_utf8(out.stdout).expect("utf-8");
    let hex = s.split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(hex.len(), 64, "sha256sum said {s:?}");
    hex
}

/// `?ops=` with a burst of one request: every request of the object after
/// its first within a second is parked by the device, and still answered
/// right; another object served over the same queue in the same run is
/// never held back.
#[test]
fn stats_show_a_rate_limited_object_throttled_and_its_neighbour_not() {
    if !kvm_available("stats_show_a_rate_limited_object_throttled_and_its_neighbour_not") {
        return;
    }
    // 21 pages: several clustered data_requests, then init's SYNC, at one
    // a second with a burst of 1: the second comes within the second
    // after the first (milliseconds here), so it must be parked.
    let len = 20 * PAGE + 100;
    let path = std::env::temp_dir().join(format!("duality-stats-rate-{}", std::process::id()));
    let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&path, &data).expect("temp file");
    let slow = format!("h=file:{}?ro&ops=1&ops_burst=1", path.display());
    let free = format!("u=file:{}?ro", path.display());
    let out = vmm(
        &[
            "run", "--stats", "--object", &slow, "--object", &free, "--init", "spawn", "sum:h",
            "sum:u",
        ],
        &[],
    );
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    let sha = sha256_of(&data);
    for name in ["h", "u"] {
        assert!(
            out.line(&format!("sum: {name} size={len} sha256={sha}"))
                .is_some(),
            "{}",
            out.stdout
        );
    }
    let h = object_fields(&out, "h");
    // At least the data_requests and the SYNC cost one op each.
    assert!(number(&h, "requests.data_request") >= 2, "{h:?}");
    assert!(number(&h, "requests.throttled") > 0, "{h:?}");
    assert!(h.contains_key("requests.parked_time"), "{h:?}");
    let u = object_fields(&out, "u");
    assert!(number(&u, "requests.data_request") > 0, "{u:?}");
    assert_eq!(number(&u, "requests.throttled"), 0, "{u:?}");
    assert_eq!(
        u.get("requests.parked_time").map(String::as_str),
        Some("0ns")
    );
}

/// The per-object request timeout bounds the pager, not the object's own
/// rate limit: at one request a second with a burst of one, each of
/// objsum's one-at-a-time 64 KiB reads after the first waits most of a
/// second parked in the device, far past the 200 ms timeout, and nothing
/// times out (the backend's clock starts when it sends).
#[test]
fn time_parked_by_a_rate_limit_is_not_a_pager_timeout() {
    if !kvm_available("time_parked_by_a_rate_limit_is_not_a_pager_timeout") {
        return;
    }
    let sock = std::env::temp_dir().join(format!("duality-stats-rate-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let inner = AnonPager::new(256 << 10, &OpenOptions::default()).expect("anon pager");
    support::serve_unix(&sock, Arc::new(inner));
    let obj = format!("q=unix:{}?timeout=200ms&ops=1&ops_burst=1", sock.display());
    let out = vmm(
        &[
            "run", "--stats", "--object", &obj, "--init", "objsum", "q", "64K",
        ],
        &[],
    );
    let _ = std::fs::remove_file(&sock);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    let zeros = sha256_of(&vec![0u8; 256 << 10]);
    assert!(
        out.stdout
            .contains(&format!("size={} sha256={zeros}", 256 << 10)),
        "{}",
        out.stdout
    );
    let f = object_fields(&out, "q");
    assert_eq!(number(&f, "requests.data_request"), 4, "{f:?}");
    assert!(number(&f, "requests.throttled") >= 3, "{f:?}");
    assert_eq!(number(&f, "failures.timeouts"), 0, "{f:?}");
    assert_eq!(number(&f, "failures.errors"), 0, "{f:?}");
}

/// Data requests of object `name` in a `--stats` run of `sum` over `args`.
fn sum_requests(objects: &[&str], names: &[&str], name: &str) -> u64 {
    let mut args = vec!["run", "--stats"];
    for o in objects {
        args.extend(["--object", o]);
    }
    args.extend(["--init", "sum"]);
    args.extend(names);
    let out = vmm(&args, &[]);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    let sums: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with(&format!("sum: {name} size=")))
        .collect();
    assert_eq!(sums.len(), names.len(), "{}", out.stdout);
    assert!(sums.iter().all(|l| *l == sums[0]), "{}", out.stdout);
    number(&object_fields(&out, name), "requests.data_request")
}

/// A pager that allows caching at INIT (the file pager) has its object
/// kept once unmapped (paper §3.4.2): mapping it again finds its pages
/// resident and asks nothing. One that does not (the anonymous pager) has
/// it terminated at the unmap and every page asked for again.
#[test]
fn an_object_whose_pager_allows_caching_stays_resident_after_its_unmap() {
    if !kvm_available("an_object_whose_pager_allows_caching_stays_resident_after_its_unmap") {
        return;
    }
    let len = 40 * PAGE;
    let path = std::env::temp_dir().join(format!("duality-stats-cache-{}", std::process::id()));
    let data: Vec<u8> = (0..len).map(|i| (i * 11 % 251) as u8).collect();
    std::fs::write(&path, &data).expect("temp file");
    let file = format!("f=file:{}?ro", path.display());
    let once = sum_requests(&[&file], &["f"], "f");
    let twice = sum_requests(&[&file], &["f", "f"], "f");
    let _ = std::fs::remove_file(&path);
    assert!(once > 0);
    assert_eq!(twice, once, "the second mapping asked the pager again");
    let zero = "z=zero?size=160K";
    let once = sum_requests(&[zero], &["z"], "z");
    let twice = sum_requests(&[zero], &["z", "z"], "z");
    assert!(once > 0);
    assert_eq!(
        twice,
        2 * once,
        "an object its pager did not let cache was kept"
    );
}
