//! The system calls each VMM thread may make once its setup is done, as
//! seccompiler rules. Everything broad (opening files and /dev/kvm, creating
//! the VM, mapping guest memory, connecting sockets, creating eventfds and
//! epoll) happens before any filter is installed; none of these lists has
//! socket, connect, execve, fork or a KVM ioctl other than the vCPU's
//! three (four when profiling the kernel), and open fails (`no_open`). The lists come from tracing every
//! test scenario (strace -f) and running the whole suite with the filters
//! on.

use super::ThreadKind;
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use syscalls::Sysno;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;
type Built = Result<Rules, BackendError>;

vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_REGS,
    kvm_bindings::KVMIO,
    0x81,
    kvm_bindings::kvm_regs
);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_SREGS,
    kvm_bindings::KVMIO,
    0x83,
    kvm_bindings::kvm_sregs
);

vmm_sys_util::ioctl_iow_nr!(
    KVM_SET_GUEST_DEBUG,
    kvm_bindings::KVMIO,
    0x9b,
    kvm_bindings::kvm_guest_debug
);

/// The flags glibc's pthread_create passes to clone: a thread in our own
/// address space, never a new process.
const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

/// How the backends' sockets are written (sg.rs) and shut down.
const SEND_FLAGS: u64 = libc::MSG_NOSIGNAL as u64;
const SHUT_BOTH: u64 = libc::SHUT_RDWR as u64;
/// The anon backend gives its swap space back this way and no other.
const PUNCH_HOLE: u64 = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64;

fn nr(s: Sysno) -> i64 {
    s as i64
}

/// Allows each call whatever its arguments.
fn allow(rules: &mut Rules, calls: &[Sysno]) {
    for &c in calls {
        // An unconditional entry (empty rule list) wins over any condition.
        rules.insert(nr(c), Vec::new());
    }
}

/// Allows `call` when any one of `rules` holds (each: all its conditions).
fn allow_when(rules: &mut Rules, call: Sysno, when: Vec<SeccompRule>) {
    match rules.get_mut(&nr(call)) {
        Some(existing) if existing.is_empty() => {}
        Some(existing) => existing.extend(when),
        None => {
            rules.insert(nr(call), when);
        }
    }
}

fn arg(
    index: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, BackendError> {
    SeccompCondition::new(index, len, op, value)
}

/// `call` with argument `index` (an int in the kernel) equal to one of `values`.
fn allow_arg_in(
    rules: &mut Rules,
    call: Sysno,
    index: u8,
    values: &[u64],
) -> Result<(), BackendError> {
    let when = values
        .iter()
        .map(|&v| {
            SeccompRule::new(vec![arg(
                index,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                v,
            )?])
        })
        .collect::<Result<_, _>>()?;
    allow_when(rules, call, when);
    Ok(())
}

/// Merges `other` into `rules`: a call either allows stays allowed.
fn merge(rules: &mut Rules, other: Rules) {
    for (call, when) in other {
        match rules.get_mut(&call) {
            Some(existing) if existing.is_empty() => {}
            Some(existing) if when.is_empty() => existing.clear(),
            Some(existing) => existing.extend(when),
            None => {
                rules.insert(call, when);
            }
        }
    }
}

/// What every thread needs whatever its job: memory (never executable),
/// locks and condition variables (futex), the clock when the vDSO cannot
/// serve it, signal masks and return, writing (its eventfds, the console,
/// log lines, the SIGSYS report), closing what it drops, and its own end.
/// `pid` is ours: a panic aborts through raise(SIGABRT), which may signal
/// this process and nothing else.
fn common(pid: u32) -> Built {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            Sysno::brk,
            Sysno::munmap,
            Sysno::mremap,
            Sysno::madvise,
            Sysno::futex,
            // std's channels back off under contention by yielding (seen
            // once on the main thread in a full test run); harmless.
            Sysno::sched_yield,
            // glibc sizes its malloc arenas from it on a thread's first malloc.
            Sysno::sched_getaffinity,
            Sysno::clock_gettime,
            // A futex wait with a timeout resumes this way after SIGSTOP/SIGCONT.
            Sysno::restart_syscall,
            Sysno::rt_sigprocmask,
            Sysno::rt_sigreturn,
            Sysno::sigaltstack,
            Sysno::write,
            Sysno::writev,
            Sysno::close,
            // std's HashMap keys, on a thread's first map.
            Sysno::getrandom,
            Sysno::getpid,
            Sysno::gettid,
            Sysno::exit,
            Sysno::exit_group,
            // Let through here only so that `no_open`'s EACCES decides.
            Sysno::open,
            Sysno::openat,
        ],
    );
    // Debug builds of std check that a descriptor is open before closing it.
    allow_arg_in(&mut r, Sysno::fcntl, 1, &[libc::F_GETFD as u64])?;
    let no_exec = || {
        arg(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )
    };
    allow_when(
        &mut r,
        Sysno::mmap,
        vec![SeccompRule::new(vec![no_exec()?])?],
    );
    allow_when(
        &mut r,
        Sysno::mprotect,
        vec![SeccompRule::new(vec![no_exec()?])?],
    );
    allow_when(
        &mut r,
        Sysno::tgkill,
        vec![SeccompRule::new(vec![
            arg(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, u64::from(pid))?,
            arg(
                2,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::SIGABRT as u64,
            )?,
        ])?],
    );
    Ok(r)
}

