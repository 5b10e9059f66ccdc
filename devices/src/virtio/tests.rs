//! Transport tests: a recording device behind MmioTransport, driven with
//! the register accesses a guest driver makes.

use super::mmio::{CONFIG_SPACE, MMIO_MAGIC, QUEUE_NOTIFY};
use super::{ActivateError, ActiveQueue, Interrupt, MmioTransport, VirtioDevice, features, status};
use std::sync::{Arc, Mutex};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};

#[derive(Default)]
struct Recorder {
    activated: Option<(u64, Vec<u16>)>,
    resets: u32,
    config: [u8; 8],
    fail_activate: bool,
    pending_reset: bool,
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        42
    }
    fn avail_features(&self) -> u64 {
        1 << 3 | 1 << 40
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(c) = self.config.get_mut(offset as usize + i) {
                *c = *b;
            }
        }
    }
    fn activate(
        &mut self,
        _m: GuestMemoryMmap,
        f: u64,
        q: Vec<ActiveQueue>,
        _i: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::BadQueue(0));
        }
        self.activated = Some((f, q.iter().map(|q| q.queue.size()).collect()));
        Ok(())
    }
    fn is_activated(&self) -> bool {
        self.activated.is_some()
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.activated = None;
    }
    fn reset_pending(&self) -> bool {
        self.pending_reset
    }
}

