//! The page-fault path (paper §5.5): a user fault in a task's VM window goes
//! to guest_kernel::vm::fault with the task's map; the same resolution runs
//! when the kernel copies user memory (message bodies, trap arguments) and
//! finds a page not yet present. Faults the VM cannot satisfy become
//! exception messages (kern/ipc/exception.rs), as before.

use super::pager::{Asked, Reader, Sent};
use super::{Parts, with_parts};
use crate::kern::scheduler::Kernel;
use crate::kern::thread::State;
use guest_kernel::abi::{ERR_BAD_ADDRESS, ERR_NO_MEMORY, VM_MAX_ADDRESS, VM_MIN_ADDRESS};
use guest_kernel::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use guest_kernel::kern::sched::TaskId;
use guest_kernel::vm::fault::{FaultOutcome, Resolved, vm_fault};
use guest_kernel::vm::fault_around::fault_around;
use guest_kernel::vm::object::PagerPort;
use guest_kernel::vm::types::{ObjectId, VmProt};

/// Pages fault-around maps after a soft read fault at most (one
/// read-ahead cluster less the faulting page).
const FAULT_AROUND: u64 = super::pager::CLUSTER as u64 - 1;

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
    let va = VirtAddr(cr2);
    let mut outcome = resolve(k, task, va, access, FAULT_AROUND);
    // Tries again in this entry (after its own request was answered at
    // once, or after a zero fill) at most this often; every outcome is
    // still acted on, so a request made by the last try is sent.
    let mut retries = 2;
    loop {
        match outcome {
            Ok(_) => {
                super::default_pager::check(k);
                return true;
            }
            // Out of frames (or page records): pageout, and sleep for it if
            // there is swap; else an exception as before.
            Err(FaultOutcome::ResourceShortage) => return super::default_pager::shortage(k),
            Err(o) => match ask_pager(k, o, Some(Reader { task, va })) {
                Ask::Sleep(object, sent) => {
                    // Only the device can have answered before this entry
                    // ends: a guest pager answers from its own thread.
                    let device = match o {
                        FaultOutcome::Request { .. } => sent.is_some(),
                        FaultOutcome::Wait { object, .. } => served_by_device(k, object),
                        _ => false,
                    };
                    if retries > 0 && device && answered_at_once(k) {
                        // A read's answer is mapped as it arrives: then
                        // there is nothing left to resolve.
                        if mapped_for(k, task, va, access) {
                            super::default_pager::check(k);
                            return true;
                        }
                        retries -= 1;
                        // Fault-around maps what came with the page; after
                        // a request for the page alone, neighbours mapped
                        // ahead would only be those faulted in before.
                        let around = match sent {
                            Some(s) if s.pages == 1 => 0,
                            _ => FAULT_AROUND,
                        };
                        outcome = resolve(k, task, va, access, around);
                        continue;
                    }
                    k.block_current(State::PageWait {
                        object,
                        syscall: false,
                    });
                    return true;
                }
                // Settled as zero fill: map it now, or (having tried
                // enough) let the thread take the fault again.
                Ask::Again if retries > 0 => {
                    retries -= 1;
                    outcome = resolve(k, task, va, access, FAULT_AROUND);
                }
                Ask::Again => return true,
                Ask::Fail => return false,
            },
        }
    }
}

/// Before a fault sleeps for the device: hands over what is not sent yet
/// and takes the completions already there, as the way out of the kernel
/// would; where the device has answered by then, the fault is retried in
/// this entry instead of after a sleep, a wake-up and a second trap. True
/// if anything meanwhile woke the faults waiting on some object: the
/// thread has not gone to sleep yet, so it must look again itself, or it
/// would sleep through its own wake-up (a completion, a pager found dead,
/// an event).
fn answered_at_once(k: &mut Kernel) -> bool {
    let before = k.page_wakes();
    super::object_io::leave_kernel(k);
    k.page_wakes() != before
}

/// Whether `task` now maps `va` with the rights `access` needs (x86: any
/// access needs read).
fn mapped_for(k: &mut Kernel, task: TaskId, va: VirtAddr, access: VmProt) -> bool {
    let need = access.union(VmProt::READ);
    super::with_task(k, task, |_, _, _, m| {
        m.pmap()
            .lookup(va)
            .is_some_and(|(_, prot)| prot.contains(need))
    })
    .unwrap_or(false)
}