/// The vCPU: KVM_RUN, and the registers when the guest dies (where it
/// stopped); its statistics fd (pread); the device's eventfds, which it
/// reads and duplicates (F_DUPFD_CLOEXEC) when the driver activates the
/// device through an MMIO write. With `profiling` (`--kernel-profile`, and
/// only then) it also turns single-stepping on and off at the marks.
fn vcpu(profiling: bool) -> Built {
    let mut r = Rules::new();
    allow(&mut r, &[Sysno::read, Sysno::pread64]);
    let mut ioctls = vec![KVM_RUN(), KVM_GET_REGS(), KVM_GET_SREGS()];
    if profiling {
        ioctls.push(KVM_SET_GUEST_DEBUG());
    }
    allow_arg_in(&mut r, Sysno::ioctl, 1, &ioctls)?;
    allow_arg_in(&mut r, Sysno::fcntl, 1, &[libc::F_DUPFD_CLOEXEC as u64])?;
    Ok(r)
}

/// Sending on an NBD-over-TLS connection (tls_stream.rs): send(2), which
/// is sendto, on the non-blocking socket, and poll for room or replies.
/// The reader needs it too: rustls may answer the server while reading.
fn tls_send() -> Built {
    let mut r = Rules::new();
    allow_arg_in(&mut r, Sysno::sendto, 3, &[SEND_FLAGS])?;
    allow(&mut r, &[Sysno::poll]);
    Ok(r)
}

/// Sending requests to a remote pager (or NBD server) on a socket that is
/// already connected, and shutting it down when it misses a deadline.
fn pager_client_send() -> Built {
    let mut r = tls_send()?;
    allow_arg_in(&mut r, Sysno::sendmsg, 2, &[SEND_FLAGS])?;
    allow_arg_in(&mut r, Sysno::shutdown, 1, &[SHUT_BOTH])?;
    Ok(r)
}

/// A virtio-pager worker: every backend call. Host files and the anon swap
/// file are read and written with preadv/pwritev and synced; the anon
/// backend punches its swap out when its last kernel terminates; remote
/// backends send (pager_client_send).
fn pager_worker() -> Built {
    let mut r = pager_client_send()?;
    allow(
        &mut r,
        &[
            Sysno::preadv,
            Sysno::preadv2,
            Sysno::pwritev,
            Sysno::fdatasync,
            Sysno::fsync,
        ],
    );
    allow_arg_in(&mut r, Sysno::fallocate, 1, &[PUNCH_HOLE])?;
    Ok(r)
}

/// A remote connection's reader: reads replies (straight into guest frames
/// for page data) and shuts the connection down when it breaks.
fn pager_reader() -> Built {
    let mut r = tls_send()?;
    allow(&mut r, &[Sysno::read, Sysno::readv]);
    allow_arg_in(&mut r, Sysno::shutdown, 1, &[SHUT_BOTH])?;
    Ok(r)
}

/// A final-sync thread: a host file's fdatasync, or a sync request to a
/// remote pager.
fn sync() -> Built {
    let mut r = pager_client_send()?;
    allow(&mut r, &[Sysno::fdatasync, Sysno::fsync]);
    Ok(r)
}

