//! Task and thread operations on their ports (paper §3.1): the kernel's
//! fast path for what Mach expresses as messages to those ports. Each takes
//! a send right naming the task or thread in the caller's space.

use super::apply;
use crate::arch::copy::{copy_from_user, copy_to_user};
use crate::arch::trap::TrapFrame;
use crate::kern::scheduler::Kernel;
use crate::kern::thread::{State, UserStart};
use guest_kernel::abi::KILLED_BASE;
use guest_kernel::addr::VirtAddr;
use guest_kernel::ipc::{Effects, KObject, PortId, SpaceId};
use guest_kernel::kern::sched::{TaskId, ThreadId};
use libmach::abi::*;

/// rflags bits a handler may set (arithmetic flags, DF, AC); IF is forced
/// on and IOPL off, as for the system call return.
const USER_RFLAGS: u64 = 0x0000_0cd5 | (1 << 18);
/// Status of a task ended by task_terminate (as SIGKILL would be).
const TERMINATED_STATUS: i64 = KILLED_BASE + 9;
const PROGRAM_NAME_MAX: u64 = 64;
const ARGS_MAX: u64 = 1024;
const STATE_WORDS: usize = 18;

fn space(k: &mut Kernel) -> Result<SpaceId, u32> {
    let (task, _) = k.current_task().ok_or(KERN_FAILURE)?;
    k.task(task).and_then(|t| t.space).ok_or(KERN_FAILURE)
}

fn put_name(k: &mut Kernel, s: SpaceId, at: u64, p: Option<PortId>) -> Result<(), u32> {
    let p = p.ok_or(KERN_TERMINATED)?;
    let n = k.ipc.insert_send(s, p)?;
    if copy_to_user(k, VirtAddr(at), &n.to_le_bytes()).is_err() {
        let mut fx = Effects::default();
        let _ = k.ipc.port_deallocate(s, n, &mut fx);
        apply(k, fx);
        return Err(KERN_INVALID_ADDRESS);
    }
    Ok(())
}

fn task_of(k: &Kernel, s: SpaceId, name: u32) -> Result<TaskId, u32> {
    let p = k.ipc.resolve_send(s, name)?;
    match k.ipc.kobject(p) {
        Some(KObject::Task(t)) => Ok(TaskId(t)),
        _ => Err(KERN_INVALID_ARGUMENT),
    }
}

fn thread_of(k: &Kernel, s: SpaceId, name: u32) -> Result<ThreadId, u32> {
    let p = k.ipc.resolve_send(s, name)?;
    match k.ipc.kobject(p) {
        Some(KObject::Thread(t)) => Ok(ThreadId(t)),
        _ => Err(KERN_INVALID_ARGUMENT),
    }
}

/// A port the caller names by a send right, or None for PORT_NULL.
fn port_or_null(k: &Kernel, s: SpaceId, name: u32) -> Result<Option<PortId>, u32> {
    if name == PORT_NULL {
        return Ok(None);
    }
    k.ipc.resolve_send(s, name).map(Some)
}

pub fn trap(k: &mut Kernel, f: &TrapFrame) -> u32 {
    match call(k, f) {
        Ok(()) => KERN_SUCCESS,
        Err(e) => e,
    }
}

