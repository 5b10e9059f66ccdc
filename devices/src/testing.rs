//! An in-memory `Pager` for tests and the benchmark: the real backends live
//! in pager-backends and are written concurrently. It is a complete pager
//! (holes, read-ahead, locks, per-kernel state), just not durable.

use pager_backends::poison;
use pager_backends::{
    Access, DataReply, KernelControl, KernelId, ObjectInfo, ObjectOffset, PAGE_SIZE, Pager,
    PagerError, Result, UnlockReply,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use vm_memory::VolatileSlice;

struct Store {
    data: Vec<u8>,
    /// Pages that hold data; the others are holes (data_unavailable).
    present: HashSet<u64>,
}

/// Call counters: atomics, so concurrent requests (several workers and the
/// event loop's inline path) never serialise on bookkeeping.
#[derive(Default)]
struct Calls {
    data_requests: AtomicU64,
    data_writes: AtomicU64,
    unlocks: AtomicU64,
    syncs: AtomicU64,
    terminates: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub struct MemPager {
    store: RwLock<Store>,
    size: u64,
    read_only: bool,
    may_cache: bool,
    /// Lock value handed out with data (accesses prevented until unlock).
    initial_lock: Access,
    /// Pages this pager will fill beyond the request if offered room.
    readahead: bool,
    /// Answers `try_data_request` (it never does I/O); off to force the
    /// device's worker path.
    inline: bool,
    kernels: RwLock<HashMap<KernelId, Arc<dyn KernelControl>>>,
    calls: Calls,
    /// lock_completed calls: (kernel, offset, length, cookie).
    completions: Mutex<Vec<(KernelId, u64, u64, u64)>>,
}

impl MemPager {
    /// An object of `size` bytes, all holes.
    pub fn new(size: u64) -> Self {
        MemPager {
            store: RwLock::new(Store {
                data: vec![0; size as usize],
                present: HashSet::new(),
            }),
            size,
            read_only: false,
            may_cache: true,
            initial_lock: Access::NONE,
            readahead: true,
            inline: true,
            kernels: RwLock::new(HashMap::new()),
            calls: Calls::default(),
            completions: Mutex::default(),
        }
    }

    /// An object whose every page is present, filled by `f(offset)`.
    pub fn filled(size: u64, f: impl Fn(u64) -> u8) -> Self {
        let p = MemPager::new(size);
        {
            let mut s = p.write_store();
            for (i, b) in s.data.iter_mut().enumerate() {
                *b = f(i as u64);
            }
            s.present = (0..size.div_ceil(PAGE_SIZE)).collect();
        }
        p
    }

    pub fn read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }

    pub fn with_lock(mut self, lock: Access) -> Self {
        self.initial_lock = lock;
        self
    }

    pub fn with_readahead(mut self, on: bool) -> Self {
        self.readahead = on;
        self
    }

    /// Refuse the non-blocking path, like a backend that must do I/O.
    pub fn blocking(mut self) -> Self {
        self.inline = false;
        self
    }

    fn kernels(&self) -> RwLockReadGuard<'_, HashMap<KernelId, Arc<dyn KernelControl>>> {
        poison::read(&self.kernels)
    }

    fn kernels_mut(&self) -> RwLockWriteGuard<'_, HashMap<KernelId, Arc<dyn KernelControl>>> {
        poison::write(&self.kernels)
    }

    fn read_store(&self) -> RwLockReadGuard<'_, Store> {
        poison::read(&self.store)
    }

    fn write_store(&self) -> RwLockWriteGuard<'_, Store> {
        poison::write(&self.store)
    }

    /// The control handle a kernel gave at init (to play manager → kernel).
    pub fn control(&self, k: KernelId) -> Option<Arc<dyn KernelControl>> {
        self.kernels().get(&k).cloned()
    }

    /// A copy of the object's bytes.
    pub fn contents(&self, offset: u64, len: usize) -> Vec<u8> {
        let s = self.read_store();
        let start = offset as usize;
        s.data
            .get(start..start + len)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    pub fn data_requests(&self) -> u64 {
        self.calls.data_requests.load(Ordering::Relaxed)
    }
    pub fn data_writes(&self) -> u64 {
        self.calls.data_writes.load(Ordering::Relaxed)
    }
    pub fn terminates(&self) -> u64 {
        self.calls.terminates.load(Ordering::Relaxed)
    }
    pub fn syncs(&self) -> u64 {
        self.calls.syncs.load(Ordering::Relaxed)
    }
    /// The lock completions the kernel reported, in order.
    pub fn lock_completions(&self) -> Vec<(KernelId, u64, u64, u64)> {
        poison::lock(&self.completions).clone()
    }
    pub fn unlocks(&self) -> u64 {
        self.calls.unlocks.load(Ordering::Relaxed)
    }

    fn check(&self, known: bool, kernel: KernelId, offset: ObjectOffset, len: u64) -> Result<()> {
        if !known {
            return Err(PagerError::UnknownKernel(kernel.0));
        }
        if len == 0 || !offset.is_page_aligned() || !len.is_multiple_of(PAGE_SIZE) {
            return Err(PagerError::BadRange {
                offset,
                len,
                why: "not whole pages",
            });
        }
        if offset.raw() >= self.size {
            return Err(PagerError::PastEnd {
                offset,
                size: self.size,
            });
        }
        Ok(())
    }

    /// `data_request` with the store locked (taken blocking or not);
    /// `known`: the kernel has initialised the object.
    fn serve(
        &self,
        known: bool,
        s: &Store,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<DataReply> {
        self.check(known, kernel, offset, len)?;
        bump(&self.calls.data_requests);
        let first = offset.raw() / PAGE_SIZE;
        let pages = len / PAGE_SIZE;
        if (first..first + pages).all(|p| !s.present.contains(&p)) {
            return Ok(DataReply::Unavailable { bytes: len });
        }
        // Whole pages up to the end of the object (rounded up) and the room
        // offered; at least `len` (the tail past the end reads as zero).
        let end_of_object = self.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let room = if self.readahead { total_len(bufs) } else { len };
        let bytes = room.min(end_of_object - offset.raw()).max(len);
        if bytes > total_len(bufs) {
            return Err(PagerError::BadRange {
                offset,
                len,
                why: "buffers smaller than the request",
            });
        }
        let mut pos = offset.raw();
        let mut left = bytes;
        for b in bufs {
            if left == 0 {
                break;
            }
            let n = (b.len() as u64).min(left);
            let start = pos.min(self.size) as usize;
            let stop = (pos + n).min(self.size) as usize;
            let src = &s.data[start..stop];
            b.copy_from(src);
            // Zero the slice tail past the end of the object.
            if (src.len() as u64) < n {
                let tail = b
                    .subslice(src.len(), n as usize - src.len())
                    .map_err(|e| PagerError::Protocol(e.to_string()))?;
                tail.copy_from(&vec![0u8; tail.len()]);
            }
            pos += n;
            left -= n;
        }
        Ok(DataReply::Provided {
            bytes,
            lock: self.initial_lock,
        })
    }
}

/// Total bytes of a scatter list.
fn total_len(bufs: &[VolatileSlice<'_>]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

impl Pager for MemPager {
    fn init(&self, kernel: KernelId, control: Arc<dyn KernelControl>) -> Result<ObjectInfo> {
        self.kernels_mut().insert(kernel, control);
        Ok(ObjectInfo {
            size: self.size,
            read_only: self.read_only,
            may_cache: self.may_cache,
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
        let known = self.kernels().contains_key(&kernel);
        let store = self.read_store();
        self.serve(known, &store, kernel, offset, len, bufs)
    }

    fn try_data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        _desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Option<Result<DataReply>> {
        if !self.inline {
            return None;
        }
        // Contended locks would mean waiting: say "would block" instead.
        let known = self.kernels.try_read().ok()?.contains_key(&kernel);
        let store = self.store.try_read().ok()?;
        Some(self.serve(known, &store, kernel, offset, len, bufs))
    }

    fn data_write(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<()> {
        let known = self.kernels().contains_key(&kernel);
        self.check(known, kernel, offset, len)?;
        if self.read_only {
            return Err(PagerError::ReadOnly);
        }
        bump(&self.calls.data_writes);
        let mut s = self.write_store();
        let mut pos = offset.raw();
        let mut left = len;
        for b in bufs {
            if left == 0 {
                break;
            }
            let n = (b.len() as u64).min(left);
            let stop = (pos + n).min(self.size) as usize;
            let dst = &mut s.data[pos as usize..stop];
            b.copy_to(dst);
            pos += n;
            left -= n;
        }
        let first = offset.raw() / PAGE_SIZE;
        s.present.extend(first..first + len / PAGE_SIZE);
        Ok(())
    }

    fn data_unlock(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
    ) -> Result<UnlockReply> {
        let known = self.kernels().contains_key(&kernel);
        self.check(known, kernel, offset, len)?;
        bump(&self.calls.unlocks);
        // A read-only object never grants write.
        let lock = if self.read_only && desired.contains(Access::WRITE) {
            Access::WRITE
        } else {
            Access::NONE
        };
        Ok(UnlockReply { lock })
    }

    fn extent(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn sync(&self) -> Result<()> {
        bump(&self.calls.syncs);
        Ok(())
    }

    fn lock_completed(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        cookie: u64,
    ) -> Result<()> {
        if !self.kernels().contains_key(&kernel) {
            return Err(PagerError::UnknownKernel(kernel.0));
        }
        poison::lock(&self.completions).push((kernel, offset.raw(), len, cookie));
        Ok(())
    }

    fn terminate(&self, kernel: KernelId) -> Result<()> {
        bump(&self.calls.terminates);
        self.kernels_mut()
            .remove(&kernel)
            .map(|_| ())
            .ok_or(PagerError::UnknownKernel(kernel.0))
    }

    fn describe(&self) -> String {
        format!("in-memory, {} bytes", self.size)
    }
}
