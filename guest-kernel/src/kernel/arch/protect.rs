//! The kernel protecting itself: ring 0 honours read-only pages (CR0.WP)
//! and no-execute (EFER.NXE), and, where the CPU has them, never runs user
//! code (SMEP) nor touches user memory (SMAP). The kernel reaches user
//! memory only through the direct map (arch/copy.rs), so SMAP costs it
//! nothing: no stac/clac anywhere. The page tables that go with this
//! (text r-x, rodata r--, data rw- no-execute, guard pages) are arch/mm.rs
//! and arch/kstack.rs.

use crate::arch::cpu::{MSR_EFER, rdmsr, wrmsr};
use crate::arch::kstack;
use core::arch::asm;
use core::arch::x86_64::__cpuid_count;
use guest_kernel::addr::VirtAddr;

const CR0_WP: u64 = 1 << 16;
const EFER_NXE: u64 = 1 << 11;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
/// CPUID leaf 7, EBX.
const CPUID_SMEP: u32 = 1 << 7;
const CPUID_SMAP: u32 = 1 << 20;

/// What `enable` turned on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Protection {
    pub smep: bool,
    pub smap: bool,
}

/// Before the kernel's own page tables are loaded: they use no-execute,
/// and read-only must bind ring 0 too. The loader may have set both, but
/// the kernel does not rely on it.
pub fn enable_paging_rights() {
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_NXE);
    // SAFETY: setting WP only makes ring-0 writes honour read-only pages.
    unsafe {
        let cr0: u64;
        asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        asm!("mov cr0, {}", in(reg) cr0 | CR0_WP, options(nostack));
    }
}

/// SMEP and SMAP where the CPU has them (after the switch to the kernel's
/// tables, which map no user memory the kernel could trip over).
pub fn enable_user_isolation() -> Protection {
    // Leaf 7 only where leaf 0 says it exists; else nothing is enabled.
    let max = __cpuid_count(0, 0).eax;
    let ebx = if max >= 7 { __cpuid_count(7, 0).ebx } else { 0 };
    let p = Protection {
        smep: ebx & CPUID_SMEP != 0,
        smap: ebx & CPUID_SMAP != 0,
    };
    let bits = if p.smep { CR4_SMEP } else { 0 } | if p.smap { CR4_SMAP } else { 0 };
    if bits != 0 {
        // SAFETY: only bits the CPU reports; the kernel never runs or
        // touches user memory through user addresses.
        unsafe {
            let cr4: u64;
            asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
            asm!("mov cr4, {}", in(reg) cr4 | bits, options(nostack));
        }
    }
    p
}

const PF_PRESENT: u64 = 1 << 0;
const PF_WRITE: u64 = 1 << 1;
const PF_FETCH: u64 = 1 << 4;

/// Why a ring-0 page fault (or the double fault a stack overflow becomes)
/// happened, in words for the report; None when it is none of these.
pub fn explain(vector: u64, error: u64, cr2: u64) -> Option<&'static str> {
    const PAGE_FAULT: u64 = 14;
    const DOUBLE_FAULT: u64 = 8;
    // A stack overflow faults pushing onto the guard page, and again
    // pushing the page fault's frame there: a double fault, with CR2
    // still naming the guard page.
    if matches!(vector, PAGE_FAULT | DOUBLE_FAULT) {
        let page = cr2 & !0xfff;
        if let Some((_, name)) = kstack::static_guards()
            .into_iter()
            .find(|&(g, _)| g == page)
        {
            return Some(match name {
                "boot" => "kernel stack overflow: the boot stack ran into its guard page",
                "idle" => "kernel stack overflow: the idle stack ran into its guard page",
                _ => "kernel stack overflow: an exception (IST) stack ran into its guard page",
            });
        }
        if kstack::guard_slot(cr2).is_some() {
            return Some("kernel stack overflow: a thread's kernel stack ran into its guard page");
        }
    }
    if vector != PAGE_FAULT {
        return None;
    }
    let user = VirtAddr(cr2).is_user();
    Some(
        match (
            error & PF_PRESENT != 0,
            error & PF_WRITE != 0,
            error & PF_FETCH != 0,
        ) {
            (true, _, true) if user => "SMEP: the kernel tried to execute user memory",
            (true, _, true) => "W^X: the kernel tried to execute a no-execute page",
            (true, _, false) if user => {
                "SMAP: the kernel touched user memory outside the copy routines"
            }
            (true, true, false) => "W^X: the kernel wrote to a read-only page (text or rodata)",
            _ => return None,
        },
    )
}
