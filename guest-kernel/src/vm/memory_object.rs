//! The pager's side of the external memory interface (paper Table 3-6):
//! what the kernel does with each message a pager sends on an object's
//! pager request port. The kernel resolves the port to the [`ObjectId`];
//! everything here trusts nothing else about the message: offsets and
//! sizes are checked, frames beyond the object or for pages already
//! present are given back, and nothing panics.
//!
//! Threads blocked on an object (a fault's `Wait` or `Unlock`) are woken by
//! the kernel after any of these returns `woken: true`; they retry the
//! fault, which sees the new page state.

use alloc::vec::Vec;

use crate::addr::{PAGE_SIZE, PhysAddr};
use crate::vm::object::{ObjectAction, ObjectState, Objects, PagerPort};
use crate::vm::page::{FrameSource, PageId, Queue};
use crate::vm::pmap::PhysMaps;
use crate::vm::types::{ObjectId, ObjectOffset, VmError, VmProt};

/// What a pager reply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// Pages whose state changed.
    pub pages: usize,
    /// Frames given back to the frame source (not needed).
    pub discarded: usize,
    /// Some fault may be waiting on this object: wake its waiters.
    pub woken: bool,
}

/// The highest protection a page locked against `lock` may be mapped
/// with. x86 cannot map a page without read access, so a read lock means
/// no mapping at all.
pub fn allowed_by_lock(lock: VmProt) -> VmProt {
    let allowed = VmProt::ALL.without(lock);
    if allowed.contains(VmProt::READ) {
        allowed
    } else {
        VmProt::NONE
    }
}

/// Checks (offset, size) and returns the end, page aligned.
fn check_range(offset: ObjectOffset, size: u64) -> Result<u64, VmError> {
    if !offset.is_page_aligned() || !size.is_multiple_of(PAGE_SIZE) {
        return Err(VmError::InvalidArgument);
    }
    offset
        .checked_add(size)
        .map(|e| e.0)
        .ok_or(VmError::InvalidArgument)
}

impl Objects {
    fn pages_in(
        &self,
        object: ObjectId,
        offset: ObjectOffset,
        size: u64,
    ) -> Result<Vec<PageId>, VmError> {
        let end = check_range(offset, size)?;
        self.get(object)?;
        self.pages.object_pages(object, offset.0, end)
    }

    /// What flush and clean work over: the range's pages, room for one
    /// action each (reserved now, so the loop never fails halfway), and
    /// where the actions go.
    fn write_back_work(
        &self,
        object: ObjectId,
        offset: ObjectOffset,
        size: u64,
    ) -> Result<(Vec<PageId>, Vec<ObjectAction>, PagerPort), VmError> {
        let pages = self.pages_in(object, offset, size)?;
        let mut out = Vec::new();
        out.try_reserve_exact(pages.len())
            .map_err(|_| VmError::ResourceShortage)?;
        // A dead pager's modified pages go to the default pager (double
        // paging), not to the pager that can no longer take them.
        let port = self.get(object)?.write_back_port();
        Ok((pages, out, port))
    }

    /// pager_data_provided: `data` holds one filled frame per page from
    /// `offset`, ownership passing to the VM. Fills requested pages and
    /// accepts unrequested ones (read-ahead); frames for pages already
    /// present, beyond the object's end or over the page limit are given
    /// back. On Err nothing was consumed (the caller still owns `data`).
    pub fn data_provided(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        data: &[PhysAddr],
        lock: VmProt,
        precious: bool,
        frames: &mut dyn FrameSource,
    ) -> Result<Reply, VmError> {
        self.provide(object, offset, data, lock, precious, frames)
            .map(|(r, _)| r)
    }

