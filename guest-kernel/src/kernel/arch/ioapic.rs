//! The I/O APIC: routes a device's interrupt line (a GSI) to a vector on
//! the boot CPU. Devices here signal edges (KVM irqfd), so entries are
//! edge-triggered, active high, fixed delivery to APIC 0.

use core::ptr::{read_volatile, write_volatile};
use guest_kernel::addr::PhysAddr;

/// The standard I/O APIC address (what KVM's in-kernel one decodes).
pub const IOAPIC_BASE: PhysAddr = PhysAddr(0xfec0_0000);
const IOREGSEL: usize = 0x00;
const IOWIN: usize = 0x10;
const REG_VERSION: u32 = 0x01;
const REG_REDIR: u32 = 0x10;

fn regs() -> *mut u32 {
    crate::arch::mm::phys_to_virt(IOAPIC_BASE) as *mut u32
}

fn write(reg: u32, value: u32) {
    // SAFETY: the I/O APIC window is mapped by `mm::map_mmio` at boot.
    unsafe {
        write_volatile(regs().byte_add(IOREGSEL), reg);
        write_volatile(regs().byte_add(IOWIN), value);
    }
}

fn read(reg: u32) -> u32 {
    // SAFETY: as in `write`.
    unsafe {
        write_volatile(regs().byte_add(IOREGSEL), reg);
        read_volatile(regs().byte_add(IOWIN))
    }
}

/// Number of redirection entries (GSIs) the I/O APIC has.
pub fn lines() -> u32 {
    ((read(REG_VERSION) >> 16) & 0xff) + 1
}

/// Sends `gsi` to `vector` on APIC 0. False if there is no such line.
pub fn route(gsi: u32, vector: u8) -> bool {
    if gsi >= lines() {
        return false;
    }
    write(REG_REDIR + 2 * gsi + 1, 0); // destination APIC id 0
    write(REG_REDIR + 2 * gsi, u32::from(vector)); // fixed, physical, edge, unmasked
    true
}

/// Masks both legacy 8259 PICs so lines shared with them reach the CPU only
/// through the I/O APIC.
pub fn mask_legacy_pic() {
    crate::arch::cpu::outb(0x21, 0xff);
    crate::arch::cpu::outb(0xa1, 0xff);
}
