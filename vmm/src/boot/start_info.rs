//! The PVH `hvm_start_info` (version 1): command line, E820 memory map and
//! the built-in programs as modules, each named by its module command line.

use super::layout::*;
use crate::error::{Result, VmmError};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

const MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct StartInfo(hvm_start_info);
// SAFETY: plain-old-data C structs with no padding-dependent invariants.
unsafe impl ByteValued for StartInfo {}
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ModEntry(hvm_modlist_entry);
// SAFETY: as above.
unsafe impl ByteValued for ModEntry {}
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct MemEntry(hvm_memmap_table_entry);
// SAFETY: as above.
unsafe impl ByteValued for MemEntry {}

/// Where a program module landed.
pub struct Module<'a> {
    pub name: &'a str,
    pub addr: GuestAddress,
    pub size: u64,
}

fn boot_err(e: impl std::fmt::Display) -> VmmError {
    VmmError::Boot(e.to_string())
}

/// Copies `programs` after `after` (page aligned) and returns where each went.
pub fn place_modules<'a>(
    mem: &GuestMemoryMmap,
    after: GuestAddress,
    programs: &[(&'a str, &[u8])],
    low_ram_end: u64,
) -> Result<Vec<Module<'a>>> {
    if programs.len() > MAX_MODULES {
        return Err(VmmError::Boot(format!("at most {MAX_MODULES} programs")));
    }
    let mut at = after.0.div_ceil(4096) * 4096;
    let mut out = Vec::new();
    for (name, image) in programs {
        let size = image.len() as u64;
        if at + size > low_ram_end {
            return Err(VmmError::Boot(
                "not enough low memory for the programs".into(),
            ));
        }
        mem.write_slice(image, GuestAddress(at)).map_err(boot_err)?;
        out.push(Module {
            name,
            addr: GuestAddress(at),
            size,
        });
        at = (at + size).div_ceil(4096) * 4096;
    }
    Ok(out)
}

pub fn write(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: &str,
    modules: &[Module],
) -> Result<()> {
    if cmdline.len() >= CMDLINE_MAX || cmdline.contains('\0') {
        return Err(VmmError::Cmdline(format!(
            "must be shorter than {CMDLINE_MAX} bytes, without NUL"
        )));
    }
    mem.write_slice(cmdline.as_bytes(), CMDLINE)
        .map_err(boot_err)?;
    mem.write_obj(0u8, GuestAddress(CMDLINE.0 + cmdline.len() as u64))
        .map_err(boot_err)?;

    let mut map = vec![
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, E820_RESERVED),
    ];
    for (start, size) in ram_ranges(mem_size) {
        let (s, e) = (start.0.max(HIGH_RAM_START), start.0 + size);
        if s < e {
            map.push((s, e - s, E820_RAM));
        }
    }
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        let e = MemEntry(hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *type_,
            reserved: 0,
        });
        mem.write_obj(e, GuestAddress(MEMMAP.0 + i as u64 * 24))
            .map_err(boot_err)?;
    }

    for (i, m) in modules.iter().enumerate() {
        let name_at = GuestAddress(MODULE_CMDLINES.0 + i as u64 * MODULE_CMDLINE_SIZE);
        let name = m.name.as_bytes();
        if name.len() >= MODULE_CMDLINE_SIZE as usize {
            return Err(VmmError::Boot(format!(
                "program name {:?} is too long",
                m.name
            )));
        }
        mem.write_slice(name, name_at).map_err(boot_err)?;
        mem.write_obj(0u8, GuestAddress(name_at.0 + name.len() as u64))
            .map_err(boot_err)?;
        let e = ModEntry(hvm_modlist_entry {
            paddr: m.addr.0,
            size: m.size,
            cmdline_paddr: name_at.0,
            reserved: 0,
        });
        mem.write_obj(e, GuestAddress(MODLIST.0 + i as u64 * 32))
            .map_err(boot_err)?;
    }

    let info = StartInfo(hvm_start_info {
        magic: MAGIC,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: MODLIST.0,
        cmdline_paddr: CMDLINE.0,
        rsdp_paddr: 0,
        memmap_paddr: MEMMAP.0,
        memmap_entries: map.len() as u32,
        reserved: 0,
    });
    mem.write_obj(info, START_INFO).map_err(boot_err)?;
    Ok(())
}
