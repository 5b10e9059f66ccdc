//! Scatter-gather I/O straight into and out of caller-provided
//! `VolatileSlice` lists (guest frames, typically).
//!
//! Every backend moves page data with `preadv`/`pwritev`/`readv`/`writev`
//! on the slices' raw pointers, so there is no bounce buffer and no heap
//! allocation: iovec batches live on the stack.

use std::io;
use std::os::fd::RawFd;
use vm_memory::VolatileSlice;

/// iovecs per syscall; more segments are handled in further batches.
const IOV_BATCH: usize = 32;

/// Total bytes the caller offered.
pub(crate) fn total_len(bufs: &[VolatileSlice<'_>]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

/// A position inside a scatter list, bounded to a byte count.
pub(crate) struct Cursor<'a, 'b> {
    bufs: &'a [VolatileSlice<'b>],
    idx: usize,
    off: usize,
    remaining: u64,
}

impl<'a, 'b> Cursor<'a, 'b> {
    /// Covers `len` bytes starting `skip` bytes into `bufs`. The caller has
    /// checked that `skip + len <= total_len(bufs)`.
    pub(crate) fn new(bufs: &'a [VolatileSlice<'b>], skip: u64, len: u64) -> Self {
        let mut c = Cursor {
            bufs,
            idx: 0,
            off: 0,
            remaining: len,
        };
        c.skip(skip);
        c
    }

    fn skip(&mut self, mut n: u64) {
        while n > 0 && self.idx < self.bufs.len() {
            let left = (self.bufs[self.idx].len() - self.off) as u64;
            if n < left {
                self.off += n as usize;
                return;
            }
            n -= left;
            self.idx += 1;
            self.off = 0;
        }
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Fills `iov` from the current position; returns how many were used.
    fn iovecs(&self, iov: &mut [libc::iovec; IOV_BATCH]) -> usize {
        let mut n = 0;
        let mut left = self.remaining;
        let (mut idx, mut off) = (self.idx, self.off);
        while n < IOV_BATCH && left > 0 && idx < self.bufs.len() {
            let b = &self.bufs[idx];
            let seg = ((b.len() - off) as u64).min(left) as usize;
            if seg > 0 {
                // ptr_guard_mut also marks the range dirty when a bitmap is used.
                let base = b.ptr_guard_mut().as_ptr();
                iov[n] = libc::iovec {
                    // SAFETY: off < b.len(), so base + off is inside the slice.
                    iov_base: unsafe { base.add(off) } as *mut libc::c_void,
                    iov_len: seg,
                };
                n += 1;
                left -= seg as u64;
            }
            idx += 1;
            off = 0;
        }
        n
    }

    pub(crate) fn advance(&mut self, n: u64) {
        self.remaining -= n;
        self.skip(n);
    }

    /// Runs one vectored syscall over the next batch; returns bytes moved.
    fn syscall(&mut self, f: impl FnOnce(*const libc::iovec, i32) -> isize) -> io::Result<u64> {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOV_BATCH];
        let n = self.iovecs(&mut iov);
        if n == 0 {
            return Ok(0);
        }
        let r = f(iov.as_ptr(), n as i32);
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.advance(r as u64);
        Ok(r as u64)
    }

    /// Writes zeroes over the rest of the covered range.
    pub(crate) fn zero_rest(&mut self) {
        while self.remaining > 0 && self.idx < self.bufs.len() {
            let b = &self.bufs[self.idx];
            let seg = ((b.len() - self.off) as u64).min(self.remaining) as usize;
            let base = b.ptr_guard_mut().as_ptr();
            // SAFETY: [off, off + seg) lies inside the slice.
            unsafe { std::ptr::write_bytes(base.add(self.off), 0, seg) };
            self.advance(seg as u64);
        }
    }

    /// Copies from the covered range into `out` (which is at most as long).
    pub(crate) fn copy_out(&mut self, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() && self.idx < self.bufs.len() {
            let b = &self.bufs[self.idx];
            let seg = (b.len() - self.off).min(out.len() - done);
            let base = b.ptr_guard().as_ptr();
            // SAFETY: source range inside the slice; `out` is a distinct Rust buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(base.add(self.off), out[done..].as_mut_ptr(), seg)
            };
            done += seg;
            self.advance(seg as u64);
        }
    }

    /// Copies `src` into the covered range.
    pub(crate) fn copy_in(&mut self, src: &[u8]) {
        let mut done = 0;
        while done < src.len() && self.idx < self.bufs.len() {
            let b = &self.bufs[self.idx];
            let seg = (b.len() - self.off).min(src.len() - done);
            let base = b.ptr_guard_mut().as_ptr();
            // SAFETY: destination range inside the slice; `src` is a distinct buffer.
            unsafe { std::ptr::copy_nonoverlapping(src[done..].as_ptr(), base.add(self.off), seg) };
            done += seg;
            self.advance(seg as u64);
        }
    }
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Reads `len` bytes at `pos` of `fd` into `bufs`. Returns the bytes read,
/// which is less than `len` only at end of file.
pub(crate) fn pread_into(
    fd: RawFd,
    bufs: &[VolatileSlice<'_>],
    pos: u64,
    len: u64,
) -> io::Result<u64> {
    let mut c = Cursor::new(bufs, 0, len);
    let mut done = 0u64;
    while c.remaining() > 0 {
        let at = (pos + done) as libc::off_t;
        // SAFETY: the iovecs point into live caller slices.
        let n = retry(|| c.syscall(|iov, cnt| unsafe { libc::preadv(fd, iov, cnt, at) }))?;
        if n == 0 {
            break; // EOF
        }
        done += n;
    }
    Ok(done)
}

/// Writes `len` bytes of `bufs` at `pos` of `fd`.
pub(crate) fn pwrite_from(
    fd: RawFd,
    bufs: &[VolatileSlice<'_>],
    pos: u64,
    len: u64,
) -> io::Result<()> {
    let mut c = Cursor::new(bufs, 0, len);
    let mut done = 0u64;
    while c.remaining() > 0 {
        let at = (pos + done) as libc::off_t;
        // SAFETY: the iovecs point into live caller slices.
        let n = retry(|| c.syscall(|iov, cnt| unsafe { libc::pwritev(fd, iov, cnt, at) }))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        done += n;
    }
    Ok(())
}

/// Maps a socket timeout (EAGAIN from SO_RCVTIMEO/SO_SNDTIMEO) to TimedOut.
fn sock_err(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "socket timed out")
    } else {
        e
    }
}

