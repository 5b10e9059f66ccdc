//! Memory objects (paper §5.2): the kernel's record of each object mapped in
//! some address map, or kept cached because its pager allowed it.
//!
//! [`Objects`] is an arena of objects named by generation-checked
//! [`ObjectId`]s; it also owns the resident page table (page.rs), because
//! nearly everything done to an object (terminate, collapse, the pager's
//! replies) is done to its pages.
//!
//! # Kinds
//!
//! - Internal: created by the kernel (vm_allocate, copy-on-write shadows).
//!   Zero-fill on first touch; once a page has been written to the default
//!   pager its offset is remembered (`paged_out`, Mach's existence map), so
//!   a fault on it asks the default pager instead of zero-filling, and the
//!   kernel never asks the default pager for pages it never gave it.
//! - External: backed by a pager (a task or the host), named by an opaque
//!   [`PagerRef`] the kernel maps to the memory object port.
//!
//! # Lifetime
//!
//! Map entries, shadows and in-transit copies hold references
//! ([`ObjectRefs`]). Dropping the last one only queues the object: freeing
//! its frames needs the frame source and the physical maps, which
//! `ObjectRefs::release` does not get, so the kernel calls
//! [`Objects::reap`] afterwards and sends the messages it returns.
//!
//! # Copy strategy
//!
//! Only symmetric copy-on-write by shadowing (the map's needs_copy); no copy
//! objects, so no per-object copy-strategy flag is needed.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::addr::{PAGE_SIZE, PhysAddr};
use crate::vm::page::{FrameSource, PageId, ResidentPages};
use crate::vm::pmap::PhysMaps;
use crate::vm::types::{ObjectId, ObjectOffset, ObjectRefs, VmError, VmProt};

/// A pager, as the kernel names it (it maps this to a port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PagerRef(pub u64);

/// Where a message about an object's data goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagerPort {
    /// The object's own pager.
    Pager(PagerRef),
    /// The default pager, for an internal object: the kernel creates the
    /// object's default-pager port (pager_create) on first use.
    Default,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Internal,
    External(PagerRef),
}

/// Where an object is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectState {
    /// Referenced (or queued for reaping at zero references).
    Live,
    /// No references; kept with its pages because the pager allowed
    /// caching (pager_cache).
    Cached,
    /// No references; waiting for its last data_writes to complete before
    /// it is gone.
    Terminating,
}

/// What the kernel must send or do on the object layer's behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectAction {
    /// pager_data_write of one page. The frame stays the object's (its page
    /// busy) until the kernel reports [`Objects::data_write_done`].
    DataWrite {
        object: ObjectId,
        pager: PagerPort,
        offset: ObjectOffset,
        frame: PhysAddr,
    },
    /// The object is gone: drop the pager's ports (its termination).
    Terminate { object: ObjectId, pager: PagerRef },
    /// An internal object with data at the default pager is gone: the
    /// default pager may drop that storage.
    DefaultPagerRelease { object: ObjectId },
}

/// Result of [`Objects::enter_pager`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagerEntry {
    /// Already known (live or cached): one more reference.
    Existing(ObjectId),
    /// New object, one reference: the kernel sends pager_init and calls
    /// [`Objects::set_pager_ready`] when the pager is ready.
    New(ObjectId),
}

/// One memory object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub(super) size: u64,
    pub(super) refs: u32,
    pub(super) kind: ObjectKind,
    pub(super) shadow: Option<(ObjectId, ObjectOffset)>,
    pub(super) can_persist: bool,
    pub(super) pager_ready: bool,
    pub(super) pager_dead: bool,
    pub(super) state: ObjectState,
    /// Internal objects: page offsets the default pager holds.
    pub(super) paged_out: BTreeSet<u64>,
    /// On the dying list (so it is queued once).
    queued: bool,
}

impl Object {
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn refs(&self) -> u32 {
        self.refs
    }
    pub fn kind(&self) -> ObjectKind {
        self.kind
    }
    pub fn shadow(&self) -> Option<(ObjectId, ObjectOffset)> {
        self.shadow
    }
    pub fn can_persist(&self) -> bool {
        self.can_persist
    }
    pub fn pager_ready(&self) -> bool {
        self.pager_ready
    }
    pub fn pager_dead(&self) -> bool {
        self.pager_dead
    }
    pub fn state(&self) -> ObjectState {
        self.state
    }
    /// Whether the default pager holds the page at `offset`.
    pub fn is_paged_out(&self, offset: ObjectOffset) -> bool {
        self.paged_out.contains(&offset.0)
    }
    /// Where this object's data messages go.
    pub fn pager_port(&self) -> PagerPort {
        match self.kind {
            ObjectKind::Internal => PagerPort::Default,
            ObjectKind::External(p) => PagerPort::Pager(p),
        }
    }
    /// Where pageout sends this object's dirty pages: its pager, or the
    /// default pager once that pager is dead (double paging, paper §6.2.3:
    /// the data is kept, and a later fault reads it back from there).
    pub fn write_back_port(&self) -> PagerPort {
        if self.pager_dead {
            PagerPort::Default
        } else {
            self.pager_port()
        }
    }
}

struct Slot {
    generation: u32,
    object: Option<Object>,
}

