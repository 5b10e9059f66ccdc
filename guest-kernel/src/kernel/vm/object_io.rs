//! System calls on memory objects served through the virtio-pager device:
//! look an object up (initialising it with its pager), stat it, read or
//! write a range straight between the object and the caller's own frames,
//! sync. The Mach VM system will express these as vm_read/vm_write and page
//! faults on mapped objects; the device path underneath stays the same.
//!
//! A caller that must wait for the pager blocks (State::ObjectInit or
//! State::Io); the completion interrupt wakes it with its result.

use crate::arch::copy::{copy_from_user, copy_to_user};
use crate::arch::mm::DirectTables;
use crate::arch::trap::TrapFrame;
use crate::dev::virtio_pager;
use crate::kern::scheduler::Kernel;
use crate::kern::thread::State;
use crate::vm::pager_events;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::sync::atomic::{AtomicBool, Ordering};
use guest_kernel::abi::*;
use guest_kernel::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use guest_kernel::arch::paging::{self, USER, WRITABLE};
use guest_kernel::dev::virtio::pager::{
    self, ACCESS_READ, Completion, Frames, ObjState, Op, Segment, SubmitError, req, status,
};

/// Completion tokens: a task id, or this bit plus the object for an INIT.
pub const INIT_TOKEN: u64 = 1 << 63;

/// Set when a system call disarmed completion interrupts; the way out of
/// the kernel (`leave_kernel`) arms them again. Spares every other kernel
/// exit the driver lock.
static DISARMED: AtomicBool = AtomicBool::new(false);

/// Submissions from a system call: the caller leaves through
/// `leave_kernel`, which takes a completion that is already there without
/// an interrupt, an idle halt or a second trip through the scheduler.
fn disarm(d: &mut virtio_pager::Driver) {
    d.disarm();
    DISARMED.store(true, Ordering::Relaxed);
}

/// `disarm` for the VM's page transfers (kernel/vm/pager.rs).
pub fn disarm_for_exit(d: &mut virtio_pager::Driver) {
    disarm(d);
}

/// A caller that disarmed and has since taken every answer it waited
/// for: interrupts are armed again now if nothing is in flight, and the
/// way out need not look at the device.
pub fn rearm_if_idle(d: &mut virtio_pager::Driver) {
    if d.arm_if_idle() {
        DISARMED.store(false, Ordering::Relaxed);
    }
}

/// Called on every way out of the kernel (trap::dispatch).
pub fn leave_kernel(k: &mut Kernel) {
    let sent = if k.paging.has_work() {
        crate::vm::pager::start(k)
    } else {
        None
    };
    if !DISARMED.swap(false, Ordering::Relaxed) {
        return;
    }
    let mut guard = sent.unwrap_or_else(virtio_pager::lock);
    if let Some(d) = guard.as_mut() {
        // Completions and events both need the kernel, one at a time.
        let k = RefCell::new(k);
        d.leave_kernel(
            &mut |c: &Completion, fr: &Frames| complete(&mut k.borrow_mut(), c, fr),
            &mut |e| pager_events::on_event(&mut k.borrow_mut(), e),
        );
    }
}

fn error_of(status_code: u32) -> i64 {
    match status_code {
        status::IO_ERROR => ERR_IO,
        status::PAST_END => ERR_PAST_END,
        status::READ_ONLY => ERR_READ_ONLY,
        status::NO_OBJECT => ERR_NO_OBJECT,
        status::PAGER_FAILED => ERR_PAGER_FAILED,
        status::TIMED_OUT => ERR_PAGER_TIMED_OUT,
        status::DEVICE_RESET | status::BAD_STATE => ERR_RESET,
        _ => ERR_INVALID,
    }
}

fn submit_error(e: SubmitError) -> i64 {
    match e {
        SubmitError::Busy => ERR_BUSY,
        SubmitError::NoObject => ERR_NO_OBJECT,
        SubmitError::ReadOnly => ERR_READ_ONLY,
        SubmitError::BadFrames => ERR_INVALID,
        SubmitError::BadState | SubmitError::Broken => ERR_RESET,
    }
}

