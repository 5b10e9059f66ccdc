//! x86-64 four-level page tables, built and walked through a
//! `TableMemory` so that host tests run the same code on an emulated MMU.

use crate::addr::{LARGE_PAGE_SIZE, PAGE_SIZE, PhysAddr, VirtAddr};

pub const PRESENT: u64 = 1 << 0;
pub const WRITABLE: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;
pub const NO_CACHE: u64 = 1 << 4;
pub const HUGE: u64 = 1 << 7;
/// Set by the MMU on any access, and on a write (4 KiB leaf entries).
pub const ACCESSED: u64 = 1 << 5;
pub const DIRTY: u64 = 1 << 6;
pub const NO_EXECUTE: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Gives the page-table code access to table frames.
pub trait TableMemory {
    /// The 512 entries of the table in `frame`.
    fn table(&mut self, frame: PhysAddr) -> &mut [u64; 512];
    /// A zeroed frame for a new table.
    fn alloc_table(&mut self) -> Option<PhysAddr>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    NoMemory,
    Misaligned,
    /// Something is mapped there already (or a huge page covers it).
    AlreadyMapped,
    NonCanonical,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    Small,
    /// 2 MiB.
    Large,
}

fn index(va: VirtAddr, level: u32) -> usize {
    ((va.0 >> (12 + 9 * level)) & 511) as usize
}

fn canonical(va: VirtAddr) -> bool {
    let top = va.0 >> 47;
    top == 0 || top == 0x1ffff
}

/// Walks from `root` down to the table at `level` (0 = PT) covering `va`,
/// creating missing intermediate tables with `inter` flags.
fn walk_create(
    mem: &mut dyn TableMemory,
    root: PhysAddr,
    va: VirtAddr,
    level: u32,
    inter: u64,
) -> Result<PhysAddr, MapError> {
    let mut table = root;
    for l in (level + 1..=3).rev() {
        let i = index(va, l);
        let e = mem.table(table)[i];
        table = if e & PRESENT == 0 {
            let t = mem.alloc_table().ok_or(MapError::NoMemory)?;
            mem.table(table)[i] = t.0 | inter;
            t
        } else if e & HUGE != 0 {
            return Err(MapError::AlreadyMapped);
        } else {
            // Widen intermediate rights so the leaf alone decides.
            mem.table(table)[i] = e | (inter & (WRITABLE | USER));
            PhysAddr(e & ADDR_MASK)
        };
    }
    Ok(table)
}

/// Maps one page of `size` at `va` to `pa` with leaf `flags` (PRESENT is
/// implied). Intermediate tables get PRESENT|WRITABLE, plus USER for
/// lower-half addresses.
pub fn map(
    mem: &mut dyn TableMemory,
    root: PhysAddr,
    va: VirtAddr,
    pa: PhysAddr,
    flags: u64,
    size: PageSize,
) -> Result<(), MapError> {
    let (bytes, level, leaf_extra) = match size {
        PageSize::Small => (PAGE_SIZE, 0, 0),
        PageSize::Large => (LARGE_PAGE_SIZE, 1, HUGE),
    };
    if !va.is_aligned(bytes) || !pa.is_aligned(bytes) {
        return Err(MapError::Misaligned);
    }
    if !canonical(va) {
        return Err(MapError::NonCanonical);
    }
    let inter = PRESENT | WRITABLE | if va.is_user() { USER } else { 0 };
    let table = walk_create(mem, root, va, level, inter)?;
    let slot = &mut mem.table(table)[index(va, level)];
    if *slot & PRESENT != 0 {
        return Err(MapError::AlreadyMapped);
    }
    *slot = pa.0 | flags | PRESENT | leaf_extra;
    Ok(())
}

/// Maps `[va, va + len)` to `[pa, ...)` with 2 MiB pages. One table walk
/// per page directory, then a tight loop over its entries: boot maps all
/// of RAM this way, and every ring-0 instruction counts where it is emulated.
pub fn map_large_range(
    mem: &mut dyn TableMemory,
    root: PhysAddr,
    va: VirtAddr,
    pa: PhysAddr,
    len: u64,
    flags: u64,
) -> Result<(), MapError> {
    map_range(mem, root, va, pa, len, flags, PageSize::Large)
}

