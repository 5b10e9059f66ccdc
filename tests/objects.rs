//! Issue 7: guest programs read and write memory objects through the
//! virtio-pager device. `objsum` in the guest must agree with the host's
//! SHA-256 over every kind of pager (host file, qemu-nbd, an in-process
//! unix-socket pager, the example external pager process); `objfill` must
//! leave exactly its pattern in the host file; a silent or dead pager fails
//! only its own object, with an error line and without a hang; and a
//! hostile driver cannot wedge the device.

mod support;
use pager_backends::anon::AnonPager;
use pager_backends::file::FilePager;
use pager_backends::procedural::generate_page;
use pager_backends::{
    Access, DataReply, KernelControl, KernelId, LockRequest, ObjectInfo, ObjectOffset, OpenOptions,
    PAGE_SIZE, Pager, UnlockReply,
};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use support::hooked::{Control, Hooked, Hooks};
use support::{Output, Silent, kvm_available, need_qemu_nbd, vmm, vmm_watch};
use vm_memory::VolatileSlice;

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------
// Host-side helpers

/// A temporary path, unique in this process and across processes; the file
/// (or socket) is removed when dropped.
struct Temp(PathBuf);

impl Temp {
    fn new(what: &str) -> Temp {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("duality-objects-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        Temp(p)
    }
    /// A new temporary file holding `data`.
    fn with(what: &str, data: &[u8]) -> Temp {
        let t = Temp::new(what);
        std::fs::write(&t.0, data).expect("write temp file");
        t
    }
    fn path(&self) -> &Path {
        &self.0
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

/// Random-looking, reproducible bytes (xorshift64*), different per `seed`.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The host's own SHA-256 of a file (coreutils `sha256sum`), independent of
/// the guest's implementation.
fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    let s = String::from_utf8(out.stdout).expect("utf-8");
    let hex = s.split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(hex.len(), 64, "sha256sum said {s:?}");
    hex
}

fn sha256_bytes(data: &[u8]) -> String {
    let t = Temp::with("hash", data);
    sha256_file(t.path())
}

/// What `objsum NAME` printed on success: (size, sha256, requests).
fn objsum_result(out: &Output, name: &str) -> (u64, String, u64) {
    let prefix = format!("objsum: {name} size=");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| {
            panic!(
                "no objsum result for {name}:\n{}\nstderr:\n{}",
                out.stdout, out.stderr
            )
        });
    let field = |k: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .unwrap_or_else(|| panic!("no {k}= in {line:?}"))
            .to_string()
    };
    let num = |k: &str| -> u64 {
        field(k)
            .parse()
            .unwrap_or_else(|_| panic!("bad {k} in {line:?}"))
    };
    (num("size"), field("sha256"), num("requests"))
}

/// The error line `objsum NAME` printed: "objsum: NAME: WHAT: REASON".
fn objsum_error<'a>(out: &'a Output, name: &str) -> &'a str {
    let prefix = format!("objsum: {name}: ");
    out.stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| {
            panic!(
                "no objsum error line for {name}:\n{}\nstderr:\n{}",
                out.stdout, out.stderr
            )
        })
}

/// Runs `objsum NAME [CHUNK]` in a guest with `objects`, checks it exited 0
/// and returns (size, sha256, requests).
fn run_objsum(objects: &[String], name: &str, chunk: Option<&str>) -> (u64, String, u64) {
    let mut args = vec!["run"];
    for o in objects {
        args.extend(["--object", o.as_str()]);
    }
    args.extend(["--init", "objsum", name]);
    args.extend(chunk);
    let out = vmm(&args, &[]);
    assert_eq!(
        out.status,
        Some(0),
        "vmm {args:?}:\n{}{}",
        out.stdout,
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    objsum_result(&out, name)
}

/// objsum over a host file of `len` bytes equals `sha256sum` of the file,
/// in as many requests as CHUNK-sized pieces.
fn check_objsum_file(len: usize, chunk: Option<(&str, u64)>) {
    let f = Temp::with("sum", &content(len, len as u64 + 1));
    let expect = sha256_file(f.path());
    let obj = format!("h=file:{}", f.show());
    let (size, sha, requests) = run_objsum(&[obj], "h", chunk.map(|c| c.0));
    let chunk_bytes = chunk.map_or(MIB as u64, |c| c.1);
    assert_eq!(size, len as u64, "{len}-byte file");
    assert_eq!(sha, expect, "{len}-byte file, chunk {chunk:?}");
    assert_eq!(
        requests,
        (len as u64).div_ceil(chunk_bytes),
        "{len}-byte file, chunk {chunk:?}"
    );
}

/// A child process killed (and reaped) when dropped.
struct ChildGuard(Child);

impl ChildGuard {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

// --- qemu-nbd, as pager-backends/tests/common/mod.rs runs it ---------------

// --- the example external pager process ------------------------------------

/// The `procedural-pager` binary of pager-backends, built (once per test
/// run) with the profile this test was built with; cargo says where it is.
fn procedural_pager_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let vmm = Path::new(env!("CARGO_BIN_EXE_vmm"));
        let profile = vmm
            .parent()
            .and_then(Path::file_name)
            .and_then(|p| p.to_str())
            .unwrap_or("debug");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.arg("build")
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
            .args(["-p", "pager-backends", "--bin", "procedural-pager"])
            .args(["--message-format", "json"])
            .stdin(Stdio::null());
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        let out = cmd.output().expect("run cargo build for procedural-pager");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo build -p pager-backends --bin procedural-pager failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let exe = stdout
            .lines()
            .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
            .filter(|l| l.contains("\"name\":\"procedural-pager\""))
            .find_map(|l| {
                let rest = &l[l.find("\"executable\":\"")? + 14..];
                Some(PathBuf::from(&rest[..rest.find('"')?]))
            })
            .unwrap_or_else(|| {
                panic!("cargo did not name procedural-pager's executable:\n{stdout}")
            });
        assert!(exe.exists(), "{}", exe.display());
        exe
    })
}

/// Starts the procedural-pager process on `socket`; returns once it said
/// "ready" (it is then accepting).
fn start_procedural(socket: &Path, size: &str, seed: u64) -> ChildGuard {
    let mut child = Command::new(procedural_pager_bin())
        .arg("--socket")
        .arg(socket)
        .args(["--size", size, "--seed", &seed.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start procedural-pager");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read procedural-pager's first line");
    let child = ChildGuard(child);
    assert!(line.starts_with("ready"), "procedural-pager said {line:?}");
    child
}

/// What the procedural pager serves: its pages, concatenated.
fn procedural_content(seed: u64, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size);
    let mut page = [0u8; PAGE_SIZE as usize];
    for off in (0..size).step_by(PAGE_SIZE as usize) {
        generate_page(seed, off as u64, &mut page);
        v.extend_from_slice(&page);
    }
    v.truncate(size);
    v
}

