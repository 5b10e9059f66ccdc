//! Test helpers: a recording KernelControl, buffers, and real servers
//! (qemu-nbd, the procedural-pager binary) run as child processes.
#![allow(dead_code)]

pub mod tls;

use pager_backends::{Access, KernelControl, ObjectOffset, Result};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use vm_memory::VolatileSlice;

/// Records what a pager told its kernel.
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<String>>,
}

impl KernelControl for Recorder {
    fn lock_request(
        &self,
        offset: ObjectOffset,
        len: u64,
        lock: Access,
        clean: bool,
        flush: bool,
    ) -> Result<()> {
        self.events.lock().unwrap().push(format!(
            "lock {offset} {len} {} {clean} {flush}",
            lock.bits()
        ));
        Ok(())
    }
    fn offer(&self, offset: ObjectOffset, data: &[u8], lock: Access) -> Result<()> {
        self.events.lock().unwrap().push(format!(
            "offer {offset} {} {} first={}",
            data.len(),
            lock.bits(),
            data[0]
        ));
        Ok(())
    }
    fn set_cache(&self, may_cache: bool) -> Result<()> {
        self.events
            .lock()
            .unwrap()
            .push(format!("cache {may_cache}"));
        Ok(())
    }
    fn destroy(&self, reason: &str) -> Result<()> {
        self.events
            .lock()
            .unwrap()
            .push(format!("destroy {reason}"));
        Ok(())
    }
}

pub fn slice(v: &mut [u8]) -> VolatileSlice<'_> {
    VolatileSlice::from(v)
}

/// Deterministic file content: byte i = (i * 7 + i / 4096) as u8.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(7) + i / 4096) as u8)
        .collect()
}

pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

/// A child process killed when dropped.
pub struct ChildGuard(pub Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn qemu_nbd_path() -> Option<PathBuf> {
    ["/usr/bin/qemu-nbd", "/usr/local/bin/qemu-nbd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Whether missing qemu-nbd must fail the test rather than skip it.
pub fn nbd_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("DUALITY_REQUIRE_NBD").is_ok_and(|v| v == "1")
}

/// Returns qemu-nbd's path, or None after printing a skip notice. Panics
/// (fails the test) when NBD is required (CI=true or DUALITY_REQUIRE_NBD=1).
pub fn need_qemu_nbd(test: &str) -> Option<PathBuf> {
    match qemu_nbd_path() {
        Some(p) => Some(p),
        None if nbd_required() => panic!(
            "{test}: qemu-nbd is not installed but CI/DUALITY_REQUIRE_NBD requires the NBD tests"
        ),
        None => {
            eprintln!(
                "SKIP {test}: qemu-nbd is not installed (apt-get install qemu-utils); set DUALITY_REQUIRE_NBD=1 to make this fatal"
            );
            None
        }
    }
}

/// A real qemu-nbd serving `file` as `export` on 127.0.0.1.
///
/// The listening socket is bound here (port 0: no race for a free port)
/// and handed to qemu-nbd by systemd-style socket activation, so clients
/// can connect immediately: the connection waits in the backlog.
pub struct NbdServer {
    pub port: u16,
    pub child: ChildGuard,
    _listener: TcpListener,
}

impl NbdServer {
    pub fn start(qemu_nbd: &Path, file: &Path, export: &str, read_only: bool) -> NbdServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        let ro = if read_only { " --read-only" } else { "" };
        cmd.arg("-c")
            .arg(format!(
                "LISTEN_PID=$$ LISTEN_FDS=1 exec {} -f raw -x {export} --persistent --shared=16{ro} {}",
                qemu_nbd.display(),
                file.display()
            ))
            .stdin(Stdio::null());
        // SAFETY: dup2/fcntl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        NbdServer {
            port,
            child: ChildGuard(child),
            _listener: listener,
        }
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }
}

/// A real qemu-nbd serving `file` as `export` on the Unix socket `socket`
/// (`qemu-nbd -k`). Returns once the socket accepts connections.
pub fn start_qemu_nbd_unix(
    qemu_nbd: &Path,
    file: &Path,
    export: &str,
    socket: &Path,
) -> ChildGuard {
    let child = Command::new(qemu_nbd)
        .args([
            "-f",
            "raw",
            "-x",
            export,
            "--persistent",
            "--shared=16",
            "-k",
        ])
        .arg(socket)
        .arg(file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let guard = ChildGuard(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "qemu-nbd did not listen on {} within 20 s",
            socket.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    guard
}

/// The example external pager binary, serving on `socket`. Returns once it
/// said "ready" (it is then accepting).
pub fn start_procedural(socket: &Path, size: u64, seed: u64) -> ChildGuard {
    let mut child = Command::new(env!("CARGO_BIN_EXE_procedural-pager"))
        .arg("--socket")
        .arg(socket)
        .arg("--size")
        .arg(size.to_string())
        .arg("--seed")
        .arg(seed.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("ready"), "procedural-pager said {line:?}");
    ChildGuard(child)
}
