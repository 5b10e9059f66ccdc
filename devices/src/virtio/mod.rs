//! Generic virtio plumbing: the device trait, the interrupt line shared with
//! the transport, descriptor-chain validation and the virtio-mmio transport.
//! Nothing here knows about any particular device type.

pub mod chain;
pub mod device;
pub mod interrupt;
pub mod mmio;

pub use chain::{ChainError, Segment, collect_chain, collect_chain_into};
pub use device::{ActivateError, ActiveQueue, VirtioDevice};
pub use interrupt::Interrupt;
pub use mmio::MmioTransport;

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Transport-level feature bits the transport and devices care about.
pub mod features {
    /// Descriptors may point at indirect tables (handled by virtio-queue).
    pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
    /// used_event / avail_event notification suppression.
    pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
    /// Modern (non-legacy) device; mandatory for virtio-mmio version 2.
    pub const VIRTIO_F_VERSION_1: u32 = 32;
}

/// Interrupt status bits (InterruptStatus register).
pub mod irq {
    pub const USED_BUFFER: u32 = 1;
    pub const CONFIG_CHANGE: u32 = 2;
}

#[cfg(test)]
mod tests;
