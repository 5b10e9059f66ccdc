//! The machine layer (x86-64): entry assembly and the trap frame, the
//! descriptor tables, interrupt controllers, the kernel's page tables and
//! direct map, copyin/copyout, and the few privileged instructions. Nothing
//! above this layer touches assembly statics or privileged state directly.

pub mod copy;
pub mod cpu;
pub mod crashtest;
pub mod entry;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod kalloc;
pub mod kstack;
pub mod lapic;
pub mod mem;
pub mod mm;
pub mod protect;
pub mod trap;
