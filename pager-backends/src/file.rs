//! `file:PATH[?ro]`: a host file or block device as a memory object.
//!
//! Data moves with preadv/pwritev directly between the file and the caller's
//! buffers. The object's size is the file's length when opened; the last
//! partial page reads as zeros past the end. Writes are made durable by
//! `sync` and by the last kernel's `terminate` (fdatasync).

use crate::check::{check_range, offered, round_up_page};
use crate::error::{PagerError, Result};
use crate::kernels::Kernels;
use crate::options::OpenOptions;
use crate::pager::{DataReply, KernelControl, ObjectInfo, Pager, UnlockReply};
use crate::readahead::ReadAhead;
use crate::sg::{self, Cursor};
use crate::types::{Access, KernelId, ObjectOffset};
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vm_memory::VolatileSlice;

pub struct FilePager {
    file: File,
    path: PathBuf,
    read_only: bool,
    /// A block device (a disk, a partition, a loop or rbd device) rather
    /// than a regular file.
    block_device: bool,
    size: u64,
    kernels: Kernels,
    readahead: ReadAhead,
}

impl FilePager {
    pub fn open(path: &Path, read_only: bool, opts: &OpenOptions) -> Result<FilePager> {
        let ctx = |e| PagerError::io_context(path.display(), e);
        // The type is checked before the open, which would block on a FIFO
        // until a writer came; and again on what was opened, in case the
        // path changed in between (O_NONBLOCK keeps that open from blocking).
        let meta = std::fs::metadata(path).map_err(ctx)?;
        check_kind(path, meta.file_type())?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(ctx)?;
        let meta = file.metadata().map_err(ctx)?;
        check_kind(path, meta.file_type())?;
        // O_NONBLOCK was for the open only: reads wait for the disk as usual.
        set_blocking(&file).map_err(ctx)?;
        let block_device = meta.file_type().is_block_device();
        // A block device's inode says 0 bytes; its size is where it ends.
        let size = if block_device {
            (&file).seek(SeekFrom::End(0)).map_err(ctx)?
        } else {
            meta.len()
        };
        Ok(FilePager {
            file,
            path: path.to_path_buf(),
            read_only,
            block_device,
            size,
            kernels: Kernels::default(),
            readahead: ReadAhead::new(opts.max_readahead),
        })
    }

    /// The answer to a read of `want` bytes at `offset` that got `got`.
    fn provided(
        &self,
        offset: ObjectOffset,
        want: u64,
        got: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<DataReply> {
        // Bytes the object says exist in this range; fewer means the file
        // was truncated under us, and zero-filling would silently lose data.
        let expected = (self.size - offset.raw()).min(want);
        if got < expected {
            return Err(PagerError::io_context(
                self.path.display(),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "file is shorter than the object: wanted {expected} bytes at {offset}, got {got} (truncated since open?)"
                    ),
                ),
            ));
        }
        // The tail of the last page past end of file reads as zeros.
        Cursor::new(bufs, got, want - got).zero_rest();
        Ok(DataReply::Provided {
            bytes: want,
            lock: Access::NONE,
        })
    }
}

/// Only regular files and block devices are memory objects: a FIFO or a
/// socket has no pages to address, a character device like /dev/zero no
/// size, a directory no data.
fn check_kind(path: &Path, ft: std::fs::FileType) -> Result<()> {
    if ft.is_file() || ft.is_block_device() {
        return Ok(());
    }
    let kind = if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(PagerError::io_context(
        path.display(),
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {kind}; a file: object must be a regular file or a block device"),
        ),
    ))
}

