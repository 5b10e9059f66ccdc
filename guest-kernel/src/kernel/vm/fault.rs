//! The page-fault path (paper §5.5): a user fault in a task's VM window goes
//! to guest_kernel::vm::fault with the task's map; the same resolution runs
//! when the kernel copies user memory (message bodies, trap arguments) and
//! finds a page not yet present. Faults the VM cannot satisfy become
//! exception messages (kern/ipc/exception.rs), as before.

use super::{Parts, with_parts};
use crate::kern::scheduler::Kernel;
use guest_kernel::abi::{ERR_BAD_ADDRESS, ERR_NO_MEMORY, VM_MAX_ADDRESS, VM_MIN_ADDRESS};
use guest_kernel::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use guest_kernel::kern::sched::TaskId;
use guest_kernel::vm::fault::{FaultOutcome, Resolved, vm_fault};
use guest_kernel::vm::types::VmProt;

/// x86 page-fault error code bits.
const PF_WRITE: u64 = 1 << 1;
const PF_FETCH: u64 = 1 << 4;

/// Whether `[va, va + len)` touches the part of user space the VM maps.
pub fn in_window(va: u64, len: u64) -> bool {
    len != 0 && va < VM_MAX_ADDRESS && va.saturating_add(len) > VM_MIN_ADDRESS
}

/// A user page fault at `cr2`: true if the VM mapped the page and the
/// thread may retry the instruction.
pub fn user_fault(k: &mut Kernel, cr2: u64, error: u64) -> bool {
    if !in_window(cr2, 1) {
        return false;
    }
    let Some((task, _)) = k.current_task() else {
        return false;
    };
    let access = if error & PF_WRITE != 0 {
        VmProt::WRITE
    } else if error & PF_FETCH != 0 {
        VmProt::EXECUTE
    } else {
        VmProt::READ
    };
    resolve(k, task, VirtAddr(cr2), access).is_ok()
}

/// Runs the fault handler for `va` in `task`: the frame now mapped there,
/// or the outcome that stopped it.
pub fn resolve(
    k: &mut Kernel,
    task: TaskId,
    va: VirtAddr,
    access: VmProt,
) -> Result<PhysAddr, FaultOutcome> {
    let mut p = k.vm_parts(task).ok_or(FaultOutcome::InvalidAddress)?;
    resolve_in(&mut p, va, access)
}

/// [`resolve`] over lent parts (while the kernel's IPC state is borrowed
/// too: out-of-line message data).
pub fn resolve_in(
    p: &mut Parts<'_>,
    va: VirtAddr,
    access: VmProt,
) -> Result<PhysAddr, FaultOutcome> {
    let outcome = with_parts(p, |map, objects, frames, m| {
        vm_fault(map, objects, frames, m, va, access, false)
    });
    let c = &mut p.vm.counters;
    c.faults += 1;
    match outcome {
        FaultOutcome::Mapped { frame, how, .. } => {
            match how {
                Resolved::Soft => c.soft_faults += 1,
                Resolved::ZeroFill { zeroed_by_kernel } => {
                    c.zero_fill += 1;
                    c.zeroed_by_kernel += u64::from(zeroed_by_kernel);
                }
                Resolved::CopyOnWrite { .. } => c.cow_faults += 1,
            }
            Ok(frame)
        }
        // Wait, Request and Unlock need a pager: the kernel has no external
        // or paged-out objects yet, so they cannot arise. The rest are
        // the task's own doing (exceptions) or a shortage it must see.
        o => Err(o),
    }
}

/// Makes every page of `[va, va + len)` in `task` that lies in the VM window
/// present with the rights the kernel's copy needs (write for copy-out),
/// before the copy walks the page tables. Pages already mapped so cost one
/// walk each.
pub fn prefault(k: &mut Kernel, task: TaskId, va: u64, len: u64, write: bool) -> Result<(), i64> {
    if !in_window(va, len) {
        return Ok(());
    }
    let mut p = k.vm_parts(task).ok_or(ERR_BAD_ADDRESS)?;
    prefault_in(&mut p, va, len, write)
}

/// [`prefault`] over lent parts.
pub fn prefault_in(p: &mut Parts<'_>, va: u64, len: u64, write: bool) -> Result<(), i64> {
    if !in_window(va, len) {
        return Ok(());
    }
    let end = va.checked_add(len).ok_or(ERR_BAD_ADDRESS)?;
    let first = va.max(VM_MIN_ADDRESS) & !(PAGE_SIZE - 1);
    let last = end.min(VM_MAX_ADDRESS);
    let access = if write { VmProt::WRITE } else { VmProt::READ };
    let mut page = first;
    while page < last {
        let present = with_parts(p, |_, _, _, m| {
            m.pmap()
                .lookup(VirtAddr(page))
                .is_some_and(|(_, prot)| prot.contains(access))
        });
        if !present {
            match resolve_in(p, VirtAddr(page), access) {
                Ok(_) => {}
                Err(FaultOutcome::ResourceShortage) => return Err(ERR_NO_MEMORY),
                Err(_) => return Err(ERR_BAD_ADDRESS),
            }
        }
        page += PAGE_SIZE;
    }
    Ok(())
}
