//! Thin wrappers over privileged instructions.

use core::arch::asm;

#[inline]
pub fn outl(port: u16, value: u32) {
    // SAFETY: port I/O to the VMM's platform ports has no memory effects.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    }
}

#[inline]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O to legacy platform ports has no memory effects.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) }
}

#[inline]
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only called with architectural MSRs the CPU has.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    ((hi as u64) << 32) | lo as u64
}

#[inline]
pub fn wrmsr(msr: u32, value: u64) {
    // SAFETY: callers write architectural MSRs with valid values.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack))
    }
}

#[inline]
pub fn cr2() -> u64 {
    let v;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack)) };
    v
}

/// # Safety
/// `root` must be a valid PML4 mapping the kernel.
#[inline]
pub unsafe fn set_cr3(root: u64) {
    unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack)) }
}

/// # Safety
/// `area` must be 512 bytes, 16-byte aligned.
#[inline]
pub unsafe fn fxsave(area: *mut u8) {
    unsafe { asm!("fxsave64 [{}]", in(reg) area, options(nostack)) }
}

/// # Safety
/// `area` must hold a valid FXSAVE image.
#[inline]
pub unsafe fn fxrstor(area: *const u8) {
    unsafe { asm!("fxrstor64 [{}]", in(reg) area, options(nostack)) }
}

pub const MSR_EFER: u32 = 0xc000_0080;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_FMASK: u32 = 0xc000_0084;
pub const MSR_APIC_BASE: u32 = 0x1b;

/// Drops the TLB entry for `va` in the loaded address space.
#[inline]
pub fn invlpg(va: u64) {
    // SAFETY: invalidating a translation has no other effect.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack)) }
}

/// The TSC's rate in kHz as the hypervisor states it in CPUID leaf
/// 0x4000_0010 (the timing leaf; the VMM sets it from KVM_GET_TSC_KHZ),
/// if it does.
pub fn hypervisor_tsc_khz() -> Option<u64> {
    use core::arch::x86_64::__cpuid_count;
    const HYPERVISOR_PRESENT: u32 = 1 << 31;
    const TIMING_LEAF: u32 = 0x4000_0010;
    // CPUID only reads; leaf 1 exists on every x86-64 CPU, and the
    // hypervisor range is read only where the hypervisor bit says it is.
    if __cpuid_count(1, 0).ecx & HYPERVISOR_PRESENT == 0
        || __cpuid_count(0x4000_0000, 0).eax < TIMING_LEAF
    {
        return None;
    }
    let khz = __cpuid_count(TIMING_LEAF, 0).eax;
    (khz != 0).then_some(u64::from(khz))
}
