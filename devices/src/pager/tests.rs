//! Device tests: a driver written against virtio-queue's MockSplitQueue and
//! a test guest memory, the device served by a real event manager and its
//! worker pool. Synchronisation is by eventfds and ring indices, never time.

use super::control::{
    MAX_PENDING_EVENTS, MAX_PENDING_EVENTS_PER_OBJECT, MAX_PENDING_REPLIES_PER_OBJECT,
};
use super::wire::*;
use super::{PagerDevice, PagerObject};
use crate::testing::MemPager;
use crate::virtio::{ActiveQueue, Interrupt, VirtioDevice, features};
use event_manager::{EventManager, SubscriberOps};
use pager_backends::{
    Access, DataReply, KernelControl, KernelId, LockRequest, ObjectInfo, ObjectOffset, Pager,
    PagerError, Result as PResult, UnlockReply,
};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const MEM_SIZE: u64 = 16 << 20;
const REQQ: u64 = 0;
const EVQ: u64 = 0x10000;
const KERNEL: KernelId = KernelId(7);
const PG: u64 = 4096;

fn all_features() -> u64 {
    (1 << VIRTIO_PAGER_F_READAHEAD)
        | (1 << VIRTIO_PAGER_F_UNLOCK)
        | (1 << VIRTIO_PAGER_F_EVENTS)
        | (1 << features::VIRTIO_F_VERSION_1)
}

fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
}

/// The driver's side of one split queue: descriptor table at `at`, avail
/// ring at `at + 0x1000`, used ring at `at + 0x2000`. (MockSplitQueue's own
/// layout puts the used ring over the upper half of the avail ring: its
/// `AvailRing::end` counts elements, not bytes. A test publishing more than
/// 127 entries would write heads into the used ring.)
struct Ring<'a> {
    mem: &'a GuestMemoryMmap,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
}

impl<'a> Ring<'a> {
    fn new(mem: &'a GuestMemoryMmap, at: u64) -> Self {
        let r = Ring {
            mem,
            desc: at,
            avail: at + 0x1000,
            used: at + 0x2000,
            next_desc: 0,
        };
        mem.write_slice(&[0u8; 0x3000], GuestAddress(at))
            .expect("clear ring");
        r
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).expect("queue");
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        assert!(q.is_valid(self.mem));
        q
    }

    fn r16(&self, at: u64) -> u16 {
        self.mem.read_obj(GuestAddress(at)).expect("ring read")
    }

    fn w16(&self, at: u64, v: u16) {
        self.mem.write_obj(v, GuestAddress(at)).expect("ring write")
    }

    /// The avail ring's used_event slot (EVENT_IDX): interrupt when the
    /// used index passes `v`.
    fn set_used_event(&self, v: u16) {
        self.w16(self.avail + 4 + 2 * u64::from(QUEUE_SIZE), v);
    }

    fn store(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
        self.mem
            .write_obj(d, GuestAddress(self.desc + 16 * u64::from(index)))
            .expect("store descriptor");
    }

    /// Writes a well-linked chain (addr, len, device-writable) and returns
    /// its head without publishing it.
    fn write_chain(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let n = descs.len() as u16;
        if self.next_desc + n > QUEUE_SIZE {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == descs.len();
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.store(idx, addr, len, flags, if last { 0 } else { idx + 1 });
        }
        self.next_desc += n;
        head
    }

    fn publish(&self, head: u16) {
        let idx = self.r16(self.avail + 2);
        self.w16(self.avail + 4 + 2 * u64::from(idx % QUEUE_SIZE), head);
        self.w16(self.avail + 2, idx.wrapping_add(1));
    }

    fn push(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.write_chain(descs);
        self.publish(head);
        head
    }

    fn used_count(&self) -> u16 {
        self.r16(self.used + 2)
    }

    /// (head, len) of the i-th used element.
    fn used(&self, i: u16) -> (u16, u32) {
        let at = self.used + 4 + 8 * u64::from(i % QUEUE_SIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
        (id as u16, len)
    }

    fn set_avail_idx(&self, v: u16) {
        self.w16(self.avail + 2, v);
    }
}

/// Bump allocator for headers, statuses and frames in the test memory.
struct Alloc {
    small: u64,
    frames: u64,
}

impl Alloc {
    fn new() -> Self {
        Alloc {
            small: 0x10_0000,
            frames: 0x40_0000,
        }
    }
    fn small(&mut self, n: u64) -> u64 {
        let a = self.small;
        self.small += n.next_multiple_of(64);
        a
    }
    fn frames(&mut self, n: u64) -> u64 {
        let a = self.frames;
        self.frames += n.next_multiple_of(PG);
        a
    }
}

struct Harness {
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<PagerDevice>>,
    req_kick: EventFd,
    ev_kick: EventFd,
    interrupt: Arc<Interrupt>,
    em: EventManager<Arc<Mutex<PagerDevice>>>,
    alloc: Alloc,
}

impl Harness {
    fn new(
        mem: &GuestMemoryMmap,
        rq: &Ring,
        eq: &Ring,
        objects: Vec<PagerObject>,
        features: u64,
    ) -> Self {
        Self::with_workers(mem, rq, eq, objects, features, 2)
    }

    fn with_workers(
        mem: &GuestMemoryMmap,
        rq: &Ring,
        eq: &Ring,
        objects: Vec<PagerObject>,
        features: u64,
        workers: usize,
    ) -> Self {
        let dev = Arc::new(Mutex::new(
            PagerDevice::new(KERNEL, objects, workers).expect("device"),
        ));
        let req_kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let ev_kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let interrupt = Arc::new(Interrupt::new().expect("interrupt"));
        let queues = vec![
            ActiveQueue {
                queue: rq.queue(),
                notify: req_kick.try_clone().expect("clone"),
            },
            ActiveQueue {
                queue: eq.queue(),
                notify: ev_kick.try_clone().expect("clone"),
            },
        ];
        dev.lock()
            .expect("lock")
            .activate(mem.clone(), features, queues, interrupt.clone())
            .expect("activate");
        let mut em = EventManager::new().expect("event manager");
        em.add_subscriber(dev.clone());
        Harness {
            mem: mem.clone(),
            dev,
            req_kick,
            ev_kick,
            interrupt,
            em,
            alloc: Alloc::new(),
        }
    }

    /// A new driver instance after a reset: fresh rings, fresh kick fds.
    fn reactivate(&mut self, rq: &Ring, eq: &Ring, features: u64) {
        self.req_kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        self.ev_kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let queues = vec![
            ActiveQueue {
                queue: rq.queue(),
                notify: self.req_kick.try_clone().expect("clone"),
            },
            ActiveQueue {
                queue: eq.queue(),
                notify: self.ev_kick.try_clone().expect("clone"),
            },
        ];
        self.dev
            .lock()
            .expect("lock")
            .activate(self.mem.clone(), features, queues, self.interrupt.clone())
            .expect("activate");
    }

    /// Runs the event loop until `done()`; fails instead of hanging if the
    /// device stops making progress.
    fn run_until(&mut self, mut done: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            let n = self.em.run_with_timeout(10_000).expect("event loop");
            assert!(n > 0 || done(), "device made no progress");
        }
        panic!("condition never reached");
    }

    fn kick_req(&self) {
        self.req_kick.write(1).expect("kick");
    }

    fn kick_ev(&self) {
        self.ev_kick.write(1).expect("kick");
    }

    fn header(&mut self, t: u16, obj: u32, offset: u64, length: u64, access: u8) -> u64 {
        let a = self.alloc.small(REQ_HDR_SIZE as u64);
        let h = RequestHeader {
            req_type: t,
            object_id: obj,
            offset,
            length,
            access,
            ..Default::default()
        };
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(a))
            .expect("write header");
        a
    }

    fn status(&mut self) -> u64 {
        let a = self.alloc.small(RESP_SIZE as u64);
        // Poison so a response that was never written is noticed.
        self.mem
            .write_slice(&[0xee; RESP_SIZE], GuestAddress(a))
            .expect("poison");
        a
    }

    fn response(&self, at: u64) -> Response {
        let mut b = [0u8; RESP_SIZE];
        self.mem
            .read_slice(&mut b, GuestAddress(at))
            .expect("read response");
        Response::from_bytes(&b)
    }

    fn bytes(&self, at: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.mem.read_slice(&mut b, GuestAddress(at)).expect("read");
        b
    }

    /// Header + status chain for requests without frames.
    fn simple(
        &mut self,
        rq: &mut Ring,
        t: u16,
        obj: u32,
        offset: u64,
        length: u64,
        access: u8,
    ) -> (u16, u64) {
        let h = self.header(t, obj, offset, length, access);
        let s = self.status();
        (rq.push(&[(h, 32, false), (s, 24, true)]), s)
    }

    /// Submits and waits for one request; returns (used len, response).
    fn one(&mut self, rq: &mut Ring, descs: &[(u64, u32, bool)], status: u64) -> (u32, Response) {
        let before = rq.used_count();
        let head = rq.push(descs);
        self.kick_req();
        self.run_until(|| rq.used_count() != before);
        let (id, len) = rq.used(before);
        assert_eq!(id, head);
        (len, self.response(status))
    }

    fn init(&mut self, rq: &mut Ring, obj: u32) -> Response {
        let h = self.header(req::INIT, obj, 0, 0, 0);
        let s = self.status();
        let (len, r) = self.one(rq, &[(h, 32, false), (s, 24, true)], s);
        assert_eq!(len, RESP_SIZE as u32);
        r
    }

    fn data_request(
        &mut self,
        rq: &mut Ring,
        obj: u32,
        offset: u64,
        len: u64,
        frames: &[(u64, u32)],
    ) -> (u32, Response) {
        let h = self.header(req::DATA_REQUEST, obj, offset, len, Access::READ.bits());
        let s = self.status();
        let mut d = vec![(h, 32, false)];
        d.extend(frames.iter().map(|&(a, l)| (a, l, true)));
        d.push((s, 24, true));
        self.one(rq, &d, s)
    }

    fn irq_count(&self) -> u64 {
        self.interrupt.eventfd().read().unwrap_or(0)
    }

    fn stats(&self) -> super::PagerStats {
        self.dev.lock().expect("lock").stats()
    }
}

fn object(name: &str, p: Arc<dyn Pager>) -> PagerObject {
    PagerObject {
        name: name.into(),
        pager: p,
        read_only: false,
        rate_limit: Default::default(),
    }
}

fn pattern(i: u64) -> u8 {
    (i / PG) as u8 ^ (i as u8).wrapping_mul(31)
}

#[test]
fn init_reports_object_info() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(10 * PG).read_only(true));
    let mut h = Harness::new(
        &mem,
        &rq,
        &eq,
        vec![object("ro", p.clone())],
        all_features(),
    );
    let r = h.init(&mut rq, 0);
    assert_eq!(r.status, status::OK);
    assert_eq!(r.bytes, 10 * PG);
    assert_eq!(r.flags, INIT_F_READ_ONLY | INIT_F_MAY_CACHE);
    assert!(
        p.control(KERNEL).is_some(),
        "pager saw init for our kernel id"
    );
    assert!(h.irq_count() > 0, "completion raised the irqfd");
}

