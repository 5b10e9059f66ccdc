//! Task and thread operations on their ports (paper §3.1). `perform` is
//! the one implementation of each; it is reached two ways: by the traps
//! here (the fast path: a send right named in a register, out values
//! written to user memory) and by messages to the task or thread port
//! (`kobject::serve`, docs/mach-ipc.md §5.1), as Mach's kernel serves them.

use super::apply;
use crate::arch::copy::{copy_from_user, copy_to_user};
use crate::arch::trap::TrapFrame;
use crate::kern::scheduler::Kernel;
use crate::kern::thread::{State, UserStart};
use guest_kernel::abi::KILLED_BASE;
use guest_kernel::addr::VirtAddr;
use guest_kernel::ipc::kobject::Request;
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

/// The kernel object a send right of the caller names.
fn target(k: &Kernel, s: SpaceId, name: u32) -> Result<KObject, u32> {
    let p = k.ipc.resolve_send(s, name)?;
    k.ipc.kobject(p).ok_or(KERN_INVALID_ARGUMENT)
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
            return put_name(k, s, f.rdi, p);
        }
        TRAP_THREAD_SELF => {
            let p = k.current().and_then(|t| t.port);
            return put_name(k, s, f.rdi, p);
        }
        TRAP_TASK_CREATE => return task_create(k, s, me, f),
        _ => {}
    }
    // The rest act on the task or thread `rdi` names.
    let obj = target(k, s, f.rdi as u32)?;
    let req = match f.rax {
        TRAP_TASK_TERMINATE => Request::TaskTerminate,
        TRAP_TASK_SUSPEND => Request::TaskSuspend,
        TRAP_TASK_RESUME => Request::TaskResume,
        TRAP_THREAD_CREATE => Request::ThreadCreate {
            entry: f.rsi,
            stack: f.rdx,
            arg: f.r10,
        },
        TRAP_THREAD_TERMINATE => Request::ThreadTerminate,
        TRAP_THREAD_SUSPEND => Request::ThreadSuspend,
        TRAP_THREAD_RESUME => Request::ThreadResume,
        TRAP_THREAD_GET_STATE => Request::ThreadGetState,
        TRAP_THREAD_SET_STATE => {
            let bytes = copy_from_user(k, VirtAddr(f.rsi), ThreadState::SIZE as u64, 256)
                .map_err(|_| KERN_INVALID_ADDRESS)?;
            Request::ThreadSetState(ThreadState::from_bytes(&bytes).ok_or(KERN_INVALID_ADDRESS)?)
        }
        TRAP_TASK_SET_EXCEPTION_PORT => {
            Request::TaskSetExceptionPort(port_or_null(k, s, f.rsi as u32)?)
        }
        TRAP_THREAD_SET_EXCEPTION_PORT => {
            Request::ThreadSetExceptionPort(port_or_null(k, s, f.rsi as u32)?)
        }
        TRAP_TASK_SET_BOOTSTRAP_PORT => {
            Request::TaskSetBootstrapPort(port_or_null(k, s, f.rsi as u32)?)
        }
        TRAP_TASK_GET_BOOTSTRAP_PORT => Request::TaskGetBootstrapPort,
        _ => return Err(KERN_INVALID_ARGUMENT),
    };
    match perform(k, obj, req)? {
        Out::None => Ok(()),
        Out::State(st) => {
            copy_to_user(k, VirtAddr(f.rsi), &st.to_bytes()).map_err(|_| KERN_INVALID_ADDRESS)
        }
        Out::Port(p) => {
            let at = if f.rax == TRAP_THREAD_CREATE {
                f.r8
            } else {
                f.rsi
            };
            put_name(k, s, at, Some(p))
        }
    }
}

fn task_create(k: &mut Kernel, s: SpaceId, me: TaskId, f: &TrapFrame) -> Result<(), u32> {
    let name = copy_from_user(k, VirtAddr(f.rsi), f.rdx, PROGRAM_NAME_MAX)
        .map_err(|_| KERN_INVALID_ADDRESS)?;
    let args =
        copy_from_user(k, VirtAddr(f.r10), f.r8, ARGS_MAX).map_err(|_| KERN_INVALID_ADDRESS)?;
    let inherit = f.r9 != 0;
    let id = k
        .spawn(&name, &args, Some(me), inherit)
        .map_err(|e| match e {
            crate::kern::scheduler::SpawnError::NoSuchProgram => KERN_INVALID_ARGUMENT,
            _ => KERN_RESOURCE_SHORTAGE,
        })?;
    // Bootstrap inheritance used the parent link; nothing else may.
    k.detach(id);
    let p = k.task(id).and_then(|t| t.port);
    put_name(k, s, f.rdi, p)
}

