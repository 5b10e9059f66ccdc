//! Duality's Mach guest kernel: the hardware-free part.
//!
//! Everything here is pure logic that `cargo test` runs on the host (the way
//! Redox tests its paging against an emulated MMU): typed addresses, the PVH
//! boot information, the command line, ELF images, the physical frame
//! allocator, the page-table builder, the scheduler's run queue and integer
//! formatting. The freestanding kernel (src/kernel/) and the user programs
//! (src/user/) are thin layers over it.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod abi;
pub mod addr;
pub mod arch;
pub mod bench_order;
pub mod bootinfo;
pub mod cmdline;
pub mod dev;
pub mod elf;
pub mod fsimage;
pub mod ipc;
pub mod kern;
pub mod numfmt;
pub mod objfill_pattern;
pub mod sha256;
pub mod vm;