#[test]
fn data_request_provides_pages_into_guest_frames() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::filled(64 * PG, pattern));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    // Two discontiguous frames for one 8 KiB request.
    let f1 = h.alloc.frames(PG);
    h.alloc.frames(PG);
    let f2 = h.alloc.frames(PG);
    let (len, r) = h.data_request(
        &mut rq,
        0,
        3 * PG,
        2 * PG,
        &[(f1, PG as u32), (f2, PG as u32)],
    );
    assert_eq!(
        (r.status, r.kind, r.bytes),
        (status::OK, kind::DATA_PROVIDED, 2 * PG)
    );
    assert_eq!(len, 2 * PG as u32 + RESP_SIZE as u32);
    assert_eq!(h.bytes(f1, PG as usize), p.contents(3 * PG, PG as usize));
    assert_eq!(h.bytes(f2, PG as usize), p.contents(4 * PG, PG as usize));
}

#[test]
fn data_request_lock_value_is_passed_through() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::filled(4 * PG, pattern).with_lock(Access::WRITE));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p)], all_features());
    h.init(&mut rq, 0);
    let f = h.alloc.frames(PG);
    let (_, r) = h.data_request(&mut rq, 0, 0, PG, &[(f, PG as u32)]);
    assert_eq!(r.lock, Access::WRITE.bits());
}

#[test]
fn hole_is_data_unavailable_and_frames_untouched() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(8 * PG));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("zero", p)], all_features());
    h.init(&mut rq, 0);
    let f = h.alloc.frames(PG);
    h.mem
        .write_slice(&[0x5a; PG as usize], GuestAddress(f))
        .expect("fill");
    let (len, r) = h.data_request(&mut rq, 0, PG, PG, &[(f, PG as u32)]);
    assert_eq!(
        (r.status, r.kind, r.bytes),
        (status::OK, kind::DATA_UNAVAILABLE, PG)
    );
    assert_eq!(len, RESP_SIZE as u32);
    assert!(h.bytes(f, PG as usize).iter().all(|&b| b == 0x5a));
}

#[test]
fn readahead_fills_offered_frames_only_when_negotiated() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::filled(64 * PG, pattern));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    let f = h.alloc.frames(16 * PG);
    let (len, r) = h.data_request(&mut rq, 0, 0, PG, &[(f, 16 * PG as u32)]);
    assert_eq!((r.status, r.bytes), (status::OK, 16 * PG));
    assert_eq!(len, 16 * PG as u32 + 24);
    assert_eq!(
        h.bytes(f, 16 * PG as usize),
        p.contents(0, 16 * PG as usize)
    );

    let mem2 = test_mem();
    let (mut rq2, eq2) = (Ring::new(&mem2, REQQ), Ring::new(&mem2, EVQ));
    let no_ra = all_features() & !(1 << VIRTIO_PAGER_F_READAHEAD);
    let mut h2 = Harness::new(&mem2, &rq2, &eq2, vec![object("a", p)], no_ra);
    h2.init(&mut rq2, 0);
    let f = h2.alloc.frames(2 * PG);
    let (_, r) = h2.data_request(&mut rq2, 0, 0, PG, &[(f, 2 * PG as u32)]);
    assert_eq!(r.status, status::BAD_RANGE);
}

#[test]
fn data_write_reaches_the_pager_and_read_only_is_refused() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let rw = Arc::new(MemPager::new(8 * PG));
    let ro = Arc::new(MemPager::new(8 * PG));
    let objs = vec![
        object("rw", rw.clone()),
        PagerObject {
            name: "ro".into(),
            pager: ro.clone(),
            read_only: true,
            rate_limit: Default::default(),
        },
    ];
    let mut h = Harness::new(&mem, &rq, &eq, objs, all_features());
    h.init(&mut rq, 0);
    h.init(&mut rq, 1);
    let f = h.alloc.frames(2 * PG);
    let data: Vec<u8> = (0..2 * PG).map(|i| (i % 251) as u8).collect();
    h.mem.write_slice(&data, GuestAddress(f)).expect("fill");
    for (obj, want) in [(0, status::OK), (1, status::READ_ONLY)] {
        let hd = h.header(req::DATA_WRITE, obj, 2 * PG, 2 * PG, 0);
        let s = h.status();
        let (len, r) = h.one(
            &mut rq,
            &[(hd, 32, false), (f, 2 * PG as u32, false), (s, 24, true)],
            s,
        );
        assert_eq!((len, r.status), (24, want));
    }
    assert_eq!(rw.contents(2 * PG, 2 * PG as usize), data);
    assert_eq!(ro.data_writes(), 0, "refused before reaching the pager");
    // The written pages are no longer holes.
    let g = h.alloc.frames(PG);
    let (_, r) = h.data_request(&mut rq, 0, 3 * PG, PG, &[(g, PG as u32)]);
    assert_eq!(r.kind, kind::DATA_PROVIDED);
    assert_eq!(h.bytes(g, PG as usize), data[PG as usize..]);
}

#[test]
fn unlock_sync_terminate() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(8 * PG).read_only(true));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    let (_, s) = h.simple(&mut rq, req::DATA_UNLOCK, 0, 0, PG, Access::WRITE.bits());
    h.kick_req();
    h.run_until(|| rq.used_count() == 2);
    let r = h.response(s);
    assert_eq!((r.status, r.lock), (status::OK, Access::WRITE.bits()));
    assert_eq!(p.unlocks(), 1);

    let (_, s) = h.simple(&mut rq, req::SYNC, 0, 0, 0, 0);
    h.kick_req();
    h.run_until(|| rq.used_count() == 3);
    assert_eq!(h.response(s).status, status::OK);
    assert_eq!(p.syncs(), 1);

    let (_, s) = h.simple(&mut rq, req::TERMINATE, 0, 0, 0, 0);
    h.kick_req();
    h.run_until(|| rq.used_count() == 4);
    assert_eq!(h.response(s).status, status::OK);
    assert_eq!(p.terminates(), 1);
    assert!(p.control(KERNEL).is_none());

    // After TERMINATE the object needs a new INIT.
    let f = h.alloc.frames(PG);
    let (_, r) = h.data_request(&mut rq, 0, 0, PG, &[(f, PG as u32)]);
    assert_eq!(r.status, status::BAD_STATE);
    assert_eq!(h.init(&mut rq, 0).status, status::OK);
}

#[test]
fn unlock_without_feature_is_unsupported() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(8 * PG));
    let f = all_features() & !(1 << VIRTIO_PAGER_F_UNLOCK);
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], f);
    h.init(&mut rq, 0);
    let (_, s) = h.simple(&mut rq, req::DATA_UNLOCK, 0, 0, PG, Access::WRITE.bits());
    h.kick_req();
    h.run_until(|| rq.used_count() == 2);
    assert_eq!(h.response(s).status, status::UNSUPPORTED);
    assert_eq!(p.unlocks(), 0);
}

#[test]
fn object_state_rules() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::filled(8 * PG, pattern));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    let f = h.alloc.frames(PG);
    let (_, r) = h.data_request(&mut rq, 0, 0, PG, &[(f, PG as u32)]);
    assert_eq!(r.status, status::BAD_STATE, "data before INIT");
    assert_eq!(h.init(&mut rq, 0).status, status::OK);
    assert_eq!(h.init(&mut rq, 0).status, status::BAD_STATE, "INIT twice");
    let (_, r) = h.data_request(&mut rq, 5, 0, PG, &[(f, PG as u32)]);
    assert_eq!(r.status, status::NO_OBJECT);
    let (_, r) = h.data_request(&mut rq, 0, 8 * PG, PG, &[(f, PG as u32)]);
    assert_eq!(r.status, status::PAST_END, "pager error mapped to a status");
    assert_eq!(p.data_requests(), 0);
}

#[test]
fn one_kick_many_requests_one_interrupt_inline() {
    one_kick_many_requests_one_interrupt(MemPager::filled(128 * PG, pattern), true);
}

#[test]
fn one_kick_many_requests_one_interrupt_workers() {
    one_kick_many_requests_one_interrupt(MemPager::filled(128 * PG, pattern).blocking(), false);
}

fn one_kick_many_requests_one_interrupt(p: MemPager, inline: bool) {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(p);
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    let _ = h.irq_count();
    const N: u64 = 64;
    let mut reqs = Vec::new();
    for i in 0..N {
        let hd = h.header(req::DATA_REQUEST, 0, i * PG, PG, 1);
        let f = h.alloc.frames(PG);
        let s = h.status();
        reqs.push((
            rq.push(&[(hd, 32, false), (f, PG as u32, true), (s, 24, true)]),
            f,
            s,
            i,
        ));
    }
    // Drive the device by hand to observe the batching exactly: one pass
    // over the ring, then retire all completions at once.
    let mut dev = h.dev.lock().expect("lock");
    // However slow this build is, the whole batch fits one pass.
    dev.inline_time_per_pass = std::time::Duration::from_secs(3600);
    // And stays on the event loop (no share for the workers).
    dev.set_parallel_batches(false);
    let before = dev.stats();
    dev.process_request_queue();
    let done = dev.completions.clone();
    while done.in_flight() > 0 {
        wait_readable(done.evt());
        let _ = done.evt().read();
    }
    dev.process_completions();
    let after = dev.stats();
    assert_eq!(
        after.interrupts - before.interrupts,
        1,
        "one interrupt for the whole batch"
    );
    // All within one pass's inline allowance.
    let want_inline = if inline { N } else { 0 };
    assert_eq!(after.inline - before.inline, want_inline);
    drop(dev);
    assert_eq!(rq.used_count(), 1 + N as u16);
    let mut seen: Vec<u16> = (1..=N as u16).map(|i| rq.used(i).0).collect();
    seen.sort_unstable();
    let mut heads: Vec<u16> = reqs.iter().map(|r| r.0).collect();
    heads.sort_unstable();
    assert_eq!(seen, heads);
    for (_, f, s, i) in reqs {
        assert_eq!(h.response(s).status, status::OK);
        assert_eq!(h.bytes(f, PG as usize), p.contents(i * PG, PG as usize));
    }
    assert_eq!(h.irq_count(), 1);
}

fn wait_readable(fd: &EventFd) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a 10 s cap turns a bug into a failure, not a hang.
    let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert!(n > 0, "no completion arrived");
}

/// A pager whose data_request for one offset waits for a gate, to make
/// completions happen out of order deterministically.
struct GatedPager {
    inner: MemPager,
    gated: u64,
    open: Mutex<bool>,
    cv: Condvar,
}

impl GatedPager {
    fn release(&self) {
        *self.open.lock().expect("lock") = true;
        self.cv.notify_all();
    }
}