// --- in-process unix-socket pagers -----------------------------------------

/// Serves `pager` on a fresh socket from a thread, for the rest of the test
/// process.
fn serve_in_process(what: &str, pager: Arc<dyn Pager>) -> Temp {
    let sock = Temp::new(what);
    support::serve_unix(sock.path(), pager);
    sock
}

// ---------------------------------------------------------------------------
// objsum over host files

#[test]
fn objsum_matches_sha256sum_for_small_and_odd_sizes() {
    if !kvm_available("objsum_matches_sha256sum_for_small_and_odd_sizes") {
        return;
    }
    for len in [0, 1, 4095, 4096, 4097, 3 * MIB] {
        check_objsum_file(len, None);
    }
}

#[test]
fn objsum_matches_sha256sum_for_64_mib() {
    if !kvm_available("objsum_matches_sha256sum_for_64_mib") {
        return;
    }
    check_objsum_file(64 * MIB, None);
}

#[test]
fn objsum_with_4k_and_64k_chunks() {
    if !kvm_available("objsum_with_4k_and_64k_chunks") {
        return;
    }
    check_objsum_file(MIB, Some(("4K", 4096)));
    check_objsum_file(MIB, Some(("64K", 65536)));
}

// ---------------------------------------------------------------------------
// objfill

/// objfill SEED over a `len`-byte file, then a clean shutdown: the file is
/// exactly the pattern, and as long as before.
fn check_objfill(len: usize, seed: u64) {
    let f = Temp::with("fill", &content(len, 99));
    let obj = format!("h=file:{}", f.show());
    let seed_s = seed.to_string();
    let out = vmm(
        &["run", "--object", &obj, "--init", "objfill", "h", &seed_s],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line(&format!("objfill: h size={len} seed={seed} written"))
            .is_some(),
        "{}",
        out.stdout
    );
    assert!(
        out.line("init exited with status 0").is_some(),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("sync failed"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    let got = std::fs::read(f.path()).expect("read back");
    let mut want = vec![0u8; len];
    guest_kernel::objfill_pattern::fill(seed, 0, &mut want);
    assert_eq!(got.len(), len, "the file's length changed");
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "{len}-byte file: first difference at byte {i}: {:#04x}, pattern {:#04x}",
            got[i], want[i]
        );
    }
}

#[test]
fn objfill_leaves_exactly_the_pattern() {
    if !kvm_available("objfill_leaves_exactly_the_pattern") {
        return;
    }
    check_objfill(10000, 77);
    check_objfill(2 * MIB + 12345, 0x5eed);
    check_objfill(64 * 1024, 1);
}

#[test]
fn objfill_on_a_read_only_object_is_refused() {
    if !kvm_available("objfill_on_a_read_only_object_is_refused") {
        return;
    }
    let before = content(10000, 5);
    let f = Temp::with("ro", &before);
    let obj = format!("h=file:{}?ro", f.show());
    let out = vmm(
        &["run", "--object", &obj, "--init", "objfill", "h", "3"],
        &[],
    );
    assert_eq!(out.status, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l == "objfill: h: write at 0: object is read-only"),
        "{}",
        out.stdout
    );
    assert!(out.line("written").is_none(), "{}", out.stdout);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(
        std::fs::read(f.path()).expect("read back") == before,
        "a read-only object's file changed"
    );
}

// ---------------------------------------------------------------------------
// objsum through other pagers

#[test]
fn objsum_through_nbd_against_qemu_nbd() {
    if !kvm_available("objsum_through_nbd_against_qemu_nbd") {
        return;
    }
    let Some(q) = need_qemu_nbd("objsum_through_nbd_against_qemu_nbd") else {
        return;
    };
    let len = 3 * MIB;
    let f = Temp::with("nbd", &content(len, 0xdb));
    let expect = sha256_file(f.path());
    let srv = support::tls::QemuNbd::start(&q, f.path(), "disk", None);
    let obj = format!("r={}", srv.uri("disk"));
    let (size, sha, requests) = run_objsum(std::slice::from_ref(&obj), "r", None);
    assert_eq!((size, sha.as_str(), requests), (len as u64, &*expect, 3));
    let (_, sha, requests) = run_objsum(&[obj], "r", Some("64K"));
    assert_eq!((sha.as_str(), requests), (&*expect, 48));
}

#[test]
fn objsum_through_unix_against_an_in_process_file_pager() {
    if !kvm_available("objsum_through_unix_against_an_in_process_file_pager") {
        return;
    }
    let len = MIB + 4097;
    let f = Temp::with("unixfile", &content(len, 0x51));
    let expect = sha256_file(f.path());
    let pager = FilePager::open(f.path(), true, &OpenOptions::default()).expect("file pager");
    let sock = serve_in_process("unixfile-sock", Arc::new(pager));
    let obj = format!("u=unix:{}", sock.show());
    let (size, sha, requests) = run_objsum(&[obj], "u", None);
    assert_eq!((size, sha.as_str(), requests), (len as u64, &*expect, 2));
}

#[test]
fn objsum_through_unix_against_the_procedural_pager_process() {
    if !kvm_available("objsum_through_unix_against_the_procedural_pager_process") {
        return;
    }
    let seed = 0x1234_5678;
    let sock = Temp::new("procedural-sock");
    let _pager = start_procedural(sock.path(), "1M", seed);
    let expect = sha256_bytes(&procedural_content(seed, MIB));
    let obj = format!("p=unix:{}", sock.show());
    let (size, sha, requests) = run_objsum(&[obj], "p", Some("64K"));
    assert_eq!((size, sha.as_str(), requests), (MIB as u64, &*expect, 16));
}

// ---------------------------------------------------------------------------
// Pagers that fail

