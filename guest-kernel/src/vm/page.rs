//! Resident pages (paper §5.3-5.4): which physical frame caches which page of
//! which memory object, the state the pager protocol gives each page, and
//! the pageout queues.
//!
//! # Representation
//!
//! Pages live in an arena (`Vec` of slots, reused through a free list) and
//! are named inside the VM by [`PageId`]. Every page is on two lists
//! threaded through the arena by index, so nothing is allocated per page
//! beyond its slot:
//!
//! - a chain of the virtual-to-physical hash table, keyed by `(ObjectId,
//!   page offset)`, as Mach's `vm_page_buckets`. Every fault looks a page up
//!   (once per object down the shadow chain), and where ring 0 is emulated
//!   a B-tree walk of ~100 instructions was a third of a soft fault; a
//!   bucket is a multiply, a shift and a compare or two.
//! - its object's page list (Mach's memq), headed in a table indexed by the
//!   object's slot number: the per-object page list of §5.2 that freeing,
//!   flushing, cleaning and collapsing an object walk. [`object_pages`]
//!   hands it out in offset order: a range shorter than the object's list
//!   by probing the hash once per page, else by walking the list and
//!   sorting.
//!
//! The hash is multiply-shift over the object's name and the page number
//! with odd multipliers drawn at boot ([`ResidentPages::seed_hash`]): a
//! universal family, so a task choosing offsets cannot make its pages
//! collide without knowing the multipliers. If they did collide anyway a
//! chain only gets longer (bounded by the page limit): slower, never wrong.
//!
//! The active and inactive queues are doubly linked lists threaded through
//! the arena too (O(1) insert, remove and move, no allocation). The free
//! queue is the [`FrameSource`]: frames not caching data belong to the
//! frame allocator, not to this table.
//!
//! # Bounds
//!
//! At most `limit` pages are resident (ResourceShortage beyond). The arena,
//! the bucket array (one `u32` per page of the limit, rounded up to a power
//! of two and capped, allocated at the first insert) and the list heads
//! (one per object slot) grow with `try_reserve`: allocation failure is
//! ResourceShortage, never an abort.
//!
//! [`object_pages`]: ResidentPages::object_pages

use alloc::vec::Vec;

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
    /// The next page in this page's hash bucket.
    hash_next: u32,
    /// Its neighbours on its object's page list.
    obj_prev: u32,
    obj_next: u32,
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
            hash_next: NIL,
            obj_prev: NIL,
            obj_next: NIL,
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

/// One object's page list: its first page and how many there are (of any
/// generation of the slot; see [`ResidentPages::has_pages`]).
#[derive(Clone, Copy, Debug)]
struct ObjList {
    head: u32,
    count: u32,
}

impl ObjList {
    const EMPTY: ObjList = ObjList {
        head: NIL,
        count: 0,
    };
}

/// Most hash buckets (4 MiB of heads). A bigger limit only makes chains
/// longer than one page on average.
const MAX_BUCKETS: usize = 1 << 20;
const FEWEST_BUCKETS: usize = 16;

/// The hash multipliers used until [`ResidentPages::seed_hash`] (host tests,
/// and a kernel that has no randomness to give). Odd, as multiply-shift
/// needs.
const DEFAULT_SEED: (u64, u64) = (0x9e37_79b9_7f4a_7c15, 0xc2b2_ae3d_27d4_eb4f);

/// The resident page table and pageout queues.
pub struct ResidentPages {
    slots: Vec<Option<Page>>,
    free_slots: Vec<u32>,
    /// Hash bucket heads (page indices); empty until the first insert.
    buckets: Vec<u32>,
    /// 64 - log2(buckets.len()) once allocated. Before that, any bucket
    /// index is out of range of the empty Vec, which is what a lookup needs.
    shift: u32,
    /// The multiply-shift multipliers (odd) for the object and the page.
    seed: (u64, u64),
    /// Page list heads by object slot index.
    lists: Vec<ObjList>,
    count: usize,
    active: List,
    inactive: List,
    limit: usize,
    /// Frames kept for privileged allocations (§6.2.3).
    reserved: u64,
}

impl core::fmt::Debug for ResidentPages {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ResidentPages")
            .field("resident", &self.count)
            .field("active", &self.active.count)
            .field("inactive", &self.inactive.count)
            .finish()
    }
}

