//! Guest-physical layout at boot. Low memory holds the boot structures;
//! the kernel loads at 1 MiB and the program modules follow it.
//!
//! ```text
//! 0x0500  GDT (boot)            0x6000  hvm_start_info
//! 0x6100  module list           0x6400  memory map
//! 0x7000  kernel command line   0x8000  module command lines (64 B each)
//! 0x9000  PML4   0xa000 PDPT (low/direct)   0xb000 PDPT (kernel)
//! 0xc000  page directories, one per GiB of RAM
//! 0x100000 kernel image, then modules (page aligned)
//! ```
//! RAM above 3 GiB continues at 4 GiB, leaving a hole for MMIO (LAPIC,
//! IOAPIC, virtio-mmio devices).

use vm_memory::GuestAddress;

pub const GDT: GuestAddress = GuestAddress(0x500);
pub const START_INFO: GuestAddress = GuestAddress(0x6000);
pub const MODLIST: GuestAddress = GuestAddress(0x6100);
pub const MEMMAP: GuestAddress = GuestAddress(0x6400);
pub const CMDLINE: GuestAddress = GuestAddress(0x7000);
pub const CMDLINE_MAX: usize = 0x1000;
pub const MODULE_CMDLINES: GuestAddress = GuestAddress(0x8000);
pub const MODULE_CMDLINE_SIZE: u64 = 64;
pub const MAX_MODULES: usize = 32;
pub const PML4: GuestAddress = GuestAddress(0x9000);
pub const PDPT_LOW: GuestAddress = GuestAddress(0xa000);
pub const PDPT_KERNEL: GuestAddress = GuestAddress(0xb000);
pub const PD_BASE: GuestAddress = GuestAddress(0xc000);
pub const KERNEL_LOAD: GuestAddress = GuestAddress(0x10_0000);
/// End of conventional memory below the legacy VGA/BIOS hole.
pub const LOW_RAM_END: u64 = 0x9_fc00;
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// RAM stops here below 4 GiB; [3 GiB, 4 GiB) is for MMIO.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
/// The virtio-pager device's virtio-mmio window (0x1000 bytes), in the MMIO
/// hole well away from the LAPIC (0xfee0_0000) and IOAPIC (0xfec0_0000).
pub const PAGER_MMIO_BASE: u64 = 0xd000_0000;
/// Its interrupt line (GSI); COM1 has 4.
pub const PAGER_GSI: u32 = 5;
// Checked at build time: the window is in the hole, below the IOAPIC.
const _: () = assert!(
    PAGER_MMIO_BASE >= MMIO_HOLE_START
        && PAGER_MMIO_BASE + devices::virtio::mmio::MMIO_WINDOW_SIZE <= 0xfec0_0000
);

/// The guest RAM ranges (start, size) for `mem` bytes.
pub fn ram_ranges(mem: u64) -> Vec<(GuestAddress, u64)> {
    if mem <= MMIO_HOLE_START {
        vec![(GuestAddress(0), mem)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(FOUR_GIB), mem - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_hole() {
        assert_eq!(ram_ranges(1 << 30), vec![(GuestAddress(0), 1 << 30)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(r[1], (GuestAddress(FOUR_GIB), (4 << 30) - MMIO_HOLE_START));
    }
}
