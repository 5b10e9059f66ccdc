//! Safe wrappers, with the paper's names (Tables 3-1, 3-2), over the traps
//! of docs/mach-ipc.md §2. Every wrapper passes only valid slices and
//! out-pointers; the kernel validates names and rights itself.
//!
//! The `syscall` instruction exists only on x86_64; elsewhere (host tests
//! on other machines) every trap fails with `KERN_FAILURE`, so the module
//! still compiles and the pure parts of libmach can be tested.

use crate::abi::{self, Name, PortStatus, ThreadState};

/// A `kern_return_t` other than `KERN_SUCCESS` (also carries MIG codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernError(pub u32);

/// A `mach_msg_return_t` other than `MSG_SUCCESS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgError(pub u32);

impl KernError {
    /// The symbolic name (guest programs print without `Display`).
    pub fn name(self) -> &'static str {
        use abi::*;
        match self.0 {
            KERN_INVALID_ADDRESS => "KERN_INVALID_ADDRESS",
            KERN_NO_SPACE => "KERN_NO_SPACE",
            KERN_INVALID_ARGUMENT => "KERN_INVALID_ARGUMENT",
            KERN_FAILURE => "KERN_FAILURE",
            KERN_RESOURCE_SHORTAGE => "KERN_RESOURCE_SHORTAGE",
            KERN_NAME_EXISTS => "KERN_NAME_EXISTS",
            KERN_INVALID_NAME => "KERN_INVALID_NAME",
            KERN_INVALID_RIGHT => "KERN_INVALID_RIGHT",
            KERN_INVALID_VALUE => "KERN_INVALID_VALUE",
            KERN_TERMINATED => "KERN_TERMINATED",
            KERN_PROTECTION_FAILURE => "KERN_PROTECTION_FAILURE",
            KERN_MEMORY_ERROR => "KERN_MEMORY_ERROR",
            crate::rpc::MIG_TYPE_ERROR => "MIG_TYPE_ERROR",
            crate::rpc::MIG_REPLY_MISMATCH => "MIG_REPLY_MISMATCH",
            crate::rpc::MIG_BAD_ID => "MIG_BAD_ID",
            crate::rpc::MIG_BAD_ARGUMENTS => "MIG_BAD_ARGUMENTS",
            _ => "KERN_UNKNOWN",
        }
    }
}

