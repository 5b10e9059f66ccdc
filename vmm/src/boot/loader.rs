//! Loading the kernel ELF. linux-loader is the one ELF reader: it copies
//! the segments into guest memory and finds the PVH entry note, and its
//! header types (`linux_loader::elf`) are what this file reads the headers
//! as. What linux-loader leaves unchecked is checked here first, before a
//! byte is copied: every offset and size in the headers against the file
//! and against where a kernel may go (1 MiB up, below the end of low RAM,
//! so never over the boot structures), and the entry against what the boot
//! page tables map. A hostile file gets a clear error, never a panic, a
//! huge allocation or a write outside the kernel's window.

use super::layout::{KERNEL_LOAD, MMIO_HOLE_START};
use crate::error::{Result, VmmError};
use linux_loader::elf::{
    EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, ELFMAG, EM_X86_64, Elf64_Ehdr, Elf64_Phdr, PT_LOAD,
    PT_NOTE,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{Elf, KernelLoader};
use std::io::Cursor;
use std::mem::size_of;
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

/// Where the boot page tables map the kernel's higher half.
pub const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;
const KERNEL_WINDOW: u64 = 1 << 30;

const EHDR_SIZE: usize = size_of::<Elf64_Ehdr>();
const PHDR_SIZE: usize = size_of::<Elf64_Phdr>();

#[derive(Debug)]
pub struct LoadedKernel {
    /// 64-bit virtual entry address (ELF e_entry).
    pub entry: u64,
    /// 32-bit physical PVH entry, if the image has a XEN_ELFNOTE_PHYS32_ENTRY.
    pub pvh_entry: Option<u64>,
    /// First byte after the image, .bss included.
    pub end: GuestAddress,
}

/// What the checks learned, for the load to use.
struct Checked {
    entry: u64,
    /// Physical span of all PT_LOAD segments (memory sizes).
    start: u64,
    end: u64,
}

/// A header struct read from `bytes` (which must be exactly its size).
fn read_struct<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(bytes);
    v
}

/// `len` bytes at `off` in a file of `file_len` bytes, or why not.
fn in_file(off: u64, len: u64, file_len: usize) -> std::result::Result<(), String> {
    match off.checked_add(len) {
        Some(end) if end <= file_len as u64 => Ok(()),
        Some(end) => Err(format!(
            "bytes {off:#x}..{end:#x} run past the end of the file ({file_len:#x} bytes)"
        )),
        None => Err(format!("offset {off:#x} + size {len:#x} overflows")),
    }
}

fn check_header(image: &[u8]) -> std::result::Result<Elf64_Ehdr, String> {
    if image.get(..ELFMAG.len()) != Some(&ELFMAG[..]) {
        return Err("not an ELF file".into());
    }
    let Some(head) = image.get(..EHDR_SIZE) else {
        return Err(format!(
            "truncated ELF header ({} of {EHDR_SIZE} bytes)",
            image.len()
        ));
    };
    let eh: Elf64_Ehdr = read_struct(head);
    if eh.e_ident[EI_CLASS] != ELFCLASS64 {
        return Err("not a 64-bit ELF file".into());
    }
    if eh.e_ident[EI_DATA] != ELFDATA2LSB {
        return Err("not a little-endian ELF file".into());
    }
    if eh.e_machine != EM_X86_64 {
        return Err(format!("machine type {} is not x86-64", eh.e_machine));
    }
    if usize::from(eh.e_phentsize) != PHDR_SIZE {
        return Err(format!(
            "unexpected program header size {} (expected {PHDR_SIZE})",
            eh.e_phentsize
        ));
    }
    if eh.e_phnum == 0 {
        return Err("no program headers".into());
    }
    if eh.e_phoff < EHDR_SIZE as u64 {
        return Err(format!(
            "program headers at {:#x} overlap the ELF header",
            eh.e_phoff
        ));
    }
    // At most 65535 * 56 bytes: no overflow in u64.
    let table = u64::from(eh.e_phnum) * PHDR_SIZE as u64;
    in_file(eh.e_phoff, table, image.len())
        .map_err(|why| format!("program header table ({} entries): {why}", eh.e_phnum))?;
    Ok(eh)
}

