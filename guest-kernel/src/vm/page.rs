//! Resident pages (paper §5.3-5.4): which physical frame caches which page of
//! which memory object, the state the pager protocol gives each page, and
//! the pageout queues.
//!
//! # Representation
//!
//! Pages live in an arena (`Vec` of slots, reused through a free list) and
//! are named inside the VM by [`PageId`]. The virtual-to-physical table is a
//! `BTreeMap` keyed by `(ObjectId, page offset)` rather than Mach's hash
//! table: no_std has no hasher worth trusting against guest-chosen offsets,
//! a B-tree is O(log n) in the worst case, and — the reason that decides it —
//! the pages of one object are a contiguous key range, so the per-object
//! page list of §5.2 (needed to free, flush, clean or collapse an object)
//! is a range query and costs no extra links to keep consistent.
//!
//! The active and inactive queues are doubly linked lists threaded through
//! the arena by index (O(1) insert, remove and move, no allocation). The
//! free queue is the [`FrameSource`]: frames not caching data belong to the
//! frame allocator, not to this table.
//!
//! # Bounds
//!
//! At most `limit` pages are resident (ResourceShortage beyond). The arena
//! grows with `try_reserve`. B-tree nodes cannot report allocation failure
//! in stable Rust; the page limit bounds them instead.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::Bound::Included;

use crate::addr::{PAGE_SIZE, PhysAddr};
use crate::vm::frame::{Frame, FrameAllocator};
use crate::vm::types::{ObjectId, ObjectOffset, VmError, VmProt};

/// Where the VM gets frames from and gives them back (the free queue).
/// A trait so tests can use a small pool and watch it run dry.
pub trait FrameSource {
    fn alloc_frame(&mut self) -> Option<Frame>;
    fn free_frame(&mut self, frame: PhysAddr);
    /// Frames available now.
    fn free_count(&self) -> u64;
}

impl FrameSource for FrameAllocator {
    fn alloc_frame(&mut self) -> Option<Frame> {
        self.alloc()
    }
    fn free_frame(&mut self, frame: PhysAddr) {
        self.free(frame)
    }
    fn free_count(&self) -> u64 {
        self.free_frames()
    }
}

/// A fixed set of frames, for host tests and for carving a VM pool out of
/// the allocator. Frames handed back are no longer known to be zero.
#[derive(Debug, Default)]
pub struct FramePool {
    free: Vec<Frame>,
}

impl FramePool {
    /// `count` frames from `base`, all zeroed (fresh RAM).
    pub fn new(base: PhysAddr, count: u64) -> FramePool {
        let mut free: Vec<Frame> = (0..count)
            .map(|i| Frame {
                addr: PhysAddr(base.0 + i * PAGE_SIZE),
                zeroed: true,
            })
            .collect();
        // Hand out the lowest address first (readable tests).
        free.reverse();
        FramePool { free }
    }
}

impl FrameSource for FramePool {
    fn alloc_frame(&mut self) -> Option<Frame> {
        self.free.pop()
    }
    fn free_frame(&mut self, frame: PhysAddr) {
        self.free.push(Frame {
            addr: frame,
            zeroed: false,
        });
    }
    fn free_count(&self) -> u64 {
        self.free.len() as u64
    }
}

/// Names a resident page inside the VM (an arena index; valid until the
/// page is removed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageId(u32);

const NIL: u32 = u32::MAX;

/// Which pageout queue a page is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// On neither (busy pages: in transit to or from a pager).
    None,
    Active,
    Inactive,
}

/// One resident page: Mach's vm_page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub object: ObjectId,
    /// Page-aligned offset in `object`.
    pub offset: ObjectOffset,
    /// The frame caching the data; None for a placeholder whose data has
    /// not arrived (no frame is held while a pager thinks).
    pub frame: Option<PhysAddr>,
    /// In transit: a data_request is outstanding (absent too) or the page
    /// is being paged out. Faults on it wait.
    pub busy: bool,
    /// No data yet. With busy: requested. Without busy: the pager said
    /// data_unavailable, the next fault zero-fills it in place.
    pub absent: bool,
    /// Modified since it was last given to its pager (besides the
    /// hardware modified bit, which pageout also asks).
    pub dirty: bool,
    /// The pager wants it back even if clean.
    pub precious: bool,
    /// A data_write of it is in flight; it is write-protected meanwhile.
    pub cleaning: bool,
    /// Access the pager forbids (data_provided / data_lock lock value).
    pub lock: VmProt,
    /// Access asked of the pager with data_unlock and not yet granted, so
    /// a second fault waits instead of asking again.
    pub unlock_requested: VmProt,
    /// The pager reported an error for it (data_error / pager death).
    pub error: bool,
    queue: Queue,
    prev: u32,
    next: u32,
}

