//! `vmm bench boot`: how long from exec to the init task running, against
//! the smallest possible KVM guest (create VM + vCPU, run to one exit)
//! measured in the same run, plus the guest's kernel instructions and exits
//! during boot, which carry over to hardware KVM.

use crate::error::{Result, VmmError, kvm};
use crate::vcpu::monotonic_ns;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VcpuExit;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Marker of the machine-readable line `vmm run --stats` prints.
pub const STATS_TAG: &str = "vmm-stats:";

/// `vmm bench --no-seccomp`: every guest this process boots for a benchmark
/// runs without seccomp too. Set once, from the command line, before any.
static NO_SECCOMP: AtomicBool = AtomicBool::new(false);

pub fn set_no_seccomp(off: bool) {
    NO_SECCOMP.store(off, Ordering::Relaxed);
}

/// `vmm ARGS` as a child process; a `run` gets `--no-seccomp` (before its
/// other options, as `--init` takes the rest) when the bench was given it.
pub(crate) fn vmm_command(args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    match args.split_first() {
        Some((&"run", rest)) if NO_SECCOMP.load(Ordering::Relaxed) => {
            cmd.args(["run", "--no-seccomp"]).args(rest);
        }
        _ => {
            cmd.args(args);
        }
    }
    Ok(cmd)
}

/// The peer: real-mode `out` at once; the VMM exits on the first exit.
pub fn probe() -> Result<()> {
    let kvm_handle = crate::vm::open_kvm()?;
    let vm = kvm_handle.create_vm().map_err(kvm("create VM"))?;
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)])
        .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
    mem.write_slice(&[0xe6, 0x80], GuestAddress(0x1000)) // out 0x80, al
        .map_err(|e| VmmError::Boot(e.to_string()))?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| VmmError::GuestMemory(e.to_string()))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: 0x10000,
        userspace_addr: host as u64,
    };
    // SAFETY: `mem` outlives the VM.
    unsafe { vm.set_user_memory_region(region) }.map_err(kvm("set memory region"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(kvm("create vCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm("get sregs"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("set regs"))?;
    match vcpu.run() {
        Ok(VcpuExit::IoOut(0x80, _)) => {
            println!("{STATS_TAG} first_exit_ns={}", monotonic_ns());
            Ok(())
        }
        other => Err(VmmError::Guest(format!("probe: unexpected exit {other:?}"))),
    }
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn field(out: &str, key: &str) -> Option<u64> {
    out.lines()
        .filter(|l| l.starts_with(STATS_TAG))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| {
            w.strip_prefix(key)
                .and_then(|v| v.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        })
}

/// Runs `vmm ARGS` and returns (ns from spawn to the `key` timestamp, output).
fn timed(args: &[&str], key: &str) -> Result<(u64, String)> {
    let mut cmd = vmm_command(args)?;
    let start = monotonic_ns();
    let out = cmd.stdin(Stdio::null()).output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let at = field(&text, key).ok_or_else(|| {
        VmmError::Guest(format!(
            "no {key} in output of vmm {}: {text}",
            args.join(" ")
        ))
    })?;
    Ok((at.saturating_sub(start), text))
}

pub fn boot(runs: usize) -> Result<()> {
    let runs = runs.max(1);
    let (mut boot_ns, mut probe_ns, mut insns, mut exits) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        // Alternate so drift affects both equally.
        let (t, out) = timed(&["run", "--stats"], "init_start_ns")?;
        boot_ns.push(t);
        insns.push(field(&out, "boot_insn").unwrap_or(0));
        exits.push(field(&out, "boot_exits").unwrap_or(0));
        probe_ns.push(timed(&["bench", "probe"], "first_exit_ns")?.0);
    }
    let (b, p) = (median(&mut boot_ns), median(&mut probe_ns));
    let ratio = b as f64 / p.max(1) as f64;
    println!("boot benchmark, {runs} runs (median):");
    println!(
        "  vmm run: exec -> init task running   {:>9.3} ms",
        b as f64 / 1e6
    );
    println!(
        "  probe: exec -> create VM+vCPU -> 1st exit {:>9.3} ms",
        p as f64 / 1e6
    );
    println!("  ratio boot/probe                      {ratio:>9.2}x");
    println!(
        "  kernel instructions during boot (insn_emulation): {}",
        median(&mut insns)
    );
    println!("  VM exits during boot: {}", median(&mut exits));
    println!("  (goals: <= 100000 kernel instructions, <= 50 exits)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_bench_without_seccomp_boots_its_guests_without_it() {
        // The only test that touches the flag: no other test races it.
        set_no_seccomp(true);
        let run = args(&vmm_command(&["run", "--stats", "--init", "init"]).unwrap());
        let probe = args(&vmm_command(&["bench", "probe"]).unwrap());
        set_no_seccomp(false);
        let plain = args(&vmm_command(&["run", "--stats"]).unwrap());
        assert_eq!(run, ["run", "--no-seccomp", "--stats", "--init", "init"]);
        assert_eq!(probe, ["bench", "probe"]);
        assert_eq!(plain, ["run", "--stats"]);
    }
}