    /// [`Self::data_provided`], also saying how many of the first pages
    /// it made resident with their frames in `data` (new pages and filled
    /// placeholders, from `offset` on without a gap): those pages are
    /// clean, not busy, locked by `lock` and hold `data[..run]`, so a
    /// caller may map them without looking them up (the read-ahead
    /// mapped as it arrives, fault_around.rs).
    pub(crate) fn provide(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        data: &[PhysAddr],
        lock: VmProt,
        precious: bool,
        frames: &mut dyn FrameSource,
    ) -> Result<(Reply, usize), VmError> {
        let len = (data.len() as u64)
            .checked_mul(PAGE_SIZE)
            .ok_or(VmError::InvalidArgument)?;
        check_range(offset, len)?;
        if data.iter().any(|f| !f.is_aligned(PAGE_SIZE)) {
            return Err(VmError::InvalidArgument);
        }
        let o = self.get(object)?;
        let (size, gone) = (o.size(), o.state() == ObjectState::Terminating);
        let mut r = Reply::default();
        // The run ends at the first page not made from its frame.
        let mut run = data.len();
        for (i, &frame) in data.iter().enumerate() {
            let off = ObjectOffset(offset.0 + i as u64 * PAGE_SIZE);
            let pid = if gone || off.0 >= size {
                None
            } else {
                match self.pages.lookup(object, off) {
                    // A placeholder (requested, or marked unavailable).
                    Some(pid) if self.pages.get(pid).is_some_and(|p| p.absent) => Some(pid),
                    Some(_) => None,
                    // New (mostly read-ahead): made with its frame, clean
                    // and not busy; only what differs is set.
                    None => match self
                        .pages
                        .insert_absent(object, off, Some(frame), Queue::Active)
                    {
                        Ok(pid) => {
                            if (precious || !lock.is_empty())
                                && let Some(p) = self.pages.get_mut(pid)
                            {
                                p.precious = precious;
                                p.lock = lock;
                            }
                            r.pages += 1;
                            continue;
                        }
                        Err(_) => None,
                    },
                }
            };
            let Some(pid) = pid else {
                frames.free_frame(frame);
                r.discarded += 1;
                run = run.min(i);
                continue;
            };
            if let Some(p) = self.pages.get_mut(pid) {
                r.woken |= p.busy;
                p.frame = Some(frame);
                p.busy = false;
                p.absent = false;
                p.error = false;
                p.dirty = false;
                p.precious = precious;
                p.lock = lock;
                p.unlock_requested = VmProt::NONE;
            }
            self.pages.activate(pid);
            r.pages += 1;
        }
        Ok((r, run))
    }

    /// pager_data_unavailable: no data exists for [offset, offset+size);
    /// requested pages become zero-fill (the waiting faults fill them).
    pub fn data_unavailable(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        size: u64,
    ) -> Result<Reply, VmError> {
        self.settle_requested(object, offset, size, false)
    }

    /// pager_data_error: the pager cannot supply [offset, offset+size);
    /// requested pages fail and their faults get MemoryError.
    pub fn data_error(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        size: u64,
    ) -> Result<Reply, VmError> {
        self.settle_requested(object, offset, size, true)
    }

    /// A data_unlock for the page at `offset` could not be asked or was
    /// not answered: the page no longer counts as asked for, so the
    /// faults waiting for it stop waiting (and a later fault may ask
    /// again), the lock staying as it is.
    pub fn unlock_failed(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
    ) -> Result<Reply, VmError> {
        self.end_unlock(object, offset, false)
    }

    /// The pager answered a data_unlock for the page at `offset` with an
    /// error (it failed, timed out or died): the faults waiting for the
    /// unlock stop waiting, and the next one that needs the locked access
    /// gets the memory error, as for a failed data_request (once: a later
    /// fault asks again). The lock stays as it is.
    pub fn unlock_error(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
    ) -> Result<Reply, VmError> {
        self.end_unlock(object, offset, true)
    }

    /// The page at `offset` no longer counts as asked for an unlock; with
    /// `error`, the next fault needing the locked access fails once.
    fn end_unlock(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        error: bool,
    ) -> Result<Reply, VmError> {
        let mut r = Reply::default();
        for pid in self.pages_in(object, offset, PAGE_SIZE)? {
            if let Some(p) = self.pages.get_mut(pid)
                && !p.unlock_requested.is_empty()
            {
                p.unlock_requested = VmProt::NONE;
                p.error |= error;
                r.pages += 1;
                r.woken = true;
            }
        }
        Ok(r)
    }