impl Pager for GatedPager {
    fn init(&self, k: KernelId, c: Arc<dyn KernelControl>) -> PResult<ObjectInfo> {
        self.inner.init(k, c)
    }
    fn data_request(
        &self,
        k: KernelId,
        o: ObjectOffset,
        l: u64,
        d: Access,
        b: &[VolatileSlice<'_>],
    ) -> PResult<DataReply> {
        if o.raw() == self.gated {
            let mut open = self.open.lock().expect("lock");
            while !*open {
                open = self.cv.wait(open).expect("wait");
            }
        }
        self.inner.data_request(k, o, l, d, b)
    }
    fn data_write(
        &self,
        k: KernelId,
        o: ObjectOffset,
        l: u64,
        b: &[VolatileSlice<'_>],
    ) -> PResult<()> {
        self.inner.data_write(k, o, l, b)
    }
    fn data_unlock(&self, k: KernelId, o: ObjectOffset, l: u64, d: Access) -> PResult<UnlockReply> {
        self.inner.data_unlock(k, o, l, d)
    }
    fn extent(&self) -> PResult<u64> {
        self.inner.extent()
    }
    fn sync(&self) -> PResult<()> {
        self.inner.sync()
    }
    fn terminate(&self, k: KernelId) -> PResult<()> {
        self.inner.terminate(k)
    }
    fn describe(&self) -> String {
        "gated".into()
    }
}

fn gated() -> Arc<GatedPager> {
    Arc::new(GatedPager {
        inner: MemPager::filled(16 * PG, pattern),
        gated: 0,
        open: Mutex::new(false),
        cv: Condvar::new(),
    })
}

/// Every guest notification counts, however many one wake-up of the
/// device takes together (an ioeventfd's counter sums the writes).
#[test]
fn doorbells_count_every_notification_of_either_queue() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(8 * PG));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p)], all_features());
    h.init(&mut rq, 0);
    let before = h.dev.lock().expect("lock").stats().doorbells;
    for _ in 0..3 {
        h.kick_req();
    }
    h.kick_ev();
    let counter = h.dev.lock().expect("lock").doorbell_counter();
    h.run_until(|| counter.load(std::sync::atomic::Ordering::Relaxed) >= before + 4);
    h.em.run_with_timeout(0).expect("event loop");
    assert_eq!(h.dev.lock().expect("lock").stats().doorbells, before + 4);
}

#[test]
fn completions_may_come_out_of_order() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = gated();
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("g", p.clone())], all_features());
    h.init(&mut rq, 0);
    let mut heads = Vec::new();
    for off in [0, PG] {
        let hd = h.header(req::DATA_REQUEST, 0, off, PG, 1);
        let f = h.alloc.frames(PG);
        let s = h.status();
        heads.push(rq.push(&[(hd, 32, false), (f, PG as u32, true), (s, 24, true)]));
    }
    h.kick_req();
    h.run_until(|| rq.used_count() == 2);
    assert_eq!(
        rq.used(1).0,
        heads[1],
        "the second request overtook the blocked first"
    );
    p.release();
    h.run_until(|| rq.used_count() == 3);
    assert_eq!(rq.used(2).0, heads[0]);
}

#[test]
fn reset_waits_for_in_flight_work_and_drops_its_completion() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = gated();
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("g", p.clone())], all_features());
    h.init(&mut rq, 0);
    let hd = h.header(req::DATA_REQUEST, 0, 0, PG, 1);
    let f = h.alloc.frames(PG);
    let s = h.status();
    rq.push(&[(hd, 32, false), (f, PG as u32, true), (s, 24, true)]);
    h.kick_req();
    // Hand the request to a worker (it blocks on the gate).
    h.dev.lock().expect("lock").process_request_queue();
    let done = h.dev.lock().expect("lock").completions.clone();
    assert_eq!(done.in_flight(), 1);
    h.dev.lock().expect("lock").reset();
    assert!(
        h.dev.lock().expect("lock").reset_pending(),
        "worker still owns guest frames"
    );
    p.release();
    while done.in_flight() > 0 {
        wait_readable(done.evt());
        let _ = done.evt().read();
    }
    assert!(!h.dev.lock().expect("lock").reset_pending());
    h.dev.lock().expect("lock").process_completions();
    assert_eq!(
        rq.used_count(),
        1,
        "stale completion not added to the old ring"
    );
    assert!(
        p.inner.terminates() >= 1,
        "reset terminated the initialised object"
    );
}

#[test]
fn events_are_delivered_into_posted_buffers() {
    let mem = test_mem();
    let (mut rq, mut eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(64 * PG));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    let c = p.control(KERNEL).expect("control");
    // data_lock, flush_request, clean_request, cache, destroy, offer.
    c.lock_request(ObjectOffset(PG), 2 * PG, Access::WRITE, false, false)
        .expect("lock");
    c.lock_request(ObjectOffset(0), PG, Access::ALL, false, true)
        .expect("flush");
    c.lock_request(ObjectOffset(0), PG, Access::NONE, true, false)
        .expect("clean");
    c.set_cache(true).expect("cache");
    let offered: Vec<u8> = (0..2 * PG).map(|i| (i % 7) as u8).collect();
    c.offer(ObjectOffset(4 * PG), &offered, Access::WRITE)
        .expect("offer");
    c.destroy("bye").expect("destroy");
    assert!(
        c.lock_request(ObjectOffset(1), PG, Access::NONE, false, false)
            .is_err(),
        "unaligned refused"
    );

    // Queued is not delivered: nothing counted before the guest takes them.
    let counted = |h: &Harness| h.dev.lock().expect("lock").object_events();
    assert_eq!(counted(&h), vec![super::ObjectEvents::default()]);

    let mut bufs = Vec::new();
    for _ in 0..6 {
        let slot = h.alloc.small(EVENT_SIZE as u64);
        let fr = h.alloc.frames(2 * PG);
        bufs.push((
            eq.push(&[(slot, 32, true), (fr, 2 * PG as u32, true)]),
            slot,
            fr,
        ));
    }
    h.kick_ev();
    h.run_until(|| eq.used_count() == 6);
    let read_ev = |h: &Harness, a: u64| {
        let b: [u8; EVENT_SIZE] = h.bytes(a, EVENT_SIZE).try_into().expect("32");
        Event::from_bytes(&b)
    };
    let evs: Vec<Event> = bufs.iter().map(|b| read_ev(&h, b.1)).collect();
    assert_eq!(
        (
            evs[0].ev_type,
            evs[0].flags,
            evs[0].offset,
            evs[0].length,
            evs[0].lock
        ),
        (event::LOCK_REQUEST, 0, PG, 2 * PG, 2)
    );
    assert_eq!(
        (evs[1].ev_type, evs[1].flags),
        (event::LOCK_REQUEST, event::F_FLUSH)
    );
    assert_eq!(
        (evs[2].ev_type, evs[2].flags),
        (event::LOCK_REQUEST, event::F_CLEAN)
    );
    assert_eq!(
        (evs[3].ev_type, evs[3].flags),
        (event::CACHE, event::F_MAY_CACHE)
    );
    assert_eq!(
        (evs[4].ev_type, evs[4].offset, evs[4].length),
        (event::DATA_PROVIDED, 4 * PG, 2 * PG)
    );
    assert_eq!(h.bytes(bufs[4].2, 2 * PG as usize), offered);
    assert_eq!(evs[5].ev_type, event::DESTROY);
    assert!(evs.iter().all(|e| e.object_id == 0));
    assert_eq!(eq.used(4).1, 32 + 2 * PG as u32);
    assert_eq!(eq.used(0).1, 32);
    assert_eq!(
        counted(&h),
        vec![super::ObjectEvents {
            lock_requests: 3,
            cache: 1,
            data_provided: 1,
            destroy: 1,
            refused: 0,
        }]
    );
}

impl Harness {
    /// A LOCK_COMPLETED chain for `tag` (carried in the header's reserved
    /// field), submitted and waited for.
    fn lock_completed(
        &mut self,
        rq: &mut Ring,
        obj: u32,
        offset: u64,
        length: u64,
        tag: u32,
    ) -> Response {
        let a = self.alloc.small(REQ_HDR_SIZE as u64);
        let hdr = RequestHeader {
            req_type: req::LOCK_COMPLETED,
            object_id: obj,
            offset,
            length,
            reserved: tag,
            ..Default::default()
        };
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(a))
            .expect("write header");
        let s = self.status();
        let (len, r) = self.one(rq, &[(a, 32, false), (s, 24, true)], s);
        assert_eq!(len, RESP_SIZE as u32);
        r
    }

    /// Posts one event buffer, lets the device fill it, returns the event.
    fn next_event(&mut self, eq: &mut Ring) -> Event {
        let slot = self.alloc.small(EVENT_SIZE as u64);
        let before = eq.used_count();
        eq.push(&[(slot, 32, true)]);
        self.kick_ev();
        self.run_until(|| eq.used_count() != before);
        let b: [u8; EVENT_SIZE] = self.bytes(slot, EVENT_SIZE).try_into().expect("32");
        Event::from_bytes(&b)
    }
}

const CLEAN_WRITE: LockRequest = LockRequest {
    lock: Access::WRITE,
    clean: true,
    flush: false,
};

#[test]
fn lock_request_with_reply_is_tagged_and_its_completion_reaches_the_pager_once() {
    let mem = test_mem();
    let (mut rq, mut eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(1024 * PG));
    let f = all_features() | (1 << VIRTIO_PAGER_F_LOCK_COMPLETED);
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], f);
    h.init(&mut rq, 0);
    let c = p.control(KERNEL).expect("control");
    // Two requests on overlapping ranges: told apart by their tags.
    c.lock_request_with_reply(ObjectOffset(PG), 512 * PG, CLEAN_WRITE, 0xabc)
        .expect("asked");
    c.lock_request_with_reply(ObjectOffset(PG), 512 * PG, CLEAN_WRITE, 0xdef)
        .expect("asked");
    let e1 = h.next_event(&mut eq);
    let e2 = h.next_event(&mut eq);
    for e in [e1, e2] {
        assert_eq!(
            (e.ev_type, e.flags, e.offset, e.length, e.lock),
            (
                event::LOCK_REQUEST,
                event::F_CLEAN | event::F_REPLY,
                PG,
                512 * PG,
                Access::WRITE.bits()
            )
        );
    }
    assert_ne!(e1.tag, e2.tag);
    // A completion must name the request's exact range (which may exceed
    // the transfer limit: a lock covers any range).
    let r = h.lock_completed(&mut rq, 0, 0, 512 * PG, e2.tag);
    assert_eq!(r.status, status::BAD_STATE);
    assert!(p.lock_completions().is_empty());
    let r = h.lock_completed(&mut rq, 0, PG, 512 * PG, e2.tag);
    assert_eq!(r.status, status::OK);
    assert_eq!(p.lock_completions(), vec![(KERNEL, PG, 512 * PG, 0xdef)]);
    // Once only; an unknown tag is refused without reaching the pager.
    for tag in [e2.tag, e2.tag.wrapping_add(100)] {
        let r = h.lock_completed(&mut rq, 0, PG, 512 * PG, tag);
        assert_eq!(r.status, status::BAD_STATE);
    }
    let r = h.lock_completed(&mut rq, 0, PG, 512 * PG, e1.tag);
    assert_eq!(r.status, status::OK);
    assert_eq!(
        p.lock_completions(),
        vec![(KERNEL, PG, 512 * PG, 0xdef), (KERNEL, PG, 512 * PG, 0xabc)]
    );
    // A plain lock request carries no tag and no REPLY flag.
    c.lock_request(ObjectOffset(0), PG, Access::WRITE, true, false)
        .expect("plain");
    let e = h.next_event(&mut eq);
    assert_eq!((e.flags, e.tag), (event::F_CLEAN, 0));
}

