//! The port traps of the paper's Table 3-2 (docs/mach-ipc.md §2), on the
//! caller's own name space. Out values go to user memory; results are
//! kern_return_t.

use super::apply;
use crate::arch::copy::copy_to_user;
use crate::arch::trap::TrapFrame;
use crate::kern::scheduler::Kernel;
use guest_kernel::addr::VirtAddr;
use guest_kernel::ipc::{Effects, SpaceId};
use libmach::abi::*;

/// Largest `port_messages` answer in one call.
const MESSAGES_MAX: usize = 256;

fn space(k: &mut Kernel) -> Result<SpaceId, u32> {
    let (task, _) = k.current_task().ok_or(KERN_FAILURE)?;
    k.task(task).and_then(|t| t.space).ok_or(KERN_FAILURE)
}

fn put_u32(k: &mut Kernel, at: u64, v: u32) -> Result<(), u32> {
    copy_to_user(k, VirtAddr(at), &v.to_le_bytes()).map_err(|_| KERN_INVALID_ADDRESS)
}

pub fn trap(k: &mut Kernel, f: &TrapFrame) -> u32 {
    match call(k, f) {
        Ok(()) => KERN_SUCCESS,
        Err(e) => e,
    }
}

fn call(k: &mut Kernel, f: &TrapFrame) -> Result<(), u32> {
    let s = space(k)?;
    let name = f.rdi as u32;
    let mut fx = Effects::default();
    let r = match f.rax {
        TRAP_PORT_ALLOCATE => {
            let n = k.ipc.port_allocate(s)?;
            if let Err(e) = put_u32(k, f.rdi, n) {
                let _ = k.ipc.port_deallocate(s, n, &mut fx);
                Err(e)
            } else {
                Ok(())
            }
        }
        TRAP_PORT_DEALLOCATE => k.ipc.port_deallocate(s, name, &mut fx),
        TRAP_PORT_ENABLE => k.ipc.port_enable(s, name),
        TRAP_PORT_DISABLE => k.ipc.port_disable(s, name, &mut fx),
        TRAP_PORT_MESSAGES => {
            let max = (f.rsi as usize).min(MESSAGES_MAX);
            let mut names = [0u32; MESSAGES_MAX];
            let n = k.ipc.port_messages(s, &mut names[..max]);
            let mut bytes = [0u8; MESSAGES_MAX * 4];
            for (i, v) in names[..n].iter().enumerate() {
                bytes[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
            copy_to_user(k, VirtAddr(f.rdi), &bytes[..4 * n]).map_err(|_| KERN_INVALID_ADDRESS)?;
            put_u32(k, f.rdx, n as u32)
        }
        TRAP_PORT_STATUS => {
            let st = k.ipc.port_status(s, name)?;
            let mut bytes = [0u8; 24];
            let fields = [
                st.enabled,
                st.num_msgs,
                st.backlog,
                st.receiver,
                st.send_refs,
                st.seqno,
            ];
            for (i, v) in fields.iter().enumerate() {
                bytes[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
            copy_to_user(k, VirtAddr(f.rsi), &bytes).map_err(|_| KERN_INVALID_ADDRESS)
        }
        TRAP_PORT_SET_BACKLOG => k.ipc.port_set_backlog(s, name, f.rsi as u32, &mut fx),
        TRAP_PORT_REQUEST_DEAD_NAME => k.ipc.request_dead_name(s, name, f.rsi as u32, &mut fx),
        _ => Err(KERN_INVALID_ARGUMENT),
    };
    apply(k, fx);
    r
}