/// Maps `[va, va + len)` to `[pa, ...)` with 4 KiB pages, the same way.
pub fn map_small_range(
    mem: &mut dyn TableMemory,
    root: PhysAddr,
    va: VirtAddr,
    pa: PhysAddr,
    len: u64,
    flags: u64,
) -> Result<(), MapError> {
    map_range(mem, root, va, pa, len, flags, PageSize::Small)
}

fn map_range(
    mem: &mut dyn TableMemory,
    root: PhysAddr,
    va: VirtAddr,
    pa: PhysAddr,
    len: u64,
    flags: u64,
    size: PageSize,
) -> Result<(), MapError> {
    let (page, level, leaf) = match size {
        PageSize::Small => (PAGE_SIZE, 0, flags | PRESENT),
        PageSize::Large => (LARGE_PAGE_SIZE, 1, flags | PRESENT | HUGE),
    };
    if !va.is_aligned(page) || !pa.is_aligned(page) || !len.is_multiple_of(page) {
        return Err(MapError::Misaligned);
    }
    let last = va
        .checked_add(len.saturating_sub(1))
        .ok_or(MapError::NonCanonical)?;
    if !canonical(va) || !canonical(last) || va.is_user() != last.is_user() {
        return Err(MapError::NonCanonical);
    }
    let inter = PRESENT | WRITABLE | if va.is_user() { USER } else { 0 };
    let mut off = 0;
    while off < len {
        let v = VirtAddr(va.0 + off);
        let t = walk_create(mem, root, v, level, inter)?;
        let table = mem.table(t);
        let mut i = index(v, level);
        while i < 512 && off < len {
            if table[i] & PRESENT != 0 {
                return Err(MapError::AlreadyMapped);
            }
            table[i] = (pa.0 + off) | leaf;
            i += 1;
            off += page;
        }
    }
    Ok(())
}

/// Translates `va`: the physical address and the leaf entry's flags.
pub fn translate(
    mem: &mut dyn TableMemory,
    root: PhysAddr,
    va: VirtAddr,
) -> Option<(PhysAddr, u64)> {
    if !canonical(va) {
        return None;
    }
    let mut table = root;
    for l in (0..=3).rev() {
        let e = mem.table(table)[index(va, l)];
        if e & PRESENT == 0 {
            return None;
        }
        if l == 0 || (e & HUGE != 0 && l <= 2) {
            let page = 1u64 << (12 + 9 * l);
            let base = e & ADDR_MASK & !(page - 1);
            return Some((PhysAddr(base | (va.0 & (page - 1))), e & !ADDR_MASK));
        }
        table = PhysAddr(e & ADDR_MASK);
    }
    None
}

/// Records a write to the 4 KiB page mapped at `va` as the MMU would for
/// a write through the mapping (accessed and dirty bits), for writes the
/// kernel makes through the direct map: without it the VM would take the
/// page for clean and drop what was written. False if no 4 KiB page is
/// mapped there.
pub fn mark_written(mem: &mut dyn TableMemory, root: PhysAddr, va: VirtAddr) -> bool {
    if !canonical(va) {
        return false;
    }
    let mut table = root;
    for l in (1..=3).rev() {
        let e = mem.table(table)[index(va, l)];
        if e & PRESENT == 0 || e & HUGE != 0 {
            return false;
        }
        table = PhysAddr(e & ADDR_MASK);
    }
    let e = &mut mem.table(table)[index(va, 0)];
    if *e & PRESENT == 0 {
        return false;
    }
    *e |= ACCESSED | DIRTY;
    true
}

/// Translates many nearby addresses (a buffer handed to a device): keeps
/// the last 4 KiB-level table it reached, so each further page in the same
/// 2 MiB span costs one entry read instead of a four-level walk. Valid only
/// while the tables do not change (within one kernel operation).
pub struct Walker {
    root: PhysAddr,
    /// `va >> 21` of the span `pt` covers.
    span: u64,
    pt: Option<PhysAddr>,
}

impl Walker {
    pub fn new(root: PhysAddr) -> Walker {
        Walker {
            root,
            span: 0,
            pt: None,
        }
    }