/// What an operation gives back.
pub enum Out {
    None,
    State(ThreadState),
    /// A send right the kernel makes for the caller (a new thread's port,
    /// the bootstrap port).
    Port(PortId),
}

/// Carries out `req` on `obj` (by trap or by message: the same code).
/// `KERN_INVALID_ARGUMENT` if `obj` is not the kind the operation is for.
pub fn perform(k: &mut Kernel, obj: KObject, req: Request) -> Result<Out, u32> {
    let (task, thread) = match obj {
        KObject::Task(t) => (Some(TaskId(t)), None),
        KObject::Thread(t) => (None, Some(ThreadId(t))),
        KObject::HostObject(_) | KObject::MemoryControl(_) => return Err(KERN_INVALID_ARGUMENT),
    };
    let task = || task.ok_or(KERN_INVALID_ARGUMENT);
    let thread = || thread.ok_or(KERN_INVALID_ARGUMENT);
    match req {
        Request::TaskTerminate => k.terminate_task(task()?, TERMINATED_STATUS),
        Request::TaskSuspend | Request::TaskResume => {
            let t = task()?;
            // At most MAX_THREADS; a copy, since suspend/resume need `k`.
            let threads: alloc::vec::Vec<ThreadId> = k.task_threads(t).to_vec();
            for th in threads {
                if req == Request::TaskSuspend {
                    k.suspend(th);
                } else {
                    k.resume(th);
                }
            }
        }
        Request::ThreadCreate { entry, stack, arg } => {
            let t = task()?;
            let (entry, stack) = (VirtAddr(entry), VirtAddr(stack));
            if !entry.is_user() || !stack.is_user() {
                return Err(KERN_INVALID_ADDRESS);
            }
            let start = UserStart {
                rip: entry.0,
                rsp: stack.0,
                rdi: arg,
                rsi: 0,
            };
            let id = k
                .create_thread(t, start)
                .map_err(|_| KERN_RESOURCE_SHORTAGE)?;
            let p = k.thread(id).and_then(|x| x.port).ok_or(KERN_TERMINATED)?;
            return Ok(Out::Port(p));
        }
        Request::ThreadTerminate => k.terminate_thread(thread()?),
        Request::ThreadSuspend => {
            k.suspend(thread()?);
        }
        Request::ThreadResume => {
            if !k.resume(thread()?) {
                return Err(KERN_FAILURE);
            }
        }
        Request::ThreadGetState => {
            let frame = stopped_frame(k, thread()?)?;
            // SAFETY: a stopped thread's frame stays valid until it runs.
            let fr = unsafe { &*frame };
            return Ok(Out::State(ThreadState::from_words([
                fr.rax, fr.rbx, fr.rcx, fr.rdx, fr.rsi, fr.rdi, fr.rbp, fr.rsp, fr.r8, fr.r9,
                fr.r10, fr.r11, fr.r12, fr.r13, fr.r14, fr.r15, fr.rip, fr.rflags,
            ])));
        }
        Request::ThreadSetState(st) => {
            let th = thread()?;
            let w = st.words();
            if !VirtAddr(st.rip).is_user() || !VirtAddr(st.rsp).is_user() {
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
        }
        Request::TaskSetExceptionPort(p) => {
            k.task_mut(task()?).ok_or(KERN_TERMINATED)?.exception = p;
        }
        Request::ThreadSetExceptionPort(p) => {
            k.thread(thread()?).ok_or(KERN_TERMINATED)?.exception = p;
        }
        Request::TaskSetBootstrapPort(p) => {
            k.task_mut(task()?).ok_or(KERN_TERMINATED)?.bootstrap = p;
        }
        Request::TaskGetBootstrapPort => {
            let p = k.task(task()?).and_then(|x| x.bootstrap);
            return p.map(Out::Port).ok_or(KERN_TERMINATED);
        }
        // Only a message carries it; `kobject::serve` handles it.
        Request::ExceptionReply(_) => return Err(MIG_BAD_ID),
    }
    Ok(Out::None)
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
