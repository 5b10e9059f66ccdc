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
//!
//! A read-ahead cluster is mapped the same way as it arrives
//! ([`provide_to_reader`]): the pager's answer to a read fault's request
//! makes the pages and maps the run from the faulting page on in the
//! faulting space, so the reader takes no second fault for the cluster
//! and no page of it is looked up again.

use crate::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use crate::vm::fault::FaultMachine;
use crate::vm::map::VmMap;
use crate::vm::memory_object::{Reply, allowed_by_lock};
use crate::vm::object::Objects;
use crate::vm::page::FrameSource;
use crate::vm::types::{ObjectId, ObjectOffset, VmError, VmProt};

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

/// pager_data_provided for a read fault's request (`object`'s pages from
/// `offset`, the faulting page first, asked by a fault at `va` in the
/// space `mmu` works on): the pages are made as by
/// [`Objects::data_provided`], and those it made from `data` without a
/// gap from the faulting page on are mapped there read-only as a read
/// fault and fault-around would map them, while `va` still maps `object`
/// at `offset` (the map is looked at now: it may have changed since the
/// fault) and the page is not locked against reading. The mapping stops
/// at the entry's end and at the first address already mapped. Returns
/// the reply and how many pages were mapped; on Err nothing was consumed.
#[allow(clippy::too_many_arguments)] // a data_provided and where it goes
pub fn provide_to_reader<M: FaultMachine>(
    map: &VmMap,
    objects: &mut Objects,
    frames: &mut dyn FrameSource,
    mmu: &mut M,
    va: VirtAddr,
    object: ObjectId,
    offset: ObjectOffset,
    data: &[PhysAddr],
    lock: VmProt,
) -> Result<(Reply, usize), VmError> {
    let (reply, run) = objects.provide(object, offset, data, lock, false, frames)?;
    let Some(entry) = map.lookup(va) else {
        return Ok((reply, 0));
    };
    // Only the top object's own pages: a page of a backing object is
    // another object's (and one a write must copy).
    if entry.object != object || entry.offset != offset || !entry.prot.contains(VmProt::READ) {
        return Ok((reply, 0));
    }
    // Without write access, so the first write still faults (dirty
    // tracking, needs_copy, data_unlock).
    let prot = entry
        .prot
        .intersect(allowed_by_lock(lock))
        .without(VmProt::WRITE);
    let base = va.align_down(PAGE_SIZE);
    let room = (entry.end.0 - base.0) / PAGE_SIZE;
    let n = run.min(usize::try_from(room).unwrap_or(usize::MAX));
    if n == 0 || !prot.contains(VmProt::READ) {
        return Ok((reply, 0));
    }
    Ok((reply, mmu.enter_ahead(base, &data[..n], prot)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PhysAddr;
    use crate::vm::fault::tests::{Sim, World, new_map, va};
    use crate::vm::fault::{FaultOutcome, Resolved};
    use crate::vm::object::{PagerEntry, PagerRef};
    use crate::vm::pmap::{Pmap, SpaceHandle};
    use crate::vm::types::{Inheritance, ObjectRefs};
    use alloc::vec::Vec;

    const RW: VmProt = VmProt::DEFAULT;

    /// An external object of `pages` pages mapped at va(0), with pages
    /// `resident` provided (filled with their index).
    fn setup(pages: u64, resident: &[u64]) -> (World, VmMap, crate::vm::pmap::SpaceHandle) {
        setup_mapped(pages, pages, resident)
    }

    /// [`setup`] with only the first `mapped` pages of the object mapped.
    fn setup_mapped(
        pages: u64,
        mapped: u64,
        resident: &[u64],
    ) -> (World, VmMap, crate::vm::pmap::SpaceHandle) {
        let mut w = World::new(32);
        let s = w.m.new_space();
        let PagerEntry::New(o) = w.objs.enter_pager(PagerRef(7), pages * PAGE_SIZE).unwrap() else {
            panic!()
        };
        w.objs.set_pager_ready(o).unwrap();
        let mut map = new_map();
        map.allocate(
            Some(va(0)),
            mapped * PAGE_SIZE,
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

    fn off(p: u64) -> ObjectOffset {
        ObjectOffset(p * PAGE_SIZE)
    }

    /// A read fault at page `p` asks for its page (a busy placeholder).
    fn read_fault_asks(w: &mut World, map: &mut VmMap, s: SpaceHandle, p: u64) {
        let r = w.fault(map, s, va(p), VmProt::READ);
        assert!(matches!(r, FaultOutcome::Request { .. }), "{r:?}");
    }

    /// The pager's answer to that fault: `n` frames from page `p` (filled
    /// with their page's index), provided and mapped for the reader at
    /// va(p). The frames, and how many pages were mapped.
    fn answer(
        w: &mut World,
        map: &VmMap,
        s: SpaceHandle,
        object: ObjectId,
        p: u64,
        n: u64,
        lock: VmProt,
    ) -> (Vec<PhysAddr>, Reply, usize) {
        let frames: Vec<PhysAddr> = (p..p + n).map(|i| w.filled_frame(i as u8)).collect();
        let mut sim = Sim { m: &mut w.m, s };
        let (r, mapped) = provide_to_reader(
            map,
            &mut w.objs,
            &mut w.pool,
            &mut sim,
            va(p),
            object,
            off(p),
            &frames,
            lock,
        )
        .unwrap();
        (frames, r, mapped)
    }

    fn object_of(map: &VmMap) -> ObjectId {
        map.lookup(va(0)).unwrap().object
    }

    #[test]
    fn a_read_faults_cluster_is_mapped_read_only_as_it_arrives() {
        let (mut w, mut map, s) = setup(8, &[]);
        let o = object_of(&map);
        read_fault_asks(&mut w, &mut map, s, 2);
        let (frames, r, mapped) = answer(&mut w, &map, s, o, 2, 4, VmProt::NONE);
        assert_eq!(mapped, 4, "the faulting page and the read-ahead after it");
        assert_eq!((r.pages, r.discarded, r.woken), (4, 0, true));
        for (i, p) in (2..6).enumerate() {
            assert_eq!(w.m.extract(s, va(p)), Some((frames[i], VmProt::READ)));
            let mut b = [0u8];
            w.m.read_virt(s, va(p), &mut b).unwrap();
            assert_eq!(b[0], p as u8);
            let page = w.objs.pages.lookup(o, off(p)).unwrap();
            let page = w.objs.pages.get(page).unwrap();
            assert!(!page.busy && !page.absent && !page.dirty && page.lock.is_empty());
        }
        assert_eq!(w.m.extract(s, va(6)), None);
        // Read-only: a write faults, gets write access, and the page is
        // then modified (pageout writes it back).
        assert!(w.m.write_virt(s, va(3), b"w").is_err());
        let r = w.fault(&mut map, s, va(3), VmProt::WRITE);
        assert_eq!(
            r,
            FaultOutcome::Mapped {
                frame: frames[1],
                prot: RW,
                how: Resolved::Soft
            }
        );
        w.m.write_virt(s, va(3), b"w").unwrap();
        assert!(w.m.is_modified(frames[1]));
        // Fault-around after a later fault finds the run mapped already.
        assert_eq!(around(&mut w, &map, s, 2), 0);
    }

    #[test]
    fn a_provided_cluster_is_mapped_up_to_the_entry_end() {
        // The object has 8 pages, the entry maps 4.
        let (mut w, mut map, s) = setup_mapped(8, 4, &[]);
        let o = object_of(&map);
        read_fault_asks(&mut w, &mut map, s, 2);
        let (_, r, mapped) = answer(&mut w, &map, s, o, 2, 4, VmProt::NONE);
        assert_eq!((mapped, r.pages), (2, 4));
        assert!(w.m.extract(s, va(3)).is_some());
        assert_eq!(w.m.extract(s, va(4)), None);
        assert!(w.objs.pages.lookup(o, off(5)).is_some(), "still provided");
    }

    #[test]
    fn a_provided_cluster_stops_at_a_page_already_resident_or_mapped() {
        // Page 4 was resident before: its old data stays, unmapped, and
        // the pages after it are only provided.
        let (mut w, mut map, s) = setup(8, &[4]);
        let o = object_of(&map);
        read_fault_asks(&mut w, &mut map, s, 2);
        let (frames, r, mapped) = answer(&mut w, &map, s, o, 2, 4, VmProt::NONE);
        assert_eq!((mapped, r.pages, r.discarded), (2, 3, 1));
        assert_eq!(w.m.extract(s, va(3)), Some((frames[1], VmProt::READ)));
        assert_eq!(w.m.extract(s, va(4)), None);
        assert_eq!(w.m.extract(s, va(5)), None);
        // An address already mapped (here by hand) ends the run too.
        let (mut w, mut map, s) = setup(8, &[]);
        let o = object_of(&map);
        read_fault_asks(&mut w, &mut map, s, 2);
        let other = w.filled_frame(0xee);
        w.m.pmap(s).enter(va(4), other, VmProt::READ).unwrap();
        let (_, r, mapped) = answer(&mut w, &map, s, o, 2, 4, VmProt::NONE);
        assert_eq!((mapped, r.pages), (2, 4));
        assert_eq!(w.m.extract(s, va(4)), Some((other, VmProt::READ)));
        assert_eq!(w.m.extract(s, va(5)), None);
    }

    #[test]
    fn a_provided_cluster_keeps_the_pagers_lock() {
        // Locked against reading: nothing may be mapped.
        let (mut w, mut map, s) = setup(8, &[]);
        let o = object_of(&map);
        read_fault_asks(&mut w, &mut map, s, 0);
        let (_, r, mapped) = answer(&mut w, &map, s, o, 0, 3, VmProt::READ);
        assert_eq!((mapped, r.pages), (0, 3));
        assert_eq!(w.m.extract(s, va(0)), None);
        // Locked against writing: mapped to read; a write asks the unlock.
        let (mut w, mut map, s) = setup(8, &[]);
        let o = object_of(&map);
        read_fault_asks(&mut w, &mut map, s, 0);
        let (frames, _, mapped) = answer(&mut w, &map, s, o, 0, 3, VmProt::WRITE);
        assert_eq!(mapped, 3);
        assert_eq!(w.m.extract(s, va(1)), Some((frames[1], VmProt::READ)));
        let r = w.fault(&mut map, s, va(1), VmProt::WRITE);
        assert!(
            matches!(
                r,
                FaultOutcome::Unlock {
                    access: VmProt::WRITE,
                    ..
                }
            ),
            "{r:?}"
        );
    }

    #[test]
    fn a_provided_cluster_is_only_mapped_where_the_map_still_has_it() {
        // The region went while the pager thought: the pages are the
        // object's, nothing is mapped.
        let (mut w, mut map, s) = setup(8, &[]);
        let o = object_of(&map);
        read_fault_asks(&mut w, &mut map, s, 2);
        w.objs.reference(o);
        map.deallocate(va(0), 8 * PAGE_SIZE, &mut w.objs, &mut w.m.pmap(s))
            .unwrap();
        let (_, r, mapped) = answer(&mut w, &map, s, o, 2, 2, VmProt::NONE);
        assert_eq!((mapped, r.pages), (0, 2));
        assert_eq!(w.m.mapping_count(s), 0);
        // A backing object's page (a read through a copy-on-write shadow)
        // is not the entry's object's: not mapped from here.
        let mut w = World::new(32);
        let s = w.m.new_space();
        let PagerEntry::New(base) = w.objs.enter_pager(PagerRef(7), 4 * PAGE_SIZE).unwrap() else {
            panic!()
        };
        w.objs.set_pager_ready(base).unwrap();
        let top = w.objs.shadow(base, off(0), 4 * PAGE_SIZE).unwrap();
        let mut map = new_map();
        map.allocate(
            Some(va(0)),
            4 * PAGE_SIZE,
            top,
            ObjectOffset(0),
            RW,
            VmProt::ALL,
            Inheritance::Copy,
            false,
            &mut w.objs,
        )
        .unwrap();
        read_fault_asks(&mut w, &mut map, s, 1);
        let (_, r, mapped) = answer(&mut w, &map, s, base, 1, 2, VmProt::NONE);
        assert_eq!((mapped, r.pages), (0, 2));
        assert_eq!(w.m.extract(s, va(1)), None);
        // The retried fault finds the backing page and maps it.
        let r = w.fault(&mut map, s, va(1), VmProt::READ);
        assert!(matches!(r, FaultOutcome::Mapped { .. }), "{r:?}");
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
