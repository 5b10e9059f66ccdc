//! virtio-pager: Mach memory objects as a paravirtual device.
//! docs/virtio-pager.md is the specification.

pub mod control;
pub mod device;
pub mod event_handler;
pub mod wire;
pub mod worker;

pub use device::{DEFAULT_WORKERS, PagerDevice, PagerDeviceError, PagerObject, PagerStats};
pub use wire::{ObjectId, VIRTIO_ID_PAGER};

#[cfg(test)]
mod tests;