/// Program header `i`; `check_header` has checked the table is in the file.
fn phdr(image: &[u8], eh: &Elf64_Ehdr, i: usize) -> Elf64_Phdr {
    let at = eh.e_phoff as usize + i * PHDR_SIZE;
    read_struct(&image[at..at + PHDR_SIZE])
}

/// Checks everything linux-loader will read or write for this image.
/// `mem_low_end` is the end of RAM below the MMIO hole.
fn check(image: &[u8], mem_low_end: u64) -> std::result::Result<Checked, String> {
    let eh = check_header(image)?;
    let (mut start, mut end, mut loads) = (u64::MAX, 0u64, 0usize);
    for i in 0..usize::from(eh.e_phnum) {
        let ph = phdr(image, &eh, i);
        match ph.p_type {
            PT_LOAD => {
                if ph.p_filesz > ph.p_memsz {
                    return Err(format!(
                        "segment {i}: file size {:#x} is larger than its memory size {:#x}",
                        ph.p_filesz, ph.p_memsz
                    ));
                }
                in_file(ph.p_offset, ph.p_filesz, image.len())
                    .map_err(|why| format!("segment {i}: {why}"))?;
                let seg_end = ph
                    .p_paddr
                    .checked_add(ph.p_memsz)
                    .ok_or_else(|| format!("segment {i}: size overflows"))?;
                if ph.p_paddr < KERNEL_LOAD.0 || seg_end > mem_low_end {
                    return Err(format!(
                        "segment {i} at physical {:#x}..{seg_end:#x} is outside [{:#x}, {mem_low_end:#x})",
                        ph.p_paddr, KERNEL_LOAD.0
                    ));
                }
                if ph.p_memsz > 0 {
                    loads += 1;
                    start = start.min(ph.p_paddr);
                    end = end.max(seg_end);
                }
            }
            // linux-loader walks the notes for the PVH entry.
            PT_NOTE => in_file(ph.p_offset, ph.p_filesz, image.len())
                .map_err(|why| format!("note segment {i}: {why}"))?,
            _ => {}
        }
    }
    if loads == 0 {
        return Err("no loadable segments".into());
    }
    let entry = eh.e_entry;
    let in_window = entry >= KERNEL_BASE && entry - KERNEL_BASE < KERNEL_WINDOW;
    if !in_window && !(KERNEL_LOAD.0..mem_low_end).contains(&entry) {
        return Err(format!("entry point {entry:#x} is not mapped at boot"));
    }
    Ok(Checked { entry, start, end })
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
    let checked = check(image, mem_size.min(MMIO_HOLE_START)).map_err(invalid)?;
    let res = Elf::load(mem, None, &mut Cursor::new(image), Some(KERNEL_LOAD))
        .map_err(|e| invalid(e.to_string()))?;
    let pvh_entry = match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => Some(a.0),
        _ => None,
    };
    if let Some(pvh) = pvh_entry
        && !(checked.start..checked.end).contains(&pvh)
    {
        return Err(invalid(format!(
            "PVH entry {pvh:#x} is outside the loaded image {:#x}..{:#x}",
            checked.start, checked.end
        )));
    }
    Ok(LoadedKernel {
        entry: checked.entry,
        pvh_entry,
        // Not res.kernel_end: linux-loader skips PT_LOAD segments with no
        // file bytes, so its end misses a .bss that has a segment of its own.
        end: GuestAddress(checked.end),
    })
}