    /// Ends the requests outstanding on [offset, offset+size) without data:
    /// the placeholders stop being busy (zero-fill, or `error`) and their
    /// waiting faults are woken.
    fn settle_requested(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        size: u64,
        error: bool,
    ) -> Result<Reply, VmError> {
        let mut r = Reply::default();
        for pid in self.pages_in(object, offset, size)? {
            if let Some(p) = self.pages.get_mut(pid)
                && p.busy
                && p.absent
                && !p.cleaning
            {
                p.busy = false;
                p.error = error;
                r.pages += 1;
                r.woken = true;
            }
        }
        Ok(r)
    }

    /// The pager is gone (its port died): outstanding requests fail and so
    /// will later faults that need it.
    pub fn pager_died(&mut self, object: ObjectId) -> Result<Reply, VmError> {
        let size = self.get(object)?.size();
        self.get_mut(object)?.pager_dead = true;
        let mut r = self.data_error(object, ObjectOffset(0), size)?;
        r.woken = true;
        Ok(r)
    }

    /// pager_data_lock: from now on the pages in the range may not be used
    /// for `lock` access; existing mappings are lowered at once. Access no
    /// longer locked satisfies pending unlock requests (their faults are
    /// woken and retry).
    pub fn data_lock(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        size: u64,
        lock: VmProt,
        phys: &mut dyn PhysMaps,
    ) -> Result<Reply, VmError> {
        let mut r = Reply::default();
        for pid in self.pages_in(object, offset, size)? {
            let Some(p) = self.pages.get_mut(pid) else {
                continue;
            };
            if p.absent {
                continue;
            }
            let tighter = !p.lock.contains(lock);
            p.lock = lock;
            // The pager has spoken about the page since any unlock of it
            // failed: that failure is no longer the answer.
            p.error = false;
            if !p.unlock_requested.is_empty() {
                let still = p.unlock_requested.intersect(lock);
                r.woken |= still != p.unlock_requested;
                p.unlock_requested = still;
            }
            let frame = p.frame;
            r.pages += 1;
            if let (true, Some(f)) = (tighter, frame) {
                phys.page_protect(f, allowed_by_lock(lock));
            }
        }
        Ok(r)
    }

