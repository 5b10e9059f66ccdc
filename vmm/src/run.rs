//! `vmm run`: build the VM, load the guest, run its vCPU on its own thread
//! while the main thread runs the event loop, and report how it ended.
//! Memory objects (`--object`) are opened before anything else and synced
//! after the vCPU has stopped.

use crate::boot::cpu::Entry;
use crate::boot::{self, layout, start_info};
use crate::bus::MmioBus;
use crate::error::{Result, VmmError, kvm};
use crate::images;
use crate::kprof::{Profile, Profiler, Symbols};
use crate::objects::{self, ObjectSpec};
use crate::pager_device;
use crate::report::ObjectReport;
use crate::seccomp::{Confinement, ThreadKind};
use crate::stats::{Snapshot, VcpuStats};
use crate::vcpu::{self, Milestone, Outcome, Platform};
use crate::vm::Vm;
use devices::legacy::{Com1, DoorbellConsole};
use devices::pager::PagerStats;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use pager_backends::{OpenOptions, poison};
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// COM1's ISA interrupt line.
const COM1_IRQ: u32 = 4;

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub mem: u64,
    pub kernel: Option<PathBuf>,
    pub cmdline: String,
    /// Ask the kernel for its VM counts at init's exit (`vm_stats=1`).
    pub vm_stats: bool,
    /// Program name, then its arguments.
    pub init: Vec<String>,
    pub boot: BootProtocol,
    /// `--object`s in command-line order: the device's object table.
    pub objects: Vec<ObjectSpec>,
    /// Bounds every remote pager request, and the sync at shutdown.
    pub pager_timeout: Duration,
    /// Each thread under its seccomp filter (off: `--no-seccomp`).
    pub seccomp: bool,
    /// The test hook `--seccomp-selftest`: which thread makes a forbidden call.
    pub seccomp_selftest: Option<ThreadKind>,
    /// `--kernel-profile`: the benchmark mark where single-stepping starts.
    pub profile_mark: Option<u32>,
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootProtocol {
    /// PVH if the kernel has a PVH note, else direct 64-bit.
    Auto,
    /// The PVH 32-bit entry (fails if the kernel has none).
    Pvh,
    /// Straight into 64-bit mode at the ELF entry, on the VMM's page tables.
    Direct,
}

pub struct RunReport {
    pub outcome: Outcome,
    pub milestones: Vec<Milestone>,
    pub totals: Snapshot,
    /// The virtio-pager device's counters, if there was one.
    pub pager_stats: Option<PagerStats>,
    /// Each `--object`'s counters, in table order, after the final sync.
    pub objects: Vec<ObjectReport>,
    /// Objects whose final sync failed (already reported on stderr).
    pub sync_failures: usize,
    /// With `--kernel-profile`: what was counted, and the kernel's symbols
    /// to name it with.
    pub kernel_profile: Option<(Profile, Symbols)>,
}

/// Longest kernel command line: its page-sized slot keeps a NUL at the end.
pub const CMDLINE_MAX_LEN: usize = layout::CMDLINE_MAX - 1;

/// Builds the kernel command line:
/// `init=NAME [user options] [platform words] -- ARGS`, and checks that it
/// fits, blaming each part for its own bytes.
pub fn kernel_cmdline(user: &str, platform: &[String], init: &[String]) -> Result<String> {
    let name = init.first().map(String::as_str).unwrap_or("init");
    if !images::PROGRAMS.iter().any(|(n, _)| *n == name) {
        return Err(VmmError::UnknownInit {
            name: name.to_string(),
            known: images::program_names(),
        });
    }
    if user.split_whitespace().any(|w| w == "--") {
        return Err(VmmError::Cmdline(
            "'--' is reserved: give init's arguments after --init PROGRAM".into(),
        ));
    }
    if user.contains('\0') || init.iter().any(|a| a.contains('\0')) {
        return Err(VmmError::Cmdline(
            "contains a NUL byte, which would end it early".into(),
        ));
    }
    let user = user.trim();
    let mut s = format!("init={name}");
    if !user.is_empty() {
        s.push(' ');
        s.push_str(user);
    }
    for w in platform {
        s.push(' ');
        s.push_str(w);
    }
    let before_args = s.len();
    if init.len() > 1 {
        s.push_str(" -- ");
        s.push_str(&init[1..].join(" "));
    }
    if s.len() > CMDLINE_MAX_LEN {
        let args = s.len() - before_args;
        return Err(VmmError::CmdlineTooLong {
            given: user.len(),
            args,
            added: before_args - user.len(),
            limit: CMDLINE_MAX_LEN,
        });
    }
    Ok(s)
}

