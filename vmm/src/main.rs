//! `vmm`: Duality's one binary. `vmm run` boots the Mach guest kernel;
//! `vmm bench` measures; `vmm pager` checks a pager backend by hand.

mod bench;
mod bench_fault;
mod bench_ipc;
mod bench_objread;
mod bench_profile;
mod bench_vm;
mod bus;
mod config;
mod exit;
mod images;
mod kprof;
mod object_limits;
mod objects;
mod pager_cmd;
mod pager_device;
mod report;
mod run;
mod seccomp;
mod stats;
mod uffd;
mod vcpu;
mod vm;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vcpu::Outcome;
use vmm::{boot, error};

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "Duality: boots a Mach guest kernel on KVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot the guest kernel and run its init program; exits with init's status.
    #[command(after_help = exit::HELP)]
    Run {
        /// Guest memory (e.g. 256M, 1G).
        #[arg(long, default_value = "256M")]
        mem: String,
        /// Kernel ELF to boot instead of the built-in one.
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Extra kernel command-line options (e.g. timer_hz=250).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Print the vCPU's KVM statistics (exits, kernel instructions) and the
        /// virtio-pager device's counters at exit.
        #[arg(long)]
        stats: bool,
        /// Export a memory object to the guest (repeatable; table order is
        /// command-line order). URI: file:PATH[?ro], zero|anon[?size=N],
        /// nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH (nbds://,
        /// nbds+unix:// over TLS), unix:PATH. Give it before --init.
        #[arg(long = "object", value_name = "NAME=URI")]
        objects: Vec<String>,
        /// Swap for the guest's default pager: an `anon` object named `swap`
        /// of this size (sparse on the host; e.g. 512M, 4G); 0 turns paging
        /// out of anonymous memory off. An `--object swap=...` is used instead.
        #[arg(long, value_name = "SIZE", default_value = "1G")]
        swap: String,
        /// Seconds a pager may take to answer one request (and the final
        /// sync) before it is declared dead; connecting and the handshake
        /// together get at most 5 of them.
        #[arg(long, value_name = "SECS", default_value = "30")]
        pager_timeout: String,
        /// How to enter the kernel.
        #[arg(long, value_enum, default_value_t = run::BootProtocol::Auto)]
        boot: run::BootProtocol,
        /// Run without seccomp. By default every VMM thread (event loop, vCPU,
        /// pager workers and readers, final sync) runs under its own seccomp
        /// filter of the system calls it needs once set up; any other call
        /// stops the VMM with "vmm: seccomp: thread NAME made forbidden system
        /// call NR (NAME)" on stderr and exit status 159.
        #[arg(long)]
        no_seccomp: bool,
        /// Test hook: a thread of this kind makes a forbidden call (socket)
        /// right after its filter is installed. Harmless without filters.
        #[arg(long, value_enum, value_name = "THREAD", hide = true)]
        seccomp_selftest: Option<seccomp::ThreadKind>,
        /// Count the guest kernel's instructions per function from benchmark
        /// mark MARK to the next mark, single-stepping ring 0 (slow: a trip
        /// to the VMM per instruction). The report goes to stderr, or to FILE
        /// with the raw `ADDRESS COUNT` histogram in FILE.raw (docs/vm.md,
        /// "Profiling the kernel").
        #[arg(long, value_name = "MARK[:FILE]", value_parser = kprof::parse_spec)]
        kernel_profile: Option<kprof::ProfileSpec>,
        /// With --kernel-profile: how many units of work (faults, round
        /// trips) the span did, for figures per unit.
        #[arg(long, value_name = "N", requires = "kernel_profile")]
        kernel_profile_units: Option<u64>,
        /// The first program and its arguments; takes the rest of the command line,
        /// so give it last (built-in: init, spawn, fault, priv, spin).
        #[arg(long, num_args = 1.., value_name = "PROGRAM [ARGS]", allow_hyphen_values = true)]
        init: Vec<String>,
    },
    /// Benchmarks.
    Bench(BenchArgs),
    /// Check a pager backend (file:, zero, nbd[s]://, nbd[s]+unix://, unix:) before any guest uses it.
    #[command(subcommand)]
    Pager(pager_cmd::PagerCommand),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Boot the benchmarks' guests without seccomp (as `vmm run
    /// --no-seccomp`), e.g. to see what the filters cost.
    #[arg(long, global = true)]
    no_seccomp: bool,
    #[command(subcommand)]
    cmd: BenchCmd,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Exec to init running, next to a minimal KVM probe, with kernel instructions and exits.
    Boot {
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// A guest task reading a host file object (4K and 64K requests) next to host pread.
    Objread {
        /// File size (e.g. 64M).
        #[arg(long, default_value = "64M")]
        size: String,
    },
    /// Mach IPC round trips between two guest tasks next to host pipe and socket ping-pong.
    Ipc {
        #[arg(long, default_value_t = 1000)]
        rounds: u32,
    },
    /// Guest page faults (zero fill, soft, copy-on-write) next to the same faults on the host.
    Vm {
        /// Faults per case.
        #[arg(long, default_value_t = 2000)]
        pages: u32,
    },
    /// Guest faults on a host file next to userfaultfd (random) and host mmap (sequential).
    Fault {
        /// Pages of the random case, one fault each.
        #[arg(long, default_value_t = 2000)]
        pages: u32,
        /// MiB of the sequential case.
        #[arg(long, default_value_t = 256)]
        mib: u32,
        /// Seed of the file contents and the random order.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Then run the random case once more with the guest kernel
        /// single-stepped, and show which kernel functions a fault's
        /// instructions go to (vmm run --kernel-profile).
        #[arg(long)]
        profile: bool,
    },
    /// The minimal peer: create VM + vCPU, run to one exit.
    #[command(hide = true)]
    Probe,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("VMM_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run {
            mem,
            kernel,
            cmdline,
            stats,
            objects,
            swap,
            pager_timeout,
            boot,
            no_seccomp,
            seccomp_selftest,
            kernel_profile,
            kernel_profile_units,
            init,
        } => run_cmd(RunArgs {
            mem,
            kernel,
            cmdline,
            stats,
            objects,
            swap,
            pager_timeout,
            boot,
            seccomp: !no_seccomp,
            seccomp_selftest,
            kernel_profile,
            kernel_profile_units,
            init,
        }),
        Cmd::Bench(b) => {
            bench::set_no_seccomp(b.no_seccomp);
            match b.cmd {
                BenchCmd::Boot { runs } => bench::boot(runs),
                BenchCmd::Objread { size } => {
                    bench_objread::parse_size(&size).and_then(bench_objread::objread)
                }
                BenchCmd::Ipc { rounds } => bench_ipc::ipc(rounds),
                BenchCmd::Vm { pages } => bench_vm::vm(pages),
                BenchCmd::Fault {
                    pages,
                    mib,
                    seed,
                    profile,
                } => bench_fault::fault(&bench_fault::FaultOptions {
                    pages,
                    mib,
                    seed,
                    profile,
                }),
                BenchCmd::Probe => bench::probe(),
            }
            .map(|_| ExitCode::SUCCESS)
        }
        Cmd::Pager(cmd) => match pager_cmd::run(cmd) {
            Ok(()) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vmm: pager: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmm: error: {e}");
            ExitCode::from(exit::VMM_FAILED)
        }
    }
}