/// Fuzz entry point (vmm/fuzz target `load_kernel` and the corpus replay
/// test): `data` is a kernel file, loaded as `vmm run --kernel` would into
/// a 16 MiB guest, then a program module is placed after it as boot does.
/// On success it checks what the rest of boot relies on.
#[doc(hidden)]
pub fn fuzz_load(data: &[u8]) -> Result<LoadedKernel> {
    const MEM: u64 = 16 << 20;
    thread_local! {
        // One guest per thread: loading only writes, never reads, guest
        // memory, so what an earlier input left there changes nothing.
        static GUEST: Option<GuestMemoryMmap> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).ok();
    }
    GUEST.with(|g| {
        let Some(mem) = g else {
            return Err(VmmError::GuestMemory("fuzz guest: mmap failed".into()));
        };
        let k = load(mem, data, "<fuzz input>", MEM)?;
        assert!(k.end.0 > KERNEL_LOAD.0 && k.end.0 <= MEM);
        if let Some(pvh) = k.pvh_entry {
            assert!(pvh >= KERNEL_LOAD.0 && pvh < k.end.0);
        }
        // The modules go after the image, never over it; a kernel that
        // leaves no room gets an error.
        let program: (&str, &[u8]) = ("init", &[0xf4; 100]);
        if let Ok(m) = super::start_info::place_modules(mem, k.end, &[program], MEM) {
            assert!(m[0].addr >= k.end && m[0].addr.0 + m[0].size <= MEM);
        }
        Ok(k)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::elf::{ELFCLASS32, ELFDATA2MSB};

    const MIB: u64 = 1 << 20;

    /// A one-segment kernel: `filesz` bytes of file at 0x100 loaded at
    /// `paddr`, `memsz` in memory.
    fn elf(paddr: u64, memsz: u64, entry: u64) -> Vec<u8> {
        elf_with(paddr, 0x10, memsz, entry)
    }

    fn elf_with(paddr: u64, filesz: u64, memsz: u64, entry: u64) -> Vec<u8> {
        let mut eh = Elf64_Ehdr::default();
        eh.e_ident[..4].copy_from_slice(ELFMAG);
        eh.e_ident[EI_CLASS] = ELFCLASS64;
        eh.e_ident[EI_DATA] = ELFDATA2LSB;
        eh.e_machine = EM_X86_64;
        eh.e_entry = entry;
        eh.e_phoff = EHDR_SIZE as u64;
        eh.e_phentsize = PHDR_SIZE as u16;
        eh.e_phnum = 1;
        let ph = Elf64_Phdr {
            p_type: PT_LOAD,
            p_offset: 0x100,
            p_paddr: paddr,
            p_filesz: filesz,
            p_memsz: memsz,
            ..Default::default()
        };
        let mut d = vec![0u8; 0x200];
        d[..EHDR_SIZE].copy_from_slice(eh.as_slice());
        d[EHDR_SIZE..EHDR_SIZE + PHDR_SIZE].copy_from_slice(ph.as_slice());
        d
    }

    /// Overwrites program header 0 of `d` with `f` applied to it.
    fn edit_phdr(d: &mut [u8], f: impl FnOnce(&mut Elf64_Phdr)) {
        let mut ph: Elf64_Phdr = read_struct(&d[EHDR_SIZE..EHDR_SIZE + PHDR_SIZE]);
        f(&mut ph);
        d[EHDR_SIZE..EHDR_SIZE + PHDR_SIZE].copy_from_slice(ph.as_slice());
    }

    fn edit_ehdr(d: &mut [u8], f: impl FnOnce(&mut Elf64_Ehdr)) {
        let mut eh: Elf64_Ehdr = read_struct(&d[..EHDR_SIZE]);
        f(&mut eh);
        d[..EHDR_SIZE].copy_from_slice(eh.as_slice());
    }

    fn why(d: &[u8]) -> String {
        match check(d, 256 * MIB) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_a_well_placed_kernel() {
        let c = check(&elf(MIB, 0x1000, KERNEL_BASE + MIB), 256 * MIB).unwrap();
        assert_eq!((c.start, c.end), (MIB, MIB + 0x1000));
        // A physical (identity-mapped) entry is fine too.
        assert!(check(&elf(MIB, 0x1000, MIB), 256 * MIB).is_ok());
    }

    #[test]
    fn refuses_what_is_not_an_x86_64_elf() {
        assert_eq!(why(b"MZ"), "not an ELF file");
        assert!(why(b"\x7fELF\x02\x01").starts_with("truncated ELF header (6 of 64"));
        let mut e = elf(MIB, 0x1000, KERNEL_BASE);
        edit_ehdr(&mut e, |h| h.e_ident[EI_CLASS] = ELFCLASS32);
        assert_eq!(why(&e), "not a 64-bit ELF file");
        let mut e = elf(MIB, 0x1000, KERNEL_BASE);
        edit_ehdr(&mut e, |h| h.e_ident[EI_DATA] = ELFDATA2MSB);
        assert_eq!(why(&e), "not a little-endian ELF file");
        let mut e = elf(MIB, 0x1000, KERNEL_BASE);
        edit_ehdr(&mut e, |h| h.e_machine = 183);
        assert_eq!(why(&e), "machine type 183 is not x86-64");
    }

    #[test]
    fn refuses_program_headers_outside_the_file() {
        let mut e = elf(MIB, 0x1000, KERNEL_BASE);
        edit_ehdr(&mut e, |h| h.e_phentsize = 32);
        assert!(why(&e).starts_with("unexpected program header size 32"));
        let mut e = elf(MIB, 0x1000, KERNEL_BASE);
        edit_ehdr(&mut e, |h| h.e_phnum = 0);
        assert_eq!(why(&e), "no program headers");
        let mut e = elf(MIB, 0x1000, KERNEL_BASE);
        edit_ehdr(&mut e, |h| h.e_phoff = 8);
        assert!(why(&e).contains("overlap the ELF header"));
        let mut e = elf(MIB, 0x1000, KERNEL_BASE);
        edit_ehdr(&mut e, |h| h.e_phnum = 0xffff);
        assert!(why(&e).starts_with("program header table (65535 entries): bytes 0x40.."));
        let mut e = elf(MIB, 0x1000, KERNEL_BASE);
        edit_ehdr(&mut e, |h| h.e_phoff = u64::MAX - 8);
        assert!(why(&e).contains("overflows"));
    }

    #[test]
    fn refuses_segments_outside_the_file() {
        let mut e = elf(MIB, 0x1000, KERNEL_BASE);
        edit_phdr(&mut e, |p| p.p_offset = 0x1f8);
        assert!(why(&e).starts_with("segment 0: bytes 0x1f8..0x208 run past the end"));
        let mut e = elf(MIB, 0x1000, KERNEL_BASE);
        edit_phdr(&mut e, |p| p.p_offset = u64::MAX);
        assert!(why(&e).contains("overflows"));
        let mut e = elf_with(MIB, 0x2000, 0x1000, KERNEL_BASE);
        assert!(why(&e).contains("file size 0x2000 is larger than its memory size 0x1000"));
        // A note segment linux-loader would read past the end.
        edit_phdr(&mut e, |p| {
            p.p_type = PT_NOTE;
            p.p_filesz = 0x1000;
        });
        assert!(why(&e).starts_with("note segment 0: bytes 0x100..0x1100"));
    }

    #[test]
    fn refuses_segments_outside_the_kernel_window() {
        // Over the boot structures in low memory.
        assert!(why(&elf(0x1000, 0x1000, KERNEL_BASE)).contains("is outside [0x100000,"));
        assert!(why(&elf(MIB, u64::MAX, KERNEL_BASE)).contains("size overflows"));
        // Past the end of RAM.
        assert!(why(&elf(MIB, 1 << 30, KERNEL_BASE)).contains("is outside"));
        assert!(why(&elf(u64::MAX - 0x10, 0x10, KERNEL_BASE)).contains("is outside"));
        let mut e = elf(MIB, 0x1000, KERNEL_BASE);
        edit_phdr(&mut e, |p| p.p_memsz = 0);
        edit_phdr(&mut e, |p| p.p_filesz = 0);
        assert_eq!(why(&e), "no loadable segments");
    }

    #[test]
    fn refuses_an_entry_the_boot_page_tables_do_not_map() {
        assert!(why(&elf(MIB, 0x1000, 0xffff_8000_0000_0000)).contains("not mapped at boot"));
        assert!(why(&elf(MIB, 0x1000, 0x1000)).contains("not mapped at boot"));
        assert!(why(&elf(MIB, 0x1000, KERNEL_BASE + (1 << 30))).contains("not mapped at boot"));
    }

    #[test]
    fn loads_the_built_in_kernel_with_its_pvh_entry() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (64 * MIB) as usize)]).unwrap();
        let k = load(&mem, crate_kernel(), "built-in", 64 * MIB).unwrap();
        assert!(k.entry >= KERNEL_BASE);
        let pvh = k.pvh_entry.expect("the built-in kernel has a PVH note");
        assert!(pvh >= KERNEL_LOAD.0 && pvh < k.end.0);
    }

    /// The guest kernel build.rs made (the binary embeds the same file).
    fn crate_kernel() -> &'static [u8] {
        include_bytes!(env!("DUALITY_KERNEL_ELF"))
    }

    #[test]
    fn a_bss_only_segment_counts_in_the_end() {
        // Segment 1 has no file bytes: linux-loader skips it, we must not.
        let mut e = elf(MIB, 0x1000, KERNEL_BASE + MIB);
        edit_ehdr(&mut e, |h| h.e_phnum = 2);
        let bss = Elf64_Phdr {
            p_type: PT_LOAD,
            p_paddr: 2 * MIB,
            p_memsz: 0x3000,
            ..Default::default()
        };
        e[EHDR_SIZE + PHDR_SIZE..EHDR_SIZE + 2 * PHDR_SIZE].copy_from_slice(bss.as_slice());
        let k = fuzz_load(&e).unwrap();
        assert_eq!(k.end, GuestAddress(2 * MIB + 0x3000));
        assert_eq!(k.pvh_entry, None);
    }

    /// Named seeds of the fuzz target `load_kernel` (vmm/fuzz) and what
    /// each must do: load (None) or be refused with this message.
    const SEEDS: &[(&str, Option<&str>)] = &[
        ("pvh_kernel", None),
        ("direct_kernel", None),
        ("physical_entry", None),
        ("bss_segment", None),
        ("other_notes_first", None),
        // Ends at the end of the guest: loads; no room for the modules.
        ("fills_memory", None),
        (
            "pvh_entry_outside",
            Some("PVH entry 0x5000 is outside the loaded image"),
        ),
        ("pvh_note_short_desc", Some("Invalid PVH note header")),
        (
            "note_past_end",
            Some("note segment 1: bytes 0x140..0x10140 run past"),
        ),
        (
            "segment_past_end",
            Some("segment 0: bytes 0x100..0x1100 run past"),
        ),
        (
            "filesz_over_memsz",
            Some("file size 0x40 is larger than its memory size"),
        ),
        (
            "over_boot_structures",
            Some("physical 0x6000..0x7000 is outside"),
        ),
        (
            "past_guest_memory",
            Some("is outside [0x100000, 0x1000000)"),
        ),
        ("size_overflow", Some("segment 0: size overflows")),
        (
            "entry_unmapped",
            Some("entry point 0xffff800000000000 is not mapped"),
        ),
        ("not_elf", Some("not an ELF file")),
        (
            "truncated_header",
            Some("truncated ELF header (40 of 64 bytes)"),
        ),
        ("elf32", Some("not a 64-bit ELF file")),
        ("big_endian", Some("not a little-endian ELF file")),
        ("wrong_machine", Some("machine type 183 is not x86-64")),
        (
            "phdrs_past_end",
            Some("program header table (65535 entries)"),
        ),
        ("phoff_overflow", Some("overflows")),
        ("no_load_segments", Some("no loadable segments")),
    ];

    /// Every file of the committed corpus (seeds, fuzzer finds, crash
    /// inputs) through the fuzz target's function, so `cargo test` replays
    /// them on stable without cargo-fuzz.
    #[test]
    fn fuzz_corpus_loads_or_is_refused_as_named() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/load_kernel");
        let mut seen = Vec::new();
        for e in std::fs::read_dir(dir).expect("corpus directory").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = fuzz_load(&std::fs::read(e.path()).expect("read corpus file"));
            match SEEDS.iter().find(|(n, _)| *n == name) {
                Some((_, None)) => assert!(r.is_ok(), "{name} must load: {r:?}"),
                Some((_, Some(why))) => {
                    let e = r.expect_err(&name).to_string();
                    assert!(e.contains(why), "{name}: expected {why:?} in {e:?}");
                }
                None => assert!(
                    (name.len() == 40 && name.bytes().all(|b| b.is_ascii_hexdigit()))
                        || name.starts_with("crash-"),
                    "{name}: a named seed must be listed in SEEDS"
                ),
            }
            seen.push(name);
        }
        for (name, _) in SEEDS {
            assert!(seen.iter().any(|s| s == name), "seed {name} is missing");
        }
    }
}
