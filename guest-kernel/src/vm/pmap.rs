//! The machine-dependent seam (Mach's pmap module, paper §5.5 "hardware
//! validation"): everything above this file is machine independent.
//!
//! Two traits, as in Mach's vm/pmap.h: [`Pmap`] is one address space's
//! hardware mappings (x86 page tables in the kernel); [`PhysMaps`] works on a
//! physical page across every space that maps it (pmap_page_protect and the
//! referenced/modified bits), which pageout and copy-on-write need.
//!
//! The mappings are a cache of the address maps and objects: the machine
//! independent layer may drop any of them at any time and take a fault to
//! put them back, so a pmap never holds information that exists nowhere
//! else (except the hardware referenced/modified bits, which is why
//! [`PhysMaps`] asks for them before a mapping is dropped for good).
//!
//! [`SimMachine`] is a simulated MMU for host tests: several address spaces,
//! reverse maps, accessed/dirty bits set by [`SimMachine::touch`], and a
//! simulated physical memory so a test can check what a task reads at an
//! address.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use crate::vm::types::{VmError, VmProt};

/// One address space's hardware mappings (x86 page tables in the kernel).
///
/// All addresses are page aligned; callers are the machine-independent VM
/// code, never user input directly.
pub trait Pmap {
    /// Maps `va` (page aligned) to `frame` with `prot`, replacing any
    /// mapping. Err(ResourceShortage) if a page-table page cannot be
    /// allocated. `prot` NONE removes the mapping (hardware cannot express
    /// a present page with no access).
    fn enter(&mut self, va: VirtAddr, frame: PhysAddr, prot: VmProt) -> Result<(), VmError>;
    /// Removes every mapping in [start, end).
    fn remove(&mut self, start: VirtAddr, end: VirtAddr);
    /// Lowers the protection of existing mappings in [start, end) to at most
    /// `prot` (NONE removes them). Never raises: raising is done lazily by
    /// the fault handler, as in Mach.
    fn protect(&mut self, start: VirtAddr, end: VirtAddr, prot: VmProt);
    /// The current mapping of `va` (any address within the page).
    fn extract(&self, va: VirtAddr) -> Option<(PhysAddr, VmProt)>;
}

/// Operations on a physical page across every address space mapping it
/// (Mach's pmap_page_protect, pmap_clear_reference/modify). Needed by
/// pageout (is the page in use? must it be cleaned?) and copy-on-write
/// (write-protect every mapping of a page before it is shared).
pub trait PhysMaps {
    /// Lowers every mapping of `frame` to at most `prot`; NONE removes them
    /// all (before the frame is freed or paged out).
    fn page_protect(&mut self, frame: PhysAddr, prot: VmProt);
    /// Clears the referenced bit of `frame`; returns whether it was set.
    fn clear_referenced(&mut self, frame: PhysAddr) -> bool;
    /// Clears the modified bit of `frame`; returns whether it was set.
    fn clear_modified(&mut self, frame: PhysAddr) -> bool;
}

/// Names one simulated address space of a [`SimMachine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpaceHandle(pub usize);

/// A simulated page-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SimPte {
    frame: PhysAddr,
    prot: VmProt,
    referenced: bool,
    modified: bool,
}

#[derive(Default)]
struct SimSpace {
    ptes: BTreeMap<VirtAddr, SimPte>,
    /// Maximum number of simulated page-table pages (one per 2 MiB of
    /// mapped address space); `None` = unlimited. Lets tests provoke
    /// ResourceShortage from `enter`.
    table_limit: Option<usize>,
    live: bool,
}

/// Per-frame referenced/modified bits that outlive the mappings, as x86
/// Mach's pmap_phys_attributes: removing a mapping must not lose the fact
/// that the page was dirtied through it.
#[derive(Clone, Copy, Default)]
struct FrameAttrs {
    referenced: bool,
    modified: bool,
}

/// A fault the simulated MMU would raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimFault {
    /// The page-aligned faulting address.
    pub va: VirtAddr,
    pub write: bool,
}

