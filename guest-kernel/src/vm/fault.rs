//! The page-fault handler (paper §5.5) as a pure step: given where the
//! fault is and what access was wanted, it either makes the mapping (and
//! says how) or says what the kernel must do first — wait for a page in
//! transit, send a pager a data_request or data_unlock, raise an exception.
//! The kernel blocks the thread on the object named in the outcome and
//! calls the handler again when woken; every retry starts from the map, so
//! no state is kept between attempts.
//!
//! Steps, as in the paper: validity and protection (the map lookup), page
//! lookup down the shadow chain, copy-on-write (copy the page up into the
//! top object when writing a page found below it), hardware validation
//! (Pmap::enter).

use crate::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use crate::vm::frame::Frame;
use crate::vm::map::VmMap;
use crate::vm::memory_object::allowed_by_lock;
use crate::vm::object::{ObjectKind, Objects, PagerPort};
use crate::vm::page::{FrameSource, PageId, Queue};
use crate::vm::pmap::PhysMaps;
use crate::vm::types::{ObjectId, ObjectOffset, VmError, VmProt};

/// What the fault handler needs of the machine: the faulting space's
/// page table, every space's mappings of a frame, and page contents.
/// Frame contents are reached through here (not returned as actions) so a
/// page is filled before it is mapped; the kernel's implementation may
/// zero a frame itself or have the host do it.
pub trait FaultMachine: PhysMaps {
    /// Pmap::enter on the faulting space.
    fn enter(&mut self, va: VirtAddr, frame: PhysAddr, prot: VmProt) -> Result<(), VmError>;
    /// Whether the faulting space maps `va` (fault-around stops there).
    fn mapped(&mut self, va: VirtAddr) -> bool;
    /// Maps `frames[i]` at `va + i` pages with `prot` (new mappings, as
    /// `enter` makes them), stopping at the first address already mapped
    /// or that cannot be mapped; how many it mapped (fault-around).
    fn enter_ahead(&mut self, va: VirtAddr, frames: &[PhysAddr], prot: VmProt) -> usize {
        for (n, &f) in frames.iter().enumerate() {
            let at = VirtAddr(va.0 + n as u64 * PAGE_SIZE);
            if self.mapped(at) || self.enter(at, f, prot).is_err() {
                return n;
            }
        }
        frames.len()
    }
    /// Makes `frame` all zeros (called only for frames not known zero).
    fn zero_frame(&mut self, frame: PhysAddr);
    fn copy_frame(&mut self, src: PhysAddr, dst: PhysAddr);
    /// The page at `offset` of `object` (`size` bytes long) is absent and
    /// its pager is `pager`: the machine may ask for it itself, and even
    /// have it at once (a pager that answers while the fault is still
    /// being handled). By default it leaves the asking to the caller of
    /// the fault handler ([`PageIn::Later`]).
    fn page_in(
        &mut self,
        object: ObjectId,
        pager: PagerPort,
        offset: ObjectOffset,
        size: u64,
        desired: VmProt,
    ) -> PageIn {
        let _ = (object, pager, offset, size, desired);
        PageIn::Later
    }
}

/// What [`FaultMachine::page_in`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageIn {
    /// Nothing: the fault returns Request and its caller asks the pager.
    Later,
    /// Asked, the answer is not here yet: the fault makes the busy
    /// placeholder and waits (Wait), as for another fault's request.
    Asked,
    /// The pager's data for the page is in this frame (now the VM's):
    /// the page becomes resident, as pager_data_provided would make it
    /// (clean, unlocked), and the fault goes on with it.
    Provided(PhysAddr),
}

/// What the map says about the faulting address (from map::Lookup).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultTarget {
    pub object: ObjectId,
    /// Object offset of the faulting page.
    pub offset: ObjectOffset,
    /// The entry's current protection.
    pub prot: VmProt,
    pub needs_copy: bool,
}

/// How a mapped fault was satisfied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The page was resident (a soft fault).
    Soft,
    /// A new zero page; `zeroed_by_kernel` if the frame had to be zeroed
    /// (it was not known zero).
    ZeroFill { zeroed_by_kernel: bool },
    /// Written page copied from `from` (a backing object's frame) into the
    /// top object.
    CopyOnWrite { from: PhysAddr },
    /// The page's pager provided it while the fault waited
    /// ([`PageIn::Provided`]).
    PagedIn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// Entered into the pmap; the thread resumes.
    Mapped {
        frame: PhysAddr,
        prot: VmProt,
        how: Resolved,
    },
    /// The page is in transit (another fault's request, a pageout, or the
    /// pager not yet initialised): block on `object`, retry when woken.
    Wait {
        object: ObjectId,
        offset: ObjectOffset,
    },
    /// Send pager_data_request, then block on `object`. A busy placeholder
    /// was made so concurrent faults on this page wait for this request.
    Request {
        object: ObjectId,
        pager: PagerPort,
        offset: ObjectOffset,
        length: u64,
        desired_access: VmProt,
    },
    /// The pager has locked the page against `access`: send
    /// pager_data_unlock, then block on `object`.
    Unlock {
        object: ObjectId,
        pager: PagerPort,
        offset: ObjectOffset,
        access: VmProt,
    },
    /// A write to a needs_copy entry: the map must put a shadow in front
    /// (VmMap::resolve_copy) and the fault be retried. [`vm_fault`] does
    /// this itself; only [`fault_object`] returns it.
    NeedsCopy,
    /// Nothing is mapped at the address (exception message).
    InvalidAddress,
    /// The access exceeds the entry's protection (exception message).
    ProtectionFailure,
    /// The pager failed or died, or the address is past the object's end.
    MemoryError,
    /// No frame or page slot: wake pageout, block, retry.
    ResourceShortage,
}

impl FaultOutcome {
    fn from_error(e: VmError) -> FaultOutcome {
        match e {
            VmError::ResourceShortage => FaultOutcome::ResourceShortage,
            VmError::ProtectionFailure => FaultOutcome::ProtectionFailure,
            VmError::InvalidAddress => FaultOutcome::InvalidAddress,
            _ => FaultOutcome::MemoryError,
        }
    }
}

/// The whole fault: map lookup, copy-on-write resolution in the map, then
/// [`fault_object`]. `privileged` is for the pageout path and the default
/// pager: they may use the reserved frames.
///
/// Generic over the frames and the machine (not `dyn`), here and below, so
/// the kernel's fault path is one inlined piece: calls through vtables and
/// the argument shuffling around them were a good part of a soft fault
/// where every ring-0 instruction is emulated.
pub fn vm_fault<F: FrameSource, M: FaultMachine>(
    map: &mut VmMap,
    objects: &mut Objects,
    frames: &mut F,
    mmu: &mut M,
    va: VirtAddr,
    access: VmProt,
    privileged: bool,
) -> FaultOutcome {
    // Once to find the entry; once more after a shadow was put in front.
    for _ in 0..2 {
        let Some(l) = map.lookup(va) else {
            return FaultOutcome::InvalidAddress;
        };
        let target = FaultTarget {
            object: l.object,
            offset: l.offset,
            prot: l.prot,
            needs_copy: l.needs_copy,
        };
        match fault_object(objects, frames, mmu, target, va, access, privileged) {
            FaultOutcome::NeedsCopy => {
                if let Err(e) = map.resolve_copy(va, objects) {
                    return FaultOutcome::from_error(e);
                }
            }
            o => return o,
        }
    }
    // resolve_copy clears needs_copy, so this is not reached.
    FaultOutcome::ResourceShortage
}

