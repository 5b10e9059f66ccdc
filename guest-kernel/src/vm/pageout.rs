//! The pageout daemon's policy (paper §5.4), pure: which resident pages to
//! reclaim when free frames run low, and which of them must first be
//! written to their pager. The kernel runs [`pageout_scan`] from the
//! pageout thread when [`needs_pageout`] says so, sends the DataWrites it
//! returns (internal objects' to the default pager) and reports each one
//! done with `Objects::data_write_done`, which frees the frame.
//!
//! Policy: FIFO with second chance. Pages enter the active queue when
//! faulted in. A scan moves pages from the active head to the inactive
//! tail, clearing their referenced bit; an inactive page referenced since
//! then goes back to the active tail (its second chance), an unreferenced
//! one is reclaimed: its mappings are removed first (so it cannot be
//! touched or dirtied behind the scan), then a clean page is freed and a
//! dirty one written back, held busy until the write completes.

use alloc::vec::Vec;

use crate::vm::object::{ObjectAction, Objects};
use crate::vm::page::{FrameSource, Queue};
use crate::vm::pmap::PhysMaps;
use crate::vm::types::{VmError, VmProt};

/// Watermarks, in frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageoutConfig {
    /// Wake the daemon when fewer frames than this are free.
    pub free_min: u64,
    /// A scan tries to bring the free count (counting writes in flight)
    /// up to this.
    pub free_target: u64,
}

/// Whether the pageout daemon should run.
pub fn needs_pageout(cfg: &PageoutConfig, frames: &dyn FrameSource) -> bool {
    frames.free_count() < cfg.free_min
}

/// What a scan did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// Clean pages freed at once.
    pub freed: u64,
    /// Referenced inactive pages given a second chance.
    pub reactivated: u64,
    /// DataWrites to send; each page is freed when its write is done.
    pub actions: Vec<ObjectAction>,
}