/// Wakes the event loop when the vCPU thread is done.
struct ExitWatcher {
    evt: EventFd,
    done: bool,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.done = true;
    }
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            tracing::error!("cannot watch the vCPU exit event: {e:?}");
        }
    }
}

pub fn run(opts: &RunOptions) -> Result<RunReport> {
    // The VMM's own words; no device, no word: without --object the guest
    // boots exactly as before.
    let mut platform_words = Vec::new();
    if opts.vm_stats {
        platform_words.push("vm_stats=1".to_string());
    }
    if !opts.objects.is_empty() {
        platform_words.push(pager_device::our_cmdline_word());
    }
    let cmdline = kernel_cmdline(&opts.cmdline, &platform_words, &opts.init)?;
    // Every filter is built (and the SIGSYS handler set) before any thread
    // starts; each thread installs its own (seccomp/mod.rs lists where).
    // Profiling is the one case where the vCPU may set guest debugging.
    let confinement = Confinement::new(
        opts.seccomp,
        opts.seccomp_selftest,
        opts.profile_mark.is_some(),
    )?;
    // Opened first: a missing file or a down server is reported before any
    // KVM work, and the guest never starts without its objects.
    let pager_opts = OpenOptions {
        reader_hook: Some(confinement.hook(ThreadKind::PagerReader)),
        ..objects::open_options(opts.pager_timeout)
    };
    let objects = objects::open_all(&opts.objects, &pager_opts)?;
    let (kernel, path): (Cow<[u8]>, String) = match &opts.kernel {
        Some(p) => (
            Cow::Owned(boot::kernel_file::read(p)?),
            p.display().to_string(),
        ),
        None => (Cow::Borrowed(images::KERNEL), "<built-in kernel>".into()),
    };

    // A kernel the profile could not name is refused before it boots.
    let symbols = match opts.profile_mark {
        Some(_) => Some(Symbols::from_elf(&kernel).map_err(|e| {
            VmmError::KernelProfile(format!("cannot name the functions of kernel {path}: {e}"))
        })?),
        None => None,
    };

    let vm = Vm::new(opts.mem)?;
    if opts.profile_mark.is_some() && !vm.kvm.check_extension(kvm_ioctls::Cap::SetGuestDebug) {
        return Err(VmmError::KernelProfile(
            "this KVM cannot single-step a guest (no KVM_CAP_SET_GUEST_DEBUG)".into(),
        ));
    }
    let loaded = boot::loader::load(&vm.mem, &kernel, &path, opts.mem)?;
    let low_end = opts.mem.min(layout::MMIO_HOLE_START);
    let modules = start_info::place_modules(&vm.mem, loaded.end, images::PROGRAMS, low_end)?;
    start_info::write(&vm.mem, opts.mem, &cmdline, &modules)?;
    let entry = match (opts.boot, loaded.pvh_entry) {
        (BootProtocol::Auto | BootProtocol::Pvh, Some(pvh)) => Entry::Pvh32(pvh),
        (BootProtocol::Pvh, None) => {
            return Err(VmmError::KernelInvalid {
                path,
                why: "no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)".into(),
            });
        }
        (BootProtocol::Auto | BootProtocol::Direct, _) => {
            let ram_end = layout::ram_ranges(opts.mem)
                .last()
                .map_or(0, |(a, s)| a.0 + s);
            boot::pagetables::build(&vm.mem, ram_end)?;
            Entry::Long64(loaded.entry)
        }
    };

    let mut vcpu_fd = vm.fd.create_vcpu(0).map_err(kvm("create vCPU"))?;
    boot::cpu::setup(&vm.kvm, &vcpu_fd, &vm.mem, entry)?;
    let stats = match VcpuStats::open(&vcpu_fd) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("vCPU statistics unavailable: {e}");
            None
        }
    };

    let com1_irq = EventFd::new(EFD_NONBLOCK)?;
    vm.fd
        .register_irqfd(&com1_irq, COM1_IRQ)
        .map_err(kvm("register COM1 irqfd"))?;
    let mut mmio = MmioBus::default();
    let pager_dev = if objects.is_empty() {
        None
    } else {
        let worker_hook = confinement.hook(ThreadKind::PagerWorker);
        Some(pager_device::attach(
            &vm,
            &objects,
            &mut mmio,
            &worker_hook,
        )?)
    };
    let mut platform = Platform {
        console: DoorbellConsole::new(Box::new(std::io::stdout())),
        com1: Com1::new(com1_irq, Box::new(std::io::stdout())),
        mmio,
        milestones: Vec::new(),
        profiler: opts.profile_mark.map(Profiler::new),
        doorbells: pager_dev
            .as_ref()
            .and_then(|d| d.lock().ok().map(|d| d.doorbell_counter())),
    };

    let exit_evt = EventFd::new(EFD_NONBLOCK)?;
    let watcher = Arc::new(Mutex::new(ExitWatcher {
        evt: exit_evt.try_clone()?,
        done: false,
    }));
    let mut events = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()
        .map_err(|e| VmmError::Boot(format!("event manager: {e:?}")))?;
    events.add_subscriber(watcher.clone());
    if let Some(dev) = &pager_dev {
        events.add_subscriber(dev.clone());
    }

    let mem = &vm.mem;
    let vcpu_confinement = confinement.clone();
    // The vCPU runs the guest only once the event loop is confined too.
    let (go_tx, go_rx) = mpsc::sync_channel::<bool>(1);
    let ran = std::thread::scope(|s| {
        let vcpu_thread = std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn_scoped(s, move || {
                let confined = vcpu_confinement.confine(ThreadKind::Vcpu);
                let go = go_rx.recv().unwrap_or(false);
                if let Err(e) = confined {
                    let _ = exit_evt.write(1);
                    return Err(VmmError::Io(e));
                }
                if !go {
                    let _ = exit_evt.write(1);
                    return Err(VmmError::Boot(
                        "the event loop could not be confined; the guest did not start".into(),
                    ));
                }
                let outcome = vcpu::run(&mut vcpu_fd, mem, &mut platform, stats.as_ref());
                let totals = stats
                    .as_ref()
                    .and_then(|s| s.snapshot().ok())
                    .unwrap_or_default();
                let _ = exit_evt.write(1);
                let profile = platform.profiler.map(Profiler::finish);
                Ok((outcome, totals, platform.milestones, profile))
            })?;
        // Started before this thread's own filter, so the vCPU's is not
        // stacked on it.
        let confined = confinement.confine(ThreadKind::Main);
        let _ = go_tx.send(confined.is_ok());
        if let Err(e) = confined {
            let _ = vcpu_thread.join();
            return Err(VmmError::Io(e));
        }
        loop {
            if let Err(e) = events.run() {
                tracing::error!("event loop: {e:?}");
                break;
            }
            if watcher.lock().map(|w| w.done).unwrap_or(true) {
                break;
            }
        }
        let (outcome, totals, milestones, profile) = vcpu_thread
            .join()
            .map_err(|_| VmmError::Guest("the vCPU thread panicked".into()))??;
        Ok::<_, VmmError>((outcome, (totals, milestones, profile)))
    });
    // Whatever the guest did, what it wrote must reach the backing stores;
    // bounded by the pager timeout so a dead or silent pager cannot hang us.
    let sync_hook = confinement.hook(ThreadKind::Sync);
    let sync_failures = objects::sync_all(&objects, opts.pager_timeout, Some(&sync_hook));
    for (name, why) in &sync_failures {
        eprintln!("vmm: object {name}: sync failed: {why}");
    }
    let (outcome, (totals, milestones, profile)) = ran?;
    let (pager_stats, events, throttling) = match &pager_dev {
        Some(d) => {
            let d = poison::lock(d);
            (Some(d.stats()), d.object_events(), d.object_throttling())
        }
        None => (None, Vec::new(), Vec::new()),
    };
    // Same order as the device's table: specs, objects and events zip.
    let objects = opts
        .objects
        .iter()
        .zip(&objects)
        .enumerate()
        .map(|(i, (spec, o))| ObjectReport {
            name: o.name.clone(),
            uri: spec.uri.clone(),
            pager: o.pager.stats(),
            events: events.get(i).copied().unwrap_or_default(),
            throttle: throttling.get(i).copied().unwrap_or_default(),
        })
        .collect();
    Ok(RunReport {
        outcome,
        milestones,
        totals,
        pager_stats,
        objects,
        sync_failures: sync_failures.len(),
        kernel_profile: profile.zip(symbols),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_puts_init_first_and_args_last() {
        let init = vec!["spawn".to_string(), "spin:a".into(), "spin:b".into()];
        assert_eq!(
            kernel_cmdline("timer_hz=250", &[], &init).unwrap(),
            "init=spawn timer_hz=250 -- spin:a spin:b"
        );
        assert_eq!(kernel_cmdline("", &[], &[]).unwrap(), "init=init");
        assert!(matches!(
            kernel_cmdline("", &[], &["nope".into()]),
            Err(VmmError::UnknownInit { .. })
        ));
        let dev = [pager_device::our_cmdline_word()];
        assert_eq!(
            kernel_cmdline("timer_hz=250", &dev, &init).unwrap(),
            "init=spawn timer_hz=250 virtio_mmio.device=4K@0xd0000000:5 -- spin:a spin:b"
        );
        assert_eq!(
            kernel_cmdline("", &dev, &[]).unwrap(),
            "init=init virtio_mmio.device=4K@0xd0000000:5"
        );
        assert!(matches!(
            kernel_cmdline("a -- b", &[], &[]),
            Err(VmmError::Cmdline(_))
        ));
        assert!(matches!(
            kernel_cmdline("a\0b", &[], &[]),
            Err(VmmError::Cmdline(_))
        ));
    }

    /// At the limit the message says how much of it is the user's to give,
    /// not the bytes the VMM adds.
    #[test]
    fn cmdline_limit_counts_only_the_users_bytes() {
        let dev = [pager_device::our_cmdline_word()];
        // "init=init" + " " + user + " " + device word.
        let added = "init=init".len() + 1 + 1 + dev[0].len();
        let room = CMDLINE_MAX_LEN - added;
        let fits = "x".repeat(room);
        let line = kernel_cmdline(&fits, &dev, &[]).unwrap();
        assert_eq!(line.len(), CMDLINE_MAX_LEN);
        let err = kernel_cmdline(&format!("{fits}y"), &dev, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "--cmdline is {} bytes, but at most {room} fit",
                room + 1
            )),
            "{err}"
        );
        assert!(err.contains(&format!("the VMM adds {added}")), "{err}");
        // init's arguments shrink the room and are named as such.
        let init = vec!["init".to_string(), "42".into()];
        let err = kernel_cmdline(&fits, &dev, &init).unwrap_err().to_string();
        assert!(
            err.contains(&format!("at most {} fit", room - " -- 42".len())),
            "{err}"
        );
        assert!(err.contains("init's arguments take 6"), "{err}");
        // Arguments alone too long: they are what is blamed.
        let init = vec!["init".to_string(), "a".repeat(CMDLINE_MAX_LEN)];
        let err = kernel_cmdline("", &[], &init).unwrap_err().to_string();
        assert!(err.starts_with("init's arguments take"), "{err}");
    }
}