#[test]
fn lock_completion_needs_its_feature() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(8 * PG));
    // An old driver: everything but F_LOCK_COMPLETED.
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    let c = p.control(KERNEL).expect("control");
    let e = c
        .lock_request_with_reply(ObjectOffset(0), PG, CLEAN_WRITE, 1)
        .unwrap_err();
    assert!(matches!(e, PagerError::Unsupported(_)), "{e:?}");
    assert_eq!(h_pending(&h), 0, "nothing queued for the driver");
    let r = h.lock_completed(&mut rq, 0, 0, PG, 0);
    assert_eq!(r.status, status::UNSUPPORTED);
    assert!(p.lock_completions().is_empty());
}

#[test]
fn replies_waiting_are_bounded_and_end_with_their_object() {
    let mem = test_mem();
    let (mut rq, mut eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(64 * PG));
    let f = all_features() | (1 << VIRTIO_PAGER_F_LOCK_COMPLETED);
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], f);
    h.init(&mut rq, 0);
    let c = p.control(KERNEL).expect("control");
    for i in 0..MAX_PENDING_REPLIES_PER_OBJECT as u64 {
        c.lock_request_with_reply(ObjectOffset(0), PG, CLEAN_WRITE, i)
            .expect("within the bound");
    }
    // One more is refused: the pager is told, nothing waits for it.
    assert!(
        c.lock_request_with_reply(ObjectOffset(0), PG, CLEAN_WRITE, 99)
            .is_err()
    );
    assert_eq!(h.dev.lock().expect("lock").object_events()[0].refused, 1);
    let first = h.next_event(&mut eq);
    // Answering one makes room for one.
    assert_eq!(
        h.lock_completed(&mut rq, 0, 0, PG, first.tag).status,
        status::OK
    );
    c.lock_request_with_reply(ObjectOffset(0), PG, CLEAN_WRITE, 100)
        .expect("room again");
    // TERMINATE ends the object's waiting requests: after a new INIT
    // their tags name nothing.
    let second = h.next_event(&mut eq);
    let (_, s) = h.simple(&mut rq, req::TERMINATE, 0, 0, 0, 0);
    h.kick_req();
    let used = rq.used_count();
    h.run_until(|| rq.used_count() == used + 1);
    assert_eq!(h.response(s).status, status::OK);
    assert_eq!(h.dev.lock().expect("lock").replies_waiting(), 0);
    h.init(&mut rq, 0);
    assert_eq!(
        h.lock_completed(&mut rq, 0, 0, PG, second.tag).status,
        status::BAD_STATE
    );
    assert_eq!(p.lock_completions(), vec![(KERNEL, 0, PG, 0)]);
}

#[test]
fn event_queue_exhaustion_backs_up_then_refuses() {
    let mem = test_mem();
    let (mut rq, mut eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(64 * PG));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    let c = p.control(KERNEL).expect("control");
    for i in 0..3 {
        c.lock_request(ObjectOffset(i * PG), PG, Access::WRITE, false, false)
            .expect("queued");
    }
    // No buffers posted: the events wait.
    let dev = h.dev.clone();
    h.run_until(|| dev.lock().expect("lock").pending_events() == 3);
    assert_eq!(eq.used_count(), 0);
    let mut slots = Vec::new();
    for _ in 0..2 {
        let s = h.alloc.small(32);
        eq.push(&[(s, 32, true)]);
        slots.push(s);
    }
    h.kick_ev();
    h.run_until(|| eq.used_count() == 2);
    assert_eq!(h_pending(&h), 1, "one event still waits for a buffer");
    // Order is preserved across the stall.
    let b: [u8; 32] = h.bytes(slots[1], 32).try_into().expect("32");
    assert_eq!(Event::from_bytes(&b).offset, PG);
    // An offer with no frame room is dropped, never blocks the queue.
    c.offer(ObjectOffset(0), &vec![0u8; PG as usize], Access::NONE)
        .expect("offer");
    let s = h.alloc.small(32);
    eq.push(&[(s, 32, true)]);
    h.kick_ev();
    h.run_until(|| eq.used_count() == 3);
    let b: [u8; 32] = h.bytes(s, 32).try_into().expect("32");
    assert_eq!(Event::from_bytes(&b).offset, 2 * PG);
    // Fill the backlog: the pager is told, nothing is lost silently.
    let mut refused = false;
    for _ in 0..=MAX_PENDING_EVENTS {
        if c.lock_request(ObjectOffset(0), PG, Access::WRITE, false, false)
            .is_err()
        {
            refused = true;
            break;
        }
    }
    assert!(refused);
}

#[test]
fn a_flooding_pager_gets_only_its_share_of_the_backlog() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let (pa, pb) = (
        Arc::new(MemPager::new(64 * PG)),
        Arc::new(MemPager::new(64 * PG)),
    );
    let objects = vec![object("a", pa.clone()), object("b", pb.clone())];
    let mut h = Harness::new(&mem, &rq, &eq, objects, all_features());
    h.init(&mut rq, 0);
    h.init(&mut rq, 1);
    let (ca, cb) = (
        pa.control(KERNEL).expect("a"),
        pb.control(KERNEL).expect("b"),
    );
    // No event buffers posted: object a's pager floods until refused.
    let mut queued = 0;
    for _ in 0..MAX_PENDING_EVENTS {
        if ca
            .lock_request(ObjectOffset(0), PG, Access::WRITE, false, false)
            .is_err()
        {
            break;
        }
        queued += 1;
    }
    assert_eq!(queued, MAX_PENDING_EVENTS_PER_OBJECT);
    // Offers are refused too once a's share is used up.
    assert!(
        ca.offer(ObjectOffset(0), &[0u8; PG as usize], Access::NONE)
            .is_err()
    );
    // b's pager still gets its calls through.
    for _ in 0..8 {
        cb.lock_request(ObjectOffset(0), PG, Access::NONE, true, false)
            .expect("b is not starved by a");
    }
    let counted = h.dev.lock().expect("lock").object_events();
    assert_eq!(counted[0].refused, 2);
    assert_eq!(counted[1].refused, 0);
    assert_eq!(h_pending(&h), MAX_PENDING_EVENTS_PER_OBJECT + 8);
}

fn h_pending(h: &Harness) -> usize {
    h.dev.lock().expect("lock").pending_events()
}

#[test]
fn malformed_event_buffers_are_returned_unused() {
    let mem = test_mem();
    let (mut rq, mut eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(64 * PG));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    let s = h.alloc.small(64);
    eq.push(&[(s, 32, false)]); // device-readable: useless
    eq.push(&[(s, 16, true)]); // too small
    eq.push(&[(s, 32, true), (s, 4096, true)]); // overlapping, unaligned frame
    h.kick_ev();
    h.run_until(|| eq.used_count() == 3);
    for i in 0..3 {
        assert_eq!(eq.used(i).1, 0);
    }
    assert_eq!(h.stats().event_bufs_rejected, 3);
}

/// Each malformed request gets its used buffer back with the given used
/// length and (if a status slot exists) status; the device keeps serving.
fn expect_rejected(
    descs: impl FnOnce(&mut Harness, &mut Ring) -> (u16, Option<u64>),
    want_status: Option<u32>,
) {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::filled(64 * PG, pattern));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    let (head, status_at) = descs(&mut h, &mut rq);
    h.kick_req();
    h.run_until(|| rq.used_count() == 2);
    let (id, len) = rq.used(1);
    assert_eq!(id, head);
    match (want_status, status_at) {
        (Some(code), Some(s)) => {
            assert_eq!(len, RESP_SIZE as u32);
            assert_eq!(h.response(s).status, code);
        }
        _ => assert_eq!(len, 0, "no status slot: nothing written"),
    }
    assert_eq!(p.data_requests(), 0, "nothing reached the pager");
    assert!(!h.dev.lock().expect("lock").needs_reset());
    // Still alive.
    let f = h.alloc.frames(PG);
    let (_, r) = h.data_request(&mut rq, 0, 0, PG, &[(f, PG as u32)]);
    assert_eq!(r.status, status::OK);
}

fn data_req(h: &mut Harness, off: u64, len: u64) -> (u64, u64) {
    (h.header(req::DATA_REQUEST, 0, off, len, 1), h.status())
}

// One test per validation rule of docs/virtio-pager.md §4.4; the spec's
// rule table names them. A chain with a usable response slot gets the status
// there (used len 24); one without gets used len 0 (§4.6).

/// header, frames, response as one chain (frames device-writable unless
/// `frames_writable` is false).
fn chain(hd: u64, frames: &[(u64, u32)], frames_writable: bool, s: u64) -> Vec<(u64, u32, bool)> {
    let mut d = vec![(hd, 32, false)];
    d.extend(frames.iter().map(|&(a, l)| (a, l, frames_writable)));
    d.push((s, 24, true));
    d
}

/// Publishes `descs` through one indirect table; returns the head.
fn push_indirect(h: &mut Harness, rq: &mut Ring, descs: &[(u64, u32, bool)]) -> u16 {
    let table = h.alloc.small(16 * descs.len() as u64);
    for (i, &(a, l, w)) in descs.iter().enumerate() {
        let last = i + 1 == descs.len();
        let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
        let next = if last { 0 } else { i as u16 + 1 };
        let d = RawDescriptor::from(SplitDescriptor::new(a, l, flags, next));
        h.mem
            .write_obj(d, GuestAddress(table + 16 * i as u64))
            .expect("indirect");
    }
    let len = 16 * descs.len() as u32;
    let head = rq.write_chain(&[(table, len, false)]);
    rq.store(head, table, len, F_INDIRECT, 0);
    rq.publish(head);
    head
}

/// A DATA_REQUEST with `n` one-page frames.
fn many_frames(h: &mut Harness, n: u64) -> Vec<(u64, u32, bool)> {
    let (hd, s) = data_req(h, 0, n * PG);
    let f = h.alloc.frames(n * PG);
    let frames: Vec<(u64, u32)> = (0..n).map(|i| (f + i * PG, PG as u32)).collect();
    chain(hd, &frames, true, s)
}

#[test]
fn rule_chain_at_most_258_descriptors() {
    // Header + 257 frames + response: only an indirect table is that long.
    expect_rejected(
        |h, rq| {
            let d = many_frames(h, 257);
            (push_indirect(h, rq, &d), None)
        },
        None,
    );
}

#[test]
fn rule_chain_of_258_descriptors_is_accepted() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::filled(512 * PG, pattern));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    let d = many_frames(&mut h, 256);
    let s = d[d.len() - 1].0;
    push_indirect(&mut h, &mut rq, &d);
    h.kick_req();
    h.run_until(|| rq.used_count() == 2);
    assert_eq!(rq.used(1).1, (256 * PG) as u32 + RESP_SIZE as u32);
    let r = h.response(s);
    assert_eq!((r.status, r.bytes), (status::OK, 256 * PG));
}

#[test]
fn rule_chain_needs_header_and_response() {
    expect_rejected(
        |h, rq| {
            let (hd, _) = data_req(h, 0, PG);
            (rq.push(&[(hd, 32, false)]), None)
        },
        None,
    );
}

#[test]
fn rule_chain_must_not_loop() {
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, PG);
            let f = h.alloc.frames(PG);
            let head = rq.write_chain(&chain(hd, &[(f, PG as u32)], true, s));
            // The response descriptor points back at the head.
            rq.store(head + 2, s, 24, F_WRITE | F_NEXT, head);
            rq.publish(head);
            (head, None)
        },
        None,
    );
}