/// The event loop, then the shutdown. The loop waits on epoll, reads and
/// writes eventfds, (re)registers the device's eventfds when the driver
/// activates it, answers data requests that need no blocking inline
/// (preadv2 with RWF_NOWAIT) and arms the device's rate timer (a timerfd
/// created before, resuming requests an object's rate limit parked). The shutdown starts one sync thread per
/// object, which inherit this filter (so it includes theirs) and install
/// their own: thread creation (clone with the thread flags only; clone3 is
/// answered ENOSYS by `no_clone3`, so glibc falls back to clone, whose flags
/// a filter can see), the new thread's start-up, and installing a filter.
/// Dropping a remote backend says goodbye and shuts its socket down.
fn main_thread() -> Built {
    let mut r = sync()?;
    allow(
        &mut r,
        &[
            Sysno::epoll_wait,
            Sysno::epoll_ctl,
            Sysno::read,
            Sysno::preadv2,
            Sysno::timerfd_settime,
            Sysno::clone3,
            Sysno::set_robust_list,
            Sysno::rseq,
        ],
    );
    allow_when(
        &mut r,
        Sysno::clone,
        vec![SeccompRule::new(vec![arg(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::Eq,
            THREAD_CLONE_FLAGS,
        )?])?],
    );
    allow_arg_in(
        &mut r,
        Sysno::prctl,
        0,
        &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
    )?;
    allow_when(
        &mut r,
        Sysno::seccomp,
        vec![SeccompRule::new(vec![
            arg(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::from(libc::SECCOMP_SET_MODE_FILTER),
            )?,
            arg(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 0)?,
        ])?],
    );
    Ok(r)
}

fn rules(kind: ThreadKind, pid: u32, profiling: bool) -> Built {
    let mut r = common(pid)?;
    merge(
        &mut r,
        match kind {
            ThreadKind::Main => main_thread()?,
            ThreadKind::Vcpu => vcpu(profiling)?,
            ThreadKind::PagerWorker => pager_worker()?,
            ThreadKind::PagerReader => pager_reader()?,
            ThreadKind::Sync => sync()?,
        },
    );
    Ok(r)
}