/// The fault below the map: finds or makes the page for `target` and maps
/// it at `va` in the faulting space.
pub fn fault_object<F: FrameSource, M: FaultMachine>(
    objects: &mut Objects,
    frames: &mut F,
    mmu: &mut M,
    target: FaultTarget,
    va: VirtAddr,
    access: VmProt,
    privileged: bool,
) -> FaultOutcome {
    let va = va.align_down(PAGE_SIZE);
    // x86 cannot map a page without read access, so every access needs it.
    let access = access.union(VmProt::READ);
    if !target.prot.contains(access) {
        return FaultOutcome::ProtectionFailure;
    }
    let write = access.contains(VmProt::WRITE);
    if write && target.needs_copy {
        return FaultOutcome::NeedsCopy;
    }
    let top = target.object;
    // `o` is the record of `obj`, the object the walk is at: each object
    // is looked up once.
    let mut o = match objects.get(top) {
        Ok(o) if target.offset.is_page_aligned() && target.offset.0 < o.size() => o,
        _ => return FaultOutcome::MemoryError,
    };
    if o.shadow().is_some() {
        // A shadow whose backing lost its other references absorbs it;
        // this keeps chains short as tasks that forked exit (cheap: a
        // count check).
        let _ = objects.collapse_merge_only(top, frames, mmu);
        o = match objects.get(top) {
            Ok(o) => o,
            Err(_) => return FaultOutcome::MemoryError,
        };
    }
    // Whether the top object is over a backing one (after the collapse);
    // nothing below changes it.
    let top_shadowed = o.shadow().is_some();

    let (mut obj, mut off) = (top, target.offset);
    loop {
        let shadow = o.shadow();
        if let Some(pid) = objects.pages.lookup(obj, off) {
            return found(
                objects,
                frames,
                mmu,
                target,
                va,
                access,
                privileged,
                obj,
                pid,
                shadow.is_some(),
            );
        }
        let ask = match o.kind() {
            ObjectKind::External(_) => true,
            ObjectKind::Internal => o.is_paged_out(off),
        };
        if ask {
            if o.pager_dead() {
                // Only what the default pager kept of it (double paging)
                // can still come back; the rest is an exception.
                if o.is_paged_out(off) {
                    return request(
                        objects,
                        obj,
                        off,
                        PagerPort::Default,
                        if obj == top { access } else { VmProt::READ },
                    );
                }
                return FaultOutcome::MemoryError;
            }
            if !o.pager_ready() {
                return FaultOutcome::Wait {
                    object: obj,
                    offset: off,
                };
            }
            let port = o.pager_port();
            let desired = if obj == top { access } else { VmProt::READ };
            return match mmu.page_in(obj, port, off, o.size(), desired) {
                PageIn::Later => request(objects, obj, off, port, desired),
                PageIn::Asked => match placeholder(objects, obj, off) {
                    Ok(_) => FaultOutcome::Wait {
                        object: obj,
                        offset: off,
                    },
                    // The answer will find no placeholder and make the
                    // page itself; this fault sees it when it comes.
                    Err(e) => FaultOutcome::from_error(e),
                },
                PageIn::Provided(frame) => paged_in(
                    objects,
                    frames,
                    mmu,
                    target,
                    va,
                    access,
                    privileged,
                    (obj, off, shadow.is_some()),
                    frame,
                ),
            };
        }
        match shadow {
            Some((b, boff)) => {
                let Some(next) = off.checked_add(boff.0) else {
                    break;
                };
                match objects.get(b) {
                    // A shadow larger than its backing window sees zeros.
                    Ok(bo) if next.0 < bo.size() => o = bo,
                    _ => break,
                }
                obj = b;
                off = next;
            }
            None => break,
        }
    }
    zero_fill(objects, frames, mmu, target, va, privileged, top_shadowed)
}

/// Makes a busy placeholder so concurrent faults wait for one request.
fn placeholder(objects: &mut Objects, obj: ObjectId, off: ObjectOffset) -> Result<PageId, VmError> {
    let pid = objects.pages.insert(obj, off, None)?;
    if let Some(p) = objects.pages.get_mut(pid) {
        p.busy = true;
        p.absent = true;
    }
    Ok(pid)
}

/// The placeholder, and the request its caller is to send.
fn request(
    objects: &mut Objects,
    obj: ObjectId,
    off: ObjectOffset,
    pager: PagerPort,
    desired_access: VmProt,
) -> FaultOutcome {
    if let Err(e) = placeholder(objects, obj, off) {
        return FaultOutcome::from_error(e);
    }
    FaultOutcome::Request {
        object: obj,
        pager,
        offset: off,
        length: PAGE_SIZE,
        desired_access,
    }
}

/// The pager answered the fault at once with the page at (`obj`, `off`)
/// in `frame`: it becomes resident as data_provided would make it, then
/// the fault goes on as for a resident page (`shadowed`: `obj` has a
/// backing object). Without room for the page record the data is given
/// up (a later fault asks again).
#[allow(clippy::too_many_arguments)] // the fault's whole context
fn paged_in<F: FrameSource, M: FaultMachine>(
    objects: &mut Objects,
    frames: &mut F,
    mmu: &mut M,
    target: FaultTarget,
    va: VirtAddr,
    access: VmProt,
    privileged: bool,
    (obj, off, shadowed): (ObjectId, ObjectOffset, bool),
    frame: PhysAddr,
) -> FaultOutcome {
    // The walk found no page at (obj, off) and nothing ran since.
    let pid = match objects
        .pages
        .insert_absent(obj, off, Some(frame), Queue::Active)
    {
        Ok(p) => p,
        Err(e) => {
            frames.free_frame(frame);
            return FaultOutcome::from_error(e);
        }
    };
    let at_top = obj == target.object;
    if at_top || !access.contains(VmProt::WRITE) {
        // A fresh page is clean, unlocked and not busy, so `found` would
        // only map it: read-only below the top or under copy.
        let mut prot = target.prot;
        if !at_top || target.needs_copy {
            prot = prot.without(VmProt::WRITE);
        }
        return map_page(objects, mmu, pid, va, frame, prot, Resolved::PagedIn);
    }
    // A write to a page of a backing object: copied up by `found`. On the
    // active queue whatever it makes of it.
    objects.pages.activate(pid);
    match found(
        objects, frames, mmu, target, va, access, privileged, obj, pid, shadowed,
    ) {
        FaultOutcome::Mapped {
            frame,
            prot,
            how: Resolved::Soft,
        } => FaultOutcome::Mapped {
            frame,
            prot,
            how: Resolved::PagedIn,
        },
        o => o,
    }
}

/// A new zero page in the top object (nothing below has data);
/// `shadowed`: the top object has a backing object.
fn zero_fill<F: FrameSource, M: FaultMachine>(
    objects: &mut Objects,
    frames: &mut F,
    mmu: &mut M,
    target: FaultTarget,
    va: VirtAddr,
    privileged: bool,
    shadowed: bool,
) -> FaultOutcome {
    let (pid, frame) = match new_page(objects, frames, target, privileged) {
        Ok(x) => x,
        Err(e) => return FaultOutcome::from_error(e),
    };
    if !frame.zeroed {
        mmu.zero_frame(frame.addr);
    }
    // Over a backing object a zero page is data (it hides the backing's
    // page, which may appear later), so it must be paged out, not dropped.
    if let Some(p) = objects.pages.get_mut(pid) {
        p.dirty = shadowed;
    }
    let mut prot = target.prot;
    if target.needs_copy {
        prot = prot.without(VmProt::WRITE);
    }
    map_page(
        objects,
        mmu,
        pid,
        va,
        frame.addr,
        prot,
        Resolved::ZeroFill {
            zeroed_by_kernel: !frame.zeroed,
        },
    )
}

fn map_page<M: FaultMachine>(
    objects: &mut Objects,
    mmu: &mut M,
    pid: PageId,
    va: VirtAddr,
    frame: PhysAddr,
    prot: VmProt,
    how: Resolved,
) -> FaultOutcome {
    if let Err(e) = mmu.enter(va, frame, prot) {
        return FaultOutcome::from_error(e);
    }
    objects.pages.activate(pid);
    FaultOutcome::Mapped { frame, prot, how }
}