/// Whether `object`'s pages come through the virtio-pager device (a host
/// object, or internal memory through the default pager): only then can
/// the answer be there before this entry ends. A guest pager answers from
/// its own thread, which runs only after it.
fn served_by_device(k: &Kernel, object: ObjectId) -> bool {
    k.vm.objects
        .get(object)
        .is_ok_and(|o| match o.pager_port() {
            PagerPort::Default => true,
            PagerPort::Pager(p) => !crate::vm::user_pager::is_user(p),
        })
}

/// What a fault that needs a pager's answer does next.
enum Ask {
    /// Sleep until the object changes; the transfer to the device, if
    /// one was made.
    Sleep(ObjectId, Option<Sent>),
    /// Try again now (the page was settled as zero fill).
    Again,
    /// Not one to wait for: the fault fails.
    Fail,
}

/// A fault that needs a pager's answer: ask (Request) and sleep until the
/// object changes, or just sleep (Wait: another fault's request, or the
/// pager still initialising). False if the outcome is not one to wait for,
/// or the kernel could not ask (the request then fails as a pager error,
/// and the retried fault gets MemoryError).
fn wait_for_pager(k: &mut Kernel, o: FaultOutcome, syscall: bool, reader: Reader) -> bool {
    match ask_pager(k, o, Some(reader)) {
        Ask::Sleep(object, _) => {
            k.block_current(State::PageWait { object, syscall });
            true
        }
        Ask::Again => true,
        Ask::Fail => false,
    }
}

/// Asks the pager for what outcome `o` needs (Request, Unlock), or finds
/// the object to wait on (Wait). `reader`: the faulting task and address.
fn ask_pager(k: &mut Kernel, o: FaultOutcome, reader: Option<Reader>) -> Ask {
    let mut sent = None;
    let object = match o {
        FaultOutcome::Request {
            object,
            pager,
            offset,
            desired_access,
            ..
        } => {
            let objects = &k.vm.objects;
            let size = || objects.get(object).map_or(0, |o| o.size());
            match super::pager::request(
                &mut k.paging,
                &mut k.frames,
                object,
                size,
                pager,
                offset,
                desired_access,
            ) {
                Asked::Yes(s) => {
                    if let (Some(s), Some(r)) = (s, reader) {
                        super::pager::set_reader(&mut k.paging, s.slot, r);
                    }
                    sent = s;
                }
                Asked::No => {
                    if pager == guest_kernel::vm::object::PagerPort::Default {
                        crate::kprint!("default pager: no transfer slot for a page-in\n");
                    }
                    super::with_objects(k, |objects, _, _| {
                        let _ = objects.data_error(object, offset, PAGE_SIZE);
                    });
                    return Ask::Fail;
                }
                // Nothing in swap for it: zero fill, retried at once.
                Asked::Unavailable => {
                    super::with_objects(k, |objects, _, _| {
                        let _ = objects.data_unavailable(object, offset, PAGE_SIZE);
                    });
                    return Ask::Again;
                }
            }
            object
        }
        FaultOutcome::Unlock {
            object,
            pager,
            offset,
            access,
        } => {
            if !super::pager::unlock(&mut k.paging, object, pager, offset, access) {
                // Not asked: the page must not stay marked as asked for, or
                // every later fault on it would wait for an answer.
                super::with_objects(k, |objects, _, _| {
                    let _ = objects.unlock_failed(object, offset);
                });
                return Ask::Fail;
            }
            object
        }
        FaultOutcome::Wait { object, offset } => {
            // The request it waits for (its own page_in's, mostly) is
            // answered into its space.
            if let Some(r) = reader {
                super::pager::wait_as_reader(&mut k.paging, object, offset, r);
            }
            object
        }
        _ => return Ask::Fail,
    };
    Ask::Sleep(object, sent)
}