/// `kind`'s filter for a process whose pid is `pid`, profiling the kernel
/// or not: what its rules allow is allowed, anything else traps (SIGSYS,
/// reported by report.rs).
pub fn compile(kind: ThreadKind, pid: u32, profiling: bool) -> Result<BpfProgram, BackendError> {
    SeccompFilter::new(
        rules(kind, pid, profiling)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?
    .try_into()
}

/// Stacked under every thread's filter: open and openat fail with EACCES
/// (an error wins over the other filter's allow) instead of trapping.
/// glibc's malloc opens /proc/sys/vm/overcommit_memory the first time any
/// thread shrinks a heap (and other such files lazily), and does without
/// when that fails; a trap would end the VMM for it. Nothing opens a file
/// after setup either way.
pub fn no_open() -> Result<BpfProgram, BackendError> {
    SeccompFilter::new(
        [
            (nr(Sysno::open), Vec::new()),
            (nr(Sysno::openat), Vec::new()),
        ]
        .into_iter()
        .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )?
    .try_into()
}

/// Stacked under the main thread's filter: clone3 fails with ENOSYS (an
/// error wins over the other filter's allow), so glibc starts threads with
/// clone instead, whose flags are an argument the filter checks; clone3's
/// are in memory a filter cannot read.
pub fn no_clone3() -> Result<BpfProgram, BackendError> {
    SeccompFilter::new(
        [(nr(Sysno::clone3), Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )?
    .try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: u32 = 4242;

    #[test]
    fn every_threads_filter_compiles_to_bpf() {
        for kind in ThreadKind::ALL {
            let prog = compile(kind, PID, false).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            // Room below the kernel's limit of 4096 instructions.
            assert!(
                !prog.is_empty() && prog.len() < 1024,
                "{kind:?}: {} instructions",
                prog.len()
            );
        }
        assert!(!no_clone3().unwrap().is_empty());
        assert!(!no_open().unwrap().is_empty());
    }

    #[test]
    fn kvm_ioctl_numbers_are_the_kernels() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(KVM_SET_GUEST_DEBUG(), 0x4048_ae9b);
    }

    /// Single-stepping is the profiler's alone: without `--kernel-profile`
    /// the vCPU's filter has its three ioctls, with it those and
    /// KVM_SET_GUEST_DEBUG; no other thread gains anything.
    #[test]
    fn the_vcpu_may_set_guest_debugging_only_when_profiling() {
        let ioctls = |profiling| {
            let r = rules(ThreadKind::Vcpu, PID, profiling).unwrap();
            r[&nr(Sysno::ioctl)].len()
        };
        assert_eq!(ioctls(false), 3);
        assert_eq!(ioctls(true), 4);
        // Apart from that one request number, the vCPU's rules are the same.
        let (mut with, without) = (
            rules(ThreadKind::Vcpu, PID, true).unwrap(),
            rules(ThreadKind::Vcpu, PID, false).unwrap(),
        );
        with.get_mut(&nr(Sysno::ioctl)).unwrap().pop();
        assert_eq!(with, without);
        for kind in ThreadKind::ALL {
            if kind != ThreadKind::Vcpu {
                assert_eq!(
                    rules(kind, PID, true).unwrap(),
                    rules(kind, PID, false).unwrap(),
                    "{kind:?}"
                );
            }
            compile(kind, PID, true).unwrap();
        }
    }

    fn allows(kind: ThreadKind, call: Sysno) -> bool {
        rules(kind, PID, false).unwrap().contains_key(&nr(call))
    }

    #[test]
    fn no_thread_may_open_connect_or_start_a_program() {
        for kind in ThreadKind::ALL {
            for call in [
                Sysno::openat2,
                Sysno::creat,
                Sysno::socket,
                Sysno::connect,
                Sysno::execve,
                Sysno::execveat,
                Sysno::fork,
                Sysno::vfork,
                Sysno::ptrace,
                Sysno::mount,
            ] {
                assert!(!allows(kind, call), "{kind:?} allows {}", call.name());
            }
        }
    }

    #[test]
    fn only_the_vcpu_makes_ioctls_and_only_the_main_thread_starts_threads() {
        for kind in ThreadKind::ALL {
            assert_eq!(
                allows(kind, Sysno::ioctl),
                kind == ThreadKind::Vcpu,
                "{kind:?}"
            );
            assert_eq!(
                allows(kind, Sysno::clone),
                kind == ThreadKind::Main,
                "{kind:?}"
            );
            assert_eq!(
                allows(kind, Sysno::epoll_wait),
                kind == ThreadKind::Main,
                "{kind:?}"
            );
        }
        // The vCPU's ioctls are its three, by request number.
        assert_eq!(
            rules(ThreadKind::Vcpu, PID, false).unwrap()[&nr(Sysno::ioctl)].len(),
            3
        );
    }

    /// Installs `no_open` and the reader's filter on a thread of this test
    /// process (only calls the filter allows happen there, so no SIGSYS):
    /// opening a file fails with EACCES, and reading does not.
    #[test]
    fn under_the_filters_open_fails_with_eacces() {
        let progs = (
            no_open().unwrap(),
            compile(ThreadKind::PagerReader, std::process::id(), false).unwrap(),
        );
        let (open, read) = std::thread::spawn(move || {
            seccompiler::apply_filter(&progs.0).unwrap();
            seccompiler::apply_filter(&progs.1).unwrap();
            // SAFETY: plain open/read/close on a path and buffer of ours.
            unsafe {
                let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                let open = (fd, std::io::Error::last_os_error().raw_os_error());
                let mut b = [0u8; 1];
                let read = libc::read(-1, b.as_mut_ptr().cast(), 1);
                let read = (read, std::io::Error::last_os_error().raw_os_error());
                (open, read)
            }
        })
        .join()
        .unwrap();
        assert_eq!(open, (-1, Some(libc::EACCES)));
        assert_eq!(read, (-1, Some(libc::EBADF)));
    }

    #[test]
    fn the_main_filter_covers_the_sync_threads_it_starts() {
        // Sync threads inherit the main thread's filter: a call only theirs
        // allowed would still trap.
        let main = rules(ThreadKind::Main, PID, false).unwrap();
        for call in rules(ThreadKind::Sync, PID, false).unwrap().keys() {
            assert!(main.contains_key(call), "main lacks sync's {call}");
        }
    }
}