/// Bytes per simulated page-table page's reach (x86-64 level-1 table).
const TABLE_SPAN: u64 = 512 * PAGE_SIZE;

/// A simulated machine: address spaces with page tables, reverse maps and
/// physical memory. Frames never written read as zeros.
#[derive(Default)]
pub struct SimMachine {
    spaces: Vec<SimSpace>,
    /// frame → every (space, va) mapping it, for PhysMaps.
    rmap: BTreeMap<PhysAddr, BTreeSet<(SpaceHandle, VirtAddr)>>,
    attrs: BTreeMap<PhysAddr, FrameAttrs>,
    memory: BTreeMap<PhysAddr, Box<[u8; PAGE_SIZE as usize]>>,
}

impl SimMachine {
    pub fn new() -> SimMachine {
        SimMachine::default()
    }

    /// A new, empty address space.
    pub fn new_space(&mut self) -> SpaceHandle {
        self.spaces.push(SimSpace {
            live: true,
            ..SimSpace::default()
        });
        SpaceHandle(self.spaces.len() - 1)
    }

    /// Removes every mapping of `space` and retires it (task destruction).
    pub fn destroy_space(&mut self, space: SpaceHandle) {
        let vas: Vec<VirtAddr> = self.spaces[space.0].ptes.keys().copied().collect();
        for va in vas {
            self.drop_pte(space, va);
        }
        self.spaces[space.0].live = false;
    }

