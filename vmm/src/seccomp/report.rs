//! What happens when a filter refuses a call: the kernel sends the thread
//! SIGSYS (SECCOMP_RET_TRAP), and this handler writes
//! `vmm: seccomp: thread NAME made forbidden system call NR (NAME)` to
//! stderr and ends the process with `EXIT_FORBIDDEN`. A trap rather than
//! SECCOMP_RET_KILL_PROCESS only so that the refusal is reported: the
//! process dies either way, and the handler runs under the same filter
//! (write and exit_group are in every thread's list). Everything here is
//! async-signal-safe: no allocation, no lock, one write(2), then _exit.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io;

/// The exit status of a process a filter stopped. A user exception kills
/// init with 128 + vector, and vector 31 is reserved, so the guest's own
/// statuses do not reach it unless init exits with it on purpose.
const EXIT_FORBIDDEN: i32 = crate::exit::SECCOMP_REFUSED as i32;

/// si_code of a SIGSYS sent by seccomp.
const SYS_SECCOMP: i32 = 1;

/// Longest thread name kept for the report (std names ours in fewer).
const NAME_MAX: usize = 32;

thread_local! {
    // Const-initialised and without a destructor: reading it is a plain TLS
    // access, safe in a signal handler.
    static NAME: Cell<([u8; NAME_MAX], usize)> = const { Cell::new(([0; NAME_MAX], 0)) };
}

/// Records the calling thread's name for a report; called as its filter is
/// installed.
pub fn set_thread_name(name: &str) {
    let mut buf = [0u8; NAME_MAX];
    let n = name.len().min(NAME_MAX);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    let _ = NAME.try_with(|c| c.set((buf, n)));
}

/// The head of the kernel's siginfo for SIGSYS (x86_64, `struct
/// __sifields._sigsys`): libc's `siginfo_t` has no accessor for it.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A fixed buffer that `write!` fills and silently truncates.
struct Line<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl std::fmt::Write for Line<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Formats the report into `buf` and returns its length. `syscall` is None
/// for a SIGSYS that did not come from a filter.
fn format_report(buf: &mut [u8], thread: &[u8], syscall: Option<i32>) -> usize {
    let mut line = Line { buf, len: 0 };
    let thread = match std::str::from_utf8(thread) {
        Ok("") | Err(_) => "?",
        Ok(t) => t,
    };
    let _ = match syscall {
        Some(nr) => {
            let name = usize::try_from(nr)
                .ok()
                .and_then(syscalls::Sysno::new)
                .map_or("unknown", |s| s.name());
            writeln!(
                line,
                "vmm: seccomp: thread {thread} made forbidden system call {nr} ({name})"
            )
        }
        None => writeln!(
            line,
            "vmm: seccomp: thread {thread} got a SIGSYS not from its filter"
        ),
    };
    line.len
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler;
    // SigsysInfo is a prefix of it.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    let syscall = (info.code == SYS_SECCOMP).then_some(info.syscall);
    let (name, len) = NAME.try_with(Cell::get).unwrap_or(([0; NAME_MAX], 0));
    let mut buf = [0u8; 160];
    let n = format_report(&mut buf, &name[..len], syscall);
    // SAFETY: write and _exit are async-signal-safe; buf is ours.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), n);
        libc::_exit(EXIT_FORBIDDEN);
    }
}

/// Installs the SIGSYS handler (process-wide), before any filter.
pub fn install_handler() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO
    // signature and stays valid for the life of the process.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            on_sigsys;
        act.sa_sigaction = handler as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(thread: &[u8], syscall: Option<i32>) -> String {
        let mut buf = [0u8; 160];
        let n = format_report(&mut buf, thread, syscall);
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn the_report_names_the_thread_and_the_call() {
        assert_eq!(
            report(b"vcpu0", Some(41)),
            "vmm: seccomp: thread vcpu0 made forbidden system call 41 (socket)\n"
        );
        assert_eq!(
            report(b"", Some(100_000)),
            "vmm: seccomp: thread ? made forbidden system call 100000 (unknown)\n"
        );
        assert_eq!(
            report(b"pager-worker-1", None),
            "vmm: seccomp: thread pager-worker-1 got a SIGSYS not from its filter\n"
        );
    }

    #[test]
    fn a_long_name_is_cut_not_overflowed() {
        let long = [b'x'; 400];
        let r = report(&long, Some(59));
        assert_eq!(r.len(), 160);
        assert!(r.starts_with("vmm: seccomp: thread xxxx"));
    }

    #[test]
    fn the_siginfo_fields_are_where_the_kernel_puts_them() {
        assert_eq!(std::mem::offset_of!(SigsysInfo, call_addr), 16);
        assert_eq!(std::mem::offset_of!(SigsysInfo, syscall), 24);
        assert_eq!(std::mem::offset_of!(SigsysInfo, arch), 28);
    }
}
