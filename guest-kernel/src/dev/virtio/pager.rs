//! The virtio-pager driver (docs/virtio-pager.md): the guest kernel's end of
//! the external memory management interface for objects served by host
//! pagers.
//!
//! It is a kernel-internal service with no caller's policy in it: submit a
//! request for an object range with a list of frames and a token, and later
//! `interrupt()` hands back a `Completion` carrying that token; pager
//! initiated calls (lock, flush, clean, offer, cache, destroy) come out of
//! the same call as `Event`s. Whoever waits (a task in a system call today,
//! the VM fault path later) is the caller's business.
//!
//! Cost on the request path is what matters where ring 0 is emulated: each
//! request slot owns a fixed ring descriptor, header/response area and
//! indirect table, set up once, so a request writes its header, one
//! descriptor per frame run and one avail entry; no allocation, no copy, no
//! free-list walk. One notification covers a batch (`kick`), and EVENT_IDX
//! keeps both notifications and interrupts to what is needed.

use super::mmio::{self, QueueAddrs, Transport, TransportError, status as dev_status};
use super::virtqueue::{self, DESC_INDIRECT, DESC_NEXT, DESC_WRITE, SplitQueue};
use super::{Dma, Regs};
use crate::addr::{PAGE_SIZE, PhysAddr};
use alloc::vec::Vec;
use core::ptr::{read_volatile, write_volatile};

pub const DEVICE_ID: u32 = 0xD0A1;
pub const F_READAHEAD: u32 = 0;
pub const F_UNLOCK: u32 = 1;
pub const F_EVENTS: u32 = 2;
/// LOCK_REQUEST events may ask for a LOCK_COMPLETED reply (F_REPLY).
pub const F_LOCK_COMPLETED: u32 = 3;

pub const REQUEST_QUEUE: u16 = 0;
pub const EVENT_QUEUE: u16 = 1;

/// Requests in flight at once (one bit each in a u64).
pub const REQ_SLOTS: usize = 64;
/// An indirect table fills one page: header + frames + response.
const TABLE_ENTRIES: usize = (PAGE_SIZE as usize) / virtqueue::DESC_SIZE;
pub const MAX_FRAMES: usize = TABLE_ENTRIES - 2;
/// Event buffers kept posted: a 32-byte slot and one page for offers each.
pub const EVENT_BUFS: usize = 8;
/// Events taken per budget period; the kernel refills the budget on each
/// timer tick (`refill_events`). A pager that issues events faster than
/// that finds them waiting in the device's bounded backlog, then refused:
/// the guest's work per tick stays bounded whatever a pager does.
pub const EVENT_BUDGET: u32 = 16;
const SLOT_AREA: u64 = 64;

const REQ_HDR_SIZE: u32 = 32;
const RESP_SIZE: u32 = 24;
const EVENT_SIZE: u32 = 32;
const CONFIG_HDR: u64 = 16;
const OBJECT_ENTRY: u64 = 64;
pub const NAME_MAX: usize = 47;
/// Object table entries this driver keeps (the device may list more).
pub const MAX_OBJECTS: usize = 256;

/// Bounded polls of Status during a reset done synchronously (boot, self
/// test); the interrupt path never spins, it retries from the timer.
pub const RESET_POLLS: u32 = 1_000_000;

pub mod req {
    pub const INIT: u16 = 1;
    pub const DATA_REQUEST: u16 = 2;
    pub const DATA_WRITE: u16 = 3;
    pub const DATA_UNLOCK: u16 = 4;
    pub const TERMINATE: u16 = 5;
    pub const SYNC: u16 = 6;
    pub const LOCK_COMPLETED: u16 = 7;
}

/// Response status (device codes 0..=9, then the driver's own).
pub mod status {
    pub const OK: u32 = 0;
    pub const BAD_REQUEST: u32 = 1;
    pub const UNSUPPORTED: u32 = 2;
    pub const NO_OBJECT: u32 = 3;
    pub const BAD_RANGE: u32 = 4;
    pub const PAST_END: u32 = 5;
    pub const READ_ONLY: u32 = 6;
    pub const BAD_STATE: u32 = 7;
    pub const IO_ERROR: u32 = 8;
    pub const PAGER_FAILED: u32 = 9;
    pub const TIMED_OUT: u32 = 10;
    /// The device was reset while the request was in flight.
    pub const DEVICE_RESET: u32 = 0x100;
}

pub const KIND_PROVIDED: u32 = 1;
pub const KIND_UNAVAILABLE: u32 = 2;
pub const INIT_F_READ_ONLY: u8 = 1;
pub const INIT_F_MAY_CACHE: u8 = 2;
pub const OBJ_F_READ_ONLY: u32 = 1;

pub mod event {
    pub const LOCK_REQUEST: u16 = 1;
    pub const CACHE: u16 = 2;
    pub const DATA_PROVIDED: u16 = 3;
    pub const DESTROY: u16 = 4;
    pub const F_CLEAN: u16 = 1;
    pub const F_FLUSH: u16 = 2;
    /// Answer with LOCK_COMPLETED echoing the event's tag.
    pub const F_REPLY: u16 = 4;
    pub const F_MAY_CACHE: u16 = 1;
}

