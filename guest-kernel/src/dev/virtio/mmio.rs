//! The virtio-mmio (version 2) transport, driver side: probing, the status
//! and feature handshake (virtio 1.2 §3.1.1), queue setup, notification.

use super::Regs;
use crate::addr::PhysAddr;

pub const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"

pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

pub const F_INDIRECT_DESC: u32 = 28;
pub const F_EVENT_IDX: u32 = 29;
pub const F_VERSION_1: u32 = 32;

/// InterruptStatus bits.
pub const IRQ_USED_BUFFER: u32 = 1;
pub const IRQ_CONFIG_CHANGE: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// No virtio-mmio device answers at this address.
    NotVirtio,
    /// A legacy (version 1) or unknown transport version.
    Version(u32),
    /// A device of another type.
    WrongDevice(u32),
    /// The device lacks a feature the driver cannot do without.
    MissingFeature(u32),
    /// The device refused the accepted features (FEATURES_OK did not stick).
    FeaturesRefused,
    /// The queue does not exist, is already live, or is too small.
    Queue(u16),
    /// Status did not read back 0 after a reset: requests still in flight.
    ResetPending,
}

pub struct Transport<R: Regs> {
    regs: R,
}

/// Guest-physical addresses of one split virtqueue's three parts.
#[derive(Clone, Copy, Debug)]
pub struct QueueAddrs {
    pub desc: PhysAddr,
    pub avail: PhysAddr,
    pub used: PhysAddr,
}

impl<R: Regs> Transport<R> {
    /// Checks magic, version 2 and the device id.
    pub fn probe(regs: R, device_id: u32) -> Result<Self, TransportError> {
        if regs.read32(reg::MAGIC) != MAGIC_VALUE {
            return Err(TransportError::NotVirtio);
        }
        match regs.read32(reg::VERSION) {
            2 => {}
            v => return Err(TransportError::Version(v)),
        }
        match regs.read32(reg::DEVICE_ID) {
            id if id == device_id => Ok(Transport { regs }),
            id => Err(TransportError::WrongDevice(id)),
        }
    }

    /// Writes 0 to Status and polls up to `polls` times for it to read 0:
    /// until then the device may still be writing into frames of requests
    /// from before (virtio 1.2 §4.2.3.1).
    pub fn reset(&self, polls: u32) -> Result<(), TransportError> {
        self.regs.write32(reg::STATUS, 0);
        self.reset_done(polls)
    }

    /// Writes 0 to Status without waiting (see `reset_done`).
    pub fn start_reset(&self) {
        self.regs.write32(reg::STATUS, 0);
    }

    /// Polls a reset already started.
    pub fn reset_done(&self, polls: u32) -> Result<(), TransportError> {
        for _ in 0..polls.max(1) {
            if self.regs.read32(reg::STATUS) == 0 {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        Err(TransportError::ResetPending)
    }

    /// ACKNOWLEDGE, DRIVER, then accept `wanted & offered` (which must hold
    /// `required`) and FEATURES_OK. Returns the accepted set.
    pub fn negotiate(&self, wanted: u64, required: u64) -> Result<u64, TransportError> {
        self.regs.write32(reg::STATUS, status::ACKNOWLEDGE);
        self.regs
            .write32(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        let mut offered = 0u64;
        for sel in 0..2u32 {
            self.regs.write32(reg::DEVICE_FEATURES_SEL, sel);
            offered |= u64::from(self.regs.read32(reg::DEVICE_FEATURES)) << (32 * sel);
        }
        if let Some(bit) = (0..64).find(|b| required & (1 << b) != 0 && offered & (1 << b) == 0) {
            self.fail();
            return Err(TransportError::MissingFeature(bit));
        }
        let accepted = wanted & offered;
        for sel in 0..2u32 {
            self.regs.write32(reg::DRIVER_FEATURES_SEL, sel);
            self.regs
                .write32(reg::DRIVER_FEATURES, (accepted >> (32 * sel)) as u32);
        }
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.regs.write32(reg::STATUS, s);
        if self.regs.read32(reg::STATUS) & status::FEATURES_OK == 0 {
            self.fail();
            return Err(TransportError::FeaturesRefused);
        }
        Ok(accepted)
    }

    /// Sets up queue `index` with `size` entries at `addrs` and marks it ready.
    pub fn setup_queue(
        &self,
        index: u16,
        size: u16,
        addrs: QueueAddrs,
    ) -> Result<(), TransportError> {
        self.regs.write32(reg::QUEUE_SEL, u32::from(index));
        if self.regs.read32(reg::QUEUE_READY) != 0 {
            return Err(TransportError::Queue(index));
        }
        let max = self.regs.read32(reg::QUEUE_NUM_MAX);
        if max == 0 || u32::from(size) > max {
            return Err(TransportError::Queue(index));
        }
        self.regs.write32(reg::QUEUE_NUM, u32::from(size));
        for (lo, hi, pa) in [
            (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, addrs.desc),
            (reg::QUEUE_DRIVER_LOW, reg::QUEUE_DRIVER_HIGH, addrs.avail),
            (reg::QUEUE_DEVICE_LOW, reg::QUEUE_DEVICE_HIGH, addrs.used),
        ] {
            self.regs.write32(lo, pa.0 as u32);
            self.regs.write32(hi, (pa.0 >> 32) as u32);
        }
        self.regs.write32(reg::QUEUE_READY, 1);
        Ok(())
    }

    pub fn driver_ok(&self) {
        let s = self.regs.read32(reg::STATUS);
        self.regs.write32(reg::STATUS, s | status::DRIVER_OK);
    }

    pub fn fail(&self) {
        let s = self.regs.read32(reg::STATUS);
        self.regs.write32(reg::STATUS, s | status::FAILED);
    }

    pub fn status(&self) -> u32 {
        self.regs.read32(reg::STATUS)
    }

    pub fn notify(&self, queue: u16) {
        self.regs.write32(reg::QUEUE_NOTIFY, u32::from(queue));
    }

    /// Reads and acknowledges InterruptStatus.
    pub fn take_interrupt_status(&self) -> u32 {
        let s = self.regs.read32(reg::INTERRUPT_STATUS);
        if s != 0 {
            self.regs.write32(reg::INTERRUPT_ACK, s);
        }
        s
    }

    pub fn config32(&self, offset: u64) -> u32 {
        self.regs.read32(reg::CONFIG + offset)
    }

    pub fn config64(&self, offset: u64) -> u64 {
        u64::from(self.config32(offset)) | (u64::from(self.config32(offset + 4)) << 32)
    }
}
