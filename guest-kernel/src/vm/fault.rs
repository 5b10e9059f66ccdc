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
use crate::vm::map::VmMap;
use crate::vm::memory_object::allowed_by_lock;
use crate::vm::object::{ObjectKind, Objects, PagerPort};
use crate::vm::page::{FrameSource, PageId};
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
    /// Makes `frame` all zeros (called only for frames not known zero).
    fn zero_frame(&mut self, frame: PhysAddr);
    fn copy_frame(&mut self, src: PhysAddr, dst: PhysAddr);
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
pub fn vm_fault(
    map: &mut VmMap,
    objects: &mut Objects,
    frames: &mut dyn FrameSource,
    mmu: &mut dyn FaultMachine,
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
pub fn fault_object(
    objects: &mut Objects,
    frames: &mut dyn FrameSource,
    mmu: &mut dyn FaultMachine,
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
    match objects.get(top) {
        Ok(o) if target.offset.is_page_aligned() && target.offset.0 < o.size() => {}
        _ => return FaultOutcome::MemoryError,
    }
    // A shadow whose backing lost its other references absorbs it; this
    // keeps chains short as tasks that forked exit (cheap: a count check).
    let _ = objects.collapse_merge_only(top, frames, mmu);

    let (mut obj, mut off) = (top, target.offset);
    loop {
        let Ok(o) = objects.get(obj) else {
            return FaultOutcome::MemoryError;
        };
        let (kind, shadow, paged_out) = (o.kind(), o.shadow(), o.is_paged_out(off));
        let (dead, ready, port) = (o.pager_dead(), o.pager_ready(), o.pager_port());
        let has_shadow = shadow.is_some();
        if let Some(pid) = objects.pages.lookup(obj, off) {
            return found(
                objects, frames, mmu, target, va, access, privileged, obj, pid, has_shadow,
            );
        }
        let ask = match kind {
            ObjectKind::External(_) => true,
            ObjectKind::Internal => paged_out,
        };
        if ask {
            if dead {
                return FaultOutcome::MemoryError;
            }
            if !ready {
                return FaultOutcome::Wait {
                    object: obj,
                    offset: off,
                };
            }
            return request(
                objects,
                obj,
                off,
                port,
                if obj == top { access } else { VmProt::READ },
            );
        }
        match shadow {
            Some((b, boff)) => {
                let Some(next) = off.checked_add(boff.0) else {
                    break;
                };
                match objects.get(b) {
                    // A shadow larger than its backing window sees zeros.
                    Ok(bo) if next.0 < bo.size() => {}
                    _ => break,
                }
                obj = b;
                off = next;
            }
            None => break,
        }
    }
    zero_fill(objects, frames, mmu, target, va, privileged)
}

/// Makes a busy placeholder so concurrent faults wait for one request.
fn request(
    objects: &mut Objects,
    obj: ObjectId,
    off: ObjectOffset,
    pager: PagerPort,
    desired_access: VmProt,
) -> FaultOutcome {
    let pid = match objects.pages.insert(obj, off, None) {
        Ok(p) => p,
        Err(e) => return FaultOutcome::from_error(e),
    };
    if let Some(p) = objects.pages.get_mut(pid) {
        p.busy = true;
        p.absent = true;
    }
    FaultOutcome::Request {
        object: obj,
        pager,
        offset: off,
        length: PAGE_SIZE,
        desired_access,
    }
}

/// A new zero page in the top object (nothing below has data).
fn zero_fill(
    objects: &mut Objects,
    frames: &mut dyn FrameSource,
    mmu: &mut dyn FaultMachine,
    target: FaultTarget,
    va: VirtAddr,
    privileged: bool,
) -> FaultOutcome {
    let frame = match objects.pages.alloc_frame(frames, privileged) {
        Ok(f) => f,
        Err(e) => return FaultOutcome::from_error(e),
    };
    let pid = match objects
        .pages
        .insert(target.object, target.offset, Some(frame.addr))
    {
        Ok(p) => p,
        Err(e) => {
            frames.free_frame(frame.addr);
            return FaultOutcome::from_error(e);
        }
    };
    if !frame.zeroed {
        mmu.zero_frame(frame.addr);
    }
    // Over a backing object a zero page is data (it hides the backing's
    // page, which may appear later), so it must be paged out, not dropped.
    let shadowed = objects
        .get(target.object)
        .is_ok_and(|o| o.shadow().is_some());
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

fn map_page(
    objects: &mut Objects,
    mmu: &mut dyn FaultMachine,
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
fn found(
    objects: &mut Objects,
    frames: &mut dyn FrameSource,
    mmu: &mut dyn FaultMachine,
    target: FaultTarget,
    va: VirtAddr,
    access: VmProt,
    privileged: bool,
    obj: ObjectId,
    pid: PageId,
    obj_shadowed: bool,
) -> FaultOutcome {
    let Some(mut p) = objects.pages.get(pid).copied() else {
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
            p = *q;
        }
        how = Resolved::ZeroFill {
            zeroed_by_kernel: !frame.zeroed,
        };
    }
    let Some(frame) = p.frame else {
        return FaultOutcome::MemoryError;
    };
    // Access needed of this page: a write below the top only reads it.
    let need = if at_top {
        access
    } else {
        access.without(VmProt::WRITE)
    };
    let locked = p.lock.intersect(need);
    if !locked.is_empty() {
        if p.unlock_requested.contains(locked) {
            return FaultOutcome::Wait {
                object: obj,
                offset: p.offset,
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
            offset: p.offset,
            access: locked,
        };
    }
    if at_top || !write {
        if write && p.cleaning {
            // Write-protected until its data_write completes.
            return FaultOutcome::Wait {
                object: obj,
                offset: p.offset,
            };
        }
        let mut prot = target.prot.intersect(allowed_by_lock(p.lock));
        if !at_top || target.needs_copy || p.cleaning {
            // A page of a backing object (or under copy, or being
            // written back) is only read through this mapping.
            prot = prot.without(VmProt::WRITE);
        }
        return map_page(objects, mmu, pid, va, frame, prot, how);
    }
    // Copy-on-write: copy the backing page up into the top object.
    let new = match objects.pages.alloc_frame(frames, privileged) {
        Ok(f) => f,
        Err(e) => return FaultOutcome::from_error(e),
    };
    let npid = match objects
        .pages
        .insert(target.object, target.offset, Some(new.addr))
    {
        Ok(p) => p,
        Err(e) => {
            frames.free_frame(new.addr);
            return FaultOutcome::from_error(e);
        }
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
