//! Fuzz entry point for the virtio-pager device behind its virtio-mmio
//! transport (cargo-fuzz target `mmio` and the corpus replay test in
//! tests/fuzz_regressions.rs): a hostile driver with register accesses of
//! any offset, width and value, any guest memory contents (descriptor
//! tables, rings, headers), queue kicks, and pagers sending events (lock
//! requests with a reply among them), while the device runs under a real
//! event manager with a worker, its objects under rate limits the input
//! chooses, on a clock the input moves. Whatever the input, the device must
//! not panic, hang or grow without bound: at the end a reset must finish at
//! once (parked requests dropped, not waited for) and leave the transport at
//! status 0.

use crate::pager::control::{MAX_PENDING_REPLIES, MAX_PENDING_REPLIES_PER_OBJECT};
use crate::pager::wire::{ObjectId, QUEUE_SIZE, REQ_HDR_SIZE, req};
use crate::pager::{PagerDevice, PagerObject};
use crate::rate_limiter::{Bucket, Clock, RateLimit};
use crate::testing::MemPager;
use crate::virtio::{MmioTransport, status};
use arbitrary::Unstructured;
use event_manager::{EventManager, SubscriberOps};
use pager_backends::{Access, KernelId, LockRequest, ObjectOffset, PAGE_SIZE};
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM of the fuzzed VM.
pub const MEM_SIZE: u64 = 2 << 20;
/// Where the bring-up op puts the two queues (descriptors, avail, used).
pub const REQ_RING: u64 = 0x0000;
pub const EV_RING: u64 = 0x4000;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const KERNEL: KernelId = KernelId(1);
/// How long an input waits for the worker to finish what it was given:
/// far beyond what an in-memory pager needs (microseconds), so only a
/// device that lost track of its work gets there. Generous because the
/// host may be starved: at 10 s, one run on a 2-CPU host at load 11 (KVM
/// guests of software virtualization next to it) stopped here, and the
/// same input then ran 3,000 times cleanly.
const DRAIN_LIMIT: Duration = Duration::from_secs(45);

/// The operations an input is a sequence of (first byte of each, modulo
/// the count).
pub mod op {
    /// MMIO read: le16 offset, width selector.
    pub const READ: u8 = 0;
    /// MMIO write: le16 offset, width selector, le64 value.
    pub const WRITE: u8 = 1;
    /// Guest memory: le32 address (modulo RAM), length byte, bytes.
    pub const POKE: u8 = 2;
    /// A driver's bring-up through the registers: le64 features, queue
    /// size exponent; queues at REQ_RING and EV_RING.
    pub const BRING_UP: u8 = 3;
    /// Descriptor in a bring-up ring: queue, index, le64 addr, le32 len,
    /// le16 flags, le16 next.
    pub const DESC: u8 = 4;
    /// Publish a head on a bring-up ring's avail ring: queue, le16 head.
    pub const PUBLISH: u8 = 5;
    /// QueueNotify register write: queue.
    pub const NOTIFY: u8 = 6;
    /// Run the event loop once, after the worker finished its jobs.
    pub const RUN: u8 = 7;
    /// A pager's unprompted call: object, kind, le64 offset, le64 len,
    /// access/flags byte; kind 4 (lock request with reply) then le64
    /// cookie, and with flag 0x20 a page range in a small window
    /// (`small_range`) instead of the raw offset and length.
    pub const PAGER_EVENT: u8 = 8;
    /// Request header at le32 address: type, object, le64 offset,
    /// le64 length, access; type 7 (LOCK_COMPLETED) then a byte: tag in
    /// bits 0-2 (tags are handed out from 0, so these hit live ones), and
    /// with bit 3 a page range in the same small window as the pager's
    /// and access 0.
    pub const HEADER: u8 = 9;
    /// First operation only: the objects' rate limits (see `limits`);
    /// anywhere else it is skipped, as the VMM fixes limits when it makes
    /// the device.
    pub const LIMITS: u8 = 10;
    /// Time passes on the device's clock (selector byte, `WAITS`); a rate
    /// timer due by then fires through the event loop.
    pub const WAIT: u8 = 11;
    pub const COUNT: u8 = 12;
}