/// The object table.
pub struct Objects {
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    limit: usize,
    count: usize,
    pub(super) by_pager: BTreeMap<PagerRef, ObjectId>,
    /// Objects whose last reference went; capacity kept ≥ `count` so
    /// `release` never allocates.
    dying: Vec<ObjectId>,
    /// The resident pages of every object.
    pub pages: ResidentPages,
    /// Modified pages (resident, or kept by the default pager) that ended
    /// with an object whose pager is dead: there was nowhere to write them.
    pub lost_pages: u64,
}

impl core::fmt::Debug for Objects {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Objects")
            .field("count", &self.count)
            .field("pages", &self.pages)
            .finish()
    }
}

impl Objects {
    /// At most `object_limit` objects (live, cached or terminating) and
    /// `page_limit` resident pages; `reserved_frames` are kept for
    /// privileged allocations.
    pub fn new(object_limit: usize, page_limit: usize, reserved_frames: u64) -> Objects {
        Objects {
            slots: Vec::new(),
            free_slots: Vec::new(),
            limit: object_limit.min(u32::MAX as usize),
            count: 0,
            by_pager: BTreeMap::new(),
            dying: Vec::new(),
            pages: ResidentPages::new(page_limit, reserved_frames),
            lost_pages: 0,
        }
    }

    pub fn object_limit(&self) -> usize {
        self.limit
    }
    /// Objects in the table (live, cached and terminating).
    pub fn count(&self) -> usize {
        self.count
    }

    pub fn get(&self, id: ObjectId) -> Result<&Object, VmError> {
        match self.slots.get(id.index as usize) {
            Some(Slot {
                generation,
                object: Some(o),
            }) if *generation == id.generation => Ok(o),
            _ => Err(VmError::InvalidArgument),
        }
    }

    pub(super) fn get_mut(&mut self, id: ObjectId) -> Result<&mut Object, VmError> {
        match self.slots.get_mut(id.index as usize) {
            Some(Slot {
                generation,
                object: Some(o),
            }) if *generation == id.generation => Ok(o),
            _ => Err(VmError::InvalidArgument),
        }
    }

