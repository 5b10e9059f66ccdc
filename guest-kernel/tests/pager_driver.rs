//! The guest's virtio-pager driver (src/dev/virtio) driving the VMM's real
//! virtio-mmio transport and virtio-pager device over a host file, with the
//! device's event loop on its own thread: the same two halves that meet in
//! the VM, minus KVM.

use devices::pager::{DEFAULT_WORKERS, PagerDevice, PagerObject};
use devices::virtio::{MmioTransport, VirtioDevice};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use guest_kernel::addr::{PAGE_SIZE, PhysAddr};
use guest_kernel::dev::virtio::pager::{
    self, Completion, Event, Frames, ObjState, Op, PagerDriver, Segment, SubmitError, status,
};
use guest_kernel::dev::virtio::virtqueue::{DESC_NEXT, DESC_WRITE};
use guest_kernel::dev::virtio::{Dma, Regs};
use pager_backends::{Access, KernelId, ObjectOffset, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const MEM: usize = 16 << 20;

struct HostRegs(Arc<Mutex<MmioTransport>>);
impl Regs for HostRegs {
    fn read32(&self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.0.lock().unwrap().read(offset, &mut b);
        u32::from_le_bytes(b)
    }
    fn write32(&self, offset: u64, value: u32) {
        self.0.lock().unwrap().write(offset, &value.to_le_bytes());
    }
}

#[derive(Clone, Copy)]
struct HostDma(*mut u8);
// SAFETY: the mapping outlives the test; the driver is used on one thread.
unsafe impl Send for HostDma {}
impl Dma for HostDma {
    fn ptr(&self, pa: PhysAddr) -> *mut u8 {
        assert!((pa.0 as usize) < MEM, "driver touched {pa:?} outside RAM");
        // SAFETY: inside the one region.
        unsafe { self.0.add(pa.0 as usize) }
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    transport: Arc<Mutex<MmioTransport>>,
    driver: PagerDriver<HostRegs, HostDma>,
    next_page: u64,
    stop: Arc<AtomicBool>,
    loop_thread: Option<std::thread::JoinHandle<()>>,
    done: Vec<Completion>,
    events: Vec<Event>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.loop_thread.take() {
            let _ = t.join();
        }
    }
}

fn temp_file(bytes: &[u8]) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "duality-driver-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 4096) as u8).collect()
}

impl Rig {
    fn new(objects: Vec<(&str, &str)>) -> Rig {
        Rig::with_objects(
            objects
                .into_iter()
                .map(|(name, uri)| PagerObject {
                    name: name.into(),
                    pager: pager_backends::open(uri, &OpenOptions::default()).unwrap(),
                    read_only: uri.ends_with("?ro"),
                    rate_limit: Default::default(),
                })
                .collect(),
        )
    }