impl Page {
    fn new(object: ObjectId, offset: ObjectOffset, frame: Option<PhysAddr>) -> Page {
        Page {
            object,
            offset,
            frame,
            busy: false,
            absent: false,
            dirty: false,
            precious: false,
            cleaning: false,
            lock: VmProt::NONE,
            unlock_requested: VmProt::NONE,
            error: false,
            queue: Queue::None,
            prev: NIL,
            next: NIL,
        }
    }
    pub fn queue(&self) -> Queue {
        self.queue
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct List {
    head: u32,
    tail: u32,
    count: u64,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        count: 0,
    };
}

/// The resident page table and pageout queues.
pub struct ResidentPages {
    slots: Vec<Option<Page>>,
    free_slots: Vec<u32>,
    table: BTreeMap<(ObjectId, u64), PageId>,
    active: List,
    inactive: List,
    limit: usize,
    /// Frames kept for privileged allocations (§6.2.3).
    reserved: u64,
}

impl core::fmt::Debug for ResidentPages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ResidentPages")
            .field("resident", &self.table.len())
            .field("active", &self.active.count)
            .field("inactive", &self.inactive.count)
            .finish()
    }
}

impl ResidentPages {
    /// A table holding at most `limit` pages, keeping `reserved` frames of
    /// any [`FrameSource`] for privileged allocations.
    pub fn new(limit: usize, reserved: u64) -> ResidentPages {
        ResidentPages {
            slots: Vec::new(),
            free_slots: Vec::new(),
            table: BTreeMap::new(),
            active: List::EMPTY,
            inactive: List::EMPTY,
            limit: limit.min(NIL as usize),
            reserved,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
    pub fn reserved(&self) -> u64 {
        self.reserved
    }
    pub fn resident_count(&self) -> usize {
        self.table.len()
    }
    pub fn active_count(&self) -> u64 {
        self.active.count
    }
    pub fn inactive_count(&self) -> u64 {
        self.inactive.count
    }

    /// A frame for a page. Below the reserve only `privileged` callers (the
    /// pageout path, the default pager's faults) get one, so paging out can
    /// always make progress.
    pub fn alloc_frame(
        &self,
        frames: &mut dyn FrameSource,
        privileged: bool,
    ) -> Result<Frame, VmError> {
        if !privileged && frames.free_count() <= self.reserved {
            return Err(VmError::ResourceShortage);
        }
        frames.alloc_frame().ok_or(VmError::ResourceShortage)
    }

    pub fn lookup(&self, object: ObjectId, offset: ObjectOffset) -> Option<PageId> {
        self.table.get(&(object, offset.0)).copied()
    }
    pub fn get(&self, id: PageId) -> Option<&Page> {
        self.slots.get(id.0 as usize).and_then(|s| s.as_ref())
    }
    pub fn get_mut(&mut self, id: PageId) -> Option<&mut Page> {
        self.slots.get_mut(id.0 as usize).and_then(|s| s.as_mut())
    }

    /// The resident pages of `object` in [start, end), in offset order (the
    /// per-object page list). Collected so the caller may change the table
    /// while walking; `try_reserve` bounds the allocation.
    pub fn object_pages(
        &self,
        object: ObjectId,
        start: u64,
        end: u64,
    ) -> Result<Vec<PageId>, VmError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let range = (Included((object, start)), Included((object, end - 1)));
        let n = self.table.range(range).count();
        let mut v = Vec::new();
        v.try_reserve_exact(n)
            .map_err(|_| VmError::ResourceShortage)?;
        v.extend(self.table.range(range).map(|(_, id)| *id));
        Ok(v)
    }

    /// Whether `object` has any resident page.
    pub fn has_pages(&self, object: ObjectId) -> bool {
        self.table
            .range((object, 0)..=(object, u64::MAX))
            .next()
            .is_some()
    }

    /// Adds a page (not on any queue). InvalidArgument if one is already
    /// there or the offset is unaligned; ResourceShortage at the limit.
    pub fn insert(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        frame: Option<PhysAddr>,
    ) -> Result<PageId, VmError> {
        if !offset.is_page_aligned() || self.table.contains_key(&(object, offset.0)) {
            return Err(VmError::InvalidArgument);
        }
        if self.table.len() >= self.limit {
            return Err(VmError::ResourceShortage);
        }
        let page = Page::new(object, offset, frame);
        let idx = match self.free_slots.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(page);
                i
            }
            None => {
                self.slots
                    .try_reserve(1)
                    .map_err(|_| VmError::ResourceShortage)?;
                // Reserve the free-list slot now so remove never allocates.
                self.free_slots
                    .try_reserve(self.slots.len() + 1 - self.free_slots.len())
                    .map_err(|_| VmError::ResourceShortage)?;
                self.slots.push(Some(page));
                (self.slots.len() - 1) as u32
            }
        };
        let id = PageId(idx);
        self.table.insert((object, offset.0), id);
        Ok(id)
    }

    /// Removes a page from the table and its queue; returns it (the caller
    /// frees its frame after removing every mapping of it).
    pub fn remove(&mut self, id: PageId) -> Option<Page> {
        self.set_queue(id, Queue::None);
        let page = self.slots.get_mut(id.0 as usize)?.take()?;
        self.table.remove(&(page.object, page.offset.0));
        self.free_slots.push(id.0);
        Some(page)
    }

    /// Moves a page to another (object, offset) (shadow collapse).
    /// InvalidArgument if the destination is taken.
    pub fn rename(
        &mut self,
        id: PageId,
        object: ObjectId,
        offset: ObjectOffset,
    ) -> Result<(), VmError> {
        if !offset.is_page_aligned() || self.table.contains_key(&(object, offset.0)) {
            return Err(VmError::InvalidArgument);
        }
        let page = self.get_mut(id).ok_or(VmError::InvalidArgument)?;
        let old = (page.object, page.offset.0);
        page.object = object;
        page.offset = offset;
        self.table.remove(&old);
        self.table.insert((object, offset.0), id);
        Ok(())
    }

    /// Puts a page at the tail of the active queue (it was just used).
    pub fn activate(&mut self, id: PageId) {
        self.set_queue(id, Queue::Active);
    }
    /// Puts a page at the tail of the inactive queue.
    pub fn deactivate(&mut self, id: PageId) {
        self.set_queue(id, Queue::Inactive);
    }
    /// Takes a page off its queue (it went busy).
    pub fn dequeue(&mut self, id: PageId) {
        self.set_queue(id, Queue::None);
    }

    pub fn active_head(&self) -> Option<PageId> {
        (self.active.head != NIL).then_some(PageId(self.active.head))
    }
    pub fn inactive_head(&self) -> Option<PageId> {
        (self.inactive.head != NIL).then_some(PageId(self.inactive.head))
    }

    fn list(&mut self, q: Queue) -> Option<&mut List> {
        match q {
            Queue::None => None,
            Queue::Active => Some(&mut self.active),
            Queue::Inactive => Some(&mut self.inactive),
        }
    }

    /// Unlinks from the current queue and appends to `to`'s tail (also when
    /// `to` is the current queue: that is a move to the tail).
    fn set_queue(&mut self, id: PageId, to: Queue) {
        let i = id.0 as usize;
        let Some(Some(p)) = self.slots.get(i) else {
            return;
        };
        let (from, prev, next) = (p.queue, p.prev, p.next);
        if from != Queue::None {
            if prev != NIL
                && let Some(Some(pp)) = self.slots.get_mut(prev as usize)
            {
                pp.next = next;
            }
            if next != NIL
                && let Some(Some(np)) = self.slots.get_mut(next as usize)
            {
                np.prev = prev;
            }
            if let Some(l) = self.list(from) {
                if l.head == id.0 {
                    l.head = next;
                }
                if l.tail == id.0 {
                    l.tail = prev;
                }
                l.count -= 1;
            }
        }
        let tail = match self.list(to) {
            Some(l) => {
                let t = l.tail;
                l.tail = id.0;
                if l.head == NIL {
                    l.head = id.0;
                }
                l.count += 1;
                t
            }
            None => NIL,
        };
        if tail != NIL
            && let Some(Some(tp)) = self.slots.get_mut(tail as usize)
        {
            tp.next = id.0;
        }
        if let Some(Some(p)) = self.slots.get_mut(i) {
            p.queue = to;
            p.prev = if to == Queue::None { NIL } else { tail };
            p.next = NIL;
        }
    }

    /// The queue in order, for checks and tests.
    pub fn queue_pages(&self, q: Queue) -> Vec<PageId> {
        let head = match q {
            Queue::None => NIL,
            Queue::Active => self.active.head,
            Queue::Inactive => self.inactive.head,
        };
        let mut v = Vec::new();
        let mut cur = head;
        while cur != NIL {
            v.push(PageId(cur));
            cur = match self.slots.get(cur as usize) {
                Some(Some(p)) => p.next,
                _ => NIL,
            };
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(i: u32) -> ObjectId {
        ObjectId {
            index: i,
            generation: 0,
        }
    }
    fn off(p: u64) -> ObjectOffset {
        ObjectOffset(p * PAGE_SIZE)
    }

    #[test]
    fn table_lookup_and_object_ranges() {
        let mut t = ResidentPages::new(16, 0);
        let a = t.insert(oid(1), off(3), None).unwrap();
        let b = t.insert(oid(1), off(1), Some(PhysAddr(0x1000))).unwrap();
        let c = t.insert(oid(2), off(0), None).unwrap();
        assert_eq!(
            t.insert(oid(1), off(3), None),
            Err(VmError::InvalidArgument)
        );
        assert_eq!(
            t.insert(oid(1), ObjectOffset(5), None),
            Err(VmError::InvalidArgument)
        );
        assert_eq!(t.lookup(oid(1), off(3)), Some(a));
        assert_eq!(t.object_pages(oid(1), 0, u64::MAX).unwrap(), [b, a]);
        assert_eq!(t.object_pages(oid(1), 0, off(3).0).unwrap(), [b]);
        assert_eq!(t.object_pages(oid(2), 0, u64::MAX).unwrap(), [c]);
        t.rename(a, oid(2), off(4)).unwrap();
        assert_eq!(t.lookup(oid(1), off(3)), None);
        assert_eq!(t.get(a).unwrap().object, oid(2));
        assert_eq!(t.rename(b, oid(2), off(4)), Err(VmError::InvalidArgument));
        assert!(t.remove(c).is_some());
        assert!(t.remove(c).is_none());
        assert_eq!(t.resident_count(), 2);
        // slot reuse
        let d = t.insert(oid(3), off(0), None).unwrap();
        assert_eq!(d, c);
    }

    #[test]
    fn page_limit_is_an_error() {
        let mut t = ResidentPages::new(2, 0);
        t.insert(oid(1), off(0), None).unwrap();
        t.insert(oid(1), off(1), None).unwrap();
        assert_eq!(
            t.insert(oid(1), off(2), None),
            Err(VmError::ResourceShortage)
        );
    }

    #[test]
    fn queues_move_and_count() {
        let mut t = ResidentPages::new(16, 0);
        let p: Vec<PageId> = (0..4)
            .map(|i| t.insert(oid(1), off(i), None).unwrap())
            .collect();
        for &id in &p {
            t.activate(id);
        }
        assert_eq!(t.queue_pages(Queue::Active), p);
        t.deactivate(p[1]);
        t.deactivate(p[0]);
        assert_eq!(t.queue_pages(Queue::Active), [p[2], p[3]]);
        assert_eq!(t.queue_pages(Queue::Inactive), [p[1], p[0]]);
        t.activate(p[2]); // move to tail
        assert_eq!(t.queue_pages(Queue::Active), [p[3], p[2]]);
        assert_eq!((t.active_count(), t.inactive_count()), (2, 2));
        t.remove(p[1]);
        t.dequeue(p[3]);
        assert_eq!(t.queue_pages(Queue::Inactive), [p[0]]);
        assert_eq!(t.queue_pages(Queue::Active), [p[2]]);
        assert_eq!(t.inactive_head(), Some(p[0]));
        assert_eq!((t.active_count(), t.inactive_count()), (1, 1));
    }

    #[test]
    fn reserve_only_for_privileged() {
        let t = ResidentPages::new(16, 2);
        let mut pool = FramePool::new(PhysAddr(0x10000), 3);
        let f = t.alloc_frame(&mut pool, false).unwrap();
        assert!(f.zeroed);
        assert_eq!(f.addr, PhysAddr(0x10000));
        assert_eq!(
            t.alloc_frame(&mut pool, false),
            Err(VmError::ResourceShortage)
        );
        assert!(t.alloc_frame(&mut pool, true).is_ok());
        assert!(t.alloc_frame(&mut pool, true).is_ok());
        assert_eq!(
            t.alloc_frame(&mut pool, true),
            Err(VmError::ResourceShortage)
        );
        pool.free_frame(f.addr);
        assert!(!pool.alloc_frame().unwrap().zeroed);
    }
}
