//! The smallest userfaultfd a lazy-memory handler needs (what Firecracker
//! does for lazily restored guest memory): an anonymous region registered
//! in missing mode, and a handler thread that reads each faulting page from
//! a file and installs it with UFFDIO_COPY. Raw ioctls over the kernel's
//! UAPI (linux/userfaultfd.h): the `userfaultfd` crate generates its
//! bindings with bindgen at build time, which would make libclang a build
//! requirement of the whole VMM.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

const PAGE: usize = 4096;

const UFFD_API: u64 = 0xaa;
/// Only faults from user mode (Linux 5.11): lets an unprivileged process
/// use userfaultfd where `vm.unprivileged_userfaultfd` is 0.
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_COPY_BIT: u64 = 1 << 0x03;

/// `_IOWR(0xaa, nr, size)` / `_IOR(0xaa, nr, size)`.
const fn ioc(dir: u64, nr: u64, size: usize) -> libc::c_ulong {
    ((dir << 30) | ((size as u64) << 16) | (0xaa << 8) | nr) as libc::c_ulong
}
const READ_WRITE: u64 = 3;
const READ: u64 = 2;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

const UFFDIO_API: libc::c_ulong = ioc(READ_WRITE, 0x3f, size_of::<UffdioApi>());
const UFFDIO_REGISTER: libc::c_ulong = ioc(READ_WRITE, 0x00, size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: libc::c_ulong = ioc(READ, 0x01, size_of::<UffdioRange>());
const UFFDIO_COPY: libc::c_ulong = ioc(READ_WRITE, 0x03, size_of::<UffdioCopy>());
/// `struct uffd_msg`: event (u8) at 0, the fault address (u64) at 16.
const MSG_LEN: usize = 32;

fn os(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A page-aligned bounce buffer for UFFDIO_COPY's source.
#[repr(C, align(4096))]
struct Page([u8; PAGE]);

/// An anonymous region of `pages` pages whose missing pages are served from
/// `file` (page `i` from byte `i * 4096`) by a handler thread.
pub struct LazyRegion {
    base: *mut u8,
    len: usize,
    uffd: OwnedFd,
}

impl LazyRegion {
    pub fn new(pages: usize) -> io::Result<LazyRegion> {
        let len = pages.max(1) * PAGE;
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: the system call takes flags and returns a new fd or -1.
        let mut fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY) };
        if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // A kernel before 5.11: no user-mode-only flag.
            // SAFETY: as above.
            fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        }
        if fd < 0 {
            return Err(os("userfaultfd"));
        }
        // SAFETY: a fresh fd we own.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            ..Default::default()
        };
        // SAFETY: the ioctl reads and writes one `uffdio_api`.
        if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) } != 0 {
            return Err(os("UFFDIO_API"));
        }
        // SAFETY: a fresh private anonymous mapping, unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os("mmap"));
        }
        let region = LazyRegion {
            base: base as *mut u8,
            len,
            uffd,
        };
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: base as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: the ioctl reads and writes one `uffdio_register`.
        if unsafe { libc::ioctl(region.uffd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) } != 0 {
            return Err(os("UFFDIO_REGISTER"));
        }
        if reg.ioctls & UFFDIO_COPY_BIT == 0 {
            return Err(io::Error::other(
                "UFFDIO_COPY is not offered for the region",
            ));
        }
        Ok(region)
    }

    pub fn base(&self) -> *const u8 {
        self.base
    }

    /// Serves faults from `file` until `stop` is readable. On an error the
    /// region is unregistered first, so a thread blocked in a fault goes on
    /// (with a zero page, which the caller's checksum then catches) instead
    /// of hanging.
    pub fn serve(&self, file: &File, stop: &OwnedFd) -> io::Result<()> {
        let r = self.serve_loop(file, stop);
        if r.is_err() {
            let mut range = UffdioRange {
                start: self.base as u64,
                len: self.len as u64,
            };
            // SAFETY: the ioctl reads one `uffdio_range`; unregistering wakes
            // the blocked faults.
            unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_UNREGISTER, &mut range) };
        }
        r
    }

    fn serve_loop(&self, file: &File, stop: &OwnedFd) -> io::Result<()> {
        let mut page = Box::new(Page([0; PAGE]));
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(os("poll"));
            }
            if fds[1].revents != 0 {
                return Ok(());
            }
            let mut msg = [0u8; MSG_LEN];
            // SAFETY: reads at most MSG_LEN bytes into `msg`.
            let got =
                unsafe { libc::read(self.uffd.as_raw_fd(), msg.as_mut_ptr().cast(), MSG_LEN) };
            if got < 0 {
                match io::Error::last_os_error().kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => continue,
                    _ => return Err(os("read userfaultfd")),
                }
            }
            if got as usize != MSG_LEN || msg[0] != UFFD_EVENT_PAGEFAULT {
                continue;
            }
            let mut addr = [0u8; 8];
            addr.copy_from_slice(&msg[16..24]);
            let at = u64::from_le_bytes(addr) & !(PAGE as u64 - 1);
            let offset = at.wrapping_sub(self.base as u64);
            if offset >= self.len as u64 {
                return Err(io::Error::other(format!(
                    "fault at {at:#x} outside the region"
                )));
            }
            file.read_exact_at(&mut page.0, offset)?;
            let mut copy = UffdioCopy {
                dst: at,
                src: page.0.as_ptr() as u64,
                len: PAGE as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: the ioctl reads a page from our buffer into the
            // registered region and writes back `copy`.
            if unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_COPY, &mut copy) } != 0 {
                // EEXIST: the page arrived another way meanwhile; fine.
                if io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
                    return Err(os("UFFDIO_COPY"));
                }
            }
        }
    }
}

impl Drop for LazyRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; nothing refers to it after us.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

// SAFETY: the raw pointer is only an address: the handler thread hands it
// to the kernel, the toucher reads through it, and the mapping lives until
// Drop, after both are done (std::thread::scope).
unsafe impl Sync for LazyRegion {}
unsafe impl Send for LazyRegion {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi() {
        // From linux/userfaultfd.h on x86-64.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
    }
}
