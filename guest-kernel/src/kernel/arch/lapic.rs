//! Local APIC in x2APIC mode (MSRs, no MMIO mapping): the periodic
//! preemption timer.

use crate::arch::cpu::{MSR_APIC_BASE, rdmsr, wrmsr};

pub const TIMER_VECTOR: u64 = 32;
pub const SPURIOUS_VECTOR: u64 = 255;

const MSR_TPR: u32 = 0x808;
const MSR_EOI: u32 = 0x80b;
const MSR_SVR: u32 = 0x80f;
const MSR_LVT_TIMER: u32 = 0x832;
const MSR_TIMER_INIT: u32 = 0x838;
const MSR_TIMER_DIV: u32 = 0x83e;

/// KVM's emulated APIC bus runs at 1 GHz (1 ns per cycle), both under
/// hardware KVM and here. With divide-by-16 the timer counts at 62.5 MHz.
const TIMER_HZ_AT_DIV16: u64 = 1_000_000_000 / 16;

pub fn init(ticks_per_second: u64) {
    wrmsr(MSR_APIC_BASE, rdmsr(MSR_APIC_BASE) | (1 << 11) | (1 << 10));
    wrmsr(MSR_TPR, 0);
    wrmsr(MSR_SVR, 0x100 | SPURIOUS_VECTOR);
    wrmsr(MSR_TIMER_DIV, 0b0011);
    wrmsr(MSR_LVT_TIMER, TIMER_VECTOR | (1 << 17)); // periodic
    wrmsr(
        MSR_TIMER_INIT,
        (TIMER_HZ_AT_DIV16 / ticks_per_second.max(1)).max(1),
    );
}

pub fn eoi() {
    wrmsr(MSR_EOI, 0);
}
