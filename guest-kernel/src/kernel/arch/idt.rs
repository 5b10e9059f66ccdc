//! The IDT: every exception vector, the timer, and the spurious vector.

use crate::arch::entry::{TRAP_STUBS, spurious_stub};
use crate::arch::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, KERNEL_CS};
use core::arch::asm;
use core::mem::size_of;

#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    off_lo: u16,
    sel: u16,
    ist: u8,
    kind: u8,
    off_mid: u16,
    off_hi: u32,
    _r: u32,
}

const EMPTY: Gate = Gate {
    off_lo: 0,
    sel: 0,
    ist: 0,
    kind: 0,
    off_mid: 0,
    off_hi: 0,
    _r: 0,
};
static mut IDT: [Gate; 256] = [EMPTY; 256];

fn gate(handler: u64, ist: u8) -> Gate {
    Gate {
        off_lo: handler as u16,
        sel: KERNEL_CS,
        ist,
        kind: 0x8e, // present, DPL 0, 64-bit interrupt gate (IF cleared)
        off_mid: (handler >> 16) as u16,
        off_hi: (handler >> 32) as u32,
        _r: 0,
    }
}

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

pub fn init() {
    // SAFETY: runs once at boot with interrupts off.
    unsafe {
        let stubs = &raw const TRAP_STUBS;
        for (v, &stub) in (*stubs).iter().enumerate() {
            let ist = match v {
                2 => IST_NMI,
                8 => IST_DOUBLE_FAULT,
                18 => IST_MACHINE_CHECK,
                _ => 0,
            };
            IDT[v] = gate(stub, ist);
        }
        IDT[255] = gate(spurious_stub as *const () as u64, 0);
        let ptr = Pointer {
            limit: (size_of::<[Gate; 256]>() - 1) as u16,
            base: &raw const IDT as u64,
        };
        asm!("lidt [{}]", in(reg) &ptr, options(nostack));
    }
}
