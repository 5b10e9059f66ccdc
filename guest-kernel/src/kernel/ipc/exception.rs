//! Exceptions as messages (paper §3.1, Mach's exception ports): a user
//! fault stops the thread and sends EXCEPTION_RAISE to the thread's (else
//! the task's) exception port, with send rights to the thread and task
//! ports and a send-once reply right to the thread port. The handler may
//! read and change the thread's registers (thread_get_state/set_state),
//! then replies: 0 resumes the thread, anything else ends its task. With no
//! handler the task is killed and reported, as before.

use super::apply;
use crate::kern::scheduler::Kernel;
use crate::kern::thread::State;
use guest_kernel::ipc::Effects;
use guest_kernel::kern::sched::ThreadId;
use libmach::abi::*;

/// A user exception in the running thread. True if a handler was told
/// (the thread now waits for its reply); false: no handler, kill it.
pub fn raise(k: &mut Kernel, vector: u64, error: u64, rip: u64, cr2: u64) -> bool {
    // NMI and machine checks are never the user's doing.
    if vector == 2 || vector == 18 {
        return false;
    }
    let Some(tid) = k.current_thread() else {
        return false;
    };
    let Some((task, _)) = k.current_task() else {
        return false;
    };
    let (th_port, th_exc) = match k.thread(tid) {
        Some(t) => (t.port, t.exception),
        None => return false,
    };
    let (task_port, task_exc) = match k.task(task) {
        Some(t) => (t.port, t.exception),
        None => return false,
    };
    let (Some(th_port), Some(task_port)) = (th_port, task_port) else {
        return false;
    };
    let info = ExceptionInfo {
        vector,
        error,
        rip,
        cr2,
    };
    let mut bytes = [0u8; 32];
    for (i, v) in [info.vector, info.error, info.rip, info.cr2]
        .iter()
        .enumerate()
    {
        bytes[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }
    let ports = [(th_port, PORT_SEND), (task_port, PORT_SEND)];
    let mut fx = Effects::default();
    let sent = [th_exc, task_exc].into_iter().flatten().any(|dest| {
        k.ipc
            .kernel_send(
                dest,
                EXCEPTION_RAISE,
                &ports,
                &bytes,
                Some(th_port),
                &mut fx,
            )
            .is_ok()
    });
    if sent {
        k.block_current(State::Exception);
    }
    apply(k, fx);
    sent
}

/// The handler answered for `tid` (EXCEPTION_REPLY, which
/// `kobject::serve` dispatches here): resume it where it faulted (with the
/// state the handler may have set), or end its task.
pub fn reply(k: &mut Kernel, tid: ThreadId, rc: i32) {
    let Some(t) = k.thread(tid) else {
        return;
    };
    if t.state != State::Exception {
        return;
    }
    let task = t.task;
    if rc == 0 {
        k.resume_excepted(tid);
    } else {
        k.terminate_task(task, KILLED_BASE_EXCEPTION);
    }
}

/// Status of a task its exception handler chose to end.
const KILLED_BASE_EXCEPTION: i64 = 128 + 64;
