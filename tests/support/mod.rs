//! Shared by the integration tests: run the `vmm` binary with a hang guard,
//! and decide whether KVM and NBD tests run here.

#![allow(dead_code)]

/// Test certificates and qemu-nbd over TLS, shared with pager-backends'
/// NBD tests.
#[path = "../../pager-backends/tests/common/tls.rs"]
pub mod tls;

pub mod hooked;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Index of the first line containing `needle`.
    pub fn line(&self, needle: &str) -> Option<usize> {
        self.stdout.lines().position(|l| l.contains(needle))
    }
    pub fn last_line(&self, needle: &str) -> Option<usize> {
        let lines: Vec<&str> = self.stdout.lines().collect();
        lines.iter().rposition(|l| l.contains(needle))
    }
}

/// Whether the KVM-backed tests can run. Where KVM is required (CI, or
/// DUALITY_REQUIRE_KVM=1) a missing /dev/kvm is a failure; elsewhere the
/// test says it is skipped.
pub fn kvm_available(test: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let required = std::env::var("DUALITY_REQUIRE_KVM").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true");
    if !ok && required {
        panic!(
            "{test}: /dev/kvm is not usable, and KVM is required here (CI=true or DUALITY_REQUIRE_KVM=1)"
        );
    }
    if !ok {
        eprintln!(
            "SKIPPED {test}: no usable /dev/kvm (set DUALITY_REQUIRE_KVM=1 to make this a failure)"
        );
    }
    ok
}

fn qemu_nbd_path() -> Option<PathBuf> {
    ["/usr/bin/qemu-nbd", "/usr/local/bin/qemu-nbd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// qemu-nbd's path, or None after a skip notice; a failure where NBD is
/// required (CI=true or DUALITY_REQUIRE_NBD=1).
pub fn need_qemu_nbd(test: &str) -> Option<PathBuf> {
    let required = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("DUALITY_REQUIRE_NBD").is_ok_and(|v| v == "1");
    match qemu_nbd_path() {
        Some(p) => Some(p),
        None if required => panic!(
            "{test}: qemu-nbd is not installed but CI/DUALITY_REQUIRE_NBD requires the NBD tests"
        ),
        None => {
            eprintln!(
                "SKIPPED {test}: qemu-nbd is not installed (apt-get install qemu-utils); set DUALITY_REQUIRE_NBD=1 to make this a failure"
            );
            None
        }
    }
}

/// Runs `vmm ARGS` with `env`; a run that does not finish within the hang
/// guard is killed and fails the test (this bounds a hang, it times nothing).
/// How long a run may take before it counts as hung. Not a speed target:
/// the longest tests (paging 20 MiB through a 24 MiB guest) take 70-90 s
/// on a loaded 2-core machine where ring 0 is emulated.
const HANG_GUARD: Duration = Duration::from_secs(300);

pub fn vmm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn vmm");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    });
    let ereader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    });
    let guard = HANG_GUARD;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > guard {
            let _ = child.kill();
            let _ = child.wait();
            // What it printed before it hung says where.
            let tail = |s: String| {
                s.lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "vmm {} did not finish within {guard:?}\n--- stdout (tail):\n{}\n--- stderr (tail):\n{}",
                args.join(" "),
                tail(reader.join().unwrap_or_default()),
                tail(ereader.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status: status.code(),
        stdout: reader.join().unwrap_or_default(),
        stderr: ereader.join().unwrap_or_default(),
    }
}

/// Like `vmm`, but hands each stdout line to `on_line` as soon as the guest
/// prints it, so a test can act while the VM runs (the same hang guard).
pub fn vmm_watch(args: &[&str], env: &[(&str, &str)], mut on_line: impl FnMut(&str)) -> Output {
    use std::io::BufRead;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn vmm");
    let out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ereader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        String::from_utf8_lossy(&b).into_owned()
    });
    let guard = HANG_GUARD;
    let start = Instant::now();
    let mut stdout = String::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(line) => {
                on_line(&line);
                stdout.push_str(&line);
                stdout.push('\n');
            }
            // The reader is done: stdout is closed, the vmm is ending.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if start.elapsed() > guard {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "vmm {} did not finish within {guard:?}; stdout so far:\n{stdout}",
                args.join(" ")
            );
        }
    }
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > guard {
            let _ = child.kill();
            let _ = child.wait();
            panic!("vmm {} did not finish within {guard:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = reader.join();
    Output {
        status: status.code(),
        stdout,
        stderr: ereader.join().unwrap_or_default(),
    }
}

/// Serves `pager` as an external pager on a Unix socket at `path`, from a
/// thread of this test process.
pub fn serve_unix(path: &std::path::Path, pager: std::sync::Arc<dyn pager_backends::Pager>) {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind socket");
    std::thread::spawn(move || pager_backends::unix::serve(listener, pager));
}

/// Hooks of a pager that completes the handshake (as its inner pager) and
/// then never answers a data request: what a hung external pager looks like.
pub struct Silent;

impl Silent {
    pub fn new(inner: impl pager_backends::Pager + 'static) -> hooked::Hooked<Silent> {
        hooked::Hooked::new(inner, Silent)
    }
}

impl hooked::Hooks for Silent {
    fn data_request(
        &self,
        _: &dyn pager_backends::Pager,
        _: pager_backends::KernelId,
        _: pager_backends::ObjectOffset,
        _: u64,
        _: pager_backends::Access,
        _: &[vm_memory::VolatileSlice<'_>],
    ) -> pager_backends::Result<pager_backends::DataReply> {
        std::thread::sleep(Duration::from_secs(3600));
        Err(pager_backends::PagerError::Protocol("woke up".into()))
    }
    fn describe(&self, _: &dyn pager_backends::Pager) -> String {
        "silent test pager".into()
    }
}
