//! A task's address map (paper §5.1): the directory from valid address
//! ranges to (memory object, offset), with protection, maximum protection
//! and inheritance per range.
//!
//! # Representation
//!
//! Entries live in a `BTreeMap` keyed by start address: lookup, clipping
//! and insertion are O(log n) even with thousands of entries, which a
//! sorted linked list (Mach's) or a Vec (O(n) insertion) are not. On top,
//! the last lookup's entry is cached (Mach's map hint): the fault path
//! faults on successive pages of one region, and a hit is O(1). The cache
//! holds a copy of the entry and is dropped on every change, so it can
//! never be stale.
//!
//! Every entry holds one reference on its object (through [`ObjectRefs`]):
//! splitting an entry takes one more, merging two entries gives one back,
//! removing an entry releases it.
//!
//! # Bounds
//!
//! A task's map grows only on the task's request, so it is bounded: at
//! most `entry_limit` entries (ResourceShortage beyond, checked before
//! anything changes). BTreeMap node allocation cannot report failure in
//! stable Rust; the entry limit bounds it instead. Vecs built for a task
//! (copies) use `try_reserve`.
//!
//! # Sharing: shared objects instead of sharing maps
//!
//! The 1987 design (§5.1) made maps two-level: a region inherited shared
//! points at a *sharing map*, itself pointing at objects, so that a change
//! to the memory of the region (a vm_write, a copy-on-write shadow pushed
//! in front) is made once, in the sharing map, and seen by every task.
//! Mach 3 / GNU Mach dropped sharing maps, and so does this map: a region
//! inherited shared makes both tasks' entries point at the *same object*.
//! The paper's semantics for shared regions are kept because everything a
//! task can observe of a region's memory lives in the object, not in the
//! map entry:
//! - writes by either task go to the same object's pages, so both see them;
//! - an entry waiting for a copy-on-write shadow (needs_copy) is resolved
//!   before sharing, so both tasks share the shadow, not the copy source;
//! - protection and inheritance are per task, which the paper also keeps in
//!   the top-level map;
//! - a vm_copy / vm_write into the shared region writes the object's pages
//!   (the fault path never shadows a non-needs_copy entry), so both see it.
//!
//! What differs: the *layout* of the shared range is not shared. A later
//! vm_deallocate or vm_allocate in one task changes only that task's map;
//! the other keeps the old object. That is Mach 3's documented behaviour,
//! and with objects as the unit of sharing no kernel structure has to be
//! locked across two tasks' maps.
//!
//! Copies (fork with Copy inheritance, [`VmMap::copy_out_of`]) use the
//! symmetric strategy: source and destination entries both get needs_copy
//! and the source is write-protected in its pmap; whichever writes first
//! gets a shadow (via [`VmMap::resolve_copy`] from the fault path).
//! Symmetric copy is only a snapshot if nobody writes the object directly,
//! which is false for a region that is *shared* (entry `shared` flag). For
//! those the source entry is left writable (keeping the sharing intact) and
//! only the destination is needs_copy: the copy sees the sharers' later
//! writes to pages it has not itself written. A true snapshot needs a
//! delayed copy from the object layer (Mach's copy objects); see the notes
//! on ObjectRefs in the report.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ops::Bound::{Excluded, Unbounded};
use core::ops::Range;

use crate::addr::{PAGE_SIZE, VirtAddr};
use crate::vm::pmap::Pmap;
use crate::vm::types::{Inheritance, ObjectId, ObjectOffset, ObjectRefs, VmError, VmProt};

/// Entries per map unless the caller says otherwise.
pub const DEFAULT_ENTRY_LIMIT: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    end: VirtAddr,
    object: ObjectId,
    /// Object offset of the entry's start.
    offset: ObjectOffset,
    prot: VmProt,
    max: VmProt,
    inheritance: Inheritance,
    /// The object is shared copy-on-write: shadow it before writing.
    needs_copy: bool,
    /// Inherited shared (vm_region's is_shared).
    shared: bool,
}

