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

use alloc::collections::BTreeMap;
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

/// What the pv table knows of one frame: where it is mapped, and the
/// referenced/modified bits of mappings already gone (kept so that removing
/// a mapping never loses a dirty page).
#[derive(Default)]
struct PvFrame {
    maps: Vec<(PhysAddr, VirtAddr)>,
    referenced: bool,
    modified: bool,
}

/// The reverse maps: frame → every (space root, va) mapping it. Bounded:
/// an `enter` beyond `limit` mappings is refused with ResourceShortage.
pub struct PvTable {
    frames: BTreeMap<PhysAddr, PvFrame>,
    entries: usize,
    limit: usize,
}

impl PvTable {
    pub fn new(limit: usize) -> PvTable {
        PvTable {
            frames: BTreeMap::new(),
            entries: 0,
            limit,
        }
    }
    /// Mappings recorded in total.
    pub fn entries(&self) -> usize {
        self.entries
    }
    /// The (root, va) mappings of `frame`.
    pub fn mappings(&self, frame: PhysAddr) -> &[(PhysAddr, VirtAddr)] {
        self.frames.get(&frame).map_or(&[], |f| &f.maps)
    }

    /// Drops what is known of an unmapped frame about to be freed (its
    /// sticky bits), so a reused frame starts clean.
    pub fn forget(&mut self, frame: PhysAddr) {
        if self.frames.get(&frame).is_some_and(|f| f.maps.is_empty()) {
            self.frames.remove(&frame);
        }
    }

    fn add(&mut self, frame: PhysAddr, root: PhysAddr, va: VirtAddr) -> Result<(), VmError> {
        if self.entries >= self.limit {
            return Err(VmError::ResourceShortage);
        }
        let f = self.frames.entry(frame).or_default();
        f.maps
            .try_reserve(1)
            .map_err(|_| VmError::ResourceShortage)?;
        f.maps.push((root, va));
        self.entries += 1;
        Ok(())
    }

    /// Forgets one mapping, folding its hardware bits into the frame's.
    fn remove(&mut self, frame: PhysAddr, root: PhysAddr, va: VirtAddr, pte: u64) {
        let Some(f) = self.frames.get_mut(&frame) else {
            return;
        };
        if let Some(i) = f.maps.iter().position(|&m| m == (root, va)) {
            f.maps.swap_remove(i);
            self.entries -= 1;
        }
        f.referenced |= pte & ACCESSED != 0;
        f.modified |= pte & DIRTY != 0;
        if f.maps.is_empty() && !f.referenced && !f.modified {
            self.frames.remove(&frame);
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
fn for_each_leaf(
    mem: &mut dyn TableMemory,
    root: PhysAddr,
    start: u64,
    end: u64,
    f: &mut dyn FnMut(u64, &mut u64),
) {
    fn walk(
        mem: &mut dyn TableMemory,
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
fn leaf_slot(
    mem: &mut dyn TableMemory,
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
pub struct X86Pmap<'a> {
    pub mem: &'a mut dyn TableMemory,
    pub pv: &'a mut PvTable,
    pub tlb: &'a mut dyn Tlb,
    pub root: PhysAddr,
}

impl Pmap for X86Pmap<'_> {
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
        self.mem.table(table)[i] = new;
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

impl X86Pmap<'_> {
    /// The current mapping of `va` (the `extract` the trait's `&self`
    /// cannot give through a `&mut`-only table accessor).
    pub fn lookup(&mut self, va: VirtAddr) -> Option<(PhysAddr, VmProt)> {
        let (table, i) = leaf_slot(self.mem, self.root, va.0 & !(PAGE_SIZE - 1), false)?;
        let e = self.mem.table(table)[i];
        (e & PRESENT != 0).then(|| (PhysAddr(e & ADDR_MASK), prot_of(e)))
    }
}

/// Every space's mappings of a frame: the [`PhysMaps`] of the kernel.
pub struct X86PhysMaps<'a> {
    pub mem: &'a mut dyn TableMemory,
    pub pv: &'a mut PvTable,
    pub tlb: &'a mut dyn Tlb,
}

/// Applies `f` to the live entry of each mapping of `frame`.
fn each(
    mem: &mut dyn TableMemory,
    pv: &PvTable,
    frame: PhysAddr,
    f: &mut dyn FnMut(PhysAddr, VirtAddr, &mut u64),
) {
    for &(root, va) in pv.mappings(frame) {
        if let Some((table, i)) = leaf_slot(mem, root, va.0, false) {
            let mut pte = mem.table(table)[i];
            if pte & PRESENT != 0 && pte & ADDR_MASK == frame.0 {
                f(root, va, &mut pte);
                mem.table(table)[i] = pte;
            }
        }
    }
}

impl PhysMaps for X86PhysMaps<'_> {
    fn page_protect(&mut self, frame: PhysAddr, prot: VmProt) {
        let mut gone = Vec::new();
        let tlb = &mut *self.tlb;
        each(self.mem, self.pv, frame, &mut |root, va, pte| {
            if prot.is_empty() {
                gone.push((root, va, *pte));
                *pte = 0;
            } else {
                let lowered = prot_of(*pte).intersect(prot.union(VmProt::READ));
                *pte = (*pte & (ADDR_MASK | ACCESSED | DIRTY)) | leaf_flags(lowered);
            }
            tlb.invalidate(root, va);
        });
        for (root, va, pte) in gone {
            self.pv.remove(frame, root, va, pte);
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
        if let Some(f) = self.pv.frames.get_mut(&frame) {
            was |= core::mem::take(&mut f.referenced);
            if f.maps.is_empty() && !f.modified {
                self.pv.frames.remove(&frame);
            }
        }
        was
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
        if let Some(f) = self.pv.frames.get_mut(&frame) {
            was |= core::mem::take(&mut f.modified);
            if f.maps.is_empty() && !f.referenced {
                self.pv.frames.remove(&frame);
            }
        }
        was
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
        assert!(w.pv.mappings(F1).is_empty());
        assert_eq!(w.pv.mappings(F2), &[(a, VirtAddr(0x40_0000))]);
        assert_eq!(w.tlb.0, vec![(a, VirtAddr(0x40_0000))]);
        assert_eq!(w.pte(a, 0x40_0000).unwrap() & NO_EXECUTE, 0);
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
        assert!(w.pv.mappings(F1).is_empty());
        assert_eq!(w.pv.entries(), 0);
    }

    #[test]
    fn referenced_and_modified_survive_unmapping() {
        let mut w = World::new();
        let a = w.space();
        w.pmap(a).enter(VirtAddr(0x1000), F1, RW).unwrap();
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
