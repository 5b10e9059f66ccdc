//! Putting a guest in memory and a vCPU at its entry: the layout of low
//! memory, the kernel ELF, the PVH start_info with its memory map and
//! modules, boot page tables, and the vCPU's 64-bit state.

pub mod cpu;
pub mod kernel_file;
pub mod layout;
pub mod loader;
pub mod pagetables;
pub mod start_info;
