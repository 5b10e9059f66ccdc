//! `zero` / `anon`: anonymous memory, the host half of Mach's default pager.
//!
//! Pages that were never written back are `Unavailable` (the kernel zero
//! fills them, paper 3.4.1). Written pages live in a sparse, unlinked swap
//! file: it costs disk only for what was paged out and vanishes with the
//! process. A bitmap records which pages hold data.

use crate::check::{check_range, round_up_page};
use crate::error::{PagerError, Result};
use crate::kernels::Kernels;
use crate::options::OpenOptions;
use crate::pager::{DataReply, KernelControl, ObjectInfo, Pager, UnlockReply};
use crate::sg;
use crate::types::{Access, KernelId, ObjectOffset, PAGE_SIZE};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use vm_memory::VolatileSlice;

pub struct AnonPager {
    swap: File,
    size: u64,
    /// One bit per page: set once the page's data is in the swap file.
    written: Box<[AtomicU64]>,
    kernels: Kernels,
}

/// An unlinked file in `dir` (O_TMPFILE: it never has a name to leak).
fn swap_file(dir: &Path) -> io::Result<File> {
    let mut cpath = dir.as_os_str().as_bytes().to_vec();
    cpath.push(0);
    // SAFETY: cpath is NUL terminated; the fd is owned by the File below.
    let fd = unsafe {
        libc::open(
            cpath.as_ptr() as *const libc::c_char,
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl AnonPager {
    pub fn new(size: u64, opts: &OpenOptions) -> Result<AnonPager> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
            return Err(PagerError::BadRange {
                offset: ObjectOffset(0),
                len: size,
                why: "anonymous object size must be a non-zero page multiple",
            });
        }
        let ctx =
            |e| PagerError::io_context(format!("swap file in {}", opts.swap_dir.display()), e);
        let swap = swap_file(&opts.swap_dir).map_err(ctx)?;
        // Sparse: the length costs nothing until pages are written.
        swap.set_len(size).map_err(ctx)?;
        let words = (size / PAGE_SIZE).div_ceil(64) as usize;
        Ok(AnonPager {
            swap,
            size,
            written: (0..words).map(|_| AtomicU64::new(0)).collect(),
            kernels: Kernels::default(),
        })
    }

    fn is_written(&self, page: u64) -> bool {
        self.written[(page / 64) as usize].load(Ordering::Acquire) & (1 << (page % 64)) != 0
    }

    fn any_written(&self, offset: ObjectOffset, len: u64) -> bool {
        let first = offset.raw() / PAGE_SIZE;
        (first..first + len / PAGE_SIZE).any(|p| self.is_written(p))
    }

    /// Pages currently holding data (for stats and tests).
    pub fn resident_pages(&self) -> u64 {
        self.written
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_ones() as u64)
            .sum()
    }
}

impl Pager for AnonPager {
    fn init(&self, kernel: KernelId, control: Arc<dyn KernelControl>) -> Result<ObjectInfo> {
        self.kernels.add(kernel, control)?;
        Ok(ObjectInfo {
            size: self.size,
            read_only: false,
            may_cache: false,
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
        if !self.any_written(offset, len) {
            return Ok(DataReply::Unavailable { bytes: len });
        }
        // Mixed ranges read the whole thing: never-written pages are holes
        // in the sparse file and read back as zeros.
        let got = sg::pread_into(self.swap.as_raw_fd(), bufs, offset.raw(), len)
            .map_err(|e| PagerError::io_context("anon swap file", e))?;
        if got != len {
            return Err(PagerError::io_context(
                "anon swap file",
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "swap file shorter than the object",
                ),
            ));
        }
        Ok(DataReply::Provided {
            bytes: len,
            lock: Access::NONE,
        })
    }

    fn try_data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        _desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Option<Result<DataReply>> {
        // Never-written ranges are answered from the bitmap alone; anything
        // else reads the swap file and may block.
        if let Err(e) = self.kernels.check(kernel) {
            return Some(Err(e));
        }
        if let Err(e) = check_range(offset, len, self.size, bufs) {
            return Some(Err(e));
        }
        if self.any_written(offset, len) {
            return None;
        }
        Some(Ok(DataReply::Unavailable { bytes: len }))
    }

    fn data_write(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<()> {
        self.kernels.check(kernel)?;
        check_range(offset, len, self.size, bufs)?;
        sg::pwrite_from(self.swap.as_raw_fd(), bufs, offset.raw(), len)
            .map_err(|e| PagerError::io_context("anon swap file", e))?;
        // Mark only after the data is in the file, so a concurrent request
        // never sees a page as written before it can be read back.
        let first = offset.raw() / PAGE_SIZE;
        for p in first..first + len / PAGE_SIZE {
            self.written[(p / 64) as usize].fetch_or(1 << (p % 64), Ordering::Release);
        }
        Ok(())
    }

    fn data_unlock(
        &self,
        kernel: KernelId,
        _offset: ObjectOffset,
        _len: u64,
        _desired: Access,
    ) -> Result<UnlockReply> {
        self.kernels.unlock_unrestricted(kernel)
    }

    fn extent(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn sync(&self) -> Result<()> {
        // Swap contents need not survive a host crash (the VM would not
        // either): accepted writes are already readable, nothing to flush.
        Ok(())
    }

    fn terminate(&self, kernel: KernelId) -> Result<()> {
        if self.kernels.remove(kernel)? {
            // Temporary memory dies with its last kernel: give the disk back.
            for w in self.written.iter() {
                w.store(0, Ordering::Release);
            }
            // SAFETY: plain fallocate on our own fd.
            let r = unsafe {
                libc::fallocate(
                    self.swap.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    round_up_page(self.size) as libc::off_t,
                )
            };
            if r != 0 {
                return Err(PagerError::io_context(
                    "anon swap file",
                    io::Error::last_os_error(),
                ));
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "anonymous (zero-fill), {} bytes, {} pages in swap",
            self.size,
            self.resident_pages()
        )
    }
}