#[test]
fn silent_pager_times_out_with_an_error_line() {
    if !kvm_available("silent_pager_times_out_with_an_error_line") {
        return;
    }
    let inner = AnonPager::new(MIB as u64, &OpenOptions::default()).expect("anon pager");
    let sock = serve_in_process("silent-sock", Arc::new(Silent::new(inner)));
    let obj = format!("q=unix:{}", sock.show());
    let out = vmm(
        &[
            "run",
            "--pager-timeout",
            "2",
            "--object",
            &obj,
            "--init",
            "objsum",
            "q",
        ],
        &[],
    );
    let line = objsum_error(&out, "q");
    assert!(line.contains("pager timed out"), "{line}");
    assert!(out.line("objsum: q size=").is_none(), "{}", out.stdout);
    assert!(
        out.line("init exited with status 1").is_some(),
        "{}",
        out.stdout
    );
    assert_eq!(out.status, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn killed_pager_process_fails_only_its_object() {
    if !kvm_available("killed_pager_process_fails_only_its_object") {
        return;
    }
    // a: the procedural pager process, far too big to be read before it is
    // killed; b: a host file.
    let sock = Temp::new("doomed-sock");
    let mut pager = start_procedural(sock.path(), "1G", 7);
    let b = Temp::with("survivor", &content(2 * MIB + 100, 0xb));
    let expect_b = sha256_file(b.path());
    let obj_a = format!("a=unix:{}", sock.show());
    let obj_b = format!("b=file:{}", b.show());
    let mut killed = false;
    let out = vmm_watch(
        &[
            "run", "--object", &obj_a, "--object", &obj_b, "--init", "spawn", "objsum:a",
            "objsum:b",
        ],
        &[],
        |line| {
            // Both readers are running: kill a's pager under it.
            if !killed && line.starts_with("spawn: started objsum:b") {
                pager.kill();
                killed = true;
            }
        },
    );
    assert!(killed, "spawn never started objsum:b:\n{}", out.stdout);
    let line = objsum_error(&out, "a");
    assert!(line.contains("pager failed"), "{line}");
    assert!(out.line("objsum: a size=").is_none(), "{}", out.stdout);
    let (size, sha, _) = objsum_result(&out, "b");
    assert_eq!((size, sha), ((2 * MIB + 100) as u64, expect_b));
    // spawn exits with the number of children that failed: a's.
    assert_eq!(out.status, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// A malicious driver

#[test]
fn hostile_driver_selftest_leaves_the_device_working() {
    if !kvm_available("hostile_driver_selftest_leaves_the_device_working") {
        return;
    }
    let f = Temp::with("hostile", &content(10000, 0x4));
    let obj = format!("a=file:{}", f.show());
    let out = vmm(
        &[
            "run",
            "--stats",
            "--cmdline",
            "selftest=hostile",
            "--object",
            &obj,
            "--init",
            "init",
        ],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    let st = out
        .line("selftest: hostile:")
        .unwrap_or_else(|| panic!("no selftest line:\n{}", out.stdout));
    let line = out.stdout.lines().nth(st).unwrap_or("");
    assert_eq!(
        line,
        "selftest: hostile: 7 malformed chains rejected, 1 device reset, normal request ok"
    );
    let hello = out
        .line("init: hello from user mode")
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(st < hello, "{}", out.stdout);
    assert!(
        out.line("init exited with status 0").is_some(),
        "{}",
        out.stdout
    );
    // The device itself counted what the guest says it sent.
    let stats = out
        .stderr
        .lines()
        .find(|l| l.starts_with("vmm: virtio-pager: "))
        .unwrap_or_else(|| panic!("no device stats: {}", out.stderr));
    assert!(stats.contains(" 7 rejected,"), "{stats}");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    // After the attack and the reset, the device still serves whole objects.
    let expect = sha256_file(f.path());
    let out = vmm(
        &[
            "run",
            "--cmdline",
            "selftest=hostile",
            "--object",
            &obj,
            "--init",
            "objsum",
            "a",
        ],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line("selftest: hostile: 7 malformed chains rejected")
            .is_some(),
        "{}",
        out.stdout
    );
    let (size, sha, _) = objsum_result(&out, "a");
    assert_eq!((size, sha), (10000, expect));
}

// ---------------------------------------------------------------------------
// pager-initiated calls reach the guest kernel

/// Hooks of a zero-fill pager that, at its first data request, speaks
/// first: a clean request (pager_data_lock with CLEAN), permission to
/// cache, and an offer of a page nobody asked for.
#[derive(Default)]
struct Speaker {
    control: Control,
    spoke: AtomicBool,
}

impl Hooks for Speaker {
    fn control(&self) -> Option<&Control> {
        Some(&self.control)
    }
    fn data_request(
        &self,
        inner: &dyn Pager,
        k: KernelId,
        o: ObjectOffset,
        len: u64,
        a: Access,
        b: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<DataReply> {
        if !self.spoke.swap(true, Ordering::SeqCst)
            && let Some(c) = self.control.get()
        {
            c.lock_request(ObjectOffset(8192), 4096, Access::WRITE, true, false)?;
            c.set_cache(true)?;
            c.offer(ObjectOffset(12288), &[7u8; 4096], Access::NONE)?;
        }
        inner.data_request(k, o, len, a, b)
    }
    fn describe(&self, _: &dyn Pager) -> String {
        "speaking test pager".into()
    }
}

/// Hooks of a file pager that provides every page write-locked (lock value
/// WRITE) and grants each data_unlock, counting them: writes through a
/// mapping must each ask first (paper §3.4.1).
struct WriteLocked {
    unlocks: AtomicU32,
    /// How it answers a data_unlock: grants it, or fails it.
    answer: UnlockAnswer,
}

#[derive(Clone, Copy)]
enum UnlockAnswer {
    Grant,
    /// An I/O error at once.
    Fail,
    /// No answer for 2 s (past the object's `timeout=`), then a grant.
    Late,
}

impl Hooks for WriteLocked {
    fn data_request(
        &self,
        inner: &dyn Pager,
        k: KernelId,
        o: ObjectOffset,
        len: u64,
        a: Access,
        b: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<DataReply> {
        Ok(match inner.data_request(k, o, len, a, b)? {
            DataReply::Provided { bytes, .. } => DataReply::Provided {
                bytes,
                lock: Access::WRITE,
            },
            other => other,
        })
    }
    fn data_unlock(
        &self,
        _: &dyn Pager,
        _: KernelId,
        _: ObjectOffset,
        _: u64,
        _: Access,
    ) -> pager_backends::Result<UnlockReply> {
        self.unlocks.fetch_add(1, Ordering::SeqCst);
        match self.answer {
            UnlockAnswer::Grant => {}
            UnlockAnswer::Fail => {
                return Err(pager_backends::PagerError::Io(std::io::Error::other(
                    "unlock refused",
                )));
            }
            UnlockAnswer::Late => std::thread::sleep(std::time::Duration::from_secs(2)),
        }
        Ok(UnlockReply { lock: Access::NONE })
    }
    fn describe(&self, _: &dyn Pager) -> String {
        "write-locking test pager".into()
    }
}

#[test]
fn a_host_pagers_lock_on_provided_data_holds_until_it_grants_the_unlock() {
    if !kvm_available("a_host_pagers_lock_on_provided_data_holds_until_it_grants_the_unlock") {
        return;
    }
    let len = 64 * 1024;
    let seed = 5;
    let f = Temp::with("locked", &content(len, 0x77));
    let pager = Arc::new(Hooked::new(
        FilePager::open(f.path(), false, &OpenOptions::default()).expect("file pager"),
        WriteLocked {
            unlocks: AtomicU32::new(0),
            answer: UnlockAnswer::Grant,
        },
    ));
    let sock = serve_in_process("locked-sock", pager.clone());
    let obj = format!("d=unix:{}", sock.show());
    let seed_s = seed.to_string();
    let out = vmm(
        &["run", "--object", &obj, "--init", "fill", "d", &seed_s],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line(&format!("fill: d seed={seed} wrote {len} bytes"))
            .is_some(),
        "{}",
        out.stdout
    );
    // Every page was read in locked against writing, so each first write
    // asked for the unlock; and the writes, once granted, reached the file.
    let unlocks = pager.hooks().unlocks.load(Ordering::SeqCst);
    assert!(
        unlocks >= (len / 4096) as u32,
        "{unlocks} unlocks for {} pages",
        len / 4096
    );
    let mut want = vec![0u8; len];
    guest_kernel::objfill_pattern::fill(seed, 0, &mut want);
    assert!(
        std::fs::read(f.path()).expect("read back") == want,
        "not exactly the pattern"
    );
}

/// Hooks of a file pager that, at the first data request past the
/// object's middle (the guest's `fill` writes in order, so every page
/// before it is dirty), asks for a clean of everything before it and a
/// flush of the last page, both with a reply, and holds that data request
/// until both completions came (so the guest cannot finish first). At the
/// clean's completion it checks that its file already holds what the guest
/// wrote there.
struct Completer {
    path: PathBuf,
    seed: u64,
    control: Control,
    asked: AtomicBool,
    /// (cookie, offset, length, file held the written data then).
    done: std::sync::Mutex<Vec<(u64, u64, u64, bool)>>,
    arrived: std::sync::Condvar,
}

const CLEAN_COOKIE: u64 = 0xc1ea;
const FLUSH_COOKIE: u64 = 0xf105;

impl Hooks for Completer {
    fn control(&self) -> Option<&Control> {
        Some(&self.control)
    }
    fn data_request(
        &self,
        inner: &dyn Pager,
        k: KernelId,
        o: ObjectOffset,
        len: u64,
        a: Access,
        b: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<DataReply> {
        let size = inner.extent()?;
        if o.raw() >= size / 2 && !self.asked.swap(true, Ordering::SeqCst) {
            let c = self.control.get().expect("init kept the control");
            let clean = LockRequest {
                lock: Access::NONE,
                clean: true,
                flush: false,
            };
            c.lock_request_with_reply(ObjectOffset(0), o.raw(), clean, CLEAN_COOKIE)?;
            let flush = LockRequest {
                lock: Access::NONE,
                clean: false,
                flush: true,
            };
            c.lock_request_with_reply(ObjectOffset(size - 4096), 4096, flush, FLUSH_COOKIE)?;
            let done = self.done.lock().unwrap();
            let (_done, wait) = self
                .arrived
                .wait_timeout_while(done, std::time::Duration::from_secs(60), |d| d.len() < 2)
                .unwrap();
            assert!(!wait.timed_out(), "no lock completion within 60 s");
        }
        inner.data_request(k, o, len, a, b)
    }
    fn lock_completed(
        &self,
        _: &dyn Pager,
        _: KernelId,
        offset: ObjectOffset,
        len: u64,
        cookie: u64,
    ) -> pager_backends::Result<()> {
        let (start, end) = (offset.raw() as usize, (offset.raw() + len) as usize);
        let mut want = vec![0u8; end];
        guest_kernel::objfill_pattern::fill(self.seed, 0, &mut want);
        let file = std::fs::read(&self.path).unwrap_or_default();
        let holds = file.get(start..end) == Some(&want[start..end]);
        self.done
            .lock()
            .unwrap()
            .push((cookie, offset.raw(), len, holds));
        self.arrived.notify_all();
        Ok(())
    }
    fn describe(&self, _: &dyn Pager) -> String {
        "lock-completion test pager".into()
    }
}

#[test]
fn a_clean_with_reply_completes_after_its_writes_reach_the_pager() {
    if !kvm_available("a_clean_with_reply_completes_after_its_writes_reach_the_pager") {
        return;
    }
    let len = 64 * 1024;
    let seed = 11;
    let f = Temp::with("completer", &content(len, 0x55));
    let pager = Arc::new(Hooked::new(
        FilePager::open(f.path(), false, &OpenOptions::default()).expect("file pager"),
        Completer {
            path: f.path().to_path_buf(),
            seed,
            control: Default::default(),
            asked: Default::default(),
            done: Default::default(),
            arrived: Default::default(),
        },
    ));
    let sock = serve_in_process("completer-sock", pager.clone());
    let obj = format!("d=unix:{}", sock.show());
    let seed_s = seed.to_string();
    let out = vmm(
        &["run", "--object", &obj, "--init", "fill", "d", &seed_s],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    let done = pager.hooks().done.lock().unwrap().clone();
    assert_eq!(done.len(), 2, "{done:?}\n{}", out.stdout);
    let clean = done
        .iter()
        .find(|d| d.0 == CLEAN_COOKIE)
        .expect("clean completed");
    assert_eq!(clean.1, 0);
    assert!(clean.2 >= len as u64 / 2, "{clean:?}");
    assert!(
        clean.3,
        "the file did not yet hold the cleaned pages at completion"
    );
    let flush = done
        .iter()
        .find(|d| d.0 == FLUSH_COOKIE)
        .expect("flush completed");
    assert_eq!((flush.1, flush.2), (len as u64 - 4096, 4096));
    assert!(
        out.line(&format!("fill: d seed={seed} wrote {len} bytes"))
            .is_some(),
        "{}",
        out.stdout
    );
}

/// A data_unlock that fails (an error, or no answer within the object's
/// timeout) ends the writing thread's fault in a memory exception, as a
/// failed data_request does; it must not ask again and again forever.
fn check_unlock_failure(answer: UnlockAnswer, query: &str) {
    let len = 16 * 1024;
    let original = content(len, 0x78);
    let f = Temp::with("unlock-fails", &original);
    let pager = Arc::new(Hooked::new(
        FilePager::open(f.path(), false, &OpenOptions::default()).expect("file pager"),
        WriteLocked {
            unlocks: AtomicU32::new(0),
            answer,
        },
    ));
    let sock = serve_in_process("unlock-fails-sock", pager.clone());
    let obj = format!("d=unix:{}{query}", sock.show());
    let out = vmm(
        &[
            "run", "--stats", "--object", &obj, "--init", "fill", "d", "3",
        ],
        &[],
    );
    assert!(out.line("fill: d seed=3 wrote").is_none(), "{}", out.stdout);
    assert!(out.line("(fill) killed").is_some(), "{}", out.stdout);
    assert_ne!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    // The first write asked once; the failure ended it.
    let unlocks = pager.hooks().unlocks.load(Ordering::SeqCst);
    assert_eq!(unlocks, 1, "{unlocks} unlocks:\n{}", out.stdout);
    assert!(std::fs::read(f.path()).expect("read back") == original);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn a_failed_unlock_is_a_memory_exception_not_a_loop() {
    if !kvm_available("a_failed_unlock_is_a_memory_exception_not_a_loop") {
        return;
    }
    check_unlock_failure(UnlockAnswer::Fail, "");
}

#[test]
fn an_unlock_that_times_out_is_a_memory_exception_once() {
    if !kvm_available("an_unlock_that_times_out_is_a_memory_exception_once") {
        return;
    }
    check_unlock_failure(UnlockAnswer::Late, "?timeout=500ms&on_timeout=error");
}

/// Hooks of a file pager that, at its first data request, permits caching
/// (pager_cache): its object outlives its last mapping, dirty pages and all.
#[derive(Default)]
struct Caching {
    control: Control,
    said: AtomicBool,
}

impl Hooks for Caching {
    fn control(&self) -> Option<&Control> {
        Some(&self.control)
    }
    fn data_request(
        &self,
        inner: &dyn Pager,
        k: KernelId,
        o: ObjectOffset,
        len: u64,
        a: Access,
        b: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<DataReply> {
        if !self.said.swap(true, Ordering::SeqCst)
            && let Some(c) = self.control.get()
        {
            c.set_cache(true)?;
        }
        inner.data_request(k, o, len, a, b)
    }
    fn describe(&self, _: &dyn Pager) -> String {
        "caching test pager".into()
    }
}

/// A host object its pager lets the kernel cache stays cached, dirty
/// pages included, after `fill` unmaps it; clean shutdown must still write
/// those pages back.
#[test]
fn a_cached_objects_dirty_pages_are_written_back_at_shutdown() {
    if !kvm_available("a_cached_objects_dirty_pages_are_written_back_at_shutdown") {
        return;
    }
    let len = MIB;
    let seed = 12;
    let f = Temp::with("cached", &content(len, 0x3c));
    let pager = Hooked::new(
        FilePager::open(f.path(), false, &OpenOptions::default()).expect("file pager"),
        Caching::default(),
    );
    let sock = serve_in_process("cached-sock", Arc::new(pager));
    let obj = format!("c=unix:{}", sock.show());
    let seed_s = seed.to_string();
    let out = vmm(
        &[
            "run", "--stats", "--object", &obj, "--init", "fill", "c", &seed_s,
        ],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line(&format!("fill: c seed={seed} wrote {len} bytes"))
            .is_some(),
        "{}",
        out.stdout
    );
    // The permission reached the object (else this proves nothing).
    assert_eq!(vm_statistics(&out)["pager_events"], 1, "{}", out.stdout);
    let mut want = vec![0u8; len];
    guest_kernel::objfill_pattern::fill(seed, 0, &mut want);
    assert!(
        std::fs::read(f.path()).expect("read back") == want,
        "not exactly the pattern:\n{}{}",
        out.stdout,
        out.stderr
    );
}

/// Hooks of a file pager that destroys its object (pager_destroy) at its
/// second data request, then answers it: by then the task has modified the
/// pages of the first.
#[derive(Default)]
struct Destroyer {
    control: Control,
    requests: AtomicU32,
}

impl Hooks for Destroyer {
    fn control(&self) -> Option<&Control> {
        Some(&self.control)
    }
    fn data_request(
        &self,
        inner: &dyn Pager,
        k: KernelId,
        o: ObjectOffset,
        len: u64,
        a: Access,
        b: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<DataReply> {
        if self.requests.fetch_add(1, Ordering::SeqCst) == 1
            && let Some(c) = self.control.get()
        {
            c.destroy("test: the pager ends the object")?;
        }
        inner.data_request(k, o, len, a, b)
    }
    fn describe(&self, _: &dyn Pager) -> String {
        "destroying test pager".into()
    }
}

/// A pager destroys its object while it has modified pages: they are kept
/// by the default pager (double paging); when the object then ends, they
/// are lost, and vm_statistics must say so.
#[test]
fn dirty_pages_of_a_dead_object_that_ends_are_counted_lost() {
    if !kvm_available("dirty_pages_of_a_dead_object_that_ends_are_counted_lost") {
        return;
    }
    let len = MIB;
    let original = content(len, 0x5d);
    let f = Temp::with("destroyed", &original);
    let pager = Hooked::new(
        FilePager::open(f.path(), false, &OpenOptions::default()).expect("file pager"),
        Destroyer::default(),
    );
    let sock = serve_in_process("destroyed-sock", Arc::new(pager));
    let obj = format!("x=unix:{}", sock.show());
    let out = vmm(
        &[
            "run", "--stats", "--object", &obj, "--init", "fill", "x", "4",
        ],
        &[],
    );
    assert!(out.line("fill: x seed=4 wrote").is_none(), "{}", out.stdout);
    assert!(
        out.line("destroyed by its pager, object dead").is_some(),
        "{}",
        out.stdout
    );
    let vm = vm_statistics(&out);
    assert_eq!(vm["dead_objects"], 1, "{}", out.stdout);
    // The destroy's flush took the modified pages to the default pager
    // (not to the dead pager, where every write failed), and they were
    // lost with the object when the task died.
    assert_eq!(vm["failed_writes"], 0, "{}", out.stdout);
    assert!(vm["swap_outs"] >= 1, "{}", out.stdout);
    assert!(vm["lost_pages"] >= 1, "{}", out.stdout);
    // Nothing reached the file behind the dead pager's back.
    assert!(std::fs::read(f.path()).expect("read back") == original);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

/// A pager that answers each data request only after a pause, counting
/// them.
struct Slow {
    requests: AtomicU32,
}

impl Hooks for Slow {
    fn data_request(
        &self,
        inner: &dyn Pager,
        k: KernelId,
        o: ObjectOffset,
        len: u64,
        a: Access,
        b: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<DataReply> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        // Far past the guest's pause before it terminates the reader,
        // within the object's 5 s timeout.
        std::thread::sleep(std::time::Duration::from_secs(3));
        inner.data_request(k, o, len, a, b)
    }
}

/// A thread terminated while its object read is in flight: it cannot be
/// resumed, never runs again, and its task ends when the read completes
/// and the other thread is gone (the completion used to revive it, and
/// the task never ended).
#[test]
fn a_thread_terminated_during_its_object_read_ends_at_the_completion() {
    if !kvm_available("a_thread_terminated_during_its_object_read_ends_at_the_completion") {
        return;
    }
    let inner = AnonPager::new(MIB as u64, &OpenOptions::default()).expect("anon pager");
    let pager = Arc::new(Hooked::new(
        inner,
        Slow {
            requests: AtomicU32::new(0),
        },
    ));
    let sock = serve_in_process("slow-sock", pager.clone());
    let obj = format!("s=unix:{}", sock.show());
    let out = vmm(
        &[
            "run",
            "--object",
            &obj,
            "--init",
            "vmtest",
            "terminate-io",
            "s",
        ],
        &[],
    );
    assert!(
        out.line("vmtest: terminate-io: ok").is_some(),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.line("init exited with status 0").is_some(),
        "{}",
        out.stdout
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    // The read was in flight when the thread was terminated: it reached
    // the pager (a thread terminated before its read never sends it).
    assert_eq!(pager.hooks().requests.load(Ordering::SeqCst), 1);
}

/// The numbers of the guest's `vm_statistics` line (`--stats`).
fn vm_statistics(out: &Output) -> std::collections::HashMap<String, u64> {
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("vm_statistics: "))
        .unwrap_or_else(|| panic!("no vm_statistics line:\n{}", out.stdout));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// The `key=value` numbers of object `name`'s `events` row in `--stats`.
fn host_events(out: &Output, name: &str) -> std::collections::HashMap<String, u64> {
    let head = format!("vmm: object {name} (");
    let mut lines = out.stderr.lines().skip_while(|l| !l.starts_with(&head));
    lines.next();
    let row = lines
        .take_while(|l| l.starts_with("vmm:   "))
        .find_map(|l| {
            l.trim_start_matches("vmm:")
                .trim_start()
                .strip_prefix("events")
        })
        .unwrap_or_else(|| panic!("no events row for {name}:\n{}", out.stderr));
    row.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

#[test]
fn pager_initiated_calls_are_applied_by_the_guest_vm() {
    if !kvm_available("pager_initiated_calls_are_applied_by_the_guest_vm") {
        return;
    }
    let pager = Hooked::new(
        AnonPager::new(2 * MIB as u64, &OpenOptions::default()).expect("anon pager"),
        Speaker::default(),
    );
    let sock = serve_in_process("speaker-sock", Arc::new(pager));
    let obj = format!("s=unix:{}", sock.show());
    let out = vmm(
        &["run", "--stats", "--object", &obj, "--init", "sum", "s"],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    // The clean request, the cache permission and the pushed page each
    // became a call on the mapped object (none ignored).
    let vm = vm_statistics(&out);
    assert_eq!(vm["pager_events"], 3, "{vm:?}");
    assert_eq!(vm["events_ignored"], 0, "{vm:?}");
    assert_eq!(vm["pages_pushed"], 1, "{vm:?}");
    let host = host_events(&out, "s");
    assert_eq!(
        (
            host["lock_request"],
            host["cache"],
            host["data_provided"],
            host["refused"]
        ),
        (1, 1, 1, 0),
        "{host:?}"
    );
    // The pushed page is the object's data from then on: the pager sent it
    // before answering the first fault, so whether that fault's window
    // covered it or not, the task reads it (the rest is zeros).
    let mut expect = vec![0u8; 2 * MIB];
    expect[0x3000..0x4000].fill(7);
    assert_eq!(
        sum_result(&out, "s"),
        (2 * MIB as u64, sha256_bytes(&expect))
    );
}

/// Hooks of a file pager whose control handle, from INIT on, floods the
/// kernel with pushed pages (the file's own data, so what the guest reads
/// stays right) and flush and clean requests over the whole object, and
/// never stops while the object lives: refusals only slow it down.
struct Flood {
    data: Arc<Vec<u8>>,
}

impl Hooks for Flood {
    fn init(
        &self,
        inner: &dyn Pager,
        k: KernelId,
        c: Arc<dyn KernelControl>,
    ) -> pager_backends::Result<ObjectInfo> {
        let info = inner.init(k, c.clone())?;
        let data = self.data.clone();
        std::thread::spawn(move || {
            let pages = (data.len() as u64).div_ceil(PAGE_SIZE).max(1);
            let mut page = vec![0u8; PAGE_SIZE as usize];
            for i in 0u64.. {
                let off = (i * 7919 % pages) * PAGE_SIZE;
                let start = off as usize;
                let end = (start + PAGE_SIZE as usize).min(data.len());
                page.fill(0);
                page[..end - start].copy_from_slice(&data[start..end]);
                let size = pages * PAGE_SIZE;
                let r = match i % 3 {
                    0 => c.offer(ObjectOffset(off), &page, Access::NONE),
                    1 => c.lock_request(ObjectOffset(0), size, Access::NONE, false, true),
                    _ => c.lock_request(ObjectOffset(0), size, Access::NONE, true, false),
                };
                match r {
                    Ok(()) => {}
                    // The object is gone (terminated at shutdown).
                    Err(e) if e.to_string().contains("no longer") => return,
                    Err(_) => std::thread::sleep(std::time::Duration::from_micros(200)),
                }
            }
        });
        Ok(info)
    }
    fn describe(&self, _: &dyn Pager) -> String {
        "flooding test pager".into()
    }
}

#[test]
fn a_pager_flooding_events_and_pages_is_capped_and_the_guest_goes_on() {
    if !kvm_available("a_pager_flooding_events_and_pages_is_capped_and_the_guest_goes_on") {
        return;
    }
    let len = 2 * MIB + 300;
    let flood_file = Temp::with("flood", &content(len, 0xf1));
    let data = Arc::new(std::fs::read(flood_file.path()).expect("read back"));
    let inner =
        FilePager::open(flood_file.path(), false, &OpenOptions::default()).expect("file pager");
    let sock = serve_in_process("flood-sock", Arc::new(Hooked::new(inner, Flood { data })));
    let quiet = Temp::with("quiet", &content(MIB + 17, 0x9e));
    let out = vmm(
        &[
            "run",
            "--stats",
            "--object",
            &format!("flood=unix:{}", sock.show()),
            "--object",
            &format!("quiet=file:{}?ro", quiet.show()),
            "--init",
            "spawn",
            "sum:flood",
            "sum:quiet",
        ],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    // Both objects read right: the flood neither corrupts its own object
    // (its pushed pages are its data) nor starves the other.
    assert_eq!(
        sum_result(&out, "flood"),
        (len as u64, sha256_file(flood_file.path()))
    );
    assert_eq!(
        sum_result(&out, "quiet"),
        ((MIB + 17) as u64, sha256_file(quiet.path()))
    );
    // Capped on both sides: the guest took events in budgets (and left the
    // rest waiting), the device refused the pager once its share was full.
    let vm = vm_statistics(&out);
    assert!(vm["pager_events"] > 0, "{vm:?}");
    assert!(vm["events_deferred"] > 0, "{vm:?}");
    let host = host_events(&out, "flood");
    assert!(host["refused"] > 0, "{host:?}");
    assert_eq!(host_events(&out, "quiet")["refused"], 0);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// Objects by name, mapped: sum, fill, cat (the name server publishes each
// --object; the task maps it and faults its pages in through the device)

/// `(size, sha256)` from `sum NAME`'s line.
fn sum_result(out: &Output, name: &str) -> (u64, String) {
    let prefix = format!("sum: {name} size=");
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no sum line for {name}:\n{}{}", out.stdout, out.stderr));
    let (size, sha) = line.split_once(" sha256=").expect("sum line shape");
    (size.parse().expect("size"), sha.to_string())
}

fn run_sum(extra: &[&str], objects: &[String], name: &str) -> Output {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    for o in objects {
        args.extend_from_slice(&["--object", o]);
    }
    args.extend_from_slice(&["--init", "sum", name]);
    let out = vmm(&args, &[]);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    out
}

#[test]
fn sum_maps_host_files_of_odd_sizes_and_matches_sha256sum() {
    if !kvm_available("sum_maps_host_files_of_odd_sizes_and_matches_sha256sum") {
        return;
    }
    for len in [0, 1, 4095, 4097, 3 * MIB + 5] {
        let f = Temp::with("sum", &content(len, len as u64 ^ 0x5a));
        let out = run_sum(&[], &[format!("d=file:{}?ro", f.show())], "d");
        assert_eq!(
            sum_result(&out, "d"),
            (len as u64, sha256_file(f.path())),
            "{len} bytes"
        );
    }
}

/// Four times the guest's memory: clean pages are evicted as the sum goes.
#[test]
fn sum_of_an_object_four_times_guest_memory() {
    if !kvm_available("sum_of_an_object_four_times_guest_memory") {
        return;
    }
    let len = 64 * MIB;
    let f = Temp::with("sum-big", &content(len, 0xb19));
    let out = run_sum(&["--mem", "16M"], &[format!("d=file:{}?ro", f.show())], "d");
    assert_eq!(sum_result(&out, "d"), (len as u64, sha256_file(f.path())));
}

/// `fill` over a file of `len` bytes; with `keep` the task's end, not
/// vm_deallocate, removes the mapping.
fn check_fill(len: usize, seed: u64, mem: Option<&str>, keep: bool) {
    let f = Temp::with("fill", &content(len, seed + 1));
    let obj = format!("d=file:{}", f.show());
    let seed_s = seed.to_string();
    let mut args = vec!["run"];
    if let Some(m) = mem {
        args.extend_from_slice(&["--mem", m, "--stats"]);
    }
    args.extend_from_slice(&["--object", &obj, "--init", "fill", "d", &seed_s]);
    if keep {
        args.push("keep");
    }
    let out = vmm(&args, &[]);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line(&format!("fill: d seed={seed} wrote {len} bytes"))
            .is_some(),
        "{}",
        out.stdout
    );
    let got = std::fs::read(f.path()).expect("read back");
    let mut want = vec![0u8; len];
    guest_kernel::objfill_pattern::fill(seed, 0, &mut want);
    assert_eq!(got.len(), len, "the file's length changed");
    assert!(got == want, "{len} bytes: not exactly the pattern");
    if mem.is_some() {
        // Larger than memory: pages went back on pageout, before the end.
        let stats = out.stdout.lines().find(|l| l.starts_with("vm_statistics:"));
        let pages_out = stats
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("pages_out="))
            })
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(pages_out >= (len / 4096) as u64, "{stats:?}");
    }
}

#[test]
fn fill_then_shutdown_leaves_exactly_the_pattern() {
    if !kvm_available("fill_then_shutdown_leaves_exactly_the_pattern") {
        return;
    }
    check_fill(10_000, 3, None, false);
    check_fill(MIB + 123, 4, None, false);
    check_fill(200_000, 9, None, true);
}

/// A pattern larger than the guest's memory: data_write on pageout.
#[test]
fn fill_larger_than_guest_memory_writes_back_on_pageout() {
    if !kvm_available("fill_larger_than_guest_memory_writes_back_on_pageout") {
        return;
    }
    check_fill(24 * MIB, 5, Some("16M"), false);
}

#[test]
fn read_only_object_refuses_a_writable_mapping() {
    if !kvm_available("read_only_object_refuses_a_writable_mapping") {
        return;
    }
    let before = content(9000, 8);
    let f = Temp::with("fill-ro", &before);
    let obj = format!("d=file:{}?ro", f.show());
    let out = vmm(&["run", "--object", &obj, "--init", "fill", "d", "1"], &[]);
    assert_eq!(out.status, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line("fill: d: the object is read-only: it cannot be mapped writable")
            .is_some(),
        "{}",
        out.stdout
    );
    assert!(std::fs::read(f.path()).expect("read back") == before);
}

#[test]
fn unknown_names_and_the_swap_object_are_not_found() {
    if !kvm_available("unknown_names_and_the_swap_object_are_not_found") {
        return;
    }
    let f = Temp::with("names", b"x");
    let obj = format!("d=file:{}?ro", f.show());
    for name in ["nope", "swap"] {
        let out = vmm(&["run", "--object", &obj, "--init", "sum", name], &[]);
        assert_eq!(out.status, Some(1), "{}{}", out.stdout, out.stderr);
        let want = format!("sum: {name}: no such object (not published by the name server)");
        assert!(out.line(&want).is_some(), "{}", out.stdout);
    }
}

#[test]
fn cat_prints_an_object() {
    if !kvm_available("cat_prints_an_object") {
        return;
    }
    let f = Temp::with("cat", b"one line\nand another\n");
    let obj = format!("t=file:{}?ro", f.show());
    let out = vmm(&["run", "--object", &obj, "--init", "cat", "t"], &[]);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("one line\nand another\n"),
        "{}",
        out.stdout
    );
    let out = vmm(&["run", "--object", &obj, "--init", "cat", "t", "3"], &[]);
    assert!(out.stdout.contains("oneinit exited"), "{}", out.stdout);
}

#[test]
fn sum_and_fill_through_nbd_against_qemu_nbd() {
    if !kvm_available("sum_and_fill_through_nbd_against_qemu_nbd") {
        return;
    }
    let Some(q) = need_qemu_nbd("sum_and_fill_through_nbd_against_qemu_nbd") else {
        return;
    };
    let len = 3 * MIB + 4096;
    let f = Temp::with("nbd-map", &content(len, 0xdc));
    let expect = sha256_file(f.path());
    let srv = support::tls::QemuNbd::start(&q, f.path(), "disk", None);
    let obj = format!("r={}", srv.uri("disk"));
    let out = run_sum(&[], std::slice::from_ref(&obj), "r");
    assert_eq!(sum_result(&out, "r"), (len as u64, expect));
    let out = vmm(&["run", "--object", &obj, "--init", "fill", "r", "6"], &[]);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    let mut want = vec![0u8; len];
    guest_kernel::objfill_pattern::fill(6, 0, &mut want);
    assert!(std::fs::read(f.path()).expect("read back") == want);
}

/// The same over TLS: `nbds://` with a CA made for the test, qemu-nbd
/// serving with its certificate.
#[test]
fn sum_and_fill_through_nbds_against_qemu_nbd_over_tls() {
    if !kvm_available("sum_and_fill_through_nbds_against_qemu_nbd_over_tls") {
        return;
    }
    let Some(q) = need_qemu_nbd("sum_and_fill_through_nbds_against_qemu_nbd_over_tls") else {
        return;
    };
    use support::tls::{CertDir, QemuNbd, QemuTls, Role, TestCa, client_dir, server_dir};
    let len = 3 * MIB + 4096;
    let f = Temp::with("nbds-map", &content(len, 0xdd));
    let expect = sha256_file(f.path());
    let dir = CertDir::new("objects-nbds");
    let ca = TestCa::new("Duality test CA");
    let server = server_dir(
        &dir.0.join("server"),
        &ca,
        &ca.issue(&["127.0.0.1"], Role::Server),
    );
    let client = client_dir(&dir.0.join("client"), &ca, None);
    let tls = QemuTls {
        creds: &server,
        verify_clients: false,
    };
    let srv = QemuNbd::start(&q, f.path(), "disk", Some(&tls));
    let obj = format!(
        "r=nbds://127.0.0.1:{}/disk?tls-certificates={}",
        srv.port,
        client.display()
    );
    let out = run_sum(&[], std::slice::from_ref(&obj), "r");
    assert_eq!(sum_result(&out, "r"), (len as u64, expect));
    let out = vmm(&["run", "--object", &obj, "--init", "fill", "r", "7"], &[]);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    let mut want = vec![0u8; len];
    guest_kernel::objfill_pattern::fill(7, 0, &mut want);
    assert!(std::fs::read(f.path()).expect("read back") == want);
}

#[test]
fn sum_through_unix_against_the_procedural_pager_process() {
    if !kvm_available("sum_through_unix_against_the_procedural_pager_process") {
        return;
    }
    let seed = 0x77;
    let sock = Temp::new("procedural-map");
    let _pager = start_procedural(sock.path(), "2M", seed);
    let expect = sha256_bytes(&procedural_content(seed, 2 * MIB));
    let out = run_sum(&[], &[format!("p=unix:{}", sock.show())], "p");
    assert_eq!(sum_result(&out, "p"), ((2 * MIB) as u64, expect));
}

/// A silent external pager under each policy: `error` ends in a memory
/// exception for the faulting task (reported once by the kernel), `zero`
/// in zero-filled pages; the VMM exits cleanly either way.
#[test]
fn silent_pager_policy_error_raises_and_zero_fills() {
    if !kvm_available("silent_pager_policy_error_raises_and_zero_fills") {
        return;
    }
    let size = 64 * 1024;
    let inner = AnonPager::new(size as u64, &OpenOptions::default()).expect("anon pager");
    let sock = serve_in_process("silent-map", Arc::new(Silent::new(inner)));
    let obj = format!("q=unix:{}?timeout=500ms&on_timeout=error", sock.show());
    let out = vmm(
        &["run", "--stats", "--object", &obj, "--init", "sum", "q"],
        &[],
    );
    assert!(out.line("sum: q size=").is_none(), "{}", out.stdout);
    assert!(out.line("(sum) killed").is_some(), "{}", out.stdout);
    assert!(
        out.line("a data_request timed out").is_some(),
        "{}",
        out.stdout
    );
    assert_ne!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    // One page, one request: each request waits out the timeout, and a
    // pager that leaves a quarter of the client's request slots
    // unanswered is given up on (then dead, not zero).
    let page = 4096;
    let inner = AnonPager::new(page as u64, &OpenOptions::default()).expect("anon pager");
    let sock = serve_in_process("silent-zero", Arc::new(Silent::new(inner)));
    let obj = format!("q=unix:{}?timeout=500ms&on_timeout=zero", sock.show());
    let out = vmm(&["run", "--object", &obj, "--init", "sum", "q"], &[]);
    assert_eq!(
        sum_result(&out, "q"),
        (page as u64, sha256_bytes(&vec![0; page]))
    );
}

#[test]
fn killed_pager_makes_its_mapped_object_dead_and_the_other_works() {
    if !kvm_available("killed_pager_makes_its_mapped_object_dead_and_the_other_works") {
        return;
    }
    let sock = Temp::new("doomed-map");
    let mut pager = start_procedural(sock.path(), "1G", 9);
    let b = Temp::with("survivor-map", &content(2 * MIB + 100, 0xc));
    let expect_b = sha256_file(b.path());
    let obj_a = format!("a=unix:{}", sock.show());
    let obj_b = format!("b=file:{}?ro", b.show());
    let (mut killed, mut mapped, mut b_started) = (false, false, false);
    let out = vmm_watch(
        &[
            "run", "--stats", "--object", &obj_a, "--object", &obj_b, "--init", "spawn", "sum:a",
            "sum:b",
        ],
        &[],
        |line| {
            // a is published and mapped (its pager was reached), and both
            // readers are running: kill the pager under it. (Killed before
            // the name server published a, the object would never exist.)
            mapped |= line.starts_with("sum: a: ");
            b_started |= line.starts_with("spawn: started sum:b");
            if !killed && mapped && b_started {
                pager.kill();
                killed = true;
            }
        },
    );
    assert!(killed, "a was never mapped:\n{}", out.stdout);
    assert!(out.line("sum: a size=").is_none(), "{}", out.stdout);
    assert!(
        out.line("pager failed, object dead").is_some(),
        "{}",
        out.stdout
    );
    assert_eq!(sum_result(&out, "b"), ((2 * MIB + 100) as u64, expect_b));
    assert!(out.line("dead_objects=1").is_some(), "{}", out.stdout);
    assert_eq!(out.status, Some(1), "{}{}", out.stdout, out.stderr);
}