#[test]
fn rule_chain_must_not_dangle() {
    expect_rejected(
        |h, rq| {
            let (hd, _) = data_req(h, 0, PG);
            let head = rq.write_chain(&[(hd, 32, false)]);
            rq.store(head, hd, 32, F_NEXT, QUEUE_SIZE + 5);
            rq.publish(head);
            (head, None)
        },
        None,
    );
}

#[test]
fn rule_no_zero_length_descriptor() {
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, PG);
            let f = h.alloc.frames(PG);
            (
                rq.push(&chain(hd, &[(f, PG as u32), (f + PG, 0)], true, s)),
                None,
            )
        },
        None,
    );
}

#[test]
fn rule_descriptors_inside_guest_memory() {
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, PG);
            (
                rq.push(&chain(hd, &[(MEM_SIZE - PG / 2, PG as u32)], true, s)),
                None,
            )
        },
        None,
    );
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, PG);
            (rq.push(&chain(hd, &[(0x40_0000, u32::MAX)], true, s)), None)
        },
        None,
    );
}

#[test]
fn rule_descriptors_do_not_wrap_the_address_space() {
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, PG);
            (
                rq.push(&chain(hd, &[(u64::MAX - 0xfff, PG as u32)], true, s)),
                None,
            )
        },
        None,
    );
}

#[test]
fn rule_header_device_readable() {
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, PG);
            let f = h.alloc.frames(PG);
            (
                rq.push(&[(hd, 32, true), (f, PG as u32, true), (s, 24, true)]),
                Some(s),
            )
        },
        Some(status::BAD_REQUEST),
    );
}

#[test]
fn rule_header_exactly_32_bytes() {
    for len in [16, 48] {
        expect_rejected(
            |h, rq| {
                let (hd, s) = data_req(h, 0, PG);
                let f = h.alloc.frames(PG);
                (
                    rq.push(&[(hd, len, false), (f, PG as u32, true), (s, 24, true)]),
                    Some(s),
                )
            },
            Some(status::BAD_REQUEST),
        );
    }
}

#[test]
fn rule_response_device_writable() {
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, PG);
            let f = h.alloc.frames(PG);
            (
                rq.push(&[(hd, 32, false), (f, PG as u32, true), (s, 24, false)]),
                None,
            )
        },
        None,
    );
}

#[test]
fn rule_response_exactly_24_bytes() {
    for len in [16, 32] {
        expect_rejected(
            |h, rq| {
                let (hd, s) = data_req(h, 0, PG);
                let f = h.alloc.frames(PG);
                (
                    rq.push(&[(hd, 32, false), (f, PG as u32, true), (s, len, true)]),
                    None,
                )
            },
            None,
        );
    }
}

#[test]
fn rule_descriptors_do_not_overlap() {
    // A frame overlapping the response slot.
    expect_rejected(
        |h, rq| {
            let (hd, _) = data_req(h, 0, PG);
            let f = h.alloc.frames(PG);
            (
                rq.push(&[(hd, 32, false), (f, PG as u32, true), (f + 64, 24, true)]),
                Some(f + 64),
            )
        },
        Some(status::BAD_REQUEST),
    );
    // Two frames sharing a page.
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, 2 * PG);
            let f = h.alloc.frames(PG);
            (
                rq.push(&chain(hd, &[(f, PG as u32), (f, PG as u32)], true, s)),
                Some(s),
            )
        },
        Some(status::BAD_REQUEST),
    );
    // The header inside a frame.
    expect_rejected(
        |h, rq| {
            let f = h.alloc.frames(PG);
            let hd = RequestHeader {
                req_type: req::DATA_REQUEST,
                length: PG,
                access: 1,
                ..Default::default()
            };
            h.mem
                .write_slice(&hd.to_bytes(), GuestAddress(f + 128))
                .expect("header");
            let s = h.status();
            (
                rq.push(&chain(f + 128, &[(f, PG as u32)], true, s)),
                Some(s),
            )
        },
        Some(status::BAD_REQUEST),
    );
}

#[test]
fn rule_frames_have_the_right_direction() {
    // Device-readable frames for a DATA_REQUEST (the device must write them).
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, PG);
            let f = h.alloc.frames(PG);
            (rq.push(&chain(hd, &[(f, PG as u32)], false, s)), Some(s))
        },
        Some(status::BAD_REQUEST),
    );
    // One device-readable frame among writable ones.
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, 2 * PG);
            let f = h.alloc.frames(2 * PG);
            (
                rq.push(&[
                    (hd, 32, false),
                    (f, PG as u32, true),
                    (f + PG, PG as u32, false),
                    (s, 24, true),
                ]),
                Some(s),
            )
        },
        Some(status::BAD_REQUEST),
    );
    // Device-writable frames for a DATA_WRITE (the device must read them).
    expect_rejected(
        |h, rq| {
            let hd = h.header(req::DATA_WRITE, 0, 0, PG, 0);
            let s = h.status();
            let f = h.alloc.frames(PG);
            (rq.push(&chain(hd, &[(f, PG as u32)], true, s)), Some(s))
        },
        Some(status::BAD_REQUEST),
    );
}

#[test]
fn rule_frames_page_aligned() {
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, PG);
            let f = h.alloc.frames(2 * PG) + 512;
            (rq.push(&chain(hd, &[(f, PG as u32)], true, s)), Some(s))
        },
        Some(status::BAD_RANGE),
    );
}

#[test]
fn rule_frames_whole_pages() {
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, PG);
            let f = h.alloc.frames(2 * PG);
            (
                rq.push(&chain(hd, &[(f, PG as u32 + 512)], true, s)),
                Some(s),
            )
        },
        Some(status::BAD_RANGE),
    );
}

#[test]
fn rule_at_most_256_frames() {
    // The parser's own limit (the device's chain limit of 258 descriptors
    // stops 257 frames earlier, see rule_chain_at_most_258_descriptors).
    let limits = Limits {
        num_objects: 1,
        max_frames: MAX_FRAME_SEGMENTS,
        max_request_bytes: u64::MAX,
        readahead: true,
        unlock: true,
        lock_completed: true,
    };
    let hdr = RequestHeader {
        req_type: req::DATA_REQUEST,
        length: PG,
        access: 1,
        ..Default::default()
    };
    let seg = |addr: u64, len: u32, writable: bool| crate::virtio::Segment {
        addr: GuestAddress(addr),
        len,
        writable,
    };
    for (frames, ok) in [(256u64, true), (257, false)] {
        let mut segs = vec![seg(0, 32, false)];
        segs.extend((0..frames).map(|i| seg(PG * (1 + i), PG as u32, true)));
        segs.push(seg(PG * (2 + frames), 24, true));
        let r = parse_request(&segs, &limits, |_| Some(hdr.to_bytes()));
        match r {
            Ok(_) => assert!(ok, "{frames} frames accepted"),
            Err(e) => {
                assert!(!ok, "{frames} frames refused: {e}");
                assert_eq!(e.status(), status::BAD_RANGE);
            }
        }
    }
}

#[test]
fn rule_at_most_1_mib_of_frames() {
    // One page asked for, 1 MiB + 1 page offered as read-ahead room.
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, PG);
            let f = h.alloc.frames(257 * PG);
            (
                rq.push(&chain(hd, &[(f, 257 * PG as u32)], true, s)),
                Some(s),
            )
        },
        Some(status::BAD_RANGE),
    );
}

#[test]
fn rule_known_type() {
    for t in [0u16, 7, 99, u16::MAX] {
        expect_rejected(
            |h, rq| {
                let hd = h.header(t, 0, 0, PG, 1);
                let s = h.status();
                let f = h.alloc.frames(PG);
                (rq.push(&chain(hd, &[(f, PG as u32)], true, s)), Some(s))
            },
            Some(status::UNSUPPORTED),
        );
    }
}

/// A DATA_REQUEST with byte `at` of its header set to `v`.
fn poked_header(at: u64, v: u8) -> impl FnOnce(&mut Harness, &mut Ring) -> (u16, Option<u64>) {
    move |h, rq| {
        let (hd, s) = data_req(h, 0, PG);
        h.mem
            .write_slice(&[v], GuestAddress(hd + at))
            .expect("poke");
        let f = h.alloc.frames(PG);
        (rq.push(&chain(hd, &[(f, PG as u32)], true, s)), Some(s))
    }
}

#[test]
fn rule_flags_zero() {
    expect_rejected(poked_header(2, 1), Some(status::BAD_REQUEST));
    expect_rejected(poked_header(3, 0x80), Some(status::BAD_REQUEST));
}

#[test]
fn rule_padding_zero() {
    for at in 25..28 {
        expect_rejected(poked_header(at, 1), Some(status::BAD_REQUEST));
    }
}

#[test]
fn rule_reserved_zero() {
    for at in 28..32 {
        expect_rejected(poked_header(at, 1), Some(status::BAD_REQUEST));
    }
}

#[test]
fn rule_object_id_in_table() {
    for obj in [1, u32::MAX] {
        expect_rejected(
            |h, rq| {
                let hd = h.header(req::DATA_REQUEST, obj, 0, PG, 1);
                let s = h.status();
                let f = h.alloc.frames(PG);
                (rq.push(&chain(hd, &[(f, PG as u32)], true, s)), Some(s))
            },
            Some(status::NO_OBJECT),
        );
    }
}

/// A request of type `t` with one page-sized frame (device-writable for
/// DATA_REQUEST, readable otherwise).
fn one_frame(
    t: u16,
    offset: u64,
    length: u64,
    access: u8,
) -> impl FnOnce(&mut Harness, &mut Ring) -> (u16, Option<u64>) {
    move |h, rq| {
        let hd = h.header(t, 0, offset, length, access);
        let s = h.status();
        let f = h.alloc.frames(PG);
        let w = t == req::DATA_REQUEST;
        (rq.push(&chain(hd, &[(f, PG as u32)], w, s)), Some(s))
    }
}

#[test]
fn rule_offset_page_aligned() {
    for t in [req::DATA_REQUEST, req::DATA_WRITE] {
        let acc = u8::from(t == req::DATA_REQUEST);
        expect_rejected(one_frame(t, 100, PG, acc), Some(status::BAD_RANGE));
    }
    expect_rejected(unlock(100, PG, 1), Some(status::BAD_RANGE));
}

/// A DATA_UNLOCK (no frames).
fn unlock(
    offset: u64,
    length: u64,
    access: u8,
) -> impl FnOnce(&mut Harness, &mut Ring) -> (u16, Option<u64>) {
    move |h, rq| {
        let (head, s) = h.simple(rq, req::DATA_UNLOCK, 0, offset, length, access);
        (head, Some(s))
    }
}

#[test]
fn rule_length_whole_pages() {
    expect_rejected(
        one_frame(req::DATA_REQUEST, 0, 100, 1),
        Some(status::BAD_RANGE),
    );
    expect_rejected(
        one_frame(req::DATA_WRITE, 0, PG + 1, 0),
        Some(status::BAD_RANGE),
    );
    expect_rejected(unlock(0, 100, 1), Some(status::BAD_RANGE));
}

#[test]
fn rule_length_nonzero() {
    expect_rejected(
        one_frame(req::DATA_REQUEST, 0, 0, 1),
        Some(status::BAD_RANGE),
    );
    expect_rejected(one_frame(req::DATA_WRITE, 0, 0, 0), Some(status::BAD_RANGE));
    expect_rejected(unlock(0, 0, 1), Some(status::BAD_RANGE));
}