    /// Same answer as [`translate`].
    pub fn translate(
        &mut self,
        mem: &mut dyn TableMemory,
        va: VirtAddr,
    ) -> Option<(PhysAddr, u64)> {
        if let Some(pt) = self.pt
            && va.0 >> 21 == self.span
        {
            let e = mem.table(pt)[index(va, 0)];
            if e & PRESENT == 0 {
                return None;
            }
            return Some((PhysAddr((e & ADDR_MASK) | va.page_offset()), e & !ADDR_MASK));
        }
        if !canonical(va) {
            return None;
        }
        let mut table = self.root;
        for l in (1..=3).rev() {
            let e = mem.table(table)[index(va, l)];
            if e & PRESENT == 0 {
                return None;
            }
            if e & HUGE != 0 && l <= 2 {
                let page = 1u64 << (12 + 9 * l);
                let base = e & ADDR_MASK & !(page - 1);
                return Some((PhysAddr(base | (va.0 & (page - 1))), e & !ADDR_MASK));
            }
            table = PhysAddr(e & ADDR_MASK);
        }
        self.pt = Some(table);
        self.span = va.0 >> 21;
        self.translate(mem, va)
    }
}

/// Removes the mapping of the 4 KiB page at `va`; returns what it mapped.
pub fn unmap(mem: &mut dyn TableMemory, root: PhysAddr, va: VirtAddr) -> Option<PhysAddr> {
    let mut table = root;
    for l in (1..=3).rev() {
        let e = mem.table(table)[index(va, l)];
        if e & PRESENT == 0 || e & HUGE != 0 {
            return None;
        }
        table = PhysAddr(e & ADDR_MASK);
    }
    let slot = &mut mem.table(table)[index(va, 0)];
    if *slot & PRESENT == 0 {
        return None;
    }
    let pa = PhysAddr(*slot & ADDR_MASK);
    *slot = 0;
    Some(pa)
}

/// Calls `free` on every table frame below the lower-half (user) slots of
/// `root`, and clears those slots. Leaf frames are the caller's business.
pub fn release_user_tables(
    mem: &mut dyn TableMemory,
    root: PhysAddr,
    free: &mut dyn FnMut(PhysAddr),
) {
    fn release(
        mem: &mut dyn TableMemory,
        table: PhysAddr,
        level: u32,
        free: &mut dyn FnMut(PhysAddr),
    ) {
        if level == 0 {
            return;
        }
        for i in 0..512 {
            let e = mem.table(table)[i];
            if e & PRESENT != 0 && e & HUGE == 0 {
                let child = PhysAddr(e & ADDR_MASK);
                release(mem, child, level - 1, free);
                free(child);
            }
        }
    }
    for i in 0..256 {
        let e = mem.table(root)[i];
        if e & PRESENT != 0 {
            let child = PhysAddr(e & ADDR_MASK);
            release(mem, child, 2, free);
            free(child);
            mem.table(root)[i] = 0;
        }
    }
}

/// What [`audit_wx`] found in the kernel half of an address space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WxAudit {
    /// Bytes mapped, and of those executable and writable.
    pub mapped: u64,
    pub executable: u64,
    pub writable: u64,
    /// Bytes both writable and executable, and the first such address.
    pub both: u64,
    pub first_both: Option<VirtAddr>,
}

/// Walks every present mapping of the kernel half (upper 256 PML4 slots)
/// of `root` with the rights the CPU would grant ring 0 (writable only if
/// every level says so, as CR0.WP makes it; executable unless some level
/// says no-execute). W^X holds when `both` is 0.
pub fn audit_wx(mem: &mut dyn TableMemory, root: PhysAddr) -> WxAudit {
    fn visit(
        mem: &mut dyn TableMemory,
        table: PhysAddr,
        level: u32,
        base: u64,
        rights: u64,
        out: &mut WxAudit,
    ) {
        for i in 0..512u64 {
            let e = mem.table(table)[i as usize];
            if e & PRESENT == 0 {
                continue;
            }
            let va = base | (i << (12 + 9 * level));
            // Writable needs W at every level; NX at any level forbids exec.
            let r = (rights & e & WRITABLE) | ((rights | e) & NO_EXECUTE);
            if level == 0 || (e & HUGE != 0 && level <= 2) {
                let size = 1u64 << (12 + 9 * level);
                out.mapped += size;
                let exec = r & NO_EXECUTE == 0;
                let write = r & WRITABLE != 0;
                if exec {
                    out.executable += size;
                }
                if write {
                    out.writable += size;
                }
                if exec && write {
                    out.both += size;
                    out.first_both.get_or_insert(VirtAddr(sign_extend(va)));
                }
            } else {
                visit(mem, PhysAddr(e & ADDR_MASK), level - 1, va, r, out);
            }
        }
    }
    let mut out = WxAudit::default();
    for i in 256..512u64 {
        let e = mem.table(root)[i as usize];
        if e & PRESENT == 0 {
            continue;
        }
        let r = (WRITABLE & e) | (NO_EXECUTE & e);
        visit(mem, PhysAddr(e & ADDR_MASK), 2, i << 39, r, &mut out);
    }
    out
}