/// The page is resident in `obj` (the top object or one below it).
#[allow(clippy::too_many_arguments)] // the fault's whole context
fn found<F: FrameSource, M: FaultMachine>(
    objects: &mut Objects,
    frames: &mut F,
    mmu: &mut M,
    target: FaultTarget,
    va: VirtAddr,
    access: VmProt,
    privileged: bool,
    obj: ObjectId,
    pid: PageId,
    obj_shadowed: bool,
) -> FaultOutcome {
    // The page's fields are read where needed, not the record copied.
    let Some(p) = objects.pages.get(pid) else {
        return FaultOutcome::MemoryError;
    };
    let at_top = obj == target.object;
    let write = access.contains(VmProt::WRITE);
    if p.error {
        // Reported once to the faults that waited; a later fault asks the
        // pager again.
        objects.pages.remove(pid);
        return FaultOutcome::MemoryError;
    }
    if p.busy {
        return FaultOutcome::Wait {
            object: obj,
            offset: p.offset,
        };
    }
    let (mut page_frame, offset) = (p.frame, p.offset);
    let (lock, unlock_requested, cleaning) = (p.lock, p.unlock_requested, p.cleaning);
    let mut how = Resolved::Soft;
    if p.absent {
        // The pager said data_unavailable: zero-fill in place.
        let frame = match objects.pages.alloc_frame(frames, privileged) {
            Ok(f) => f,
            Err(e) => return FaultOutcome::from_error(e),
        };
        if !frame.zeroed {
            mmu.zero_frame(frame.addr);
        }
        if let Some(q) = objects.pages.get_mut(pid) {
            q.frame = Some(frame.addr);
            q.absent = false;
            q.dirty = obj_shadowed;
            page_frame = q.frame;
        }
        how = Resolved::ZeroFill {
            zeroed_by_kernel: !frame.zeroed,
        };
    }
    let Some(frame) = page_frame else {
        return FaultOutcome::MemoryError;
    };
    // Access needed of this page: a write below the top only reads it.
    let need = if at_top {
        access
    } else {
        access.without(VmProt::WRITE)
    };
    let locked = lock.intersect(need);
    if !locked.is_empty() {
        if unlock_requested.contains(locked) {
            return FaultOutcome::Wait {
                object: obj,
                offset,
            };
        }
        let pager = match objects.get(obj) {
            Ok(o) => o.pager_port(),
            Err(_) => return FaultOutcome::MemoryError,
        };
        if let Some(q) = objects.pages.get_mut(pid) {
            q.unlock_requested = q.unlock_requested.union(locked);
        }
        return FaultOutcome::Unlock {
            object: obj,
            pager,
            offset,
            access: locked,
        };
    }
    if at_top || !write {
        if write && cleaning {
            // Write-protected until its data_write completes.
            return FaultOutcome::Wait {
                object: obj,
                offset,
            };
        }
        let mut prot = target.prot.intersect(allowed_by_lock(lock));
        if !at_top || target.needs_copy || cleaning {
            // A page of a backing object (or under copy, or being
            // written back) is only read through this mapping.
            prot = prot.without(VmProt::WRITE);
        }
        return map_page(objects, mmu, pid, va, frame, prot, how);
    }
    // Copy-on-write: copy the backing page up into the top object.
    let (npid, new) = match new_page(objects, frames, target, privileged) {
        Ok(x) => x,
        Err(e) => return FaultOutcome::from_error(e),
    };
    mmu.copy_frame(frame, new.addr);
    // Other spaces sharing the top object may map the backing page at
    // this offset; they must now see the copy, so drop every mapping of
    // the original (those that should still see it fault it back).
    mmu.page_protect(frame, VmProt::NONE);
    if let Some(q) = objects.pages.get_mut(npid) {
        q.dirty = true;
    }
    objects.pages.activate(pid);
    map_page(
        objects,
        mmu,
        npid,
        va,
        new.addr,
        target.prot,
        Resolved::CopyOnWrite { from: frame },
    )
}

