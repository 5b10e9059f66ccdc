//! Where every entry into the kernel lands: exceptions, the timer, and
//! system calls (both the `syscall` instruction and the form it takes on
//! software KVM, see `is_pvm_syscall`).

use crate::arch::cpu;
use crate::arch::lapic::{SPURIOUS_VECTOR, TIMER_VECTOR};
use crate::dev::virtio_pager::VIRTIO_VECTOR;
use crate::kern::console::{Dec, Hex};
use crate::kern::scheduler::{self, KERNEL};
use crate::kern::syscall;
use crate::kprint;
use guest_kernel::abi::EXIT_KERNEL_FAULT;

/// Pseudo-vector the syscall entry pushes.
pub const SYSCALL_VECTOR: u64 = 0x100;
const PAGE_FAULT: u64 = 14;

/// Saved context, as the entry code lays it out on the kernel stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl TrapFrame {
    pub fn came_from_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

const NMI: u64 = 2;
/// NMIs taken (they are not a task's fault).
pub static NMIS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
const DOUBLE_FAULT: u64 = 8;
const MACHINE_CHECK: u64 = 18;

/// Under software KVM (kvm_pvm) `syscall` from ring 3 jumps to LSTAR but
/// stays in ring 3, so fetching kernel text there faults: a user
/// instruction-fetch page fault at exactly LSTAR. rcx/r11 hold the return
/// rip/rflags as usual; they are user-controlled either way (a user can jump
/// to LSTAR on real hardware too), so the syscall path validates them.
/// Dead code on hardware KVM.
fn is_pvm_syscall(f: &TrapFrame, cr2: u64) -> bool {
    // LSTAR always holds `syscall_entry` (set once at boot), so compare
    // with the symbol instead of paying for an rdmsr on every trap.
    let lstar = crate::arch::entry::syscall_entry as *const () as u64;
    f.vector == PAGE_FAULT
        && f.came_from_user()
        && f.error & 0x10 != 0
        && cr2 == lstar
        && f.rip == lstar
}

pub fn exception_name(v: u64) -> &'static str {
    match v {
        0 => "divide error",
        1 => "debug",
        2 => "NMI",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack fault",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating-point error",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating-point error",
        20 => "virtualization exception",
        21 => "control protection",
        _ => "reserved exception",
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn dispatch(frame: *mut TrapFrame) -> *mut TrapFrame {
    // SAFETY: the entry code passes the frame it just built on this stack.
    let f = unsafe { &mut *frame };
    // A double fault keeps CR2 from the page fault that caused it (a
    // stack overflow), which the report uses.
    let cr2 = if f.vector == PAGE_FAULT || f.vector == DOUBLE_FAULT {
        cpu::cr2()
    } else {
        0
    };
    // A double fault or machine check is the machine's (or the kernel's)
    // failure whatever ring it interrupted, never a task's fault; it runs
    // on a small IST stack, so it goes no further than the report.
    if f.vector < 32 && (!f.came_from_user() || matches!(f.vector, DOUBLE_FAULT | MACHINE_CHECK)) {
        kernel_fault(f, cr2);
    }
    if f.vector == NMI {
        // Nothing here sends NMIs on purpose: count it and go on. It runs
        // on its IST stack and may interrupt the kernel anywhere (even
        // holding the console), so it does nothing more.
        NMIS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        return frame;
    }
    let mut guard = KERNEL.lock();
    let Some(k) = guard.as_mut() else {
        drop(guard);
        kernel_fault(f, cr2);
    };
    k.enter(frame);
    match f.vector {
        SYSCALL_VECTOR => syscall::handle(k, f),
        _ if is_pvm_syscall(f, cr2) => syscall::handle(k, f),
        PAGE_FAULT if crate::vm::fault::user_fault(k, cr2, f.error) => {}
        v if v < 32 && !crate::ipc::exception::raise(k, v, f.error, f.rip, cr2) => {
            k.kill_current(v, f.error, f.rip, cr2);
        }
        v if v < 32 => {}
        TIMER_VECTOR => {
            crate::arch::lapic::eoi();
            k.ticks += 1;
            k.need_resched = true;
            crate::vm::object_io::tick(k);
            crate::vm::default_pager::tick(k);
            crate::ipc::tick(k);
        }
        v if v == u64::from(VIRTIO_VECTOR) => {
            crate::vm::object_io::interrupt(k);
            crate::arch::lapic::eoi();
        }
        SPURIOUS_VECTOR => {}
        _ => {}
    }
    crate::vm::object_io::leave_kernel(k);
    k.schedule()
}

/// An exception in ring 0 is a kernel bug: report it and power off.
fn kernel_fault(f: &TrapFrame, cr2: u64) -> ! {
    {
        let mut c = crate::kern::console::force_lock();
        use crate::kern::console::Piece;
        "\nkernel fault: ".emit(&mut c);
        exception_name(f.vector).emit(&mut c);
        " (vector ".emit(&mut c);
        Dec(f.vector).emit(&mut c);
        ", error ".emit(&mut c);
        Hex(f.error).emit(&mut c);
        ") at rip ".emit(&mut c);
        Hex(f.rip).emit(&mut c);
        ", cr2 ".emit(&mut c);
        Hex(cr2).emit(&mut c);
        ", rsp ".emit(&mut c);
        Hex(f.rsp).emit(&mut c);
        if let Some(why) = crate::arch::protect::explain(f.vector, f.error, cr2) {
            ": ".emit(&mut c);
            why.emit(&mut c);
        }
        "\n".emit(&mut c);
        c.flush();
    }
    scheduler::power_off(EXIT_KERNEL_FAULT)
}

#[allow(unused)]
fn _unused() {
    kprint!("");
}
