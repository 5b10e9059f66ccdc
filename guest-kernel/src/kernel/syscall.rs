//! System calls. Every user pointer is checked against the task's page
//! tables before the kernel touches the memory behind it, and user data is
//! reached through the direct map, never through the user mapping.

use crate::mm::{DirectTables, phys_to_virt};
use crate::objcall;
use crate::scheduler::{Kernel, SpawnError};
use crate::task::LoadError;
use crate::trap::TrapFrame;
use alloc::vec::Vec;
use guest_kernel::abi::*;
use guest_kernel::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use guest_kernel::paging::{self, USER, WRITABLE};
use guest_kernel::sched::TaskId;

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
        SYS_CONSOLE_WRITE => console_write(k, VirtAddr(f.rdi), f.rsi),
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
        SYS_OBJECT_LOOKUP => match objcall::lookup(k, f) {
            Some(r) => r,
            None => return,
        },
        SYS_OBJECT_STAT => objcall::stat(k, f),
        SYS_MILESTONE => {
            crate::cpu::outl(PORT_MILESTONE, MILESTONE_USER_BASE | (f.rdi as u32 & 0xff));
            0
        }
        SYS_OBJECT_READ | SYS_OBJECT_WRITE => match objcall::io(k, f, f.rax == SYS_OBJECT_WRITE) {
            Some(r) => r,
            None => return,
        },
        SYS_OBJECT_SYNC => match objcall::sync(k, f) {
            Some(r) => r,
            None => return,
        },
        _ => ERR_NO_SYSCALL,
    };
    f.rax = result as u64;
}

/// Walks the user range page by page: `(physical address, length)` pieces,
/// or an error if any page is not mapped for the user.
fn user_pieces(
    k: &mut Kernel,
    va: VirtAddr,
    len: u64,
    need: u64,
    mut each: impl FnMut(PhysAddr, u64),
) -> Result<(), i64> {
    let end = va.checked_add(len).ok_or(ERR_BAD_ADDRESS)?;
    if !va.is_user() || (len > 0 && !VirtAddr(end.0 - 1).is_user()) {
        return Err(ERR_BAD_ADDRESS);
    }
    let root = k.current().ok_or(ERR_BAD_ADDRESS)?.root;
    let mut walker = paging::Walker::new(root);
    let mut at = va;
    while at < end {
        let (pa, flags) = walker
            .translate(&mut DirectTables(&mut k.frames), at)
            .ok_or(ERR_BAD_ADDRESS)?;
        if flags & need != need {
            return Err(ERR_BAD_ADDRESS);
        }
        let n = (PAGE_SIZE - at.page_offset()).min(end.0 - at.0);
        each(pa, n);
        at = VirtAddr(at.0 + n);
    }
    Ok(())
}

pub fn copy_from_user(k: &mut Kernel, va: VirtAddr, len: u64, max: u64) -> Result<Vec<u8>, i64> {
    if len > max {
        return Err(ERR_INVALID);
    }
    let mut out = Vec::new();
    out.try_reserve_exact(len as usize)
        .map_err(|_| ERR_NO_MEMORY)?;
    user_pieces(k, va, len, USER, |pa, n| {
        // SAFETY: a user page just checked, read through the direct map.
        out.extend_from_slice(unsafe { core::slice::from_raw_parts(phys_to_virt(pa), n as usize) })
    })?;
    Ok(out)
}

/// Copies `bytes` into the user's writable pages at `va`.
pub fn copy_to_user(k: &mut Kernel, va: VirtAddr, bytes: &[u8]) -> Result<(), i64> {
    // Check the whole range first so a bad tail writes nothing.
    user_pieces(k, va, bytes.len() as u64, USER | WRITABLE, |_, _| {})?;
    let mut done = 0usize;
    user_pieces(k, va, bytes.len() as u64, USER | WRITABLE, |pa, n| {
        let n = n as usize;
        // SAFETY: a user page just checked writable, through the direct map.
        unsafe { core::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), phys_to_virt(pa), n) };
        done += n;
    })
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
    let mut c = crate::console::lock();
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
    let parent = k.current().map(|t| t.id);
    match k.spawn(&name, &args, parent) {
        Ok(id) => id.0 as i64,
        Err(SpawnError::NoSuchProgram) => ERR_NO_SUCH_PROGRAM,
        Err(SpawnError::Load(LoadError::NoMemory)) => ERR_NO_MEMORY,
        Err(SpawnError::Load(_)) => ERR_INVALID,
    }
}
