//! The guest images built into the `vmm` binary by build.rs: the kernel and
//! the user programs the kernel can start by name.

pub const KERNEL: &[u8] = include_bytes!(env!("DUALITY_KERNEL_ELF"));

/// (name, ELF image) of every built-in user program.
/// (name, ELF image) of every built-in user program: guest-kernel's
/// `[[bin]]` targets, tabled by build.rs.
pub const PROGRAMS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/programs.rs"));

pub fn program_names() -> String {
    PROGRAMS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}
