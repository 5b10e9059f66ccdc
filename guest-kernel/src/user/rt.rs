//! The runtime every built-in user program includes: entry point, system
//! call wrappers, printing and a panic handler. User code runs natively in
//! ring 3 (even on software KVM), so it may use SSE and `core::fmt` freely.

#![allow(dead_code)]

#[path = "../abi.rs"]
pub mod abi;
#[path = "../kernel/arch/mem.rs"]
mod mem;

use core::arch::{asm, global_asm};
use core::fmt::{self, Write};

global_asm!(
    r#"
    .section .text.entry, "ax"
    .global _start
_start:
    and rsp, -16
    call {start}
    ud2
    "#,
    start = sym user_start,
);

extern "C" fn user_start(args: *const u8, len: usize) -> ! {
    // SAFETY: the kernel put `len` argument bytes at `args` on our stack.
    let args = unsafe { core::slice::from_raw_parts(args, len) };
    let status = crate::main(args);
    exit(status)
}

#[inline]
unsafe fn syscall(n: u64, a: u64, b: u64, c: u64, d: u64) -> i64 {
    let r: i64;
    // SAFETY: the kernel validates every argument.
    unsafe {
        asm!("syscall", inlateout("rax") n as i64 => r, in("rdi") a, in("rsi") b, in("rdx") c,
             in("r10") d, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r
}

pub fn exit(status: i32) -> ! {
    loop {
        // SAFETY: no memory arguments.
        unsafe { syscall(abi::SYS_EXIT, status as i64 as u64, 0, 0, 0) };
    }
}

pub fn write(bytes: &[u8]) -> i64 {
    // SAFETY: a valid slice.
    unsafe {
        syscall(
            abi::SYS_CONSOLE_WRITE,
            bytes.as_ptr() as u64,
            bytes.len() as u64,
            0,
            0,
        )
    }
}

/// Starts the built-in program `name` with `args`; its task id or an error.
pub fn spawn(name: &[u8], args: &[u8]) -> i64 {
    // SAFETY: valid slices.
    unsafe {
        syscall(
            abi::SYS_TASK_SPAWN,
            name.as_ptr() as u64,
            name.len() as u64,
            args.as_ptr() as u64,
            args.len() as u64,
        )
    }
}

/// Waits for a task this one spawned; its exit status.
pub fn wait(task: i64) -> i64 {
    // SAFETY: no memory arguments.
    unsafe { syscall(abi::SYS_TASK_WAIT, task as u64, 0, 0, 0) }
}

/// Marks a point for benchmarks (see abi::SYS_MILESTONE).
pub fn milestone(id: u8) {
    // SAFETY: no memory arguments.
    unsafe { syscall(abi::SYS_MILESTONE, u64::from(id), 0, 0, 0) };
}

pub fn yield_now() {
    // SAFETY: no arguments.
    unsafe { syscall(abi::SYS_YIELD, 0, 0, 0, 0) };
}

/// Formats into a stack buffer and writes it with one system call.
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    pub fn new() -> Line {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }
    pub fn send(&self) {
        write(&self.buf[..self.len]);
    }
    /// What was formatted so far (to pass as arguments, say).
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[macro_export]
macro_rules! println {
    ($($t:tt)*) => {{
        let mut l = $crate::rt::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut l, format_args!($($t)*));
        let _ = core::fmt::Write::write_str(&mut l, "\n");
        l.send();
    }};
}

/// A named in-guest test: Ok, or why it failed.
pub type Test = (&'static str, fn() -> Result<(), &'static str>);

/// Runs the tests named in `wanted` (none, or `all`: every one), printing
/// `PROG: NAME ok` or `PROG: NAME FAILED: why` for each and then
/// `PROG: N failed`; returns N (the program's exit status).
pub fn run_tests<'a>(prog: &str, tests: &[Test], wanted: impl Iterator<Item = &'a [u8]>) -> i32 {
    let mut names: [&[u8]; 16] = [b""; 16];
    for (slot, word) in names.iter_mut().zip(wanted) {
        *slot = word;
    }
    let all = names[0].is_empty() || names[0] == b"all";
    let mut failed = 0;
    for (name, test) in tests {
        if !all && !names.contains(&name.as_bytes()) {
            continue;
        }
        match test() {
            Ok(()) => crate::println!("{prog}: {name} ok"),
            Err(why) => {
                crate::println!("{prog}: {name} FAILED: {why}");
                failed += 1;
            }
        }
    }
    crate::println!("{prog}: {failed} failed");
    failed
}

pub fn words(args: &[u8]) -> impl Iterator<Item = &[u8]> {
    args.split(|&c| c == b' ').filter(|w| !w.is_empty())
}

pub fn str(b: &[u8]) -> &str {
    core::str::from_utf8(b).unwrap_or("<non-utf8>")
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crate::println!("user panic: {}", info);
    exit(101)
}

/// A memory object exported by the VMM (`vmm run --object NAME=URI`).
pub mod object {
    use super::{abi, syscall};

    /// The object's id, after its pager initialised it (may block).
    pub fn lookup(name: &[u8]) -> Result<u64, i64> {
        // SAFETY: a valid slice.
        let r = unsafe {
            syscall(
                abi::SYS_OBJECT_LOOKUP,
                name.as_ptr() as u64,
                name.len() as u64,
                0,
                0,
            )
        };
        if r < 0 { Err(r) } else { Ok(r as u64) }
    }

    pub fn stat(id: u64) -> Result<abi::ObjectStat, i64> {
        let mut st = abi::ObjectStat::default();
        // SAFETY: a valid out-pointer.
        let r = unsafe { syscall(abi::SYS_OBJECT_STAT, id, &raw mut st as u64, 0, 0) };
        if r < 0 { Err(r) } else { Ok(st) }
    }

    /// Fills `buf` (page aligned, whole pages) from `offset`.
    pub fn read(id: u64, offset: u64, buf: &mut [u8]) -> Result<usize, i64> {
        // SAFETY: a valid, writable slice the kernel lends to the device.
        let r = unsafe {
            syscall(
                abi::SYS_OBJECT_READ,
                id,
                offset,
                buf.as_mut_ptr() as u64,
                buf.len() as u64,
            )
        };
        if r < 0 { Err(r) } else { Ok(r as usize) }
    }

    /// Writes `buf` (page aligned, whole pages) at `offset`.
    pub fn write(id: u64, offset: u64, buf: &[u8]) -> Result<usize, i64> {
        // SAFETY: a valid slice.
        let r = unsafe {
            syscall(
                abi::SYS_OBJECT_WRITE,
                id,
                offset,
                buf.as_ptr() as u64,
                buf.len() as u64,
            )
        };
        if r < 0 { Err(r) } else { Ok(r as usize) }
    }

    pub fn sync(id: u64) -> Result<(), i64> {
        // SAFETY: no memory arguments.
        let r = unsafe { syscall(abi::SYS_OBJECT_SYNC, id, 0, 0, 0) };
        if r < 0 { Err(r) } else { Ok(()) }
    }

    /// A page-aligned I/O buffer of the largest request size.
    #[repr(C, align(4096))]
    pub struct IoBuf(pub [u8; abi::OBJECT_IO_MAX as usize]);
}

/// Parses a decimal argument with an optional K/M suffix.
pub fn parse_size(w: &[u8]) -> Option<u64> {
    let (digits, mult) = match w.last()? {
        b'k' | b'K' => (&w[..w.len() - 1], 1024),
        b'm' | b'M' => (&w[..w.len() - 1], 1 << 20),
        _ => (w, 1),
    };
    str(digits).parse::<u64>().ok()?.checked_mul(mult)
}
