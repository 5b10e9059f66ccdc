//! The `mach_msg` trap: msg_send, msg_receive and msg_rpc (paper Table
//! 3-1) in one, with options and timeouts (docs/mach-ipc.md §2).

use super::memory::{NoOol, Sink, Source};
use super::{apply, effects, waiter};
use crate::arch::copy::{read_user, write_in};
use crate::arch::trap::TrapFrame;
use crate::kern::scheduler::Kernel;
use crate::kern::thread::{RecvWait, State};
use alloc::vec::Vec;
use core::mem::MaybeUninit;
use guest_kernel::addr::{PhysAddr, VirtAddr};
use guest_kernel::ipc::{Direct, DirectTo, Effects, Kmsg, Recv, Send, SpaceId};
use guest_kernel::kern::sched::{TaskId, ThreadId};
use libmach::abi::*;

/// Messages up to this size are copied through the kernel stack, with no
/// heap allocation for the copy.
const SMALL: usize = 256;

/// A copy buffer: on the stack for small messages. Only its first `len`
/// bytes are ever initialized (zeroed at creation), so a null message does
/// not pay for clearing all of the stack buffer.
// The large variant is the point: small messages never touch the heap.
#[allow(clippy::large_enum_variant)]
enum Buf {
    Small(MaybeUninit<[u64; SMALL / 8]>, usize),
    Heap(Vec<u8>),
}

impl Buf {
    fn new(len: usize) -> Option<Buf> {
        if len <= SMALL {
            let mut a = MaybeUninit::<[u64; SMALL / 8]>::uninit();
            // SAFETY: `len` <= SMALL bytes inside the array.
            unsafe { core::ptr::write_bytes(a.as_mut_ptr().cast::<u8>(), 0, len) };
            return Some(Buf::Small(a, len));
        }
        let mut v = Vec::new();
        v.try_reserve_exact(len).ok()?;
        v.resize(len, 0);
        Some(Buf::Heap(v))
    }
    fn bytes(&mut self) -> &mut [u8] {
        match self {
            // SAFETY: the first `n` bytes of the array, initialized in `new`.
            Buf::Small(a, n) => unsafe {
                core::slice::from_raw_parts_mut(a.as_mut_ptr().cast::<u8>(), *n)
            },
            Buf::Heap(v) => v,
        }
    }
}

/// `None`: the caller blocked and gets its result when woken.
pub fn trap(k: &mut Kernel, f: &TrapFrame) -> Option<i64> {
    let buf = VirtAddr(f.rdi);
    let option = f.rsi as u32;
    let (send_size, rcv_size) = (f.rdx as u32, f.r10 as u32);
    let (rcv_name, timeout) = (f.r8 as u32, f.r9 as u32);
    let tid = k.current_thread()?;
    let (task, root) = k.current_task()?;
    let Some(space) = k.task(task).and_then(|t| t.space) else {
        return Some(i64::from(SEND_INVALID_DEST));
    };
    let mut receiver = None;
    if option & SEND_MSG != 0 {
        match send(k, space, buf, send_size, option, timeout) {
            Ok(r) => receiver = r,
            Err(Some(code)) => return Some(i64::from(code)),
            Err(None) => return None,
        }
    }
    // A message to our own task or thread port may have ended us.
    if option & RCV_MSG == 0 || k.current().is_none() {
        return Some(i64::from(MSG_SUCCESS));
    }
    let want = RecvWait {
        buf: buf.0,
        size: rcv_size,
        name: rcv_name,
        options: option,
    };
    let r = receive(k, tid, task, space, root, want, timeout);
    if r.is_none()
        && let Some(t) = receiver
    {
        // msg_rpc: the client now waits for the reply it asked for, so the
        // server it just woke runs next (no trip through the run queue).
        k.hand_off(t);
    }
    r.map(i64::from)
}