impl MsgError {
    pub fn name(self) -> &'static str {
        use abi::*;
        match self.0 {
            SEND_INVALID_DATA => "SEND_INVALID_DATA",
            SEND_INVALID_DEST => "SEND_INVALID_DEST",
            SEND_TIMED_OUT => "SEND_TIMED_OUT",
            SEND_INVALID_REPLY => "SEND_INVALID_REPLY",
            SEND_INVALID_RIGHT => "SEND_INVALID_RIGHT",
            SEND_TOO_LARGE => "SEND_TOO_LARGE",
            SEND_MSG_TOO_SMALL => "SEND_MSG_TOO_SMALL",
            SEND_INVALID_TYPE => "SEND_INVALID_TYPE",
            SEND_NO_BUFFER => "SEND_NO_BUFFER",
            RCV_INVALID_NAME => "RCV_INVALID_NAME",
            RCV_TIMED_OUT => "RCV_TIMED_OUT",
            RCV_TOO_LARGE => "RCV_TOO_LARGE",
            RCV_INVALID_DATA => "RCV_INVALID_DATA",
            RCV_PORT_DIED => "RCV_PORT_DIED",
            _ => "MSG_UNKNOWN",
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) unsafe fn trap(n: u64, a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> u32 {
    let r: u64;
    // SAFETY: the caller passes pointers valid for what trap `n` accesses.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") n => r, in("rdi") a, in("rsi") b,
            in("rdx") c, in("r10") d, in("r8") e, in("r9") f,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    // Return codes are 32-bit; the upper half carries nothing.
    r as u32
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn trap(_: u64, _: u64, _: u64, _: u64, _: u64, _: u64, _: u64) -> u32 {
    abi::KERN_FAILURE
}

pub(crate) fn kr(r: u32) -> Result<(), KernError> {
    if r == abi::KERN_SUCCESS {
        Ok(())
    } else {
        Err(KernError(r))
    }
}

fn mr(r: u32) -> Result<(), MsgError> {
    if r == abi::MSG_SUCCESS {
        Ok(())
    } else {
        Err(MsgError(r))
    }
}

/// A trap with only scalar arguments.
fn trap_scalar(n: u64, a: u64, b: u64) -> Result<(), KernError> {
    // SAFETY: no argument is a pointer.
    kr(unsafe { trap(n, a, b, 0, 0, 0, 0) })
}

/// A trap whose only argument is an out-pointer to a name.
fn trap_out_name(n: u64) -> Result<Name, KernError> {
    let mut out: Name = 0;
    // SAFETY: a valid, writable u32.
    kr(unsafe { trap(n, &raw mut out as u64, 0, 0, 0, 0, 0) }).map(|()| out)
}

fn timeout_bits(timeout: Option<u32>, bit: u32) -> (u32, u64) {
    match timeout {
        Some(ms) => (bit, u64::from(ms)),
        None => (0, 0),
    }
}

fn check_buf(buf: &[u8], send_size: usize) -> Result<(), MsgError> {
    // The ABI wants an 8-byte aligned message; say so before the kernel does.
    if !(buf.as_ptr() as usize).is_multiple_of(8) || send_size > buf.len() {
        return Err(MsgError(abi::SEND_INVALID_DATA));
    }
    Ok(())
}

/// The raw `mach_msg` trap over one buffer: sends `buf[..send_size]` if
/// `option` has `SEND_MSG`, then receives into `buf` (at most `buf.len()`
/// bytes) if it has `RCV_MSG`.
///
/// # Safety
/// The message's out-of-line items with `OOL_DEALLOCATE` unmap their
/// ranges from this task: nothing may still refer to them.
pub unsafe fn mach_msg(
    buf: &mut [u8],
    option: u32,
    send_size: usize,
    rcv_name: Name,
    timeout_ms: u64,
) -> Result<(), MsgError> {
    check_buf(buf, send_size)?;
    let rcv_size = if option & abi::RCV_MSG != 0 {
        buf.len()
    } else {
        0
    };
    // SAFETY: `buf` is valid and writable for `buf.len()` bytes, which
    // bounds both sizes; OOL ranges are the caller's promise.
    mr(unsafe {
        trap(
            abi::TRAP_MACH_MSG,
            buf.as_mut_ptr() as u64,
            u64::from(option),
            send_size as u64,
            rcv_size as u64,
            u64::from(rcv_name),
            timeout_ms,
        )
    })
}

/// Sends the message in `msg` (its whole length is the message; see
/// `message::Builder::finish`). `timeout`: wait at most that many ms for
/// room in a full queue (`None`: block).
///
/// Out-of-line items with the deallocate flag are only made by
/// `Builder::ool_raw`, which is `unsafe` for that reason.
pub fn msg_send(msg: &[u8], timeout: Option<u32>) -> Result<(), MsgError> {
    check_buf(msg, msg.len())?;
    let (t, ms) = timeout_bits(timeout, abi::SEND_TIMEOUT);
    // SAFETY: the kernel only reads `msg` (no RCV_MSG); see above for OOL.
    mr(unsafe {
        trap(
            abi::TRAP_MACH_MSG,
            msg.as_ptr() as u64,
            u64::from(abi::SEND_MSG | t),
            msg.len() as u64,
            0,
            0,
            ms,
        )
    })
}

/// Receives into `buf` from `name` (`PORT_NULL`: the default group);
/// the received message's size. `timeout`: ms (`Some(0)` polls).
pub fn msg_receive(buf: &mut [u8], name: Name, timeout: Option<u32>) -> Result<usize, MsgError> {
    let (t, ms) = timeout_bits(timeout, abi::RCV_TIMEOUT);
    // SAFETY: receive only: nothing is sent, so no OOL range leaves us.
    unsafe { mach_msg(buf, abi::RCV_MSG | t, 0, name, ms)? };
    Ok(received_size(buf))
}

/// Sends `buf[..send_size]` (its header's reply port is `reply`), then
/// receives the reply from `reply` into `buf`; the reply's size. One
/// timeout bounds both halves.
pub fn msg_rpc(
    buf: &mut [u8],
    send_size: usize,
    reply: Name,
    timeout: Option<u32>,
) -> Result<usize, MsgError> {
    let (t, ms) = match timeout {
        Some(ms) => (abi::SEND_TIMEOUT | abi::RCV_TIMEOUT, u64::from(ms)),
        None => (0, 0),
    };
    // SAFETY: as msg_send.
    unsafe { mach_msg(buf, abi::SEND_MSG | abi::RCV_MSG | t, send_size, reply, ms)? };
    Ok(received_size(buf))
}

fn received_size(buf: &[u8]) -> usize {
    abi::Header::from_bytes(buf).map_or(0, |h| (h.size as usize).min(buf.len()))
}

/// A new receive right under a new name.
pub fn port_allocate() -> Result<Name, KernError> {
    trap_out_name(abi::TRAP_PORT_ALLOCATE)
}

/// A new port whose name carries both the receive right and a send right
/// (Mach's port_allocate then insert_right MAKE_SEND): a message to
/// ourselves that carries MAKE_SEND of the port, received at once.
pub fn port_allocate_with_send() -> Result<Name, KernError> {
    let p = port_allocate()?;
    let mut buf = crate::message::MsgBuf::<64>::default();
    let made = crate::message::Builder::new(&mut buf.0)
        .dest(p, abi::MAKE_SEND)
        .ports(&[p], abi::MAKE_SEND)
        .finish()
        .ok()
        .and_then(|n| msg_send(&buf.0[..n], Some(0)).ok())
        .and_then(|()| msg_receive(&mut buf.0, p, Some(0)).ok());
    if made.is_none() {
        let _ = port_deallocate(p);
        return Err(KernError(abi::KERN_RESOURCE_SHORTAGE));
    }
    Ok(p)
}

pub fn port_deallocate(name: Name) -> Result<(), KernError> {
    trap_scalar(abi::TRAP_PORT_DEALLOCATE, u64::from(name), 0)
}

pub fn port_enable(name: Name) -> Result<(), KernError> {
    trap_scalar(abi::TRAP_PORT_ENABLE, u64::from(name), 0)
}

pub fn port_disable(name: Name) -> Result<(), KernError> {
    trap_scalar(abi::TRAP_PORT_DISABLE, u64::from(name), 0)
}

/// Fills `names` with enabled ports that have messages; how many.
pub fn port_messages(names: &mut [Name]) -> Result<usize, KernError> {
    let mut count: u32 = 0;
    let max = names.len().min(u32::MAX as usize) as u64;
    // SAFETY: `names` is writable for `max` names, `count` for one u32.
    let r = unsafe {
        trap(
            abi::TRAP_PORT_MESSAGES,
            names.as_mut_ptr() as u64,
            max,
            &raw mut count as u64,
            0,
            0,
            0,
        )
    };
    kr(r).map(|()| (count as usize).min(names.len()))
}

pub fn port_status(name: Name) -> Result<PortStatus, KernError> {
    let mut st = PortStatus::default();
    // SAFETY: a valid, writable PortStatus.
    let r = unsafe {
        trap(
            abi::TRAP_PORT_STATUS,
            u64::from(name),
            &raw mut st as u64,
            0,
            0,
            0,
            0,
        )
    };
    kr(r).map(|()| st)
}

/// Queue limit, 1..=`BACKLOG_MAX`.
pub fn port_set_backlog(name: Name, backlog: u32) -> Result<(), KernError> {
    trap_scalar(
        abi::TRAP_PORT_SET_BACKLOG,
        u64::from(name),
        u64::from(backlog),
    )
}

/// When `name`'s port dies, `NOTIFY_DEAD_NAME` goes to `notify`.
pub fn port_request_dead_name(name: Name, notify: Name) -> Result<(), KernError> {
    trap_scalar(
        abi::TRAP_PORT_REQUEST_DEAD_NAME,
        u64::from(name),
        u64::from(notify),
    )
}

pub fn task_self() -> Result<Name, KernError> {
    trap_out_name(abi::TRAP_TASK_SELF)
}

pub fn thread_self() -> Result<Name, KernError> {
    trap_out_name(abi::TRAP_THREAD_SELF)
}

/// Starts the built-in program `program` with `args`; a send right to the
/// new task's port. With `inherit_memory` the child's VM window is built
/// from ours by each region's inheritance (vm_inherit); without, it starts
/// empty (its program image is its own either way).
pub fn task_create(program: &[u8], args: &[u8], inherit_memory: bool) -> Result<Name, KernError> {
    let mut out: Name = 0;
    // SAFETY: valid slices and a valid out-pointer.
    let r = unsafe {
        trap(
            abi::TRAP_TASK_CREATE,
            &raw mut out as u64,
            program.as_ptr() as u64,
            program.len() as u64,
            args.as_ptr() as u64,
            args.len() as u64,
            u64::from(inherit_memory),
        )
    };
    kr(r).map(|()| out)
}

pub fn task_terminate(task: Name) -> Result<(), KernError> {
    trap_scalar(abi::TRAP_TASK_TERMINATE, u64::from(task), 0)
}

pub fn task_suspend(task: Name) -> Result<(), KernError> {
    trap_scalar(abi::TRAP_TASK_SUSPEND, u64::from(task), 0)
}

pub fn task_resume(task: Name) -> Result<(), KernError> {
    trap_scalar(abi::TRAP_TASK_RESUME, u64::from(task), 0)
}

/// A new thread in `task` at `entry` with stack `stack` and `arg` (rdi).
///
/// # Safety
/// In this task's own address space the new thread runs arbitrary code on
/// an arbitrary stack: both must be valid and not used by anyone else.
pub unsafe fn thread_create(
    task: Name,
    entry: u64,
    stack: u64,
    arg: u64,
) -> Result<Name, KernError> {
    let mut out: Name = 0;
    // SAFETY: a valid out-pointer; entry/stack are the caller's promise.
    let r = unsafe {
        trap(
            abi::TRAP_THREAD_CREATE,
            u64::from(task),
            entry,
            stack,
            arg,
            &raw mut out as u64,
            0,
        )
    };
    kr(r).map(|()| out)
}

pub fn thread_terminate(thread: Name) -> Result<(), KernError> {
    trap_scalar(abi::TRAP_THREAD_TERMINATE, u64::from(thread), 0)
}

pub fn thread_suspend(thread: Name) -> Result<(), KernError> {
    trap_scalar(abi::TRAP_THREAD_SUSPEND, u64::from(thread), 0)
}

pub fn thread_resume(thread: Name) -> Result<(), KernError> {
    trap_scalar(abi::TRAP_THREAD_RESUME, u64::from(thread), 0)
}

/// Registers of a stopped thread.
pub fn thread_get_state(thread: Name) -> Result<ThreadState, KernError> {
    let mut st = ThreadState::default();
    // SAFETY: a valid, writable ThreadState.
    let r = unsafe {
        trap(
            abi::TRAP_THREAD_GET_STATE,
            u64::from(thread),
            &raw mut st as u64,
            0,
            0,
            0,
            0,
        )
    };
    kr(r).map(|()| st)
}

/// Sets the registers of a stopped thread.
///
/// # Safety
/// For a thread of this task, the state must be one it can run from
/// (valid rip and stack) without breaking what other threads rely on.
pub unsafe fn thread_set_state(thread: Name, state: &ThreadState) -> Result<(), KernError> {
    // SAFETY: the kernel only reads `state`; the rest is the caller's promise.
    kr(unsafe {
        trap(
            abi::TRAP_THREAD_SET_STATE,
            u64::from(thread),
            state as *const _ as u64,
            0,
            0,
            0,
            0,
        )
    })
}

/// `port`: a send right (`PORT_NULL` clears).
pub fn task_set_exception_port(task: Name, port: Name) -> Result<(), KernError> {
    trap_scalar(
        abi::TRAP_TASK_SET_EXCEPTION_PORT,
        u64::from(task),
        u64::from(port),
    )
}

pub fn thread_set_exception_port(thread: Name, port: Name) -> Result<(), KernError> {
    trap_scalar(
        abi::TRAP_THREAD_SET_EXCEPTION_PORT,
        u64::from(thread),
        u64::from(port),
    )
}

pub fn task_set_bootstrap_port(task: Name, port: Name) -> Result<(), KernError> {
    trap_scalar(
        abi::TRAP_TASK_SET_BOOTSTRAP_PORT,
        u64::from(task),
        u64::from(port),
    )
}

/// The port `task` was given to find the name server (a send right).
pub fn task_get_bootstrap_port(task: Name) -> Result<Name, KernError> {
    let mut out: Name = 0;
    // SAFETY: a valid, writable u32.
    let r = unsafe {
        trap(
            abi::TRAP_TASK_GET_BOOTSTRAP_PORT,
            u64::from(task),
            &raw mut out as u64,
            0,
            0,
            0,
            0,
        )
    };
    kr(r).map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names() {
        assert_eq!(
            KernError(abi::KERN_INVALID_NAME).name(),
            "KERN_INVALID_NAME"
        );
        assert_eq!(KernError(crate::rpc::MIG_BAD_ID).name(), "MIG_BAD_ID");
        assert_eq!(KernError(12345).name(), "KERN_UNKNOWN");
        assert_eq!(MsgError(abi::RCV_TIMED_OUT).name(), "RCV_TIMED_OUT");
        assert_eq!(MsgError(7).name(), "MSG_UNKNOWN");
    }

    #[test]
    fn misaligned_or_short_buffers_fail_before_the_trap() {
        let b = crate::message::MsgBuf::<64>::new();
        assert_eq!(
            check_buf(&b.0[1..], 8),
            Err(MsgError(abi::SEND_INVALID_DATA))
        );
        assert_eq!(
            check_buf(&b.0[..16], 24),
            Err(MsgError(abi::SEND_INVALID_DATA))
        );
        assert_eq!(check_buf(&b.0[..], 24), Ok(()));
    }
}
