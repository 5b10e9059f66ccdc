//! Duality's Mach guest kernel: boot, then run user tasks.
//!
//! Boot path: `entry.rs` (_start) → `kmain` here → memory (`mm`), CPU tables
//! (`gdt`, `idt`), system calls, the timer (`lapic`) → the first task.
//! Every later kernel entry goes through `trap::dispatch`.
#![no_std]
#![no_main]

extern crate alloc;

// Laid out the way GNU Mach is: the machine layer, the kernel proper
// (tasks, scheduling, the trap table), virtual memory, and device drivers.
mod arch;
mod dev;
mod ipc;
mod kern;
mod vm;

use arch::cpu::{MSR_EFER, MSR_FMASK, MSR_LSTAR, MSR_STAR, outl, rdmsr, wrmsr};
use arch::{entry, gdt, idt, lapic, mm};
use guest_kernel::abi::{
    EXIT_BOOT_FAILED, EXIT_KERNEL_PANIC, MILESTONE_INIT_START, PORT_MILESTONE,
};
use guest_kernel::addr::{PAGE_SIZE, PhysAddr};
use guest_kernel::{bootinfo, cmdline};
use kern::console::{self, Dec, Hex};
use kern::scheduler::{self, KERNEL, Kernel, power_off};

const DEFAULT_TIMER_HZ: u64 = 100;

fn boot_failed(what: &str) -> ! {
    kprint!("boot failed: ", what, "\n");
    power_off(EXIT_BOOT_FAILED)
}

/// Called by `_start` on the boot stack with the start_info address.
pub extern "C" fn kmain(start_info: u64) -> ! {
    let boot = match bootinfo::parse(&mm::DirectRead, PhysAddr(start_info)) {
        Ok(b) => b,
        Err(_) => boot_failed("unreadable PVH start_info"),
    };
    let mem = match mm::init(&boot) {
        Ok(m) => m,
        Err(_) => boot_failed("not enough memory for the kernel heap and page tables"),
    };
    gdt::init();
    idt::init();
    // System calls enter at `syscall_entry` in ring 0 with IF, TF, DF, AC
    // cleared. STAR: kernel CS 0x08 (SS 0x10), user base 0x10 (SS 0x1b, CS 0x23).
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | 1);
    wrmsr(MSR_STAR, (0x10u64 << 48) | (0x08u64 << 32));
    wrmsr(MSR_LSTAR, entry::syscall_entry as *const () as u64);
    wrmsr(MSR_FMASK, 0x4_0700);

    let cmd = boot.cmdline();
    let hz = cmdline::value(cmd, b"timer_hz")
        .and_then(cmdline::parse_u64)
        .unwrap_or(DEFAULT_TIMER_HZ);
    let ram: u64 = boot.ram().map(|r| r.size).sum();
    kprint!(
        "Duality Mach kernel ",
        env!("CARGO_PKG_VERSION"),
        ": ",
        Dec(ram >> 20),
        " MiB RAM, ",
        Dec((mem.frames.free_frames() * PAGE_SIZE) >> 20),
        " MiB free, ",
        Dec(boot.modules().count() as u64),
        " programs, timer ",
        Dec(hz),
        " Hz\n"
    );

    let mut mem = mem;
    let prot = arch::protect::enable_user_isolation();
    kprint!(
        "kernel protection: text r-x, rodata r--, data rw- no-exec; guard pages under every kernel stack; SMEP ",
        if prot.smep {
            "on"
        } else {
            "off (the CPU lacks it)"
        },
        ", SMAP ",
        if prot.smap {
            "on"
        } else {
            "off (the CPU lacks it)"
        },
        "\n"
    );
    if cmdline::value(cmd, b"wx_audit") == Some(b"1") {
        let a = mm::audit_wx(&mut mem.frames, mem.kernel_root);
        if let Some(at) = a.first_both {
            kprint!(
                "kernel W^X audit: FAILED: writable and executable at ",
                Hex(at.0),
                "\n"
            );
            power_off(EXIT_KERNEL_PANIC);
        }
        kprint!(
            "kernel W^X audit: ",
            Dec(a.mapped >> 10),
            " KiB mapped, ",
            Dec(a.executable >> 10),
            " KiB executable, ",
            Dec(a.writable >> 10),
            " KiB writable, none both\n"
        );
    }
    // Deliberate failures, so tests can check how they are reported.
    if let Some(what) = cmdline::value(cmd, b"crash") {
        arch::crashtest::run(what, &mut mem.frames, mem.kernel_root, prot);
    }

    dev::virtio_pager::init(cmd, &mut mem.frames, mem.kernel_root);

    let init_name = cmdline::value(cmd, b"init").unwrap_or(b"init");
    let args = cmdline::init_args(cmd);
    let mut k = Kernel::new(boot.clone(), mem.frames, mem.kernel_root, mem.heap_bytes);
    vm::default_pager::boot(&mut k);
    let bootstrap = kern::bootstrap::start(&mut k);
    let init = match k.spawn(init_name, args, None, false) {
        Ok(id) => id,
        Err(scheduler::SpawnError::NoSuchProgram) => boot_failed("no such init program"),
        Err(_) => boot_failed("cannot load the init program"),
    };
    if let Some(t) = k.task_mut(init) {
        t.bootstrap = bootstrap;
    }
    k.init = init;
    k.timer_hz = hz.max(1);
    k.tsc = kern::clock::TscRate::new(arch::cpu::hypervisor_tsc_khz());
    // With a stated rate the faults' spin bound holds from the first fault.
    vm::pager::tick(&mut k);
    k.report_vm_stats = cmdline::value(cmd, b"vm_stats") == Some(b"1");
    lapic::init(hz);
    let frame = k.schedule();
    *KERNEL.lock() = Some(k);
    outl(PORT_MILESTONE, MILESTONE_INIT_START);
    // SAFETY: `frame` is init's initial frame on its kernel stack, and the
    // switch above loaded its address space, stack pointer and FPU state.
    unsafe { entry::trap_return(frame as u64) }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // A panic while reporting one: stop at once rather than recurse until
    // the stack overflows (which ends in a triple fault with no message).
    static PANICKING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if PANICKING.swap(true, core::sync::atomic::Ordering::Relaxed) {
        power_off(EXIT_KERNEL_PANIC);
    }
    {
        let mut c = console::force_lock();
        use console::Piece;
        "\nkernel panic".emit(&mut c);
        if let Some(loc) = info.location() {
            " at ".emit(&mut c);
            loc.file().emit(&mut c);
            ":".emit(&mut c);
            Dec(loc.line() as u64).emit(&mut c);
        }
        // Only literal messages: formatting arguments would pull in core's
        // SSE integer code.
        if let Some(msg) = info.message().as_str() {
            ": ".emit(&mut c);
            msg.emit(&mut c);
        }
        "\n".emit(&mut c);
        c.flush();
    }
    let _ = Hex(0);
    power_off(EXIT_KERNEL_PANIC)
}
