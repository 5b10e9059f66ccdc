//! The guest images built into the `vmm` binary by build.rs: the kernel and
//! the user programs the kernel can start by name.

pub const KERNEL: &[u8] = include_bytes!(env!("DUALITY_KERNEL_ELF"));

/// (name, ELF image) of every built-in user program.
pub const PROGRAMS: &[(&str, &[u8])] = &[
    ("init", include_bytes!(env!("DUALITY_USER_INIT"))),
    ("spawn", include_bytes!(env!("DUALITY_USER_SPAWN"))),
    ("fault", include_bytes!(env!("DUALITY_USER_FAULT"))),
    ("priv", include_bytes!(env!("DUALITY_USER_PRIV"))),
    ("spin", include_bytes!(env!("DUALITY_USER_SPIN"))),
    ("objsum", include_bytes!(env!("DUALITY_USER_OBJSUM"))),
    ("objfill", include_bytes!(env!("DUALITY_USER_OBJFILL"))),
    (
        "nameserver",
        include_bytes!(env!("DUALITY_USER_NAMESERVER")),
    ),
    ("ipcbench", include_bytes!(env!("DUALITY_USER_IPCBENCH"))),
];

pub fn program_names() -> String {
    PROGRAMS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}