/// Ok(receiver woken, if any); Err(Some(code)) failed; Err(None) blocked.
fn send(
    k: &mut Kernel,
    space: SpaceId,
    buf: VirtAddr,
    size: u32,
    option: u32,
    timeout: u32,
) -> Result<Option<ThreadId>, Option<u32>> {
    if size > MSG_SIZE_MAX {
        return Err(Some(SEND_TOO_LARGE));
    }
    if (size as usize) < HEADER_SIZE || !size.is_multiple_of(8) {
        return Err(Some(SEND_MSG_TOO_SMALL));
    }
    let mut copy = Buf::new(size as usize).ok_or(Some(SEND_NO_BUFFER))?;
    read_user(k, buf, copy.bytes()).map_err(|_| Some(SEND_INVALID_DATA))?;
    let mut fx = effects(k);
    // Only a complex message can carry out-of-line regions; the others
    // skip lending the sender's map (the null RPC's hot path).
    let bits = copy
        .bytes()
        .first_chunk::<4>()
        .map_or(0, |b| u32::from_le_bytes(*b));
    if bits & BITS_COMPLEX == 0
        && size as usize <= SMALL
        && let Some(done) = send_direct(k, space, copy.bytes(), &mut fx)
    {
        return done;
    }
    let r = if bits & BITS_COMPLEX != 0 {
        let (me, _) = k.current_task().ok_or(Some(SEND_INVALID_DEST))?;
        let (ipc, parts) = k.ipc_and_vm(me).ok_or(Some(SEND_INVALID_DEST))?;
        ipc.send(space, copy.bytes(), &mut Source { parts }, &mut fx)
    } else {
        k.ipc.send(space, copy.bytes(), &mut NoOol, &mut fx)
    };
    match r {
        Send::Queued => Ok(apply(k, fx)),
        Send::Full { port } => {
            apply(k, fx);
            if option & SEND_TIMEOUT != 0 && timeout == 0 {
                return Err(Some(SEND_TIMED_OUT));
            }
            let tid = k.current_thread().ok_or(Some(SEND_INVALID_DEST))?;
            k.ipc.wait_send(port, waiter(tid)).map_err(Some)?;
            if option & SEND_TIMEOUT != 0 && !k.set_timeout(k.ticks_for_ms(u64::from(timeout))) {
                k.ipc.cancel_wait(waiter(tid));
                return Err(Some(SEND_NO_BUFFER));
            }
            k.block_current(State::MsgSend);
            Err(None)
        }
        Send::ToKernel(km) => {
            let code = super::kobject::serve(k, km, &mut fx);
            apply(k, fx);
            if code == MSG_SUCCESS {
                Ok(None)
            } else {
                Err(Some(code))
            }
        }
        Send::Error(e) => {
            apply(k, fx);
            Err(Some(e))
        }
    }
}

/// The RPC fast path (`Ipc::send_direct`): a simple message whose
/// destination's first waiter is a thread blocked receiving on it goes
/// straight into that thread's buffer, which wakes with the result, no
/// kernel message queued. None: not that case, nothing changed.
fn send_direct(
    k: &mut Kernel,
    space: SpaceId,
    msg: &[u8],
    fx: &mut Effects,
) -> Option<Result<Option<ThreadId>, Option<u32>>> {
    let remote = msg
        .get(8..12)
        .and_then(|b| b.first_chunk::<4>())
        .map(|b| u32::from_le_bytes(*b))?;
    let w = k.ipc.direct_candidate(space, remote)?;
    let tid = ThreadId(w.0 as u32);
    let (task, want) = k
        .thread(tid)
        .filter(|t| t.state == State::MsgReceive)
        .map(|t| (t.task, t.recv))?;
    let (rspace, root) = k.task(task).and_then(|t| Some((t.space?, t.root)))?;
    let mut out = [0u8; SMALL];
    let mut to = DirectTo {
        waiter: w,
        space: rspace,
        name: want.name,
        max: want.size.min(MSG_SIZE_MAX) as usize,
        out: &mut out,
    };
    let size = match k.ipc.send_direct(space, msg, &mut to, fx) {
        Direct::Declined => return None,
        Direct::Sent(Send::Error(e)) => {
            apply(k, core::mem::take(fx));
            return Some(Err(Some(e)));
        }
        // Anything else (`Full`) the ordinary send handles again, from
        // scratch: nothing changed.
        Direct::Sent(_) => return None,
        Direct::Delivered { size, .. } => size,
    };
    let bytes = out.get(..size).unwrap_or(&[]);
    let code = match crate::vm::fault::prefault(k, task, want.buf, size as u64, true)
        .and_then(|()| write_in(&mut k.frames, root, VirtAddr(want.buf), bytes))
    {
        Ok(()) => MSG_SUCCESS,
        Err(_) => RCV_INVALID_DATA,
    };
    k.wake_with(tid, i64::from(code));
    apply(k, core::mem::take(fx));
    Some(Ok(Some(tid)))
}

