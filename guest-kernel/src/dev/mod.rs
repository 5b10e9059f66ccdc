//! Device drivers, machine-independent halves. Each driver reaches the
//! hardware only through the small traits of its bus (virtio: `Regs` for
//! the registers, `Dma` for guest-physical memory), so `cargo test` runs it
//! against the VMM's real device models on the host.

pub mod virtio;
