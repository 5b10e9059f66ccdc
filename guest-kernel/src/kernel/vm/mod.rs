//! Virtual memory in the kernel: the Mach VM of guest_kernel::vm driven over
//! the real machine. `machine` is the glue (frames, page tables, TLB),
//! `fault` the page-fault path, `calls` the Table 3-3 traps, `pager` and
//! `user_pager` the two kinds of pager (the host, through the virtio-pager
//! device, whose unprompted calls arrive as events: `pager_events`; guest
//! tasks, through messages), and `object_io` reads and writes
//! memory objects served through the device into a task's own pages.

pub mod calls;
pub mod default_pager;
pub mod fault;
pub mod machine;
pub mod object_io;
pub mod pager;
pub mod pager_events;
pub mod statistics;
pub mod user_pager;

pub use statistics::report as report_statistics;

use crate::kern::scheduler::Kernel;
use alloc::vec::Vec;
use core::cell::RefCell;
use guest_kernel::addr::PhysAddr;
use guest_kernel::kern::sched::TaskId;
use guest_kernel::vm::copy_store::CopyStore;
use guest_kernel::vm::frame::FrameAllocator;
use guest_kernel::vm::map::VmMap;
use guest_kernel::vm::object::{ObjectAction, Objects};
use machine::{LoadedTlb, Machine, SharedFrames};

/// Runs `op` on task `id`'s map with the object table, the frames and the
/// machine view of its address space; then reaps the objects whose last
/// reference the operation dropped. None if the task is gone.
pub fn with_task<R>(
    k: &mut Kernel,
    id: TaskId,
    op: impl FnOnce(&mut VmMap, &mut Objects, &mut SharedFrames<'_>, &mut Machine<'_>) -> R,
) -> Option<R> {
    Some(with_parts(&mut k.vm_parts(id)?, op))
}

/// Runs `op` over lent parts; see [`with_task`].
pub fn with_parts<R>(
    p: &mut Parts<'_>,
    op: impl FnOnce(&mut VmMap, &mut Objects, &mut SharedFrames<'_>, &mut Machine<'_>) -> R,
) -> R {
    let cell = RefCell::new(&mut *p.frames);
    let mut frames = SharedFrames(&cell);
    // With the pager glue at hand, so a fault can ask a host pager and
    // take its answer without leaving the VM (Machine::page_in).
    let mut m = Machine {
        tables: SharedFrames(&cell),
        pv: &mut p.vm.pv,
        tlb: LoadedTlb { loaded: p.loaded },
        root: p.root,
        pager: Some(&mut *p.paging),
    };
    let r = op(p.map, &mut p.vm.objects, &mut frames, &mut m);
    // Checked here: every VM operation ends so, mostly with nothing dying,
    // and the call cost more than the check.
    if p.vm.objects.has_dying() {
        reap(&mut p.vm.objects, &mut frames, &mut m, None);
    }
    r
}

/// Runs `op` on the object table alone (pager replies): frames and every
/// space's mappings of a frame, no particular map.
pub fn with_objects<R>(
    k: &mut Kernel,
    op: impl FnOnce(&mut Objects, &mut SharedFrames<'_>, &mut Machine<'_>) -> R,
) -> R {
    let (vm, frames, paging, loaded) = k.vm_global();
    run(
        vm,
        frames,
        &mut paging.actions,
        loaded,
        loaded,
        |objs, _, f, m| op(objs, f, m),
    )
}

/// The one place a VM operation runs: the object table (and the snapshots
/// in transit) with the machine view of the space `root`, then the reaping
/// of objects that lost their last reference.
pub(crate) fn run<R>(
    vm: &mut machine::Vm,
    frames: &mut FrameAllocator,
    actions: &mut Vec<ObjectAction>,
    root: PhysAddr,
    loaded: PhysAddr,
    op: impl FnOnce(&mut Objects, &mut CopyStore, &mut SharedFrames<'_>, &mut Machine<'_>) -> R,
) -> R {
    let cell = RefCell::new(frames);
    let mut frames = SharedFrames(&cell);
    let mut m = Machine {
        tables: SharedFrames(&cell),
        pv: &mut vm.pv,
        tlb: LoadedTlb { loaded },
        root,
        pager: None,
    };
    let r = op(&mut vm.objects, &mut vm.copies, &mut frames, &mut m);
    reap(&mut vm.objects, &mut frames, &mut m, Some(actions));
    r
}

/// Discards the out-of-line snapshots of messages destroyed unreceived
/// (`Ipc::take_released`): their object references go, and pages no one
/// maps any more are freed. The IPC trap layer calls it after every
/// operation that released something (`Ipc::has_released`).
pub fn discard_released(k: &mut Kernel) {
    let loaded = k.loaded_root();
    let ipc = &mut k.ipc;
    // Reaping unmaps pages through the reverse maps, in every space: the
    // root the machine view names is not used.
    run(
        &mut k.vm,
        &mut k.frames,
        &mut k.paging.actions,
        loaded,
        loaded,
        |objs, copies, _, _| {
            while let Some(h) = ipc.take_released() {
                copies.discard(h, objs);
            }
        },
    );
}

/// A task's address space is going: every region's mappings and object
/// references go (pages no one else maps are freed), before its page
/// tables are.
pub fn destroy_map(
    map: &mut VmMap,
    vm: &mut machine::Vm,
    paging: &mut pager::HostPaging,
    frames: &mut FrameAllocator,
    root: PhysAddr,
    loaded: PhysAddr,
) {
    if map.is_empty() || root.0 == 0 {
        return;
    }
    let mut parts = Parts {
        map,
        vm,
        paging,
        frames,
        root,
        loaded,
    };
    with_parts(&mut parts, |map, objs, _, m| map.clear(objs, &mut m.pmap()));
}
/// Frees objects that lost their last reference; what must be sent on
/// their behalf (write-backs) joins `actions` (else the machine's pager
/// glue's), which the pager glue takes on the way out of the kernel
/// (kernel/vm/pager.rs). Actions that find no room leave the object queued
/// for the next reap.
pub fn reap(
    objects: &mut Objects,
    frames: &mut SharedFrames<'_>,
    m: &mut Machine<'_>,
    actions: Option<&mut Vec<ObjectAction>>,
) {
    // If the list cannot grow (out of heap), the writes are lost and the
    // pages stay busy. Bounded by the object's pages, so this needs a heap
    // already exhausted by other means.
    let Ok(mut out) = objects.reap(frames, m) else {
        return;
    };
    if out.is_empty() {
        return;
    }
    let actions = match actions {
        Some(a) => a,
        None => match m.pager.as_deref_mut() {
            Some(p) => &mut p.actions,
            None => return,
        },
    };
    if actions.try_reserve(out.len()).is_ok() {
        actions.append(&mut out);
    }
}

/// What [`Kernel::vm_parts`] lends: one task's map beside the kernel-wide VM
/// state (split borrows of the kernel).
pub struct Parts<'a> {
    pub map: &'a mut VmMap,
    pub vm: &'a mut machine::Vm,
    pub paging: &'a mut pager::HostPaging,
    pub frames: &'a mut FrameAllocator,
    /// The task's page-table root, and the one CR3 holds now.
    pub root: PhysAddr,
    pub loaded: PhysAddr,
}
