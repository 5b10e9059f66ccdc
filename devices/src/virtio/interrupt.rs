//! The interrupt line of one virtio-mmio device: the InterruptStatus bits the
//! driver reads/acks plus the EventFd the VMM registers as a KVM irqfd.

use super::irq;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Shared between the transport (vCPU thread: status read/ack) and the
/// device (event loop: raises interrupts), hence atomics.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    pub fn new() -> io::Result<Self> {
        Ok(Interrupt {
            status: AtomicU32::new(0),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The fd to hand to KVM_IRQFD.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Raise "used buffer" (bit 0) and kick the irqfd.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        self.raise(irq::USED_BUFFER)
    }

    /// Raise "configuration change" (bit 1); also used for NEEDS_RESET.
    pub fn signal_config_change(&self) -> io::Result<()> {
        self.raise(irq::CONFIG_CHANGE)
    }

    fn raise(&self, bit: u32) -> io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// InterruptStatus register value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK register write: clear the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Device reset clears any pending interrupt.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}
