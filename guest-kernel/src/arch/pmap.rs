//! The x86-64 pmap: the machine-independent VM's [`Pmap`] and [`PhysMaps`]
//! over real four-level page tables, with the reverse maps (pv lists) that
//! pageout and copy-on-write need to find every mapping of a frame.
//!
//! Pure logic over a [`TableMemory`], so the same code the kernel runs is
//! host-tested on an emulated MMU. The kernel supplies the table memory
//! (the direct map) and a [`Tlb`] that issues `invlpg` for the loaded space.
//!
//! Walks skip absent tables a level at a time: removing or protecting a
//! large, sparsely mapped range costs per present table, not per page,
//! which matters where every ring-0 instruction is emulated.

use alloc::vec::Vec;

use super::paging::{NO_EXECUTE, PRESENT, TableMemory, USER, WRITABLE};
use crate::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use crate::vm::pmap::{PhysMaps, Pmap};
use crate::vm::types::{VmError, VmProt};

/// Set by the MMU on any access through the entry.
pub const ACCESSED: u64 = 1 << 5;
/// Set by the MMU on a write through the entry.
pub const DIRTY: u64 = 1 << 6;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const USER_TOP: u64 = 0x0000_8000_0000_0000;

/// Drops stale translations after an entry is lowered or removed. On one
/// CPU only the loaded space (`root` == CR3) can hold them; a multiprocessor
/// kernel shoots down the other CPUs that have `root` loaded.
pub trait Tlb {
    fn invalidate(&mut self, root: PhysAddr, va: VirtAddr);
}

/// A pv table word's index field: one more than the index of the frame's
/// first mapping in `PvTable::entries`, 0 for none (so a zeroed word is a
/// frame never mapped).
const PV_INDEX: u32 = (1 << 30) - 1;
/// Sticky bits of mappings already gone: the frame was referenced /
/// modified through one of them.
const PV_REFERENCED: u32 = 1 << 30;
const PV_MODIFIED: u32 = 1 << 31;

/// Frame words are added this many at a time (4 KiB of words, for 4 MiB
/// of RAM).
const HEADS_STEP: usize = 1024;

/// One mapping of a frame, on its frame's list.
#[derive(Clone, Copy, Debug)]
struct PvEntry {
    root: PhysAddr,
    va: VirtAddr,
    /// The next mapping of the same frame (or the next free entry), as an
    /// index field.
    next: u32,
}

/// The reverse maps: frame → every (space root, va) mapping it, and the
/// referenced/modified bits of mappings already gone (kept so that removing
/// a mapping never loses a dirty page).
///
/// One word per frame number (the head of the frame's list and its sticky
/// bits), grown to the highest frame mapped; the mappings themselves are
/// entries of one arena linked per frame and reused through a free list.
/// Mapping a frame allocates nothing once the arena has room (where a map
/// of frames to a Vec each cost a heap allocation per frame), and finding a
/// frame's mappings is an index.
///
/// Bounded: an `enter` beyond `limit` mappings is refused with
/// ResourceShortage, as is one the arena or the frame words cannot grow
/// for.
pub struct PvTable {
    heads: Vec<u32>,
    entries: Vec<PvEntry>,
    /// Free entries (index field of the first).
    free: u32,
    count: usize,
    limit: usize,
}

/// The (root, va) mappings of one frame: [`PvTable::mappings`].
pub struct Mappings<'a> {
    entries: &'a [PvEntry],
    cur: u32,
}

impl Iterator for Mappings<'_> {
    type Item = (PhysAddr, VirtAddr);
    fn next(&mut self) -> Option<(PhysAddr, VirtAddr)> {
        let e = self.entries.get((self.cur as usize).checked_sub(1)?)?;
        self.cur = e.next;
        Some((e.root, e.va))
    }
}

fn frame_slot(frame: PhysAddr) -> usize {
    (frame.0 / PAGE_SIZE) as usize
}