/// A frame for `target`'s page, entered in the page table (the frame goes
/// back if the table refuses). The error is the small VmError, not the
/// outcome, so the result is passed in registers.
fn new_page<F: FrameSource>(
    objects: &mut Objects,
    frames: &mut F,
    target: FaultTarget,
    privileged: bool,
) -> Result<(PageId, Frame), VmError> {
    let frame = objects.pages.alloc_frame(frames, privileged)?;
    match objects
        .pages
        .insert(target.object, target.offset, Some(frame.addr))
    {
        Ok(p) => Ok((p, frame)),
        Err(e) => {
            frames.free_frame(frame.addr);
            Err(e)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vm::map::{DEFAULT_ENTRY_LIMIT, VmMap};
    use crate::vm::memory_object::Reply;
    use crate::vm::object::{PagerEntry, PagerRef};
    use crate::vm::page::FramePool;
    use crate::vm::pmap::{Pmap, SimMachine, SpaceHandle};
    use crate::vm::types::{Inheritance, ObjectRefs};

    /// One simulated space seen as the fault handler's machine.
    pub(crate) struct Sim<'a> {
        pub m: &'a mut SimMachine,
        pub s: SpaceHandle,
    }
    impl PhysMaps for Sim<'_> {
        fn page_protect(&mut self, frame: PhysAddr, prot: VmProt) {
            self.m.page_protect(frame, prot)
        }
        fn clear_referenced(&mut self, frame: PhysAddr) -> bool {
            self.m.clear_referenced(frame)
        }
        fn clear_modified(&mut self, frame: PhysAddr) -> bool {
            self.m.clear_modified(frame)
        }
    }
    impl FaultMachine for Sim<'_> {
        fn enter(&mut self, va: VirtAddr, frame: PhysAddr, prot: VmProt) -> Result<(), VmError> {
            self.m.pmap(self.s).enter(va, frame, prot)
        }
        fn mapped(&mut self, va: VirtAddr) -> bool {
            self.m.extract(self.s, va).is_some()
        }
        fn zero_frame(&mut self, frame: PhysAddr) {
            self.m.zero_frame(frame)
        }
        fn copy_frame(&mut self, src: PhysAddr, dst: PhysAddr) {
            self.m.copy_frame(src, dst)
        }
    }

    pub(crate) struct World {
        pub m: SimMachine,
        pub objs: Objects,
        pub pool: FramePool,
    }

    impl World {
        pub fn new(frames: u64) -> World {
            World {
                m: SimMachine::new(),
                objs: Objects::new(64, 256, 0),
                pool: FramePool::new(PhysAddr(0x100000), frames),
            }
        }
        pub fn fault_target(
            &mut self,
            s: SpaceHandle,
            target: FaultTarget,
            va: VirtAddr,
            access: VmProt,
        ) -> FaultOutcome {
            let mut sim = Sim { m: &mut self.m, s };
            fault_object(
                &mut self.objs,
                &mut self.pool,
                &mut sim,
                target,
                va,
                access,
                false,
            )
        }
        pub fn fault(
            &mut self,
            map: &mut VmMap,
            s: SpaceHandle,
            va: VirtAddr,
            access: VmProt,
        ) -> FaultOutcome {
            let mut sim = Sim { m: &mut self.m, s };
            vm_fault(
                map,
                &mut self.objs,
                &mut self.pool,
                &mut sim,
                va,
                access,
                false,
            )
        }
        /// Touches `va` as the task would, taking faults until it works
        /// (Err with the first outcome that is not Mapped).
        pub fn access(
            &mut self,
            map: &mut VmMap,
            s: SpaceHandle,
            va: VirtAddr,
            write: bool,
        ) -> Result<(), FaultOutcome> {
            let want = if write { VmProt::WRITE } else { VmProt::READ };
            for _ in 0..4 {
                if self.m.touch(s, va, write) {
                    return Ok(());
                }
                match self.fault(map, s, va, want) {
                    FaultOutcome::Mapped { .. } => {}
                    o => return Err(o),
                }
            }
            panic!("fault at {va:?} does not converge");
        }
        pub fn read_byte(&mut self, map: &mut VmMap, s: SpaceHandle, va: VirtAddr) -> u8 {
            self.access(map, s, va, false).unwrap();
            let mut b = [0u8];
            self.m.read_virt(s, va, &mut b).unwrap();
            b[0]
        }
        pub fn write_byte(&mut self, map: &mut VmMap, s: SpaceHandle, va: VirtAddr, v: u8) {
            self.access(map, s, va, true).unwrap();
            self.m.write_virt(s, va, &[v]).unwrap();
        }
        /// A frame filled with `fill`, as a pager's data_provided brings.
        pub fn filled_frame(&mut self, fill: u8) -> PhysAddr {
            let f = self.pool.alloc_frame().unwrap().addr;
            self.m.frame_mut(f).fill(fill);
            f
        }
        pub fn reap(&mut self) -> alloc::vec::Vec<crate::vm::object::ObjectAction> {
            self.objs.reap(&mut self.pool, &mut self.m).unwrap()
        }
    }

    pub(crate) fn va(p: u64) -> VirtAddr {
        VirtAddr(0x40_0000 + p * PAGE_SIZE)
    }
    fn off(p: u64) -> ObjectOffset {
        ObjectOffset(p * PAGE_SIZE)
    }
    const RW: VmProt = VmProt::DEFAULT;
    fn tgt(object: ObjectId, page: u64, prot: VmProt) -> FaultTarget {
        FaultTarget {
            object,
            offset: off(page),
            prot,
            needs_copy: false,
        }
    }
    pub(crate) fn new_map() -> VmMap {
        VmMap::new(
            VirtAddr(0x40_0000)..VirtAddr(0x4000_0000),
            DEFAULT_ENTRY_LIMIT,
        )
        .unwrap()
    }

    #[test]
    fn zero_fill_then_soft_fault() {
        let mut w = World::new(8);
        let s = w.m.new_space();
        let o = w.objs.create_internal(4 * PAGE_SIZE).unwrap();
        let r = w.fault_target(s, tgt(o, 1, RW), va(1), VmProt::READ);
        let FaultOutcome::Mapped { frame, prot, how } = r else {
            panic!("{r:?}")
        };
        // Fresh frames are known zero: nothing to do.
        assert_eq!(
            how,
            Resolved::ZeroFill {
                zeroed_by_kernel: false
            }
        );
        assert_eq!(prot, RW);
        assert_eq!(w.m.extract(s, va(1)), Some((frame, RW)));
        w.m.write_virt(s, va(1), b"x").unwrap();
        // The mapping is a cache: drop it and fault again — same page.
        w.m.pmap(s).remove(va(0), va(4));
        let r = w.fault_target(s, tgt(o, 1, RW), va(1), VmProt::WRITE);
        assert_eq!(
            r,
            FaultOutcome::Mapped {
                frame,
                prot: RW,
                how: Resolved::Soft
            }
        );
        let mut b = [0u8];
        w.m.read_virt(s, va(1), &mut b).unwrap();
        assert_eq!(&b, b"x");
        // Protection is the entry's.
        assert_eq!(
            w.fault_target(s, tgt(o, 2, VmProt::READ), va(2), VmProt::WRITE),
            FaultOutcome::ProtectionFailure
        );
        assert_eq!(
            w.fault_target(s, tgt(o, 4, RW), va(4), VmProt::READ),
            FaultOutcome::MemoryError,
            "past the object's end"
        );
    }

    #[test]
    fn recycled_frame_is_zeroed_by_kernel() {
        let mut w = World::new(1);
        let s = w.m.new_space();
        let f = w.pool.alloc_frame().unwrap().addr;
        w.m.frame_mut(f).fill(0xee);
        w.pool.free_frame(f);
        let o = w.objs.create_internal(PAGE_SIZE).unwrap();
        let r = w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ);
        assert_eq!(
            r,
            FaultOutcome::Mapped {
                frame: f,
                prot: RW,
                how: Resolved::ZeroFill {
                    zeroed_by_kernel: true
                }
            }
        );
        let mut b = [1u8; 8];
        w.m.read_virt(s, va(0), &mut b).unwrap();
        assert_eq!(b, [0; 8]);
    }

    fn external(w: &mut World, pages: u64) -> ObjectId {
        let PagerEntry::New(o) = w.objs.enter_pager(PagerRef(7), pages * PAGE_SIZE).unwrap() else {
            panic!()
        };
        o
    }

    /// The page_in calls a machine got: object, pager, offset, size, desired.
    type PageIns = alloc::vec::Vec<(ObjectId, PagerPort, ObjectOffset, u64, VmProt)>;

    /// The simulated machine with a pager it can ask from inside the fault
    /// handler, answering as told; the calls it got are kept.
    struct Asking<'a> {
        sim: Sim<'a>,
        answer: PageIn,
        asked: PageIns,
    }
    impl PhysMaps for Asking<'_> {
        fn page_protect(&mut self, frame: PhysAddr, prot: VmProt) {
            self.sim.page_protect(frame, prot)
        }
        fn clear_referenced(&mut self, frame: PhysAddr) -> bool {
            self.sim.clear_referenced(frame)
        }
        fn clear_modified(&mut self, frame: PhysAddr) -> bool {
            self.sim.clear_modified(frame)
        }
    }
    impl FaultMachine for Asking<'_> {
        fn enter(&mut self, va: VirtAddr, frame: PhysAddr, prot: VmProt) -> Result<(), VmError> {
            self.sim.enter(va, frame, prot)
        }
        fn mapped(&mut self, va: VirtAddr) -> bool {
            self.sim.mapped(va)
        }
        fn zero_frame(&mut self, frame: PhysAddr) {
            self.sim.zero_frame(frame)
        }
        fn copy_frame(&mut self, src: PhysAddr, dst: PhysAddr) {
            self.sim.copy_frame(src, dst)
        }
        fn page_in(
            &mut self,
            object: ObjectId,
            pager: PagerPort,
            offset: ObjectOffset,
            size: u64,
            desired: VmProt,
        ) -> PageIn {
            self.asked.push((object, pager, offset, size, desired));
            self.answer
        }
    }

    impl World {
        /// A fault whose machine asks the pager itself and gets `answer`.
        fn fault_asking(
            &mut self,
            s: SpaceHandle,
            target: FaultTarget,
            va: VirtAddr,
            access: VmProt,
            answer: PageIn,
        ) -> (FaultOutcome, PageIns) {
            let mut m = Asking {
                sim: Sim { m: &mut self.m, s },
                answer,
                asked: alloc::vec::Vec::new(),
            };
            let r = fault_object(
                &mut self.objs,
                &mut self.pool,
                &mut m,
                target,
                va,
                access,
                false,
            );
            (r, m.asked)
        }
    }

    #[test]
    fn a_pager_answering_at_once_has_the_page_mapped_in_one_pass() {
        let mut w = World::new(8);
        let s = w.m.new_space();
        let o = external(&mut w, 4);
        w.objs.set_pager_ready(o).unwrap();
        let f = w.filled_frame(b'q');
        let (r, asked) = w.fault_asking(s, tgt(o, 2, RW), va(2), VmProt::READ, PageIn::Provided(f));
        assert_eq!(
            asked,
            [(
                o,
                PagerPort::Pager(PagerRef(7)),
                off(2),
                4 * PAGE_SIZE,
                VmProt::READ
            )]
        );
        assert_eq!(
            r,
            FaultOutcome::Mapped {
                frame: f,
                prot: RW,
                how: Resolved::PagedIn
            }
        );
        let mut b = [0u8];
        w.m.read_virt(s, va(2), &mut b).unwrap();
        assert_eq!(&b, b"q");
        // Resident as data_provided makes a page: clean, unlocked, active.
        let pid = w.objs.pages.lookup(o, off(2)).expect("resident");
        let p = w.objs.pages.get(pid).unwrap();
        assert!(!p.busy && !p.absent && !p.dirty && p.lock.is_empty());
        assert_eq!(p.queue(), crate::vm::page::Queue::Active);
        // The next fault on it (another space) is soft and asks no one.
        let t = w.m.new_space();
        let (r, asked) = w.fault_asking(t, tgt(o, 2, RW), va(2), VmProt::READ, PageIn::Later);
        assert!(asked.is_empty());
        assert!(
            matches!(r, FaultOutcome::Mapped { frame, how: Resolved::Soft, .. } if frame == f),
            "{r:?}"
        );
    }

    #[test]
    fn a_pager_asked_but_not_yet_answering_leaves_a_placeholder_to_wait_on() {
        let mut w = World::new(8);
        let s = w.m.new_space();
        let o = external(&mut w, 4);
        w.objs.set_pager_ready(o).unwrap();
        let (r, asked) = w.fault_asking(s, tgt(o, 1, RW), va(1), VmProt::WRITE, PageIn::Asked);
        assert_eq!(asked.len(), 1);
        // (x86 writes need read access too.)
        assert_eq!(asked[0].4, VmProt::READ.union(VmProt::WRITE));
        let wait = FaultOutcome::Wait {
            object: o,
            offset: off(1),
        };
        assert_eq!(r, wait);
        // Asked once: a concurrent fault waits for that answer.
        let (r, asked) = w.fault_asking(s, tgt(o, 1, RW), va(1), VmProt::READ, PageIn::Asked);
        assert!(asked.is_empty());
        assert_eq!(r, wait);
        let f = w.filled_frame(b'w');
        let rep = w
            .objs
            .data_provided(o, off(1), &[f], VmProt::NONE, false, &mut w.pool)
            .unwrap();
        assert!(rep.woken);
        assert!(matches!(
            w.fault_target(s, tgt(o, 1, RW), va(1), VmProt::WRITE),
            FaultOutcome::Mapped { frame, how: Resolved::Soft, .. } if frame == f
        ));
    }

    #[test]
    fn a_page_paged_in_below_a_shadow_is_copied_up_for_a_write() {
        let mut w = World::new(8);
        let s = w.m.new_space();
        let base = external(&mut w, 1);
        w.objs.set_pager_ready(base).unwrap();
        w.objs.reference(base);
        let top = w.objs.shadow(base, off(0), PAGE_SIZE).unwrap();
        let f = w.filled_frame(b'b');
        let (r, asked) = w.fault_asking(
            s,
            tgt(top, 0, RW),
            va(0),
            VmProt::WRITE,
            PageIn::Provided(f),
        );
        // The backing object's pager is asked for reading only.
        assert_eq!(
            asked,
            [(
                base,
                PagerPort::Pager(PagerRef(7)),
                off(0),
                PAGE_SIZE,
                VmProt::READ
            )]
        );
        assert!(
            matches!(r, FaultOutcome::Mapped { how: Resolved::CopyOnWrite { from }, prot: RW, .. } if from == f),
            "{r:?}"
        );
        w.m.write_virt(s, va(0), b"t").unwrap();
        // The backing page keeps the pager's data and stays resident.
        let mut b = [0u8];
        w.m.read_phys(f, &mut b);
        assert_eq!(&b, b"b");
        assert!(w.objs.pages.lookup(base, off(0)).is_some());
    }

    #[test]
    fn data_paged_in_without_room_for_its_record_is_given_back() {
        let mut w = World::new(8);
        w.objs = Objects::new(64, 1, 0);
        let s = w.m.new_space();
        let o = external(&mut w, 2);
        w.objs.set_pager_ready(o).unwrap();
        w.objs.pages.insert(o, off(1), None).unwrap();
        let free = w.pool.free_count();
        let f = w.filled_frame(b'x');
        let (r, _) = w.fault_asking(s, tgt(o, 0, RW), va(0), VmProt::READ, PageIn::Provided(f));
        assert_eq!(r, FaultOutcome::ResourceShortage);
        assert_eq!(w.pool.free_count(), free, "the frame went back");
        assert!(w.objs.pages.lookup(o, off(0)).is_none());
    }

    #[test]
    fn external_request_provided_then_mapped() {
        let mut w = World::new(8);
        let s = w.m.new_space();
        let o = external(&mut w, 4);
        // Not initialised yet: wait.
        assert_eq!(
            w.fault_target(s, tgt(o, 2, RW), va(2), VmProt::READ),
            FaultOutcome::Wait {
                object: o,
                offset: off(2)
            }
        );
        w.objs.set_pager_ready(o).unwrap();
        let r = w.fault_target(s, tgt(o, 2, RW), va(2), VmProt::READ);
        assert_eq!(
            r,
            FaultOutcome::Request {
                object: o,
                pager: PagerPort::Pager(PagerRef(7)),
                offset: off(2),
                length: PAGE_SIZE,
                desired_access: VmProt::READ
            }
        );
        // A concurrent fault on the same page waits for that request.
        assert_eq!(
            w.fault_target(s, tgt(o, 2, RW), va(2), VmProt::WRITE),
            FaultOutcome::Wait {
                object: o,
                offset: off(2)
            }
        );
        let f = w.filled_frame(b'p');
        let rep = w
            .objs
            .data_provided(o, off(2), &[f], VmProt::NONE, false, &mut w.pool)
            .unwrap();
        assert_eq!(
            rep,
            Reply {
                pages: 1,
                discarded: 0,
                woken: true
            }
        );
        let r = w.fault_target(s, tgt(o, 2, RW), va(2), VmProt::READ);
        assert_eq!(
            r,
            FaultOutcome::Mapped {
                frame: f,
                prot: RW,
                how: Resolved::Soft
            }
        );
        let mut b = [0u8; 3];
        w.m.read_virt(s, VirtAddr(va(2).0 + 100), &mut b).unwrap();
        assert_eq!(&b, b"ppp");
    }

    #[test]
    fn data_provided_more_than_asked_and_duplicates() {
        let mut w = World::new(16);
        let s = w.m.new_space();
        let o = external(&mut w, 3);
        w.objs.set_pager_ready(o).unwrap();
        assert!(matches!(
            w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ),
            FaultOutcome::Request { .. }
        ));
        let frames: alloc::vec::Vec<PhysAddr> = (0..4).map(|i| w.filled_frame(b'a' + i)).collect();
        let free = w.pool.free_count();
        // Pages 0..2 taken (1 and 2 unasked: read-ahead), 3 is past the end.
        let rep = w
            .objs
            .data_provided(o, off(0), &frames, VmProt::NONE, false, &mut w.pool)
            .unwrap();
        assert_eq!(
            rep,
            Reply {
                pages: 3,
                discarded: 1,
                woken: true
            }
        );
        assert_eq!(w.pool.free_count(), free + 1);
        let r = w.fault_target(s, tgt(o, 1, RW), va(1), VmProt::READ);
        assert_eq!(
            r,
            FaultOutcome::Mapped {
                frame: frames[1],
                prot: RW,
                how: Resolved::Soft
            }
        );
        // Data for a page already present is ignored (frame given back).
        let again = w.filled_frame(b'z');
        let rep = w
            .objs
            .data_provided(o, off(1), &[again], VmProt::NONE, false, &mut w.pool)
            .unwrap();
        assert_eq!(
            rep,
            Reply {
                pages: 0,
                discarded: 1,
                woken: false
            }
        );
        let mut b = [0u8];
        w.m.read_virt(s, va(1), &mut b).unwrap();
        assert_eq!(&b, b"b");
        // Bad input is refused, nothing consumed.
        assert_eq!(
            w.objs.data_provided(
                o,
                ObjectOffset(5),
                &[again],
                VmProt::NONE,
                false,
                &mut w.pool
            ),
            Err(VmError::InvalidArgument)
        );
        assert_eq!(
            w.objs.data_provided(
                o,
                ObjectOffset(!(PAGE_SIZE - 1)),
                &[again, again],
                VmProt::NONE,
                false,
                &mut w.pool
            ),
            Err(VmError::InvalidArgument)
        );
    }

    #[test]
    fn data_unavailable_zero_fills() {
        let mut w = World::new(8);
        let s = w.m.new_space();
        let o = external(&mut w, 2);
        w.objs.set_pager_ready(o).unwrap();
        assert!(matches!(
            w.fault_target(s, tgt(o, 1, RW), va(1), VmProt::WRITE),
            FaultOutcome::Request { desired_access, .. } if desired_access == RW
        ));
        let rep = w.objs.data_unavailable(o, off(0), 2 * PAGE_SIZE).unwrap();
        assert!(rep.woken && rep.pages == 1);
        let r = w.fault_target(s, tgt(o, 1, RW), va(1), VmProt::WRITE);
        assert!(
            matches!(
                r,
                FaultOutcome::Mapped {
                    prot: RW,
                    how: Resolved::ZeroFill { .. },
                    ..
                }
            ),
            "{r:?}"
        );
        let mut b = [9u8; 4];
        w.m.read_virt(s, va(1), &mut b).unwrap();
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn pager_lock_then_unlock() {
        let mut w = World::new(8);
        let s = w.m.new_space();
        let o = external(&mut w, 1);
        w.objs.set_pager_ready(o).unwrap();
        let _ = w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ);
        let f = w.filled_frame(1);
        w.objs
            .data_provided(o, off(0), &[f], VmProt::WRITE, false, &mut w.pool)
            .unwrap();
        // Reads are allowed, mapped without write.
        let r = w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ);
        assert_eq!(
            r,
            FaultOutcome::Mapped {
                frame: f,
                prot: VmProt::READ,
                how: Resolved::Soft
            }
        );
        assert!(!w.m.touch(s, va(0), true));
        let r = w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::WRITE);
        assert_eq!(
            r,
            FaultOutcome::Unlock {
                object: o,
                pager: PagerPort::Pager(PagerRef(7)),
                offset: off(0),
                access: VmProt::WRITE
            }
        );
        // Asked once: the next writer waits.
        assert_eq!(
            w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::WRITE),
            FaultOutcome::Wait {
                object: o,
                offset: off(0)
            }
        );
        // The pager's answer: unlock.
        let rep = w
            .objs
            .data_lock(o, off(0), PAGE_SIZE, VmProt::NONE, &mut w.m)
            .unwrap();
        assert!(rep.woken);
        let r = w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::WRITE);
        assert_eq!(
            r,
            FaultOutcome::Mapped {
                frame: f,
                prot: RW,
                how: Resolved::Soft
            }
        );
        assert!(w.m.touch(s, va(0), true));
        // Locking again lowers the existing mapping at once.
        w.objs
            .data_lock(o, off(0), PAGE_SIZE, VmProt::WRITE, &mut w.m)
            .unwrap();
        assert_eq!(w.m.extract(s, va(0)), Some((f, VmProt::READ)));
        w.objs
            .data_lock(o, off(0), PAGE_SIZE, VmProt::READ, &mut w.m)
            .unwrap();
        assert_eq!(w.m.extract(s, va(0)), None);
        assert!(matches!(
            w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ),
            FaultOutcome::Unlock {
                access: VmProt::READ,
                ..
            }
        ));
    }

    #[test]
    fn data_error_and_dead_pager() {
        let mut w = World::new(8);
        let s = w.m.new_space();
        let o = external(&mut w, 2);
        w.objs.set_pager_ready(o).unwrap();
        let _ = w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ);
        assert!(w.objs.data_error(o, off(0), PAGE_SIZE).unwrap().woken);
        assert_eq!(
            w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ),
            FaultOutcome::MemoryError
        );
        // Reported once; a new fault asks again.
        assert!(matches!(
            w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ),
            FaultOutcome::Request { .. }
        ));
        assert!(w.objs.pager_died(o).unwrap().woken);
        assert_eq!(
            w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ),
            FaultOutcome::MemoryError
        );
        assert_eq!(
            w.fault_target(s, tgt(o, 1, RW), va(1), VmProt::READ),
            FaultOutcome::MemoryError
        );
    }

    #[test]
    fn copy_on_write_after_fork_then_collapse() {
        let mut w = World::new(32);
        let ps = w.m.new_space();
        let cs = w.m.new_space();
        let mut parent = new_map();
        let o = w.objs.create_internal(2 * PAGE_SIZE).unwrap();
        parent
            .allocate(
                Some(va(0)),
                2 * PAGE_SIZE,
                o,
                off(0),
                RW,
                VmProt::ALL,
                Inheritance::Copy,
                false,
                &mut w.objs,
            )
            .unwrap();
        w.write_byte(&mut parent, ps, va(0), b'A');
        w.write_byte(&mut parent, ps, va(1), b'a');
        let mut child = parent
            .fork(parent.range(), &mut w.objs, &mut w.m.pmap(ps))
            .unwrap();
        assert_eq!(w.objs.get(o).unwrap().refs(), 2);
        // Both read the shared page without copying.
        assert_eq!(w.read_byte(&mut child, cs, va(0)), b'A');
        let shared = w.m.extract(cs, va(0)).unwrap().0;
        assert_eq!(w.m.extract(ps, va(0)).unwrap().0, shared);
        assert_eq!(w.m.extract(cs, va(0)).unwrap().1, VmProt::READ);
        // Parent writes: a shadow for the parent, the page copied up.
        assert!(!w.m.touch(ps, va(0), true));
        let r = w.fault(&mut parent, ps, va(0), VmProt::WRITE);
        assert!(
            matches!(r, FaultOutcome::Mapped { how: Resolved::CopyOnWrite { from }, .. } if from == shared),
            "{r:?}"
        );
        w.m.write_virt(ps, va(0), b"B").unwrap();
        assert_eq!(w.read_byte(&mut child, cs, va(0)), b'A');
        w.write_byte(&mut child, cs, va(0), b'C');
        assert_eq!(w.read_byte(&mut parent, ps, va(0)), b'B');
        assert_eq!(w.read_byte(&mut child, cs, va(0)), b'C');
        assert_eq!(w.read_byte(&mut parent, ps, va(1)), b'a');
        assert_eq!(w.read_byte(&mut child, cs, va(1)), b'a');
        let sp = parent.lookup(va(0)).unwrap().object;
        assert_eq!(w.objs.get(sp).unwrap().shadow(), Some((o, off(0))));
        let count = w.objs.count();
        assert_eq!(count, 3);

        // The child dies: o is left referenced only by the parent's shadow.
        child.clear(&mut w.objs, &mut w.m.pmap(cs));
        assert!(w.reap().is_empty());
        assert_eq!(w.objs.get(o).unwrap().refs(), 1);
        // The next fault through the shadow collapses it: o's page 1 moves
        // up, page 0 (hidden by the parent's copy) is freed.
        w.m.pmap(ps).remove(va(0), va(2));
        assert_eq!(w.read_byte(&mut parent, ps, va(1)), b'a');
        assert_eq!(w.objs.get(sp).unwrap().shadow(), None);
        assert!(w.objs.get(o).is_err(), "collapsed away");
        assert_eq!(w.objs.count(), 1);
        assert_eq!(w.objs.pages.resident_count(), 2);
        assert_eq!(w.read_byte(&mut parent, ps, va(0)), b'B');
        // The moved page is now the top object's own: writing it needs no copy.
        let r = w.fault(&mut parent, ps, va(1), VmProt::WRITE);
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
        // Everything is freed when the parent goes too.
        parent.clear(&mut w.objs, &mut w.m.pmap(ps));
        assert!(w.reap().is_empty());
        assert_eq!(w.objs.count(), 0);
        assert_eq!(w.objs.pages.resident_count(), 0);
        assert_eq!(w.pool.free_count(), 32);
    }

    #[test]
    fn shared_object_sees_copy_up() {
        // Two spaces share a top object over a backing one; a write by one
        // must be seen by the other even though it had mapped the backing
        // page.
        let mut w = World::new(16);
        let (a, b) = (w.m.new_space(), w.m.new_space());
        let base = w.objs.create_internal(PAGE_SIZE).unwrap();
        w.objs.reference(base);
        let top = w.objs.shadow(base, off(0), PAGE_SIZE).unwrap();
        let f = w.objs.pages.alloc_frame(&mut w.pool, false).unwrap().addr;
        w.m.frame_mut(f).fill(b'o');
        let pid = w.objs.pages.insert(base, off(0), Some(f)).unwrap();
        w.objs.pages.activate(pid);
        assert!(matches!(
            w.fault_target(a, tgt(top, 0, RW), va(0), VmProt::READ),
            FaultOutcome::Mapped { .. }
        ));
        assert!(matches!(
            w.fault_target(b, tgt(top, 0, RW), va(0), VmProt::READ),
            FaultOutcome::Mapped { .. }
        ));
        assert_eq!(w.m.extract(b, va(0)), Some((f, VmProt::READ)));
        assert!(matches!(
            w.fault_target(a, tgt(top, 0, RW), va(0), VmProt::WRITE),
            FaultOutcome::Mapped {
                how: Resolved::CopyOnWrite { .. },
                ..
            }
        ));
        w.m.write_virt(a, va(0), b"n").unwrap();
        assert_eq!(
            w.m.extract(b, va(0)),
            None,
            "stale mapping of the backing page dropped"
        );
        assert!(matches!(
            w.fault_target(b, tgt(top, 0, RW), va(0), VmProt::READ),
            FaultOutcome::Mapped { .. }
        ));
        let mut x = [0u8];
        w.m.read_virt(b, va(0), &mut x).unwrap();
        assert_eq!(&x, b"n");
        // The base is still o for its other holder.
        w.m.read_phys(f, &mut x);
        assert_eq!(&x, b"o");
    }

    #[test]
    fn bypass_backing_hidden_by_shadow() {
        let mut w = World::new(16);
        let s = w.m.new_space();
        // bottom <- mid <- top, mid also referenced elsewhere; mid has
        // page 0, bottom page 1.
        let bottom = w.objs.create_internal(2 * PAGE_SIZE).unwrap();
        let mid = w.objs.shadow(bottom, off(0), 2 * PAGE_SIZE).unwrap();
        w.objs.reference(mid);
        let top = w.objs.shadow(mid, off(0), 2 * PAGE_SIZE).unwrap();
        for (o, p) in [(mid, 0), (bottom, 1)] {
            let f = w.objs.pages.alloc_frame(&mut w.pool, false).unwrap().addr;
            let pid = w.objs.pages.insert(o, off(p), Some(f)).unwrap();
            w.objs.pages.activate(pid);
        }
        assert!(
            !w.objs.collapse(top, &mut w.pool, &mut w.m).unwrap(),
            "mid's page is visible"
        );
        assert!(matches!(
            w.fault_target(s, tgt(top, 0, RW), va(0), VmProt::WRITE),
            FaultOutcome::Mapped {
                how: Resolved::CopyOnWrite { .. },
                ..
            }
        ));
        // Now top hides all of mid: skip it; bottom's page 1 stays visible.
        assert!(w.objs.collapse(top, &mut w.pool, &mut w.m).unwrap());
        assert_eq!(w.objs.get(top).unwrap().shadow(), Some((bottom, off(0))));
        assert_eq!(w.objs.get(mid).unwrap().refs(), 1);
        assert_eq!(w.objs.get(bottom).unwrap().refs(), 2);
        assert!(!w.objs.collapse(top, &mut w.pool, &mut w.m).unwrap());
    }

    #[test]
    fn resource_shortage_and_reserve() {
        let mut w = World::new(2);
        w.objs = Objects::new(64, 256, 1);
        let s = w.m.new_space();
        let o = w.objs.create_internal(4 * PAGE_SIZE).unwrap();
        assert!(matches!(
            w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ),
            FaultOutcome::Mapped { .. }
        ));
        // One frame left, and it is the reserve.
        assert_eq!(
            w.fault_target(s, tgt(o, 1, RW), va(1), VmProt::READ),
            FaultOutcome::ResourceShortage
        );
        let mut sim = Sim { m: &mut w.m, s };
        let r = fault_object(
            &mut w.objs,
            &mut w.pool,
            &mut sim,
            tgt(o, 1, RW),
            va(1),
            VmProt::READ,
            true,
        );
        assert!(
            matches!(r, FaultOutcome::Mapped { .. }),
            "the default pager may use it"
        );
        assert_eq!(
            w.fault_target(s, tgt(o, 2, RW), va(2), VmProt::READ),
            FaultOutcome::ResourceShortage
        );
        // Page limit.
        let mut w = World::new(8);
        w.objs = Objects::new(64, 1, 0);
        let s = w.m.new_space();
        let o = w.objs.create_internal(4 * PAGE_SIZE).unwrap();
        assert!(matches!(
            w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ),
            FaultOutcome::Mapped { .. }
        ));
        assert_eq!(
            w.fault_target(s, tgt(o, 1, RW), va(1), VmProt::READ),
            FaultOutcome::ResourceShortage
        );
        assert_eq!(w.pool.free_count(), 7, "frame given back");
        // A page table that cannot grow.
        let mut w = World::new(8);
        let s = w.m.new_space();
        w.m.set_table_limit(s, Some(0));
        let o = w.objs.create_internal(PAGE_SIZE).unwrap();
        assert_eq!(
            w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ),
            FaultOutcome::ResourceShortage
        );
    }

    #[test]
    fn stale_and_unmapped() {
        let mut w = World::new(8);
        let s = w.m.new_space();
        let o = w.objs.create_internal(PAGE_SIZE).unwrap();
        w.objs.release(o);
        w.reap();
        assert_eq!(
            w.fault_target(s, tgt(o, 0, RW), va(0), VmProt::READ),
            FaultOutcome::MemoryError
        );
        let mut map = new_map();
        assert_eq!(
            w.fault(&mut map, s, va(0), VmProt::READ),
            FaultOutcome::InvalidAddress
        );
    }

    mod model {
        //! Every task's view of memory against a model: each mapped page
        //! names a cell; Share makes two tasks name one cell, Copy gives
        //! the child a new cell holding the value at fork time.
        use super::*;
        use alloc::collections::BTreeMap;
        use alloc::vec::Vec;
        use proptest::prelude::*;

        const PAGES: u64 = 12;

        #[derive(Clone, Debug)]
        enum Op {
            Allocate {
                task: usize,
                page: u64,
                n: u64,
            },
            Write {
                task: usize,
                page: u64,
                slot: usize,
                val: u8,
            },
            Read {
                task: usize,
                page: u64,
            },
            Protect {
                task: usize,
                page: u64,
                n: u64,
                write: bool,
            },
            Inherit {
                task: usize,
                page: u64,
                n: u64,
                inh: Inheritance,
            },
            Fork {
                task: usize,
            },
            Deallocate {
                task: usize,
                page: u64,
                n: u64,
            },
            Exit {
                task: usize,
            },
        }

        fn op() -> impl Strategy<Value = Op> {
            let t = 0usize..4;
            let p = 0..PAGES;
            let n = 1u64..4;
            let inh = prop_oneof![
                Just(Inheritance::Share),
                Just(Inheritance::Copy),
                Just(Inheritance::None)
            ];
            prop_oneof![
                2 => (t.clone(), p.clone(), n.clone()).prop_map(|(task, page, n)| Op::Allocate { task, page, n }),
                4 => (t.clone(), p.clone(), 0usize..2, any::<u8>()).prop_map(|(task, page, slot, val)| Op::Write { task, page, slot, val }),
                3 => (t.clone(), p.clone()).prop_map(|(task, page)| Op::Read { task, page }),
                1 => (t.clone(), p.clone(), n.clone(), any::<bool>()).prop_map(|(task, page, n, write)| Op::Protect { task, page, n, write }),
                1 => (t.clone(), p.clone(), n.clone(), inh).prop_map(|(task, page, n, inh)| Op::Inherit { task, page, n, inh }),
                2 => t.clone().prop_map(|task| Op::Fork { task }),
                1 => (t.clone(), p.clone(), n).prop_map(|(task, page, n)| Op::Deallocate { task, page, n }),
                1 => t.prop_map(|task| Op::Exit { task }),
            ]
        }

        #[derive(Clone, Copy, Debug)]
        struct PageModel {
            cell: usize,
            write: bool,
            inh: Inheritance,
        }

        struct Task {
            map: VmMap,
            space: SpaceHandle,
            pages: BTreeMap<u64, PageModel>,
        }

        /// Two values per page, so a copy-up must keep the one not written.
        fn slot_va(page: u64, slot: usize) -> VirtAddr {
            VirtAddr(va(page).0 + slot as u64 * (PAGE_SIZE / 2))
        }

        fn run(ops: Vec<Op>) {
            let mut w = World::new(4096);
            w.objs = Objects::new(512, 4096, 0);
            let mut cells: Vec<[u8; 2]> = Vec::new();
            let space = w.m.new_space();
            let mut tasks: Vec<Task> = alloc::vec![Task {
                map: new_map(),
                space,
                pages: BTreeMap::new()
            }];
            for op in ops {
                match op {
                    Op::Allocate { task, page, n } => {
                        let Some(t) = tasks.get_mut(task) else {
                            continue;
                        };
                        let n = n.min(PAGES - page);
                        let free = (page..page + n).all(|p| !t.pages.contains_key(&p));
                        let o = w.objs.create_internal(n * PAGE_SIZE).unwrap();
                        let r = t.map.allocate(
                            Some(va(page)),
                            n * PAGE_SIZE,
                            o,
                            off(0),
                            RW,
                            VmProt::ALL,
                            Inheritance::Copy,
                            false,
                            &mut w.objs,
                        );
                        assert_eq!(r.is_ok(), free, "{r:?}");
                        if r.is_err() {
                            w.objs.release(o);
                            continue;
                        }
                        for p in page..page + n {
                            cells.push([0; 2]);
                            t.pages.insert(
                                p,
                                PageModel {
                                    cell: cells.len() - 1,
                                    write: true,
                                    inh: Inheritance::Copy,
                                },
                            );
                        }
                    }
                    Op::Write {
                        task,
                        page,
                        slot,
                        val,
                    } => {
                        let Some(t) = tasks.get_mut(task) else {
                            continue;
                        };
                        let r = w.access(&mut t.map, t.space, va(page), true);
                        match t.pages.get(&page) {
                            None => assert_eq!(r, Err(FaultOutcome::InvalidAddress)),
                            Some(pm) if !pm.write => {
                                assert_eq!(r, Err(FaultOutcome::ProtectionFailure))
                            }
                            Some(pm) => {
                                assert_eq!(r, Ok(()));
                                w.m.write_virt(t.space, slot_va(page, slot), &[val])
                                    .unwrap();
                                cells[pm.cell][slot] = val;
                            }
                        }
                    }
                    Op::Read { task, page } => {
                        let Some(t) = tasks.get_mut(task) else {
                            continue;
                        };
                        check(&mut w, t, &cells, page);
                    }
                    Op::Protect {
                        task,
                        page,
                        n,
                        write,
                    } => {
                        let Some(t) = tasks.get_mut(task) else {
                            continue;
                        };
                        let n = n.min(PAGES - page);
                        let all = (page..page + n).all(|p| t.pages.contains_key(&p));
                        let prot = if write { RW } else { VmProt::READ };
                        let r = t.map.protect(
                            va(page),
                            n * PAGE_SIZE,
                            false,
                            prot,
                            &mut w.objs,
                            &mut w.m.pmap(t.space),
                        );
                        assert_eq!(r.is_ok(), all, "{r:?}");
                        if all {
                            for p in page..page + n {
                                if let Some(pm) = t.pages.get_mut(&p) {
                                    pm.write = write;
                                }
                            }
                        }
                    }
                    Op::Inherit { task, page, n, inh } => {
                        let Some(t) = tasks.get_mut(task) else {
                            continue;
                        };
                        let n = n.min(PAGES - page);
                        t.map
                            .inherit(va(page), n * PAGE_SIZE, inh, &mut w.objs)
                            .unwrap();
                        for p in page..page + n {
                            if let Some(pm) = t.pages.get_mut(&p) {
                                pm.inh = inh;
                            }
                        }
                    }
                    Op::Fork { task } => {
                        if tasks.len() >= 4 || task >= tasks.len() {
                            continue;
                        }
                        // A copy of a region once shared is not a snapshot
                        // (map.rs's documented limit): keep such regions
                        // shared so the model stays exact.
                        let t = &mut tasks[task];
                        let shared: Vec<(VirtAddr, u64)> = t
                            .map
                            .iter()
                            .filter(|r| r.shared && r.inheritance == Inheritance::Copy)
                            .map(|r| (r.start, r.size()))
                            .collect();
                        for (start, size) in shared {
                            t.map
                                .inherit(start, size, Inheritance::Share, &mut w.objs)
                                .unwrap();
                            for p in (start.0 - va(0).0) / PAGE_SIZE
                                ..(start.0 - va(0).0 + size) / PAGE_SIZE
                            {
                                if let Some(pm) = t.pages.get_mut(&p) {
                                    pm.inh = Inheritance::Share;
                                }
                            }
                        }
                        let range = t.map.range();
                        let child = t
                            .map
                            .fork(range, &mut w.objs, &mut w.m.pmap(t.space))
                            .unwrap();
                        let mut pages = BTreeMap::new();
                        for (&p, pm) in &t.pages {
                            match pm.inh {
                                Inheritance::None => {}
                                Inheritance::Share => {
                                    pages.insert(p, *pm);
                                }
                                Inheritance::Copy => {
                                    cells.push(cells[pm.cell]);
                                    pages.insert(
                                        p,
                                        PageModel {
                                            cell: cells.len() - 1,
                                            ..*pm
                                        },
                                    );
                                }
                            }
                        }
                        let space = w.m.new_space();
                        tasks.push(Task {
                            map: child,
                            space,
                            pages,
                        });
                    }
                    Op::Deallocate { task, page, n } => {
                        let Some(t) = tasks.get_mut(task) else {
                            continue;
                        };
                        let n = n.min(PAGES - page);
                        t.map
                            .deallocate(
                                va(page),
                                n * PAGE_SIZE,
                                &mut w.objs,
                                &mut w.m.pmap(t.space),
                            )
                            .unwrap();
                        for p in page..page + n {
                            t.pages.remove(&p);
                        }
                    }
                    Op::Exit { task } => {
                        if task >= tasks.len() || tasks.len() == 1 {
                            continue;
                        }
                        let mut t = tasks.remove(task);
                        t.map.clear(&mut w.objs, &mut w.m.pmap(t.space));
                        w.m.destroy_space(t.space);
                    }
                }
                let acts = w.reap();
                // Nothing was paged out, so nothing to tell a pager.
                assert!(acts.is_empty(), "{acts:?}");
            }
            for t in tasks.iter_mut() {
                for p in 0..PAGES {
                    check(&mut w, t, &cells, p);
                }
            }
            // Collapse what can be collapsed; then everything goes.
            for mut t in tasks {
                t.map.clear(&mut w.objs, &mut w.m.pmap(t.space));
                w.m.destroy_space(t.space);
            }
            assert!(w.reap().is_empty());
            assert_eq!(w.objs.count(), 0);
            assert_eq!(w.objs.pages.resident_count(), 0);
            assert_eq!(w.pool.free_count(), 4096);
        }

        fn check(w: &mut World, t: &mut Task, cells: &[[u8; 2]], page: u64) {
            let r = w.access(&mut t.map, t.space, va(page), false);
            match t.pages.get(&page) {
                None => assert_eq!(r, Err(FaultOutcome::InvalidAddress)),
                Some(pm) => {
                    assert_eq!(r, Ok(()));
                    for (slot, want) in cells[pm.cell].iter().enumerate() {
                        let mut b = [0u8];
                        w.m.read_virt(t.space, slot_va(page, slot), &mut b).unwrap();
                        assert_eq!(b[0], *want, "page {page} slot {slot}");
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn tasks_read_what_the_model_says(ops in proptest::collection::vec(op(), 1..60)) {
                run(ops);
            }
        }
    }
}