    /// pager_flush_request: drop the cached pages in the range, writing
    /// back modified (and precious) ones first. Pages in transit are left
    /// alone.
    pub fn flush_request(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        size: u64,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Result<Vec<ObjectAction>, VmError> {
        let (pages, mut out, port) = self.write_back_work(object, offset, size)?;
        for pid in pages {
            let Some(p) = self.pages.get(pid).copied() else {
                continue;
            };
            if p.busy || p.cleaning {
                continue;
            }
            let Some(f) = p.frame else {
                // Unavailable or failed placeholder: nothing cached.
                self.free_page(pid, frames, phys);
                continue;
            };
            if let Some(a) = self.reclaim_or_write_back(pid, &p, f, object, port, frames, phys) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// pager_clean_request: write back the modified pages in the range but
    /// keep them cached. They are write-protected while the write is in
    /// flight (a write fault waits), so the data written is the data kept.
    pub fn clean_request(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        size: u64,
        phys: &mut dyn PhysMaps,
    ) -> Result<Vec<ObjectAction>, VmError> {
        let (pages, mut out, port) = self.write_back_work(object, offset, size)?;
        for pid in pages {
            let Some(p) = self.pages.get(pid).copied() else {
                continue;
            };
            let Some(f) = p.frame.filter(|_| !p.busy && !p.cleaning) else {
                continue;
            };
            // Write-protect before asking the modified bit, so no write
            // slips in between.
            phys.page_protect(f, VmProt::ALL.without(VmProt::WRITE));
            if p.dirty || phys.clear_modified(f) {
                if let Some(p) = self.pages.get_mut(pid) {
                    p.cleaning = true;
                    p.dirty = false;
                }
                out.push(ObjectAction::DataWrite {
                    object,
                    pager: port,
                    offset: p.offset,
                    frame: f,
                });
            }
        }
        Ok(out)
    }

    /// The pages in the range whose write-back is in flight (a lock
    /// request with a reply waits for each of them).
    pub fn writes_in_flight(
        &self,
        object: ObjectId,
        offset: ObjectOffset,
        size: u64,
    ) -> Result<Vec<ObjectOffset>, VmError> {
        let pages = self.pages_in(object, offset, size)?;
        let mut out = Vec::new();
        for pid in pages {
            if let Some(p) = self.pages.get(pid)
                && p.cleaning
            {
                out.try_reserve(1).map_err(|_| VmError::ResourceShortage)?;
                out.push(p.offset);
            }
        }
        Ok(out)
    }

    /// pager_cache: whether the object may stay cached once unreferenced.
    /// Rescinding it for an already cached object terminates it now.
    pub fn cache(
        &mut self,
        object: ObjectId,
        can_persist: bool,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Result<Vec<ObjectAction>, VmError> {
        let o = self.get_mut(object)?;
        o.can_persist = can_persist;
        if !can_persist && o.state == ObjectState::Cached {
            return self.uncache(object, frames, phys);
        }
        Ok(Vec::new())
    }

    /// One call of a pager on `object` (Table 3-6), whichever way it came
    /// (a message from a guest task, an event from the host device): the
    /// write-backs it starts are returned for the pager to carry out.
    /// `DataProvided` frames are the VM's from here on, used or freed.
    pub fn manager_call(
        &mut self,
        object: ObjectId,
        call: ManagerCall<'_>,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Result<Vec<ObjectAction>, VmError> {
        match call {
            ManagerCall::DataProvided { offset, data, lock } => {
                if self
                    .data_provided(object, offset, data, lock, false, frames)
                    .is_err()
                {
                    for &f in data {
                        frames.free_frame(f);
                    }
                }
                Ok(Vec::new())
            }
            ManagerCall::DataUnavailable { offset, size } => self
                .data_unavailable(object, offset, size)
                .map(|_| Vec::new()),
            ManagerCall::DataError { offset, size } => {
                self.data_error(object, offset, size).map(|_| Vec::new())
            }
            ManagerCall::LockRequest {
                offset,
                size,
                lock,
                clean,
                flush,
            } => {
                // Write back (and drop) first, so what the pager asked to
                // see is on its way before the lock can stall anyone.
                let out = if flush {
                    self.flush_request(object, offset, size, frames, phys)?
                } else if clean {
                    self.clean_request(object, offset, size, phys)?
                } else {
                    Vec::new()
                };
                if let Some(lock) = lock {
                    self.data_lock(object, offset, size, lock, phys)?;
                }
                Ok(out)
            }
            ManagerCall::Cache { may_cache } => self.cache(object, may_cache, frames, phys),
            ManagerCall::Destroy => {
                // The pager ended the object: its faults fail from now on,
                // dirty pages go to the default pager (the object is dead),
                // and nothing stays cached.
                self.pager_died(object)?;
                let size = self.get(object)?.size();
                let end = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
                self.flush_request(object, ObjectOffset(0), end, frames, phys)
            }
        }
    }
}

/// A pager's call on an object (paper Table 3-6, and the later Mach
/// `memory_object_data_error` and `destroy`).
#[derive(Clone, Copy, Debug)]
pub enum ManagerCall<'a> {
    /// pager_data_provided, here unprompted (read-ahead, or pushed).
    DataProvided {
        offset: ObjectOffset,
        data: &'a [PhysAddr],
        lock: VmProt,
    },
    DataUnavailable {
        offset: ObjectOffset,
        size: u64,
    },
    DataError {
        offset: ObjectOffset,
        size: u64,
    },
    /// pager_data_lock (unless `lock` is None), with
    /// pager_flush_request's and pager_clean_request's work when `flush` or
    /// `clean` is set (the later memory_object_lock_request in one call).
    LockRequest {
        offset: ObjectOffset,
        size: u64,
        lock: Option<VmProt>,
        clean: bool,
        flush: bool,
    },
    Cache {
        may_cache: bool,
    },
    Destroy,
}