fn set_blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Iovecs per `preadv2` (the kernel's UIO_MAXIOV is 1024).
const NOWAIT_IOV: usize = 1024;

/// One `preadv2(RWF_NOWAIT)` of `len` bytes at `pos` into the start of
/// `bufs`. `None`: the data is not all in the page cache (EAGAIN), the
/// file system cannot tell (EOPNOTSUPP), or the request needs more iovecs
/// than one call takes; the caller falls back to a blocking read. A real
/// I/O error is also "would block": the blocking path reports it properly.
fn pread_nowait(fd: RawFd, bufs: &[VolatileSlice<'_>], pos: u64, len: u64) -> Option<u64> {
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len().min(NOWAIT_IOV));
    let mut left = len;
    for b in bufs {
        if left == 0 {
            break;
        }
        if iov.len() == NOWAIT_IOV {
            return None;
        }
        let seg = (b.len() as u64).min(left) as usize;
        if seg == 0 {
            continue;
        }
        iov.push(libc::iovec {
            // ptr_guard_mut also marks the range dirty when a bitmap is used.
            iov_base: b.ptr_guard_mut().as_ptr() as *mut libc::c_void,
            iov_len: seg,
        });
        left -= seg as u64;
    }
    if left > 0 {
        return None;
    }
    let at = libc::off_t::try_from(pos).ok()?;
    loop {
        // SAFETY: every iovec points into a live caller slice, within its
        // length; the slices outlive the call.
        let n = unsafe { libc::preadv2(fd, iov.as_ptr(), iov.len() as i32, at, libc::RWF_NOWAIT) };
        if n >= 0 {
            return Some(n as u64);
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}

impl Pager for FilePager {
    fn init(&self, kernel: KernelId, control: Arc<dyn KernelControl>) -> Result<ObjectInfo> {
        self.kernels.add(kernel, control)?;
        Ok(ObjectInfo {
            size: self.size,
            read_only: self.read_only,
            may_cache: true,
        })
    }

    fn data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        _desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<DataReply> {
        self.kernels.check(kernel)?;
        check_range(offset, len, self.size, bufs)?;
        let left = round_up_page(self.size) - offset.raw();
        let want = self.readahead.plan(offset, len, offered(bufs), left);
        let got = sg::pread_into(self.file.as_raw_fd(), bufs, offset.raw(), want)
            .map_err(|e| PagerError::io_context(self.path.display(), e))?;
        self.provided(offset, want, got, bufs)
    }

    /// `data_request` served from the page cache only: one
    /// `preadv2(RWF_NOWAIT)`, which fails with EAGAIN (or reads short)
    /// instead of waiting for the disk. Anything but a complete read (or one
    /// cut short by end of file) is "would block".
    fn try_data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        _desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Option<Result<DataReply>> {
        if let Err(e) = self
            .kernels
            .check(kernel)
            .and_then(|()| check_range(offset, len, self.size, bufs))
        {
            return Some(Err(e));
        }
        // No read-ahead on this path: a window beyond what is cached would
        // only make the read come back short; the worker's `data_request`
        // plans read-ahead as usual.
        let want = len;
        let got = pread_nowait(self.file.as_raw_fd(), bufs, offset.raw(), want)?;
        // Short of `want` but at end of file is a complete answer.
        let in_file = self.size.saturating_sub(offset.raw()).min(want);
        if got < in_file {
            return None;
        }
        Some(self.provided(offset, want, got, bufs))
    }

    fn data_write(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<()> {
        self.kernels.check(kernel)?;
        if self.read_only {
            return Err(PagerError::ReadOnly);
        }
        check_range(offset, len, self.size, bufs)?;
        // The part of the last page beyond the file is not object data: the
        // object does not grow by being written.
        let n = len.min(self.size - offset.raw());
        sg::pwrite_from(self.file.as_raw_fd(), bufs, offset.raw(), n)
            .map_err(|e| PagerError::io_context(self.path.display(), e))
    }

    fn data_unlock(
        &self,
        kernel: KernelId,
        _offset: ObjectOffset,
        _len: u64,
        desired: Access,
    ) -> Result<UnlockReply> {
        self.kernels.check(kernel)?;
        if self.read_only && desired.contains(Access::WRITE) {
            return Err(PagerError::ReadOnly);
        }
        // A file never locks pages, so there is nothing to lift.
        Ok(UnlockReply { lock: Access::NONE })
    }

    fn extent(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| PagerError::io_context(self.path.display(), e))
    }

    fn terminate(&self, kernel: KernelId) -> Result<()> {
        if self.kernels.remove(kernel)? {
            self.sync()?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "{} {} ({}, {} bytes)",
            if self.block_device {
                "block device"
            } else {
                "file"
            },
            self.path.display(),
            if self.read_only {
                "read-only"
            } else {
                "read-write"
            },
            self.size
        )
    }
}