/// Runs the fault handler for `va` in `task`: the frame now mapped there,
/// or the outcome that stopped it. A soft read fault maps up to `around`
/// resident pages after it too.
pub fn resolve(
    k: &mut Kernel,
    task: TaskId,
    va: VirtAddr,
    access: VmProt,
    around: u64,
) -> Result<PhysAddr, FaultOutcome> {
    let mut p = k.vm_parts(task).ok_or(FaultOutcome::InvalidAddress)?;
    resolve_in(&mut p, va, access, around)
}

/// [`resolve`] over lent parts (while the kernel's IPC state is borrowed
/// too: out-of-line message data).
pub fn resolve_in(
    p: &mut Parts<'_>,
    va: VirtAddr,
    access: VmProt,
    around: u64,
) -> Result<PhysAddr, FaultOutcome> {
    let outcome = with_parts(p, |map, objects, frames, m| {
        let o = vm_fault(map, objects, frames, m, va, access, false);
        // A read that found its page resident (typically the first page
        // of a read-ahead cluster just provided) maps the resident pages
        // after it too: one fault per cluster, not per page.
        if access == VmProt::READ
            && around > 0
            && let FaultOutcome::Mapped {
                how: Resolved::Soft,
                ..
            } = o
        {
            fault_around(map, objects, m, va, around);
        }
        o
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
                // Counted as a page in (HostPaging::pages_in).
                Resolved::PagedIn => {}
            }
            Ok(frame)
        }
        // Wait, Request and Unlock need a pager's answer (the caller
        // decides whether to sleep for it); the rest are the task's own
        // doing (exceptions) or a shortage it must see.
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
            match resolve_in(p, VirtAddr(page), access, FAULT_AROUND) {
                Ok(_) => {}
                Err(FaultOutcome::ResourceShortage) => return Err(ERR_NO_MEMORY),
                // A page only a pager can supply: the page-in starts (so a
                // later touch finds it coming), but the kernel cannot sleep
                // in the middle of a copy (the call may have had effects),
                // so this copy fails (docs/vm.md, known gaps).
                Err(FaultOutcome::Request {
                    object,
                    pager,
                    offset,
                    desired_access,
                    ..
                }) => {
                    let objects = &p.vm.objects;
                    let size = || objects.get(object).map_or(0, |o| o.size());
                    let asked = super::pager::request(
                        p.paging,
                        p.frames,
                        object,
                        size,
                        pager,
                        offset,
                        desired_access,
                    );
                    match asked {
                        Asked::Yes(_) => {}
                        Asked::No => {
                            let _ = p.vm.objects.data_error(object, offset, PAGE_SIZE);
                        }
                        Asked::Unavailable => {
                            // Zero fill: try the page again.
                            let _ = p.vm.objects.data_unavailable(object, offset, PAGE_SIZE);
                            continue;
                        }
                    }
                    return Err(ERR_BAD_ADDRESS);
                }
                Err(_) => return Err(ERR_BAD_ADDRESS),
            }
        }
        page += PAGE_SIZE;
    }
    Ok(())
}

/// Before a system call has done anything: makes the running task's
/// `[va, va + len)` present (writable if the kernel will write it), asking
/// pagers and sleeping as a user fault would. False: the thread now sleeps
/// and runs the whole call again once the page comes (the caller returns at
/// once). Other failures are left for the call's own copy to report.
pub fn ready_for_call(k: &mut Kernel, va: u64, len: u64, write: bool) -> bool {
    if !in_window(va, len) {
        return true;
    }
    let Some((task, _)) = k.current_task() else {
        return true;
    };
    let Some(end) = va.checked_add(len) else {
        return true;
    };
    let access = if write { VmProt::WRITE } else { VmProt::READ };
    let mut page = va.max(VM_MIN_ADDRESS) & !(PAGE_SIZE - 1);
    while page < end.min(VM_MAX_ADDRESS) {
        let present = super::with_task(k, task, |_, _, _, m| {
            m.pmap()
                .lookup(VirtAddr(page))
                .is_some_and(|(_, prot)| prot.contains(access))
        });
        if present == Some(false)
            && let Err(o) = resolve(k, task, VirtAddr(page), access, FAULT_AROUND)
        {
            let reader = Reader {
                task,
                va: VirtAddr(page),
            };
            return !wait_for_pager(k, o, true, reader);
        }
        page += PAGE_SIZE;
    }
    true
}
