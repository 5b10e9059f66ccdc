//! virtio-pager throughput and latency with an in-memory backend, no guest:
//! a driver written against MockSplitQueue posts DATA_REQUEST chains, the
//! device runs under a real EventManager with its worker pool. Peers in the
//! same run: the raw `Pager::data_request` into the same guest frames
//! (what the device adds is the difference) and a memcpy of the same bytes.

use devices::pager::wire::{QUEUE_SIZE, RequestHeader, Response, kind, req};
use devices::pager::{PagerDevice, PagerObject};
use devices::testing::MemPager;
use devices::virtio::{ActiveQueue, Interrupt, VirtioDevice, features};
use event_manager::{EventManager, SubscriberOps};
use pager_backends::{Access, DataReply, KernelId, ObjectOffset, Pager};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const PG: u64 = 4096;
const OBJECT: u64 = 8 << 20;
const HDRS: u64 = 0x10_0000;
const FRAMES: u64 = 0x100_0000;
const KERNEL: KernelId = KernelId(1);

fn main() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("memory");
    let pager = Arc::new(MemPager::filled(OBJECT, |i| (i % 253) as u8));
    let rq = Ring::new(&mem, 0);
    let eq = Ring::new(&mem, 0x1_0000);
    let dev = Arc::new(Mutex::new(
        PagerDevice::new(
            KERNEL,
            vec![PagerObject {
                name: "bench".into(),
                pager: pager.clone(),
                read_only: false,
                rate_limit: Default::default(),
            }],
            2,
        )
        .expect("device"),
    ));
    let kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let ev_kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let irq = Arc::new(Interrupt::new().expect("irq"));
    let feats = 0b111 | (1 << features::VIRTIO_F_VERSION_1);
    let queues = vec![
        ActiveQueue {
            queue: rq.queue(),
            notify: kick.try_clone().expect("clone"),
        },
        ActiveQueue {
            queue: eq.queue(),
            notify: ev_kick,
        },
    ];
    dev.lock()
        .expect("lock")
        .activate(mem.clone(), feats, queues, irq.clone())
        .expect("activate");
    let mut em = EventManager::new().expect("event manager");
    em.add_subscriber(dev.clone());
    let mut drv = Driver {
        mem: &mem,
        rq,
        kick,
        em,
        dev: dev.clone(),
        used: 0,
        laid_out: Vec::new(),
    };

    // INIT once; the raw-pager peer reuses the same kernel id.
    drv.submit(&[(req::INIT, 0, 0)], 0);

    println!("virtio-pager device vs raw in-memory pager vs memcpy (same run, same guest frames)");
    println!(
        "workers=2, event loop=1 thread, object={} MiB, in-memory backend",
        OBJECT >> 20
    );
    println!(
        "| size    | batch | device req/s | device us/req | raw pager us/req | memcpy us/req | device/raw |"
    );
    println!(
        "|---------|-------|--------------|---------------|------------------|---------------|------------|"
    );
    // DEVICE_BENCH_ONLY=4:32 runs one case (size in KiB : batch), for
    // profiling; the default is all four.
    let only: Option<(u64, usize)> = std::env::var("DEVICE_BENCH_ONLY").ok().and_then(|v| {
        let (k, b) = v.split_once(':')?;
        Some((k.parse::<u64>().ok()? * 1024, b.parse().ok()?))
    });
    for &size in &[PG, 16 * PG] {
        for &batch in &[1usize, 32] {
            if only.is_some_and(|o| o != (size, batch)) {
                continue;
            }
            let total = if size == PG { 20_000 } else { 5_000 };
            let rounds = total / batch;
            let dev_t = drv.run(size, batch, rounds);
            let n = (rounds * batch) as f64;
            let raw_t = raw_pager(&mem, &*pager, size, rounds * batch);
            let cpy_t = memcpy(&mem, size, rounds * batch);
            let us = |d: Duration| d.as_secs_f64() * 1e6 / n;
            println!(
                "| {:>4} KiB | {:>5} | {:>12.0} | {:>13.2} | {:>16.2} | {:>13.2} | {:>9.1}x |",
                size / 1024,
                batch,
                n / dev_t.as_secs_f64(),
                us(dev_t),
                us(raw_t),
                us(cpy_t),
                dev_t.as_secs_f64() / raw_t.as_secs_f64()
            );
        }
    }
    let s = dev.lock().expect("lock").stats();
    println!("device stats: {s:?}");
}

/// A split queue laid out by hand: descriptors at `at`, avail ring at
/// `at + 0x1000`, used ring at `at + 0x2000`. (MockSplitQueue::create puts
/// its used ring over the upper half of the avail ring, so a driver cycling
/// through all 256 avail slots would scribble heads into the used ring.)
struct Ring<'a> {
    mem: &'a GuestMemoryMmap,
    desc: u64,
    avail: u64,
    used: u64,
}

impl<'a> Ring<'a> {
    fn new(mem: &'a GuestMemoryMmap, at: u64) -> Self {
        mem.write_slice(&[0u8; 0x3000], GuestAddress(at))
            .expect("clear ring");
        Ring {
            mem,
            desc: at,
            avail: at + 0x1000,
            used: at + 0x2000,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).expect("queue");
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_ready(true);
        q
    }

    fn store_desc(&self, i: u16, d: RawDescriptor) {
        self.mem
            .write_obj(d, GuestAddress(self.desc + 16 * u64::from(i)))
            .expect("desc");
    }