fn setup() -> (MmioTransport, Arc<Mutex<Recorder>>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("mem");
    let dev = Arc::new(Mutex::new(Recorder::default()));
    let t = MmioTransport::new(mem, dev.clone()).expect("transport");
    (t, dev)
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// ACK, DRIVER, features (all offered), FEATURES_OK.
fn negotiate(t: &mut MmioTransport) {
    wr(t, 0x70, status::ACKNOWLEDGE);
    wr(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    for sel in 0..2 {
        wr(t, 0x14, sel);
        let f = rd(t, 0x10);
        wr(t, 0x24, sel);
        wr(t, 0x20, f);
    }
    wr(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32, base: u64) {
    wr(t, 0x30, sel);
    wr(t, 0x38, size);
    wr(t, 0x80, base as u32);
    wr(t, 0x84, 0);
    wr(t, 0x90, (base + 0x1000) as u32);
    wr(t, 0x94, 0);
    wr(t, 0xa0, (base + 0x2000) as u32);
    wr(t, 0xa4, 0);
    wr(t, 0x44, 1);
}

const ALL_BUT_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

#[test]
fn identity_registers() {
    let (mut t, _) = setup();
    assert_eq!(rd(&mut t, 0x0), MMIO_MAGIC);
    assert_eq!(rd(&mut t, 0x4), 2);
    assert_eq!(rd(&mut t, 0x8), 42);
    assert_eq!(rd(&mut t, 0xfc), 0);
}

#[test]
fn feature_negotiation_offers_version_1_and_accepts_subset() {
    let (mut t, _) = setup();
    wr(&mut t, 0x14, 0);
    assert_eq!(rd(&mut t, 0x10), 1 << 3);
    wr(&mut t, 0x14, 1);
    assert_eq!(
        rd(&mut t, 0x10),
        1 << 8 | 1 << (features::VIRTIO_F_VERSION_1 - 32)
    );
    wr(&mut t, 0x14, 7);
    assert_eq!(rd(&mut t, 0x10), 0);
    negotiate(&mut t);
    assert_eq!(rd(&mut t, 0x70), ALL_BUT_OK);
    assert_eq!(t.acked_features(), 1 << 3 | 1 << 40 | 1 << 32);
}

#[test]
fn features_ok_refused_for_unoffered_bits_or_missing_version_1() {
    let (mut t, _) = setup();
    wr(&mut t, 0x70, 1);
    wr(&mut t, 0x70, 3);
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, 1 << 5); // never offered
    wr(&mut t, 0x70, ALL_BUT_OK);
    assert_eq!(rd(&mut t, 0x70) & status::FEATURES_OK, 0);

    let (mut t, _) = setup();
    wr(&mut t, 0x70, 1);
    wr(&mut t, 0x70, 3);
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, 1 << 3); // no VERSION_1
    wr(&mut t, 0x70, ALL_BUT_OK);
    assert_eq!(rd(&mut t, 0x70) & status::FEATURES_OK, 0);
}

#[test]
fn features_cannot_change_after_features_ok() {
    let (mut t, _) = setup();
    negotiate(&mut t);
    let acked = t.acked_features();
    wr(&mut t, 0x24, 0);
    wr(&mut t, 0x20, 0);
    assert_eq!(t.acked_features(), acked);
}

#[test]
fn status_must_advance_in_order() {
    let (mut t, _) = setup();
    wr(&mut t, 0x70, status::DRIVER); // skipping ACK
    assert_eq!(rd(&mut t, 0x70), 0);
    wr(
        &mut t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(rd(&mut t, 0x70), 0);
    wr(&mut t, 0x70, status::ACKNOWLEDGE);
    wr(&mut t, 0x70, 0x1000 | status::ACKNOWLEDGE); // unknown bit
    assert_eq!(rd(&mut t, 0x70), status::ACKNOWLEDGE);
    wr(&mut t, 0x70, status::FAILED);
    assert_ne!(rd(&mut t, 0x70) & status::FAILED, 0);
}

#[test]
fn queue_setup_and_activation() {
    let (mut t, dev) = setup();
    // Queue registers before FEATURES_OK are ignored.
    wr(&mut t, 0x30, 0);
    wr(&mut t, 0x38, 8);
    negotiate(&mut t);
    wr(&mut t, 0x30, 0);
    assert_eq!(rd(&mut t, 0x34), 16);
    wr(&mut t, 0x30, 1);
    assert_eq!(rd(&mut t, 0x34), 8);
    wr(&mut t, 0x30, 9);
    assert_eq!(rd(&mut t, 0x34), 0, "no such queue");
    setup_queue(&mut t, 0, 16, 0x1_0000);
    setup_queue(&mut t, 1, 4, 0x2_0000);
    wr(&mut t, 0x30, 0);
    assert_eq!(rd(&mut t, 0x44), 1);
    wr(&mut t, 0x70, ALL_BUT_OK | status::DRIVER_OK);
    assert_eq!(rd(&mut t, 0x70), ALL_BUT_OK | status::DRIVER_OK);
    let (f, sizes) = dev
        .lock()
        .expect("lock")
        .activated
        .clone()
        .expect("activated");
    assert_eq!(sizes, vec![16, 4]);
    assert_eq!(f, t.acked_features());
    // Queue config is frozen after DRIVER_OK.
    wr(&mut t, 0x30, 0);
    wr(&mut t, 0x38, 2);
    wr(&mut t, 0x30, 0);
    assert!(t.device().lock().map(|d| d.is_activated()).unwrap_or(false));
}

#[test]
fn bad_queue_sizes_are_refused() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 12, 0x1_0000); // not a power of two: size stays at max
    setup_queue(&mut t, 1, 64, 0x2_0000); // above max
    wr(&mut t, 0x70, ALL_BUT_OK | status::DRIVER_OK);
    let (_, sizes) = dev
        .lock()
        .expect("lock")
        .activated
        .clone()
        .expect("activated");
    assert_eq!(sizes, vec![16, 8]);
}

#[test]
fn driver_ok_with_unready_queue_fails_and_needs_reset() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 16, 0x1_0000);
    // Queue 1 never made ready.
    wr(&mut t, 0x70, ALL_BUT_OK | status::DRIVER_OK);
    assert!(dev.lock().expect("lock").activated.is_none());
    assert_eq!(rd(&mut t, 0x70), ALL_BUT_OK | status::DEVICE_NEEDS_RESET);
    // Rings outside guest memory are just as unready.
    let (mut t, dev) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 16, 0x1_0000);
    setup_queue(&mut t, 1, 8, 0x7fff_0000);
    wr(&mut t, 0x70, ALL_BUT_OK | status::DRIVER_OK);
    assert!(dev.lock().expect("lock").activated.is_none());
}