    fn with_objects(objs: Vec<PagerObject>) -> Rig {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let dev = Arc::new(Mutex::new(
            PagerDevice::new(KernelId(7), objs, DEFAULT_WORKERS).unwrap(),
        ));
        let transport = Arc::new(Mutex::new(
            MmioTransport::new(mem.clone(), dev.clone() as Arc<Mutex<dyn VirtioDevice>>).unwrap(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let loop_thread = {
            let stop = stop.clone();
            let dev = dev.clone();
            std::thread::spawn(move || {
                let mut em =
                    EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
                em.add_subscriber(dev);
                while !stop.load(Ordering::SeqCst) {
                    let _ = em.run_with_timeout(5);
                }
            })
        };
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        let dma = HostDma(host);
        // Frames below 1 MiB belong to the driver, the rest to "tasks".
        let mut next = 0x1000u64;
        let driver = PagerDriver::start(HostRegs(transport.clone()), dma, &mut || {
            let p = next;
            next += PAGE_SIZE;
            (p < 0x10_0000).then_some(PhysAddr(p))
        })
        .expect("driver starts");
        Rig {
            mem,
            transport,
            driver,
            next_page: 0x10_0000,
            stop,
            loop_thread: Some(loop_thread),
            done: Vec::new(),
            events: Vec::new(),
        }
    }

    fn pages(&mut self, n: u64) -> Vec<Segment> {
        (0..n)
            .map(|_| {
                let a = self.next_page;
                self.next_page += PAGE_SIZE;
                Segment {
                    addr: PhysAddr(a),
                    len: PAGE_SIZE as u32,
                }
            })
            .collect()
    }

    fn poll(&mut self) {
        let done = &mut self.done;
        let events = &mut self.events;
        self.driver.poll(
            &mut |c: &Completion, _f: &Frames| done.push(*c),
            &mut |e: &Event| {
                events.push(*e);
                None
            },
        );
    }

    /// Waits for the completion of `token` (the interrupt would wake us in
    /// the kernel; here we poll the used ring).
    fn wait(&mut self, token: u64) -> Completion {
        let start = Instant::now();
        loop {
            self.poll();
            if let Some(i) = self.done.iter().position(|c| c.token == token) {
                return self.done.remove(i);
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no completion for {token}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn run(&mut self, object: u32, op: Op, token: u64, frames: &[Segment]) -> Completion {
        self.driver
            .submit(object, op, token, frames.iter().copied())
            .unwrap_or_else(|e| panic!("submit {op:?}: {e:?}"));
        self.driver.kick();
        self.wait(token)
    }

    /// Interrupts the device raised since the last call (the irqfd count).
    fn interrupts(&self) -> u64 {
        self.transport
            .lock()
            .unwrap()
            .interrupt_evt()
            .read()
            .unwrap_or(0)
    }

    fn read(&self, s: &[Segment]) -> Vec<u8> {
        let mut out = Vec::new();
        for seg in s {
            let mut b = vec![0u8; seg.len as usize];
            self.mem
                .read_slice(&mut b, GuestAddress(seg.addr.0))
                .unwrap();
            out.extend(b);
        }
        out
    }
}

use vm_memory::Bytes;

#[test]
fn init_read_write_sync_terminate_through_the_real_device() {
    let content = pattern(3 * 4096 + 100);
    let path = temp_file(&content);
    let uri = format!("file:{}", path.display());
    let mut rig = Rig::new(vec![("data", &uri), ("zero", "zero?size=1M")]);
    assert_eq!(rig.driver.objects().len(), 2);
    let id = rig
        .driver
        .find(b"data")
        .expect("object in the config table");
    assert_eq!(
        rig.driver.object(id).unwrap().table_size,
        content.len() as u64
    );
    assert_eq!(rig.driver.find(b"nope"), None);

    // Nothing before INIT.
    let frames = rig.pages(2);
    assert_eq!(
        rig.driver.submit(
            id,
            Op::DataRequest {
                offset: 0,
                len: 8192,
                desired: 1
            },
            1,
            frames.clone()
        ),
        Err(SubmitError::BadState)
    );
    let c = rig.run(id, Op::Init, 2, &[]);
    assert_eq!(c.status, status::OK);
    assert_eq!(c.bytes, content.len() as u64);
    assert!(matches!(
        rig.driver.object(id).unwrap().state,
        ObjState::Ready {
            read_only: false,
            ..
        }
    ));

    // Two pages from offset 4096 into non-adjacent frames.
    let mut f = rig.pages(1);
    rig.pages(1);
    f.extend(rig.pages(1));
    let c = rig.run(
        id,
        Op::DataRequest {
            offset: 4096,
            len: 8192,
            desired: 1,
        },
        3,
        &f,
    );
    assert_eq!((c.status, c.kind), (status::OK, pager::KIND_PROVIDED));
    assert!(c.bytes >= 8192);
    assert_eq!(rig.read(&f), content[4096..4096 + 8192]);

    // Last, partial page: zero past the end.
    let f = rig.pages(1);
    let c = rig.run(
        id,
        Op::DataRequest {
            offset: 12288,
            len: 4096,
            desired: 1,
        },
        4,
        &f,
    );
    assert_eq!(c.status, status::OK);
    let got = rig.read(&f);
    assert_eq!(&got[..100], &content[12288..]);
    assert!(got[100..].iter().all(|&b| b == 0));

    // Past the end.
    let c = rig.run(
        id,
        Op::DataRequest {
            offset: 16384,
            len: 4096,
            desired: 1,
        },
        5,
        &f,
    );
    assert_eq!(c.status, status::PAST_END);

    // Write page 0 from a frame, sync, and the host file has it.
    let f = rig.pages(1);
    rig.mem
        .write_slice(&[0xabu8; 4096], GuestAddress(f[0].addr.0))
        .unwrap();
    let c = rig.run(
        id,
        Op::DataWrite {
            offset: 0,
            len: 4096,
        },
        6,
        &f,
    );
    assert_eq!(c.status, status::OK);
    assert_eq!(rig.run(id, Op::Sync, 7, &[]).status, status::OK);
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[..4096].iter().all(|&b| b == 0xab));
    assert_eq!(on_disk[4096..], content[4096..]);

    // Many in flight, one kick.
    let mut batch = Vec::new();
    for t in 0..32u64 {
        let f = rig.pages(1);
        rig.driver
            .submit(
                id,
                Op::DataRequest {
                    offset: (t % 3) * 4096,
                    len: 4096,
                    desired: 1,
                },
                100 + t,
                f.clone(),
            )
            .unwrap();
        batch.push((t, f));
    }
    let notifies = rig.driver.stats.notifies;
    rig.driver.kick();
    assert!(rig.driver.stats.notifies <= notifies + 1);
    for (t, f) in batch {
        assert_eq!(rig.wait(100 + t).status, status::OK);
        let want = if t % 3 == 0 {
            vec![0xab; 4096]
        } else {
            content[(t % 3) as usize * 4096..][..4096].to_vec()
        };
        assert_eq!(rig.read(&f), want, "request {t}");
    }
    assert_eq!(rig.driver.in_flight(), 0);

    // Zero object: unavailable, frames untouched.
    let z = rig.driver.find(b"zero").unwrap();
    assert_eq!(rig.run(z, Op::Init, 8, &[]).status, status::OK);
    let f = rig.pages(1);
    let c = rig.run(
        z,
        Op::DataRequest {
            offset: 0,
            len: 4096,
            desired: 3,
        },
        9,
        &f,
    );
    assert_eq!((c.status, c.kind), (status::OK, pager::KIND_UNAVAILABLE));

    // Terminate: requests refused until INIT again.
    assert_eq!(rig.run(id, Op::Terminate, 10, &[]).status, status::OK);
    assert_eq!(
        rig.driver.submit(id, Op::Sync, 11, []),
        Err(SubmitError::BadState)
    );
    assert_eq!(rig.run(id, Op::Init, 12, &[]).status, status::OK);
    let _ = std::fs::remove_file(path);
}

#[test]
fn read_only_objects_and_bad_frames_are_refused_by_the_driver() {
    let path = temp_file(&pattern(8192));
    let uri = format!("file:{}?ro", path.display());
    let mut rig = Rig::new(vec![("ro", &uri)]);
    assert_eq!(rig.run(0, Op::Init, 1, &[]).status, status::OK);
    let f = rig.pages(1);
    assert_eq!(
        rig.driver.submit(
            0,
            Op::DataWrite {
                offset: 0,
                len: 4096
            },
            2,
            f.clone()
        ),
        Err(SubmitError::ReadOnly)
    );
    // Frames not matching the length, misaligned, empty.
    assert_eq!(
        rig.driver.submit(
            0,
            Op::DataRequest {
                offset: 0,
                len: 8192,
                desired: 1
            },
            3,
            f.clone()
        ),
        Err(SubmitError::BadFrames)
    );
    let bad = Segment {
        addr: PhysAddr(f[0].addr.0 + 8),
        len: 4096,
    };
    assert_eq!(
        rig.driver.submit(
            0,
            Op::DataRequest {
                offset: 0,
                len: 4096,
                desired: 1
            },
            4,
            [bad]
        ),
        Err(SubmitError::BadFrames)
    );
    assert_eq!(
        rig.driver.submit(
            0,
            Op::DataRequest {
                offset: 0,
                len: 0,
                desired: 1
            },
            5,
            []
        ),
        Err(SubmitError::BadFrames)
    );
    assert_eq!(
        rig.driver.submit(9, Op::Init, 6, []),
        Err(SubmitError::NoObject)
    );
    assert_eq!(
        rig.driver.in_flight(),
        0,
        "refused submissions hold no slot"
    );
    // And the device still serves a good one.
    let c = rig.run(
        0,
        Op::DataRequest {
            offset: 4096,
            len: 4096,
            desired: 1,
        },
        7,
        &f,
    );
    assert_eq!(c.status, status::OK);
    let _ = std::fs::remove_file(path);
}

#[test]
fn hostile_chains_are_rejected_and_a_broken_ring_is_recovered_by_reset() {
    let content = pattern(8192);
    let path = temp_file(&content);
    let uri = format!("file:{}", path.display());
    let mut rig = Rig::new(vec![("data", &uri)]);
    assert_eq!(rig.run(0, Op::Init, 1, &[]).status, status::OK);
    let f = rig.pages(1)[0].addr.0;
    let hdr = pager::header(pager::req::DATA_REQUEST, 0, 0, 4096, 1);
    let cases: Vec<(&str, Vec<pager::RawDesc>)> = {
        let raw = rig.driver.raw();
        let (h, r) = raw.slot_area(0);
        let (h, r) = (h.0, r.0);
        vec![
            (
                "loop",
                vec![(h, 32, DESC_NEXT, 1), (f, 4096, DESC_WRITE | DESC_NEXT, 0)],
            ),
            (
                "out of RAM",
                vec![
                    (h, 32, DESC_NEXT, 1),
                    (1 << 40, 4096, DESC_WRITE | DESC_NEXT, 2),
                    (r, 24, DESC_WRITE, 0),
                ],
            ),
            (
                "huge length",
                vec![
                    (h, 32, DESC_NEXT, 1),
                    (f, 0xffff_f000, DESC_WRITE | DESC_NEXT, 2),
                    (r, 24, DESC_WRITE, 0),
                ],
            ),
            (
                "wrong direction",
                vec![
                    (h, 32, DESC_NEXT, 1),
                    (f, 4096, DESC_NEXT, 2),
                    (r, 24, DESC_WRITE, 0),
                ],
            ),
            (
                "zero length",
                vec![
                    (h, 32, DESC_NEXT, 1),
                    (f, 0, DESC_WRITE | DESC_NEXT, 2),
                    (r, 24, DESC_WRITE, 0),
                ],
            ),
            (
                "short header",
                vec![
                    (h, 16, DESC_NEXT, 1),
                    (f, 4096, DESC_WRITE | DESC_NEXT, 2),
                    (r, 24, DESC_WRITE, 0),
                ],
            ),
            ("dangling next", vec![(h, 32, DESC_NEXT, 9)]),
        ]
    };
    for (i, (name, table)) in cases.iter().enumerate() {
        let token = 100 + i as u64;
        rig.driver.raw().submit(hdr, table, token).expect("slot");
        rig.driver.kick();
        let c = rig.wait(token);
        assert_ne!(c.status, status::OK, "{name} was accepted");
    }
    rig.driver.raw().restore();
    // A head published twice completes at most once towards the caller.
    let frames = rig.pages(1);
    rig.driver
        .submit(
            0,
            Op::DataRequest {
                offset: 0,
                len: 4096,
                desired: 1,
            },
            200,
            frames.clone(),
        )
        .unwrap();
    rig.driver.raw().republish(0);
    rig.driver.kick();
    assert_eq!(rig.wait(200).status, status::OK);
    std::thread::sleep(Duration::from_millis(50));
    rig.poll();
    assert!(
        rig.done.is_empty(),
        "duplicate completion delivered: {:?}",
        rig.done
    );

    // A request in flight, then a broken ring: the device asks for a reset,
    // the driver resets it, fails what was pending, and works again.
    rig.driver.raw().break_ring();
    let start = Instant::now();
    let done = &mut rig.done;
    while !rig
        .driver
        .check_needs_reset(&mut |c: &Completion, _: &Frames| done.push(*c))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "device never asked for a reset"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    while rig.driver.is_resetting() {
        let done = &mut rig.done;
        rig.driver
            .finish_reset(1000, &mut |c: &Completion, _: &Frames| done.push(*c))
            .unwrap();
    }
    assert_eq!(rig.driver.stats.resets, 1);
    assert_eq!(rig.driver.object(0).unwrap().state, ObjState::Uninit);
    assert_eq!(rig.run(0, Op::Init, 300, &[]).status, status::OK);
    let c = rig.run(
        0,
        Op::DataRequest {
            offset: 4096,
            len: 4096,
            desired: 1,
        },
        301,
        &frames,
    );
    assert_eq!(c.status, status::OK);
    assert_eq!(rig.read(&frames), content[4096..]);
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_disarmed_queue_completes_without_an_interrupt_and_leave_kernel_takes_it() {
    let path = temp_file(&pattern(8192));
    let uri = format!("file:{}", path.display());
    let mut rig = Rig::new(vec![("data", &uri)]);
    assert_eq!(rig.run(0, Op::Init, 1, &[]).status, status::OK);
    rig.interrupts();
    let f = rig.pages(1);

    // Disarmed: the device completes, but raises no interrupt.
    rig.driver.disarm();
    rig.driver
        .submit(
            0,
            Op::DataRequest {
                offset: 0,
                len: 4096,
                desired: 1,
            },
            2,
            f.clone(),
        )
        .unwrap();
    rig.driver.kick();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rig.interrupts(), 0, "interrupt while disarmed");
    let done = &mut rig.done;
    let took = rig.driver.leave_kernel(
        &mut |c: &Completion, _: &Frames| done.push(*c),
        &mut |_: &Event| None,
    );
    assert!(took, "leave_kernel found nothing");
    assert_eq!(
        rig.done.pop().map(|c| (c.token, c.status)),
        Some((2, status::OK))
    );
    // Armed again: the next completion interrupts.
    rig.driver
        .submit(
            0,
            Op::DataRequest {
                offset: 4096,
                len: 4096,
                desired: 1,
            },
            3,
            f.clone(),
        )
        .unwrap();
    rig.driver.kick();
    assert_eq!(rig.wait(3).status, status::OK);
    assert!(rig.interrupts() >= 1, "no interrupt once armed");
    // Nothing disarmed: leave_kernel does nothing.
    let done = &mut rig.done;
    assert!(!rig.driver.leave_kernel(
        &mut |c: &Completion, _: &Frames| done.push(*c),
        &mut |_: &Event| None
    ));
    let _ = std::fs::remove_file(path);
}

/// Waits until the device has returned `n` chains on the request ring
/// (nothing is taken from it).
fn wait_used(rig: &Rig, n: u64) {
    let start = Instant::now();
    while rig.driver.stats.completed + rig.driver.completions_waiting() < n {
        assert!(start.elapsed() < Duration::from_secs(10), "device silent");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn take_completion_takes_only_the_named_request_first_in_line_and_accepted() {
    let path = temp_file(&pattern(4 * 4096));
    let uri = format!("file:{}", path.display());
    let mut rig = Rig::new(vec![("data", &uri)]);
    assert_eq!(rig.run(0, Op::Init, 1, &[]).status, status::OK);
    let (a, b) = (rig.pages(1), rig.pages(1));
    let read = |offset| Op::DataRequest {
        offset,
        len: 4096,
        desired: 1,
    };
    rig.driver.disarm();
    rig.driver.submit(0, read(0), 10, a.clone()).unwrap();
    rig.driver.kick();
    wait_used(&rig, 2);
    // Not its token, or not accepted: the completion stays for poll.
    assert_eq!(rig.driver.take_completion(11, |_| true), None);
    assert_eq!(rig.driver.take_completion(10, |_| false), None);
    let c = rig
        .driver
        .take_completion(10, |c| {
            c.status == status::OK && c.kind == pager::KIND_PROVIDED
        })
        .expect("taken");
    assert_eq!((c.token, c.bytes), (10, 4096));
    assert_eq!(rig.read(&a), pattern(4096));
    assert_eq!(rig.driver.in_flight(), 0, "its slot is free again");
    // Behind another completion, a request's own is not taken out of line.
    rig.driver.submit(0, read(4096), 20, a.clone()).unwrap();
    rig.driver.kick();
    wait_used(&rig, 3);
    rig.driver.submit(0, read(8192), 21, b.clone()).unwrap();
    rig.driver.kick();
    wait_used(&rig, 4);
    assert_eq!(rig.driver.take_completion(21, |_| true), None);
    rig.poll();
    let mut tokens: Vec<u64> = rig.done.drain(..).map(|c| c.token).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, [20, 21], "both left for poll, none lost");
    let _ = std::fs::remove_file(path);
}

#[test]
fn events_are_taken_within_a_budget_and_pushed_pages_swapped_for_fresh_frames() {
    let pager = Arc::new(devices::testing::MemPager::new(64 * PAGE_SIZE));
    let mut rig = Rig::with_objects(vec![PagerObject {
        name: "pushy".into(),
        pager: pager.clone(),
        read_only: false,
        rate_limit: Default::default(),
    }]);
    assert_eq!(rig.run(0, Op::Init, 1, &[]).status, status::OK);
    let control = pager
        .control(KernelId(7))
        .expect("a control handle after INIT");
    // Twice the budget of events, the last one with a page of data.
    let n = 2 * pager::EVENT_BUDGET as usize;
    for i in 0..n - 1 {
        control
            .lock_request(
                ObjectOffset(i as u64 * PAGE_SIZE),
                PAGE_SIZE,
                Access::NONE,
                false,
                false,
            )
            .unwrap();
    }
    control
        .offer(ObjectOffset(0), &[0xab; PAGE_SIZE as usize], Access::NONE)
        .unwrap();

    // The driver takes the budget's worth, however long it polls.
    let mut seen = Vec::new();
    let mut pushed = None;
    let fresh = rig.pages(1)[0].addr;
    let start = Instant::now();
    while seen.len() < pager::EVENT_BUDGET as usize && start.elapsed() < Duration::from_secs(10) {
        let done = &mut rig.done;
        rig.driver.poll(
            &mut |c: &Completion, _: &Frames| done.push(*c),
            &mut |e: &Event| {
                seen.push(*e);
                None
            },
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    let done = &mut rig.done;
    rig.driver.poll(
        &mut |c: &Completion, _: &Frames| done.push(*c),
        &mut |e: &Event| {
            seen.push(*e);
            None
        },
    );
    assert_eq!(seen.len(), pager::EVENT_BUDGET as usize, "over budget");
    assert_eq!(rig.driver.stats.events_deferred, 1);
    // A period with no budget (the kernel still paying for the last ones)
    // takes nothing, polled or not.
    let done = &mut rig.done;
    let mut done = |c: &Completion, _: &Frames| done.push(*c);
    let mut count = |e: &Event| {
        seen.push(*e);
        None
    };
    rig.driver.refill_events(0, &mut done, &mut count);
    rig.driver.poll(&mut done, &mut count);
    assert_eq!(
        seen.len(),
        pager::EVENT_BUDGET as usize,
        "took events without budget"
    );

    // Each new period takes another budget's worth, in order; the pushed
    // page is kept by the kernel, which gives the driver a fresh frame.
    let start = Instant::now();
    while seen.len() < n && start.elapsed() < Duration::from_secs(10) {
        let done = &mut rig.done;
        let mut done = |c: &Completion, _: &Frames| done.push(*c);
        let mut on_event = |e: &Event| {
            seen.push(*e);
            if let Some(page) = e.data {
                pushed = Some(page);
                return Some(fresh);
            }
            None
        };
        // A tick, then what an interrupt would do.
        rig.driver
            .refill_events(pager::EVENT_BUDGET, &mut done, &mut on_event);
        rig.driver.poll(&mut done, &mut on_event);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(seen.len(), n);
    let offsets: Vec<u64> = seen[..n - 1].iter().map(|e| e.offset).collect();
    assert_eq!(
        offsets,
        (0..n as u64 - 1).map(|i| i * PAGE_SIZE).collect::<Vec<_>>()
    );
    let page = pushed.expect("the pushed page arrived");
    assert_eq!(
        rig.read(&[Segment {
            addr: page,
            len: 16
        }]),
        vec![0xab; 16]
    );
    assert_eq!(rig.driver.stats.event_pages_taken, 1);

    // The next push lands in the fresh frame, not in the page given away.
    control
        .offer(
            ObjectOffset(PAGE_SIZE),
            &[0xcd; PAGE_SIZE as usize],
            Access::NONE,
        )
        .unwrap();
    let mut second = None;
    let start = Instant::now();
    while second.is_none() && start.elapsed() < Duration::from_secs(10) {
        let done = &mut rig.done;
        let mut done = |c: &Completion, _: &Frames| done.push(*c);
        let mut on_event = |e: &Event| {
            second = e.data;
            None
        };
        rig.driver
            .refill_events(pager::EVENT_BUDGET, &mut done, &mut on_event);
        rig.driver.poll(&mut done, &mut on_event);
        std::thread::sleep(Duration::from_millis(1));
    }
    let at = second.expect("second push");
    assert_ne!(at, page);
    assert_eq!(rig.read(&[Segment { addr: at, len: 16 }]), vec![0xcd; 16]);
    assert_eq!(
        rig.read(&[Segment {
            addr: page,
            len: 16
        }]),
        vec![0xab; 16]
    );
}

/// The caching a host pager last permitted is what the kernel sees when it
/// maps the object (kernel/vm/calls.rs reads the driver's object state),
/// even if the pager changed its mind while no VM object existed to apply
/// the CACHE event to.
#[test]
fn a_cache_event_changes_what_the_object_state_says() {
    let pager = Arc::new(devices::testing::MemPager::new(4 * PAGE_SIZE));
    let mut rig = Rig::with_objects(vec![PagerObject {
        name: "cachy".into(),
        pager: pager.clone(),
        read_only: false,
        rate_limit: Default::default(),
    }]);
    assert_eq!(rig.run(0, Op::Init, 1, &[]).status, status::OK);
    let may_cache = |rig: &Rig| match rig.driver.object(0).map(|o| o.state) {
        Some(ObjState::Ready { may_cache, .. }) => may_cache,
        other => panic!("object not ready: {other:?}"),
    };
    assert!(may_cache(&rig), "INIT permitted caching");
    let control = pager.control(KernelId(7)).expect("control after INIT");
    control.set_cache(false).unwrap();
    let start = Instant::now();
    while rig.events.is_empty() && start.elapsed() < Duration::from_secs(10) {
        rig.poll();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rig.events.len(), 1, "the CACHE event arrived");
    assert!(!may_cache(&rig), "rescinded by the CACHE event");
    control.set_cache(true).unwrap();
    let start = Instant::now();
    while rig.events.len() < 2 && start.elapsed() < Duration::from_secs(10) {
        rig.poll();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(may_cache(&rig), "permitted again");
}