#[test]
fn rule_length_at_most_1_mib() {
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, 512 * PG);
            let f = h.alloc.frames(512 * PG);
            (
                rq.push(&chain(hd, &[(f, 512 * PG as u32)], true, s)),
                Some(s),
            )
        },
        Some(status::BAD_RANGE),
    );
    expect_rejected(unlock(0, 257 * PG, 1), Some(status::BAD_RANGE));
}

#[test]
fn rule_offset_plus_length_does_not_overflow() {
    let top = u64::MAX - PG + 1;
    expect_rejected(
        one_frame(req::DATA_REQUEST, top, PG, 1),
        Some(status::BAD_RANGE),
    );
    expect_rejected(
        one_frame(req::DATA_WRITE, top, PG, 0),
        Some(status::BAD_RANGE),
    );
    expect_rejected(unlock(top, PG, 1), Some(status::BAD_RANGE));
    // Read-ahead room counts too: offset + frames must not overflow.
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, top - PG, PG);
            let f = h.alloc.frames(4 * PG);
            (rq.push(&chain(hd, &[(f, 4 * PG as u32)], true, s)), Some(s))
        },
        Some(status::BAD_RANGE),
    );
}

#[test]
fn rule_access_bits_valid() {
    // DATA_REQUEST / DATA_UNLOCK: some of READ|WRITE|EXECUTE, nothing else.
    for acc in [0u8, 0x08, 0x80, 0xff] {
        expect_rejected(
            one_frame(req::DATA_REQUEST, 0, PG, acc),
            Some(status::BAD_REQUEST),
        );
        expect_rejected(unlock(0, PG, acc), Some(status::BAD_REQUEST));
    }
    // DATA_WRITE: none at all.
    expect_rejected(
        one_frame(req::DATA_WRITE, 0, PG, 1),
        Some(status::BAD_REQUEST),
    );
}

#[test]
fn rule_frames_cover_length() {
    // DATA_REQUEST: no frames, or fewer bytes of frames than `length`.
    expect_rejected(
        |h, rq| {
            let (hd, s) = data_req(h, 0, PG);
            (rq.push(&[(hd, 32, false), (s, 24, true)]), Some(s))
        },
        Some(status::BAD_RANGE),
    );
    expect_rejected(
        one_frame(req::DATA_REQUEST, 0, 2 * PG, 1),
        Some(status::BAD_RANGE),
    );
    // DATA_WRITE: frames must be exactly `length`.
    expect_rejected(
        one_frame(req::DATA_WRITE, 0, 2 * PG, 0),
        Some(status::BAD_RANGE),
    );
    expect_rejected(
        |h, rq| {
            let hd = h.header(req::DATA_WRITE, 0, 0, PG, 0);
            let s = h.status();
            let f = h.alloc.frames(2 * PG);
            (
                rq.push(&chain(hd, &[(f, 2 * PG as u32)], false, s)),
                Some(s),
            )
        },
        Some(status::BAD_RANGE),
    );
    // Without READAHEAD, frames beyond `length` are refused too:
    // readahead_fills_offered_frames_only_when_negotiated.
}

#[test]
fn rule_frameless_types_carry_no_range_and_no_frames() {
    for t in [req::INIT, req::TERMINATE, req::SYNC] {
        // Frames where none belong.
        expect_rejected(one_frame(t, 0, 0, 0), Some(status::BAD_RANGE));
        // offset, length and access must be 0.
        for (off, len, acc) in [(PG, 0, 0), (0, PG, 0), (0, 0, 1)] {
            expect_rejected(
                move |h, rq| {
                    let (head, s) = h.simple(rq, t, 0, off, len, acc);
                    (head, Some(s))
                },
                Some(status::BAD_REQUEST),
            );
        }
    }
    // DATA_UNLOCK carries no frames either.
    expect_rejected(
        |h, rq| {
            let hd = h.header(req::DATA_UNLOCK, 0, 0, PG, 1);
            let s = h.status();
            let f = h.alloc.frames(PG);
            (rq.push(&chain(hd, &[(f, PG as u32)], false, s)), Some(s))
        },
        Some(status::BAD_RANGE),
    );
}
#[test]
fn indirect_chains_are_accepted() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::filled(8 * PG, pattern));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    let (hd, s) = data_req(&mut h, PG, PG);
    let f = h.alloc.frames(PG);
    let table = h.alloc.small(3 * 16);
    for (i, (a, l, fl)) in [
        (hd, 32u32, F_NEXT),
        (f, PG as u32, F_WRITE | F_NEXT),
        (s, 24, F_WRITE),
    ]
    .into_iter()
    .enumerate()
    {
        let d = RawDescriptor::from(SplitDescriptor::new(a, l, fl, i as u16 + 1));
        h.mem
            .write_obj(d, GuestAddress(table + 16 * i as u64))
            .expect("indirect");
    }
    let head = rq.write_chain(&[(table, 48, false)]);
    rq.store(head, table, 48, F_INDIRECT, 0);
    rq.publish(head);
    h.kick_req();
    h.run_until(|| rq.used_count() == 2);
    assert_eq!(h.response(s).kind, kind::DATA_PROVIDED);
    assert_eq!(h.bytes(f, PG as usize), p.contents(PG, PG as usize));
}

#[test]
fn broken_avail_index_means_needs_reset() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(8 * PG));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p)], all_features());
    h.init(&mut rq, 0);
    let _ = h.irq_count();
    rq.set_avail_idx(1 + QUEUE_SIZE + 10); // more entries than the ring has
    h.kick_req();
    let dev = h.dev.clone();
    h.run_until(|| dev.lock().expect("lock").needs_reset());
    assert!(h.interrupt.status() & crate::virtio::irq::CONFIG_CHANGE != 0);
    assert!(h.irq_count() > 0);
    assert_eq!(rq.used_count(), 1, "nothing consumed from a broken ring");
}

#[test]
fn config_space_lists_objects() {
    let objs = vec![
        object("alpha", Arc::new(MemPager::new(3 * PG))),
        PagerObject {
            name: "a-very-long-name-that-does-not-fit-in-forty-seven-bytes".into(),
            pager: Arc::new(MemPager::new(PG)),
            read_only: true,
            rate_limit: Default::default(),
        },
    ];
    let dev = PagerDevice::new(KERNEL, objs, 1).expect("device");
    let mut b = vec![0u8; CONFIG_HDR_SIZE + 2 * OBJECT_ENTRY_SIZE + 8];
    dev.read_config(0, &mut b);
    assert_eq!(&b[0..4], &2u32.to_le_bytes());
    assert_eq!(&b[12..16], &4096u32.to_le_bytes());
    let e1 = &b[CONFIG_HDR_SIZE + OBJECT_ENTRY_SIZE..];
    assert_eq!(&e1[0..8], &PG.to_le_bytes());
    assert_eq!(&e1[8..12], &1u32.to_le_bytes());
    assert_eq!(&e1[12..16], &OBJ_F_READ_ONLY.to_le_bytes());
    assert_eq!(e1[16 + 47], 0, "names are NUL terminated");
    assert_eq!(&b[CONFIG_HDR_SIZE + 16..CONFIG_HDR_SIZE + 22], b"alpha\0");
    assert!(
        b[CONFIG_HDR_SIZE + 2 * OBJECT_ENTRY_SIZE..]
            .iter()
            .all(|&x| x == 0),
        "past the end reads 0"
    );
    let mut far = [0xffu8; 4];
    dev.read_config(u64::MAX, &mut far);
    assert_eq!(far, [0; 4]);
}

// §7: the in-flight bound, lifecycle ordering, no stale events.

#[test]
fn republished_heads_wait_on_the_ring_instead_of_growing_host_memory() {
    republished_heads_wait(all_features());
}

#[test]
fn republished_heads_wait_on_the_ring_with_event_idx() {
    republished_heads_wait(all_features() | (1 << features::VIRTIO_RING_F_EVENT_IDX));
}

fn republished_heads_wait(features: u64) {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    // Interrupt on every used entry (only read with EVENT_IDX).
    rq.set_used_event(0);
    // Every request is for offset 0, which blocks until released: nothing
    // completes, so only the bound keeps the device from taking more.
    let p = gated();
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("g", p.clone())], features);
    h.init(&mut rq, 0);
    let mut heads = Vec::new();
    for _ in 0..8 {
        let hd = h.header(req::DATA_REQUEST, 0, 0, PG, 1);
        let f = h.alloc.frames(PG);
        let s = h.status();
        heads.push((rq.write_chain(&chain(hd, &[(f, PG as u32)], true, s)), s));
    }
    let bound = usize::from(QUEUE_SIZE);
    let done = h.dev.lock().expect("lock").completions.clone();
    // A driver publishing the same 8 heads over and over, never waiting.
    let publish_ring_full = |rq: &Ring| {
        for i in 0..bound {
            rq.publish(heads[i % heads.len()].0);
        }
    };
    publish_ring_full(&rq);
    h.kick_req();
    let dev = h.dev.clone();
    h.run_until(|| dev.lock().expect("lock").stats().in_flight == bound as u64);
    // As far ahead again as the ring allows without being broken.
    publish_ring_full(&rq);
    h.kick_req();
    let n = h.em.run_with_timeout(10_000).expect("event loop");
    assert!(n > 0, "the kick was seen");
    let st = h.stats();
    assert_eq!(st.in_flight, bound as u64, "nothing beyond the bound taken");
    assert!(st.throttled > 0);
    assert_eq!(done.in_flight(), bound, "host holds at most QueueSize jobs");
    assert_eq!(rq.used_count(), 1, "nothing completed, nothing rejected");
    assert!(!h.dev.lock().expect("lock").needs_reset());
    // Once requests complete, the chains left on the ring are taken.
    p.release();
    let mut max_in_flight = 0;
    h.run_until(|| {
        let d = dev.lock().expect("lock");
        max_in_flight = max_in_flight.max(d.completions.in_flight());
        rq.used_count() == 1 + 2 * bound as u16
    });
    assert!(max_in_flight <= bound);
    let st = h.stats();
    assert_eq!((st.in_flight, st.rejected), (0, 0));
    for &(_, s) in &heads {
        assert_eq!(h.response(s).status, status::OK);
    }
    assert_eq!(p.inner.data_requests(), 2 * bound as u64);
}

/// Records the order of lifecycle calls; TERMINATE blocks until released.
struct LifecyclePager {
    inner: MemPager,
    log: Mutex<Vec<&'static str>>,
    gate: Mutex<bool>,
    cv: Condvar,
}

impl LifecyclePager {
    fn log(&self, what: &'static str) {
        self.log.lock().expect("lock").push(what);
        self.cv.notify_all();
    }
    fn calls(&self) -> Vec<&'static str> {
        self.log.lock().expect("lock").clone()
    }
    fn release(&self) {
        *self.gate.lock().expect("lock") = true;
        self.cv.notify_all();
    }
    /// Waits (at most 10 s) until `n` calls are logged.
    fn wait_calls(&self, n: usize) {
        let log = self.log.lock().expect("lock");
        let (log, t) = self
            .cv
            .wait_timeout_while(log, std::time::Duration::from_secs(10), |l| l.len() < n)
            .expect("wait");
        assert!(!t.timed_out(), "pager saw {:?}", *log);
    }
}

