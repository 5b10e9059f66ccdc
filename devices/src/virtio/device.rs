//! The contract between a virtio device model and its transport.

use super::Interrupt;
use std::sync::Arc;
use thiserror::Error;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// A queue as handed to the device at DRIVER_OK: the negotiated ring plus the
/// EventFd the guest's QueueNotify writes land on (via ioeventfd, or via the
/// transport's MMIO write path when no ioeventfd is registered).
#[derive(Debug)]
pub struct ActiveQueue {
    pub queue: Queue,
    pub notify: EventFd,
}

#[derive(Debug, Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("queue {0} is not ready or not valid in guest memory")]
    BadQueue(usize),
    #[error("device is already active")]
    AlreadyActive,
    #[error("could not set up device resources: {0}")]
    Io(#[from] std::io::Error),
}

/// A virtio device model, independent of transport (MMIO today, PCI never
/// excluded). Methods are called with the device locked by the transport on a
/// vCPU thread, so none of them may block on backend work.
pub trait VirtioDevice: Send {
    /// Virtio device ID (DeviceID register).
    fn device_type(&self) -> u32;
    /// VendorID register.
    fn vendor_id(&self) -> u32 {
        0
    }
    /// All features the device offers (bits 0..64).
    fn avail_features(&self) -> u64;
    /// One entry per virtqueue: its QueueNumMax.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device configuration space read at `offset` (relative to 0x100).
    /// Out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Device configuration space write; read-only spaces ignore it.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// DRIVER_OK: start serving. `acked_features` is what the driver accepted.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    fn is_activated(&self) -> bool;
    /// Status 0 written: stop using guest memory and forget the queues. Must
    /// not block; if backend work is still in flight return and report it
    /// through `reset_pending` (the driver polls Status until it reads 0).
    fn reset(&mut self);
    /// True while a reset waits for in-flight work to drain.
    fn reset_pending(&self) -> bool {
        false
    }
    /// The device found a broken queue and wants DEVICE_NEEDS_RESET shown.
    fn needs_reset(&self) -> bool {
        false
    }
}
