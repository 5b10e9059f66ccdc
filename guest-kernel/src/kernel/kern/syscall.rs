//! The system call table: decodes a trap's number and arguments and calls
//! the service. User memory is reached only through arch::copy.

use crate::arch::copy::{copy_from_user, user_pieces};
use crate::arch::trap::TrapFrame;
use crate::kern::scheduler::{Kernel, SpawnError};
use crate::kern::task::LoadError;
use crate::vm::fault::ready_for_call;
use crate::vm::object_io;
use alloc::vec::Vec;
use guest_kernel::abi::*;
use guest_kernel::addr::{PhysAddr, VirtAddr};
use guest_kernel::arch::paging::USER;
use guest_kernel::kern::sched::TaskId;
use libmach::abi::{
    RCV_MSG, SEND_MSG, TRAP_HOST_OBJECT_INFO, TRAP_MACH_MSG, TRAP_PORT_ALLOCATE,
    TRAP_PORT_REQUEST_DEAD_NAME, TRAP_TASK_GET_BOOTSTRAP_PORT, TRAP_TASK_SELF, TRAP_VM_ALLOCATE,
};

const MAX_CONSOLE_WRITE: u64 = 64 * 1024;
const MAX_NAME: u64 = 64;
const MAX_ARGS: u64 = 1024;
/// rflags bits a user may set (arithmetic flags, DF, AC); IF is forced on
/// and IOPL off.
const USER_RFLAGS: u64 = 0x0000_0cd5 | (1 << 18);

pub fn handle(k: &mut Kernel, f: &mut TrapFrame) {
    // Return to the instruction after `syscall`, with sanitised flags; on
    // software KVM rcx/r11 may be anything the user put there.
    if !VirtAddr(f.rcx).is_user() {
        k.kill_current(13, 0, f.rcx, 0);
        return;
    }
    f.rip = f.rcx;
    f.rflags = (f.r11 & USER_RFLAGS) | 0x202;
    let result = match f.rax {
        SYS_EXIT => {
            k.exit_current(f.rdi as i64);
            return;
        }
        SYS_CONSOLE_WRITE => {
            // Output from pager-backed memory is brought in first (the
            // call has no effect before its copy, so it can start over).
            if f.rsi <= MAX_CONSOLE_WRITE
                && !crate::vm::fault::ready_for_call(k, f.rdi, f.rsi, false)
            {
                return;
            }
            console_write(k, VirtAddr(f.rdi), f.rsi)
        }
        SYS_TASK_SPAWN => spawn(k, f),
        SYS_TASK_WAIT => match k.wait(TaskId(f.rdi as u32)) {
            Ok(Some(status)) => status,
            // Blocked: the exiting task fills in rax when it wakes us.
            Ok(None) => return,
            Err(e) => e,
        },
        SYS_YIELD => {
            k.need_resched = true;
            0
        }
        SYS_OBJECT_LOOKUP => match object_io::lookup(k, f) {
            Some(r) => r,
            None => return,
        },
        SYS_OBJECT_STAT => object_io::stat(k, f),
        TRAP_MACH_MSG => {
            // A message buffer in pager-backed memory is brought in first,
            // sleeping if need be, while the call can still start over.
            let (buf, option) = (f.rdi, f.rsi as u32);
            let ready = (option & SEND_MSG == 0 || ready_for_call(k, buf, f.rdx, false))
                && (option & RCV_MSG == 0 || ready_for_call(k, buf, f.r10, true));
            if !ready {
                return;
            }
            match crate::ipc::mach_msg::trap(k, f) {
                Some(r) => r,
                None => return,
            }
        }

        TRAP_PORT_ALLOCATE..=TRAP_PORT_REQUEST_DEAD_NAME => {
            i64::from(crate::ipc::ports::trap(k, f))
        }
        TRAP_TASK_SELF..=TRAP_TASK_GET_BOOTSTRAP_PORT => i64::from(crate::ipc::tasks::trap(k, f)),
        TRAP_VM_ALLOCATE..=TRAP_HOST_OBJECT_INFO => i64::from(crate::vm::calls::trap(k, f)),
        SYS_MILESTONE => {
            crate::arch::cpu::outl(PORT_MILESTONE, MILESTONE_USER_BASE | (f.rdi as u32 & 0xff));
            0
        }
        SYS_OBJECT_READ | SYS_OBJECT_WRITE => {
            match object_io::io(k, f, f.rax == SYS_OBJECT_WRITE) {
                Some(r) => r,
                None => return,
            }
        }
        SYS_OBJECT_SYNC => match object_io::sync(k, f) {
            Some(r) => r,
            None => return,
        },
        _ => ERR_NO_SYSCALL,
    };
    f.rax = result as u64;
}

/// The VMM reads the user's bytes straight from guest memory: one doorbell
/// per page-contiguous piece, no copy in ring 0.
fn console_write(k: &mut Kernel, va: VirtAddr, len: u64) -> i64 {
    if len > MAX_CONSOLE_WRITE {
        return ERR_INVALID;
    }
    let mut pieces: Vec<(PhysAddr, u64)> = Vec::new();
    if let Err(e) = user_pieces(k, va, len, USER, |pa, n| match pieces.last_mut() {
        Some((last, ln)) if last.0 + *ln == pa.0 => *ln += n,
        _ => pieces.push((pa, n)),
    }) {
        return e;
    }
    let mut c = crate::kern::console::lock();
    for (pa, n) in pieces {
        c.write_phys(pa, n as u32);
    }
    len as i64
}

fn spawn(k: &mut Kernel, f: &TrapFrame) -> i64 {
    let name = match copy_from_user(k, VirtAddr(f.rdi), f.rsi, MAX_NAME) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let args = match copy_from_user(k, VirtAddr(f.rdx), f.r10, MAX_ARGS) {
        Ok(a) => a,
        Err(e) => return e,
    };
    let parent = k.current_task().map(|(t, _)| t);
    // The old spawn call: children inherit memory as task_create's
    // inherit_memory does (the vm_inherit of each region decides).
    match k.spawn(&name, &args, parent, true) {
        Ok(id) => id.0 as i64,
        Err(SpawnError::NoSuchProgram) => ERR_NO_SUCH_PROGRAM,
        Err(SpawnError::Load(LoadError::NoMemory)) => ERR_NO_MEMORY,
        Err(SpawnError::Load(_)) => ERR_INVALID,
        Err(SpawnError::NoResources) => ERR_NO_MEMORY,
    }
}