impl Pager for LifecyclePager {
    fn init(&self, k: KernelId, c: Arc<dyn KernelControl>) -> PResult<ObjectInfo> {
        self.log("init");
        self.inner.init(k, c)
    }
    fn data_request(
        &self,
        k: KernelId,
        o: ObjectOffset,
        l: u64,
        d: Access,
        b: &[VolatileSlice<'_>],
    ) -> PResult<DataReply> {
        self.inner.data_request(k, o, l, d, b)
    }
    fn data_write(
        &self,
        k: KernelId,
        o: ObjectOffset,
        l: u64,
        b: &[VolatileSlice<'_>],
    ) -> PResult<()> {
        self.inner.data_write(k, o, l, b)
    }
    fn data_unlock(&self, k: KernelId, o: ObjectOffset, l: u64, d: Access) -> PResult<UnlockReply> {
        self.inner.data_unlock(k, o, l, d)
    }
    fn extent(&self) -> PResult<u64> {
        self.inner.extent()
    }
    fn sync(&self) -> PResult<()> {
        self.inner.sync()
    }
    fn terminate(&self, k: KernelId) -> PResult<()> {
        self.log("terminate");
        let mut open = self.gate.lock().expect("lock");
        while !*open {
            open = self.cv.wait(open).expect("wait");
        }
        *open = false;
        drop(open);
        let r = self.inner.terminate(k);
        self.log("terminated");
        r
    }
    fn describe(&self) -> String {
        "lifecycle".into()
    }
}

#[test]
fn init_sent_during_terminate_reaches_the_pager_after_it_with_many_workers() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(LifecyclePager {
        inner: MemPager::filled(8 * PG, pattern),
        log: Mutex::new(Vec::new()),
        gate: Mutex::new(false),
        cv: Condvar::new(),
    });
    let mut h = Harness::with_workers(
        &mem,
        &rq,
        &eq,
        vec![object("l", p.clone())],
        all_features(),
        4,
    );
    assert_eq!(h.init(&mut rq, 0).status, status::OK);
    for round in 0..3u16 {
        // TERMINATE and INIT in one kick: idle workers are there to run
        // the INIT at once, the device must not let them.
        let (_, st) = h.simple(&mut rq, req::TERMINATE, 0, 0, 0, 0);
        let (_, si) = h.simple(&mut rq, req::INIT, 0, 0, 0, 0);
        let logged = p.calls().len();
        h.dev.lock().expect("lock").process_request_queue();
        p.wait_calls(logged + 1);
        // TERMINATE is with the pager; the INIT waits in the device.
        assert_eq!(p.calls()[logged..], ["terminate"]);
        assert_eq!(h.stats().in_flight, 2, "the held INIT counts as in flight");
        assert_eq!(h.dev.lock().expect("lock").completions.in_flight(), 1);
        p.release();
        let base = 1 + 3 * round;
        h.run_until(|| rq.used_count() == base + 2);
        assert_eq!(p.calls()[logged..], ["terminate", "terminated", "init"]);
        assert_eq!(h.response(st).status, status::OK);
        let r = h.response(si);
        assert_eq!((r.status, r.bytes), (status::OK, 8 * PG));
        // The object is initialised again: data flows.
        let f = h.alloc.frames(PG);
        let (_, r) = h.data_request(&mut rq, 0, PG, PG, &[(f, PG as u32)]);
        assert_eq!((r.status, r.kind), (status::OK, kind::DATA_PROVIDED));
    }
}

fn read_event(h: &Harness, at: u64) -> Event {
    let b: [u8; EVENT_SIZE] = h.bytes(at, EVENT_SIZE).try_into().expect("32");
    Event::from_bytes(&b)
}

#[test]
fn no_event_from_before_a_reset_or_terminate_reaches_the_driver_after_it() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::new(64 * PG));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    let old = p.control(KERNEL).expect("control");
    // Queued for the first driver instance, which posts no buffers.
    for i in 0..2 {
        old.lock_request(ObjectOffset(i * PG), PG, Access::WRITE, false, false)
            .expect("queued");
    }
    assert_eq!(h_pending(&h), 2);
    h.dev.lock().expect("lock").reset();
    assert_eq!(
        h_pending(&h),
        0,
        "reset drops what the old driver never got"
    );
    assert!(
        old.lock_request(ObjectOffset(0), PG, Access::WRITE, false, false)
            .is_err(),
        "the old instance's handle is dead"
    );
    let dev = h.dev.clone();
    h.run_until(|| !dev.lock().expect("lock").reset_pending());
    // A new driver instance on fresh rings.
    let (mut rq, mut eq) = (Ring::new(&mem, 0x20000), Ring::new(&mem, 0x30000));
    h.reactivate(&rq, &eq, all_features());
    assert_eq!(h.init(&mut rq, 0).status, status::OK);
    let new = p.control(KERNEL).expect("control");
    assert!(
        old.lock_request(ObjectOffset(0), PG, Access::WRITE, false, false)
            .is_err(),
        "still dead after the new INIT"
    );
    new.lock_request(ObjectOffset(5 * PG), PG, Access::WRITE, false, false)
        .expect("new handle works");
    let slots: Vec<u64> = (0..4).map(|_| h.alloc.small(EVENT_SIZE as u64)).collect();
    for &s in &slots[..2] {
        eq.push(&[(s, 32, true)]);
    }
    h.kick_ev();
    h.run_until(|| eq.used_count() == 1);
    assert_eq!(read_event(&h, slots[0]).offset, 5 * PG);
    // Queued on the current handle, then the object is terminated before
    // the driver posted a buffer for it: the event is void.
    h.dev.lock().expect("lock").process_event_queue();
    assert_eq!(eq.used_count(), 1, "no other event was pending");
    // Take the posted buffer out of the way: the next event would use it.
    new.lock_request(ObjectOffset(6 * PG), PG, Access::WRITE, false, false)
        .expect("queued");
    h.run_until(|| eq.used_count() == 2);
    assert_eq!(read_event(&h, slots[1]).offset, 6 * PG);
    new.lock_request(ObjectOffset(7 * PG), PG, Access::WRITE, false, false)
        .expect("queued");
    assert_eq!(h_pending(&h), 1);
    let (_, st) = h.simple(&mut rq, req::TERMINATE, 0, 0, 0, 0);
    h.kick_req();
    h.run_until(|| rq.used_count() == 2);
    assert_eq!(h.response(st).status, status::OK);
    assert!(
        new.lock_request(ObjectOffset(0), PG, Access::WRITE, false, false)
            .is_err(),
        "a terminated object's handle is dead"
    );
    assert_eq!(h_pending(&h), 0, "TERMINATE voids what was queued before");
    for &s in &slots[2..] {
        eq.push(&[(s, 32, true)]);
    }
    h.kick_ev();
    let n = h.em.run_with_timeout(10_000).expect("event loop");
    assert!(n > 0, "the kick was seen");
    h.dev.lock().expect("lock").deliver_events();
    assert_eq!(eq.used_count(), 2, "nothing delivered after the TERMINATE");
    // A new INIT gets a working handle, and only its events arrive.
    assert_eq!(h.init(&mut rq, 0).status, status::OK);
    let newer = p.control(KERNEL).expect("control");
    newer
        .lock_request(ObjectOffset(9 * PG), PG, Access::WRITE, false, false)
        .expect("queued");
    h.run_until(|| eq.used_count() == 3);
    assert_eq!(read_event(&h, slots[2]).offset, 9 * PG);
}

#[test]
fn a_spent_inline_allowance_hands_the_rest_of_the_pass_to_workers() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::filled(64 * PG, pattern));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    // No time at all: the first request is served inline, then the
    // allowance is spent and the pass hands every other one to a worker.
    h.dev.lock().expect("lock").inline_time_per_pass = std::time::Duration::ZERO;
    let mut reqs = Vec::new();
    for i in 0..16 {
        let hd = h.header(req::DATA_REQUEST, 0, i * PG, PG, 1);
        let f = h.alloc.frames(PG);
        let s = h.status();
        rq.push(&chain(hd, &[(f, PG as u32)], true, s));
        reqs.push((f, s, i));
    }
    let before = h.stats();
    h.kick_req();
    h.run_until(|| rq.used_count() == 17);
    let after = h.stats();
    assert_eq!(after.inline - before.inline, 1);
    assert_eq!(after.completed - before.completed, 16);
    for (f, s, i) in reqs {
        assert_eq!(h.response(s).status, status::OK);
        assert_eq!(h.bytes(f, PG as usize), p.contents(i * PG, PG as usize));
    }
}

#[test]
fn a_large_batch_is_shared_between_the_event_loop_and_a_worker() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let p = Arc::new(MemPager::filled(64 * PG, pattern));
    let mut h = Harness::new(&mem, &rq, &eq, vec![object("a", p.clone())], all_features());
    h.init(&mut rq, 0);
    {
        let mut d = h.dev.lock().expect("lock");
        d.inline_time_per_pass = std::time::Duration::from_secs(3600);
        d.set_parallel_batches(true);
    }
    let n = 2 * super::request::PARALLEL_MIN as u64;
    let mut reqs = Vec::new();
    for i in 0..n {
        let hd = h.header(req::DATA_REQUEST, 0, i * PG, PG, 1);
        let f = h.alloc.frames(PG);
        let s = h.status();
        rq.push(&chain(hd, &[(f, PG as u32)], true, s));
        reqs.push((f, s, i));
    }
    let before = h.stats();
    h.kick_req();
    h.run_until(|| rq.used_count() == 1 + n as u16);
    let after = h.stats();
    let to_workers = n as usize * super::request::PARALLEL_SHARE_PCT / 100;
    assert_eq!(after.inline - before.inline, n - to_workers as u64);
    assert_eq!(after.completed - before.completed, n);
    for (f, s, i) in reqs {
        assert_eq!(h.response(s).status, status::OK);
        assert_eq!(h.bytes(f, PG as usize), p.contents(i * PG, PG as usize));
    }
}

// ---- Per-object rate limits (throttle.rs) ----