impl PvTable {
    pub fn new(limit: usize) -> PvTable {
        PvTable {
            heads: Vec::new(),
            entries: Vec::new(),
            free: 0,
            count: 0,
            limit: limit.min(PV_INDEX as usize - 1),
        }
    }
    /// Mappings recorded in total.
    pub fn entries(&self) -> usize {
        self.count
    }
    fn head(&self, frame: PhysAddr) -> u32 {
        self.heads.get(frame_slot(frame)).copied().unwrap_or(0)
    }
    /// The (root, va) mappings of `frame`.
    pub fn mappings(&self, frame: PhysAddr) -> Mappings<'_> {
        Mappings {
            entries: &self.entries,
            cur: self.head(frame) & PV_INDEX,
        }
    }

    /// Drops what is known of an unmapped frame about to be freed (its
    /// sticky bits), so a reused frame starts clean.
    pub fn forget(&mut self, frame: PhysAddr) {
        if let Some(h) = self.heads.get_mut(frame_slot(frame))
            && *h & PV_INDEX == 0
        {
            *h = 0;
        }
    }

    #[inline(always)]
    fn add(&mut self, frame: PhysAddr, root: PhysAddr, va: VirtAddr) -> Result<(), VmError> {
        if self.count >= self.limit {
            return Err(VmError::ResourceShortage);
        }
        let s = frame_slot(frame);
        if s >= self.heads.len() {
            self.grow_heads(s)?;
        }
        let head = self.heads[s];
        let e = PvEntry {
            root,
            va,
            next: head & PV_INDEX,
        };
        let i = match self.free {
            0 => {
                // Checked here, not left to try_reserve: that is a call on
                // every mapping that grows the arena.
                if self.entries.len() == self.entries.capacity() {
                    self.entries
                        .try_reserve(1)
                        .map_err(|_| VmError::ResourceShortage)?;
                }
                self.entries.push(e);
                self.entries.len() as u32
            }
            i => {
                let slot = &mut self.entries[i as usize - 1];
                self.free = slot.next;
                *slot = e;
                i
            }
        };
        self.heads[s] = (head & !PV_INDEX) | i;
        self.count += 1;
        Ok(())
    }

    /// Frame words up to past frame slot `s` (a frame above any mapped so
    /// far), in steps of [`HEADS_STEP`]: fresh frames come in ascending
    /// order, so growing by one word would be a call and a reallocation
    /// check on every first mapping of a fresh frame.
    #[inline(never)]
    fn grow_heads(&mut self, s: usize) -> Result<(), VmError> {
        let len = (s + 1).next_multiple_of(HEADS_STEP);
        self.heads
            .try_reserve(len - self.heads.len())
            .map_err(|_| VmError::ResourceShortage)?;
        self.heads.resize(len, 0);
        Ok(())
    }

    /// Takes entry `cur` (index field) off frame slot `s`'s list, `prev`
    /// being the entry before it (0 if it is first), onto the free list.
    fn unlink(&mut self, s: usize, prev: u32, cur: u32) {
        let next = self.entries[cur as usize - 1].next;
        match prev {
            0 => self.heads[s] = (self.heads[s] & !PV_INDEX) | next,
            p => self.entries[p as usize - 1].next = next,
        }
        self.entries[cur as usize - 1].next = self.free;
        self.free = cur;
        self.count -= 1;
    }

    /// Folds a mapping's hardware bits into its frame's sticky bits.
    fn fold(&mut self, s: usize, pte: u64) {
        let mut bits = 0;
        if pte & ACCESSED != 0 {
            bits |= PV_REFERENCED;
        }
        if pte & DIRTY != 0 {
            bits |= PV_MODIFIED;
        }
        self.heads[s] |= bits;
    }

    /// Forgets one mapping, folding its hardware bits into the frame's.
    fn remove(&mut self, frame: PhysAddr, root: PhysAddr, va: VirtAddr, pte: u64) {
        let s = frame_slot(frame);
        let Some(&head) = self.heads.get(s) else {
            return;
        };
        let (mut prev, mut cur) = (0, head & PV_INDEX);
        while let Some(e) = self.entries.get((cur as usize).wrapping_sub(1)) {
            if e.root == root && e.va == va {
                self.unlink(s, prev, cur);
                break;
            }
            (prev, cur) = (cur, e.next);
        }
        self.fold(s, pte);
    }

    /// Takes the sticky bit `bit` of `frame`: whether it was set.
    fn take_bit(&mut self, frame: PhysAddr, bit: u32) -> bool {
        match self.heads.get_mut(frame_slot(frame)) {
            Some(h) => {
                let was = *h & bit != 0;
                *h &= !bit;
                was
            }
            None => false,
        }
    }
}