impl Entry {
    fn same_attrs(&self, o: &Entry) -> bool {
        self.prot == o.prot
            && self.max == o.max
            && self.inheritance == o.inheritance
            && self.needs_copy == o.needs_copy
            && self.shared == o.shared
    }
}

/// One entry as seen from outside (vm_region, iteration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: VirtAddr,
    pub end: VirtAddr,
    pub object: ObjectId,
    /// Object offset of `start`.
    pub offset: ObjectOffset,
    pub prot: VmProt,
    pub max: VmProt,
    pub inheritance: Inheritance,
    pub needs_copy: bool,
    /// Inherited shared with another task.
    pub shared: bool,
}

impl Region {
    pub fn size(&self) -> u64 {
        self.end.0 - self.start.0
    }
    fn new(start: VirtAddr, e: &Entry) -> Region {
        Region {
            start,
            end: e.end,
            object: e.object,
            offset: e.offset,
            prot: e.prot,
            max: e.max,
            inheritance: e.inheritance,
            needs_copy: e.needs_copy,
            shared: e.shared,
        }
    }
}

/// vm_regions' answer: same as [`Region`].
pub type RegionInfo = Region;

/// What the fault path needs to know about an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    /// The entry's range.
    pub start: VirtAddr,
    pub end: VirtAddr,
    pub object: ObjectId,
    /// Object offset of the looked-up address's page.
    pub offset: ObjectOffset,
    pub prot: VmProt,
    pub max: VmProt,
    pub inheritance: Inheritance,
    /// A write must first [`VmMap::resolve_copy`]; a read may map the
    /// object's page, but without WRITE.
    pub needs_copy: bool,
    pub shared: bool,
}

/// Protection and inheritance to give entries inserted from a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryAttrs {
    pub prot: VmProt,
    pub max: VmProt,
    pub inheritance: Inheritance,
}

impl EntryAttrs {
    /// What Mach's vm_map_copyout gives out-of-line message memory.
    pub const COPYOUT: EntryAttrs = EntryAttrs {
        prot: VmProt::DEFAULT,
        max: VmProt::ALL,
        inheritance: Inheritance::Copy,
    };
}

/// One piece of a [`VmCopy`]: `size` bytes of `object` from `offset`,
/// copy-on-write (inserted with needs_copy). Holds one object reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyEntry {
    pub size: u64,
    pub object: ObjectId,
    pub offset: ObjectOffset,
    pub prot: VmProt,
    pub max: VmProt,
    pub inheritance: Inheritance,
}

/// A copy-on-write snapshot of a range, in transit (vm_copy, out-of-line
/// message data): Mach's vm_map_copy_t of entry-list type. It holds a
/// reference per entry, so it must end in [`VmMap::insert_copy`] or
/// [`VmCopy::discard`].
#[must_use = "a VmCopy holds object references: insert it or discard it"]
#[derive(Debug, PartialEq, Eq)]
pub struct VmCopy {
    entries: Vec<CopyEntry>,
    size: u64,
}

impl VmCopy {
    /// Total bytes (the sum of the entries' sizes).
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn entries(&self) -> &[CopyEntry] {
        &self.entries
    }
    /// Drops the copy, releasing its references.
    pub fn discard(self, refs: &mut dyn ObjectRefs) {
        for e in &self.entries {
            refs.release(e.object);
        }
    }
}

/// A task's address map. Not internally locked: the kernel holds it under
/// the task's lock.
pub struct VmMap {
    entries: BTreeMap<VirtAddr, Entry>,
    min: VirtAddr,
    max: VirtAddr,
    entry_limit: usize,
    /// Copy of the last entry `lookup` found (see the module doc).
    hint: Cell<Option<(VirtAddr, Entry)>>,
    /// Where the next anywhere allocation starts searching (Mach's
    /// first_free): the end of the last one, pulled down by deallocation.
    free_hint: VirtAddr,
}