/// Access bits (`desired`, `lock`).
pub const ACCESS_READ: u8 = 1;
pub const ACCESS_WRITE: u8 = 2;

/// A run of guest-physical frames: page aligned, whole pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: PhysAddr,
    pub len: u32,
}

/// Kernel → manager calls (Table 3-5), as requests on the request queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Init,
    DataRequest {
        offset: u64,
        len: u64,
        desired: u8,
    },
    DataWrite {
        offset: u64,
        len: u64,
    },
    DataUnlock {
        offset: u64,
        len: u64,
        desired: u8,
    },
    Terminate,
    Sync,
    /// The lock request whose event carried `tag` is done (its range).
    LockCompleted {
        offset: u64,
        len: u64,
        tag: u32,
    },
}

impl Op {
    /// (type, offset, length, the header's last quadword: access, padding
    /// and the reserved field, which LOCK_COMPLETED uses for its tag).
    fn wire(&self) -> (u16, u64, u64, u64) {
        match *self {
            Op::Init => (req::INIT, 0, 0, 0),
            Op::DataRequest {
                offset,
                len,
                desired,
            } => (req::DATA_REQUEST, offset, len, u64::from(desired)),
            Op::DataWrite { offset, len } => (req::DATA_WRITE, offset, len, 0),
            Op::DataUnlock {
                offset,
                len,
                desired,
            } => (req::DATA_UNLOCK, offset, len, u64::from(desired)),
            Op::Terminate => (req::TERMINATE, 0, 0, 0),
            Op::Sync => (req::SYNC, 0, 0, 0),
            Op::LockCompleted { offset, len, tag } => {
                (req::LOCK_COMPLETED, offset, len, u64::from(tag) << 32)
            }
        }
    }
}

/// A finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub token: u64,
    pub object: u32,
    pub op: u16,
    /// The request's `length` (what a caller asked for).
    pub len: u64,
    pub status: u32,
    /// DATA_REQUEST: `KIND_PROVIDED` or `KIND_UNAVAILABLE`.
    pub kind: u32,
    /// Provided/unavailable byte count; INIT: the object size.
    pub bytes: u64,
    pub lock: u8,
    pub flags: u8,
}

/// A manager → kernel call (Table 3-6) that arrived on the event queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: u16,
    pub flags: u16,
    pub object: u32,
    pub offset: u64,
    pub length: u64,
    pub lock: u8,
    /// LOCK_REQUEST with F_REPLY: what LOCK_COMPLETED echoes.
    pub tag: u32,
    /// DATA_PROVIDED: where the offered bytes are (one page at most here).
    pub data: Option<PhysAddr>,
}

/// The frames of a finished request, read back from its indirect table
/// (a DATA_UNAVAILABLE answer leaves zero-filling them to the caller).
pub struct Frames {
    table: *const u8,
    n: usize,
}

