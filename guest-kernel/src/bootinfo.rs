//! PVH boot information (`hvm_start_info`, its memory map and module list),
//! parsed from guest-physical memory through a reader so the same code runs
//! in the kernel (reading RAM) and in host tests (reading a byte array).
//!
//! Parsing happens before the kernel heap exists, so the result lives in
//! fixed-size arrays. Everything is bounds-checked: the VMM is trusted, but
//! another VMM speaking PVH may hand us anything.

use crate::addr::PhysAddr;

pub const START_INFO_MAGIC: u32 = 0x336e_c578;
pub const MAX_REGIONS: usize = 32;
pub const MAX_MODULES: usize = 32;
pub const MAX_CMDLINE: usize = 512;
pub const MAX_NAME: usize = 32;
/// E820 type of usable RAM.
pub const MEMMAP_RAM: u32 = 1;

/// Reads guest-physical memory; `false` if the range is not readable.
pub trait PhysRead {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> bool;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    Unreadable(PhysAddr),
    BadMagic(u32),
    /// Version 0 has no memory map, which the kernel needs.
    NoMemoryMap,
    TooManyRegions,
    TooManyModules,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Region {
    pub start: PhysAddr,
    pub size: u64,
    pub kind: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    pub start: PhysAddr,
    pub size: u64,
    name: [u8; MAX_NAME],
    name_len: usize,
}

impl Module {
    /// The module's name: its command line up to the first space.
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len]
    }
}

#[derive(Clone, Debug)]
pub struct BootInfo {
    regions: [Region; MAX_REGIONS],
    nr_regions: usize,
    modules: [Option<Module>; MAX_MODULES],
    nr_modules: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
}

impl BootInfo {
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.nr_regions]
    }
    pub fn ram(&self) -> impl Iterator<Item = &Region> {
        self.regions().iter().filter(|r| r.kind == MEMMAP_RAM)
    }
    pub fn modules(&self) -> impl Iterator<Item = &Module> {
        self.modules[..self.nr_modules].iter().flatten()
    }
    pub fn module(&self, name: &[u8]) -> Option<&Module> {
        self.modules().find(|m| m.name() == name)
    }
    pub fn cmdline(&self) -> &[u8] {
        &self.cmdline[..self.cmdline_len]
    }
    /// Highest physical address of anything the loader placed in memory
    /// (modules); the kernel adds its own image end.
    pub fn modules_end(&self) -> PhysAddr {
        self.modules()
            .map(|m| PhysAddr(m.start.0.saturating_add(m.size)))
            .max()
            .unwrap_or(PhysAddr(0))
    }
}

fn read_u32(mem: &dyn PhysRead, at: PhysAddr) -> Result<u32, BootInfoError> {
    let mut b = [0u8; 4];
    if !mem.read(at, &mut b) {
        return Err(BootInfoError::Unreadable(at));
    }
    Ok(u32::from_le_bytes(b))
}

fn read_u64(mem: &dyn PhysRead, at: PhysAddr) -> Result<u64, BootInfoError> {
    let mut b = [0u8; 8];
    if !mem.read(at, &mut b) {
        return Err(BootInfoError::Unreadable(at));
    }
    Ok(u64::from_le_bytes(b))
}

fn at(base: PhysAddr, off: u64) -> Result<PhysAddr, BootInfoError> {
    base.checked_add(off).ok_or(BootInfoError::Unreadable(base))
}

/// Copies a NUL-terminated string (at most `out.len()` bytes; longer ones
/// are cut). Reads in small chunks so a string near the end of RAM works.
fn read_cstr(mem: &dyn PhysRead, addr: PhysAddr, out: &mut [u8]) -> Result<usize, BootInfoError> {
    if addr.0 == 0 {
        return Ok(0);
    }
    let mut len = 0;
    while len < out.len() {
        let mut b = [0u8; 1];
        if !mem.read(at(addr, len as u64)?, &mut b) {
            return Err(BootInfoError::Unreadable(addr));
        }
        if b[0] == 0 {
            break;
        }
        out[len] = b[0];
        len += 1;
    }
    Ok(len)
}