/// A clock the test steps by hand, so what is parked and what goes is
/// decided by the test, not by how fast this machine runs.
struct ManualClock {
    base: std::time::Instant,
    offset_ns: std::sync::atomic::AtomicU64,
}

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(ManualClock {
            base: std::time::Instant::now(),
            offset_ns: std::sync::atomic::AtomicU64::new(0),
        })
    }
    fn advance(&self, d: std::time::Duration) {
        self.offset_ns
            .fetch_add(d.as_nanos() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

impl crate::rate_limiter::Clock for ManualClock {
    fn now(&self) -> std::time::Instant {
        self.base
            + std::time::Duration::from_nanos(
                self.offset_ns.load(std::sync::atomic::Ordering::SeqCst),
            )
    }
}

/// An object limited to `ops` requests a second with a burst of one.
fn limited(name: &str, p: Arc<dyn Pager>, ops: u64) -> PagerObject {
    let rate = std::num::NonZeroU64::new(ops).expect("ops > 0");
    PagerObject {
        rate_limit: crate::rate_limiter::RateLimit {
            ops: Some(crate::rate_limiter::Bucket {
                rate,
                burst: std::num::NonZeroU64::MIN,
            }),
            bandwidth: None,
        },
        ..object(name, p)
    }
}

/// Pushes a one-page DATA_REQUEST; returns (head, frame, status).
fn push_read(h: &mut Harness, rq: &mut Ring, obj: u32, off: u64) -> (u16, u64, u64) {
    let hd = h.header(req::DATA_REQUEST, obj, off, PG, Access::READ.bits());
    let f = h.alloc.frames(PG);
    let s = h.status();
    (
        rq.push(&[(hd, 32, false), (f, PG as u32, true), (s, 24, true)]),
        f,
        s,
    )
}

/// Two objects on one queue, the first limited to 10 requests a second
/// (burst 1) on a clock that only the test moves.
fn throttled_pair(
    mem: &GuestMemoryMmap,
    rq: &mut Ring,
    eq: &Ring,
) -> (Harness, Arc<MemPager>, Arc<MemPager>, Arc<ManualClock>) {
    let slow = Arc::new(MemPager::filled(16 * PG, pattern));
    let fast = Arc::new(MemPager::filled(16 * PG, |i| pattern(i) ^ 0x5a));
    let objs = vec![
        limited("slow", slow.clone(), 10),
        object("fast", fast.clone()),
    ];
    let mut h = Harness::new(mem, rq, eq, objs, all_features());
    let clock = ManualClock::new();
    {
        let mut d = h.dev.lock().expect("lock");
        d.clock = clock.clone();
        // Every resumed or new request is answered inline, in order.
        d.inline_time_per_pass = std::time::Duration::from_secs(3600);
    }
    // INIT costs nothing: both go at once.
    assert_eq!(h.init(rq, 0).status, status::OK);
    assert_eq!(h.init(rq, 1).status, status::OK);
    (h, slow, fast, clock)
}

#[test]
fn a_throttled_objects_requests_are_parked_and_resumed_in_order_while_others_go_at_once() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let (mut h, slow, fast, clock) = throttled_pair(&mem, &mut rq, &eq);
    let s0 = push_read(&mut h, &mut rq, 0, 0);
    let s1 = push_read(&mut h, &mut rq, 0, PG);
    let f0 = push_read(&mut h, &mut rq, 1, 0);
    let s2 = push_read(&mut h, &mut rq, 0, 2 * PG);
    let f1 = push_read(&mut h, &mut rq, 1, PG);
    let dev = h.dev.clone();
    let mut d = dev.lock().expect("lock");
    d.process_request_queue();
    // The first slow request took the one token; the other two are parked,
    // and the fast object's requests behind them were answered meanwhile.
    assert_eq!(rq.used_count(), 2 + 3);
    let order: Vec<u16> = (2..5).map(|i| rq.used(i).0).collect();
    assert_eq!(order, vec![s0.0, f0.0, f1.0]);
    assert_eq!(d.parked(), 2);
    assert_eq!(d.stats().in_flight, 2, "parked chains are outstanding");
    assert_eq!(h.response(s1.2).status, 0xeeee_eeee, "not answered yet");
    assert_eq!(slow.data_requests(), 1, "the pager saw only the first");
    // A timer firing before a token is back resumes nothing.
    clock.advance(std::time::Duration::from_millis(99));
    d.process_rate_timer();
    assert_eq!((rq.used_count(), d.parked()), (5, 2));
    // One token per tenth of a second: one request each time, in order.
    clock.advance(std::time::Duration::from_millis(1));
    d.process_rate_timer();
    assert_eq!((rq.used_count(), d.parked()), (6, 1));
    assert_eq!(rq.used(5).0, s1.0);
    clock.advance(std::time::Duration::from_millis(100));
    d.process_rate_timer();
    assert_eq!((rq.used_count(), d.parked()), (7, 0));
    assert_eq!(rq.used(6).0, s2.0);
    assert_eq!(d.stats().in_flight, 0);
    let t = d.object_throttling();
    assert_eq!(t[0].throttled, 2);
    // s1 waited 100 ms, s2 200 ms, on the test's clock.
    assert_eq!(t[0].parked_time, std::time::Duration::from_millis(300));
    assert_eq!(t[1], super::ObjectThrottle::default());
    drop(d);
    for (i, (_, f, s)) in [s0, s1, s2].into_iter().enumerate() {
        assert_eq!(h.response(s).status, status::OK);
        assert_eq!(
            h.bytes(f, PG as usize),
            slow.contents(i as u64 * PG, PG as usize)
        );
    }
    for (i, (_, f, s)) in [f0, f1].into_iter().enumerate() {
        assert_eq!(h.response(s).status, status::OK);
        assert_eq!(
            h.bytes(f, PG as usize),
            fast.contents(i as u64 * PG, PG as usize)
        );
    }
}

#[test]
fn parked_requests_are_resumed_by_the_event_loops_timer() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let (mut h, slow, _fast, clock) = throttled_pair(&mem, &mut rq, &eq);
    // A write and a sync behind a read: all parked in order, all charged.
    let r0 = push_read(&mut h, &mut rq, 0, 0);
    let r1 = push_read(&mut h, &mut rq, 0, PG);
    let hd = h.header(req::DATA_WRITE, 0, 3 * PG, PG, 0);
    let f = h.alloc.frames(PG);
    h.mem
        .write_slice(&[0xab; PG as usize], GuestAddress(f))
        .expect("data");
    let s = h.status();
    let w = rq.push(&[(hd, 32, false), (f, PG as u32, false), (s, 24, true)]);
    let (sy, _) = h.simple(&mut rq, req::SYNC, 0, 0, 0, 0);
    h.kick_req();
    let dev = h.dev.clone();
    h.run_until(|| dev.lock().expect("lock").parked() == 3);
    assert_eq!(rq.used(2).0, r0.0);
    // The device's timer fires (real time) and finds the test's clock
    // still short of a token until the test moves it.
    for want in 4..=6u16 {
        clock.advance(std::time::Duration::from_millis(100));
        h.run_until(|| rq.used_count() == want);
    }
    let order: Vec<u16> = (3..6).map(|i| rq.used(i).0).collect();
    assert_eq!(order, vec![r1.0, w, sy]);
    assert_eq!(slow.contents(3 * PG, PG as usize), vec![0xab; PG as usize]);
    assert_eq!((slow.data_writes(), slow.syncs()), (1, 1));
    assert_eq!(
        h.dev.lock().expect("lock").object_throttling()[0].throttled,
        3
    );
}

#[test]
fn the_parked_set_is_bounded_by_the_ring() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let (mut h, slow, _fast, clock) = throttled_pair(&mem, &mut rq, &eq);
    let mut heads = Vec::new();
    for i in 0..8 {
        let hd = h.header(req::DATA_REQUEST, 0, i * PG, PG, 1);
        let f = h.alloc.frames(PG);
        let s = h.status();
        heads.push(rq.write_chain(&chain(hd, &[(f, PG as u32)], true, s)));
    }
    let bound = usize::from(QUEUE_SIZE);
    // A driver publishing twice as many requests as the ring holds, by
    // republishing heads without waiting for them.
    let publish = |rq: &Ring| {
        for i in 0..bound {
            rq.publish(heads[i % heads.len()]);
        }
    };
    publish(&rq);
    let dev = h.dev.clone();
    let mut d = dev.lock().expect("lock");
    d.process_request_queue();
    drop(d);
    publish(&rq);
    let mut d = dev.lock().expect("lock");
    d.process_request_queue();
    // One went; the device took as many as its in-flight bound allows and
    // parked them; the rest wait on the ring, not in host memory.
    assert_eq!(d.parked(), bound);
    assert_eq!(d.stats().in_flight, bound as u64);
    assert!(d.stats().throttled > 0, "chains were left on the ring");
    assert_eq!(rq.used_count(), 2 + 1);
    // Each token resumes one, and each completion lets one more in.
    for _ in 0..(2 * bound - 1) {
        clock.advance(std::time::Duration::from_millis(100));
        d.process_rate_timer();
        assert!(d.parked() <= bound);
    }
    assert_eq!((d.parked(), d.stats().in_flight), (0, 0));
    drop(d);
    assert_eq!(rq.used_count(), 2 + 2 * bound as u16);
    assert_eq!(slow.data_requests(), 2 * bound as u64);
}

#[test]
fn reset_drops_parked_requests_and_the_limit_goes_on_after_it() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let (mut h, slow, _fast, clock) = throttled_pair(&mem, &mut rq, &eq);
    push_read(&mut h, &mut rq, 0, 0);
    let parked = [
        push_read(&mut h, &mut rq, 0, PG),
        push_read(&mut h, &mut rq, 0, 2 * PG),
    ];
    let dev = h.dev.clone();
    let mut d = dev.lock().expect("lock");
    d.process_request_queue();
    assert_eq!(d.parked(), 2);
    clock.advance(std::time::Duration::from_millis(50));
    d.reset();
    assert_eq!(d.parked(), 0);
    assert_eq!(d.stats().in_flight, 0);
    let t = d.object_throttling()[0];
    assert_eq!(t.throttled, 2);
    assert_eq!(t.parked_time, std::time::Duration::from_millis(100));
    // The timer armed for them fires into a device with nothing parked.
    clock.advance(std::time::Duration::from_secs(1));
    d.process_rate_timer();
    drop(d);
    assert_eq!(rq.used_count(), 3, "dropped requests were not completed");
    for (_, _, s) in parked {
        assert_eq!(h.response(s).status, 0xeeee_eeee);
    }
    assert_eq!(slow.data_requests(), 1, "the pager never saw them");
    // A new driver instance: the object's limit still holds.
    h.run_until(|| !dev.lock().expect("lock").reset_pending());
    let (mut rq, eq) = (Ring::new(&mem, 0x20000), Ring::new(&mem, 0x30000));
    h.reactivate(&rq, &eq, all_features());
    assert_eq!(h.init(&mut rq, 0).status, status::OK);
    let a = push_read(&mut h, &mut rq, 0, 0);
    push_read(&mut h, &mut rq, 0, PG);
    let mut d = dev.lock().expect("lock");
    d.process_request_queue();
    assert_eq!((rq.used_count(), rq.used(1).0), (2, a.0));
    assert_eq!(d.parked(), 1);
}

#[test]
fn a_terminate_parked_behind_throttled_requests_still_reaches_the_pager_at_a_reset() {
    let mem = test_mem();
    let (mut rq, eq) = (Ring::new(&mem, REQQ), Ring::new(&mem, EVQ));
    let (mut h, slow, _fast, _clock) = throttled_pair(&mem, &mut rq, &eq);
    push_read(&mut h, &mut rq, 0, 0);
    push_read(&mut h, &mut rq, 0, PG);
    // The driver ends the object while a read is parked: its TERMINATE
    // waits behind it.
    h.simple(&mut rq, req::TERMINATE, 0, 0, 0, 0);
    let dev = h.dev.clone();
    let mut d = dev.lock().expect("lock");
    d.process_request_queue();
    assert_eq!(d.parked(), 2, "the read and the TERMINATE behind it");
    d.reset();
    drop(d);
    h.run_until(|| !dev.lock().expect("lock").reset_pending());
    // The old driver's INIT is still counted by the pager until a
    // TERMINATE reaches it, whoever sends it.
    h.run_until(|| slow.terminates() == 1);
    // And a new driver can initialise the object again.
    let (mut rq, eq) = (Ring::new(&mem, 0x20000), Ring::new(&mem, 0x30000));
    h.reactivate(&rq, &eq, all_features());
    assert_eq!(h.init(&mut rq, 0).status, status::OK);
}
