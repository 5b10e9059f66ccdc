//! Deliberate kernel failures, chosen with `crash=` on the command line,
//! so tests can check that each protection holds and how its failure is
//! reported (what Linux's lkdtm does). Each one ends the VM through
//! kernel_fault or the panic handler; none returns if the protection works.

use crate::arch::kstack::KernelStack;
use crate::arch::mm::{DirectTables, kernel_virt_to_phys, phys_to_virt};
use crate::arch::protect::Protection;
use core::arch::asm;
use core::hint::black_box;
use guest_kernel::addr::{PhysAddr, VirtAddr};
use guest_kernel::arch::paging::{self, PageSize, USER};
use guest_kernel::vm::frame::FrameAllocator;

/// A `ret` instruction in writable data: executing it must fault.
static mut DATA_RET: [u8; 16] = [0xc3; 16];
/// Where `exec-user` and `read-user` map their page.
const USER_PAGE: u64 = 0x40_0000;

/// Runs the failure `what` names; returns only for an unknown name, or
/// when a protection the CPU lacks (SMEP, SMAP) let the access through.
pub fn run(what: &[u8], frames: &mut FrameAllocator, root: PhysAddr, prot: Protection) {
    match what {
        b"panic" => panic!("crash=panic on the command line"),
        b"fault" => {
            // SAFETY: deliberately not safe: nothing is mapped at this address.
            unsafe { core::ptr::read_volatile(0x0000_7000_dead_0000 as *const u64) };
        }
        b"write-text" => {
            let text = run as *const () as *mut u8;
            // SAFETY: deliberately not safe: kernel text is read-only.
            unsafe { text.write_volatile(0xcc) };
        }
        b"write-text-alias" => {
            // The same text through the direct map.
            let alias = phys_to_virt(kernel_virt_to_phys(run as *const () as u64));
            // SAFETY: deliberately not safe: the alias is read-only too.
            unsafe { alias.write_volatile(0xcc) };
        }
        b"exec-data" => {
            let f: extern "C" fn() =
                // SAFETY: deliberately not safe: data is no-execute.
                unsafe { core::mem::transmute((&raw const DATA_RET).cast::<u8>()) };
            f();
        }
        b"exec-user" | b"read-user" => {
            let Some(page) = user_page(frames, root) else {
                return;
            };
            if what == b"exec-user" && prot.smep {
                // SAFETY: deliberately not safe: SMEP forbids this.
                let f: extern "C" fn() = unsafe { core::mem::transmute(page as *const u8) };
                f();
            } else if what == b"read-user" && prot.smap {
                // SAFETY: deliberately not safe: SMAP forbids this.
                black_box(unsafe { core::ptr::read_volatile(page as *const u8) });
            }
        }
        b"stack-overflow" => {
            black_box(deep(u64::MAX));
        }
        b"kstack-overflow" => {
            let Some(stack) = KernelStack::new() else {
                return;
            };
            // SAFETY: deliberately not safe: runs off the bottom of a
            // thread's kernel stack; never returns.
            unsafe {
                asm!("mov rsp, {top}", "call {f}", top = in(reg) stack.top(),
                     f = sym overflow, options(noreturn))
            };
        }
        _ => {}
    }
}

/// A user page holding `ret`, mapped in the kernel's own tables (it has no
/// task yet).
fn user_page(frames: &mut FrameAllocator, root: PhysAddr) -> Option<u64> {
    let frame = crate::arch::mm::alloc_zeroed(frames)?;
    // SAFETY: a fresh frame, through the direct map.
    unsafe { phys_to_virt(frame).write_volatile(0xc3) };
    paging::map(
        &mut DirectTables(frames),
        root,
        VirtAddr(USER_PAGE),
        frame,
        USER,
        PageSize::Small,
    )
    .ok()?;
    Some(USER_PAGE)
}

/// Recursion with a frame the optimiser cannot remove.
#[inline(never)]
fn deep(n: u64) -> u64 {
    let mut buf = [n; 32];
    black_box(&mut buf);
    if n == 0 {
        return 0;
    }
    deep(n - 1).wrapping_add(buf[7])
}

extern "C" fn overflow() -> ! {
    black_box(deep(u64::MAX));
    loop {
        core::hint::spin_loop();
    }
}