pub fn parse(mem: &dyn PhysRead, start_info: PhysAddr) -> Result<BootInfo, BootInfoError> {
    let magic = read_u32(mem, start_info)?;
    if magic != START_INFO_MAGIC {
        return Err(BootInfoError::BadMagic(magic));
    }
    let version = read_u32(mem, at(start_info, 4)?)?;
    let nr_modules = read_u32(mem, at(start_info, 12)?)? as usize;
    let modlist = read_u64(mem, at(start_info, 16)?)?;
    let cmdline = read_u64(mem, at(start_info, 24)?)?;
    if version < 1 {
        return Err(BootInfoError::NoMemoryMap);
    }
    let memmap = read_u64(mem, at(start_info, 40)?)?;
    let memmap_entries = read_u32(mem, at(start_info, 48)?)? as usize;
    if memmap == 0 || memmap_entries == 0 {
        return Err(BootInfoError::NoMemoryMap);
    }
    if memmap_entries > MAX_REGIONS {
        return Err(BootInfoError::TooManyRegions);
    }
    if nr_modules > MAX_MODULES {
        return Err(BootInfoError::TooManyModules);
    }

    let mut info = BootInfo {
        regions: [Region::default(); MAX_REGIONS],
        nr_regions: memmap_entries,
        modules: [None; MAX_MODULES],
        nr_modules,
        cmdline: [0; MAX_CMDLINE],
        cmdline_len: 0,
    };
    for i in 0..memmap_entries {
        let e = at(PhysAddr(memmap), i as u64 * 24)?;
        info.regions[i] = Region {
            start: PhysAddr(read_u64(mem, e)?),
            size: read_u64(mem, at(e, 8)?)?,
            kind: read_u32(mem, at(e, 16)?)?,
        };
    }
    for i in 0..nr_modules {
        let e = at(PhysAddr(modlist), i as u64 * 32)?;
        let mut name = [0u8; MAX_NAME];
        let mut full = [0u8; MAX_NAME];
        let n = read_cstr(mem, PhysAddr(read_u64(mem, at(e, 16)?)?), &mut full)?;
        let name_len = full[..n].iter().position(|&c| c == b' ').unwrap_or(n);
        name[..name_len].copy_from_slice(&full[..name_len]);
        info.modules[i] = Some(Module {
            start: PhysAddr(read_u64(mem, e)?),
            size: read_u64(mem, at(e, 8)?)?,
            name,
            name_len,
        });
    }
    info.cmdline_len = read_cstr(mem, PhysAddr(cmdline), &mut info.cmdline)?;
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);
    impl PhysRead for Mem {
        fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> bool {
            let s = addr.0 as usize;
            match s.checked_add(buf.len()).and_then(|e| self.0.get(s..e)) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }
    impl Mem {
        fn put(&mut self, at: usize, b: &[u8]) {
            self.0[at..at + b.len()].copy_from_slice(b);
        }
    }

    fn image() -> Mem {
        let mut m = Mem(vec![0; 0x3000]);
        // start_info at 0x100
        m.put(0x100, &START_INFO_MAGIC.to_le_bytes());
        m.put(0x104, &1u32.to_le_bytes());
        m.put(0x10c, &2u32.to_le_bytes()); // nr_modules
        m.put(0x110, &0x400u64.to_le_bytes()); // modlist
        m.put(0x118, &0x800u64.to_le_bytes()); // cmdline
        m.put(0x128, &0x200u64.to_le_bytes()); // memmap
        m.put(0x130, &2u32.to_le_bytes());
        // memmap
        m.put(0x200, &0u64.to_le_bytes());
        m.put(0x208, &0x9fc00u64.to_le_bytes());
        m.put(0x210, &1u32.to_le_bytes());
        m.put(0x218, &0x100000u64.to_le_bytes());
        m.put(0x220, &0x7f00000u64.to_le_bytes());
        m.put(0x228, &1u32.to_le_bytes());
        // modules
        m.put(0x400, &0x200000u64.to_le_bytes());
        m.put(0x408, &0x1234u64.to_le_bytes());
        m.put(0x410, &0x900u64.to_le_bytes());
        m.put(0x420, &0x300000u64.to_le_bytes());
        m.put(0x428, &0x10u64.to_le_bytes());
        m.put(0x430, &0x980u64.to_le_bytes());
        m.put(0x800, b"init=spawn -- a b\0");
        m.put(0x900, b"init extra words\0");
        m.put(0x980, b"spin\0");
        m
    }

    #[test]
    fn parses_map_modules_and_cmdline() {
        let info = parse(&image(), PhysAddr(0x100)).unwrap();
        assert_eq!(info.ram().count(), 2);
        assert_eq!(info.regions()[1].start, PhysAddr(0x100000));
        assert_eq!(info.cmdline(), b"init=spawn -- a b");
        assert_eq!(info.modules().count(), 2);
        let m = info.module(b"init").unwrap();
        assert_eq!((m.start, m.size), (PhysAddr(0x200000), 0x1234));
        assert!(info.module(b"spin").is_some());
        assert!(info.module(b"nope").is_none());
        assert_eq!(info.modules_end(), PhysAddr(0x300010));
    }

    #[test]
    fn rejects_bad_magic_and_version_0() {
        let mut m = image();
        m.put(0x100, &0u32.to_le_bytes());
        assert_eq!(
            parse(&m, PhysAddr(0x100)).unwrap_err(),
            BootInfoError::BadMagic(0)
        );
        let mut m = image();
        m.put(0x104, &0u32.to_le_bytes());
        assert_eq!(
            parse(&m, PhysAddr(0x100)).unwrap_err(),
            BootInfoError::NoMemoryMap
        );
    }

    #[test]
    fn rejects_out_of_range_pointers_and_counts() {
        let mut m = image();
        m.put(0x128, &0xfff0u64.to_le_bytes());
        assert!(matches!(
            parse(&m, PhysAddr(0x100)),
            Err(BootInfoError::Unreadable(_))
        ));
        let mut m = image();
        m.put(0x130, &1000u32.to_le_bytes());
        assert_eq!(
            parse(&m, PhysAddr(0x100)).unwrap_err(),
            BootInfoError::TooManyRegions
        );
        let mut m = image();
        m.put(0x10c, &u32::MAX.to_le_bytes());
        assert_eq!(
            parse(&m, PhysAddr(0x100)).unwrap_err(),
            BootInfoError::TooManyModules
        );
        assert!(parse(&image(), PhysAddr(u64::MAX - 2)).is_err());
    }

    #[test]
    fn unterminated_cmdline_is_cut_not_overrun() {
        let mut m = image();
        m.put(0x800, &[b'x'; 0x700]);
        let info = parse(&m, PhysAddr(0x100)).unwrap();
        assert_eq!(info.cmdline().len(), MAX_CMDLINE);
    }
}
