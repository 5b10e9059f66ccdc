//! Confines each VMM thread with its own seccomp-BPF filter (filters.rs),
//! installed by the thread itself once its broad setup is done and before
//! it touches anything the guest or a pager controls. A refused call is
//! reported and ends the process (report.rs). `vmm run --no-seccomp` turns
//! the filters off.
//!
//! | thread | filter installed | where |
//! |---|---|---|
//! | main (event loop, then shutdown) | after the vCPU thread is started, before the loop | run.rs |
//! | vcpu0 | first thing on the thread; runs the guest once main is confined too | run.rs |
//! | pager-worker-N | first thing on the thread, before it takes a job | devices worker.rs |
//! | nbd-reader, unix-pager-reader | first thing on the thread, after the connect and handshake | pager-backends |
//! | sync-N | first thing on the thread (also under main's, inherited) | objects.rs |

mod filters;
mod report;

use pager_backends::ThreadHook;
use seccompiler::BpfProgram;
use std::io;
use std::sync::Arc;

/// The VMM's kinds of threads, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ThreadKind {
    /// The event loop, then the shutdown.
    Main,
    Vcpu,
    /// The virtio-pager device's backend workers.
    PagerWorker,
    /// A remote pager connection's reader (nbd, unix).
    PagerReader,
    /// A final-sync thread, one per object.
    Sync,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::PagerWorker,
        ThreadKind::PagerReader,
        ThreadKind::Sync,
    ];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::PagerWorker => "pager-worker",
            ThreadKind::PagerReader => "pager-reader",
            ThreadKind::Sync => "sync",
        }
    }
}

struct Filters {
    /// Indexed by `ThreadKind::index`.
    programs: Vec<BpfProgram>,
    no_clone3: BpfProgram,
    no_open: BpfProgram,
}

/// What each thread does to confine itself; shared by every thread's hook.
pub struct Confinement {
    /// None when seccomp is off.
    filters: Option<Filters>,
    /// The test hook `--seccomp-selftest`: a thread of this kind makes a
    /// forbidden call right after its filter is in place.
    selftest: Option<ThreadKind>,
}

fn compile_error(kind: &str, e: seccompiler::BackendError) -> io::Error {
    io::Error::other(format!("seccomp: cannot build the {kind} filter: {e}"))
}

impl Confinement {
    /// Builds every filter and installs the SIGSYS handler when `enabled`.
    /// Builds them in one go, before any thread starts, so that a thread's
    /// only work is installing its own. `profiling` (`--kernel-profile`)
    /// lets the vCPU single-step the guest.
    pub fn new(
        enabled: bool,
        selftest: Option<ThreadKind>,
        profiling: bool,
    ) -> io::Result<Arc<Confinement>> {
        let filters = if enabled {
            let pid = std::process::id();
            let programs = ThreadKind::ALL
                .iter()
                .map(|&k| {
                    filters::compile(k, pid, profiling).map_err(|e| compile_error(k.name(), e))
                })
                .collect::<io::Result<Vec<_>>>()?;
            let no_clone3 = filters::no_clone3().map_err(|e| compile_error("clone3", e))?;
            let no_open = filters::no_open().map_err(|e| compile_error("open", e))?;
            report::install_handler().map_err(|e| {
                io::Error::other(format!("seccomp: cannot install the SIGSYS handler: {e}"))
            })?;
            Some(Filters {
                programs,
                no_clone3,
                no_open,
            })
        } else {
            None
        };
        Ok(Arc::new(Confinement { filters, selftest }))
    }

    /// Installs `kind`'s filter on the calling thread (nothing when seccomp
    /// is off), then runs the self test if it names `kind`.
    pub fn confine(&self, kind: ThreadKind) -> io::Result<()> {
        if let Some(f) = &self.filters {
            let current = std::thread::current();
            report::set_thread_name(current.name().unwrap_or(kind.name()));
            let install = |prog: &BpfProgram| {
                seccompiler::apply_filter(prog).map_err(|e| {
                    io::Error::other(format!(
                        "seccomp: cannot install the {} filter: {e} (--no-seccomp runs without filters)",
                        kind.name()
                    ))
                })
            };
            // The error-returning filters first: installing the allow-list
            // last means no thread ever runs under it alone.
            install(&f.no_open)?;
            if kind == ThreadKind::Main {
                install(&f.no_clone3)?;
            }
            install(&f.programs[kind.index()])?;
        }
        if self.selftest == Some(kind) {
            forbidden_call();
        }
        Ok(())
    }

    /// A hook that confines the thread that runs it as `kind`.
    pub fn hook(self: &Arc<Self>, kind: ThreadKind) -> ThreadHook {
        let this = self.clone();
        ThreadHook::new(move || this.confine(kind))
    }
}

/// The test hook's forbidden call: socket(2), which no thread makes after
/// its setup. Harmless when allowed (without filters): the socket is closed
/// at once, and the run goes on. Tests use it to see that a filter refuses
/// the call and the report names the thread and the call.
fn forbidden_call() {
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string();
    // SAFETY: plain socket and close on a descriptor we own.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd >= 0 {
        // SAFETY: as above.
        unsafe { libc::close(fd) };
    }
    eprintln!("vmm: seccomp self-test: thread {name} called socket(2) and was let through");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_index_their_filters_in_order() {
        for (i, k) in ThreadKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }

    #[test]
    fn without_seccomp_nothing_is_built_and_confining_does_nothing() {
        let c = Confinement::new(false, None, false).unwrap();
        assert!(c.filters.is_none());
        // Would confine this test thread for good if it installed anything.
        c.confine(ThreadKind::Vcpu).unwrap();
    }
}
