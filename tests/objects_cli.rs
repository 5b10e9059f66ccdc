//! `vmm run --object NAME=URI`: every bad value is a clear error before the
//! guest starts; good ones boot; the final sync is reported and bounded.

mod support;
use pager_backends::{OpenOptions, Pager, PagerError, anon::AnonPager};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::hooked::{Hooked, Hooks};
use support::{kvm_available, vmm};

/// Runs `vmm run ARGS` and checks it failed with `expect` in stderr, naming
/// the option, without a panic.
fn assert_object_error(args: &[&str], expect: &str) {
    let mut full = vec!["run"];
    full.extend_from_slice(args);
    let out = vmm(&full, &[]);
    assert_eq!(
        out.status,
        Some(1),
        "vmm {full:?}: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains(expect),
        "vmm {full:?}: expected {expect:?} in:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("--object"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    // Errors come before the guest starts: nothing on its console.
    assert!(
        !out.stdout.contains("Duality Mach kernel"),
        "{}",
        out.stdout
    );
}

fn temp_path(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("duality-objects-{what}-{}", std::process::id()))
}

#[test]
fn object_without_equals() {
    assert_object_error(&["--object", "data"], "expected NAME=URI");
}

#[test]
fn object_with_empty_name() {
    assert_object_error(&["--object", "=zero"], "empty object name");
}

#[test]
fn object_name_too_long() {
    let arg = format!("{}=zero", "n".repeat(48));
    assert_object_error(&["--object", &arg], "48 bytes long; at most 47");
}

#[test]
fn object_name_with_whitespace() {
    assert_object_error(&["--object", "my data=zero"], "without whitespace");
}

#[test]
fn object_name_not_printable() {
    assert_object_error(&["--object", "bell\u{7}=zero"], "must be printable");
}

#[test]
fn duplicate_object_name() {
    assert_object_error(
        &["--object", "a=zero", "--object", "a=anon"],
        "duplicate object name \"a\"",
    );
}

#[test]
fn object_uri_that_does_not_parse() {
    assert_object_error(&["--object", "a=gopher://x"], "unknown scheme");
    assert_object_error(&["--object", "a=zero?size=7"], "bad size");
}

#[test]
fn object_file_missing() {
    assert_object_error(
        &["--object", "a=file:/nonexistent/duality-object"],
        "cannot open: backing store: /nonexistent/duality-object",
    );
}

#[test]
fn object_nbd_server_down() {
    // A port that was just free: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let arg = format!("r=nbd://127.0.0.1:{port}/disk");
    assert_object_error(&["--object", &arg], "Connection refused");
}

/// An NBD server that greets at once, then sends its replies to the first
/// option (NBD_OPT_GO) a byte every 100 ms: each byte well within any read
/// timeout, the whole (5 s) far beyond a 1 s one. Stops when the client
/// has gone.
fn nbd_server_trickling_its_options() -> (u16, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = l.local_addr().expect("local addr").port();
    let h = std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        // Our greeting; the client's flags and its option's header.
        let mut head = [0u8; 20];
        let greeted = s
            .write_all(b"NBDMAGICIHAVEOPT\0\x03")
            .and_then(|()| s.read_exact(&mut head));
        let len = u32::from_be_bytes([head[16], head[17], head[18], head[19]]);
        if greeted.is_err() || s.read_exact(&mut vec![0u8; len as usize]).is_err() {
            return;
        }
        // NBD_REP_INFO (a 1 MiB export) and NBD_REP_ACK.
        let mut info = vec![0u8, 0];
        info.extend_from_slice(&(1u64 << 20).to_be_bytes());
        info.extend_from_slice(&1u16.to_be_bytes());
        let mut replies = Vec::new();
        for (ty, data) in [(3u32, &info[..]), (1, &[][..])] {
            replies.extend_from_slice(&0x0003_e889_0455_65a9u64.to_be_bytes());
            replies.extend_from_slice(&7u32.to_be_bytes());
            replies.extend_from_slice(&ty.to_be_bytes());
            replies.extend_from_slice(&(data.len() as u32).to_be_bytes());
            replies.extend_from_slice(data);
        }
        for b in replies {
            std::thread::sleep(Duration::from_millis(100));
            if s.write_all(&[b]).is_err() {
                return;
            }
        }
    });
    (port, h)
}

#[test]
fn object_nbd_server_trickling_its_handshake_is_cut_off_at_its_timeout() {
    let (port, h) = nbd_server_trickling_its_options();
    let arg = format!("r=nbd://127.0.0.1:{port}/disk?timeout=1s");
    assert_object_error(
        &["--object", &arg],
        &format!(
            "NBD handshake with 127.0.0.1:{port} did not finish within 1s (stuck in option negotiation)"
        ),
    );
    h.join().unwrap();
}

#[test]
fn too_many_objects() {
    let args: Vec<String> = (0..60)
        .flat_map(|i| ["--object".to_string(), format!("o{i}=zero")])
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_object_error(
        &args,
        "given 60 times; the device's object table holds at most 59",
    );
}

