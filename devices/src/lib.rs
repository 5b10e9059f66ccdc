//! Duality's devices: the virtio-mmio transport, the memory-object device
//! (virtio-pager) and the platform's legacy devices (console, exit port).

pub mod legacy;
pub mod pager;
pub mod testing;
pub mod virtio;
