//! `zero` / `anon`: anonymous memory, the host half of Mach's default pager.
//!
//! Pages that were never written back are `Unavailable` (the kernel zero
//! fills them, paper 3.4.1). Written pages live in a sparse, unlinked swap
//! file: it costs disk only for what was paged out and vanishes with the
//! process. A sparse bitmap records which pages hold data: it costs memory
//! only for the parts of the object that were ever written.

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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use vm_memory::VolatileSlice;

/// Largest anonymous object: 256 TiB, what a guest can address with
/// four-level paging, and more swap than any host has. The bound keeps the
/// bitmap's index small (3 MiB at the largest).
pub const MAX_ANON_SIZE: u64 = 1 << 48;

/// Pages per bitmap chunk: a chunk of 64 KiB of bits covers 2 GiB of the
/// object and is allocated by the first write into that range.
const CHUNK_PAGES: u64 = 1 << 19;

/// One bit per page, set once the page's data is in the swap file. Lock
/// free: a chunk is installed once, bits only go up until `clear`.
struct SparseBitmap {
    pages: u64,
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl SparseBitmap {
    fn new(pages: u64) -> SparseBitmap {
        SparseBitmap {
            pages,
            chunks: (0..pages.div_ceil(CHUNK_PAGES))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    fn get(&self, page: u64) -> bool {
        match self.chunks[(page / CHUNK_PAGES) as usize].get() {
            None => false,
            Some(words) => {
                let bit = page % CHUNK_PAGES;
                words[(bit / 64) as usize].load(Ordering::Acquire) & (1 << (bit % 64)) != 0
            }
        }
    }

    fn set(&self, page: u64) {
        let chunk = page / CHUNK_PAGES;
        let words = self.chunks[chunk as usize].get_or_init(|| {
            // The last chunk only as long as the object.
            let pages = (self.pages - chunk * CHUNK_PAGES).min(CHUNK_PAGES);
            (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect()
        });
        let bit = page % CHUNK_PAGES;
        words[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Release);
    }

    fn count(&self) -> u64 {
        self.chunks
            .iter()
            .filter_map(OnceLock::get)
            .flat_map(|words| words.iter())
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    fn clear(&self) {
        for words in self.chunks.iter().filter_map(OnceLock::get) {
            for w in words.iter() {
                w.store(0, Ordering::Release);
            }
        }
    }
}

pub struct AnonPager {
    swap: File,
    size: u64,
    written: SparseBitmap,
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
        if size > MAX_ANON_SIZE {
            return Err(PagerError::io_context(
                format!("anonymous object of {size} bytes"),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "too large: at most 256 TiB (256T)",
                ),
            ));
        }
        let ctx =
            |e| PagerError::io_context(format!("swap file in {}", opts.swap_dir.display()), e);
        let swap = swap_file(&opts.swap_dir).map_err(ctx)?;
        // Sparse: the length costs nothing until pages are written.
        swap.set_len(size).map_err(ctx)?;
        Ok(AnonPager {
            swap,
            size,
            written: SparseBitmap::new(size / PAGE_SIZE),
            kernels: Kernels::default(),
        })
    }

    fn any_written(&self, offset: ObjectOffset, len: u64) -> bool {
        let first = offset.raw() / PAGE_SIZE;
        (first..first + len / PAGE_SIZE).any(|p| self.written.get(p))
    }

    /// Pages currently holding data (for stats and tests).
    pub fn resident_pages(&self) -> u64 {
        self.written.count()
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
            self.written.set(p);
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
            self.written.clear();
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