/// `None`: the caller blocked and gets its result when woken.
pub fn lookup(k: &mut Kernel, f: &TrapFrame) -> Option<i64> {
    let name = match copy_from_user(k, VirtAddr(f.rdi), f.rsi, pager::NAME_MAX as u64) {
        Ok(n) => n,
        Err(e) => return Some(e),
    };
    let mut guard = virtio_pager::lock();
    let Some(d) = guard.as_mut() else {
        return Some(ERR_NO_DEVICE);
    };
    let Some(id) = d.find(&name).filter(|&id| user_visible(k, id)) else {
        return Some(ERR_NO_OBJECT);
    };
    match d.object(id).map(|o| o.state) {
        Some(ObjState::Ready { .. }) => return Some(i64::from(id)),
        Some(ObjState::Initializing) => {}
        _ => {
            disarm(d);
            if let Err(e) = d.submit(id, Op::Init, INIT_TOKEN | u64::from(id), []) {
                return Some(submit_error(e));
            }
            d.kick();
        }
    }
    k.block_current(State::ObjectInit(id));
    None
}

/// Whether user tasks may name device object `id`: all but the default
/// pager's swap object (other tasks' paged-out memory is in it).
pub fn user_visible(k: &Kernel, id: u32) -> bool {
    k.paging.default.swap_object() != Some(id)
}

/// A user-given object id, if it names an object users may reach.
fn user_object(k: &Kernel, raw: u64) -> Option<u32> {
    u32::try_from(raw).ok().filter(|&id| user_visible(k, id))
}

pub fn stat(k: &mut Kernel, f: &TrapFrame) -> i64 {
    let Some(id) = user_object(k, f.rdi) else {
        return ERR_NO_OBJECT;
    };
    let st = {
        let guard = virtio_pager::lock();
        let Some(d) = guard.as_ref() else {
            return ERR_NO_DEVICE;
        };
        match d.object(id).map(|o| o.state) {
            Some(ObjState::Ready {
                size,
                read_only,
                may_cache,
            }) => ObjectStat {
                size,
                flags: if read_only { OBJECT_READ_ONLY } else { 0 }
                    | if may_cache { OBJECT_MAY_CACHE } else { 0 },
            },
            Some(_) => return ERR_RESET,
            None => return ERR_NO_OBJECT,
        }
    };
    let bytes = [st.size.to_le_bytes(), st.flags.to_le_bytes()];
    match copy_to_user(k, VirtAddr(f.rsi), bytes.as_flattened()) {
        Ok(()) => 0,
        Err(e) => e,
    }
}

/// Object read (`write` false) or write: the caller's pages become the
/// request's frames.
pub fn io(k: &mut Kernel, f: &TrapFrame, write: bool) -> Option<i64> {
    let (offset, va, len) = (f.rsi, VirtAddr(f.rdx), f.r10);
    let Some(id) = user_object(k, f.rdi) else {
        return Some(ERR_NO_OBJECT);
    };
    if len == 0 {
        return Some(0);
    }
    if len > OBJECT_IO_MAX
        || offset % PAGE_SIZE != 0
        || !va.is_aligned(PAGE_SIZE)
        || len % PAGE_SIZE != 0
    {
        return Some(ERR_INVALID);
    }
    let Some(end) = va.checked_add(len).filter(|e| VirtAddr(e.0 - 1).is_user()) else {
        return Some(ERR_BAD_ADDRESS);
    };
    let (Some(tid), Some((_, root))) = (k.current_thread(), k.current_task()) else {
        return Some(ERR_BAD_ADDRESS);
    };
    let mut guard = virtio_pager::lock();
    let Some(d) = guard.as_mut() else {
        return Some(ERR_NO_DEVICE);
    };
    match d.object(id).map(|o| o.state) {
        Some(ObjState::Ready { size, .. }) if offset >= size => return Some(ERR_PAST_END),
        Some(ObjState::Ready { .. }) => {}
        Some(_) => return Some(ERR_RESET),
        None => return Some(ERR_NO_OBJECT),
    }
    // The device writes into the pages for a read, so they must be the
    // task's own writable pages (never shared program text).
    let need = if write { USER } else { USER | WRITABLE };
    let mut walker = paging::Walker::new(root);
    let mut pages: Vec<PhysAddr> = Vec::new();
    if pages.try_reserve_exact((len / PAGE_SIZE) as usize).is_err() {
        return Some(ERR_NO_MEMORY);
    }
    for i in 0..len / PAGE_SIZE {
        let at = VirtAddr(va.0 + i * PAGE_SIZE);
        match walker.translate(&mut DirectTables(&mut k.frames), at) {
            Some((pa, flags)) if flags & need == need => pages.push(pa),
            _ => return Some(ERR_BAD_ADDRESS),
        }
    }
    // Held until the completion: a page unmapped or dropped meanwhile (its
    // region deallocated, its object flushed) keeps its frame until the
    // device is done with it, so the transfer never touches memory that
    // has become someone else's.
    if !k.frames.pin(&pages) {
        return Some(ERR_NO_MEMORY);
    }
    let op = if write {
        Op::DataWrite { offset, len }
    } else {
        Op::DataRequest {
            offset,
            len,
            desired: ACCESS_READ,
        }
    };
    disarm(d);
    let segments = pages.iter().map(|&addr| Segment {
        addr,
        len: PAGE_SIZE as u32,
    });
    let r = d.submit(id, op, u64::from(tid.0), segments);
    let _ = end;
    match r {
        Ok(()) => d.kick(),
        Err(e) => {
            for &f in &pages {
                k.frames.unpin(f);
            }
            return Some(submit_error(e));
        }
    }
    drop(guard);
    if !write {
        // The device fills the task's pages behind the MMU's back: they
        // are modified (pageout must write them back, not drop them).
        crate::arch::copy::mark_written(&mut k.frames, root, va, len);
    }
    k.block_current(State::Io);
    None
}