/// Token rates and bursts an input picks from (an index byte each): the
/// tiny ones park nearly everything, the huge ones probe the arithmetic.
const LIMIT_VALUES: [u64; 8] = [1, 2, 10, 4096, 65536, 1 << 20, 1 << 40, u64::MAX];

/// How long a WAIT lets pass (an index byte).
const WAITS: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_micros(100),
    Duration::from_millis(1),
    Duration::from_millis(10),
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(3600),
];

/// What one input did, for the replay test to hold named seeds to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MmioOutcome {
    /// The device was active at some point.
    pub activated: bool,
    /// Request chains the device took from the ring.
    pub requests: u64,
    /// Chains it completed with an error status.
    pub rejected: u64,
    /// Events it delivered to the guest.
    pub events: u64,
    /// DEVICE_NEEDS_RESET was shown at some point.
    pub needed_reset: bool,
    /// Requests the objects' rate limits parked.
    pub parked: u64,
    /// Requests still parked when the driver reset the device.
    pub parked_at_reset: usize,
    /// DATA_REQUESTs the pagers were called with.
    pub pager_reads: u64,
    /// Lock requests with a reply the device took from the pagers.
    pub replies_asked: u64,
    /// Lock requests still waiting for LOCK_COMPLETED at the reset.
    pub replies_waiting_at_reset: usize,
    /// lock_completed calls the pagers received.
    pub lock_completions: u64,
}

/// The device's clock: stands still until the input lets time pass, so
/// whether a request is parked or resumed is the input's doing, never the
/// host's speed.
struct FuzzClock {
    base: Instant,
    elapsed_ns: AtomicU64,
}

impl FuzzClock {
    fn advance(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Saturates far beyond anything an input reaches (584 years).
        let _ = self
            .elapsed_ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |e| {
                Some(e.saturating_add(ns))
            });
    }
}

impl Clock for FuzzClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.elapsed_ns.load(Ordering::SeqCst))
    }
}

/// The LIMITS operation, per object: a selector byte (bit 0 an operations
/// bucket, bit 1 a bytes bucket; neither: unlimited), then for each bucket
/// a rate and a burst index into LIMIT_VALUES.
fn limits(u: &mut Unstructured<'_>) -> arbitrary::Result<[RateLimit; 2]> {
    let mut out = [RateLimit::default(); 2];
    for limit in &mut out {
        let sel: u8 = u.arbitrary()?;
        let mut bucket = |on: bool| -> arbitrary::Result<Option<Bucket>> {
            if !on {
                return Ok(None);
            }
            let mut pick = || -> arbitrary::Result<NonZeroU64> {
                let v = LIMIT_VALUES[usize::from(u.arbitrary::<u8>()? % 8)];
                // Every entry of LIMIT_VALUES is at least 1.
                Ok(NonZeroU64::new(v).unwrap_or(NonZeroU64::MIN))
            };
            Ok(Some(Bucket {
                rate: pick()?,
                burst: pick()?,
            }))
        };
        limit.ops = bucket(sel & 1 != 0)?;
        limit.bandwidth = bucket(sel & 2 != 0)?;
    }
    Ok(out)
}

/// A page range in a window of 16 pages, at most 4 long, from two raw
/// values: what a pager's lock request and the driver's LOCK_COMPLETED both
/// use, so the fuzzer finds matching ranges (and near misses) quickly.
fn small_range(offset: u64, len: u64) -> (u64, u64) {
    ((offset % 16) * PAGE_SIZE, (len % 4 + 1) * PAGE_SIZE)
}

struct Vm {
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<PagerDevice>>,
    transport: MmioTransport,
    em: EventManager<Arc<Mutex<PagerDevice>>>,
    pagers: [Arc<MemPager>; 2],
    clock: Arc<FuzzClock>,
    out: MmioOutcome,
}

fn width(sel: u8) -> usize {
    [1, 2, 4, 8][usize::from(sel % 4)]
}