    fn insert(&mut self, object: Object) -> Result<ObjectId, VmError> {
        if self.count >= self.limit {
            return Err(VmError::ResourceShortage);
        }
        // Keep release() allocation-free: room for every object to die.
        let need = (self.count + 1).saturating_sub(self.dying.len());
        self.dying
            .try_reserve(need)
            .map_err(|_| VmError::ResourceShortage)?;
        let index = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.slots
                    .try_reserve(1)
                    .map_err(|_| VmError::ResourceShortage)?;
                self.free_slots
                    .try_reserve(self.slots.len() + 1 - self.free_slots.len())
                    .map_err(|_| VmError::ResourceShortage)?;
                self.slots.push(Slot {
                    generation: 0,
                    object: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.object = Some(object);
        self.count += 1;
        Ok(ObjectId {
            index,
            generation: slot.generation,
        })
    }

    /// Frees the slot; the generation bump makes old names stale.
    fn remove_slot(&mut self, id: ObjectId) -> Option<Object> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let o = slot.object.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free_slots.push(id.index);
        self.count -= 1;
        if let ObjectKind::External(p) = o.kind
            && self.by_pager.get(&p) == Some(&id)
        {
            self.by_pager.remove(&p);
        }
        Some(o)
    }

    fn new_object(size: u64, kind: ObjectKind, shadow: Option<(ObjectId, ObjectOffset)>) -> Object {
        Object {
            size,
            refs: 1,
            kind,
            shadow,
            can_persist: false,
            pager_ready: matches!(kind, ObjectKind::Internal),
            pager_dead: false,
            state: ObjectState::Live,
            paged_out: BTreeSet::new(),
            queued: false,
        }
    }

    fn check_size(size: u64) -> Result<(), VmError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
            return Err(VmError::InvalidArgument);
        }
        Ok(())
    }

    /// A zero-fill object of `size` bytes (vm_allocate), one reference.
    pub fn create_internal(&mut self, size: u64) -> Result<ObjectId, VmError> {
        Self::check_size(size)?;
        self.insert(Self::new_object(size, ObjectKind::Internal, None))
    }

    /// The object for `pager` (vm_allocate_with_pager): the existing one
    /// (revived from the cache if need be, grown to `size`) or a new one.
    /// ResourceShortage while an old object of that pager is still
    /// terminating (retry once its writes complete) or at the limit.
    pub fn enter_pager(&mut self, pager: PagerRef, size: u64) -> Result<PagerEntry, VmError> {
        Self::check_size(size)?;
        if let Some(&id) = self.by_pager.get(&pager) {
            let o = self.get_mut(id)?;
            match o.state {
                ObjectState::Terminating => return Err(VmError::ResourceShortage),
                ObjectState::Cached => {
                    o.state = ObjectState::Live;
                    o.refs = 1;
                }
                ObjectState::Live => {
                    o.refs = o.refs.checked_add(1).ok_or(VmError::ResourceShortage)?
                }
            }
            o.size = o.size.max(size);
            return Ok(PagerEntry::Existing(id));
        }
        let id = self.insert(Self::new_object(size, ObjectKind::External(pager), None))?;
        self.by_pager.insert(pager, id);
        Ok(PagerEntry::New(id))
    }

    /// The object a pager's message names (its pager request port).
    pub fn lookup_pager(&self, pager: PagerRef) -> Option<ObjectId> {
        self.by_pager.get(&pager).copied()
    }

    /// The pager answered pager_init: faults may now send it requests.
    pub fn set_pager_ready(&mut self, id: ObjectId) -> Result<(), VmError> {
        self.get_mut(id)?.pager_ready = true;
        Ok(())
    }

    /// Removes a page, first removing every mapping of its frame, and
    /// gives the frame back.
    pub(super) fn free_page(
        &mut self,
        pid: PageId,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) {
        if let Some(p) = self.pages.remove(pid)
            && let Some(f) = p.frame
        {
            phys.page_protect(f, VmProt::NONE);
            // The frame's next page must not inherit this one's referenced
            // and modified bits (a clean page read in would look dirty).
            phys.clear_modified(f);
            phys.clear_referenced(f);
            frames.free_frame(f);
        }
    }

    /// Takes page `pid` (resident in `frame`) out of every mapping, then
    /// frees it if the pager already has its data, or starts writing it back
    /// (the page stays busy and cleaning until `data_write_done`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reclaim_or_write_back(
        &mut self,
        pid: PageId,
        page: &crate::vm::page::Page,
        frame: PhysAddr,
        object: ObjectId,
        pager: PagerPort,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Option<ObjectAction> {
        phys.page_protect(frame, VmProt::NONE);
        if !(page.dirty || page.precious || phys.clear_modified(frame)) {
            self.free_page(pid, frames, phys);
            return None;
        }
        self.pages.dequeue(pid);
        if let Some(p) = self.pages.get_mut(pid) {
            p.busy = true;
            p.cleaning = true;
            p.dirty = false;
        }
        Some(ObjectAction::DataWrite {
            object,
            pager,
            offset: page.offset,
            frame,
        })
    }

    /// Frees every object whose last reference went since the last call
    /// (and those their death releases in turn), returning the messages to
    /// send. An object the actions cannot be reserved for stays queued
    /// (ResourceShortage; call again later).
    ///
    /// The kernel calls this after every VM operation, most of which
    /// release nothing: that case is one inline check.
    /// Whether an object waits to be reaped (checked before `reap` on
    /// every VM operation, where there mostly is none).
    #[inline]
    pub fn has_dying(&self) -> bool {
        !self.dying.is_empty()
    }

    #[inline]
    pub fn reap(
        &mut self,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Result<Vec<ObjectAction>, VmError> {
        if self.dying.is_empty() {
            return Ok(Vec::new());
        }
        self.reap_dying(frames, phys)
    }

    #[inline(never)]
    fn reap_dying(
        &mut self,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Result<Vec<ObjectAction>, VmError> {
        let mut out = Vec::new();
        while let Some(&id) = self.dying.last() {
            if let Ok(o) = self.get_mut(id) {
                o.queued = false;
            }
            match self.get(id) {
                Ok(o) if o.refs == 0 && o.state == ObjectState::Live => {}
                // Revived, or already gone: nothing to do.
                _ => {
                    self.dying.pop();
                    continue;
                }
            }
            let pages = self.pages.object_pages(id, 0, u64::MAX)?;
            if out.try_reserve(pages.len() + 2).is_err() {
                if let Ok(o) = self.get_mut(id) {
                    o.queued = true;
                }
                return Err(VmError::ResourceShortage);
            }
            self.dying.pop();
            self.terminate(id, &pages, frames, phys, &mut out);
        }
        Ok(out)
    }

    /// Ends an object with no references (`pages`: its resident pages;
    /// `out` has room for one action per page plus two).
    fn terminate(
        &mut self,
        id: ObjectId,
        pages: &[PageId],
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
        out: &mut Vec<ObjectAction>,
    ) {
        let Ok(o) = self.get(id) else { return };
        let (kind, can_persist, dead, shadow) = (o.kind, o.can_persist, o.pager_dead, o.shadow);
        if let ObjectKind::External(pager) = kind {
            if can_persist && !dead {
                if let Ok(o) = self.get_mut(id) {
                    o.state = ObjectState::Cached;
                }
                return;
            }
            // Modifications go back to the pager before it is told the
            // object is gone; clean pages it already has.
            for &pid in pages {
                let Some(p) = self.pages.get(pid).copied() else {
                    continue;
                };
                if p.cleaning {
                    // Its write is in flight already; wait for it.
                    if let Some(p) = self.pages.get_mut(pid) {
                        p.busy = true;
                    }
                    continue;
                }
                let Some(f) = p.frame.filter(|_| !p.busy && !dead) else {
                    if let (true, false, Some(f)) = (dead, p.busy, p.frame) {
                        // Unmapped first, so the modified bit is final.
                        phys.page_protect(f, VmProt::NONE);
                        if p.dirty || phys.clear_modified(f) {
                            self.lost_pages += 1;
                        }
                    }
                    self.free_page(pid, frames, phys);
                    continue;
                };
                if let Some(a) = self.reclaim_or_write_back(
                    pid,
                    &p,
                    f,
                    id,
                    PagerPort::Pager(pager),
                    frames,
                    phys,
                ) {
                    out.push(a);
                }
            }
            if self.pages.has_pages(id) {
                if let Ok(o) = self.get_mut(id) {
                    o.state = ObjectState::Terminating;
                }
            } else if let Some(a) = self.end(id) {
                out.push(a);
            }
            return;
        }
        // Internal: the data dies with the object.
        for &pid in pages {
            match self.pages.get(pid) {
                Some(p) if p.cleaning => {
                    if let Some(p) = self.pages.get_mut(pid) {
                        p.busy = true;
                    }
                }
                _ => self.free_page(pid, frames, phys),
            }
        }
        if self.pages.has_pages(id) {
            // Writes in flight; data_write_done finishes the job.
            if let Ok(o) = self.get_mut(id) {
                o.state = ObjectState::Terminating;
                o.shadow = None;
            }
        } else if self
            .remove_slot(id)
            .is_some_and(|o| !o.paged_out.is_empty())
        {
            out.push(ObjectAction::DefaultPagerRelease { object: id });
        }
        if let Some((b, _)) = shadow {
            self.release(b);
        }
    }

    /// Terminates one cached object (the oldest slot first), to make room
    /// when [`Objects::enter_pager`] or a create hits the limit. Empty when
    /// nothing is cached.
    pub fn evict_cached(
        &mut self,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Result<Vec<ObjectAction>, VmError> {
        let found = self
            .slots
            .iter()
            .enumerate()
            .find_map(|(i, s)| match &s.object {
                Some(o) if o.state == ObjectState::Cached => Some(ObjectId {
                    index: i as u32,
                    generation: s.generation,
                }),
                _ => None,
            });
        let Some(id) = found else {
            return Ok(Vec::new());
        };
        self.uncache(id, frames, phys)
    }

    /// Whether some object is cached (kept after its last reference).
    pub fn has_cached(&self) -> bool {
        self.slots.iter().any(|s| {
            s.object
                .as_ref()
                .is_some_and(|o| o.state == ObjectState::Cached)
        })
    }

    /// Terminates a cached object now.
    pub(super) fn uncache(
        &mut self,
        id: ObjectId,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Result<Vec<ObjectAction>, VmError> {
        let pages = self.pages.object_pages(id, 0, u64::MAX)?;
        let mut out = Vec::new();
        out.try_reserve(pages.len() + 2)
            .map_err(|_| VmError::ResourceShortage)?;
        let o = self.get_mut(id)?;
        if o.state != ObjectState::Cached {
            return Ok(out);
        }
        o.state = ObjectState::Live;
        o.can_persist = false;
        self.terminate(id, &pages, frames, phys, &mut out);
        Ok(out)
    }

    /// The kernel has handed the data of a DataWrite to the pager (the
    /// message is sent and the frame's contents are no longer needed).
    /// Evicted pages are freed; a page cleaned in place stays. The last
    /// write of a terminating object ends it.
    pub fn data_write_done(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Result<Option<ObjectAction>, VmError> {
        let o = self.get_mut(object)?;
        let (kind, state) = (o.kind, o.state);
        if kind == ObjectKind::Internal {
            // Allocation failure here aborts (B-tree); bounded by the
            // object's pages.
            o.paged_out.insert(offset.0);
        }
        let pid = self
            .pages
            .lookup(object, offset)
            .ok_or(VmError::InvalidArgument)?;
        let p = self
            .pages
            .get(pid)
            .copied()
            .ok_or(VmError::InvalidArgument)?;
        if !p.cleaning {
            return Err(VmError::InvalidArgument);
        }
        if p.busy {
            self.free_page(pid, frames, phys);
        } else if let Some(p) = self.pages.get_mut(pid) {
            p.cleaning = false;
        }
        if state == ObjectState::Terminating && !self.pages.has_pages(object) {
            return Ok(self.end(object));
        }
        Ok(None)
    }

    /// Removes a terminated object whose last page is gone: what is to be
    /// sent for it (an external object's Terminate, which also frees what
    /// the default pager kept of it; an internal one's release of its
    /// default-pager storage). Pages the default pager kept for a dead
    /// pager's object (double paging) end with it: counted lost.
    fn end(&mut self, object: ObjectId) -> Option<ObjectAction> {
        let o = self.remove_slot(object)?;
        match o.kind {
            ObjectKind::External(pager) => {
                self.lost_pages += o.paged_out.len() as u64;
                Some(ObjectAction::Terminate { object, pager })
            }
            ObjectKind::Internal => Some(ObjectAction::DefaultPagerRelease { object }),
        }
    }

    /// A DataWrite the kernel could not carry out (no swap slot left, a
    /// device error): the page keeps its data in memory, dirty, back on the
    /// active queue, as if pageout had never picked it. A terminating
    /// object's page is simply freed (nobody needs its data); its last one
    /// ends the object as [`Objects::data_write_done`] would.
    /// A dead pager's page was written to the default pager (its
    /// write-back went there, see [`Object::write_back_port`]): faults on
    /// it now read it back from there rather than failing.
    pub fn double_paged(&mut self, object: ObjectId, offset: ObjectOffset) -> Result<(), VmError> {
        let o = self.get_mut(object)?;
        if o.pager_dead {
            // Allocation failure here aborts (B-tree); bounded by the
            // object's pages.
            o.paged_out.insert(offset.0);
        }
        Ok(())
    }

    pub fn data_write_refused(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Result<Option<ObjectAction>, VmError> {
        let state = self.get(object)?.state;
        let pid = self
            .pages
            .lookup(object, offset)
            .ok_or(VmError::InvalidArgument)?;
        if !self.pages.get(pid).is_some_and(|p| p.cleaning) {
            return Err(VmError::InvalidArgument);
        }
        if state == ObjectState::Terminating {
            self.free_page(pid, frames, phys);
            if !self.pages.has_pages(object) {
                return Ok(self.end(object));
            }
            return Ok(None);
        }
        if let Some(p) = self.pages.get_mut(pid) {
            p.busy = false;
            p.cleaning = false;
            p.dirty = true;
        }
        self.pages.activate(pid);
        Ok(None)
    }

    /// Whether `obj` has data for `off`: resident (in any state) or with
    /// the default pager.
    fn has_data(&self, obj: ObjectId, o: &Object, off: u64) -> bool {
        self.pages.lookup(obj, ObjectOffset(off)).is_some() || o.paged_out.contains(&off)
    }

    /// Shadow-chain collapse (§5.5, vm_object_collapse) below `top`:
    /// repeatedly, while the backing object is internal and quiet (no page
    /// in transit),
    /// - merge: if only `top` references it, move its visible pages that
    ///   `top` lacks up into `top`, free the rest, and drop it;
    /// - bypass: else, if it has nothing `top` can see that `top` does not
    ///   hide, point `top` at its backing instead.
    ///
    /// Returns whether the chain got shorter. Pages the default pager holds
    /// for the backing object cannot move (they are the pager's, under the
    /// backing object's name), so such an object is merged only if `top`
    /// hides them all.
    pub fn collapse(
        &mut self,
        top: ObjectId,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Result<bool, VmError> {
        self.collapse_inner(top, true, frames, phys)
    }

    /// Only the merge half: cheap enough for every fault (a reference-count
    /// check) since each merge removes an object.
    ///
    /// The first round's checks are made here, inline, so a fault whose
    /// backing object is shared (the usual case after a fork or a copy)
    /// pays a few compares, not the call into the whole collapse.
    #[inline]
    pub(super) fn collapse_merge_only(
        &mut self,
        top: ObjectId,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Result<bool, VmError> {
        let Some((b, _)) = self.get(top)?.shadow else {
            return Ok(false);
        };
        let bo = self.get(b)?;
        let mergeable = bo.kind == ObjectKind::Internal
            && bo.state == ObjectState::Live
            && bo.refs == 1
            && bo.paged_out.is_empty();
        if !mergeable {
            return Ok(false);
        }
        self.collapse_inner(top, false, frames, phys)
    }

    fn collapse_inner(
        &mut self,
        top: ObjectId,
        bypass: bool,
        frames: &mut dyn FrameSource,
        phys: &mut dyn PhysMaps,
    ) -> Result<bool, VmError> {
        let mut changed = false;
        loop {
            let t = self.get(top)?;
            let Some((b, soff)) = t.shadow else {
                return Ok(changed);
            };
            let tsize = t.size;
            let bo = self.get(b)?;
            if bo.kind != ObjectKind::Internal || bo.state != ObjectState::Live {
                return Ok(changed);
            }
            // With data at the default pager b cannot be merged (that data
            // is filed under b's name); bypassing it lets it die instead.
            let merge = bo.refs == 1 && bo.paged_out.is_empty();
            if !merge && !bypass {
                return Ok(changed);
            }
            let window = soff.0..soff.0.saturating_add(tsize);
            let bpages = self.pages.object_pages(b, 0, u64::MAX)?;
            let t = self.get(top)?;
            // Anything in transit pins the backing object's pages.
            let quiet = bpages.iter().all(|&pid| {
                self.pages
                    .get(pid)
                    .is_some_and(|p| !p.busy && !p.cleaning && !p.absent)
            });
            // The default pager's pages of b that top would see.
            let hidden_paged = bo
                .paged_out
                .range(window.clone())
                .all(|&off| self.has_data(top, t, off - soff.0));
            if !quiet || !hidden_paged {
                return Ok(changed);
            }
            if !merge {
                let hidden = bpages.iter().all(|&pid| {
                    self.pages.get(pid).is_some_and(|p| {
                        !window.contains(&p.offset.0) || self.has_data(top, t, p.offset.0 - soff.0)
                    })
                });
                if !hidden {
                    return Ok(changed);
                }
            }
            let bb = bo.shadow;
            let new_shadow = match bb {
                Some((bb, boff)) => Some((
                    bb,
                    ObjectOffset(soff.0.checked_add(boff.0).ok_or(VmError::InvalidArgument)?),
                )),
                None => None,
            };
            if merge {
                for pid in bpages {
                    let Some(p) = self.pages.get(pid).copied() else {
                        continue;
                    };
                    let moved = window.contains(&p.offset.0) && {
                        let to = p.offset.0 - soff.0;
                        let t = self.get(top)?;
                        !self.has_data(top, t, to)
                            && self.pages.rename(pid, top, ObjectOffset(to)).is_ok()
                    };
                    if !moved {
                        self.free_page(pid, frames, phys);
                    }
                }
                // b's reference on its backing passes to top.
                self.remove_slot(b);
                self.get_mut(top)?.shadow = new_shadow;
            } else {
                if let Some((bb, _)) = new_shadow {
                    self.reference(bb);
                }
                self.get_mut(top)?.shadow = new_shadow;
                self.release(b);
            }
            changed = true;
        }
    }
}

impl ObjectRefs for Objects {
    fn reference(&mut self, id: ObjectId) {
        if let Ok(o) = self.get_mut(id) {
            match o.state {
                ObjectState::Live => o.refs = o.refs.saturating_add(1),
                ObjectState::Cached => {
                    o.state = ObjectState::Live;
                    o.refs = 1;
                }
                // Unreachable by a correct caller (no one holds its name).
                ObjectState::Terminating => {}
            }
        }
    }

    fn release(&mut self, id: ObjectId) {
        let room = self.dying.len() < self.dying.capacity();
        let Ok(o) = self.get_mut(id) else { return };
        if o.state != ObjectState::Live || o.refs == 0 {
            return;
        }
        o.refs -= 1;
        if o.refs == 0 && !o.queued && room {
            // Capacity is reserved per object at creation and each object
            // is queued once, so this push does not allocate.
            o.queued = true;
            self.dying.push(id);
        }
    }

    fn shadow(
        &mut self,
        id: ObjectId,
        offset: ObjectOffset,
        size: u64,
    ) -> Result<ObjectId, VmError> {
        Self::check_size(size)?;
        if !offset.is_page_aligned() || offset.checked_add(size).is_none() {
            return Err(VmError::InvalidArgument);
        }
        let o = self.get(id)?;
        if o.state != ObjectState::Live || o.refs == 0 {
            return Err(VmError::InvalidArgument);
        }
        self.insert(Self::new_object(
            size,
            ObjectKind::Internal,
            Some((id, offset)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::VirtAddr;
    use crate::vm::page::FramePool;
    use crate::vm::pmap::{Pmap, SimMachine};

    fn off(p: u64) -> ObjectOffset {
        ObjectOffset(p * PAGE_SIZE)
    }

    struct W {
        m: SimMachine,
        objs: Objects,
        pool: FramePool,
    }
    fn world() -> W {
        W {
            m: SimMachine::new(),
            objs: Objects::new(4, 16, 0),
            pool: FramePool::new(PhysAddr(0x100000), 16),
        }
    }
    /// A resident page at `p` of `o`, mapped in a new space at va p.
    fn resident(w: &mut W, o: ObjectId, p: u64, dirty: bool) -> PhysAddr {
        let f = w.objs.pages.alloc_frame(&mut w.pool, false).unwrap().addr;
        let pid = w.objs.pages.insert(o, off(p), Some(f)).unwrap();
        w.objs.pages.activate(pid);
        let s = w.m.new_space();
        w.m.pmap(s)
            .enter(VirtAddr(p * PAGE_SIZE), f, VmProt::DEFAULT)
            .unwrap();
        if dirty {
            assert!(w.m.touch(s, VirtAddr(p * PAGE_SIZE), true));
        }
        f
    }

    #[test]
    fn ids_are_generation_checked_and_bad_ids_harmless() {
        let mut w = world();
        let a = w.objs.create_internal(PAGE_SIZE).unwrap();
        w.objs.release(a);
        assert!(w.objs.get(a).is_ok(), "queued, not yet reaped");
        assert!(w.objs.reap(&mut w.pool, &mut w.m).unwrap().is_empty());
        assert_eq!(w.objs.get(a).map(|_| ()), Err(VmError::InvalidArgument));
        let b = w.objs.create_internal(PAGE_SIZE).unwrap();
        assert_eq!(b.index, a.index);
        assert_ne!(b, a);
        // Stale or made-up names do nothing.
        w.objs.reference(a);
        w.objs.release(a);
        w.objs.release(ObjectId {
            index: 99,
            generation: 0,
        });
        assert_eq!(w.objs.get(b).unwrap().refs(), 1);
        assert_eq!(
            w.objs.shadow(a, off(0), PAGE_SIZE),
            Err(VmError::InvalidArgument)
        );
        assert_eq!(
            w.objs.data_unavailable(a, off(0), PAGE_SIZE).map(|_| ()),
            Err(VmError::InvalidArgument)
        );
        assert_eq!(
            w.objs.data_write_done(b, off(0), &mut w.pool, &mut w.m),
            Err(VmError::InvalidArgument),
            "no write in flight"
        );
        assert_eq!(w.objs.create_internal(0), Err(VmError::InvalidArgument));
        assert_eq!(w.objs.create_internal(5), Err(VmError::InvalidArgument));
    }

    #[test]
    fn object_limit() {
        let mut w = world();
        let a = w.objs.create_internal(PAGE_SIZE).unwrap();
        for _ in 0..3 {
            w.objs.create_internal(PAGE_SIZE).unwrap();
        }
        assert_eq!(
            w.objs.create_internal(PAGE_SIZE),
            Err(VmError::ResourceShortage)
        );
        assert_eq!(
            w.objs.shadow(a, off(0), PAGE_SIZE),
            Err(VmError::ResourceShortage)
        );
        assert_eq!(
            w.objs.enter_pager(PagerRef(1), PAGE_SIZE),
            Err(VmError::ResourceShortage)
        );
        // A failed shadow leaves the caller's reference where it was.
        assert_eq!(w.objs.get(a).unwrap().refs(), 1);
    }

    #[test]
    fn internal_death_frees_pages_and_releases_chain() {
        let mut w = world();
        let free = w.pool.free_count();
        let base = w.objs.create_internal(2 * PAGE_SIZE).unwrap();
        let top = w.objs.shadow(base, off(0), 2 * PAGE_SIZE).unwrap();
        let f = resident(&mut w, base, 0, true);
        resident(&mut w, top, 1, true);
        w.objs.get_mut(base).unwrap().paged_out.insert(off(1).0);
        w.objs.release(top);
        let acts = w.objs.reap(&mut w.pool, &mut w.m).unwrap();
        assert_eq!(acts, [ObjectAction::DefaultPagerRelease { object: base }]);
        assert_eq!(w.objs.count(), 0);
        assert_eq!(w.objs.pages.resident_count(), 0);
        assert_eq!(w.pool.free_count(), free);
        assert!(w.m.mappings_of(f).is_empty(), "unmapped before freed");
    }

    #[test]
    fn external_termination_writes_back_then_terminates() {
        let mut w = world();
        let PagerEntry::New(o) = w.objs.enter_pager(PagerRef(3), 4 * PAGE_SIZE).unwrap() else {
            panic!()
        };
        let dirty = resident(&mut w, o, 0, true);
        resident(&mut w, o, 1, false);
        assert_eq!(w.objs.lookup_pager(PagerRef(3)), Some(o));
        w.objs.release(o);
        let acts = w.objs.reap(&mut w.pool, &mut w.m).unwrap();
        assert_eq!(
            acts,
            [ObjectAction::DataWrite {
                object: o,
                pager: PagerPort::Pager(PagerRef(3)),
                offset: off(0),
                frame: dirty
            }]
        );
        assert_eq!(w.objs.get(o).unwrap().state(), ObjectState::Terminating);
        assert_eq!(w.objs.pages.resident_count(), 1, "clean page freed");
        // Mapping it again must wait for the end.
        assert_eq!(
            w.objs.enter_pager(PagerRef(3), PAGE_SIZE),
            Err(VmError::ResourceShortage)
        );
        assert_eq!(
            w.objs
                .data_write_done(o, off(0), &mut w.pool, &mut w.m)
                .unwrap(),
            Some(ObjectAction::Terminate {
                object: o,
                pager: PagerRef(3)
            })
        );
        assert!(w.objs.get(o).is_err());
        assert_eq!(w.objs.lookup_pager(PagerRef(3)), None);
        assert_eq!(w.pool.free_count(), 16);
        assert!(matches!(
            w.objs.enter_pager(PagerRef(3), PAGE_SIZE),
            Ok(PagerEntry::New(_))
        ));
    }

    #[test]
    fn cached_object_survives_and_is_found_again() {
        let mut w = world();
        let PagerEntry::New(o) = w.objs.enter_pager(PagerRef(5), PAGE_SIZE).unwrap() else {
            panic!()
        };
        assert!(
            w.objs
                .cache(o, true, &mut w.pool, &mut w.m)
                .unwrap()
                .is_empty()
        );
        resident(&mut w, o, 0, false);
        w.objs.release(o);
        assert!(w.objs.reap(&mut w.pool, &mut w.m).unwrap().is_empty());
        assert_eq!(w.objs.get(o).unwrap().state(), ObjectState::Cached);
        assert_eq!(w.objs.pages.resident_count(), 1);
        assert_eq!(
            w.objs.enter_pager(PagerRef(5), PAGE_SIZE),
            Ok(PagerEntry::Existing(o))
        );
        assert_eq!(w.objs.get(o).unwrap().refs(), 1);
        w.objs.release(o);
        w.objs.reap(&mut w.pool, &mut w.m).unwrap();
        // Rescinding the permission ends it.
        assert_eq!(
            w.objs.cache(o, false, &mut w.pool, &mut w.m).unwrap(),
            [ObjectAction::Terminate {
                object: o,
                pager: PagerRef(5)
            }]
        );
        assert!(w.objs.get(o).is_err());
        assert_eq!(w.objs.pages.resident_count(), 0);
        // Eviction of a cached object to make room.
        let PagerEntry::New(o) = w.objs.enter_pager(PagerRef(6), PAGE_SIZE).unwrap() else {
            panic!()
        };
        w.objs.cache(o, true, &mut w.pool, &mut w.m).unwrap();
        w.objs.release(o);
        w.objs.reap(&mut w.pool, &mut w.m).unwrap();
        assert_eq!(
            w.objs.evict_cached(&mut w.pool, &mut w.m).unwrap(),
            [ObjectAction::Terminate {
                object: o,
                pager: PagerRef(6)
            }]
        );
        assert!(
            w.objs
                .evict_cached(&mut w.pool, &mut w.m)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn flush_and_clean_requests() {
        let mut w = world();
        let PagerEntry::New(o) = w.objs.enter_pager(PagerRef(9), 4 * PAGE_SIZE).unwrap() else {
            panic!()
        };
        let d0 = resident(&mut w, o, 0, true);
        resident(&mut w, o, 1, false);
        let d2 = resident(&mut w, o, 2, true);
        // clean: write back page 0, keep it, write-protected meanwhile.
        let acts = w
            .objs
            .clean_request(o, off(0), PAGE_SIZE, &mut w.m)
            .unwrap();
        assert_eq!(acts.len(), 1);
        let (s, _) = w.m.mappings_of(d0)[0];
        assert_eq!(w.m.extract(s, VirtAddr(0)), Some((d0, VmProt::READ)));
        assert!(
            w.objs
                .clean_request(o, off(0), PAGE_SIZE, &mut w.m)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            w.objs.data_write_done(o, off(0), &mut w.pool, &mut w.m),
            Ok(None)
        );
        assert_eq!(w.objs.pages.resident_count(), 3);
        // flush the lot: page 2 is dirty → written; 0 (now clean) and 1 freed.
        let acts = w
            .objs
            .flush_request(o, off(0), 4 * PAGE_SIZE, &mut w.pool, &mut w.m)
            .unwrap();
        assert_eq!(
            acts,
            [ObjectAction::DataWrite {
                object: o,
                pager: PagerPort::Pager(PagerRef(9)),
                offset: off(2),
                frame: d2
            }]
        );
        assert_eq!(w.objs.pages.resident_count(), 1);
        assert!(w.m.mappings_of(d2).is_empty());
        w.objs
            .data_write_done(o, off(2), &mut w.pool, &mut w.m)
            .unwrap();
        assert_eq!(w.objs.pages.resident_count(), 0);
        assert_eq!(
            w.objs
                .flush_request(o, ObjectOffset(1), PAGE_SIZE, &mut w.pool, &mut w.m),
            Err(VmError::InvalidArgument)
        );
        assert_eq!(
            w.objs
                .data_lock(o, off(1), !(PAGE_SIZE - 1), VmProt::ALL, &mut w.m)
                .map(|_| ()),
            Err(VmError::InvalidArgument)
        );
    }

    /// A lock request with a reply, as the kernel runs it: the manager
    /// call, then the writes in flight in its range, tracked until each
    /// write ends (done or refused).
    #[test]
    fn a_clean_with_reply_waits_for_its_writes_and_those_already_in_flight() {
        use crate::vm::lock_completion::{LockCompletions, Reply, ReplyTo};
        use crate::vm::memory_object::ManagerCall;
        let mut w = world();
        let PagerEntry::New(o) = w.objs.enter_pager(PagerRef(9), 4 * PAGE_SIZE).unwrap() else {
            panic!()
        };
        resident(&mut w, o, 0, true);
        resident(&mut w, o, 1, true);
        resident(&mut w, o, 2, false);
        resident(&mut w, o, 3, true);
        // Page 0's write-back is already on its way (an earlier clean).
        let early = w
            .objs
            .clean_request(o, off(0), PAGE_SIZE, &mut w.m)
            .unwrap();
        assert_eq!(early.len(), 1);
        let call = ManagerCall::LockRequest {
            offset: off(0),
            size: 4 * PAGE_SIZE,
            lock: Some(VmProt::WRITE),
            clean: true,
            flush: false,
        };
        let acts = w.objs.manager_call(o, call, &mut w.pool, &mut w.m).unwrap();
        assert_eq!(acts.len(), 2, "pages 1 and 3: the dirty ones not in flight");
        let flying = w.objs.writes_in_flight(o, off(0), 4 * PAGE_SIZE).unwrap();
        assert_eq!(flying, [off(0), off(1), off(3)]);
        let mut t = LockCompletions::default();
        let reply = Reply {
            to: ReplyTo::Device { object: 9, tag: 5 },
            offset: 0,
            length: 4 * PAGE_SIZE,
        };
        t.begin(o, reply, &flying).unwrap();
        for p in [1, 3] {
            w.objs
                .data_write_done(o, off(p), &mut w.pool, &mut w.m)
                .unwrap();
            t.write_ended(o, off(p));
        }
        assert!(!t.has_ready(), "page 0's earlier write is still out");
        // It fails: the page stays dirty, but the pager has answered.
        w.objs
            .data_write_refused(o, off(0), &mut w.pool, &mut w.m)
            .unwrap();
        t.write_ended(o, off(0));
        assert_eq!(t.next_ready().map(|r| r.1), Some(reply));

        // A flush with a reply over clean pages starts no write: done at once.
        let call = ManagerCall::LockRequest {
            offset: off(2),
            size: PAGE_SIZE,
            lock: None,
            clean: true,
            flush: true,
        };
        assert!(
            w.objs
                .manager_call(o, call, &mut w.pool, &mut w.m)
                .unwrap()
                .is_empty()
        );
        let flying = w.objs.writes_in_flight(o, off(2), PAGE_SIZE).unwrap();
        assert!(flying.is_empty());
        let mut t = LockCompletions::default();
        t.begin(o, reply, &flying).unwrap();
        assert!(t.has_ready());
    }
}