    /// The [`Pmap`] of one space. Panics on a handle this machine did not
    /// issue (a test bug, not user input).
    pub fn pmap(&mut self, space: SpaceHandle) -> SimPmap<'_> {
        assert!(
            self.spaces.get(space.0).is_some_and(|s| s.live),
            "unknown or destroyed space {space:?}"
        );
        SimPmap {
            machine: self,
            space,
        }
    }

    /// Limits `space` to `limit` simulated page-table pages (each covers
    /// 2 MiB); `enter` beyond it fails with ResourceShortage.
    pub fn set_table_limit(&mut self, space: SpaceHandle, limit: Option<usize>) {
        self.spaces[space.0].table_limit = limit;
    }

    /// Number of mappings in `space`.
    pub fn mapping_count(&self, space: SpaceHandle) -> usize {
        self.spaces[space.0].ptes.len()
    }

    /// Every (space, va) mapping `frame`, in order.
    pub fn mappings_of(&self, frame: PhysAddr) -> Vec<(SpaceHandle, VirtAddr)> {
        self.rmap
            .get(&frame.align_down(PAGE_SIZE))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The mapping of `va` in `space` (same as the space's Pmap::extract).
    pub fn extract(&self, space: SpaceHandle, va: VirtAddr) -> Option<(PhysAddr, VmProt)> {
        self.spaces[space.0]
            .ptes
            .get(&va.align_down(PAGE_SIZE))
            .map(|p| (p.frame, p.prot))
    }

    /// Whether `frame` was referenced since the bit was last cleared
    /// (without clearing it).
    pub fn is_referenced(&self, frame: PhysAddr) -> bool {
        let frame = frame.align_down(PAGE_SIZE);
        self.attrs.get(&frame).is_some_and(|a| a.referenced)
            || self.ptes_of(frame).any(|p| p.referenced)
    }

    /// Whether `frame` was modified since the bit was last cleared.
    pub fn is_modified(&self, frame: PhysAddr) -> bool {
        let frame = frame.align_down(PAGE_SIZE);
        self.attrs.get(&frame).is_some_and(|a| a.modified)
            || self.ptes_of(frame).any(|p| p.modified)
    }

    fn ptes_of(&self, frame: PhysAddr) -> impl Iterator<Item = &SimPte> + '_ {
        self.rmap
            .get(&frame)
            .into_iter()
            .flatten()
            .filter_map(|(s, va)| self.spaces[s.0].ptes.get(va))
    }

    /// What the MMU does on an access to `va` by `space`: if the mapping
    /// allows it, sets the accessed (and for a write the dirty) bit and
    /// returns true; otherwise returns false (a page fault). As on x86,
    /// every present page is readable; writing needs WRITE.
    pub fn touch(&mut self, space: SpaceHandle, va: VirtAddr, write: bool) -> bool {
        let Some(pte) = self.spaces[space.0].ptes.get_mut(&va.align_down(PAGE_SIZE)) else {
            return false;
        };
        if write && !pte.prot.contains(VmProt::WRITE) {
            return false;
        }
        pte.referenced = true;
        if write {
            pte.modified = true;
        }
        true
    }

    /// Reads `buf.len()` bytes at `va` as `space` would, through its
    /// mappings (setting accessed bits). Err at the first page that faults.
    pub fn read_virt(
        &mut self,
        space: SpaceHandle,
        va: VirtAddr,
        buf: &mut [u8],
    ) -> Result<(), SimFault> {
        let mut done = 0usize;
        while done < buf.len() {
            let cur = va
                .checked_add(done as u64)
                .ok_or(SimFault { va, write: false })?;
            let page = cur.align_down(PAGE_SIZE);
            if !self.touch(space, cur, false) {
                return Err(SimFault {
                    va: page,
                    write: false,
                });
            }
            let (frame, _) = self.extract(space, cur).ok_or(SimFault {
                va: page,
                write: false,
            })?;
            let off = cur.page_offset() as usize;
            let n = (PAGE_SIZE as usize - off).min(buf.len() - done);
            self.read_phys(PhysAddr(frame.0 + off as u64), &mut buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Writes `data` at `va` as `space` would (setting accessed and dirty
    /// bits). Err at the first page that faults; earlier pages stay written,
    /// as on hardware.
    pub fn write_virt(
        &mut self,
        space: SpaceHandle,
        va: VirtAddr,
        data: &[u8],
    ) -> Result<(), SimFault> {
        let mut done = 0usize;
        while done < data.len() {
            let cur = va
                .checked_add(done as u64)
                .ok_or(SimFault { va, write: true })?;
            let page = cur.align_down(PAGE_SIZE);
            if !self.touch(space, cur, true) {
                return Err(SimFault {
                    va: page,
                    write: true,
                });
            }
            let (frame, _) = self.extract(space, cur).ok_or(SimFault {
                va: page,
                write: true,
            })?;
            let off = cur.page_offset() as usize;
            let n = (PAGE_SIZE as usize - off).min(data.len() - done);
            self.write_phys(PhysAddr(frame.0 + off as u64), &data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Reads physical memory (within one frame; the read must not cross a
    /// page boundary). Unwritten memory reads as zeros.
    pub fn read_phys(&self, pa: PhysAddr, buf: &mut [u8]) {
        let off = pa.page_offset() as usize;
        assert!(off + buf.len() <= PAGE_SIZE as usize, "crosses a frame");
        match self.memory.get(&pa.align_down(PAGE_SIZE)) {
            Some(page) => buf.copy_from_slice(&page[off..off + buf.len()]),
            None => buf.fill(0),
        }
    }

    /// Writes physical memory (within one frame).
    pub fn write_phys(&mut self, pa: PhysAddr, data: &[u8]) {
        let off = pa.page_offset() as usize;
        assert!(off + data.len() <= PAGE_SIZE as usize, "crosses a frame");
        self.frame_mut(pa)[off..off + data.len()].copy_from_slice(data);
    }

    /// The whole contents of a frame, for page copies and fills.
    pub fn frame_mut(&mut self, frame: PhysAddr) -> &mut [u8; PAGE_SIZE as usize] {
        self.memory
            .entry(frame.align_down(PAGE_SIZE))
            .or_insert_with(|| Box::new([0u8; PAGE_SIZE as usize]))
    }

    /// Copies one frame to another (copy-on-write's page copy).
    pub fn copy_frame(&mut self, src: PhysAddr, dst: PhysAddr) {
        let mut tmp = [0u8; PAGE_SIZE as usize];
        self.read_phys(src.align_down(PAGE_SIZE), &mut tmp);
        *self.frame_mut(dst) = tmp;
    }

    /// Zero-fills a frame (zero-fill-on-demand pages).
    pub fn zero_frame(&mut self, frame: PhysAddr) {
        // Dropping the contents is the same as zeros and frees host memory.
        self.memory.remove(&frame.align_down(PAGE_SIZE));
    }

    /// Removes one mapping, folding its hardware bits into the frame's.
    fn drop_pte(&mut self, space: SpaceHandle, va: VirtAddr) {
        let Some(pte) = self.spaces[space.0].ptes.remove(&va) else {
            return;
        };
        let a = self.attrs.entry(pte.frame).or_default();
        a.referenced |= pte.referenced;
        a.modified |= pte.modified;
        if let Some(set) = self.rmap.get_mut(&pte.frame) {
            set.remove(&(space, va));
            if set.is_empty() {
                self.rmap.remove(&pte.frame);
            }
        }
    }

    /// Lowers one mapping to at most `prot`, removing it at NONE.
    fn lower_pte(&mut self, space: SpaceHandle, va: VirtAddr, prot: VmProt) {
        let Some(pte) = self.spaces[space.0].ptes.get_mut(&va) else {
            return;
        };
        let p = pte.prot.intersect(prot);
        if p.is_empty() {
            self.drop_pte(space, va);
        } else {
            pte.prot = p;
        }
    }

    fn tables_in_use(&self, space: SpaceHandle) -> usize {
        let mut n = 0;
        let mut last = None;
        for va in self.spaces[space.0].ptes.keys() {
            let t = va.0 / TABLE_SPAN;
            if last != Some(t) {
                n += 1;
                last = Some(t);
            }
        }
        n
    }

    fn vas_in(&self, space: SpaceHandle, start: VirtAddr, end: VirtAddr) -> Vec<VirtAddr> {
        if start >= end {
            return Vec::new();
        }
        self.spaces[space.0]
            .ptes
            .range(start..end)
            .map(|(va, _)| *va)
            .collect()
    }
}

/// One simulated address space seen through the [`Pmap`] trait.
pub struct SimPmap<'a> {
    machine: &'a mut SimMachine,
    space: SpaceHandle,
}

impl SimPmap<'_> {
    pub fn space(&self) -> SpaceHandle {
        self.space
    }
}

impl Pmap for SimPmap<'_> {
    fn enter(&mut self, va: VirtAddr, frame: PhysAddr, prot: VmProt) -> Result<(), VmError> {
        debug_assert!(va.is_aligned(PAGE_SIZE) && frame.is_aligned(PAGE_SIZE));
        let (va, frame) = (va.align_down(PAGE_SIZE), frame.align_down(PAGE_SIZE));
        let (m, s) = (&mut *self.machine, self.space);
        if prot.is_empty() {
            m.drop_pte(s, va);
            return Ok(());
        }
        if let Some(limit) = m.spaces[s.0].table_limit {
            let span = VirtAddr(va.0 / TABLE_SPAN * TABLE_SPAN);
            let end = VirtAddr(span.0.saturating_add(TABLE_SPAN));
            let have_table = m.spaces[s.0].ptes.range(span..end).next().is_some();
            if !have_table && m.tables_in_use(s) >= limit {
                return Err(VmError::ResourceShortage);
            }
        }
        match m.spaces[s.0].ptes.get_mut(&va) {
            Some(pte) if pte.frame == frame => {
                // Same page: only the protection changes; keep its bits.
                pte.prot = prot;
                return Ok(());
            }
            Some(_) => m.drop_pte(s, va),
            None => {}
        }
        m.spaces[s.0].ptes.insert(
            va,
            SimPte {
                frame,
                prot,
                referenced: false,
                modified: false,
            },
        );
        m.rmap.entry(frame).or_default().insert((s, va));
        Ok(())
    }

    fn remove(&mut self, start: VirtAddr, end: VirtAddr) {
        for va in self.machine.vas_in(self.space, start, end) {
            self.machine.drop_pte(self.space, va);
        }
    }

    fn protect(&mut self, start: VirtAddr, end: VirtAddr, prot: VmProt) {
        for va in self.machine.vas_in(self.space, start, end) {
            self.machine.lower_pte(self.space, va, prot);
        }
    }

    fn extract(&self, va: VirtAddr) -> Option<(PhysAddr, VmProt)> {
        self.machine.extract(self.space, va)
    }
}

impl PhysMaps for SimMachine {
    fn page_protect(&mut self, frame: PhysAddr, prot: VmProt) {
        for (s, va) in self.mappings_of(frame) {
            self.lower_pte(s, va, prot);
        }
    }

    fn clear_referenced(&mut self, frame: PhysAddr) -> bool {
        let frame = frame.align_down(PAGE_SIZE);
        let mut was = false;
        if let Some(a) = self.attrs.get_mut(&frame) {
            was |= core::mem::take(&mut a.referenced);
        }
        for (s, va) in self.mappings_of(frame) {
            if let Some(p) = self.spaces[s.0].ptes.get_mut(&va) {
                was |= core::mem::take(&mut p.referenced);
            }
        }
        was
    }

    fn clear_modified(&mut self, frame: PhysAddr) -> bool {
        let frame = frame.align_down(PAGE_SIZE);
        let mut was = false;
        if let Some(a) = self.attrs.get_mut(&frame) {
            was |= core::mem::take(&mut a.modified);
        }
        for (s, va) in self.mappings_of(frame) {
            if let Some(p) = self.spaces[s.0].ptes.get_mut(&va) {
                was |= core::mem::take(&mut p.modified);
            }
        }
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: VmProt = VmProt::DEFAULT;
    fn va(p: u64) -> VirtAddr {
        VirtAddr(p * PAGE_SIZE)
    }
    fn pa(p: u64) -> PhysAddr {
        PhysAddr(p * PAGE_SIZE)
    }

    #[test]
    fn enter_extract_replace() {
        let mut m = SimMachine::new();
        let s = m.new_space();
        let mut p = m.pmap(s);
        assert_eq!(p.extract(va(1)), None);
        p.enter(va(1), pa(10), RW).unwrap();
        assert_eq!(p.extract(VirtAddr(va(1).0 + 5)), Some((pa(10), RW)));
        p.enter(va(1), pa(11), VmProt::READ).unwrap();
        assert_eq!(p.extract(va(1)), Some((pa(11), VmProt::READ)));
        assert!(m.mappings_of(pa(10)).is_empty());
        assert_eq!(m.mappings_of(pa(11)), [(s, va(1))]);
        m.pmap(s).enter(va(1), pa(11), VmProt::NONE).unwrap();
        assert_eq!(m.mapping_count(s), 0);
    }

    #[test]
    fn remove_and_protect_ranges() {
        let mut m = SimMachine::new();
        let s = m.new_space();
        let mut p = m.pmap(s);
        for i in 0..5 {
            p.enter(va(i), pa(100 + i), VmProt::ALL).unwrap();
        }
        p.protect(va(1), va(3), VmProt::READ);
        p.remove(va(3), va(4));
        assert_eq!(p.extract(va(0)), Some((pa(100), VmProt::ALL)));
        assert_eq!(p.extract(va(1)), Some((pa(101), VmProt::READ)));
        assert_eq!(p.extract(va(2)), Some((pa(102), VmProt::READ)));
        assert_eq!(p.extract(va(3)), None);
        // protect never raises
        p.protect(va(0), va(5), VmProt::ALL);
        assert_eq!(p.extract(va(1)), Some((pa(101), VmProt::READ)));
        p.protect(va(0), va(2), VmProt::NONE);
        assert_eq!(p.extract(va(0)), None);
        assert_eq!(m.mapping_count(s), 2);
        assert!(m.mappings_of(pa(100)).is_empty());
    }

    #[test]
    fn touch_follows_protection_and_sets_bits() {
        let mut m = SimMachine::new();
        let s = m.new_space();
        m.pmap(s).enter(va(1), pa(1), VmProt::READ).unwrap();
        assert!(!m.touch(s, va(2), false));
        assert!(!m.touch(s, va(1), true));
        assert!(!m.is_referenced(pa(1)));
        assert!(m.touch(s, va(1), false));
        assert!(m.is_referenced(pa(1)) && !m.is_modified(pa(1)));
        m.pmap(s).enter(va(1), pa(1), RW).unwrap();
        assert!(m.touch(s, va(1), true));
        assert!(m.clear_modified(pa(1)));
        assert!(!m.clear_modified(pa(1)));
        assert!(m.clear_referenced(pa(1)));
        assert!(!m.clear_referenced(pa(1)));
    }

    #[test]
    fn bits_survive_removal() {
        let mut m = SimMachine::new();
        let s = m.new_space();
        m.pmap(s).enter(va(1), pa(1), RW).unwrap();
        assert!(m.touch(s, va(1), true));
        m.pmap(s).remove(va(0), va(10));
        assert!(m.is_modified(pa(1)));
        assert!(m.clear_modified(pa(1)));
        assert!(!m.is_modified(pa(1)));
    }

    #[test]
    fn page_protect_across_spaces() {
        let mut m = SimMachine::new();
        let a = m.new_space();
        let b = m.new_space();
        m.pmap(a).enter(va(1), pa(7), RW).unwrap();
        m.pmap(b).enter(va(9), pa(7), RW).unwrap();
        m.pmap(b).enter(va(10), pa(8), RW).unwrap();
        assert_eq!(m.mappings_of(pa(7)).len(), 2);
        m.page_protect(pa(7), VmProt::READ);
        assert_eq!(m.extract(a, va(1)), Some((pa(7), VmProt::READ)));
        assert_eq!(m.extract(b, va(9)), Some((pa(7), VmProt::READ)));
        assert!(!m.touch(a, va(1), true));
        m.page_protect(pa(7), VmProt::NONE);
        assert!(m.mappings_of(pa(7)).is_empty());
        assert_eq!(m.extract(b, va(10)), Some((pa(8), RW)));
    }

    #[test]
    fn memory_through_mappings() {
        let mut m = SimMachine::new();
        let a = m.new_space();
        let b = m.new_space();
        m.pmap(a).enter(va(1), pa(3), RW).unwrap();
        m.pmap(a).enter(va(2), pa(4), RW).unwrap();
        m.pmap(b).enter(va(5), pa(4), VmProt::READ).unwrap();
        // spans the page boundary between va(1) and va(2)
        let at = VirtAddr(va(2).0 - 3);
        m.write_virt(a, at, b"hello").unwrap();
        let mut buf = [0u8; 2];
        m.read_virt(b, va(5), &mut buf).unwrap();
        assert_eq!(&buf, b"lo");
        assert_eq!(
            m.write_virt(b, va(5), b"x"),
            Err(SimFault {
                va: va(5),
                write: true
            })
        );
        let mut z = [1u8; 4];
        assert!(m.read_virt(b, va(6), &mut z).is_err());
        m.read_phys(pa(9), &mut z);
        assert_eq!(z, [0; 4]);
        m.copy_frame(pa(4), pa(9));
        m.read_phys(pa(9), &mut buf);
        assert_eq!(&buf, b"lo");
        m.zero_frame(pa(9));
        m.read_phys(pa(9), &mut buf);
        assert_eq!(buf, [0, 0]);
    }

    #[test]
    fn table_limit_gives_resource_shortage() {
        let mut m = SimMachine::new();
        let s = m.new_space();
        m.set_table_limit(s, Some(1));
        let mut p = m.pmap(s);
        p.enter(va(0), pa(1), RW).unwrap();
        p.enter(va(511), pa(2), RW).unwrap();
        assert_eq!(p.enter(va(512), pa(3), RW), Err(VmError::ResourceShortage));
        assert_eq!(p.extract(va(512)), None);
    }

    #[test]
    fn destroy_space_drops_reverse_maps() {
        let mut m = SimMachine::new();
        let a = m.new_space();
        let b = m.new_space();
        m.pmap(a).enter(va(1), pa(1), RW).unwrap();
        m.pmap(b).enter(va(1), pa(1), RW).unwrap();
        m.destroy_space(a);
        assert_eq!(m.mappings_of(pa(1)), [(b, va(1))]);
    }
}