impl Vm {
    fn new(limits: [RateLimit; 2]) -> Option<Vm> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).ok()?;
        // One object answered inline with read-ahead, one read-only whose
        // every request goes to the worker (a pager that must do I/O).
        let pagers = [
            Arc::new(MemPager::filled(64 << 10, |i| i as u8)),
            Arc::new(MemPager::new(16 << 10).read_only(true).blocking()),
        ];
        let objects = pagers
            .iter()
            .zip(["a", "b"])
            .zip(limits)
            .map(|((p, name), rate_limit)| PagerObject {
                name: name.into(),
                pager: p.clone(),
                read_only: false,
                rate_limit,
            })
            .collect();
        let mut dev = PagerDevice::new(KERNEL, objects, 1).ok()?;
        // Inline service decided by the pager, never by the clock, so an
        // input does the same thing every time it runs.
        dev.inline_time_per_pass = Duration::from_secs(3600);
        // Starts after the buckets were filled, so they start full.
        let clock = Arc::new(FuzzClock {
            base: Instant::now(),
            elapsed_ns: AtomicU64::new(0),
        });
        dev.clock = clock.clone();
        let dev = Arc::new(Mutex::new(dev));
        let transport = MmioTransport::new(mem.clone(), dev.clone()).ok()?;
        let mut em = EventManager::new().ok()?;
        em.add_subscriber(dev.clone());
        Some(Vm {
            mem,
            dev,
            transport,
            em,
            pagers,
            clock,
            out: MmioOutcome::default(),
        })
    }

    fn device(&self) -> std::sync::MutexGuard<'_, PagerDevice> {
        self.dev.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.transport.read(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn write32(&mut self, offset: u64, v: u32) {
        self.transport.write(offset, &v.to_le_bytes());
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK, both queues, DRIVER_OK:
    /// what a driver does, through the same registers a hostile one uses.
    fn bring_up(&mut self, features: u64, size: u16) {
        self.write32(0x70, status::ACKNOWLEDGE);
        self.write32(0x70, status::ACKNOWLEDGE | status::DRIVER);
        for (sel, half) in [(0u32, features as u32), (1, (features >> 32) as u32)] {
            self.write32(0x24, sel);
            self.write32(0x20, half);
        }
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        self.write32(0x70, s);
        for (q, base) in [(0u32, REQ_RING), (1, EV_RING)] {
            self.write32(0x30, q);
            self.write32(0x38, u32::from(size));
            for (reg, addr) in [(0x80, base), (0x90, base + AVAIL), (0xa0, base + USED)] {
                self.write32(reg, addr as u32);
                self.write32(reg + 4, (addr >> 32) as u32);
            }
            self.write32(0x44, 1);
        }
        self.write32(0x70, s | status::DRIVER_OK);
    }

    fn poke(&self, addr: u64, bytes: &[u8]) {
        // Out of range is the input's choice; nothing to do then.
        let _ = self.mem.write_slice(bytes, GuestAddress(addr));
    }

    fn publish(&self, ring: u64, head: u16) {
        let idx: u16 = self
            .mem
            .read_obj(GuestAddress(ring + AVAIL + 2))
            .unwrap_or(0);
        let slot = ring + AVAIL + 4 + 2 * u64::from(idx % QUEUE_SIZE);
        self.poke(slot, &head.to_le_bytes());
        self.poke(ring + AVAIL + 2, &idx.wrapping_add(1).to_le_bytes());
    }

    /// Waits (bounded) until the worker finished every job it was given.
    fn settle(&self) {
        let start = Instant::now();
        while self.device().completions.in_flight() > 0 {
            assert!(
                start.elapsed() < DRAIN_LIMIT,
                "the device's worker did not finish its jobs"
            );
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn run_loop(&mut self) {
        self.settle();
        // Everything ready is handled; nothing waits.
        let _ = self.em.run_with_timeout(0);
        self.note();
    }

    fn note(&mut self) {
        let (active, stats, parked) = {
            let d = self.device();
            let parked = d.object_throttling().iter().map(|t| t.throttled).sum();
            (
                crate::virtio::VirtioDevice::is_activated(&*d),
                d.stats(),
                parked,
            )
        };
        self.out.activated |= active;
        self.out.requests = stats.requests;
        self.out.rejected = stats.rejected;
        self.out.events = stats.events_delivered;
        self.out.parked = parked;
        self.out.pager_reads = self.pagers.iter().map(|p| p.data_requests()).sum();
        self.out.lock_completions = self
            .pagers
            .iter()
            .map(|p| p.lock_completions().len() as u64)
            .sum();
    }

    /// Time passes on the device's clock. Its rate timer is a timerfd on
    /// the host's clock, armed for the wait the device computed on ours:
    /// once ours reaches the deadline the device set, the timerfd is made
    /// to expire now, and the event loop handles it as it would.
    fn wait(&mut self, d: Duration) {
        self.clock.advance(d);
        let now = self.clock.now();
        let due = |dev: &PagerDevice| dev.rate_timer_at.is_some_and(|at| at <= now);
        {
            let mut dev = self.device();
            if !due(&dev) || dev.rate_timer.reset(Duration::from_nanos(1), None).is_err() {
                return;
            }
        }
        self.settle();
        let start = Instant::now();
        while due(&self.device()) {
            assert!(
                start.elapsed() < DRAIN_LIMIT,
                "the device's rate timer fired and was not handled"
            );
            let _ = self.em.run_with_timeout(1);
        }
        self.note();
    }

    fn pager_event(&mut self, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
        let pager = self.pagers[usize::from(u.arbitrary::<u8>()? % 2)].clone();
        let kind = u.arbitrary::<u8>()? % 5;
        let offset = ObjectOffset(u.arbitrary()?);
        let len: u64 = u.arbitrary()?;
        let bits: u8 = u.arbitrary()?;
        let cookie: u64 = if kind == 4 { u.arbitrary()? } else { 0 };
        // Only an object the driver INITed has a control handle.
        let Some(ctl) = pager.control(KERNEL) else {
            return Ok(());
        };
        let access = Access::from_bits(bits & 7).unwrap_or(Access::NONE);
        let (clean, flush) = (bits & 8 != 0, bits & 16 != 0);
        // The device's answers (refusals included) are its business.
        let _ = match kind {
            0 => ctl.lock_request(offset, len, access, clean, flush),
            // At most 16 pages of offered data per call.
            1 => ctl.offer(offset, &vec![0xa5; (len % (16 << 12)) as usize], access),
            2 => ctl.set_cache(bits & 1 != 0),
            3 => ctl.destroy("fuzz"),
            _ => {
                let (offset, len) = if bits & 0x20 != 0 {
                    let (o, l) = small_range(offset.raw(), len);
                    (ObjectOffset(o), l)
                } else {
                    (offset, len)
                };
                let lock = LockRequest {
                    lock: access,
                    clean,
                    flush,
                };
                let r = ctl.lock_request_with_reply(offset, len, lock, cookie);
                if r.is_ok() {
                    self.out.replies_asked += 1;
                }
                r
            }
        };
        Ok(())
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
        match u.arbitrary::<u8>()? % op::COUNT {
            op::READ => {
                let (off, w) = (u.arbitrary::<u16>()?, u.arbitrary::<u8>()?);
                let v = self.read(u64::from(off), width(w));
                if off == 0x70 && v & u64::from(status::DEVICE_NEEDS_RESET) != 0 {
                    self.out.needed_reset = true;
                }
            }
            op::WRITE => {
                let (off, w) = (u.arbitrary::<u16>()?, u.arbitrary::<u8>()?);
                let v: u64 = u.arbitrary()?;
                self.transport
                    .write(u64::from(off), &v.to_le_bytes()[..width(w)]);
            }
            op::POKE => {
                let addr = u64::from(u.arbitrary::<u32>()?) % MEM_SIZE;
                let n = usize::from(u.arbitrary::<u8>()?);
                let bytes = u.bytes(n.min(u.len()))?;
                self.poke(addr, bytes);
            }
            op::BRING_UP => {
                let features: u64 = u.arbitrary()?;
                let size = 1u16 << (u.arbitrary::<u8>()? % 9);
                self.bring_up(features, size);
            }
            op::DESC => {
                let ring = if u.arbitrary::<bool>()? {
                    EV_RING
                } else {
                    REQ_RING
                };
                let index = u.arbitrary::<u8>()?;
                let mut d = [0u8; 16];
                u.fill_buffer(&mut d)?;
                self.poke(ring + 16 * u64::from(index), &d);
            }
            op::PUBLISH => {
                let ring = if u.arbitrary::<bool>()? {
                    EV_RING
                } else {
                    REQ_RING
                };
                let head: u16 = u.arbitrary()?;
                self.publish(ring, head);
            }
            op::NOTIFY => {
                let q = u32::from(u.arbitrary::<u8>()? % 3);
                self.write32(crate::virtio::mmio::QUEUE_NOTIFY, q);
            }
            op::RUN => self.run_loop(),
            op::PAGER_EVENT => self.pager_event(u)?,
            op::HEADER => {
                let addr = u64::from(u.arbitrary::<u32>()?) % MEM_SIZE;
                let mut h = [0u8; REQ_HDR_SIZE];
                h[0] = u.arbitrary::<u8>()? % 8;
                h[4] = u.arbitrary::<u8>()? % 3;
                u.fill_buffer(&mut h[8..25])?;
                if u16::from(h[0]) == req::LOCK_COMPLETED {
                    let t: u8 = u.arbitrary()?;
                    h[28] = t & 7;
                    if t & 8 != 0 {
                        let raw = |b: u8| u64::from(b);
                        let (offset, len) = small_range(raw(h[8]), raw(h[16]));
                        h[8..16].copy_from_slice(&offset.to_le_bytes());
                        h[16..24].copy_from_slice(&len.to_le_bytes());
                        h[24] = 0;
                    }
                }
                self.poke(addr, &h);
            }
            op::LIMITS => {
                // Only the first operation sets limits (fuzz_mmio).
                limits(u)?;
            }
            _ => {
                let d = WAITS[usize::from(u.arbitrary::<u8>()? % 8)];
                self.wait(d);
            }
        }
        Ok(())
    }

    /// What must hold after every operation, whatever the input: nothing
    /// the guest or a pager does grows the device's queues and tables past
    /// their bounds.
    fn check_bounds(&self) {
        let d = self.device();
        // A device that queues without bound shows here first.
        assert!(d.pending_events() <= crate::pager::control::MAX_PENDING_EVENTS);
        // Parked requests count as outstanding, which the ring bounds.
        assert!(
            d.parked() <= d.outstanding,
            "{} parked, {} outstanding",
            d.parked(),
            d.outstanding
        );
        assert!(d.outstanding <= usize::from(QUEUE_SIZE));
        assert!(d.replies_waiting() <= MAX_PENDING_REPLIES);
        for i in 0..2 {
            assert!(d.backlog.replies_waiting_for(ObjectId(i)) <= MAX_PENDING_REPLIES_PER_OBJECT);
        }
    }

    /// The driver resets the device and polls Status until it reads 0, as
    /// the guest's driver does; the event loop retires what finishes.
    fn reset_and_drain(&mut self) {
        self.run_loop();
        let (parked, replies) = {
            let d = self.device();
            (d.parked(), d.replies_waiting())
        };
        self.out.parked_at_reset = parked;
        self.out.replies_waiting_at_reset = replies;
        self.write32(0x70, 0);
        // Parked requests belong to the ring the reset took away: dropped
        // at once, never waited for (that would take as long as a refill).
        assert_eq!(self.device().parked(), 0, "requests parked after a reset");
        assert_eq!(
            self.device().replies_waiting(),
            0,
            "replies awaited after a reset"
        );
        let start = Instant::now();
        while self.read(0x70, 4) != 0 {
            assert!(
                start.elapsed() < DRAIN_LIMIT,
                "reset did not finish: the device kept work in flight"
            );
            self.run_loop();
        }
        self.run_loop();
        let d = self.device();
        assert!(!crate::virtio::VirtioDevice::is_activated(&*d));
        assert_eq!(d.stats().in_flight, 0, "chains in flight after a reset");
    }
}

/// Runs one input (see `op` for its format) and returns what it did.
pub fn fuzz_mmio(data: &[u8]) -> MmioOutcome {
    let mut u = Unstructured::new(data);
    let mut rate_limits = [RateLimit::default(); 2];
    if data.first().is_some_and(|b| b % op::COUNT == op::LIMITS) {
        let _ = u.arbitrary::<u8>();
        match limits(&mut u) {
            Ok(l) => rate_limits = l,
            Err(_) => return MmioOutcome::default(),
        }
    }
    let Some(mut vm) = Vm::new(rate_limits) else {
        // No eventfds or memory left on the host: nothing to test.
        return MmioOutcome::default();
    };
    while !u.is_empty() {
        if vm.step(&mut u).is_err() {
            break;
        }
        vm.check_bounds();
    }
    vm.reset_and_drain();
    vm.note();
    vm.out
}