/// Leaf flags for `prot`. x86 cannot map a page write-only or execute-only:
/// WRITE or EXECUTE imply readable, as every pmap on this architecture does.
fn leaf_flags(prot: VmProt) -> u64 {
    let mut f = PRESENT | USER;
    if prot.contains(VmProt::WRITE) {
        f |= WRITABLE;
    }
    if !prot.contains(VmProt::EXECUTE) {
        f |= NO_EXECUTE;
    }
    f
}

fn prot_of(pte: u64) -> VmProt {
    let mut p = VmProt::READ;
    if pte & WRITABLE != 0 {
        p = p.union(VmProt::WRITE);
    }
    if pte & NO_EXECUTE == 0 {
        p = p.union(VmProt::EXECUTE);
    }
    p
}

fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * level)) & 511) as usize
}

/// Calls `f(va, &mut pte)` for every present 4 KiB leaf in [start, end) of
/// the lower half, skipping absent tables whole. Huge leaves are not user
/// mappings and are left alone.
fn for_each_leaf<M: TableMemory + ?Sized>(
    mem: &mut M,
    root: PhysAddr,
    start: u64,
    end: u64,
    f: &mut dyn FnMut(u64, &mut u64),
) {
    fn walk<M: TableMemory + ?Sized>(
        mem: &mut M,
        table: PhysAddr,
        level: u32,
        start: u64,
        end: u64,
        f: &mut dyn FnMut(u64, &mut u64),
    ) {
        let span = 1u64 << (12 + 9 * level);
        let mut va = start;
        while va < end {
            let next = (va & !(span - 1)).saturating_add(span).min(end);
            let i = index(va, level);
            let e = mem.table(table)[i];
            if e & PRESENT != 0 {
                if level == 0 {
                    let mut pte = e;
                    f(va, &mut pte);
                    mem.table(table)[i] = pte;
                } else if e & super::paging::HUGE == 0 {
                    walk(mem, PhysAddr(e & ADDR_MASK), level - 1, va, next, f);
                }
            }
            va = next;
        }
    }
    let end = end.min(USER_TOP);
    if start < end {
        walk(mem, root, 3, start, end, f);
    }
}

/// The leaf entry slot for `va`: (table, index). With `create`, missing
/// intermediate tables are allocated (None if that fails or a huge page
/// covers `va`); without, None where no table exists.
#[inline]
fn leaf_slot<M: TableMemory + ?Sized>(
    mem: &mut M,
    root: PhysAddr,
    va: u64,
    create: bool,
) -> Option<(PhysAddr, usize)> {
    let mut table = root;
    for level in (1..=3).rev() {
        let i = index(va, level);
        let e = mem.table(table)[i];
        table = if e & PRESENT == 0 {
            if !create {
                return None;
            }
            let t = mem.alloc_table()?;
            mem.table(table)[i] = t.0 | PRESENT | WRITABLE | USER;
            t
        } else if e & super::paging::HUGE != 0 {
            return None;
        } else {
            PhysAddr(e & ADDR_MASK)
        };
    }
    Some((table, index(va, 0)))
}

/// One address space's view: the [`Pmap`] the VM code drives. Built for the
/// duration of one VM operation from the kernel's long-lived parts.
///
/// Generic over the table memory so that the kernel's (the direct map)
/// inlines: reaching a table is then an add, where a call through a vtable
/// per level made the walk of every fault's `enter` ~90 emulated
/// instructions.
pub struct X86Pmap<'a, M: TableMemory + ?Sized = dyn TableMemory> {
    pub mem: &'a mut M,
    pub pv: &'a mut PvTable,
    pub tlb: &'a mut dyn Tlb,
    pub root: PhysAddr,
}