/// One pass of the daemon. Visits each inactive page at most once, so a
/// pass is bounded even when every page is referenced.
pub fn pageout_scan(
    cfg: &PageoutConfig,
    objects: &mut Objects,
    frames: &mut dyn FrameSource,
    phys: &mut dyn PhysMaps,
) -> Result<ScanResult, VmError> {
    let mut r = ScanResult::default();
    let shortage = cfg.free_target.saturating_sub(frames.free_count());
    if shortage == 0 {
        return Ok(r);
    }
    // Bounded by the resident pages; reserved first so a write is never
    // started that could not be reported.
    let want = usize::try_from(shortage)
        .unwrap_or(usize::MAX)
        .min(objects.pages.resident_count());
    r.actions
        .try_reserve_exact(want)
        .map_err(|_| VmError::ResourceShortage)?;

    // Keep about a third of the queued pages inactive, at least the
    // shortage, so there are candidates whose use is being watched.
    let queued = objects.pages.active_count() + objects.pages.inactive_count();
    let inactive_target = (queued / 3).max(shortage).min(queued);
    while objects.pages.inactive_count() < inactive_target {
        let Some(pid) = objects.pages.active_head() else {
            break;
        };
        if let Some(f) = objects.pages.get(pid).and_then(|p| p.frame) {
            phys.clear_referenced(f);
        }
        objects.pages.deactivate(pid);
    }

    let mut reclaimed = 0u64;
    for _ in 0..objects.pages.inactive_count() {
        if reclaimed >= shortage || r.actions.len() >= r.actions.capacity() {
            break;
        }
        let Some(pid) = objects.pages.inactive_head() else {
            break;
        };
        let Some(p) = objects.pages.get(pid).copied() else {
            break;
        };
        let Some(f) = p.frame.filter(|_| !p.busy && !p.cleaning) else {
            // In transit (a clean_request write): look again next pass.
            objects.pages.deactivate(pid);
            continue;
        };
        if phys.clear_referenced(f) {
            objects.pages.activate(pid);
            r.reactivated += 1;
            continue;
        }
        phys.page_protect(f, VmProt::NONE);
        if p.dirty || p.precious || phys.clear_modified(f) {
            // A dead pager's dirty page goes to the default pager.
            let pager = match objects.get(p.object) {
                Ok(o) => o.write_back_port(),
                Err(_) => continue,
            };
            objects.pages.dequeue(pid);
            debug_assert!(objects.pages.get(pid).map(|p| p.queue()) == Some(Queue::None));
            if let Some(q) = objects.pages.get_mut(pid) {
                q.busy = true;
                q.cleaning = true;
                q.dirty = false;
            }
            r.actions.push(ObjectAction::DataWrite {
                object: p.object,
                pager,
                offset: p.offset,
                frame: f,
            });
        } else {
            // Clean: the pager (or the default pager) has it, or it is a
            // zero page never written.
            objects.free_page(pid, frames, phys);
            r.freed += 1;
        }
        reclaimed += 1;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
    use crate::vm::object::PagerPort;
    use crate::vm::page::FramePool;
    use crate::vm::pmap::{Pmap, SimMachine};
    use crate::vm::types::ObjectOffset;

    fn off(p: u64) -> ObjectOffset {
        ObjectOffset(p * PAGE_SIZE)
    }

    /// `n` resident pages of one internal object, each mapped at va(i).
    fn setup(
        n: u64,
    ) -> (
        SimMachine,
        crate::vm::pmap::SpaceHandle,
        Objects,
        FramePool,
        crate::vm::types::ObjectId,
    ) {
        let mut m = SimMachine::new();
        let s = m.new_space();
        let mut objs = Objects::new(8, 64, 0);
        let mut pool = FramePool::new(PhysAddr(0x100000), 16);
        let o = objs.create_internal(n * PAGE_SIZE).unwrap();
        for i in 0..n {
            let f = objs.pages.alloc_frame(&mut pool, false).unwrap();
            let pid = objs.pages.insert(o, off(i), Some(f.addr)).unwrap();
            objs.pages.activate(pid);
            m.pmap(s)
                .enter(VirtAddr(i * PAGE_SIZE), f.addr, VmProt::DEFAULT)
                .unwrap();
        }
        (m, s, objs, pool, o)
    }

    #[test]
    fn nothing_to_do_above_target() {
        let (mut m, _, mut objs, mut pool, _) = setup(2);
        let cfg = PageoutConfig {
            free_min: 1,
            free_target: 10,
        };
        assert!(!needs_pageout(&cfg, &pool));
        let r = pageout_scan(&cfg, &mut objs, &mut pool, &mut m).unwrap();
        assert_eq!(r, ScanResult::default());
        assert_eq!(objs.pages.resident_count(), 2);
    }

    #[test]
    fn second_chance_then_free() {
        let (mut m, s, mut objs, mut pool, o) = setup(2);
        // Want every resident page back.
        let cfg = PageoutConfig {
            free_min: 20,
            free_target: pool.free_count() + 2,
        };
        assert!(needs_pageout(&cfg, &pool));
        let p0 = objs.pages.lookup(o, off(0)).unwrap();
        let pass = |m: &mut SimMachine, objs: &mut Objects, pool: &mut FramePool| {
            pageout_scan(&cfg, objs, pool, m).unwrap()
        };
        // Both pages deactivated (bits cleared, as a scan does), then the
        // task reads page 0 again before the next scan looks at it.
        for id in objs.pages.queue_pages(Queue::Active) {
            let f = objs.pages.get(id).unwrap().frame.unwrap();
            m.clear_referenced(f);
            objs.pages.deactivate(id);
        }
        assert!(m.touch(s, VirtAddr(0), false));
        let r = pass(&mut m, &mut objs, &mut pool);
        // Page 0 was referenced: survives (back on active); page 1 freed.
        assert_eq!(r.reactivated, 1);
        assert_eq!(r.freed, 1);
        assert_eq!(objs.pages.resident_count(), 1);
        assert_eq!(objs.pages.get(p0).unwrap().queue(), Queue::Active);
        assert!(m.extract(s, VirtAddr(0)).is_some());
        assert!(m.extract(s, VirtAddr(PAGE_SIZE)).is_none());
        // Next pass: page 0 deactivated (referenced cleared), not touched
        // again, so it goes.
        let r = pass(&mut m, &mut objs, &mut pool);
        assert_eq!(r.freed, 1);
        assert_eq!(objs.pages.resident_count(), 0);
        assert!(m.extract(s, VirtAddr(0)).is_none());
    }

    #[test]
    fn dirty_page_written_then_freed() {
        let (mut m, s, mut objs, mut pool, o) = setup(1);
        m.write_virt(s, VirtAddr(8), b"dirty").unwrap();
        let before = pool.free_count();
        let cfg = PageoutConfig {
            free_min: 20,
            free_target: before + 1,
        };
        let r = pageout_scan(&cfg, &mut objs, &mut pool, &mut m).unwrap();
        // Deactivation cleared the referenced bit; the inactive scan found
        // it unreferenced and modified.
        let frame = objs
            .pages
            .get(objs.pages.lookup(o, off(0)).unwrap())
            .unwrap()
            .frame
            .unwrap();
        assert_eq!(
            r.actions,
            [ObjectAction::DataWrite {
                object: o,
                pager: PagerPort::Default,
                offset: off(0),
                frame,
            }]
        );
        assert_eq!(r.freed, 0);
        // Unmapped and busy while the write is in flight; the frame's data
        // is intact for the pager.
        assert!(m.extract(s, VirtAddr(0)).is_none());
        let p = objs
            .pages
            .get(objs.pages.lookup(o, off(0)).unwrap())
            .unwrap();
        assert!(p.busy && p.cleaning);
        let mut buf = [0u8; 5];
        m.read_phys(PhysAddr(frame.0 + 8), &mut buf);
        assert_eq!(&buf, b"dirty");
        assert_eq!(pool.free_count(), before);
        // A second pass does not write it again.
        let r = pageout_scan(&cfg, &mut objs, &mut pool, &mut m).unwrap();
        assert!(r.actions.is_empty());
        // Done: freed, and the default pager now holds the offset.
        assert_eq!(
            objs.data_write_done(o, off(0), &mut pool, &mut m).unwrap(),
            None
        );
        assert_eq!(pool.free_count(), before + 1);
        assert_eq!(objs.pages.resident_count(), 0);
        assert!(objs.get(o).unwrap().is_paged_out(off(0)));
    }

    #[test]
    fn a_dead_pagers_dirty_page_is_double_paged_and_comes_back_from_the_default_pager() {
        use crate::vm::fault::tests::Sim;
        use crate::vm::fault::{FaultOutcome, FaultTarget, fault_object};
        use crate::vm::object::{PagerEntry, PagerRef};
        let mut m = SimMachine::new();
        let s = m.new_space();
        let mut objs = Objects::new(8, 64, 0);
        let mut pool = FramePool::new(PhysAddr(0x100000), 16);
        let PagerEntry::New(o) = objs.enter_pager(PagerRef(9), 2 * PAGE_SIZE).unwrap() else {
            panic!()
        };
        objs.set_pager_ready(o).unwrap();
        let f = objs.pages.alloc_frame(&mut pool, false).unwrap().addr;
        objs.data_provided(o, off(0), &[f], VmProt::NONE, false, &mut pool)
            .unwrap();
        m.pmap(s).enter(VirtAddr(0), f, VmProt::DEFAULT).unwrap();
        m.write_virt(s, VirtAddr(8), b"keep me").unwrap();
        objs.pager_died(o).unwrap();
        let cfg = PageoutConfig {
            free_min: 20,
            free_target: pool.free_count() + 1,
        };
        let r = pageout_scan(&cfg, &mut objs, &mut pool, &mut m).unwrap();
        assert_eq!(
            r.actions,
            [ObjectAction::DataWrite {
                object: o,
                pager: PagerPort::Default,
                offset: off(0),
                frame: f,
            }],
            "not dropped, not sent to the dead pager"
        );
        objs.data_write_done(o, off(0), &mut pool, &mut m).unwrap();
        objs.double_paged(o, off(0)).unwrap();
        let target = |page| FaultTarget {
            object: o,
            offset: off(page),
            prot: VmProt::DEFAULT,
            needs_copy: false,
        };
        let mut sim = Sim { m: &mut m, s };
        let r = fault_object(
            &mut objs,
            &mut pool,
            &mut sim,
            target(0),
            VirtAddr(0),
            VmProt::READ,
            false,
        );
        assert!(
            matches!(
                r,
                FaultOutcome::Request {
                    pager: PagerPort::Default,
                    ..
                }
            ),
            "{r:?}"
        );
        // A page the default pager never got is an exception.
        let r = fault_object(
            &mut objs,
            &mut pool,
            &mut sim,
            target(1),
            VirtAddr(PAGE_SIZE),
            VmProt::READ,
            false,
        );
        assert_eq!(r, FaultOutcome::MemoryError);
    }

    #[test]
    fn refused_write_keeps_the_page() {
        let (mut m, s, mut objs, mut pool, o) = setup(1);
        m.write_virt(s, VirtAddr(8), b"kept").unwrap();
        let cfg = PageoutConfig {
            free_min: 20,
            free_target: pool.free_count() + 1,
        };
        let r = pageout_scan(&cfg, &mut objs, &mut pool, &mut m).unwrap();
        assert_eq!(r.actions.len(), 1);
        // No swap slot: the page stays, dirty and active, not paged out.
        assert_eq!(
            objs.data_write_refused(o, off(0), &mut pool, &mut m)
                .unwrap(),
            None
        );
        let p = *objs
            .pages
            .get(objs.pages.lookup(o, off(0)).unwrap())
            .unwrap();
        assert!(!p.busy && !p.cleaning && p.dirty);
        assert_eq!(p.queue(), Queue::Active);
        assert!(!objs.get(o).unwrap().is_paged_out(off(0)));
        // Refusing again is an error (nothing in flight).
        assert!(
            objs.data_write_refused(o, off(0), &mut pool, &mut m)
                .is_err()
        );
        // The next scan writes it again (dirty).
        let cfg = PageoutConfig {
            free_min: 20,
            free_target: pool.free_count() + 1,
        };
        let r = pageout_scan(&cfg, &mut objs, &mut pool, &mut m).unwrap();
        assert_eq!(r.actions.len(), 1);
    }
}