fn sign_extend(va: u64) -> u64 {
    if va & (1 << 47) != 0 {
        va | 0xffff_0000_0000_0000
    } else {
        va
    }
}

/// An emulated MMU's memory for host tests: table frames by address, at
/// most `limit` of them.
#[cfg(test)]
pub(crate) mod emu {
    use super::TableMemory;
    use crate::addr::{PAGE_SIZE, PhysAddr};
    use std::collections::HashMap;

    #[derive(Default)]
    pub(crate) struct Emu {
        pub tables: HashMap<u64, Box<[u64; 512]>>,
        pub next: u64,
        pub limit: usize,
    }
    impl TableMemory for Emu {
        fn table(&mut self, frame: PhysAddr) -> &mut [u64; 512] {
            self.tables
                .get_mut(&frame.0)
                .expect("walked into a frame that is not a table")
        }
        fn alloc_table(&mut self) -> Option<PhysAddr> {
            if self.tables.len() >= self.limit {
                return None;
            }
            self.next += PAGE_SIZE;
            self.tables.insert(self.next, Box::new([0; 512]));
            Some(PhysAddr(self.next))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) use super::emu::Emu;

    fn emu() -> (Emu, PhysAddr) {
        let mut e = Emu {
            limit: 64,
            next: 0x1000_0000,
            ..Default::default()
        };
        let root = e.alloc_table().unwrap();
        (e, root)
    }

    #[test]
    fn walker_agrees_with_translate() {
        let (mut m, root) = emu();
        // Small pages in two 2 MiB spans with a hole, and one large page.
        for (i, va) in [0x40_0000u64, 0x40_1000, 0x40_3000, 0x60_0000, 0x60_1000]
            .into_iter()
            .enumerate()
        {
            let fl = if i % 2 == 0 { USER | WRITABLE } else { USER };
            map(
                &mut m,
                root,
                VirtAddr(va),
                PhysAddr(0x10_0000 + 0x1000 * i as u64),
                fl,
                PageSize::Small,
            )
            .unwrap();
        }
        map(
            &mut m,
            root,
            VirtAddr(0x80_0000),
            PhysAddr(0x20_0000),
            USER,
            PageSize::Large,
        )
        .unwrap();
        let mut w = Walker::new(root);
        for va in (0x3f_f000u64..0x82_0000)
            .step_by(0x1000)
            .chain([0xffff_0000_0000_0000, 0x40_1abc])
        {
            let va = VirtAddr(va);
            assert_eq!(
                w.translate(&mut m, va),
                translate(&mut m, root, va),
                "{va:?}"
            );
        }
    }

    #[test]
    fn map_translate_unmap_small() {
        let (mut m, root) = emu();
        let va = VirtAddr(0x40_1000);
        map(
            &mut m,
            root,
            va,
            PhysAddr(0x5000),
            USER | WRITABLE,
            PageSize::Small,
        )
        .unwrap();
        let (pa, fl) = translate(&mut m, root, VirtAddr(0x40_1abc)).unwrap();
        assert_eq!(pa, PhysAddr(0x5abc));
        assert!(fl & USER != 0 && fl & WRITABLE != 0);
        assert_eq!(
            map(&mut m, root, va, PhysAddr(0x6000), 0, PageSize::Small),
            Err(MapError::AlreadyMapped)
        );
        assert!(translate(&mut m, root, VirtAddr(0x40_2000)).is_none());
        assert_eq!(unmap(&mut m, root, va), Some(PhysAddr(0x5000)));
        assert!(translate(&mut m, root, va).is_none());
        assert_eq!(unmap(&mut m, root, va), None);
    }