impl<M: TableMemory + ?Sized> Pmap for X86Pmap<'_, M> {
    fn enter(&mut self, va: VirtAddr, frame: PhysAddr, prot: VmProt) -> Result<(), VmError> {
        if !va.is_aligned(PAGE_SIZE) || !va.is_user() || !frame.is_aligned(PAGE_SIZE) {
            return Err(VmError::InvalidArgument);
        }
        if prot.is_empty() {
            self.remove(va, VirtAddr(va.0 + PAGE_SIZE));
            return Ok(());
        }
        let (table, i) =
            leaf_slot(self.mem, self.root, va.0, true).ok_or(VmError::ResourceShortage)?;
        let old = self.mem.table(table)[i];
        let new = frame.0 | leaf_flags(prot);
        if old & PRESENT != 0 && old & ADDR_MASK == frame.0 {
            // Same frame, new rights (a write fault upgrading a read
            // mapping): keep the hardware bits, no pv change.
            self.mem.table(table)[i] = new | (old & (ACCESSED | DIRTY));
            if prot_of(old).without(prot) != VmProt::NONE {
                self.tlb.invalidate(self.root, va);
            }
            return Ok(());
        }
        self.pv.add(frame, self.root, va)?;
        if old & PRESENT != 0 {
            self.pv
                .remove(PhysAddr(old & ADDR_MASK), self.root, va, old);
            self.tlb.invalidate(self.root, va);
        }
        // A new mapping starts accessed, as Linux maps pages on x86: the
        // faulting access sets the bit at once anyway (here without the
        // CPU's assist), and a shadow MMU (kvm_pvm's) prefetches only
        // accessed entries, so pages mapped ahead (fault-around) are filled
        // eight to a shadow fault instead of one each. Pageout sees a page
        // mapped ahead and never touched as referenced once.
        self.mem.table(table)[i] = new | ACCESSED;
        Ok(())
    }

    fn remove(&mut self, start: VirtAddr, end: VirtAddr) {
        let (root, pv, tlb) = (self.root, &mut *self.pv, &mut *self.tlb);
        for_each_leaf(self.mem, root, start.0, end.0, &mut |va, pte| {
            pv.remove(PhysAddr(*pte & ADDR_MASK), root, VirtAddr(va), *pte);
            *pte = 0;
            tlb.invalidate(root, VirtAddr(va));
        });
    }

    fn protect(&mut self, start: VirtAddr, end: VirtAddr, prot: VmProt) {
        if prot.is_empty() {
            self.remove(start, end);
            return;
        }
        let (root, tlb) = (self.root, &mut *self.tlb);
        for_each_leaf(self.mem, root, start.0, end.0, &mut |va, pte| {
            let lowered = prot_of(*pte).intersect(prot.union(VmProt::READ));
            let new = (*pte & (ADDR_MASK | ACCESSED | DIRTY)) | leaf_flags(lowered);
            if new != *pte {
                *pte = new;
                tlb.invalidate(root, VirtAddr(va));
            }
        });
    }

    fn extract(&self, _va: VirtAddr) -> Option<(PhysAddr, VmProt)> {
        // Reading tables needs `&mut dyn TableMemory` (the kernel's direct
        // map hands out &mut); see `X86Pmap::lookup`.
        None
    }
}