#[test]
fn device_activation_failure_raises_config_interrupt() {
    let (mut t, dev) = setup();
    dev.lock().expect("lock").fail_activate = true;
    negotiate(&mut t);
    setup_queue(&mut t, 0, 16, 0x1_0000);
    setup_queue(&mut t, 1, 8, 0x2_0000);
    wr(&mut t, 0x70, ALL_BUT_OK | status::DRIVER_OK);
    assert_ne!(rd(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(rd(&mut t, 0x60) & super::irq::CONFIG_CHANGE, 0);
    assert_eq!(t.interrupt_evt().read().expect("irq"), 1);
    wr(&mut t, 0x64, super::irq::CONFIG_CHANGE);
    assert_eq!(rd(&mut t, 0x60), 0);
}

#[test]
fn reset_clears_state_and_can_be_deferred() {
    let (mut t, dev) = setup();
    negotiate(&mut t);
    setup_queue(&mut t, 0, 16, 0x1_0000);
    setup_queue(&mut t, 1, 8, 0x2_0000);
    wr(&mut t, 0x70, ALL_BUT_OK | status::DRIVER_OK);
    dev.lock().expect("lock").pending_reset = true;
    wr(&mut t, 0x70, 0);
    assert_eq!(dev.lock().expect("lock").resets, 1);
    assert_ne!(
        rd(&mut t, 0x70),
        0,
        "reset not finished while work is in flight"
    );
    wr(&mut t, 0x70, status::ACKNOWLEDGE); // ignored meanwhile
    dev.lock().expect("lock").pending_reset = false;
    assert_eq!(rd(&mut t, 0x70), 0);
    assert_eq!(t.acked_features(), 0);
    wr(&mut t, 0x30, 0);
    assert_eq!(rd(&mut t, 0x44), 0, "queues reset");
    // A full second bring-up works.
    negotiate(&mut t);
    setup_queue(&mut t, 0, 16, 0x1_0000);
    setup_queue(&mut t, 1, 8, 0x2_0000);
    wr(&mut t, 0x70, ALL_BUT_OK | status::DRIVER_OK);
    assert!(dev.lock().expect("lock").activated.is_some());
}

#[test]
fn queue_notify_without_ioeventfd_signals_the_queue_eventfd() {
    let (mut t, _) = setup();
    wr(&mut t, QUEUE_NOTIFY, 1);
    assert_eq!(t.queue_evts()[1].read().expect("kick"), 1);
    assert!(t.queue_evts()[0].read().is_err(), "other queue untouched");
    wr(&mut t, QUEUE_NOTIFY, 77); // unknown queue: ignored
}

#[test]
fn bad_register_accesses_are_harmless() {
    let (mut t, _) = setup();
    let mut b2 = [0xffu8; 2];
    t.read(0x0, &mut b2);
    assert_eq!(b2, [0, 0], "narrow register read reads 0");
    let mut b = [0xffu8; 4];
    t.read(0x2, &mut b);
    assert_eq!(b, [0; 4], "unaligned read reads 0");
    t.read(0x20, &mut b); // write-only register
    assert_eq!(b, [0; 4]);
    t.read(0xfff_ffff, &mut b); // outside the window
    assert_eq!(b, [0; 4]);
    let mut huge = [0xffu8; 64];
    t.read(0x0, &mut huge);
    t.write(0x70, &[1, 0]); // narrow status write ignored
    t.write(0x71, &1u32.to_le_bytes());
    t.write(0x0, &1u32.to_le_bytes()); // read-only register
    t.write(0x8000_0000, &[1; 4]);
    t.write(0x70, &[]);
    assert_eq!(rd(&mut t, 0x70), 0);
    assert_eq!(rd(&mut t, 0x0), MMIO_MAGIC);
}

#[test]
fn config_space_access_any_width() {
    let (mut t, dev) = setup();
    dev.lock().expect("lock").config = [1, 2, 3, 4, 5, 6, 7, 8];
    let mut b = [0u8; 2];
    t.read(CONFIG_SPACE + 3, &mut b);
    assert_eq!(b, [4, 5]);
    // Writes before DRIVER are ignored, after are forwarded.
    t.write(CONFIG_SPACE, &[9]);
    assert_eq!(dev.lock().expect("lock").config[0], 1);
    wr(&mut t, 0x70, 1);
    wr(&mut t, 0x70, 3);
    t.write(CONFIG_SPACE, &[9]);
    assert_eq!(dev.lock().expect("lock").config[0], 9);
}
