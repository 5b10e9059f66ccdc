//! The trap layer of Mach IPC (docs/mach-ipc.md): it copies messages in
//! and out of tasks, parks and wakes threads, and serves the kernel's own
//! ports. The rules (rights, queues, validation) are the library's
//! `guest_kernel::ipc`, which never blocks: it says what would, and lists
//! in `Effects` whose wait may be over; `apply` acts on that list.
//!
//! A thread blocked in receive is delivered to directly by whoever makes
//! its message available (the message goes into its own buffer, its trap
//! returns with the result), so an RPC costs each side one trap. A simple
//! small message to such a receiver skips the queue altogether
//! (`mach_msg::send_direct`, `Ipc::send_direct`; docs/mach-ipc.md §2.1). A thread
//! blocked sending to a full port runs its trap again when there is room.

pub mod exception;
pub mod kobject;
pub mod mach_msg;
pub mod memory;
pub mod ports;
pub mod tasks;

use crate::kern::scheduler::Kernel;
use crate::kern::thread::State;
use alloc::vec::Vec;
use guest_kernel::ipc::{Effects, Waiter, Wake};
use guest_kernel::kern::sched::ThreadId;
use libmach::abi::{RCV_PORT_DIED, SEND_INVALID_DEST};

/// The waiter id of a thread.
pub fn waiter(t: ThreadId) -> Waiter {
    Waiter(u64::from(t.0))
}

/// An empty `Effects` whose wake list reuses the kernel's spare capacity
/// (given back by `apply`): no allocation per message.
pub fn effects(k: &mut Kernel) -> Effects {
    Effects {
        wake: core::mem::take(&mut k.fx_spare),
    }
}

/// Carries out `fx`: delivers messages to waiting receivers, restarts
/// senders that have room, fails waits on dead ports; then discards the
/// out-of-line snapshots of messages destroyed on the way. Returns the
/// first receiver that got a message (the caller may hand the processor
/// to it).
pub fn apply(k: &mut Kernel, fx: Effects) -> Option<ThreadId> {
    let first = wake(k, fx);
    if k.ipc.has_released() {
        crate::vm::discard_released(k);
    }
    first
}

fn wake(k: &mut Kernel, fx: Effects) -> Option<ThreadId> {
    let mut pending = fx.wake;
    let mut first = None;
    if pending.is_empty() {
        give_back(k, pending);
        return None;
    }
    // Each delivery can free room (waking a sender) but a sender restarts
    // in its own context, so the chain is short; the bound is a safety net.
    let mut i = 0;
    while i < pending.len() && i < 4096 {
        let (w, why) = pending[i];
        i += 1;
        let tid = ThreadId(w.0 as u32);
        match (k.thread_state(tid), why) {
            (Some(State::MsgReceive), Wake::Message) => {
                let mut more = Effects::default();
                if mach_msg::deliver(k, tid, &mut more) && first.is_none() {
                    first = Some(tid);
                }
                append(&mut pending, more.wake);
            }
            (Some(State::MsgReceive), Wake::PortDied) => {
                k.wake_with(tid, i64::from(RCV_PORT_DIED));
            }
            (Some(State::MsgSend), Wake::Room) => k.restart_syscall(tid),
            (Some(State::MsgSend), Wake::PortDied) => {
                k.wake_with(tid, i64::from(SEND_INVALID_DEST));
            }
            _ => {}
        }
    }
    give_back(k, pending);
    first
}

/// Keeps the larger of two wake lists' capacity for the next `effects`.
fn give_back(k: &mut Kernel, mut v: Vec<(Waiter, Wake)>) {
    if v.capacity() > k.fx_spare.capacity() {
        v.clear();
        k.fx_spare = v;
    }
}

fn append(v: &mut Vec<(Waiter, Wake)>, more: Vec<(Waiter, Wake)>) {
    if !more.is_empty() && v.try_reserve(more.len()).is_ok() {
        v.extend(more);
    }
}

/// Timer tick: timed waits that are over end with a timeout.
pub fn tick(k: &mut Kernel) {
    let mut expired = Vec::new();
    k.expired(&mut expired);
    for tid in expired {
        let code = match k.thread_state(tid) {
            Some(State::MsgReceive) => libmach::abi::RCV_TIMED_OUT,
            Some(State::MsgSend) => libmach::abi::SEND_TIMED_OUT,
            _ => continue,
        };
        k.ipc.cancel_wait(waiter(tid));
        k.wake_with(tid, i64::from(code));
    }
}