impl<M: TableMemory + ?Sized> X86Pmap<'_, M> {
    /// Maps `frames[i]` at `va + i` pages with `prot`, stopping at the
    /// first of those addresses already mapped (or that cannot be mapped);
    /// returns how many it mapped. The pages mapped ahead of a fault:
    /// one table walk per page table, not two per page as `lookup` then
    /// `enter` would cost.
    pub fn enter_ahead(&mut self, va: VirtAddr, frames: &[PhysAddr], prot: VmProt) -> usize {
        if !va.is_aligned(PAGE_SIZE) || prot.is_empty() {
            return 0;
        }
        let flags = leaf_flags(prot) | ACCESSED;
        let mut slot: Option<(PhysAddr, usize)> = None;
        for (n, &frame) in frames.iter().enumerate() {
            let at = VirtAddr(va.0 + n as u64 * PAGE_SIZE);
            if !at.is_user() || !frame.is_aligned(PAGE_SIZE) {
                return n;
            }
            // The next entry of the same table, else a walk.
            let (table, i) = match slot {
                Some((t, i)) if i + 1 < 512 => (t, i + 1),
                _ => match leaf_slot(self.mem, self.root, at.0, true) {
                    Some(s) => s,
                    None => return n,
                },
            };
            slot = Some((table, i));
            if self.mem.table(table)[i] & PRESENT != 0 || self.pv.add(frame, self.root, at).is_err()
            {
                return n;
            }
            self.mem.table(table)[i] = frame.0 | flags;
        }
        frames.len()
    }

    /// The current mapping of `va` (the `extract` the trait's `&self`
    /// cannot give through a `&mut`-only table accessor).
    pub fn lookup(&mut self, va: VirtAddr) -> Option<(PhysAddr, VmProt)> {
        let (table, i) = leaf_slot(self.mem, self.root, va.0 & !(PAGE_SIZE - 1), false)?;
        let e = self.mem.table(table)[i];
        (e & PRESENT != 0).then(|| (PhysAddr(e & ADDR_MASK), prot_of(e)))
    }
}

/// Every space's mappings of a frame: the [`PhysMaps`] of the kernel.
pub struct X86PhysMaps<'a, M: TableMemory + ?Sized = dyn TableMemory> {
    pub mem: &'a mut M,
    pub pv: &'a mut PvTable,
    pub tlb: &'a mut dyn Tlb,
}

/// Applies `f` to the live entry of each mapping of `frame`.
fn each<M: TableMemory + ?Sized>(
    mem: &mut M,
    pv: &PvTable,
    frame: PhysAddr,
    f: &mut dyn FnMut(PhysAddr, VirtAddr, &mut u64),
) {
    for (root, va) in pv.mappings(frame) {
        if let Some((table, i)) = leaf_slot(mem, root, va.0, false) {
            let mut pte = mem.table(table)[i];
            if pte & PRESENT != 0 && pte & ADDR_MASK == frame.0 {
                f(root, va, &mut pte);
                mem.table(table)[i] = pte;
            }
        }
    }
}

