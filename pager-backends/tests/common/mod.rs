//! Test helpers: a recording KernelControl, buffers, and real servers
//! (qemu-nbd, the procedural-pager binary) run as child processes.
#![allow(dead_code)]

pub mod tls;

use pager_backends::{
    Access, DataReply, KernelControl, KernelId, LockRequest, ObjectOffset, Pager, Result,
};
use std::io::{BufRead, BufReader};
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
    fn lock_request_with_reply(
        &self,
        offset: ObjectOffset,
        len: u64,
        req: LockRequest,
        cookie: u64,
    ) -> Result<()> {
        self.events.lock().unwrap().push(format!(
            "lock {offset} {len} {} {} {} reply {cookie}",
            req.lock.bits(),
            req.clean,
            req.flush
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
/// Reads 8 KiB at 64 KiB scattered over two buffers (5000 and 3192
/// bytes: the split falls inside a page) and checks them against `data`.
pub fn check_scatter_read(p: &dyn Pager, k: KernelId, data: &[u8]) {
    let (mut a, mut b) = (vec![0u8; 5000], vec![0u8; 3192]);
    let r = p
        .data_request(
            k,
            ObjectOffset(65536),
            8192,
            Access::READ,
            &[slice(&mut a), slice(&mut b)],
        )
        .unwrap();
    assert_eq!(
        r,
        DataReply::Provided {
            bytes: 8192,
            lock: Access::NONE
        }
    );
    assert_eq!([a, b].concat(), &data[65536..65536 + 8192]);
}

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