/// `None`: blocked until a sender delivers, a timeout, or the port's death.
fn receive(
    k: &mut Kernel,
    tid: ThreadId,
    task: TaskId,
    space: SpaceId,
    root: PhysAddr,
    want: RecvWait,
    timeout: u32,
) -> Option<u32> {
    if (want.size as usize) < HEADER_SIZE {
        return Some(RCV_TOO_LARGE);
    }
    let max = want.size.min(MSG_SIZE_MAX) as usize;
    let mut fx = effects(k);
    let large = want.options & RCV_LARGE != 0;
    // A poll never waits; otherwise an empty queue parks us in the same call.
    let poll = want.options & RCV_TIMEOUT != 0 && timeout == 0;
    let r = if poll {
        k.ipc.receive(space, want.name, max, large, &mut fx)
    } else {
        k.ipc
            .receive_or_wait(space, want.name, max, large, waiter(tid), &mut fx)
    };
    let code = match r {
        Recv::Message(km) => copy_out(k, task, space, root, km, VirtAddr(want.buf), &mut fx),
        Recv::Empty => {
            if poll {
                RCV_TIMED_OUT
            } else {
                if want.options & RCV_TIMEOUT != 0
                    && !k.set_timeout(k.ticks_for_ms(u64::from(timeout)))
                {
                    k.ipc.cancel_wait(waiter(tid));
                    apply(k, fx);
                    return Some(RCV_TIMED_OUT);
                }
                if let Some(t) = k.current() {
                    t.recv = want;
                }
                k.block_current(State::MsgReceive);
                apply(k, fx);
                return None;
            }
        }
        Recv::TooLarge { size } => {
            // Tell the caller how much it needs, in the header's size.
            let _ = write_in(
                &mut k.frames,
                root,
                VirtAddr(want.buf + 4),
                &(size as u32).to_le_bytes(),
            );
            RCV_TOO_LARGE
        }
        Recv::Error(e) => e,
    };
    apply(k, fx);
    Some(code)
}

/// Writes a dequeued message into the buffer at `buf` of `task` (whose
/// tables are `root`): rights become names in its space, out-of-line
/// regions pages of its own.
fn copy_out(
    k: &mut Kernel,
    task: TaskId,
    space: SpaceId,
    root: PhysAddr,
    km: Kmsg,
    buf: VirtAddr,
    fx: &mut Effects,
) -> u32 {
    let Some(mut copy) = Buf::new(km.size()) else {
        k.ipc.kmsg_destroy(km, fx);
        return RCV_INVALID_DATA;
    };
    let r = if km.has_ool() {
        let Some((ipc, parts)) = k.ipc_and_vm(task) else {
            k.ipc.kmsg_destroy(km, fx);
            return RCV_INVALID_DATA;
        };
        ipc.copyout(space, km, copy.bytes(), &mut Sink { parts }, fx)
    } else {
        k.ipc.copyout(space, km, copy.bytes(), &mut NoOol, fx)
    };
    match r {
        Ok(n) => match crate::vm::fault::prefault(k, task, buf.0, n as u64, true)
            .and_then(|()| write_in(&mut k.frames, root, buf, &copy.bytes()[..n]))
        {
            Ok(()) => MSG_SUCCESS,
            Err(_) => RCV_INVALID_DATA,
        },
        Err(e) => e,
    }
}

/// A sender made a message available to `tid`, blocked in receive: take it
/// for it, into its own buffer, and wake it with the result. False if the
/// message went to someone else first (it waits again).
pub fn deliver(k: &mut Kernel, tid: ThreadId, fx: &mut Effects) -> bool {
    let Some((task, want)) = k.thread(tid).map(|t| (t.task, t.recv)) else {
        return false;
    };
    let Some((space, root)) = k.task(task).and_then(|t| Some((t.space?, t.root))) else {
        return false;
    };
    let max = want.size.min(MSG_SIZE_MAX) as usize;
    let large = want.options & RCV_LARGE != 0;
    match k.ipc.receive(space, want.name, max, large, fx) {
        Recv::Message(km) => {
            let code = copy_out(k, task, space, root, km, VirtAddr(want.buf), fx);
            k.wake_with(tid, i64::from(code));
            true
        }
        Recv::Empty => {
            if k.ipc.wait_receive(space, want.name, waiter(tid)).is_err() {
                k.wake_with(tid, i64::from(RCV_INVALID_NAME));
            }
            false
        }
        Recv::TooLarge { size } => {
            let _ = write_in(
                &mut k.frames,
                root,
                VirtAddr(want.buf + 4),
                &(size as u32).to_le_bytes(),
            );
            k.wake_with(tid, i64::from(RCV_TOO_LARGE));
            false
        }
        Recv::Error(e) => {
            k.wake_with(tid, i64::from(e));
            false
        }
    }
}