impl core::fmt::Debug for VmMap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VmMap")
            .field("range", &(self.min..self.max))
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl VmMap {
    /// An empty map over `range` (page aligned, nonempty) holding at most
    /// `entry_limit` (≥ 1) entries.
    pub fn new(range: Range<VirtAddr>, entry_limit: usize) -> Result<VmMap, VmError> {
        if !range.start.is_aligned(PAGE_SIZE)
            || !range.end.is_aligned(PAGE_SIZE)
            || range.start >= range.end
            || entry_limit == 0
        {
            return Err(VmError::InvalidArgument);
        }
        Ok(VmMap {
            entries: BTreeMap::new(),
            min: range.start,
            max: range.end,
            entry_limit,
            hint: Cell::new(None),
            free_hint: range.start,
        })
    }

    pub fn range(&self) -> Range<VirtAddr> {
        self.min..self.max
    }
    pub fn entry_limit(&self) -> usize {
        self.entry_limit
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry in address order.
    pub fn iter(&self) -> impl Iterator<Item = Region> + '_ {
        self.entries.iter().map(|(s, e)| Region::new(*s, e))
    }

    /// vm_map_enter: maps `size` bytes of `object` from `offset` at `addr`
    /// (or, with None, the first free range at or above the allocation
    /// hint, wrapping once). Takes over the caller's one reference on
    /// `object` on success; on error the caller still owns it. `refs` is
    /// beyond the brief's signature: merging the new entry into a
    /// neighbour on the same object releases the reference handed over.
    #[allow(clippy::too_many_arguments)] // vm_map_enter's own argument list
    pub fn allocate(
        &mut self,
        addr: Option<VirtAddr>,
        size: u64,
        object: ObjectId,
        offset: ObjectOffset,
        prot: VmProt,
        max: VmProt,
        inheritance: Inheritance,
        needs_copy: bool,
        refs: &mut dyn ObjectRefs,
    ) -> Result<VirtAddr, VmError> {
        if size == 0
            || !size.is_multiple_of(PAGE_SIZE)
            || !offset.is_page_aligned()
            || offset.checked_add(size).is_none()
            || !max.contains(prot)
        {
            return Err(VmError::InvalidArgument);
        }
        let start = self.place(addr, size)?;
        if self.entries.len() >= self.entry_limit {
            return Err(VmError::ResourceShortage);
        }
        self.hint.set(None);
        let end = VirtAddr(start.0 + size);
        self.entries.insert(
            start,
            Entry {
                end,
                object,
                offset,
                prot,
                max,
                inheritance,
                needs_copy,
                shared: false,
            },
        );
        if addr.is_none() {
            self.free_hint = end;
        }
        // A merge with a neighbour on the same object releases the
        // reference just taken over; the merged entry holds one.
        self.merge_around(start, end, refs);
        Ok(start)
    }

    /// vm_deallocate: removes [start, start+size), clipping entries that
    /// straddle its ends. Holes are not an error (as in Mach).
    pub fn deallocate(
        &mut self,
        start: VirtAddr,
        size: u64,
        refs: &mut dyn ObjectRefs,
        pmap: &mut dyn Pmap,
    ) -> Result<(), VmError> {
        let end = self.check_range(start, size)?;
        // Only punching a hole inside one entry adds an entry.
        let grows =
            matches!(self.entry_containing(start), Some((s, e)) if s < start && end < e.end);
        if grows && self.entries.len() >= self.entry_limit {
            return Err(VmError::ResourceShortage);
        }
        self.hint.set(None);
        self.clip(start, refs);
        self.clip(end, refs);
        while let Some((&s, _)) = self.entries.range(start..end).next() {
            if let Some(e) = self.entries.remove(&s) {
                refs.release(e.object);
            }
        }
        pmap.remove(start, end);
        if start < self.free_hint {
            self.free_hint = start;
        }
        Ok(())
    }

    /// Removes every entry (task termination).
    pub fn clear(&mut self, refs: &mut dyn ObjectRefs, pmap: &mut dyn Pmap) {
        self.hint.set(None);
        while let Some((_, e)) = self.entries.pop_first() {
            refs.release(e.object);
        }
        pmap.remove(self.min, self.max);
        self.free_hint = self.min;
    }

    /// vm_protect. With `set_max` the maximum becomes `prot` and the
    /// current protection is lowered to fit; otherwise the current
    /// protection becomes `prot`. Neither may exceed the existing maximum
    /// (ProtectionFailure), and the whole range must be allocated
    /// (InvalidAddress); on either error nothing changes. Takes `refs`
    /// (beyond the brief's signature) because clipping and merging entries
    /// take and drop object references.
    pub fn protect(
        &mut self,
        start: VirtAddr,
        size: u64,
        set_max: bool,
        prot: VmProt,
        refs: &mut dyn ObjectRefs,
        pmap: &mut dyn Pmap,
    ) -> Result<(), VmError> {
        let end = self.check_range(start, size)?;
        self.check_covered(start, end, |e| {
            if e.max.contains(prot) {
                Ok(())
            } else {
                Err(VmError::ProtectionFailure)
            }
        })?;
        self.clip_both(start, end, refs)?;
        for (s, e) in self.entries.range_mut(start..end) {
            let old = e.prot;
            if set_max {
                e.max = prot;
                e.prot = e.prot.intersect(prot);
            } else {
                e.prot = prot;
            }
            // Only lowering touches the hardware; raising is done lazily by
            // the fault handler.
            if !e.prot.contains(old) {
                pmap.protect(*s, e.end, e.prot);
            }
        }
        self.merge_around(start, end, refs);
        Ok(())
    }

    /// vm_inherit. Holes in the range are skipped, as in Mach. Takes `refs`
    /// for clipping and merging.
    pub fn inherit(
        &mut self,
        start: VirtAddr,
        size: u64,
        inheritance: Inheritance,
        refs: &mut dyn ObjectRefs,
    ) -> Result<(), VmError> {
        let end = self.check_range(start, size)?;
        self.clip_both(start, end, refs)?;
        for (_, e) in self.entries.range_mut(start..end) {
            e.inheritance = inheritance;
        }
        self.merge_around(start, end, refs);
        Ok(())
    }

    /// The entry mapping `va`, if any.
    pub fn lookup(&self, va: VirtAddr) -> Option<Lookup> {
        let (s, e) = match self.hint.get() {
            Some((s, e)) if s <= va && va < e.end => (s, e),
            _ => {
                let found = self.entry_containing(va)?;
                self.hint.set(Some(found));
                found
            }
        };
        let page = va.align_down(PAGE_SIZE);
        Some(Lookup {
            start: s,
            end: e.end,
            object: e.object,
            offset: ObjectOffset(e.offset.0 + (page.0 - s.0)),
            prot: e.prot,
            max: e.max,
            inheritance: e.inheritance,
            needs_copy: e.needs_copy,
            shared: e.shared,
        })
    }

    /// For a write fault on a needs_copy entry: puts a shadow object in
    /// front of the entry's object (refs.shadow moves the entry's
    /// reference to the shadow) and clears needs_copy. A no-op on an entry
    /// without needs_copy. Returns the new lookup of `va`.
    pub fn resolve_copy(
        &mut self,
        va: VirtAddr,
        refs: &mut dyn ObjectRefs,
    ) -> Result<Lookup, VmError> {
        let (s, _) = self.entry_containing(va).ok_or(VmError::InvalidAddress)?;
        self.resolve_entry(s, refs)?;
        self.lookup(va).ok_or(VmError::InvalidAddress)
    }

    /// vm_region: the region containing `from`, or else the next one above.
    pub fn regions(&self, from: VirtAddr) -> Option<RegionInfo> {
        if let Some((s, e)) = self.entry_containing(from) {
            return Some(Region::new(s, &e));
        }
        self.entries
            .range((Excluded(from), Unbounded))
            .next()
            .map(|(s, e)| Region::new(*s, e))
    }

    /// task_create's address-space inheritance: builds the child's map over
    /// `child_range` from this (the parent's) map, entry by entry:
    /// - None: nothing in the child;
    /// - Share: the child's entry names the same object (one more
    ///   reference), both flagged shared; a needs_copy parent entry is
    ///   shadowed first, so both share the shadow (see the module doc);
    /// - Copy: symmetric copy-on-write, both entries needs_copy, the
    ///   parent's pmap write-protected over the entry so its next write
    ///   faults (except for shared entries, see the module doc).
    ///
    /// Every inherited entry must lie in `child_range` (InvalidArgument,
    /// checked first). On a later error (a shadow could not be made) the
    /// child's references are released and the parent is left with
    /// changes that do not alter what it sees (shadows, needs_copy).
    pub fn fork(
        &mut self,
        child_range: Range<VirtAddr>,
        refs: &mut dyn ObjectRefs,
        parent_pmap: &mut dyn Pmap,
    ) -> Result<VmMap, VmError> {
        let mut child = VmMap::new(child_range.clone(), self.entry_limit)?;
        let outside = self.entries.iter().any(|(s, e)| {
            e.inheritance != Inheritance::None
                && (*s < child_range.start || e.end > child_range.end)
        });
        if outside {
            return Err(VmError::InvalidArgument);
        }
        self.hint.set(None);
        let mut cur = self.entries.keys().next().copied();
        while let Some(s) = cur {
            cur = self
                .entries
                .range((Excluded(s), Unbounded))
                .next()
                .map(|(k, _)| *k);
            let Some(mut e) = self.entries.get(&s).copied() else {
                continue;
            };
            match e.inheritance {
                Inheritance::None => continue,
                Inheritance::Share => {
                    if e.needs_copy
                        && let Err(err) = self.resolve_entry(s, refs)
                    {
                        child.clear(refs, &mut NoPmap);
                        return Err(err);
                    }
                    let Some(pe) = self.entries.get_mut(&s) else {
                        continue;
                    };
                    pe.shared = true;
                    e = *pe;
                }
                Inheritance::Copy => {
                    if !e.shared && !e.needs_copy {
                        parent_pmap.protect(s, e.end, e.prot.without(VmProt::WRITE));
                        if let Some(pe) = self.entries.get_mut(&s) {
                            pe.needs_copy = true;
                        }
                    }
                    e.needs_copy = true;
                    e.shared = false;
                }
            }
            refs.reference(e.object);
            child.entries.insert(s, e);
        }
        self.merge_around(self.min, self.max, refs);
        child.merge_around(child.min, child.max, refs);
        Ok(child)
    }

    /// vm_map_copyin: a copy-on-write snapshot of [start, start+size),
    /// which must be allocated (InvalidAddress) and readable
    /// (ProtectionFailure). Source entries become needs_copy and lose WRITE
    /// in `pmap` (shared entries excepted, see the module doc); each copy
    /// entry holds a new reference.
    pub fn copy_out_of(
        &mut self,
        start: VirtAddr,
        size: u64,
        refs: &mut dyn ObjectRefs,
        pmap: &mut dyn Pmap,
    ) -> Result<VmCopy, VmError> {
        let end = self.check_range(start, size)?;
        let mut pieces = 0usize;
        self.check_covered(start, end, |e| {
            pieces += 1;
            if e.prot.contains(VmProt::READ) {
                Ok(())
            } else {
                Err(VmError::ProtectionFailure)
            }
        })?;
        let mut entries = Vec::new();
        entries
            .try_reserve_exact(pieces)
            .map_err(|_| VmError::ResourceShortage)?;
        self.clip_both(start, end, refs)?;
        for (s, e) in self.entries.range_mut(start..end) {
            if !e.shared && !e.needs_copy {
                pmap.protect(*s, e.end, e.prot.without(VmProt::WRITE));
                e.needs_copy = true;
            }
            refs.reference(e.object);
            entries.push(CopyEntry {
                size: e.end.0 - s.0,
                object: e.object,
                offset: e.offset,
                prot: e.prot,
                max: e.max,
                inheritance: e.inheritance,
            });
        }
        self.merge_around(start, end, refs);
        Ok(VmCopy { entries, size })
    }

    /// vm_map_copyout: maps `copy` at `addr` (or anywhere), every entry
    /// needs_copy, with `attrs` (or, None, each piece's own source
    /// attributes). Consumes the copy on success; on error hands it back
    /// untouched, as Mach does, so the caller may retry or discard it.
    pub fn insert_copy(
        &mut self,
        addr: Option<VirtAddr>,
        copy: VmCopy,
        attrs: Option<EntryAttrs>,
        refs: &mut dyn ObjectRefs,
    ) -> Result<VirtAddr, (VmError, VmCopy)> {
        if attrs.is_some_and(|a| !a.max.contains(a.prot)) || copy.size == 0 {
            return Err((VmError::InvalidArgument, copy));
        }
        let start = match self.place(addr, copy.size) {
            Ok(s) => s,
            Err(e) => return Err((e, copy)),
        };
        if self.entries.len().saturating_add(copy.entries.len()) > self.entry_limit {
            return Err((VmError::ResourceShortage, copy));
        }
        self.hint.set(None);
        let mut at = start;
        for c in &copy.entries {
            let a = attrs.unwrap_or(EntryAttrs {
                prot: c.prot,
                max: c.max,
                inheritance: c.inheritance,
            });
            let end = VirtAddr(at.0 + c.size);
            self.entries.insert(
                at,
                Entry {
                    end,
                    object: c.object,
                    offset: c.offset,
                    prot: a.prot,
                    max: a.max,
                    inheritance: a.inheritance,
                    needs_copy: true,
                    shared: false,
                },
            );
            at = end;
        }
        if addr.is_none() {
            self.free_hint = at;
        }
        self.merge_around(start, at, refs);
        Ok(start)
    }

    // ---- internals ----

    /// The checks every ranged operation makes; returns the end.
    fn check_range(&self, start: VirtAddr, size: u64) -> Result<VirtAddr, VmError> {
        if size == 0 || !size.is_multiple_of(PAGE_SIZE) || !start.is_aligned(PAGE_SIZE) {
            return Err(VmError::InvalidArgument);
        }
        let end = start.checked_add(size).ok_or(VmError::InvalidArgument)?;
        if start < self.min || end > self.max {
            return Err(VmError::InvalidArgument);
        }
        Ok(end)
    }

    fn entry_containing(&self, va: VirtAddr) -> Option<(VirtAddr, Entry)> {
        self.entries
            .range(..=va)
            .next_back()
            .filter(|(_, e)| va < e.end)
            .map(|(s, e)| (*s, *e))
    }

    /// Walks [start, end), requiring it to be fully allocated and `each`
    /// to accept every entry overlapping it. Changes nothing.
    fn check_covered(
        &self,
        start: VirtAddr,
        end: VirtAddr,
        mut each: impl FnMut(&Entry) -> Result<(), VmError>,
    ) -> Result<(), VmError> {
        let mut cur = start;
        while cur < end {
            let (_, e) = self.entry_containing(cur).ok_or(VmError::InvalidAddress)?;
            each(&e)?;
            cur = e.end;
        }
        Ok(())
    }

    /// Where a new range of `size` bytes goes: `addr` if free (NoSpace if
    /// not), or the first fit.
    fn place(&self, addr: Option<VirtAddr>, size: u64) -> Result<VirtAddr, VmError> {
        match addr {
            Some(a) => {
                let end = self.check_range(a, size)?;
                let overlaps = self.entry_containing(a).is_some()
                    || self.entries.range(a..end).next().is_some();
                if overlaps {
                    Err(VmError::NoSpace)
                } else {
                    Ok(a)
                }
            }
            None => {
                if size == 0 || !size.is_multiple_of(PAGE_SIZE) {
                    return Err(VmError::InvalidArgument);
                }
                let from = self.free_hint.max(self.min);
                self.first_fit(from, size)
                    .or_else(|| self.first_fit(self.min, size))
                    .ok_or(VmError::NoSpace)
            }
        }
    }

    fn first_fit(&self, from: VirtAddr, size: u64) -> Option<VirtAddr> {
        let mut cand = match self.entry_containing(from) {
            Some((_, e)) => e.end,
            None => from,
        };
        for (s, e) in self.entries.range(cand..) {
            if s.0 - cand.0 >= size {
                break;
            }
            cand = cand.max(e.end);
        }
        let end = cand.checked_add(size)?;
        (end <= self.max).then_some(cand)
    }

    /// Splits the entry strictly containing `at` (if any) in two there; the
    /// new half takes one more reference.
    fn clip(&mut self, at: VirtAddr, refs: &mut dyn ObjectRefs) {
        let Some((s, e)) = self.entry_containing(at) else {
            return;
        };
        if s == at {
            return;
        }
        let right = Entry {
            offset: ObjectOffset(e.offset.0 + (at.0 - s.0)),
            ..e
        };
        if let Some(left) = self.entries.get_mut(&s) {
            left.end = at;
        }
        self.entries.insert(at, right);
        refs.reference(e.object);
    }

    /// Clips at both ends of [start, end) after checking the entry limit
    /// allows the (at most two) new entries.
    fn clip_both(
        &mut self,
        start: VirtAddr,
        end: VirtAddr,
        refs: &mut dyn ObjectRefs,
    ) -> Result<(), VmError> {
        let splits = [start, end]
            .iter()
            .filter(|&&at| matches!(self.entry_containing(at), Some((s, _)) if s < at))
            .count();
        if self.entries.len() + splits > self.entry_limit {
            return Err(VmError::ResourceShortage);
        }
        self.hint.set(None);
        self.clip(start, refs);
        self.clip(end, refs);
        Ok(())
    }

    fn resolve_entry(&mut self, s: VirtAddr, refs: &mut dyn ObjectRefs) -> Result<(), VmError> {
        let Some(e) = self.entries.get(&s).copied() else {
            return Err(VmError::InvalidAddress);
        };
        if !e.needs_copy {
            return Ok(());
        }
        let shadow = refs.shadow(e.object, e.offset, e.end.0 - s.0)?;
        self.hint.set(None);
        if let Some(pe) = self.entries.get_mut(&s) {
            pe.object = shadow;
            pe.offset = ObjectOffset(0);
            pe.needs_copy = false;
        }
        Ok(())
    }

    /// Merges the entry starting at `s` with the one right after it if
    /// they continue each other (same object, contiguous offsets, same
    /// attributes); the merged-away entry's reference is released.
    fn merge_with_next(&mut self, s: VirtAddr, refs: &mut dyn ObjectRefs) -> bool {
        let Some(a) = self.entries.get(&s).copied() else {
            return false;
        };
        let Some(b) = self.entries.get(&a.end).copied() else {
            return false;
        };
        let contiguous = a.object == b.object
            && a.offset.checked_add(a.end.0 - s.0) == Some(b.offset)
            && a.same_attrs(&b);
        if !contiguous {
            return false;
        }
        self.entries.remove(&a.end);
        if let Some(pa) = self.entries.get_mut(&s) {
            pa.end = b.end;
        }
        refs.release(b.object);
        true
    }

    /// Merges every mergeable pair of neighbours from the entry before
    /// `start` through the one starting at `end`.
    fn merge_around(&mut self, start: VirtAddr, end: VirtAddr, refs: &mut dyn ObjectRefs) {
        self.hint.set(None);
        let first = self
            .entries
            .range(..start)
            .next_back()
            .or_else(|| self.entries.range(start..).next())
            .map(|(s, _)| *s);
        let mut cur = first;
        while let Some(s) = cur {
            if self.merge_with_next(s, refs) {
                continue;
            }
            cur = self
                .entries
                .range((Excluded(s), Unbounded))
                .next()
                .map(|(k, _)| *k)
                .filter(|k| *k < end);
        }
    }
}

/// A child map under construction has no hardware mappings yet.
struct NoPmap;

impl Pmap for NoPmap {
    fn enter(&mut self, _: VirtAddr, _: crate::addr::PhysAddr, _: VmProt) -> Result<(), VmError> {
        Ok(())
    }
    fn remove(&mut self, _: VirtAddr, _: VirtAddr) {}
    fn protect(&mut self, _: VirtAddr, _: VirtAddr, _: VmProt) {}
    fn extract(&self, _: VirtAddr) -> Option<(crate::addr::PhysAddr, VmProt)> {
        None
    }
}