#[test]
fn bad_pager_timeout() {
    for bad in ["0", "soon", "-3", "1e-12"] {
        let bad = format!("--pager-timeout={bad}");
        let out = vmm(&["run", &bad], &[]);
        assert_eq!(out.status, Some(1), "{}", out.stderr);
        assert!(
            out.stderr.contains("invalid --pager-timeout"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

#[test]
fn boots_with_objects_and_reports_device_stats() {
    if !kvm_available("boots_with_objects_and_reports_device_stats") {
        return;
    }
    let path = temp_path("boot");
    std::fs::write(&path, vec![7u8; 8192]).expect("temp file");
    let data = format!("data=file:{}", path.display());
    let ro = format!("ro=file:{}?ro", path.display());
    let out = vmm(
        &[
            "run", "--stats", "--object", &data, "--object", &ro, "--object", "z=zero",
        ],
        &[],
    );
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line("init: hello from user mode").is_some(),
        "{}",
        out.stdout
    );
    // Counts depend on what the guest driver does at boot; none may be
    // rejected.
    let stats = out
        .stderr
        .lines()
        .find(|l| l.starts_with("vmm: virtio-pager: "))
        .unwrap_or_else(|| panic!("no device stats: {}", out.stderr));
    assert!(stats.contains(" 0 rejected,"), "{stats}");
    assert!(!out.stderr.contains("sync failed"), "{}", out.stderr);

    // Init's own status still comes through with objects attached.
    let out = vmm(&["run", "--object", "z=zero", "--init", "init", "9"], &[]);
    assert_eq!(out.status, Some(9), "{}{}", out.stdout, out.stderr);
}

/// Hooks of an external pager whose sync misbehaves: fails at once or never
/// answers.
struct BadSync {
    silent: bool,
}

impl Hooks for BadSync {
    fn sync(&self, _: &dyn Pager) -> pager_backends::Result<()> {
        if self.silent {
            std::thread::sleep(Duration::from_secs(3600));
        }
        Err(PagerError::Io(std::io::Error::other("the disk is on fire")))
    }
    fn describe(&self, _: &dyn Pager) -> String {
        "bad-sync test pager".into()
    }
}

/// Serves a `BadSync` on a fresh socket for the rest of the test process.
fn serve_bad_sync(what: &str, silent: bool) -> PathBuf {
    let path = temp_path(what);
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind socket");
    let inner = AnonPager::new(1 << 20, &OpenOptions::default()).expect("anon pager");
    let pager: Arc<dyn Pager> = Arc::new(Hooked::new(inner, BadSync { silent }));
    std::thread::spawn(move || pager_backends::unix::serve(listener, pager));
    path
}

#[test]
fn failed_sync_is_reported_and_fails_a_successful_run() {
    if !kvm_available("failed_sync_is_reported_and_fails_a_successful_run") {
        return;
    }
    let sock = serve_bad_sync("failing", false);
    let arg = format!("ext=unix:{}", sock.display());
    let out = vmm(&["run", "--object", &arg, "--object", "z=zero"], &[]);
    assert!(
        out.line("init exited with status 0").is_some(),
        "{}",
        out.stdout
    );
    assert_eq!(out.status, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("vmm: object ext: sync failed:")
            && out.stderr.contains("the disk is on fire"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("object z:"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    // A guest that failed keeps its own status.
    let out = vmm(&["run", "--object", &arg, "--init", "init", "4"], &[]);
    assert_eq!(out.status, Some(4), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("sync failed"), "{}", out.stderr);
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn silent_pager_does_not_hang_shutdown() {
    if !kvm_available("silent_pager_does_not_hang_shutdown") {
        return;
    }
    let sock = serve_bad_sync("silent", true);
    let arg = format!("quiet=unix:{}", sock.display());
    let start = Instant::now();
    let out = vmm(&["run", "--pager-timeout", "1", "--object", &arg], &[]);
    let took = start.elapsed();
    assert_eq!(out.status, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("vmm: object quiet: sync failed:"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    // The guest kernel's own sync at power-off may time out first; the unix
    // client then gives the connection up, and the VMM's final sync finds
    // the pager dead instead: either way it is reported, and nothing hangs.
    assert!(
        out.stderr.contains("timed out")
            || out.stderr.contains("no answer within")
            || out.stderr.contains("pager is dead"),
        "says it timed out: {}",
        out.stderr
    );
    // Boot plus a 1 s timeout (plus the 1 s grace); far from the pager's hour.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn bad_rate_limits() {
    for (arg, expect) in [
        ("d=zero?ops=0", "ops=0: must be more than 0"),
        (
            "d=zero?ops=many",
            "ops=many: expected a whole number of requests per second",
        ),
        (
            "d=zero?ops=99999999999999999999",
            "ops=99999999999999999999: too large",
        ),
        (
            "d=zero?bandwidth=0",
            "bandwidth=0: must be more than 0 bytes",
        ),
        (
            "d=zero?bandwidth=fast",
            "bandwidth=fast: expected a whole number of bytes",
        ),
        (
            "d=zero?bandwidth=1.5G",
            "bandwidth=1.5G: fractions are not taken",
        ),
        (
            "d=zero?bandwidth=99999999T",
            "bandwidth=99999999T: too large",
        ),
        (
            "d=zero?bandwidth_burst=1M",
            "bandwidth_burst needs bandwidth=",
        ),
        ("d=zero?ops=1&ops=2", "ops given twice"),
    ] {
        assert_object_error(&["--object", arg], expect);
    }
}