impl Frames {
    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    pub fn get(&self, i: usize) -> Option<Segment> {
        if i >= self.n {
            return None;
        }
        // SAFETY: entries 1..=n of the slot's table hold the frames.
        let (addr, len, _, _) = unsafe { virtqueue::read_desc(self.table, i + 1) };
        Some(Segment {
            addr: PhysAddr(addr),
            len,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjState {
    Uninit,
    Initializing,
    Ready {
        size: u64,
        read_only: bool,
        may_cache: bool,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Object {
    name: [u8; NAME_MAX],
    name_len: u8,
    /// Size in the config table (INIT tells the current one).
    pub table_size: u64,
    pub table_flags: u32,
    pub state: ObjState,
}

impl Object {
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// Every slot is in flight; retry after a completion.
    Busy,
    NoObject,
    /// INIT on an object that is not Uninit, or a request before INIT
    /// completed.
    BadState,
    ReadOnly,
    /// Frames do not match the op (count, alignment, total length).
    BadFrames,
    /// The device needs or is in a reset.
    Broken,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    pub submitted: u64,
    pub completed: u64,
    pub notifies: u64,
    pub interrupts: u64,
    pub status_reads: u64,
    pub events: u64,
    /// Budget periods that ran out with events still waiting.
    pub events_deferred: u64,
    /// Event pages the kernel took in exchange for a fresh frame.
    pub event_pages_taken: u64,
    pub spurious: u64,
    pub resets: u64,
}

/// Pages the driver lives in, all given by the kernel at start.
struct DriverMem {
    reqq: QueueAddrs,
    evq: QueueAddrs,
    /// 64 bytes per slot: header at +0, response at +32.
    slots: PhysAddr,
    tables: [PhysAddr; REQ_SLOTS],
    /// 32 bytes per event buffer.
    ev_slots: PhysAddr,
    ev_frames: [PhysAddr; EVENT_BUFS],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Running,
    /// Status was written 0; waiting for it to read back 0.
    Resetting,
}

#[derive(Clone, Copy)]
struct SlotInfo {
    token: u64,
    len: u64,
    object: u32,
    op: u16,
    frames: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    Transport(TransportError),
    /// The kernel could not give the driver its pages.
    NoMemory,
    /// The device's config space is not what this driver speaks.
    BadConfig,
}

impl From<TransportError> for StartError {
    fn from(e: TransportError) -> Self {
        StartError::Transport(e)
    }
}

pub struct PagerDriver<R: Regs, D: Dma> {
    t: Transport<R>,
    dma: D,
    mem: DriverMem,
    features: u64,
    reqq: SplitQueue,
    evq: SplitQueue,
    busy: u64,
    slots: [SlotInfo; REQ_SLOTS],
    objects: Vec<Object>,
    max_frames: usize,
    max_bytes: u64,
    health: Health,
    /// Events that may still be taken this period, and whether some were
    /// left on the used ring when it ran out.
    event_budget: u32,
    events_held: bool,
    /// Completions seen at the last watchdog tick (progress check).
    watch_completed: u64,
    pub stats: DriverStats,
}

const WANTED: u64 = (1 << mmio::F_VERSION_1)
    | (1 << mmio::F_INDIRECT_DESC)
    | (1 << mmio::F_EVENT_IDX)
    | (1 << F_UNLOCK)
    | (1 << F_EVENTS)
    | (1 << F_LOCK_COMPLETED);
const REQUIRED: u64 = (1 << mmio::F_VERSION_1) | (1 << mmio::F_INDIRECT_DESC);

const REQQ_SIZE: u16 = REQ_SLOTS as u16;
const EVQ_SIZE: u16 = (EVENT_BUFS * 2) as u16;
const _: () = assert!(REQQ_SIZE.is_power_of_two() && EVQ_SIZE.is_power_of_two());
const _: () = assert!(REQ_SLOTS <= 64, "busy slots are one u64");

impl<R: Regs, D: Dma> PagerDriver<R, D> {
    /// Probes, resets and brings up the device. `page` hands out zeroed
    /// frames (REQ_SLOTS + EVENT_BUFS + 8 of them), which stay the driver's.
    pub fn start(
        regs: R,
        dma: D,
        page: &mut dyn FnMut() -> Option<PhysAddr>,
    ) -> Result<Self, StartError> {
        let t = Transport::probe(regs, DEVICE_ID)?;
        t.reset(RESET_POLLS)?;
        let mut get = || page().ok_or(StartError::NoMemory);
        let mem = DriverMem {
            reqq: QueueAddrs {
                desc: get()?,
                avail: get()?,
                used: get()?,
            },
            evq: QueueAddrs {
                desc: get()?,
                avail: get()?,
                used: get()?,
            },
            slots: get()?,
            tables: {
                let mut t = [PhysAddr(0); REQ_SLOTS];
                for e in &mut t {
                    *e = get()?;
                }
                t
            },
            ev_slots: get()?,
            ev_frames: {
                let mut f = [PhysAddr(0); EVENT_BUFS];
                for e in &mut f {
                    *e = get()?;
                }
                f
            },
        };
        // SAFETY: the pages were just handed to us, zeroed and exclusive.
        let (reqq, evq) = unsafe { Self::queues(&dma, &mem, false) };
        let mut d = PagerDriver {
            t,
            dma,
            mem,
            features: 0,
            reqq,
            evq,
            busy: 0,
            slots: [SlotInfo {
                token: 0,
                len: 0,
                object: 0,
                op: 0,
                frames: 0,
            }; REQ_SLOTS],
            objects: Vec::new(),
            max_frames: MAX_FRAMES,
            max_bytes: 0,
            health: Health::Running,
            event_budget: EVENT_BUDGET,
            events_held: false,
            watch_completed: 0,
            stats: DriverStats::default(),
        };
        d.bring_up()?;
        d.read_config()?;
        Ok(d)
    }

    /// # Safety
    /// `mem`'s ring pages must be the driver's own.
    unsafe fn queues(dma: &D, mem: &DriverMem, event_idx: bool) -> (SplitQueue, SplitQueue) {
        let q = |a: &QueueAddrs, size| {
            // SAFETY: each ring part is one page of ours, larger than the
            // part needs for `size` entries.
            unsafe {
                SplitQueue::new(
                    size,
                    dma.ptr(a.desc),
                    dma.ptr(a.avail),
                    dma.ptr(a.used),
                    event_idx,
                )
            }
        };
        (q(&mem.reqq, REQQ_SIZE), q(&mem.evq, EVQ_SIZE))
    }

    /// Feature handshake, queues, event buffers, DRIVER_OK. Used at start
    /// and after every reset (the same pages are reused).
    fn bring_up(&mut self) -> Result<(), StartError> {
        self.features = self.t.negotiate(WANTED, REQUIRED)?;
        let event_idx = self.has(mmio::F_EVENT_IDX);
        // SAFETY: our pages; the device was reset, so it does not use them.
        let (reqq, evq) = unsafe { Self::queues(&self.dma, &self.mem, event_idx) };
        self.reqq = reqq;
        self.evq = evq;
        self.busy = 0;
        self.write_fixed_descriptors();
        self.t
            .setup_queue(REQUEST_QUEUE, REQQ_SIZE, self.mem.reqq)?;
        self.t.setup_queue(EVENT_QUEUE, EVQ_SIZE, self.mem.evq)?;
        self.t.driver_ok();
        if self.t.status() & dev_status::DRIVER_OK == 0 {
            return Err(StartError::Transport(TransportError::FeaturesRefused));
        }
        if self.has(F_EVENTS) {
            for j in 0..EVENT_BUFS {
                self.evq.push((2 * j) as u16);
            }
            if self.evq.publish() {
                self.t.notify(EVENT_QUEUE);
                self.stats.notifies += 1;
            }
        }
        self.reqq.arm();
        self.evq.arm();
        Ok(())
    }

    /// What never changes per request: ring descriptor i → table i, table
    /// entry 0 → header i; event descriptors slot → frame.
    fn write_fixed_descriptors(&mut self) {
        let ring = self.reqq.desc_table();
        for i in 0..REQ_SLOTS {
            let table = self.dma.ptr(self.mem.tables[i]);
            let hdr = self.mem.slots.0 + SLOT_AREA * i as u64;
            // SAFETY: i < ring size; entry 0 of a one-page table.
            unsafe {
                virtqueue::write_desc(ring, i, self.mem.tables[i].0, 0, DESC_INDIRECT, 0);
                virtqueue::write_desc(table, 0, hdr, REQ_HDR_SIZE, DESC_NEXT, 1);
            }
        }
        let ev = self.evq.desc_table();
        for j in 0..EVENT_BUFS {
            let slot = self.mem.ev_slots.0 + u64::from(EVENT_SIZE) * j as u64;
            // SAFETY: 2j+1 < EVQ_SIZE.
            unsafe {
                virtqueue::write_desc(
                    ev,
                    2 * j,
                    slot,
                    EVENT_SIZE,
                    DESC_WRITE | DESC_NEXT,
                    (2 * j + 1) as u16,
                );
                virtqueue::write_desc(
                    ev,
                    2 * j + 1,
                    self.mem.ev_frames[j].0,
                    PAGE_SIZE as u32,
                    DESC_WRITE,
                    0,
                );
            }
        }
    }

    fn read_config(&mut self) -> Result<(), StartError> {
        let n = self.t.config32(0) as usize;
        let max_segments = self.t.config32(4) as usize;
        let max_bytes = u64::from(self.t.config32(8));
        if self.t.config32(12) as u64 != PAGE_SIZE || max_segments == 0 || max_bytes < PAGE_SIZE {
            return Err(StartError::BadConfig);
        }
        self.max_frames = max_segments.min(MAX_FRAMES);
        self.max_bytes = max_bytes;
        let n = n.min(MAX_OBJECTS);
        let mut objects = Vec::new();
        objects
            .try_reserve_exact(n)
            .map_err(|_| StartError::NoMemory)?;
        for i in 0..n {
            let base = CONFIG_HDR + OBJECT_ENTRY * i as u64;
            let mut name = [0u8; NAME_MAX];
            let mut name_len = 0u8;
            for w in 0..(NAME_MAX as u64).div_ceil(4) {
                let word = self.t.config32(base + 16 + 4 * w).to_le_bytes();
                for (k, &b) in word.iter().enumerate() {
                    let at = (4 * w) as usize + k;
                    if at < NAME_MAX && b != 0 && name_len as usize == at {
                        name[at] = b;
                        name_len += 1;
                    }
                }
            }
            objects.push(Object {
                name,
                name_len,
                table_size: self.t.config64(base),
                table_flags: self.t.config32(base + 12),
                state: ObjState::Uninit,
            });
        }
        self.objects = objects;
        Ok(())
    }

    fn has(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    pub fn features(&self) -> u64 {
        self.features
    }

    pub fn objects(&self) -> &[Object] {
        &self.objects
    }

    pub fn object(&self, id: u32) -> Option<&Object> {
        self.objects.get(id as usize)
    }

    pub fn find(&self, name: &[u8]) -> Option<u32> {
        self.objects
            .iter()
            .position(|o| o.name() == name)
            .map(|i| i as u32)
    }

    /// Largest frame total of one request.
    pub fn max_request_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn max_frames(&self) -> usize {
        self.max_frames
    }

    pub fn in_flight(&self) -> u32 {
        self.busy.count_ones()
    }

    /// Requests the device has returned that no one has taken yet.
    pub fn completions_waiting(&self) -> u64 {
        u64::from(self.reqq.used_waiting())
    }

    pub fn is_resetting(&self) -> bool {
        self.health == Health::Resetting
    }

    /// Queues one request; `kick` sends the batch. `frames` are the data
    /// pages in object order (adjacent runs are merged into one
    /// descriptor). The frames must stay the caller's until the completion.
    pub fn submit(
        &mut self,
        object: u32,
        op: Op,
        token: u64,
        frames: impl IntoIterator<Item = Segment>,
    ) -> Result<(), SubmitError> {
        if self.health != Health::Running {
            return Err(SubmitError::Broken);
        }
        let state = self
            .objects
            .get(object as usize)
            .ok_or(SubmitError::NoObject)?
            .state;
        match (op, state) {
            (Op::Init, ObjState::Uninit) => {}
            (Op::Init, _) | (_, ObjState::Uninit | ObjState::Initializing) => {
                return Err(SubmitError::BadState);
            }
            (
                Op::DataWrite { .. },
                ObjState::Ready {
                    read_only: true, ..
                },
            ) => {
                return Err(SubmitError::ReadOnly);
            }
            _ => {}
        }
        let free = !self.busy;
        if free == 0 {
            return Err(SubmitError::Busy);
        }
        let slot = free.trailing_zeros() as usize;
        let (ty, offset, len, access) = op.wire();
        let write_frames = match op {
            Op::DataRequest { .. } => Some(true),
            Op::DataWrite { .. } => Some(false),
            _ => None,
        };
        let table = self.dma.ptr(self.mem.tables[slot]);
        let mut n = 0usize;
        let mut total = 0u64;
        if let Some(writable) = write_frames {
            let flags = DESC_NEXT | if writable { DESC_WRITE } else { 0 };
            let mut run: Option<Segment> = None;
            for s in frames {
                if !s.addr.is_aligned(PAGE_SIZE) || s.len == 0 || u64::from(s.len) % PAGE_SIZE != 0
                {
                    return Err(SubmitError::BadFrames);
                }
                total += u64::from(s.len);
                if total > self.max_bytes {
                    return Err(SubmitError::BadFrames);
                }
                run = match run {
                    Some(r) if r.addr.0 + u64::from(r.len) == s.addr.0 => Some(Segment {
                        addr: r.addr,
                        len: r.len + s.len,
                    }),
                    Some(r) => {
                        if n == self.max_frames {
                            return Err(SubmitError::BadFrames);
                        }
                        // SAFETY: n + 1 < TABLE_ENTRIES.
                        unsafe {
                            virtqueue::write_desc(
                                table,
                                n + 1,
                                r.addr.0,
                                r.len,
                                flags,
                                (n + 2) as u16,
                            )
                        };
                        n += 1;
                        Some(s)
                    }
                    None => Some(s),
                };
            }
            if let Some(r) = run {
                if n == self.max_frames {
                    return Err(SubmitError::BadFrames);
                }
                // SAFETY: as above.
                unsafe {
                    virtqueue::write_desc(table, n + 1, r.addr.0, r.len, flags, (n + 2) as u16)
                };
                n += 1;
            }
            if total != len || len == 0 {
                return Err(SubmitError::BadFrames);
            }
        }
        let area = self
            .dma
            .ptr(PhysAddr(self.mem.slots.0 + SLOT_AREA * slot as u64));
        // SAFETY: the slot's 64-byte area and its table are ours; the device
        // does not read them until the head is published.
        unsafe {
            // type, flags (0), object_id | offset | length | access, padding
            // and reserved (0): four quadword stores.
            write_volatile(area as *mut u64, u64::from(ty) | (u64::from(object) << 32));
            write_volatile(area.add(8) as *mut u64, offset);
            write_volatile(area.add(16) as *mut u64, len);
            write_volatile(area.add(24) as *mut u64, access);
            virtqueue::write_desc(
                table,
                n + 1,
                self.mem.slots.0 + SLOT_AREA * slot as u64 + 32,
                RESP_SIZE,
                DESC_WRITE,
                0,
            );
            // The ring descriptor's length tells the device how many
            // entries of the indirect table count.
            write_volatile(
                self.reqq.desc_table().add(slot * virtqueue::DESC_SIZE + 8) as *mut u32,
                ((n + 2) * virtqueue::DESC_SIZE) as u32,
            );
        }
        let new_state = match op {
            Op::Init => Some(ObjState::Initializing),
            // Later requests are refused until a new INIT (spec §7).
            Op::Terminate => Some(ObjState::Uninit),
            _ => None,
        };
        if let Some(st) = new_state
            && let Some(o) = self.objects.get_mut(object as usize)
        {
            o.state = st;
        }
        self.slots[slot] = SlotInfo {
            token,
            len,
            object,
            op: ty,
            frames: n as u16,
        };
        self.busy |= 1 << slot;
        self.reqq.push(slot as u16);
        self.stats.submitted += 1;
        Ok(())
    }

    /// Publishes everything submitted since the last kick; notifies the
    /// device only if it asked (EVENT_IDX), so a busy device costs no exit.
    pub fn kick(&mut self) {
        if self.reqq.publish() {
            self.t.notify(REQUEST_QUEUE);
            self.stats.notifies += 1;
        }
    }

    /// The interrupt handler's work: retire completions, take events, and
    /// only when neither queue moved look at InterruptStatus (an exit) for
    /// a configuration change, i.e. DEVICE_NEEDS_RESET.
    pub fn interrupt<F, E>(&mut self, done: &mut F, on_event: &mut E)
    where
        F: FnMut(&Completion, &Frames) + ?Sized,
        E: FnMut(&Event) -> Option<PhysAddr> + ?Sized,
    {
        self.stats.interrupts += 1;
        let before = (self.stats.completed, self.stats.events, self.stats.spurious);
        self.poll(done, on_event);
        if before == (self.stats.completed, self.stats.events, self.stats.spurious) {
            self.stats.status_reads += 1;
            let irq = self.t.take_interrupt_status();
            if irq & mmio::IRQ_CONFIG_CHANGE != 0 {
                self.check_needs_reset(done);
            }
        }
    }

    /// Stops completion interrupts until `leave_kernel` (interrupt
    /// mitigation, like Linux's virtqueue_disable_cb): call before
    /// submitting from a path that will pass through `leave_kernel` before
    /// it sleeps or returns, so a device that answers while the kernel is
    /// still on its way out costs no interrupt.
    pub fn disarm(&mut self) {
        self.reqq.disarm();
    }

    /// On every way out of the kernel: if completions are disarmed, arm
    /// them again and take whatever arrived meanwhile (then nothing is left
    /// that an interrupt would have announced). True if anything retired.
    pub fn leave_kernel<F, E>(&mut self, done: &mut F, on_event: &mut E) -> bool
    where
        F: FnMut(&Completion, &Frames) + ?Sized,
        E: FnMut(&Event) -> Option<PhysAddr> + ?Sized,
    {
        if self.reqq.is_armed() || self.health != Health::Running {
            return false;
        }
        let before = self.stats.completed;
        self.poll(done, on_event);
        self.stats.completed != before
    }

    /// Retires completions and events without touching device registers,
    /// and leaves completion interrupts armed.
    /// Generic, not `dyn`, so the caller's completion handler is inlined
    /// into the interrupt path.
    pub fn poll<F, E>(&mut self, done: &mut F, on_event: &mut E)
    where
        F: FnMut(&Completion, &Frames) + ?Sized,
        E: FnMut(&Event) -> Option<PhysAddr> + ?Sized,
    {
        if self.health != Health::Running {
            return;
        }
        loop {
            while let Some((id, len)) = self.reqq.pop_used() {
                self.retire(id, len, done);
            }
            if !self.reqq.arm() {
                break;
            }
        }
        let mut reposted = false;
        loop {
            while self.event_budget > 0 {
                let Some((id, len)) = self.evq.pop_used() else {
                    break;
                };
                self.event_budget -= 1;
                reposted |= self.take_event(id, len, on_event);
            }
            if self.event_budget == 0 {
                // Out of budget: the rest stay on the used ring, with no
                // interrupt for them, until `refill_events`.
                if !self.events_held {
                    self.events_held = true;
                    self.stats.events_deferred += 1;
                }
                self.evq.disarm();
                break;
            }
            if !self.evq.arm() {
                break;
            }
        }
        if reposted && self.evq.publish() {
            self.t.notify(EVENT_QUEUE);
            self.stats.notifies += 1;
        }
    }

    fn retire<F>(&mut self, id: u32, used_len: u32, done: &mut F)
    where
        F: FnMut(&Completion, &Frames) + ?Sized,
    {
        let slot = id as usize;
        if slot >= REQ_SLOTS || self.busy & (1 << slot) == 0 {
            // A head we did not publish, or published twice: not ours to
            // complete again.
            self.stats.spurious += 1;
            return;
        }
        let c = self.completion_of(slot, used_len);
        let frames = Frames {
            table: self.dma.ptr(self.mem.tables[slot]),
            n: self.slots[slot].frames as usize,
        };
        done(&c, &frames);
        self.busy &= !(1 << slot);
        self.stats.completed += 1;
    }

    /// Arms completion interrupts again if no request is in flight (so
    /// none can complete unseen); true if it did. The caller that disarmed
    /// need not then pass through `leave_kernel`.
    pub fn arm_if_idle(&mut self) -> bool {
        if self.busy != 0 || self.health != Health::Running {
            return false;
        }
        // Nothing in flight, so nothing can have arrived meanwhile.
        let _ = self.reqq.arm();
        true
    }

    /// Takes the next completion only if it is the request with `token`
    /// and `accept` wants it, handing it to no one: a caller that has just
    /// submitted a request and can use its answer at once (the VM's fault
    /// path) takes it so. Anything else stays on the used ring for `poll`,
    /// in order.
    // Inline: the fault path uses only whether it got its answer, so
    // the completion need not be written out.
    #[inline]
    pub fn take_completion(
        &mut self,
        token: u64,
        accept: impl FnOnce(&Completion) -> bool,
    ) -> Option<Completion> {
        if self.health != Health::Running {
            return None;
        }
        let (id, used_len) = self.reqq.peek_used()?;
        let slot = id as usize;
        if slot >= REQ_SLOTS || self.busy & (1 << slot) == 0 || self.slots[slot].token != token {
            return None;
        }
        let c = self.completion_of(slot, used_len);
        if !accept(&c) {
            return None;
        }
        self.reqq.skip_used();
        self.busy &= !(1 << slot);
        self.stats.completed += 1;
        Some(c)
    }

    /// The finished request in `slot` (busy, returned with `used_len`
    /// bytes written), its response read; an INIT's answer is recorded.
    fn completion_of(&mut self, slot: usize, used_len: u32) -> Completion {
        let info = self.slots[slot];
        let area = self
            .dma
            .ptr(PhysAddr(self.mem.slots.0 + SLOT_AREA * slot as u64 + 32));
        // SAFETY: the slot's response area, written by the device before
        // it returned the head.
        let (mut st, kind, bytes, lock, flags) = unsafe {
            (
                read_volatile(area as *const u32),
                read_volatile(area.add(4) as *const u32),
                read_volatile(area.add(8) as *const u64),
                read_volatile(area.add(16) as *const u8),
                read_volatile(area.add(17) as *const u8),
            )
        };
        if used_len < RESP_SIZE {
            st = status::BAD_REQUEST;
        }
        let c = Completion {
            token: info.token,
            object: info.object,
            op: info.op,
            len: info.len,
            status: st,
            kind,
            bytes,
            lock,
            flags,
        };
        if info.op == req::INIT
            && let Some(o) = self.objects.get_mut(info.object as usize)
        {
            o.state = if st == status::OK {
                ObjState::Ready {
                    size: bytes,
                    read_only: flags & INIT_F_READ_ONLY != 0
                        || o.table_flags & OBJ_F_READ_ONLY != 0,
                    may_cache: flags & INIT_F_MAY_CACHE != 0,
                }
            } else {
                ObjState::Uninit
            };
        }
        c
    }

    /// A new budget period (each timer tick): up to `budget` events (at
    /// most EVENT_BUDGET; 0 while the kernel is still paying for earlier
    /// ones). Events left waiting when the last period ran out are taken.
    pub fn refill_events<F, E>(&mut self, budget: u32, done: &mut F, on_event: &mut E)
    where
        F: FnMut(&Completion, &Frames) + ?Sized,
        E: FnMut(&Event) -> Option<PhysAddr> + ?Sized,
    {
        self.event_budget = budget.min(EVENT_BUDGET);
        if self.event_budget > 0 && core::mem::take(&mut self.events_held) {
            self.poll(done, on_event);
        }
    }

    /// Returns true if the buffer was posted again. `on_event` may keep a
    /// DATA_PROVIDED's page by returning a fresh frame to post instead.
    fn take_event<E>(&mut self, id: u32, len: u32, on_event: &mut E) -> bool
    where
        E: FnMut(&Event) -> Option<PhysAddr> + ?Sized,
    {
        let j = id as usize / 2;
        if !id.is_multiple_of(2) || j >= EVENT_BUFS {
            self.stats.spurious += 1;
            return false;
        }
        if len >= EVENT_SIZE {
            let p = self.dma.ptr(PhysAddr(
                self.mem.ev_slots.0 + u64::from(EVENT_SIZE) * j as u64,
            ));
            // A reply flag means something only if both sides agreed on it.
            let replies = self.has(F_LOCK_COMPLETED);
            // SAFETY: the event slot the device just filled.
            let mut ev = unsafe {
                let kind = read_volatile(p as *const u16);
                let length = read_volatile(p.add(16) as *const u64);
                Event {
                    kind,
                    flags: read_volatile(p.add(2) as *const u16),
                    object: read_volatile(p.add(4) as *const u32),
                    offset: read_volatile(p.add(8) as *const u64),
                    length,
                    lock: read_volatile(p.add(24) as *const u8),
                    tag: read_volatile(p.add(28) as *const u32),
                    data: (kind == event::DATA_PROVIDED && len > EVENT_SIZE)
                        .then_some(self.mem.ev_frames[j]),
                }
            };
            if !replies {
                ev.flags &= !event::F_REPLY;
                ev.tag = 0;
            }
            if ev.kind == event::DESTROY
                && let Some(o) = self.objects.get_mut(ev.object as usize)
            {
                o.state = ObjState::Uninit;
            }
            // The pager's latest pager_cache is what a later mapping of
            // the object goes by (the kernel may have no VM object to
            // apply it to now: not mapped yet, or ended since).
            if ev.kind == event::CACHE
                && let Some(Object {
                    state: ObjState::Ready { may_cache, .. },
                    ..
                }) = self.objects.get_mut(ev.object as usize)
            {
                *may_cache = ev.flags & event::F_MAY_CACHE != 0;
            }
            self.stats.events += 1;
            if let (Some(_), Some(fresh)) = (ev.data, on_event(&ev)) {
                self.mem.ev_frames[j] = fresh;
                let ev_table = self.evq.desc_table();
                // SAFETY: 2j+1 < EVQ_SIZE; the buffer is ours until posted.
                unsafe {
                    virtqueue::write_desc(
                        ev_table,
                        2 * j + 1,
                        fresh.0,
                        PAGE_SIZE as u32,
                        DESC_WRITE,
                        0,
                    )
                };
                self.stats.event_pages_taken += 1;
            }
        }
        self.evq.push(id as u16);
        true
    }

    /// Reads Status; on DEVICE_NEEDS_RESET starts a reset and tries to
    /// finish it at once. Returns true if the device needed one.
    pub fn check_needs_reset<F>(&mut self, done: &mut F) -> bool
    where
        F: FnMut(&Completion, &Frames) + ?Sized,
    {
        if self.health == Health::Resetting {
            let _ = self.finish_reset(1, done);
            return true;
        }
        self.stats.status_reads += 1;
        if self.t.status() & dev_status::DEVICE_NEEDS_RESET == 0 {
            return false;
        }
        self.begin_reset();
        let _ = self.finish_reset(1, done);
        true
    }

    /// Timer tick: with requests in flight and no completion since the last
    /// tick, look at the device (an interrupt may have been coalesced away,
    /// or the device may have stopped). Costs nothing when idle or moving.
    pub fn watchdog<F, E>(&mut self, done: &mut F, on_event: &mut E)
    where
        F: FnMut(&Completion, &Frames) + ?Sized,
        E: FnMut(&Event) -> Option<PhysAddr> + ?Sized,
    {
        if self.health == Health::Resetting {
            let _ = self.finish_reset(1, done);
            return;
        }
        let moved = self.stats.completed != self.watch_completed;
        self.watch_completed = self.stats.completed;
        if self.busy == 0 || moved {
            return;
        }
        if !self.check_needs_reset(done) {
            self.poll(done, on_event);
        }
    }

    /// Writes 0 to Status: the device stops taking requests.
    pub fn begin_reset(&mut self) {
        self.health = Health::Resetting;
        self.t.start_reset();
    }

    /// Once Status reads 0 (the host finished with our frames), fails every
    /// request that was in flight with `DEVICE_RESET`, forgets object
    /// initialisation (the device terminated them towards the pagers) and
    /// brings the device up again. Ok(false): still pending.
    pub fn finish_reset<F>(&mut self, polls: u32, done: &mut F) -> Result<bool, StartError>
    where
        F: FnMut(&Completion, &Frames) + ?Sized,
    {
        if self.t.reset_done(polls).is_err() {
            return Ok(false);
        }
        for slot in 0..REQ_SLOTS {
            if self.busy & (1 << slot) == 0 {
                continue;
            }
            let info = self.slots[slot];
            let c = Completion {
                token: info.token,
                object: info.object,
                op: info.op,
                len: info.len,
                status: status::DEVICE_RESET,
                kind: 0,
                bytes: 0,
                lock: 0,
                flags: 0,
            };
            let frames = Frames {
                table: self.dma.ptr(self.mem.tables[slot]),
                n: info.frames as usize,
            };
            done(&c, &frames);
            self.busy &= !(1 << slot);
        }
        for o in &mut self.objects {
            o.state = ObjState::Uninit;
        }
        self.stats.resets += 1;
        self.health = Health::Running;
        if let Err(e) = self.bring_up() {
            self.health = Health::Resetting;
            self.t.fail();
            return Err(e);
        }
        Ok(true)
    }

    /// For the hostile-driver self test: raw access to a free slot's
    /// indirect table and the request ring.
    pub fn raw(&mut self) -> Raw<'_, R, D> {
        Raw { d: self }
    }
}

/// Deliberately malformed submissions (the `selftest=hostile` boot mode):
/// the device must reject them without harm, and the driver must survive
/// whatever comes back.
pub struct Raw<'a, R: Regs, D: Dma> {
    d: &'a mut PagerDriver<R, D>,
}

/// One descriptor of a hand-made indirect table: (addr, len, flags, next).
pub type RawDesc = (u64, u32, u16, u16);

impl<R: Regs, D: Dma> Raw<'_, R, D> {
    /// Takes a free slot, writes `header` into its header area and `table`
    /// as its indirect table verbatim (entry 0 is replaced by the header
    /// descriptor only if `table` is empty), and queues it. Returns the slot.
    pub fn submit(&mut self, header: [u8; 32], table: &[RawDesc], token: u64) -> Option<usize> {
        let d = &mut *self.d;
        let free = !d.busy;
        if free == 0 || table.len() > TABLE_ENTRIES || d.health != Health::Running {
            return None;
        }
        let slot = free.trailing_zeros() as usize;
        let t = d.dma.ptr(d.mem.tables[slot]);
        let area = d.dma.ptr(PhysAddr(d.mem.slots.0 + SLOT_AREA * slot as u64));
        // SAFETY: the slot's own pages.
        unsafe {
            for (i, b) in header.iter().enumerate() {
                write_volatile(area.add(i), *b);
            }
            for (i, &(addr, len, flags, next)) in table.iter().enumerate() {
                virtqueue::write_desc(t, i, addr, len, flags, next);
            }
            write_volatile(
                d.reqq.desc_table().add(slot * virtqueue::DESC_SIZE + 8) as *mut u32,
                (table.len() * virtqueue::DESC_SIZE) as u32,
            );
        }
        d.slots[slot] = SlotInfo {
            token,
            len: u64::from_le_bytes([
                header[16], header[17], header[18], header[19], header[20], header[21], header[22],
                header[23],
            ]),
            object: u32::from_le_bytes([header[4], header[5], header[6], header[7]]),
            op: u16::from_le_bytes([header[0], header[1]]),
            frames: 0,
        };
        d.busy |= 1 << slot;
        d.reqq.push(slot as u16);
        d.stats.submitted += 1;
        Some(slot)
    }

    /// Puts an already published head in the ring once more.
    pub fn republish(&mut self, slot: usize) {
        self.d.reqq.push(slot as u16);
    }

    /// Publishes an avail index far past anything pushed: a broken ring.
    pub fn break_ring(&mut self) {
        self.d
            .reqq
            .corrupt_avail_index(self.d.reqq.size().wrapping_mul(3));
        self.d.t.notify(REQUEST_QUEUE);
    }

    /// Guest-physical addresses of the slot's header and response.
    pub fn slot_area(&self, slot: usize) -> (PhysAddr, PhysAddr) {
        let a = self.d.mem.slots.0 + SLOT_AREA * slot as u64;
        (PhysAddr(a), PhysAddr(a + 32))
    }

    /// Restores the fixed entry 0 (header) of a slot's table after a raw use.
    pub fn restore(&mut self) {
        self.d.write_fixed_descriptors();
    }
}

/// Builds a 32-byte request header.
pub fn header(ty: u16, object: u32, offset: u64, len: u64, access: u8) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[0..2].copy_from_slice(&ty.to_le_bytes());
    h[4..8].copy_from_slice(&object.to_le_bytes());
    h[8..16].copy_from_slice(&offset.to_le_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h[24] = access;
    h
}