impl<M: TableMemory + ?Sized> PhysMaps for X86PhysMaps<'_, M> {
    fn page_protect(&mut self, frame: PhysAddr, prot: VmProt) {
        if !prot.is_empty() {
            let tlb = &mut *self.tlb;
            each(self.mem, self.pv, frame, &mut |root, va, pte| {
                let lowered = prot_of(*pte).intersect(prot.union(VmProt::READ));
                *pte = (*pte & (ADDR_MASK | ACCESSED | DIRTY)) | leaf_flags(lowered);
                tlb.invalidate(root, va);
            });
            return;
        }
        // Every live mapping goes, and its entry with it, in one walk of the
        // frame's list.
        let s = frame_slot(frame);
        let pv = &mut *self.pv;
        let (mut prev, mut cur) = (0, pv.head(frame) & PV_INDEX);
        while let Some(&e) = pv.entries.get((cur as usize).wrapping_sub(1)) {
            let live = leaf_slot(self.mem, e.root, e.va.0, false).filter(|&(table, i)| {
                let pte = self.mem.table(table)[i];
                pte & PRESENT != 0 && pte & ADDR_MASK == frame.0
            });
            match live {
                Some((table, i)) => {
                    let pte = core::mem::take(&mut self.mem.table(table)[i]);
                    self.tlb.invalidate(e.root, e.va);
                    pv.fold(s, pte);
                    pv.unlink(s, prev, cur);
                }
                None => prev = cur,
            }
            cur = e.next;
        }
    }

    fn clear_referenced(&mut self, frame: PhysAddr) -> bool {
        let mut was = false;
        let tlb = &mut *self.tlb;
        each(self.mem, self.pv, frame, &mut |root, va, pte| {
            if *pte & ACCESSED != 0 {
                was = true;
                *pte &= !ACCESSED;
                tlb.invalidate(root, va);
            }
        });
        self.pv.take_bit(frame, PV_REFERENCED) | was
    }

    fn clear_modified(&mut self, frame: PhysAddr) -> bool {
        let mut was = false;
        let tlb = &mut *self.tlb;
        each(self.mem, self.pv, frame, &mut |root, va, pte| {
            if *pte & DIRTY != 0 {
                was = true;
                *pte &= !DIRTY;
                tlb.invalidate(root, va);
            }
        });
        self.pv.take_bit(frame, PV_MODIFIED) | was
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::paging::emu::Emu;
    use crate::arch::paging::translate;

    #[derive(Default)]
    struct Log(Vec<(PhysAddr, VirtAddr)>);
    impl Tlb for Log {
        fn invalidate(&mut self, root: PhysAddr, va: VirtAddr) {
            self.0.push((root, va));
        }
    }
    struct World {
        mem: Emu,
        pv: PvTable,
        tlb: Log,
    }
    impl World {
        fn new() -> World {
            World {
                mem: Emu {
                    limit: 64,
                    next: 0x1000_0000,
                    ..Default::default()
                },
                pv: PvTable::new(1000),
                tlb: Log::default(),
            }
        }
        fn space(&mut self) -> PhysAddr {
            self.mem.alloc_table().unwrap()
        }
        fn pmap(&mut self, root: PhysAddr) -> X86Pmap<'_> {
            X86Pmap {
                mem: &mut self.mem,
                pv: &mut self.pv,
                tlb: &mut self.tlb,
                root,
            }
        }
        fn phys(&mut self) -> X86PhysMaps<'_> {
            X86PhysMaps {
                mem: &mut self.mem,
                pv: &mut self.pv,
                tlb: &mut self.tlb,
            }
        }
        fn pte(&mut self, root: PhysAddr, va: u64) -> Option<u64> {
            translate(&mut self.mem, root, VirtAddr(va)).map(|(_, f)| f)
        }
        /// What the MMU does on an access: sets A (and D on a write).
        fn touch(&mut self, root: PhysAddr, va: u64, write: bool) {
            let (t, i) = leaf_slot(&mut self.mem, root, va, false).unwrap();
            self.mem.table(t)[i] |= ACCESSED | if write { DIRTY } else { 0 };
        }
    }
    const F1: PhysAddr = PhysAddr(0x20_0000);
    const F2: PhysAddr = PhysAddr(0x20_1000);
    const RW: VmProt = VmProt::DEFAULT;

    #[test]
    fn enter_maps_with_the_asked_rights_and_replaces() {
        let mut w = World::new();
        let a = w.space();
        w.pmap(a)
            .enter(VirtAddr(0x40_0000), F1, VmProt::READ)
            .unwrap();
        let f = w.pte(a, 0x40_0000).unwrap();
        assert!(f & USER != 0 && f & WRITABLE == 0 && f & NO_EXECUTE != 0);
        assert_eq!(
            w.pmap(a).lookup(VirtAddr(0x40_0123)),
            Some((F1, VmProt::READ))
        );
        // Upgrade in place: no pv change, no flush needed.
        w.pmap(a).enter(VirtAddr(0x40_0000), F1, RW).unwrap();
        assert_eq!(w.pv.entries(), 1);
        assert!(w.tlb.0.is_empty());
        // Replace with another frame: the old frame's mapping is gone.
        w.pmap(a)
            .enter(VirtAddr(0x40_0000), F2, VmProt::ALL)
            .unwrap();
        assert_eq!(w.pv.mappings(F1).next(), None);
        assert_eq!(
            w.pv.mappings(F2).collect::<Vec<_>>(),
            [(a, VirtAddr(0x40_0000))]
        );
        assert_eq!(w.tlb.0, vec![(a, VirtAddr(0x40_0000))]);
        assert_eq!(w.pte(a, 0x40_0000).unwrap() & NO_EXECUTE, 0);
    }

    #[test]
    fn enter_ahead_maps_a_run_across_tables_and_stops_at_a_mapped_page() {
        let mut w = World::new();
        let a = w.space();
        // Three pages before a 2 MiB boundary and two after it; the sixth
        // address is mapped already.
        let va = 0x60_0000 - 3 * PAGE_SIZE;
        let frames: Vec<PhysAddr> = (0..7)
            .map(|i| PhysAddr(0x30_0000 + i * PAGE_SIZE))
            .collect();
        w.pmap(a)
            .enter(VirtAddr(va + 5 * PAGE_SIZE), F1, VmProt::READ)
            .unwrap();
        let n = w.pmap(a).enter_ahead(VirtAddr(va), &frames, VmProt::READ);
        assert_eq!(n, 5);
        for (i, &f) in frames.iter().enumerate().take(5) {
            let at = VirtAddr(va + i as u64 * PAGE_SIZE);
            assert_eq!(w.pmap(a).lookup(at), Some((f, VmProt::READ)));
            assert_eq!(w.pv.mappings(f).collect::<Vec<_>>(), [(a, at)]);
            // Accessed from the start, as `enter` makes them.
            assert!(w.pte(a, at.0).unwrap() & ACCESSED != 0);
        }
        // The page mapped before keeps its frame; nothing after it is mapped.
        assert_eq!(
            w.pmap(a).lookup(VirtAddr(va + 5 * PAGE_SIZE)),
            Some((F1, VmProt::READ))
        );
        assert_eq!(w.pmap(a).lookup(VirtAddr(va + 6 * PAGE_SIZE)), None);
        assert_eq!(w.pv.mappings(frames[5]).next(), None);
        // Nothing to do for an unaligned start or no rights.
        assert_eq!(
            w.pmap(a)
                .enter_ahead(VirtAddr(va + 1), &frames, VmProt::READ),
            0
        );
        assert_eq!(
            w.pmap(a)
                .enter_ahead(VirtAddr(0x80_0000), &frames, VmProt::NONE),
            0
        );
    }

    #[test]
    fn bad_arguments_and_table_exhaustion_are_errors() {
        let mut w = World::new();
        let a = w.space();
        let mut p = w.pmap(a);
        assert_eq!(
            p.enter(VirtAddr(0x40_0010), F1, RW),
            Err(VmError::InvalidArgument)
        );
        assert_eq!(
            p.enter(VirtAddr(0xffff_8000_0000_0000), F1, RW),
            Err(VmError::InvalidArgument)
        );
        w.mem.limit = w.mem.tables.len();
        assert_eq!(
            w.pmap(a).enter(VirtAddr(0x40_0000), F1, RW),
            Err(VmError::ResourceShortage)
        );
        assert_eq!(w.pv.entries(), 0);
        let mut small = World::new();
        small.pv = PvTable::new(1);
        let b = small.space();
        small.pmap(b).enter(VirtAddr(0x1000), F1, RW).unwrap();
        assert_eq!(
            small.pmap(b).enter(VirtAddr(0x2000), F2, RW),
            Err(VmError::ResourceShortage)
        );
    }

    #[test]
    fn remove_and_protect_walk_only_present_tables() {
        let mut w = World::new();
        let a = w.space();
        // Two pages 1 GiB apart: a remove over 2 GiB visits both, fast.
        w.pmap(a).enter(VirtAddr(0x1000), F1, RW).unwrap();
        w.pmap(a).enter(VirtAddr(0x4000_1000), F2, RW).unwrap();
        w.pmap(a)
            .protect(VirtAddr(0), VirtAddr(0x8000_0000), VmProt::READ);
        assert_eq!(w.pte(a, 0x1000).unwrap() & WRITABLE, 0);
        assert_eq!(w.pte(a, 0x4000_1000).unwrap() & WRITABLE, 0);
        assert_eq!(w.tlb.0.len(), 2);
        w.pmap(a).remove(VirtAddr(0x2000), VirtAddr(0x4000_2000));
        assert!(w.pte(a, 0x4000_1000).is_none());
        assert!(w.pte(a, 0x1000).is_some());
        assert_eq!(w.pv.entries(), 1);
        // A range reaching past user space stops at its top.
        w.pmap(a).remove(VirtAddr(0), VirtAddr(u64::MAX));
        assert_eq!(w.pv.entries(), 0);
    }

    #[test]
    fn page_protect_reaches_every_space() {
        let mut w = World::new();
        let (a, b) = (w.space(), w.space());
        w.pmap(a).enter(VirtAddr(0x1000), F1, RW).unwrap();
        w.pmap(b).enter(VirtAddr(0x7000), F1, RW).unwrap();
        w.phys().page_protect(F1, VmProt::READ);
        assert_eq!(w.pte(a, 0x1000).unwrap() & WRITABLE, 0);
        assert_eq!(w.pte(b, 0x7000).unwrap() & WRITABLE, 0);
        w.phys().page_protect(F1, VmProt::NONE);
        assert!(w.pte(a, 0x1000).is_none() && w.pte(b, 0x7000).is_none());
        assert_eq!(w.pv.mappings(F1).next(), None);
        assert_eq!(w.pv.entries(), 0);
    }

    #[test]
    fn pv_lists_unlink_anywhere_and_reuse_entries() {
        let mut w = World::new();
        let (a, b, c) = (w.space(), w.space(), w.space());
        for (root, va) in [(a, 0x1000), (b, 0x2000), (c, 0x3000)] {
            w.pmap(root).enter(VirtAddr(va), F1, RW).unwrap();
        }
        w.pmap(a).enter(VirtAddr(0x5000), F2, RW).unwrap();
        let maps = |w: &World, f| {
            let mut v: Vec<_> = w.pv.mappings(f).collect();
            v.sort();
            v
        };
        // The middle of F1's list goes; the rest stay findable.
        w.pmap(b).remove(VirtAddr(0x2000), VirtAddr(0x3000));
        assert_eq!(maps(&w, F1), [(a, VirtAddr(0x1000)), (c, VirtAddr(0x3000))]);
        assert_eq!(maps(&w, F2), [(a, VirtAddr(0x5000))]);
        // Its entry is reused: the arena does not grow.
        let arena = w.pv.entries.len();
        w.pmap(b).enter(VirtAddr(0x2000), F2, RW).unwrap();
        assert_eq!(w.pv.entries.len(), arena);
        assert_eq!(maps(&w, F2), [(a, VirtAddr(0x5000)), (b, VirtAddr(0x2000))]);
        w.phys().page_protect(F1, VmProt::NONE);
        assert_eq!(maps(&w, F1), []);
        assert_eq!(w.pv.entries(), 2);
        assert!(w.pte(c, 0x3000).is_none() && w.pte(a, 0x5000).is_some());
    }

    #[test]
    fn referenced_and_modified_survive_unmapping() {
        let mut w = World::new();
        let a = w.space();
        w.pmap(a).enter(VirtAddr(0x1000), F1, RW).unwrap();
        // A new mapping starts accessed (the faulting access would set it).
        assert!(w.phys().clear_referenced(F1));
        assert!(!w.phys().clear_referenced(F1));
        w.touch(a, 0x1000, false);
        assert!(w.phys().clear_referenced(F1));
        assert!(!w.phys().clear_referenced(F1), "cleared");
        w.touch(a, 0x1000, true);
        // The mapping goes; the dirty bit must not go with it.
        w.pmap(a).remove(VirtAddr(0x1000), VirtAddr(0x2000));
        assert!(w.phys().clear_modified(F1));
        assert!(!w.phys().clear_modified(F1));
        assert!(w.phys().clear_referenced(F1));
    }
}