    fn avail_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.avail + 2))
            .expect("avail idx")
    }

    fn set_avail(&self, slot: u16, head: u16) {
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * u64::from(slot)))
            .expect("avail");
    }

    fn set_avail_idx(&self, v: u16) {
        self.mem
            .write_obj(v, GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    fn used_idx(&self) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.used + 2))
            .expect("used idx")
    }
}

struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    rq: Ring<'a>,
    kick: EventFd,
    em: EventManager<Arc<Mutex<PagerDevice>>>,
    dev: Arc<Mutex<PagerDevice>>,
    used: u16,
    /// Frame length slot i's descriptors were written for.
    laid_out: Vec<Option<u64>>,
}

impl Driver<'_> {
    /// Posts one chain per (type, offset, len) and waits for all of them.
    fn submit(&mut self, reqs: &[(u16, u64, u64)], frame_len: u64) {
        let start_idx = self.rq.avail_idx();
        for (i, &(t, off, len)) in reqs.iter().enumerate() {
            let h = HDRS + i as u64 * 64;
            let s = h + 32;
            let hdr = RequestHeader {
                req_type: t,
                offset: off,
                length: len,
                access: if t == req::DATA_REQUEST { 1 } else { 0 },
                ..Default::default()
            };
            self.mem
                .write_slice(&hdr.to_bytes(), GuestAddress(h))
                .expect("hdr");
            let d = (i * 3) as u16;
            // Like a driver with a preallocated request pool: slot i's
            // chain (header, frame, response) is written once per layout;
            // each request rewrites only its header.
            if self.laid_out.get(i) != Some(&Some(frame_len)) {
                let mut descs = vec![(h, 32u32, 0u16)];
                if frame_len > 0 {
                    descs.push((FRAMES + i as u64 * frame_len, frame_len as u32, 2));
                }
                descs.push((s, 24, 2));
                let last = descs.len() - 1;
                for (j, (a, l, f)) in descs.into_iter().enumerate() {
                    let next = if j < last { 1 } else { 0 };
                    let desc = SplitDescriptor::new(a, l, f | next, d + j as u16 + 1);
                    self.rq.store_desc(d + j as u16, RawDescriptor::from(desc));
                }
                if self.laid_out.len() <= i {
                    self.laid_out.resize(i + 1, None);
                }
                self.laid_out[i] = Some(frame_len);
            }
            let slot = start_idx.wrapping_add(i as u16) % QUEUE_SIZE;
            self.rq.set_avail(slot, d);
        }
        self.rq
            .set_avail_idx(start_idx.wrapping_add(reqs.len() as u16));
        self.kick.write(1).expect("kick");
        let target = self.used.wrapping_add(reqs.len() as u16);
        while self.rq.used_idx() != target {
            // A device that stops completing must fail the run, not hang it.
            let n = self.em.run_with_timeout(10_000).expect("event loop");
            assert!(
                n > 0 || self.rq.used_idx() == target,
                "device made no progress: used {} of {target}, {:?}",
                self.rq.used_idx(),
                self.dev.lock().map(|d| d.stats()).ok()
            );
        }
        self.used = target;
        // Spot-check the last response so a broken device can't look fast.
        let s = HDRS + (reqs.len() as u64 - 1) * 64 + 32;
        let mut b = [0u8; 24];
        self.mem.read_slice(&mut b, GuestAddress(s)).expect("resp");
        let r = Response::from_bytes(&b);
        assert_eq!(r.status, 0, "request failed: {r:?}");
        if reqs[0].0 == req::DATA_REQUEST {
            assert_eq!(r.kind, kind::DATA_PROVIDED);
        }
    }

    fn run(&mut self, size: u64, batch: usize, rounds: usize) -> Duration {
        let per_round: Vec<Vec<(u16, u64, u64)>> = (0..rounds)
            .map(|r| {
                (0..batch)
                    .map(|i| {
                        (
                            req::DATA_REQUEST,
                            ((r * batch + i) as u64 * size) % OBJECT,
                            size,
                        )
                    })
                    .collect()
            })
            .collect();
        // Warm up (page in frames, spin up workers).
        self.submit(&per_round[0], size);
        let t = Instant::now();
        for reqs in &per_round {
            self.submit(reqs, size);
        }
        t.elapsed()
    }
}

fn raw_pager(mem: &GuestMemoryMmap, p: &dyn Pager, size: u64, n: usize) -> Duration {
    let t = Instant::now();
    for i in 0..n {
        let off = (i as u64 * size) % OBJECT;
        let frame = FRAMES + (i as u64 % 32) * size;
        let bufs: Vec<_> = mem
            .get_slices(GuestAddress(frame), size as usize)
            .collect::<Result<_, _>>()
            .expect("slices");
        let r = p
            .data_request(KERNEL, ObjectOffset(off), size, Access::READ, &bufs)
            .expect("raw");
        assert!(matches!(r, DataReply::Provided { .. }));
        black_box(r);
    }
    t.elapsed()
}

fn memcpy(mem: &GuestMemoryMmap, size: u64, n: usize) -> Duration {
    let src: Vec<u8> = (0..OBJECT).map(|i| (i % 253) as u8).collect();
    let t = Instant::now();
    for i in 0..n {
        let off = ((i as u64 * size) % OBJECT) as usize;
        let frame = FRAMES + (i as u64 % 32) * size;
        mem.write_slice(&src[off..off + size as usize], GuestAddress(frame))
            .expect("copy");
        black_box(&src);
    }
    t.elapsed()
}
