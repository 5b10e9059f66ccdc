//! virtio-pager: Mach memory objects as a paravirtual device.
//! docs/virtio-pager.md is the specification.
//!
//! One job per file: device.rs (state), objects.rs (object lifecycle),
//! request.rs (request queue), events.rs (event queue), virtio_device.rs
//! (the VirtioDevice trait), event_handler.rs (epoll), wire.rs (formats and
//! parsing), worker.rs (backend calls), control.rs (pager → kernel calls),
//! metrics.rs (counters), throttle.rs (per-object rate limits).

pub mod control;
pub mod device;
pub mod event_handler;
mod events;
pub mod metrics;
mod objects;
mod request;
mod throttle;
mod virtio_device;
pub mod wire;
pub mod worker;

pub use device::{DEFAULT_WORKERS, PagerDevice, PagerDeviceError, PagerObject};
pub use metrics::{ObjectEvents, ObjectThrottle, PagerStats};
pub use wire::{ObjectId, VIRTIO_ID_PAGER};

#[cfg(test)]
mod tests;
