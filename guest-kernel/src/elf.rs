//! ELF64 executables: just enough to load a static user program, checked
//! against everything a corrupt or hostile image could do.

use crate::addr::{PAGE_SIZE, VirtAddr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    TooShort,
    NotElf,
    /// Not 64-bit little-endian x86-64.
    WrongArch,
    NotExecutable,
    BadProgramHeaders,
    /// A segment's bytes lie outside the file, or its sizes are inconsistent.
    BadSegment,
    /// A segment is not in the user half or wraps around.
    NotUserAddress,
    /// File offset and address differ modulo the page size, so pages of the
    /// file cannot be mapped where the segment wants them.
    Misaligned,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: VirtAddr,
    pub mem_size: u64,
    pub file_offset: u64,
    pub file_size: u64,
    pub writable: bool,
    pub executable: bool,
}

pub struct Elf<'a> {
    data: &'a [u8],
    phoff: usize,
    phnum: usize,
    pub entry: VirtAddr,
}

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PHENT_SIZE: usize = 56;

fn u16_at(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(d: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(o..o + 8)?.try_into().ok()?))
}

impl<'a> Elf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Elf<'a>, ElfError> {
        if data.len() < 64 {
            return Err(ElfError::TooShort);
        }
        if &data[..4] != b"\x7fELF" {
            return Err(ElfError::NotElf);
        }
        // class 64, little endian, machine x86-64
        if data[4] != 2 || data[5] != 1 || u16_at(data, 18) != Some(62) {
            return Err(ElfError::WrongArch);
        }
        if u16_at(data, 16) != Some(2) {
            return Err(ElfError::NotExecutable);
        }
        let entry = VirtAddr(u64_at(data, 24).ok_or(ElfError::TooShort)?);
        let phoff = u64_at(data, 32).ok_or(ElfError::TooShort)?;
        let phentsize = u16_at(data, 54).ok_or(ElfError::TooShort)? as usize;
        let phnum = u16_at(data, 56).ok_or(ElfError::TooShort)? as usize;
        if phentsize != PHENT_SIZE {
            return Err(ElfError::BadProgramHeaders);
        }
        let phoff = usize::try_from(phoff).map_err(|_| ElfError::BadProgramHeaders)?;
        let end = phnum
            .checked_mul(PHENT_SIZE)
            .and_then(|n| n.checked_add(phoff))
            .ok_or(ElfError::BadProgramHeaders)?;
        if end > data.len() {
            return Err(ElfError::BadProgramHeaders);
        }
        if !entry.is_user() {
            return Err(ElfError::NotUserAddress);
        }
        let elf = Elf {
            data,
            phoff,
            phnum,
            entry,
        };
        // Validate every segment up front so loading cannot fail half-way.
        for s in elf.segments() {
            s?;
        }
        Ok(elf)
    }

    /// The loadable segments, each validated.
    pub fn segments(&self) -> impl Iterator<Item = Result<Segment, ElfError>> + '_ {
        (0..self.phnum).filter_map(move |i| {
            let p = self.phoff + i * PHENT_SIZE;
            let d = self.data;
            let kind = u32_at(d, p)?;
            if kind != PT_LOAD {
                return None;
            }
            Some(self.segment(p))
        })
    }

    fn segment(&self, p: usize) -> Result<Segment, ElfError> {
        let d = self.data;
        let bad = ElfError::BadProgramHeaders;
        let flags = u32_at(d, p + 4).ok_or(bad)?;
        let s = Segment {
            file_offset: u64_at(d, p + 8).ok_or(bad)?,
            vaddr: VirtAddr(u64_at(d, p + 16).ok_or(bad)?),
            file_size: u64_at(d, p + 32).ok_or(bad)?,
            mem_size: u64_at(d, p + 40).ok_or(bad)?,
            writable: flags & PF_W != 0,
            executable: flags & PF_X != 0,
        };
        let file_end = s
            .file_offset
            .checked_add(s.file_size)
            .ok_or(ElfError::BadSegment)?;
        if file_end > d.len() as u64 || s.file_size > s.mem_size {
            return Err(ElfError::BadSegment);
        }
        let mem_end = s
            .vaddr
            .checked_add(s.mem_size)
            .ok_or(ElfError::NotUserAddress)?;
        if !s.vaddr.is_user() || !VirtAddr(mem_end.0.saturating_sub(1)).is_user() || s.vaddr.0 == 0
        {
            return Err(ElfError::NotUserAddress);
        }
        if s.file_offset % PAGE_SIZE != s.vaddr.0 % PAGE_SIZE {
            return Err(ElfError::Misaligned);
        }
        Ok(s)
    }

    pub fn data(&self) -> &'a [u8] {
        self.data
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid executable: one R+X segment and one RW segment.
    pub fn sample() -> Vec<u8> {
        let mut d = vec![0u8; 0x3000];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[16..18].copy_from_slice(&2u16.to_le_bytes());
        d[18..20].copy_from_slice(&62u16.to_le_bytes());
        d[24..32].copy_from_slice(&0x401000u64.to_le_bytes());
        d[32..40].copy_from_slice(&64u64.to_le_bytes());
        d[54..56].copy_from_slice(&56u16.to_le_bytes());
        d[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph = |d: &mut Vec<u8>, at: usize, flags: u32, off: u64, va: u64, fsz: u64, msz: u64| {
            d[at..at + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            d[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            d[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            d[at + 16..at + 24].copy_from_slice(&va.to_le_bytes());
            d[at + 32..at + 40].copy_from_slice(&fsz.to_le_bytes());
            d[at + 40..at + 48].copy_from_slice(&msz.to_le_bytes());
        };
        ph(&mut d, 64, 5, 0x1000, 0x401000, 0x800, 0x800);
        ph(&mut d, 120, 6, 0x2000, 0x402000, 0x10, 0x3000);
        d
    }

    #[test]
    fn parses_segments() {
        let d = sample();
        let e = Elf::parse(&d).unwrap();
        assert_eq!(e.entry, VirtAddr(0x401000));
        let s: Vec<_> = e.segments().map(Result::unwrap).collect();
        assert_eq!(s.len(), 2);
        assert!(s[0].executable && !s[0].writable);
        assert_eq!((s[1].file_size, s[1].mem_size), (0x10, 0x3000));
    }

    #[test]
    fn rejects_corruption() {
        assert_eq!(Elf::parse(&[0; 10]).err(), Some(ElfError::TooShort));
        let mut d = sample();
        d[0] = 0;
        assert_eq!(Elf::parse(&d).err(), Some(ElfError::NotElf));
        let mut d = sample();
        d[18] = 3;
        assert_eq!(Elf::parse(&d).err(), Some(ElfError::WrongArch));
        let mut d = sample();
        d[56..58].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(Elf::parse(&d).err(), Some(ElfError::BadProgramHeaders));
        // segment file range past the end
        let mut d = sample();
        d[120 + 32..120 + 40].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert_eq!(Elf::parse(&d).err(), Some(ElfError::BadSegment));
        // kernel address
        let mut d = sample();
        d[120 + 16..120 + 24].copy_from_slice(&0xffff_8000_0000_2000u64.to_le_bytes());
        assert_eq!(Elf::parse(&d).err(), Some(ElfError::NotUserAddress));
        // wrapping size
        let mut d = sample();
        d[120 + 40..120 + 48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Elf::parse(&d).err(), Some(ElfError::NotUserAddress));
        // misaligned file offset
        let mut d = sample();
        d[120 + 8..120 + 16].copy_from_slice(&0x2008u64.to_le_bytes());
        assert_eq!(Elf::parse(&d).err(), Some(ElfError::Misaligned));
    }
}
