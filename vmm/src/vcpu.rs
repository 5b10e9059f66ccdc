//! The vCPU thread: KVM_RUN and the exits it brings back. Port I/O and MMIO
//! go to the platform devices; everything the guest does wrong ends the run with
//! a message, never a panic.

use crate::bus::MmioBus;
use crate::kprof::Profiler;
use crate::stats::{Snapshot, VcpuStats};
use devices::legacy::{Com1, DoorbellConsole};
use guest_kernel::abi::{MILESTONE_INIT_START, PORT_CONSOLE, PORT_EXIT, PORT_MILESTONE};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The guest wrote its exit status to the exit port.
    Exited(u32),
    /// The guest stopped in a way it cannot report (triple fault, KVM
    /// internal error, ...).
    Failed(String),
}

/// A boot milestone with its time (CLOCK_MONOTONIC) and the vCPU counters.
#[derive(Debug, Clone)]
pub struct Milestone {
    pub id: u32,
    pub mono_ns: u64,
    pub stats: Snapshot,
    /// Guest notifications the virtio-pager device had taken by then.
    pub doorbells: u64,
}

/// Milestones kept per run; later ones are dropped.
pub const MAX_MILESTONES: usize = 1024;

pub struct Platform {
    pub console: DoorbellConsole,
    pub com1: Com1,
    /// virtio-mmio devices (empty without `--object`).
    pub mmio: MmioBus,
    pub milestones: Vec<Milestone>,
    /// `--kernel-profile`: steps the kernel between marks.
    pub profiler: Option<Profiler>,
    /// The virtio-pager device's doorbell count, read at marks.
    pub doorbells: Option<Arc<AtomicU64>>,
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn u32_of(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

/// Where the vCPU was when it stopped, for a kernel developer to start
/// from (empty if KVM won't tell).
fn where_stopped(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => format!(
            " at rip={:#x} rsp={:#x} cr2={:#x} cr3={:#x}",
            r.rip, r.rsp, s.cr2, s.cr3
        ),
        _ => String::new(),
    }
}

pub fn run(
    vcpu: &mut VcpuFd,
    mem: &GuestMemoryMmap,
    platform: &mut Platform,
    stats: Option<&VcpuStats>,
) -> Outcome {
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => match port {
                PORT_CONSOLE => {
                    if let Err(e) = platform
                        .console
                        .doorbell(mem, GuestAddress(u32_of(data) as u64))
                    {
                        tracing::warn!("console: {e}");
                    }
                }
                PORT_EXIT => return Outcome::Exited(u32_of(data)),
                PORT_MILESTONE => {
                    let id = u32_of(data);
                    let mono_ns = monotonic_ns();
                    let stats = stats.and_then(|s| s.snapshot().ok()).unwrap_or_default();
                    let doorbells = platform
                        .doorbells
                        .as_ref()
                        .map_or(0, |d| d.load(Ordering::Relaxed));
                    // Tasks can ask for marks: keep a bounded number.
                    if platform.milestones.len() < MAX_MILESTONES {
                        platform.milestones.push(Milestone {
                            id,
                            mono_ns,
                            stats,
                            doorbells,
                        });
                    }
                    if id != MILESTONE_INIT_START {
                        tracing::debug!("milestone {id}");
                    }
                    if let Some(p) = platform.profiler.as_mut()
                        && let Err(e) = p.on_milestone(vcpu, id)
                    {
                        return Outcome::Failed(format!(
                            "kernel profile: KVM_SET_GUEST_DEBUG: {e}"
                        ));
                    }
                }
                p if Com1::owns(p) => {
                    if let Some(Err(e)) = data.first().map(|&b| platform.com1.write(p, b)) {
                        tracing::warn!("COM1 output: {e}");
                    }
                }
                p => tracing::debug!("write to unclaimed port {p:#x}"),
            },
            Ok(VcpuExit::IoIn(port, data)) => {
                if Com1::owns(port) {
                    if let Some(b) = data.first_mut() {
                        *b = platform.com1.read(port);
                    }
                } else {
                    data.fill(0xff); // nothing there, as on an empty ISA bus
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !platform.mmio.read(addr, data) {
                    data.fill(0xff); // nothing decodes it: the bus floats high
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !platform.mmio.write(addr, data) {
                    tracing::debug!("write to unclaimed MMIO {addr:#x}")
                }
            }
            Ok(VcpuExit::Hlt) => {
                return Outcome::Failed("the vCPU halted with interrupts off".into());
            }
            Ok(VcpuExit::Shutdown) => {
                return Outcome::Failed(format!(
                    "triple fault (the guest kernel could not handle an exception){}",
                    where_stopped(vcpu)
                ));
            }
            Ok(VcpuExit::InternalError) => {
                return Outcome::Failed(
                    "KVM internal error (on software KVM: guest ring 0 ran an instruction the emulator cannot, such as SSE)"
                        .into(),
                );
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Outcome::Failed(format!("VM entry failed (reason {reason:#x}, cpu {cpu})"));
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                return Outcome::Failed(format!("system event {kind}"));
            }
            // Only while the profiler steps; any other is unexpected.
            Ok(VcpuExit::Debug(d)) if platform.profiler.as_mut().is_some_and(|p| p.step(d.pc)) => {}
            Ok(other) => return Outcome::Failed(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return Outcome::Failed(format!("KVM_RUN: {e}")),
        }
    }
}
