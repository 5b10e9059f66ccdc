//! Device drivers' machine halves; the machine-independent halves are in
//! the library (`guest_kernel::dev`), host-tested.

pub mod virtio_pager;
pub mod virtio_selftest;