/// `vmm run`'s options as clap gave them.
struct RunArgs {
    mem: String,
    kernel: Option<PathBuf>,
    cmdline: String,
    stats: bool,
    objects: Vec<String>,
    swap: String,
    pager_timeout: String,
    boot: run::BootProtocol,
    seccomp: bool,
    seccomp_selftest: Option<seccomp::ThreadKind>,
    kernel_profile: Option<kprof::ProfileSpec>,
    kernel_profile_units: Option<u64>,
    init: Vec<String>,
}

fn run_cmd(a: RunArgs) -> error::Result<ExitCode> {
    let mem = config::parse_mem_size(&a.mem)?;
    let pager_timeout = config::parse_pager_timeout(&a.pager_timeout)?;
    let mut objects = objects::parse_specs(&a.objects)?;
    let swap = config::parse_swap_size(&a.swap)?;
    objects::add_swap(&mut objects, swap)?;
    let stats = a.stats;
    // Created now: no thread can open a file once the run has begun.
    let mut profile_out = a
        .kernel_profile
        .as_ref()
        .map(kprof::Output::open)
        .transpose()?;
    let report = run::run(&run::RunOptions {
        mem,
        kernel: a.kernel,
        cmdline: a.cmdline,
        vm_stats: stats,
        init: a.init,
        boot: a.boot,
        objects,
        pager_timeout,
        seccomp: a.seccomp,
        seccomp_selftest: a.seccomp_selftest,
        profile_mark: a.kernel_profile.as_ref().map(|p| p.mark),
    })?;
    if stats {
        for line in report::stats_lines(&report) {
            eprintln!("{line}");
        }
    }
    if let (Some(out), Some((profile, symbols))) = (&mut profile_out, &report.kernel_profile) {
        let units = a.kernel_profile_units.map(|count| kprof::Units {
            count,
            name: "unit".into(),
        });
        let lines = kprof::Report::new(profile, symbols).lines(units.as_ref(), None);
        out.write(&lines, profile)
            .map_err(|e| error::VmmError::KernelProfile(format!("cannot write the report: {e}")))?;
    }
    match report.outcome {
        // Data the guest wrote may be lost: that must not look like success.
        Outcome::Exited(0) if report.sync_failures > 0 => {
            eprintln!(
                "vmm: the guest exited 0, but {} object(s) failed to sync: exiting {}",
                report.sync_failures,
                exit::VMM_FAILED
            );
            Ok(ExitCode::from(exit::VMM_FAILED))
        }
        Outcome::Exited(status) => {
            let code = exit::from_guest_status(status);
            if u32::from(code) != status {
                eprintln!(
                    "vmm: init exited with status {}, which does not fit in an exit code (1-255): exiting {code}",
                    exit::shown(status)
                );
            }
            Ok(ExitCode::from(code))
        }
        Outcome::Failed(why) => Err(error::VmmError::Guest(why)),
    }
}
