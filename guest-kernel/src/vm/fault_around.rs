//! Fault-around: after a read fault found its page resident, the pages
//! that follow it in the same map entry and are resident in the entry's
//! own object are mapped too, read-only, so a task reading a file it
//! mapped takes one fault per read-ahead cluster instead of one per page
//! (a soft fault costs a trap, a map lookup and an exit or three; entering
//! a page here costs a lookup and a table write).
//!
//! Only what a fault would map anyway is entered: the top object's own
//! page (no walk down a shadow chain, whose pages a later write must
//! copy), not busy, absent, failed or locked against reading, and without
//! write access, so the first write still faults and goes through the
//! normal path (needs_copy, data_unlock, dirty tracking). The walk stops at
//! the first page that does not qualify or is already mapped: it serves
//! sequential reads and never costs more than `max` lookups.

use crate::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use crate::vm::fault::FaultMachine;
use crate::vm::map::VmMap;
use crate::vm::object::Objects;
use crate::vm::types::VmProt;

/// Maps up to `max` resident pages after the page at `va`; returns how
/// many it mapped.
pub fn fault_around<M: FaultMachine>(
    map: &VmMap,
    objects: &Objects,
    mmu: &mut M,
    va: VirtAddr,
    max: u64,
) -> u64 {
    let Some(first) = map.lookup(va) else {
        return 0;
    };
    if !first.prot.contains(VmProt::READ) {
        return 0;
    }
    let prot = first.prot.without(VmProt::WRITE);
    let base = va.align_down(PAGE_SIZE);
    let mut mapped = 0;
    // The resident run's frames are gathered first (a hash probe a page,
    // which after a random fault mostly ends it at once), then mapped in
    // one go, so the page tables are walked once, not twice a page.
    let mut run = [PhysAddr(0); BATCH];
    while mapped < max {
        let from = VirtAddr(base.0 + (mapped + 1) * PAGE_SIZE);
        let mut n = 0;
        while n < BATCH && mapped + (n as u64) < max {
            let page = from.0 + n as u64 * PAGE_SIZE;
            if page >= first.end.0 {
                break;
            }
            let Some(frame) = first
                .offset
                .checked_add(page - base.0)
                .and_then(|offset| objects.pages.lookup(first.object, offset))
                .and_then(|pid| objects.pages.get(pid))
                .filter(|p| !p.busy && !p.absent && !p.error && !p.lock.contains(VmProt::READ))
                .and_then(|p| p.frame)
            else {
                break;
            };
            run[n] = frame;
            n += 1;
        }
        let entered = mmu.enter_ahead(from, &run[..n], prot);
        mapped += entered as u64;
        if entered < BATCH {
            break;
        }
    }
    mapped
}

/// Pages gathered per `enter_ahead`.
const BATCH: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PhysAddr;
    use crate::vm::fault::tests::{Sim, World, new_map, va};
    use crate::vm::fault::{FaultOutcome, Resolved};
    use crate::vm::object::{PagerEntry, PagerRef};
    use crate::vm::types::{Inheritance, ObjectOffset};

    const RW: VmProt = VmProt::DEFAULT;

    /// An external object of `pages` pages mapped at va(0), with pages
    /// `resident` provided (filled with their index).
    fn setup(pages: u64, resident: &[u64]) -> (World, VmMap, crate::vm::pmap::SpaceHandle) {
        let mut w = World::new(32);
        let s = w.m.new_space();
        let PagerEntry::New(o) = w.objs.enter_pager(PagerRef(7), pages * PAGE_SIZE).unwrap() else {
            panic!()
        };
        w.objs.set_pager_ready(o).unwrap();
        let mut map = new_map();
        map.allocate(
            Some(va(0)),
            pages * PAGE_SIZE,
            o,
            ObjectOffset(0),
            RW,
            VmProt::ALL,
            Inheritance::Copy,
            false,
            &mut w.objs,
        )
        .unwrap();
        for &p in resident {
            let f = w.filled_frame(p as u8);
            w.objs
                .data_provided(
                    o,
                    ObjectOffset(p * PAGE_SIZE),
                    &[f],
                    VmProt::NONE,
                    false,
                    &mut w.pool,
                )
                .unwrap();
        }
        (w, map, s)
    }

    fn around(w: &mut World, map: &VmMap, s: crate::vm::pmap::SpaceHandle, p: u64) -> u64 {
        let mut sim = Sim { m: &mut w.m, s };
        fault_around(map, &w.objs, &mut sim, va(p), 16)
    }

    #[test]
    fn maps_the_resident_run_after_the_fault_read_only() {
        let (mut w, mut map, s) = setup(8, &[0, 1, 2, 3, 5]);
        let r = w.fault(&mut map, s, va(0), VmProt::READ);
        assert!(
            matches!(
                r,
                FaultOutcome::Mapped {
                    how: Resolved::Soft,
                    ..
                }
            ),
            "{r:?}"
        );
        // 1..3 follow; 4 is absent, so 5 is left for its own fault.
        assert_eq!(around(&mut w, &map, s, 0), 3);
        for p in 1..4 {
            let (f, prot) = w.m.extract(s, va(p)).expect("mapped");
            assert_eq!(prot, VmProt::READ, "no write until a write fault");
            let mut b = [0u8];
            w.m.read_virt(s, va(p), &mut b).unwrap();
            assert_eq!(b[0], p as u8);
            assert_ne!(f, PhysAddr(0));
        }
        assert_eq!(w.m.extract(s, va(4)), None);
        assert_eq!(w.m.extract(s, va(5)), None);
        // A write to a page mapped this way faults and gets write access.
        let r = w.fault(&mut map, s, va(2), VmProt::WRITE);
        assert!(matches!(r, FaultOutcome::Mapped { prot: RW, .. }), "{r:?}");
        // Already-mapped pages end the walk.
        assert_eq!(around(&mut w, &map, s, 0), 0);
    }

    #[test]
    fn stops_at_the_entry_end_and_busy_pages() {
        let (mut w, map, s) = setup(3, &[0, 1, 2]);
        assert_eq!(around(&mut w, &map, s, 0), 2, "entry ends after page 2");
        let (mut w, mut map, s) = setup(4, &[0]);
        // Page 1 is being requested (a busy placeholder).
        let r = w.fault(&mut map, s, va(1), VmProt::READ);
        assert!(matches!(r, FaultOutcome::Request { .. }), "{r:?}");
        assert_eq!(around(&mut w, &map, s, 0), 0);
    }
}