pub fn sync(k: &mut Kernel, f: &TrapFrame) -> Option<i64> {
    let Some(id) = user_object(k, f.rdi) else {
        return Some(ERR_NO_OBJECT);
    };
    let Some(tid) = k.current_thread() else {
        return Some(ERR_INVALID);
    };
    let mut guard = virtio_pager::lock();
    let Some(d) = guard.as_mut() else {
        return Some(ERR_NO_DEVICE);
    };
    disarm(d);
    if let Err(e) = d.submit(id, Op::Sync, u64::from(tid.0), []) {
        return Some(submit_error(e));
    }
    d.kick();
    drop(guard);
    k.block_current(State::Io);
    None
}

/// A request finished: wake whoever waits for it with its result.
pub fn complete(k: &mut Kernel, c: &Completion, frames: &Frames) {
    if c.op == req::INIT {
        let r = if c.status == status::OK {
            i64::from(c.object)
        } else {
            error_of(c.status)
        };
        k.wake_all(State::ObjectInit(c.object), r);
        return;
    }
    if c.token & INIT_TOKEN == 0 && c.token & crate::vm::pager::PAGE_TOKEN != 0 {
        crate::vm::pager::complete(k, c);
        return;
    }
    if c.token & INIT_TOKEN != 0 || c.token > u64::from(u32::MAX) {
        return;
    }
    let bytes = c.len;
    let r = if c.status != status::OK {
        error_of(c.status)
    } else {
        if c.op == req::DATA_REQUEST && c.kind == pager::KIND_UNAVAILABLE {
            virtio_pager::zero_frames(frames, bytes);
        }
        bytes as i64
    };
    // The device is done with the task's frames (io pinned them; the
    // driver merged adjacent ones into runs).
    for i in 0..frames.len() {
        if let Some(seg) = frames.get(i) {
            for at in (0..u64::from(seg.len)).step_by(PAGE_SIZE as usize) {
                k.frames.unpin(PhysAddr(seg.addr.0 + at));
            }
        }
    }
    k.wake_with(guest_kernel::kern::sched::ThreadId(c.token as u32), r);
}

/// The device interrupt.
pub fn interrupt(k: &mut Kernel) {
    let mut guard = virtio_pager::lock();
    if let Some(d) = guard.as_mut() {
        let k = RefCell::new(k);
        d.interrupt(
            &mut |c: &Completion, fr: &Frames| complete(&mut k.borrow_mut(), c, fr),
            &mut |e| pager_events::on_event(&mut k.borrow_mut(), e),
        );
    }
}

/// Timer tick: a new event budget (events held back by the last one are
/// taken now), and let the driver check on a device that went quiet.
pub fn tick(k: &mut Kernel) {
    let budget = pager_events::budget_for_tick(k);
    let mut guard = virtio_pager::lock();
    let Some(d) = guard.as_mut() else {
        return;
    };
    let k = RefCell::new(k);
    let mut done = |c: &Completion, fr: &Frames| complete(&mut k.borrow_mut(), c, fr);
    let mut on_event = |e: &_| pager_events::on_event(&mut k.borrow_mut(), e);
    d.refill_events(budget, &mut done, &mut on_event);
    if d.in_flight() > 0 {
        d.watchdog(&mut done, &mut on_event);
    }
}
