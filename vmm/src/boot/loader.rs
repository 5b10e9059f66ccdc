//! Loading the kernel ELF (through linux-loader) after checking that it
//! fits the boot contract: loaded at or above 1 MiB in low RAM, entry
//! reachable through the boot page tables.

use super::layout::{KERNEL_LOAD, MMIO_HOLE_START};
use crate::error::{Result, VmmError};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{Elf, KernelLoader};
use std::io::Cursor;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Where the boot page tables map the kernel's higher half.
pub const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;
const KERNEL_WINDOW: u64 = 1 << 30;

pub struct LoadedKernel {
    /// 64-bit virtual entry address (ELF e_entry).
    pub entry: u64,
    /// 32-bit physical PVH entry, if the image has a XEN_ELFNOTE_PHYS32_ENTRY.
    pub pvh_entry: Option<u64>,
    /// First byte after the image, .bss included.
    pub end: GuestAddress,
}

fn field(d: &[u8], at: usize, len: usize) -> Option<u64> {
    let b = d.get(at..at + len)?;
    let mut v = [0u8; 8];
    v[..len].copy_from_slice(b);
    Some(u64::from_le_bytes(v))
}

/// Checks the program headers ourselves: linux-loader would happily load
/// a segment over the boot structures in low memory.
fn check_segments(image: &[u8], mem_low_end: u64) -> std::result::Result<u64, String> {
    let short = || "truncated ELF header".to_string();
    if image.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    let entry = field(image, 24, 8).ok_or_else(short)?;
    let phoff = field(image, 32, 8).ok_or_else(short)? as usize;
    let phentsize = field(image, 54, 2).ok_or_else(short)? as usize;
    let phnum = field(image, 56, 2).ok_or_else(short)? as usize;
    if phentsize != 56 {
        return Err(format!("unexpected program header size {phentsize}"));
    }
    let mut loads = 0;
    for i in 0..phnum {
        let p = phoff.checked_add(i * 56).ok_or_else(short)?;
        if field(image, p, 4).ok_or("truncated program headers")? != 1 {
            continue;
        }
        loads += 1;
        let paddr = field(image, p + 24, 8).ok_or("truncated program headers")?;
        let memsz = field(image, p + 40, 8).ok_or("truncated program headers")?;
        let end = paddr.checked_add(memsz).ok_or("segment size overflows")?;
        if paddr < KERNEL_LOAD.0 || end > mem_low_end {
            return Err(format!(
                "segment at physical {paddr:#x}..{end:#x} is outside [{:#x}, {mem_low_end:#x})",
                KERNEL_LOAD.0
            ));
        }
    }
    if loads == 0 {
        return Err("no loadable segments".into());
    }
    let in_window = entry >= KERNEL_BASE && entry - KERNEL_BASE < KERNEL_WINDOW;
    if !in_window && entry >= mem_low_end {
        return Err(format!("entry point {entry:#x} is not mapped at boot"));
    }
    Ok(entry)
}

pub fn load(
    mem: &GuestMemoryMmap,
    image: &[u8],
    path: &str,
    mem_size: u64,
) -> Result<LoadedKernel> {
    let invalid = |why: String| VmmError::KernelInvalid {
        path: path.to_string(),
        why,
    };
    let entry = check_segments(image, mem_size.min(MMIO_HOLE_START)).map_err(invalid)?;
    let mut cursor = Cursor::new(image);
    let res =
        Elf::load(mem, None, &mut cursor, Some(KERNEL_LOAD)).map_err(|e| invalid(e.to_string()))?;
    let pvh_entry = match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
        _ => None,
    };
    Ok(LoadedKernel {
        entry,
        pvh_entry,
        end: GuestAddress(res.kernel_end),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(paddr: u64, memsz: u64, entry: u64) -> Vec<u8> {
        let mut d = vec![0u8; 0x200];
        d[..4].copy_from_slice(b"\x7fELF");
        d[24..32].copy_from_slice(&entry.to_le_bytes());
        d[32..40].copy_from_slice(&64u64.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        d[56..58].copy_from_slice(&1u16.to_le_bytes());
        d[64..68].copy_from_slice(&1u32.to_le_bytes());
        d[64 + 24..64 + 32].copy_from_slice(&paddr.to_le_bytes());
        d[64 + 40..64 + 48].copy_from_slice(&memsz.to_le_bytes());
        d
    }

    #[test]
    fn accepts_a_well_placed_kernel() {
        assert!(check_segments(&elf(0x100000, 0x1000, KERNEL_BASE + 0x100000), 1 << 28).is_ok());
    }

    #[test]
    fn rejects_bad_images() {
        assert!(check_segments(b"MZ", 1 << 28).is_err());
        assert!(check_segments(&elf(0x1000, 0x1000, KERNEL_BASE + 0x100000), 1 << 28).is_err());
        assert!(check_segments(&elf(0x100000, u64::MAX, KERNEL_BASE), 1 << 28).is_err());
        assert!(check_segments(&elf(0x100000, 1 << 30, KERNEL_BASE), 1 << 28).is_err());
        assert!(check_segments(&elf(0x100000, 0x1000, 0xffff_8000_0000_0000), 1 << 28).is_err());
        let mut e = elf(0x100000, 0x1000, KERNEL_BASE);
        e[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(check_segments(&e, 1 << 28).is_err());
    }
}