    #[test]
    fn large_pages_and_kernel_half() {
        let (mut m, root) = emu();
        let va = VirtAddr(0xffff_8000_0020_0000);
        map(
            &mut m,
            root,
            va,
            PhysAddr(0x20_0000),
            WRITABLE,
            PageSize::Large,
        )
        .unwrap();
        let (pa, fl) = translate(&mut m, root, VirtAddr(va.0 + 0x1_2345)).unwrap();
        assert_eq!(pa, PhysAddr(0x21_2345));
        assert_eq!(fl & USER, 0);
        // a small page inside the huge one is refused
        assert_eq!(
            map(
                &mut m,
                root,
                VirtAddr(va.0 + 0x1000),
                PhysAddr(0),
                0,
                PageSize::Small
            ),
            Err(MapError::AlreadyMapped)
        );
        assert_eq!(
            map(
                &mut m,
                root,
                VirtAddr(0x1000),
                PhysAddr(0),
                0,
                PageSize::Large
            ),
            Err(MapError::Misaligned)
        );
        assert_eq!(
            map(
                &mut m,
                root,
                VirtAddr(0x0000_9000_0000_0000),
                PhysAddr(0),
                0,
                PageSize::Small
            ),
            Err(MapError::NonCanonical)
        );
    }

    #[test]
    fn large_range_crosses_directories() {
        let (mut m, root) = emu();
        let base = VirtAddr(0xffff_8000_3fe0_0000); // last slot of a PD
        map_large_range(
            &mut m,
            root,
            base,
            PhysAddr(0),
            3 * LARGE_PAGE_SIZE,
            WRITABLE,
        )
        .unwrap();
        for k in 0..3u64 {
            let (pa, _) =
                translate(&mut m, root, VirtAddr(base.0 + k * LARGE_PAGE_SIZE + 8)).unwrap();
            assert_eq!(pa, PhysAddr(k * LARGE_PAGE_SIZE + 8));
        }
        assert!(translate(&mut m, root, VirtAddr(base.0 + 3 * LARGE_PAGE_SIZE)).is_none());
        assert_eq!(
            map_large_range(&mut m, root, base, PhysAddr(0), LARGE_PAGE_SIZE, 0),
            Err(MapError::AlreadyMapped)
        );
        assert_eq!(
            map_large_range(
                &mut m,
                root,
                VirtAddr(0x1000),
                PhysAddr(0),
                LARGE_PAGE_SIZE,
                0
            ),
            Err(MapError::Misaligned)
        );
    }

    #[test]
    fn out_of_table_memory_is_an_error() {
        let (mut m, root) = emu();
        m.limit = 2;
        assert_eq!(
            map(
                &mut m,
                root,
                VirtAddr(0x1000),
                PhysAddr(0),
                0,
                PageSize::Small
            ),
            Err(MapError::NoMemory)
        );
    }

    #[test]
    fn release_frees_every_user_table_and_keeps_kernel() {
        let (mut m, root) = emu();
        map(
            &mut m,
            root,
            VirtAddr(0x1000),
            PhysAddr(0x1000),
            USER,
            PageSize::Small,
        )
        .unwrap();
        map(
            &mut m,
            root,
            VirtAddr(0x7fff_ffff_e000),
            PhysAddr(0x2000),
            USER,
            PageSize::Small,
        )
        .unwrap();
        map(
            &mut m,
            root,
            VirtAddr(0xffff_8000_0000_0000),
            PhysAddr(0),
            0,
            PageSize::Large,
        )
        .unwrap();
        let before = m.tables.len();
        let mut freed = vec![];
        release_user_tables(&mut m, root, &mut |f| freed.push(f));
        assert_eq!(freed.len(), 6); // two PDPT+PD+PT chains
        assert_eq!(before - 6, 1 + 2); // root + kernel PDPT + PD remain
        assert!(translate(&mut m, root, VirtAddr(0x1000)).is_none());
        assert!(translate(&mut m, root, VirtAddr(0xffff_8000_0000_1000)).is_some());
    }