/// Reads exactly the cursor's range from a stream socket into the buffers.
pub(crate) fn read_exact_into(fd: RawFd, c: &mut Cursor<'_, '_>) -> io::Result<()> {
    while c.remaining() > 0 {
        // SAFETY: the iovecs point into live caller slices.
        let n = retry(|| c.syscall(|iov, cnt| unsafe { libc::readv(fd, iov, cnt) }))
            .map_err(sock_err)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection",
            ));
        }
    }
    Ok(())
}

/// Writes `head` and then the cursor's range to a stream socket, gathering
/// both into the same syscalls so a small request is one packet.
pub(crate) fn write_all_with(fd: RawFd, head: &[u8], c: &mut Cursor<'_, '_>) -> io::Result<()> {
    let mut head_done = 0usize;
    while head_done < head.len() || c.remaining() > 0 {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOV_BATCH];
        let mut n = 0;
        let head_left = head.len() - head_done;
        if head_left > 0 {
            iov[0] = libc::iovec {
                iov_base: head[head_done..].as_ptr() as *mut libc::c_void,
                iov_len: head_left,
            };
            n = 1;
        }
        let mut tail = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; IOV_BATCH];
        let tn = c.iovecs(&mut tail).min(IOV_BATCH - n);
        iov[n..n + tn].copy_from_slice(&tail[..tn]);
        n += tn;
        // SAFETY: iovecs point at `head` and live caller slices. MSG_NOSIGNAL:
        // a dead peer must give EPIPE, not kill the VMM with SIGPIPE.
        let msg = libc::msghdr {
            msg_name: std::ptr::null_mut(),
            msg_namelen: 0,
            msg_iov: iov.as_mut_ptr(),
            msg_iovlen: n as _,
            msg_control: std::ptr::null_mut(),
            msg_controllen: 0,
            msg_flags: 0,
        };
        let r = retry(|| {
            let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(r as usize)
            }
        })
        .map_err(sock_err)?;
        if r == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "socket accepted nothing",
            ));
        }
        let from_head = r.min(head_left);
        head_done += from_head;
        c.advance((r - from_head) as u64);
    }
    Ok(())
}

/// Plain-buffer versions for protocol headers.
pub(crate) fn read_exact_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: reading into our own buffer's tail.
        let r = unsafe {
            libc::read(
                fd,
                buf[done..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - done,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(sock_err(e));
        }
        if r == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection",
            ));
        }
        done += r as usize;
    }
    Ok(())
}

pub(crate) fn write_all_fd(fd: RawFd, buf: &[u8]) -> io::Result<()> {
    let empty: [VolatileSlice<'_>; 0] = [];
    write_all_with(fd, buf, &mut Cursor::new(&empty, 0, 0))
}
