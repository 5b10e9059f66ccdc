//! The boot page tables: 2 MiB pages mapping all RAM at 0 (identity, so
//! boot data is reachable), again at the direct-map base, and the first
//! GiB at the kernel's link address. The kernel replaces them early.

use super::layout::{PD_BASE, PDPT_KERNEL, PDPT_LOW, PML4};
use crate::error::{Result, VmmError};
use vm_memory::{Bytes, GuestMemoryMmap};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 2;
const HUGE: u64 = 1 << 7;
const GIB: u64 = 1 << 30;

/// `ram_end` is the highest RAM address (exclusive).
pub fn build(mem: &GuestMemoryMmap, ram_end: u64) -> Result<()> {
    let gibs = ram_end.div_ceil(GIB);
    let mut pml4 = [0u64; 512];
    pml4[0] = PDPT_LOW.0 | PRESENT | WRITABLE;
    pml4[256] = PDPT_LOW.0 | PRESENT | WRITABLE; // direct map
    pml4[511] = PDPT_KERNEL.0 | PRESENT | WRITABLE;
    let mut pdpt_low = [0u64; 512];
    let mut pds = vec![0u64; gibs as usize * 512];
    for g in 0..gibs {
        pdpt_low[g as usize] = (PD_BASE.0 + g * 4096) | PRESENT | WRITABLE;
        for e in 0..512 {
            pds[(g * 512 + e) as usize] = (g * GIB + e * (2 << 20)) | PRESENT | WRITABLE | HUGE;
        }
    }
    let mut pdpt_kernel = [0u64; 512];
    pdpt_kernel[510] = PD_BASE.0 | PRESENT | WRITABLE; // 0xffffffff80000000 → 0

    let write = |table: &[u64], at| {
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, at)
            .map_err(|e| VmmError::Boot(format!("page tables: {e}")))
    };
    write(&pml4, PML4)?;
    write(&pdpt_low, PDPT_LOW)?;
    write(&pdpt_kernel, PDPT_KERNEL)?;
    write(&pds, PD_BASE)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn entry(mem: &GuestMemoryMmap, table: GuestAddress, i: u64) -> u64 {
        mem.read_obj(GuestAddress(table.0 + i * 8)).unwrap()
    }

    /// Walks the tables like the MMU would for a 2 MiB mapping.
    fn translate(mem: &GuestMemoryMmap, va: u64) -> Option<u64> {
        let l4 = entry(mem, PML4, (va >> 39) & 511);
        let l3 = entry(mem, GuestAddress(l4 & !0xfff), (va >> 30) & 511);
        if l3 & PRESENT == 0 {
            return None;
        }
        let l2 = entry(mem, GuestAddress(l3 & !0xfff), (va >> 21) & 511);
        (l2 & PRESENT != 0).then_some((l2 & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn maps_identity_direct_and_kernel() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        build(&mem, 2 * GIB + 1).unwrap();
        assert_eq!(translate(&mem, 0x12_3456), Some(0x12_3456));
        assert_eq!(
            translate(&mem, 0xffff_8000_0000_0000 + 0x8765_4321),
            Some(0x8765_4321)
        );
        assert_eq!(translate(&mem, 0xffff_ffff_8010_0000), Some(0x10_0000));
        assert_eq!(translate(&mem, 2 * GIB + 5), Some(2 * GIB + 5)); // third GiB
        assert_eq!(translate(&mem, 3 * GIB), None);
    }
}