/// splitmix64's finaliser: spreads a seed's bits over a whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl ResidentPages {
    /// A table holding at most `limit` pages, keeping `reserved` frames of
    /// any [`FrameSource`] for privileged allocations.
    pub fn new(limit: usize, reserved: u64) -> ResidentPages {
        ResidentPages {
            slots: Vec::new(),
            free_slots: Vec::new(),
            buckets: Vec::new(),
            shift: 63,
            seed: DEFAULT_SEED,
            lists: Vec::new(),
            count: 0,
            active: List::EMPTY,
            inactive: List::EMPTY,
            limit: limit.min(NIL as usize),
            reserved,
        }
    }

    /// Draws the hash multipliers from `seed` (the kernel gives a boot-time
    /// random value, so tasks cannot aim offsets at one bucket). Only while
    /// the table is empty: the pages in it would be in the wrong buckets.
    pub fn seed_hash(&mut self, seed: u64) -> Result<(), VmError> {
        if self.count != 0 {
            return Err(VmError::InvalidArgument);
        }
        let a = mix(seed);
        self.seed = (a | 1, mix(a) | 1);
        Ok(())
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
    pub fn reserved(&self) -> u64 {
        self.reserved
    }
    pub fn resident_count(&self) -> usize {
        self.count
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
    pub fn alloc_frame<F: FrameSource + ?Sized>(
        &self,
        frames: &mut F,
        privileged: bool,
    ) -> Result<Frame, VmError> {
        if !privileged && frames.free_count() <= self.reserved {
            return Err(VmError::ResourceShortage);
        }
        frames.alloc_frame().ok_or(VmError::ResourceShortage)
    }

    /// The bucket of (object, offset): multiply-shift over the object's
    /// name and the page number.
    fn bucket(&self, object: ObjectId, offset: u64) -> usize {
        let name = u64::from(object.index) | (u64::from(object.generation) << 32);
        let h = name
            .wrapping_mul(self.seed.0)
            .wrapping_add((offset / PAGE_SIZE).wrapping_mul(self.seed.1));
        (h >> self.shift) as usize
    }

    #[inline]
    pub fn lookup(&self, object: ObjectId, offset: ObjectOffset) -> Option<PageId> {
        self.find_in(self.bucket(object, offset.0), object, offset)
            .map(PageId)
    }

    /// The page (object, offset) in bucket `b`.
    #[inline]
    fn find_in(&self, b: usize, object: ObjectId, offset: ObjectOffset) -> Option<u32> {
        let mut cur = *self.buckets.get(b)?;
        while let Some(Some(p)) = self.slots.get(cur as usize) {
            if p.offset == offset && p.object == object {
                return Some(cur);
            }
            cur = p.hash_next;
        }
        None
    }
    pub fn get(&self, id: PageId) -> Option<&Page> {
        self.slots.get(id.0 as usize).and_then(|s| s.as_ref())
    }
    pub fn get_mut(&mut self, id: PageId) -> Option<&mut Page> {
        self.slots.get_mut(id.0 as usize).and_then(|s| s.as_mut())
    }
    fn page_mut(&mut self, i: u32) -> Option<&mut Page> {
        self.slots.get_mut(i as usize).and_then(|s| s.as_mut())
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
        let listed = self
            .lists
            .get(object.index as usize)
            .map_or(0, |l| u64::from(l.count));
        let first = match start.checked_next_multiple_of(PAGE_SIZE) {
            Some(f) if f < end && listed != 0 => f,
            _ => return Ok(Vec::new()),
        };
        // Page offsets first, first + PAGE_SIZE, ... below end.
        let span = (end - 1 - first) / PAGE_SIZE + 1;
        let mut v = Vec::new();
        v.try_reserve_exact(span.min(listed) as usize)
            .map_err(|_| VmError::ResourceShortage)?;
        if span <= listed {
            // Fewer offsets than listed pages: probe each, in order.
            for k in 0..span {
                if let Some(id) = self.lookup(object, ObjectOffset(first + k * PAGE_SIZE)) {
                    v.push(id);
                }
            }
            return Ok(v);
        }
        let mut cur = self.lists[object.index as usize].head;
        while let Some(Some(p)) = self.slots.get(cur as usize) {
            if p.object == object && (start..end).contains(&p.offset.0) {
                v.push(PageId(cur));
            }
            cur = p.obj_next;
        }
        v.sort_unstable_by_key(|id| self.get(*id).map_or(0, |p| p.offset.0));
        Ok(v)
    }

    /// Whether `object` has any resident page. A slot's list may still hold
    /// pages of an older object in that slot (the table does not know when
    /// an object dies), so the name is compared.
    pub fn has_pages(&self, object: ObjectId) -> bool {
        let Some(l) = self.lists.get(object.index as usize) else {
            return false;
        };
        let mut cur = l.head;
        while let Some(Some(p)) = self.slots.get(cur as usize) {
            if p.object == object {
                return true;
            }
            cur = p.obj_next;
        }
        false
    }

    /// Room for the hash table (at the first insert) and for the list head
    /// of `object`'s slot. Rarely needed, so out of line.
    #[inline(never)]
    fn reserve_for(&mut self, object: ObjectId) -> Result<(), VmError> {
        if self.buckets.is_empty() {
            let n = self
                .limit
                .clamp(FEWEST_BUCKETS, MAX_BUCKETS)
                .next_power_of_two();
            self.buckets
                .try_reserve_exact(n)
                .map_err(|_| VmError::ResourceShortage)?;
            self.buckets.resize(n, NIL);
            self.shift = 64 - n.trailing_zeros();
        }
        let i = object.index as usize;
        if i >= self.lists.len() {
            self.lists
                .try_reserve(i + 1 - self.lists.len())
                .map_err(|_| VmError::ResourceShortage)?;
            self.lists.resize(i + 1, ObjList::EMPTY);
        }
        Ok(())
    }

    /// Puts page `i` (its object and offset set; room reserved by
    /// [`Self::reserve_for`]) at the head of its bucket and its object's list.
    fn link(&mut self, i: u32) {
        let Some(p) = self.slots.get(i as usize).and_then(|s| s.as_ref()) else {
            return;
        };
        let b = self.bucket(p.object, p.offset.0);
        self.link_at(i, b);
    }

    /// [`Self::link`] with the page's bucket `b` known.
    #[inline]
    fn link_at(&mut self, i: u32, b: usize) {
        let Some(p) = self.slots.get(i as usize).and_then(|s| s.as_ref()) else {
            return;
        };
        let l = p.object.index as usize;
        let (Some(&bucket_head), Some(list)) = (self.buckets.get(b), self.lists.get(l)) else {
            return;
        };
        let list_head = list.head;
        if let Some(p) = self.page_mut(i) {
            p.hash_next = bucket_head;
            p.obj_prev = NIL;
            p.obj_next = list_head;
        }
        self.link_heads(i, b, l, list_head);
    }

    /// Makes page `i` (its own links already set) the head of bucket `b`
    /// and of object list `l`, whose head was `list_head`.
    #[inline]
    fn link_heads(&mut self, i: u32, b: usize, l: usize, list_head: u32) {
        if let Some(h) = self.page_mut(list_head) {
            h.obj_prev = i;
        }
        self.buckets[b] = i;
        self.lists[l].head = i;
        self.lists[l].count += 1;
    }

    /// Takes page `i` off its bucket and its object's list.
    fn unlink(&mut self, i: u32) {
        let Some(p) = self.slots.get(i as usize).and_then(|s| s.as_ref()) else {
            return;
        };
        let (object, offset) = (p.object, p.offset.0);
        let (hash_next, prev, next) = (p.hash_next, p.obj_prev, p.obj_next);
        let b = self.bucket(object, offset);
        // Bucket chains are singly linked: find the page's predecessor.
        let mut cur = self.buckets[b];
        if cur == i {
            self.buckets[b] = hash_next;
        } else {
            while let Some(Some(q)) = self.slots.get_mut(cur as usize) {
                if q.hash_next == i {
                    q.hash_next = hash_next;
                    break;
                }
                cur = q.hash_next;
            }
        }
        let l = object.index as usize;
        match self.page_mut(prev) {
            Some(q) => q.obj_next = next,
            None => self.lists[l].head = next,
        }
        if let Some(q) = self.page_mut(next) {
            q.obj_prev = prev;
        }
        self.lists[l].count -= 1;
    }

    /// Adds a page (not on any queue). InvalidArgument if one is already
    /// there or the offset is unaligned; ResourceShortage at the limit.
    pub fn insert(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        frame: Option<PhysAddr>,
    ) -> Result<PageId, VmError> {
        if !offset.is_page_aligned() {
            return Err(VmError::InvalidArgument);
        }
        if self
            .find_in(self.bucket(object, offset.0), object, offset)
            .is_some()
        {
            return Err(VmError::InvalidArgument);
        }
        self.insert_absent(object, offset, frame, Queue::None)
    }

    /// [`Self::insert`] for a caller that has just looked (object, offset)
    /// up and found nothing, with nothing run in between that could add
    /// it (the fault path, under the kernel lock): the table is not probed
    /// a second time. The offset must be page aligned. Always inline: its
    /// two callers (a fault's page, every page of a data_provided) keep
    /// their values in registers instead of a call's saves and spills.
    ///
    /// `queue`: Active puts the page at the active queue's tail as it is
    /// made (a page a fault maps or a pager just provided), so the
    /// `activate` that follows finds it there.
    #[inline(always)]
    pub fn insert_absent(
        &mut self,
        object: ObjectId,
        offset: ObjectOffset,
        frame: Option<PhysAddr>,
        queue: Queue,
    ) -> Result<PageId, VmError> {
        debug_assert!(offset.is_page_aligned() && self.lookup(object, offset).is_none());
        let mut b = self.bucket(object, offset.0);
        if self.count >= self.limit {
            return Err(VmError::ResourceShortage);
        }
        if self.buckets.is_empty() || object.index as usize >= self.lists.len() {
            self.reserve_for(object)?;
            // The bucket array may be new: the bucket with it.
            b = self.bucket(object, offset.0);
        }
        // Linked as it is made (at the head of its bucket and its object's
        // list), not written and then read back to link.
        let l = object.index as usize;
        let (Some(&bucket_head), Some(list)) = (self.buckets.get(b), self.lists.get(l)) else {
            return Err(VmError::ResourceShortage);
        };
        let list_head = list.head;
        // The slot it will take, so the page is written once, linked.
        let idx = match self.free_slots.last() {
            Some(&i) => i,
            None => {
                // Capacity is checked here, not left to try_reserve, which
                // is a call on every insert that grows the arena.
                if self.slots.len() == self.slots.capacity() {
                    self.slots
                        .try_reserve(1)
                        .map_err(|_| VmError::ResourceShortage)?;
                }
                // Reserve the free-list slot now so remove never allocates.
                if self.free_slots.capacity() <= self.slots.len() {
                    self.free_slots
                        .try_reserve(self.slots.len() + 1 - self.free_slots.len())
                        .map_err(|_| VmError::ResourceShortage)?;
                }
                self.slots.len() as u32
            }
        };
        let mut page = Page::new(object, offset, frame);
        page.hash_next = bucket_head;
        page.obj_next = list_head;
        let mut old_tail = NIL;
        if let Some(q) = self.list(queue) {
            old_tail = q.tail;
            q.tail = idx;
            if q.head == NIL {
                q.head = idx;
            }
            q.count += 1;
            page.queue = queue;
            page.prev = old_tail;
        }
        match self.free_slots.pop() {
            Some(i) => self.slots[i as usize] = Some(page),
            None => self.slots.push(Some(page)),
        }
        if let Some(t) = self.page_mut(old_tail) {
            t.next = idx;
        }
        self.link_heads(idx, b, l, list_head);
        self.count += 1;
        Ok(PageId(idx))
    }

    /// Removes a page from the table and its queue; returns it (the caller
    /// frees its frame after removing every mapping of it).
    pub fn remove(&mut self, id: PageId) -> Option<Page> {
        self.get(id)?;
        self.set_queue(id, Queue::None);
        self.unlink(id.0);
        let page = self.slots.get_mut(id.0 as usize)?.take()?;
        self.free_slots.push(id.0);
        self.count -= 1;
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
        if !offset.is_page_aligned() || self.lookup(object, offset).is_some() {
            return Err(VmError::InvalidArgument);
        }
        self.get(id).ok_or(VmError::InvalidArgument)?;
        self.reserve_for(object)?;
        self.unlink(id.0);
        if let Some(p) = self.get_mut(id) {
            p.object = object;
            p.offset = offset;
        }
        self.link(id.0);
        Ok(())
    }

    /// Puts a page at the tail of the active queue (it was just used).
    /// Inline: every mapped fault ends here, and the call's register saves
    /// cost as much as the list surgery.
    #[inline]
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
    /// `to` is the current queue: that is a move to the tail). Inline: every
    /// fault activates its page.
    #[inline]
    fn set_queue(&mut self, id: PageId, to: Queue) {
        let i = id.0 as usize;
        let Some(Some(p)) = self.slots.get(i) else {
            return;
        };
        let (from, prev, next) = (p.queue, p.prev, p.next);
        if from == to && next == NIL {
            // Already the tail of `to` (or on no queue, staying so).
            return;
        }
        // NIL is past the end of the arena (the limit keeps it so), so the
        // bounds check of `get_mut` is the end-of-list test too.
        if from != Queue::None {
            if let Some(Some(pp)) = self.slots.get_mut(prev as usize) {
                pp.next = next;
            }
            if let Some(Some(np)) = self.slots.get_mut(next as usize) {
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
        if let Some(Some(tp)) = self.slots.get_mut(tail as usize) {
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

    /// The hash table and the object lists against a B-tree model: a small
    /// table (64 buckets for 96 keys, so chains form), pages of several objects and
    /// of two generations of one slot, inserted, renamed and removed at
    /// random, every query compared after each step.
    #[test]
    fn hash_and_object_lists_match_a_model() {
        use alloc::collections::BTreeMap;
        let objs = [
            oid(0),
            oid(1),
            oid(7),
            ObjectId {
                index: 1,
                generation: 1,
            },
        ];
        for seed in [None, Some(1), Some(0xdead_beef)] {
            let mut t = ResidentPages::new(40, 0);
            if let Some(s) = seed {
                t.seed_hash(s).unwrap();
            }
            let mut model: BTreeMap<(ObjectId, u64), PageId> = BTreeMap::new();
            let mut x = 0x1234_5678_u64 ^ seed.unwrap_or(0);
            let mut rnd = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            for _ in 0..3000 {
                let o = objs[rnd(4) as usize];
                let pg = rnd(24);
                match rnd(3) {
                    0 => match t.insert(o, off(pg), None) {
                        Ok(id) => assert!(model.insert((o, pg), id).is_none()),
                        Err(VmError::InvalidArgument) => assert!(model.contains_key(&(o, pg))),
                        Err(e) => {
                            assert_eq!(e, VmError::ResourceShortage);
                            assert_eq!(model.len(), 40);
                        }
                    },
                    1 => {
                        if let Some(id) = model.remove(&(o, pg)) {
                            let p = t.remove(id).unwrap();
                            assert_eq!((p.object, p.offset), (o, off(pg)));
                        }
                    }
                    _ => {
                        let (to, toff) = (objs[rnd(4) as usize], rnd(24));
                        if let Some(&id) = model.get(&(o, pg)) {
                            let r = t.rename(id, to, off(toff));
                            if model.contains_key(&(to, toff)) {
                                assert_eq!(r, Err(VmError::InvalidArgument));
                            } else {
                                r.unwrap();
                                model.remove(&(o, pg));
                                model.insert((to, toff), id);
                            }
                        }
                    }
                }
                assert_eq!(t.resident_count(), model.len());
                for &o in &objs {
                    let all: Vec<PageId> = model
                        .range((o, 0)..=(o, u64::MAX))
                        .map(|(_, id)| *id)
                        .collect();
                    assert_eq!(t.has_pages(o), !all.is_empty());
                    assert_eq!(t.object_pages(o, 0, u64::MAX).unwrap(), all);
                    let (a, b) = (rnd(26), rnd(26));
                    let want: Vec<PageId> = model
                        .range((o, a)..(o, b.max(a)))
                        .map(|(_, id)| *id)
                        .collect();
                    let (start, end) = (a * PAGE_SIZE, b * PAGE_SIZE);
                    assert_eq!(t.object_pages(o, start, end).unwrap(), want);
                    // An unaligned start takes the pages from the next one.
                    let later: Vec<PageId> = model
                        .range((o, a + 1)..(o, 26))
                        .map(|(_, id)| *id)
                        .collect();
                    assert_eq!(t.object_pages(o, start + 1, 26 * PAGE_SIZE).unwrap(), later);
                    for pg in 0..24 {
                        assert_eq!(t.lookup(o, off(pg)), model.get(&(o, pg)).copied());
                    }
                }
            }
        }
    }

    #[test]
    fn seed_only_while_empty() {
        let mut t = ResidentPages::new(4, 0);
        t.seed_hash(42).unwrap();
        let a = t.insert(oid(1), off(0), None).unwrap();
        assert_eq!(t.seed_hash(43), Err(VmError::InvalidArgument));
        assert_eq!(t.lookup(oid(1), off(0)), Some(a));
        assert_eq!(t.lookup(oid(1), off(1)), None);
        assert_eq!(t.object_pages(oid(1), 0, u64::MAX).unwrap(), [a]);
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