    #[test]
    fn small_range_maps_each_page() {
        let (mut m, root) = emu();
        let va = VirtAddr(0xffff_ffff_801f_e000); // crosses a page-table boundary
        map_small_range(
            &mut m,
            root,
            va,
            PhysAddr(0x40_0000),
            5 * PAGE_SIZE,
            NO_EXECUTE,
        )
        .unwrap();
        // A guard page is a page unmapped again.
        let guard = VirtAddr(va.0 + 2 * PAGE_SIZE);
        assert_eq!(unmap(&mut m, root, guard), Some(PhysAddr(0x40_2000)));
        for i in 0..5 {
            let v = VirtAddr(va.0 + i * PAGE_SIZE + 8);
            let t = translate(&mut m, root, v);
            if VirtAddr(va.0 + i * PAGE_SIZE) == guard {
                assert_eq!(t, None);
            } else {
                let (pa, f) = t.unwrap();
                assert_eq!(pa, PhysAddr(0x40_0000 + i * PAGE_SIZE + 8));
                assert_eq!(f & (WRITABLE | NO_EXECUTE), NO_EXECUTE);
            }
        }
        // Overlap is refused, misalignment too.
        assert_eq!(
            map_small_range(&mut m, root, va, PhysAddr(0), PAGE_SIZE, 0),
            Err(MapError::AlreadyMapped)
        );
        assert_eq!(
            map_small_range(&mut m, root, VirtAddr(va.0 + 1), PhysAddr(0), PAGE_SIZE, 0),
            Err(MapError::Misaligned)
        );
    }

    #[test]
    fn wx_audit_counts_rights_through_every_level() {
        let (mut m, root) = emu();
        // Text: read-only and executable; data: writable, no-execute.
        let text = VirtAddr(0xffff_ffff_8010_0000);
        map_small_range(&mut m, root, text, PhysAddr(0x10_0000), 2 * PAGE_SIZE, 0).unwrap();
        let data = VirtAddr(text.0 + 2 * PAGE_SIZE);
        map_small_range(
            &mut m,
            root,
            data,
            PhysAddr(0x10_2000),
            PAGE_SIZE,
            WRITABLE | NO_EXECUTE,
        )
        .unwrap();
        map_large_range(
            &mut m,
            root,
            VirtAddr(0xffff_8000_0000_0000),
            PhysAddr(0),
            LARGE_PAGE_SIZE,
            WRITABLE | NO_EXECUTE,
        )
        .unwrap();
        // User mappings are not the kernel's business.
        map(
            &mut m,
            root,
            VirtAddr(0x40_0000),
            PhysAddr(0x50_0000),
            WRITABLE | USER,
            PageSize::Small,
        )
        .unwrap();
        let a = audit_wx(&mut m, root);
        assert_eq!(a.mapped, 3 * PAGE_SIZE + LARGE_PAGE_SIZE);
        assert_eq!(a.executable, 2 * PAGE_SIZE);
        assert_eq!(a.writable, PAGE_SIZE + LARGE_PAGE_SIZE);
        assert_eq!((a.both, a.first_both), (0, None));

        // A writable, executable leaf is found, with its address.
        let bad = VirtAddr(text.0 + 5 * PAGE_SIZE);
        map(
            &mut m,
            root,
            bad,
            PhysAddr(0x10_5000),
            WRITABLE,
            PageSize::Small,
        )
        .unwrap();
        let a = audit_wx(&mut m, root);
        assert_eq!((a.both, a.first_both), (PAGE_SIZE, Some(bad)));

        // No-execute on an upper level covers the leaves below it.
        let pml4 = m.table(root)[511];
        m.table(root)[511] = pml4 | NO_EXECUTE;
        let a = audit_wx(&mut m, root);
        assert_eq!((a.both, a.executable), (0, 0));
        // And read-only on an upper level makes the leaves read-only.
        m.table(root)[511] = pml4 & !WRITABLE;
        let a = audit_wx(&mut m, root);
        assert_eq!(a.both, 0);
        assert_eq!(a.writable, LARGE_PAGE_SIZE);
    }
}
