//! Every VMM thread runs under its own seccomp filter, on by default (every
//! other boot test runs with them). Here the hidden test hook
//! `--seccomp-selftest=KIND` makes a thread of that kind call socket(2)
//! right after its filter is in place: the VMM must die at once, exit 159,
//! with a report naming the thread and the call; with `--no-seccomp` the
//! same call goes through and the guest runs to the end.

mod support;
use pager_backends::OpenOptions;
use pager_backends::anon::AnonPager;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use support::{Output, kvm_available, need_qemu_nbd, vmm};

/// socket(2) on x86_64, the call the hook makes.
const REPORT_TAIL: &str = "made forbidden system call 41 (socket)";
const EXIT_FORBIDDEN: i32 = 159;
const MIB: usize = 1 << 20;

/// A temporary path, removed when dropped.
struct Temp(PathBuf);

impl Temp {
    fn new(what: &str) -> Temp {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("duality-seccomp-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        Temp(p)
    }
    fn with(what: &str, data: &[u8]) -> Temp {
        let t = Temp::new(what);
        std::fs::write(&t.0, data).expect("write temp file");
        t
    }
    fn show(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `sum NAME` over `object` (NAME=URI), with the hook aimed at `kind`.
fn selftest(kind: &str, object: &str, extra: &[&str]) -> Output {
    let name = object.split('=').next().expect("NAME=URI");
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend([
        "--seccomp-selftest",
        kind,
        "--object",
        object,
        "--init",
        "sum",
        name,
    ]);
    vmm(&args, &[])
}

/// The report line for a thread whose name starts with `thread`.
fn report<'a>(out: &'a Output, thread: &str) -> &'a str {
    let head = format!("vmm: seccomp: thread {thread}");
    out.stderr
        .lines()
        .find(|l| l.starts_with(&head))
        .unwrap_or_else(|| {
            panic!(
                "no seccomp report for {thread}\nstdout:\n{}\nstderr:\n{}",
                out.stdout, out.stderr
            )
        })
}

fn assert_refused(out: &Output, thread: &str) {
    assert_eq!(
        out.status,
        Some(EXIT_FORBIDDEN),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let line = report(out, thread);
    assert!(line.ends_with(REPORT_TAIL), "{line}");
    assert!(
        !out.stderr.contains("was let through"),
        "the call returned: {}",
        out.stderr
    );
}

#[test]
fn a_forbidden_call_on_each_vmm_thread_is_refused_and_reported() {
    if !kvm_available("a_forbidden_call_on_each_vmm_thread_is_refused_and_reported") {
        return;
    }
    let f = Temp::with("file", &vec![7u8; MIB]);
    let obj = format!("h=file:{}?ro", f.show());
    // These confine themselves before the guest runs: it never prints.
    for (kind, thread) in [
        ("main", "main "),
        ("vcpu", "vcpu0 "),
        ("pager-worker", "pager-worker-"),
    ] {
        let out = selftest(kind, &obj, &[]);
        assert_refused(&out, thread);
        assert!(
            !out.stdout.contains("sum: h"),
            "{kind}: the guest ran before the filter stopped it:\n{}",
            out.stdout
        );
    }
    // The sync threads start once the guest has finished.
    let out = selftest("sync", &obj, &[]);
    assert_refused(&out, "sync-");
    assert!(out.stdout.contains("sum: h size=1048576"), "{}", out.stdout);
}

#[test]
fn a_forbidden_call_on_a_unix_pager_reader_is_refused_and_reported() {
    if !kvm_available("a_forbidden_call_on_a_unix_pager_reader_is_refused_and_reported") {
        return;
    }
    let sock = Temp::new("sock");
    let pager = AnonPager::new(MIB as u64, &OpenOptions::default()).expect("anon pager");
    support::serve_unix(&sock.0, Arc::new(pager));
    let out = selftest("pager-reader", &format!("p=unix:{}", sock.show()), &[]);
    assert_refused(&out, "unix-pager-reader ");
    assert!(!out.stdout.contains("sum: p"), "{}", out.stdout);
}

/// qemu-nbd serving `file` on a Unix socket bound here and handed over by
/// socket activation (fd 3), so it accepts the moment the VMM connects.
struct QemuNbd {
    child: Child,
    _listener: UnixListener,
}

impl QemuNbd {
    fn start(qemu_nbd: &Path, sock: &Path, file: &Path) -> QemuNbd {
        let listener = UnixListener::bind(sock).expect("bind the nbd socket");
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!(
                "LISTEN_PID=$$ LISTEN_FDS=1 exec {} -f raw -x disk --persistent --shared=4 {}",
                qemu_nbd.display(),
                file.display()
            ))
            .stdin(Stdio::null());
        // SAFETY: dup2 and fcntl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let r = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        QemuNbd {
            child: cmd.spawn().expect("start qemu-nbd"),
            _listener: listener,
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_forbidden_call_on_an_nbd_reader_is_refused_and_reported() {
    if !kvm_available("a_forbidden_call_on_an_nbd_reader_is_refused_and_reported") {
        return;
    }
    let Some(q) = need_qemu_nbd("a_forbidden_call_on_an_nbd_reader_is_refused_and_reported") else {
        return;
    };
    let f = Temp::with("nbd", &vec![3u8; MIB]);
    let sock = Temp::new("nbd-sock");
    let _srv = QemuNbd::start(&q, &sock.0, &f.0);
    let obj = format!("n=nbd+unix:///disk?socket={}", sock.show());
    let out = selftest("pager-reader", &obj, &[]);
    assert_refused(&out, "nbd-reader ");
}

#[test]
fn without_seccomp_the_same_call_goes_through_and_the_guest_finishes() {
    if !kvm_available("without_seccomp_the_same_call_goes_through_and_the_guest_finishes") {
        return;
    }
    let f = Temp::with("file", &vec![7u8; MIB]);
    let file_obj = format!("h=file:{}?ro", f.show());
    let sock = Temp::new("sock");
    let pager = AnonPager::new(MIB as u64, &OpenOptions::default()).expect("anon pager");
    support::serve_unix(&sock.0, Arc::new(pager));
    let unix_obj = format!("h=unix:{}", sock.show());
    for (kind, obj, thread) in [
        ("main", &file_obj, "main"),
        ("vcpu", &file_obj, "vcpu0"),
        ("pager-worker", &file_obj, "pager-worker-"),
        ("sync", &file_obj, "sync-"),
        ("pager-reader", &unix_obj, "unix-pager-reader"),
    ] {
        let out = selftest(kind, obj, &["--no-seccomp"]);
        assert_eq!(out.status, Some(0), "{kind}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stdout.contains("sum: h size=1048576"),
            "{kind}: {}",
            out.stdout
        );
        // The hook did run, and its call returned.
        let head = format!("vmm: seccomp self-test: thread {thread}");
        assert!(
            out.stderr.lines().any(
                |l| l.starts_with(&head) && l.ends_with("called socket(2) and was let through")
            ),
            "{kind}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("vmm: seccomp: thread"),
            "{}",
            out.stderr
        );
    }
}

/// The vCPU's filter lets `--kernel-profile` single-step the guest
/// (KVM_SET_GUEST_DEBUG, allowed only then), and nothing else more: the
/// vCPU's forbidden call is still refused while profiling.
#[test]
fn the_kernel_profiler_works_under_the_filters() {
    if !kvm_available("the_kernel_profiler_works_under_the_filters") {
        return;
    }
    let f = Temp::with("file", &vec![7u8; MIB]);
    let obj = format!("h=file:{}?ro", f.show());
    // sum's marks 1-2 bracket its hashing: page faults on the object.
    let out = vmm(
        &[
            "run",
            "--kernel-profile",
            "1",
            "--object",
            &obj,
            "--init",
            "sum",
            "h",
        ],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("sum: h size=1048576"), "{}", out.stdout);
    assert!(!out.stderr.contains("vmm: seccomp:"), "{}", out.stderr);
    let summary = out
        .stderr
        .lines()
        .find(|l| l.starts_with("vmm: kernel profile: from mark 1 to the next mark (once): "))
        .unwrap_or_else(|| panic!("no profile in:\n{}", out.stderr));
    assert!(!summary.contains(": 0 kernel instructions"), "{summary}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("% ") && l.contains(" dispatch [")),
        "{}",
        out.stderr
    );

    let out = selftest("vcpu", &obj, &["--kernel-profile", "1"]);
    assert_refused(&out, "vcpu0 ");
}

#[test]
fn help_documents_no_seccomp_and_hides_the_test_hook() {
    let out = vmm(&["run", "--help"], &[]);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("--no-seccomp"), "{}", out.stdout);
    assert!(out.stdout.contains("exit status 159"), "{}", out.stdout);
    assert!(!out.stdout.contains("seccomp-selftest"), "{}", out.stdout);
}