fn call(k: &mut Kernel, f: &TrapFrame) -> Result<(), u32> {
    let s = space(k)?;
    let (me, _) = k.current_task().ok_or(KERN_FAILURE)?;
    match f.rax {
        TRAP_TASK_SELF => {
            let p = k.task(me).and_then(|t| t.port);
            put_name(k, s, f.rdi, p)
        }
        TRAP_THREAD_SELF => {
            let p = k.current().and_then(|t| t.port);
            put_name(k, s, f.rdi, p)
        }
        TRAP_TASK_CREATE => {
            let name = copy_from_user(k, VirtAddr(f.rsi), f.rdx, PROGRAM_NAME_MAX)
                .map_err(|_| KERN_INVALID_ADDRESS)?;
            let args = copy_from_user(k, VirtAddr(f.r10), f.r8, ARGS_MAX)
                .map_err(|_| KERN_INVALID_ADDRESS)?;
            let id = k.spawn(&name, &args, Some(me)).map_err(|e| match e {
                crate::kern::scheduler::SpawnError::NoSuchProgram => KERN_INVALID_ARGUMENT,
                _ => KERN_RESOURCE_SHORTAGE,
            })?;
            // Bootstrap inheritance used the parent link; nothing else may.
            k.detach(id);
            let p = k.task(id).and_then(|t| t.port);
            put_name(k, s, f.rdi, p)
        }
        TRAP_TASK_TERMINATE => {
            let t = task_of(k, s, f.rdi as u32)?;
            k.terminate_task(t, TERMINATED_STATUS);
            Ok(())
        }
        TRAP_TASK_SUSPEND | TRAP_TASK_RESUME => {
            let t = task_of(k, s, f.rdi as u32)?;
            let threads: alloc::vec::Vec<ThreadId> = k.task_threads(t).to_vec();
            for th in threads {
                if f.rax == TRAP_TASK_SUSPEND {
                    k.suspend(th);
                } else {
                    k.resume(th);
                }
            }
            Ok(())
        }
        TRAP_THREAD_CREATE => {
            let t = task_of(k, s, f.rdi as u32)?;
            let (entry, stack) = (VirtAddr(f.rsi), VirtAddr(f.rdx));
            if !entry.is_user() || !stack.is_user() {
                return Err(KERN_INVALID_ADDRESS);
            }
            let start = UserStart {
                rip: entry.0,
                rsp: stack.0,
                rdi: f.r10,
                rsi: 0,
            };
            let id = k
                .create_thread(t, start)
                .map_err(|_| KERN_RESOURCE_SHORTAGE)?;
            let p = k.thread(id).and_then(|x| x.port);
            put_name(k, s, f.r8, p)
        }
        TRAP_THREAD_TERMINATE => {
            let th = thread_of(k, s, f.rdi as u32)?;
            k.terminate_thread(th);
            Ok(())
        }
        TRAP_THREAD_SUSPEND => {
            let th = thread_of(k, s, f.rdi as u32)?;
            k.suspend(th);
            Ok(())
        }
        TRAP_THREAD_RESUME => {
            let th = thread_of(k, s, f.rdi as u32)?;
            if k.resume(th) {
                Ok(())
            } else {
                Err(KERN_FAILURE)
            }
        }
        TRAP_THREAD_GET_STATE => {
            let th = thread_of(k, s, f.rdi as u32)?;
            let frame = stopped_frame(k, th)?;
            // SAFETY: a stopped thread's frame stays valid until it runs.
            let fr = unsafe { &*frame };
            let words = [
                fr.rax, fr.rbx, fr.rcx, fr.rdx, fr.rsi, fr.rdi, fr.rbp, fr.rsp, fr.r8, fr.r9,
                fr.r10, fr.r11, fr.r12, fr.r13, fr.r14, fr.r15, fr.rip, fr.rflags,
            ];
            let mut bytes = [0u8; STATE_WORDS * 8];
            for (i, w) in words.iter().enumerate() {
                bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
            }
            copy_to_user(k, VirtAddr(f.rsi), &bytes).map_err(|_| KERN_INVALID_ADDRESS)
        }
        TRAP_THREAD_SET_STATE => {
            let th = thread_of(k, s, f.rdi as u32)?;
            let bytes = copy_from_user(k, VirtAddr(f.rsi), (STATE_WORDS * 8) as u64, 256)
                .map_err(|_| KERN_INVALID_ADDRESS)?;
            let mut w = [0u64; STATE_WORDS];
            for (i, c) in bytes.chunks_exact(8).enumerate().take(STATE_WORDS) {
                w[i] = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            }
            let (rip, rsp) = (VirtAddr(w[16]), VirtAddr(w[7]));
            if !rip.is_user() || !rsp.is_user() {
                return Err(KERN_INVALID_VALUE);
            }
            let frame = stopped_frame(k, th)?;
            // SAFETY: a stopped thread's frame stays valid until it runs;
            // segment selectors are not the handler's to change.
            let fr = unsafe { &mut *frame };
            [
                fr.rax, fr.rbx, fr.rcx, fr.rdx, fr.rsi, fr.rdi, fr.rbp, fr.rsp, fr.r8, fr.r9,
                fr.r10, fr.r11, fr.r12, fr.r13, fr.r14, fr.r15, fr.rip,
            ] = [
                w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8], w[9], w[10], w[11], w[12],
                w[13], w[14], w[15], w[16],
            ];
            fr.rflags = (w[17] & USER_RFLAGS) | 0x202;
            Ok(())
        }
        TRAP_TASK_SET_EXCEPTION_PORT => {
            let t = task_of(k, s, f.rdi as u32)?;
            let p = port_or_null(k, s, f.rsi as u32)?;
            k.task_mut(t).ok_or(KERN_TERMINATED)?.exception = p;
            Ok(())
        }
        TRAP_THREAD_SET_EXCEPTION_PORT => {
            let th = thread_of(k, s, f.rdi as u32)?;
            let p = port_or_null(k, s, f.rsi as u32)?;
            k.thread(th).ok_or(KERN_TERMINATED)?.exception = p;
            Ok(())
        }
        TRAP_TASK_SET_BOOTSTRAP_PORT => {
            let t = task_of(k, s, f.rdi as u32)?;
            let p = port_or_null(k, s, f.rsi as u32)?;
            k.task_mut(t).ok_or(KERN_TERMINATED)?.bootstrap = p;
            Ok(())
        }
        TRAP_TASK_GET_BOOTSTRAP_PORT => {
            let t = task_of(k, s, f.rdi as u32)?;
            let p = k.task(t).and_then(|x| x.bootstrap);
            put_name(k, s, f.rsi, p)
        }
        _ => Err(KERN_INVALID_ARGUMENT),
    }
}

/// The saved frame of a thread that is not running: suspended, or stopped
/// in an exception, or blocked. Never the caller itself.
fn stopped_frame(k: &mut Kernel, th: ThreadId) -> Result<*mut crate::arch::trap::TrapFrame, u32> {
    if k.current_thread() == Some(th) {
        return Err(KERN_FAILURE);
    }
    let t = k.thread(th).ok_or(KERN_TERMINATED)?;
    let stopped = t.suspend > 0 || t.state == State::Exception;
    if !stopped || t.state == State::Running {
        return Err(KERN_FAILURE);
    }
    Ok(t.frame)
}
