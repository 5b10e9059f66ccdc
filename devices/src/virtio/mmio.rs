//! virtio-mmio transport, version 2 (virtio 1.2 §4.2.2).
//!
//! The VMM forwards MMIO exits in the device window to `read`/`write`,
//! registers `queue_evts()[i]` as ioeventfds on `base + 0x50` with
//! datamatch `i`, and registers `interrupt_evt()` as an irqfd. This file has
//! no KVM dependency so any VMM (or a test) can drive it.

use super::device::{ActiveQueue, VirtioDevice};
use super::{Interrupt, features, status};
use pager_backends::poison::lock;
use std::io;
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
pub const MMIO_VERSION: u32 = 2;
/// Size of the register window the VMM must map for one device.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of QueueNotify; the ioeventfd address is `base + QUEUE_NOTIFY`.
pub const QUEUE_NOTIFY: u64 = 0x050;
/// Device-specific configuration space starts here.
pub const CONFIG_SPACE: u64 = 0x100;

mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    status: u32,
    /// Set when activation failed; shown as DEVICE_NEEDS_RESET.
    failed_activation: bool,
    /// A reset was requested while the device still had work in flight.
    resetting: bool,
}

impl MmioTransport {
    pub fn new(mem: GuestMemoryMmap, device: Arc<Mutex<dyn VirtioDevice>>) -> io::Result<Self> {
        let max_sizes: Vec<u16> = lock(&device).queue_max_sizes().to_vec();
        let mut queues = Vec::with_capacity(max_sizes.len());
        let mut queue_evts = Vec::with_capacity(max_sizes.len());
        for max in max_sizes {
            queues.push(new_queue(max)?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new()?),
            queues,
            queue_evts,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            status: 0,
            failed_activation: false,
            resetting: false,
        })
    }

    /// Register `queue_evts()[i]` with KVM_IOEVENTFD at `base + QUEUE_NOTIFY`,
    /// 4 bytes, datamatch `i`.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Register with KVM_IRQFD on the device's GSI.
    pub fn interrupt_evt(&self) -> &EventFd {
        self.interrupt.eventfd()
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// What the driver accepted so far.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// MMIO read exit at `offset` inside the window. Bad accesses read as 0.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            data.fill(0);
            if offset < MMIO_WINDOW_SIZE {
                lock(&self.device).read_config(offset - CONFIG_SPACE, data);
            }
            return;
        }
        data.fill(0);
        // Registers are 32-bit, naturally aligned (spec §4.2.2.2).
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::warn!(
                offset,
                len = data.len(),
                "virtio-mmio: bad register read width"
            );
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// MMIO write exit at `offset` inside the window. Bad accesses are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if offset < MMIO_WINDOW_SIZE {
                // Config writes are only meaningful once the driver is in.
                if self.status & status::DRIVER != 0 {
                    lock(&self.device).write_config(offset - CONFIG_SPACE, data);
                }
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!(
                offset,
                len = data.len(),
                "virtio-mmio: bad register write width"
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            tracing::warn!(offset, "virtio-mmio: unaligned register write");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => lock(&self.device).device_type(),
            reg::VENDOR_ID => lock(&self.device).vendor_id(),
            reg::DEVICE_FEATURES => {
                let f = self.device_features();
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.read_status(),
            // No shared memory regions: length reads as all ones (§4.2.2).
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            // The config space of our devices never changes under the driver.
            reg::CONFIG_GENERATION => 0,
            _ => {
                tracing::warn!(
                    offset,
                    "virtio-mmio: read of write-only or unknown register"
                );
                0
            }
        }
    }

    fn read_status(&mut self) -> u32 {
        if self.resetting {
            if lock(&self.device).reset_pending() {
                // Driver keeps polling until 0 (§4.2.3.1 / §2.4.1).
                return self.status;
            }
            self.finish_reset();
        }
        let needs_reset = self.failed_activation || lock(&self.device).needs_reset();
        if needs_reset {
            self.status | status::DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => self.write_driver_features(v),
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NUM => self.with_queue_config(|q| {
                // try_set_size refuses 0, > max and non-powers of two.
                let size = u16::try_from(v).unwrap_or(0);
                if q.try_set_size(size).is_err() {
                    tracing::warn!(v, "virtio-mmio: bad queue size");
                }
            }),
            reg::QUEUE_READY => self.with_queue_config(|q| q.set_ready(v == 1)),
            reg::QUEUE_DESC_LOW => {
                self.with_queue_config(|q| q.set_desc_table_address(Some(v), None))
            }
            reg::QUEUE_DESC_HIGH => {
                self.with_queue_config(|q| q.set_desc_table_address(None, Some(v)))
            }
            reg::QUEUE_DRIVER_LOW => {
                self.with_queue_config(|q| q.set_avail_ring_address(Some(v), None))
            }
            reg::QUEUE_DRIVER_HIGH => {
                self.with_queue_config(|q| q.set_avail_ring_address(None, Some(v)))
            }
            reg::QUEUE_DEVICE_LOW => {
                self.with_queue_config(|q| q.set_used_ring_address(Some(v), None))
            }
            reg::QUEUE_DEVICE_HIGH => {
                self.with_queue_config(|q| q.set_used_ring_address(None, Some(v)))
            }
            QUEUE_NOTIFY => self.notify(v),
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            reg::SHM_SEL => {}
            _ => tracing::warn!(
                offset,
                v,
                "virtio-mmio: write to read-only or unknown register"
            ),
        }
    }

    fn device_features(&self) -> u64 {
        // VERSION_1 is a transport property of virtio-mmio v2.
        lock(&self.device).avail_features() | (1u64 << features::VIRTIO_F_VERSION_1)
    }

    fn write_driver_features(&mut self, v: u32) {
        // Features may only be written between DRIVER and FEATURES_OK.
        if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
            tracing::warn!(v, "virtio-mmio: driver features written in wrong state");
            return;
        }
        match self.driver_features_sel {
            0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
            1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => tracing::warn!(
                sel = self.driver_features_sel,
                "virtio-mmio: bad features select"
            ),
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    /// Queue registers are only writable after FEATURES_OK and before
    /// DRIVER_OK (§3.1.1); anything else is a driver bug we ignore.
    fn with_queue_config(&mut self, f: impl FnOnce(&mut Queue)) {
        if self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            != status::FEATURES_OK
        {
            tracing::warn!(
                status = self.status,
                "virtio-mmio: queue config in wrong state"
            );
            return;
        }
        match self.queues.get_mut(self.queue_sel as usize) {
            Some(q) => f(q),
            None => tracing::warn!(sel = self.queue_sel, "virtio-mmio: no such queue"),
        }
    }

    /// The non-ioeventfd path: forward the kick to the same EventFd.
    fn notify(&mut self, index: u32) {
        match self.queue_evts.get(index as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    tracing::warn!(%e, "virtio-mmio: queue notify failed");
                }
            }
            None => tracing::warn!(index, "virtio-mmio: notify of unknown queue"),
        }
    }

    fn write_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            self.begin_reset();
            return;
        }
        if self.resetting {
            tracing::warn!(v, "virtio-mmio: status written before reset finished");
            return;
        }
        if v & FAILED != 0 {
            // The driver gave up; keep it visible, do nothing else.
            self.status |= FAILED;
            return;
        }
        // The driver may only add bits, in the order of §3.1.1.
        let old = self.status;
        if v & old != old || v & !(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK) != 0 {
            tracing::warn!(old, v, "virtio-mmio: illegal status transition");
            return;
        }
        let added = v & !old;
        let ok = match added {
            0 => true,
            ACKNOWLEDGE => old == 0,
            DRIVER => old == ACKNOWLEDGE,
            FEATURES_OK => old == ACKNOWLEDGE | DRIVER && self.features_acceptable(),
            DRIVER_OK => old == ACKNOWLEDGE | DRIVER | FEATURES_OK && self.activate(),
            _ => false,
        };
        if ok {
            self.status = v;
        } else {
            tracing::warn!(old, v, "virtio-mmio: status transition refused");
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device_features();
        self.acked_features & !offered == 0
            && self.acked_features & (1u64 << features::VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) -> bool {
        let mut active = Vec::with_capacity(self.queues.len());
        for (i, (q, evt)) in self.queues.iter().zip(&self.queue_evts).enumerate() {
            if !q.ready() || !q.is_valid(&self.mem) {
                tracing::warn!(queue = i, "virtio-mmio: queue not ready/valid at DRIVER_OK");
                self.failed_activation = true;
                return false;
            }
            // The transport keeps its copy for register reads; the device
            // gets an equal Queue built from the same state.
            let queue = match Queue::try_from(q.state()) {
                Ok(q) => q,
                Err(_) => {
                    self.failed_activation = true;
                    return false;
                }
            };
            let notify = match evt.try_clone() {
                Ok(e) => e,
                Err(_) => {
                    self.failed_activation = true;
                    return false;
                }
            };
            active.push(ActiveQueue { queue, notify });
        }
        let res = lock(&self.device).activate(
            self.mem.clone(),
            self.acked_features,
            active,
            self.interrupt.clone(),
        );
        match res {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(%e, "virtio-mmio: activation failed");
                self.failed_activation = true;
                // DEVICE_NEEDS_RESET is announced with a config interrupt.
                let _ = self.interrupt.signal_config_change();
                false
            }
        }
    }

    fn begin_reset(&mut self) {
        lock(&self.device).reset();
        self.resetting = true;
        if !lock(&self.device).reset_pending() {
            self.finish_reset();
        }
    }

    fn finish_reset(&mut self) {
        self.resetting = false;
        self.status = 0;
        self.acked_features = 0;
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.failed_activation = false;
        self.interrupt.clear();
        for q in &mut self.queues {
            q.reset();
        }
        // Drop stale kicks so a re-activated device doesn't see ghosts.
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
    }
}

fn new_queue(max: u16) -> io::Result<Queue> {
    Queue::new(max).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}
