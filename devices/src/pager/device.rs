//! The virtio-pager device: object table, negotiated state, and the queue
//! processing run by the event loop (event_handler.rs). Backend calls are
//! handed to the worker pool (worker.rs); here we only parse, validate,
//! dispatch and retire.

use super::control::{DeviceControl, EventBacklog};
use super::wire::{
    self, EVENT_QUEUE, EVENT_SIZE, Limits, MAX_CHAIN_LEN, MAX_FRAME_SEGMENTS, MAX_REQUEST_BYTES,
    OBJ_F_READ_ONLY, ObjectEntry, ObjectId, QUEUE_SIZE, REQ_HDR_SIZE, REQUEST_QUEUE, RESP_SIZE,
    Request, Response, VIRTIO_ID_PAGER, VIRTIO_PAGER_F_EVENTS, VIRTIO_PAGER_F_READAHEAD,
    VIRTIO_PAGER_F_UNLOCK, VIRTIO_PAGER_VENDOR, status,
};
use super::worker::{Completions, Effect, Job, WorkerPool};
use crate::virtio::{
    ActivateError, ActiveQueue, Interrupt, Segment, VirtioDevice, collect_chain, features,
};
use pager_backends::{KernelControl, KernelId, ObjectInfo, PAGE_SIZE, Pager};
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use thiserror::Error;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// One memory object exported to the guest.
pub struct PagerObject {
    /// Shown in the config-space table (at most 47 bytes are kept).
    pub name: String,
    pub pager: Arc<dyn Pager>,
    /// Refuse DATA_WRITE regardless of what the pager says at INIT.
    pub read_only: bool,
}

#[derive(Debug, Error)]
pub enum PagerDeviceError {
    #[error("too many objects: {0}")]
    TooManyObjects(usize),
    #[error("object {name}: extent: {source}")]
    Extent {
        name: String,
        source: pager_backends::PagerError,
    },
    #[error("device setup: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ObjState {
    Uninit,
    /// INIT handed to a worker, not retired yet.
    Initializing,
    Ready(ObjectInfo),
}

struct ObjectSlot {
    pager: Arc<dyn Pager>,
    read_only: bool,
    state: ObjState,
}

/// A posted event-queue buffer: the 32-byte event slot plus optional frames
/// for unsolicited page data.
struct EventBuf {
    head: u16,
    slot: Segment,
    frames: Vec<Segment>,
}

pub(crate) struct Active {
    pub(crate) mem: Arc<GuestMemoryMmap>,
    reqq: Queue,
    evq: Queue,
    pub(crate) req_evt: EventFd,
    pub(crate) ev_evt: EventFd,
    interrupt: Arc<Interrupt>,
    event_bufs: VecDeque<EventBuf>,
}

/// Counters for `vmm pager stat` and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PagerStats {
    pub requests: u64,
    pub rejected: u64,
    pub completed: u64,
    pub events_delivered: u64,
    pub event_bufs_rejected: u64,
    pub offers_dropped: u64,
    pub interrupts: u64,
}

pub struct PagerDevice {
    kernel: KernelId,
    objects: Vec<ObjectSlot>,
    config: Vec<u8>,
    avail_features: u64,
    acked_features: u64,
    pub(crate) active: Option<Active>,
    generation: u64,
    needs_reset: bool,
    pool: WorkerPool,
    pub(crate) completions: Arc<Completions>,
    pub(crate) backlog: Arc<EventBacklog>,
    /// Written whenever the set of queue fds changes (activate, reset) so
    /// the event loop re-registers them.
    pub(crate) activate_evt: EventFd,
    /// Queue fds of a previous activation, to be removed from epoll.
    pub(crate) stale_fds: Vec<EventFd>,
    pub(crate) queues_registered: bool,
    stats: PagerStats,
}

/// Default number of backend worker threads.
pub const DEFAULT_WORKERS: usize = 2;

impl PagerDevice {
    /// `kernel` is how this VM identifies itself to every pager. Object ids
    /// are indices into `objects`.
    pub fn new(
        kernel: KernelId,
        objects: Vec<PagerObject>,
        workers: usize,
    ) -> Result<Self, PagerDeviceError> {
        if objects.len() > u32::MAX as usize / 2 {
            return Err(PagerDeviceError::TooManyObjects(objects.len()));
        }
        let mut entries = Vec::with_capacity(objects.len());
        let mut slots = Vec::with_capacity(objects.len());
        for (i, o) in objects.into_iter().enumerate() {
            let size = o
                .pager
                .extent()
                .map_err(|source| PagerDeviceError::Extent {
                    name: o.name.clone(),
                    source,
                })?;
            entries.push(ObjectEntry {
                size,
                id: ObjectId(i as u32),
                flags: if o.read_only { OBJ_F_READ_ONLY } else { 0 },
                name: o.name,
            });
            slots.push(ObjectSlot {
                pager: o.pager,
                read_only: o.read_only,
                state: ObjState::Uninit,
            });
        }
        let completions = Arc::new(Completions::new()?);
        Ok(PagerDevice {
            kernel,
            objects: slots,
            config: wire::encode_config(&entries),
            avail_features: (1 << VIRTIO_PAGER_F_READAHEAD)
                | (1 << VIRTIO_PAGER_F_UNLOCK)
                | (1 << VIRTIO_PAGER_F_EVENTS)
                | (1 << features::VIRTIO_RING_F_INDIRECT_DESC)
                | (1 << features::VIRTIO_RING_F_EVENT_IDX)
                | (1 << features::VIRTIO_F_VERSION_1),
            acked_features: 0,
            active: None,
            generation: 0,
            needs_reset: false,
            pool: WorkerPool::new(workers, completions.clone())?,
            completions,
            backlog: Arc::new(EventBacklog::new()?),
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            stale_fds: Vec::new(),
            queues_registered: false,
            stats: PagerStats::default(),
        })
    }

    pub fn stats(&self) -> PagerStats {
        self.stats
    }

    pub fn worker_threads(&self) -> usize {
        self.pool.threads()
    }

    /// Events from pagers not yet delivered to the guest.
    pub fn pending_events(&self) -> usize {
        self.backlog.len()
    }

    fn has(&self, bit: u32) -> bool {
        self.acked_features & (1u64 << bit) != 0
    }

    fn limits(&self) -> Limits {
        Limits {
            num_objects: self.objects.len() as u32,
            max_frames: MAX_FRAME_SEGMENTS,
            max_request_bytes: MAX_REQUEST_BYTES,
            readahead: self.has(VIRTIO_PAGER_F_READAHEAD),
            unlock: self.has(VIRTIO_PAGER_F_UNLOCK),
        }
    }

    /// A queue is broken beyond per-request errors: stop processing and ask
    /// the driver for a reset (DEVICE_NEEDS_RESET + config interrupt).
    fn enter_needs_reset(&mut self, why: &str) {
        if self.needs_reset {
            return;
        }
        tracing::warn!(why, "virtio-pager: entering NEEDS_RESET");
        self.needs_reset = true;
        if let Some(a) = &self.active {
            let _ = a.interrupt.signal_config_change();
        }
    }

    /// Request queue notification: take every available chain (one kick may
    /// carry many requests), reject the malformed ones at once and hand the
    /// rest to the workers.
    pub fn process_request_queue(&mut self) {
        if self.needs_reset {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let event_idx = self.acked_features & (1 << features::VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut used_added = false;
        loop {
            let Some(active) = self.active.as_mut() else {
                return;
            };
            if event_idx && active.reqq.disable_notification(&*mem).is_err() {
                self.enter_needs_reset("request queue unreadable");
                return;
            }
            let chains: Vec<DescriptorChain<&GuestMemoryMmap>> = match active.reqq.iter(&*mem) {
                Ok(it) => it.collect(),
                Err(_) => {
                    self.enter_needs_reset("request queue available index out of range");
                    return;
                }
            };
            for chain in chains {
                used_added |= self.handle_request(&mem, chain);
            }
            if !event_idx {
                break;
            }
            let Some(active) = self.active.as_mut() else {
                return;
            };
            match active.reqq.enable_notification(&*mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(_) => {
                    self.enter_needs_reset("request queue unreadable");
                    return;
                }
            }
        }
        if used_added {
            self.signal_used(REQUEST_QUEUE);
        }
    }

    /// Returns true if the chain was completed immediately (an error).
    fn handle_request(
        &mut self,
        mem: &Arc<GuestMemoryMmap>,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> bool {
        self.stats.requests += 1;
        let head = chain.head_index();
        let segs = match collect_chain(chain, QUEUE_SIZE, MAX_CHAIN_LEN) {
            Ok(s) => s,
            Err(e) => {
                // No trustworthy status slot in a chain we could not walk.
                tracing::debug!(%e, "virtio-pager: bad request chain");
                return self.reject(mem, head, None, status::BAD_REQUEST);
            }
        };
        let limits = self.limits();
        let parsed = wire::parse_request(&segs, &limits, |addr| {
            let mut b = [0u8; REQ_HDR_SIZE];
            mem.read_slice(&mut b, addr).ok().map(|_| b)
        });
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(%e, "virtio-pager: bad request");
                return self.reject(mem, head, wire::status_slot(&segs), e.status());
            }
        };
        let Some(slot) = self.objects.get_mut(parsed.object.0 as usize) else {
            return self.reject(mem, head, Some(parsed.status), status::NO_OBJECT);
        };
        // Object state rules (docs/virtio-pager.md, "Ordering").
        let mut control: Option<Arc<dyn KernelControl>> = None;
        match (&parsed.request, &slot.state) {
            (Request::Init, ObjState::Uninit) => {
                slot.state = ObjState::Initializing;
                control = Some(Arc::new(DeviceControl::new(
                    parsed.object,
                    self.backlog.clone(),
                )));
            }
            (Request::Init, _) => {
                return self.reject(mem, head, Some(parsed.status), status::BAD_STATE);
            }
            (_, ObjState::Ready(info)) => {
                if matches!(parsed.request, Request::DataWrite { .. })
                    && (slot.read_only || info.read_only)
                {
                    return self.reject(mem, head, Some(parsed.status), status::READ_ONLY);
                }
                if matches!(parsed.request, Request::Terminate) {
                    // Later requests for the object are refused right away;
                    // the driver must not have any outstanding (see docs).
                    slot.state = ObjState::Uninit;
                }
            }
            _ => return self.reject(mem, head, Some(parsed.status), status::BAD_STATE),
        }
        let job = Job {
            head: Some(head),
            generation: self.generation,
            object: parsed.object,
            pager: slot.pager.clone(),
            kernel: self.kernel,
            control,
            request: parsed.request,
            status: parsed.status,
            mem: mem.clone(),
        };
        if !self.pool.submit(job) {
            if let Some(s) = self.objects.get_mut(parsed.object.0 as usize)
                && s.state == ObjState::Initializing
            {
                s.state = ObjState::Uninit;
            }
            return self.reject(mem, head, Some(parsed.status), status::PAGER_FAILED);
        }
        false
    }

    fn reject(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        slot: Option<vm_memory::GuestAddress>,
        code: u32,
    ) -> bool {
        self.stats.rejected += 1;
        let len = match slot {
            Some(addr)
                if mem
                    .write_slice(&Response::error(code).to_bytes(), addr)
                    .is_ok() =>
            {
                RESP_SIZE as u32
            }
            _ => 0,
        };
        self.add_used(REQUEST_QUEUE, head, len)
    }

    fn add_used(&mut self, queue: usize, head: u16, len: u32) -> bool {
        let Some(a) = self.active.as_mut() else {
            return false;
        };
        let q = if queue == REQUEST_QUEUE {
            &mut a.reqq
        } else {
            &mut a.evq
        };
        if q.add_used(&*a.mem, head, len).is_err() {
            self.enter_needs_reset("used ring write failed");
            return false;
        }
        true
    }

    fn signal_used(&mut self, queue: usize) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let q = if queue == REQUEST_QUEUE {
            &mut a.reqq
        } else {
            &mut a.evq
        };
        // With EVENT_IDX this honours used_event; without it, always true
        // unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT.
        let needed = q.needs_notification(&*a.mem).unwrap_or(true);
        if needed {
            self.stats.interrupts += 1;
            if let Err(e) = a.interrupt.signal_used_queue() {
                tracing::error!(%e, "virtio-pager: irqfd write failed");
            }
        }
    }

    /// Completion kick: retire every finished job (one interrupt for all).
    pub fn process_completions(&mut self) {
        let _ = self.completions.evt().read();
        let done = self.completions.take();
        let mut any = false;
        for c in done {
            if c.generation != self.generation || self.active.is_none() {
                // Finished after a reset: the ring it belonged to is gone.
                continue;
            }
            if let Some(slot) = self.objects.get_mut(c.object.0 as usize) {
                match c.effect {
                    Effect::Initialized(info) => slot.state = ObjState::Ready(info),
                    Effect::InitFailed => slot.state = ObjState::Uninit,
                    Effect::None => {}
                }
            }
            self.stats.completed += 1;
            any |= self.add_used(REQUEST_QUEUE, c.head, c.used_len);
        }
        if any {
            self.signal_used(REQUEST_QUEUE);
        }
    }

    /// Event queue notification: the guest posted buffers. Take them all,
    /// then deliver whatever events are waiting.
    pub fn process_event_queue(&mut self) {
        if self.needs_reset {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let chains: Vec<DescriptorChain<&GuestMemoryMmap>> = match active.evq.iter(&*mem) {
            Ok(it) => it.collect(),
            Err(_) => {
                self.enter_needs_reset("event queue available index out of range");
                return;
            }
        };
        let mut used_added = false;
        for chain in chains {
            let head = chain.head_index();
            match collect_chain(chain, QUEUE_SIZE, MAX_CHAIN_LEN)
                .ok()
                .and_then(|s| event_buf(head, &s))
            {
                Some(buf) => {
                    if let Some(a) = self.active.as_mut() {
                        a.event_bufs.push_back(buf);
                    }
                }
                None => {
                    // Unusable buffer: give it straight back, unwritten.
                    self.stats.event_bufs_rejected += 1;
                    used_added |= self.add_used(EVENT_QUEUE, head, 0);
                }
            }
        }
        if used_added {
            self.signal_used(EVENT_QUEUE);
        }
        self.deliver_events();
    }

    /// Backlog kick, or new buffers: move events into posted buffers.
    pub fn deliver_events(&mut self) {
        let _ = self.backlog.kick_evt().read();
        if self.needs_reset || !self.has(VIRTIO_PAGER_F_EVENTS) {
            return;
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = a.mem.clone();
        let mut delivered = false;
        while let Some(buf) = a.event_bufs.pop_front() {
            let Some(ev) = self.backlog.pop() else {
                a.event_bufs.push_front(buf);
                break;
            };
            let mut event = ev.event;
            let mut data_len = 0u64;
            if !ev.data.is_empty() {
                // Unsolicited pages: whatever whole pages fit; the rest is
                // discarded (the paper lets the kernel drop offered data).
                let room: u64 = buf.frames.iter().map(|f| u64::from(f.len)).sum();
                data_len = room.min(ev.data.len() as u64) / PAGE_SIZE * PAGE_SIZE;
                if data_len == 0 {
                    self.stats.offers_dropped += 1;
                    a.event_bufs.push_front(buf);
                    continue;
                }
                let mut copied = 0u64;
                for f in &buf.frames {
                    if copied == data_len {
                        break;
                    }
                    let n = u64::from(f.len).min(data_len - copied);
                    let src = &ev.data[copied as usize..(copied + n) as usize];
                    if mem.write_slice(src, f.addr).is_err() {
                        break;
                    }
                    copied += n;
                }
                data_len = copied;
                event.length = data_len;
            }
            let used = match mem.write_slice(&event.to_bytes(), buf.slot.addr) {
                Ok(()) => EVENT_SIZE as u32 + data_len as u32,
                Err(_) => 0,
            };
            if a.evq.add_used(&*mem, buf.head, used).is_err() {
                self.enter_needs_reset("event used ring write failed");
                return;
            }
            self.stats.events_delivered += 1;
            delivered = true;
        }
        if delivered {
            self.signal_used(EVENT_QUEUE);
        }
    }
}

/// An event buffer is [event slot: writable, 32 bytes] [frames: writable,
/// page-aligned whole pages]*, no overlaps.
fn event_buf(head: u16, segs: &[Segment]) -> Option<EventBuf> {
    let (slot, frames) = segs.split_first()?;
    if !slot.writable || slot.len as usize != EVENT_SIZE {
        return None;
    }
    let mut ranges = vec![(slot.addr.0, slot.addr.0.checked_add(u64::from(slot.len))?)];
    for f in frames {
        if !f.writable || f.addr.0 % PAGE_SIZE != 0 || u64::from(f.len) % PAGE_SIZE != 0 {
            return None;
        }
        ranges.push((f.addr.0, f.addr.0.checked_add(u64::from(f.len))?));
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
        return None;
    }
    Some(EventBuf {
        head,
        slot: *slot,
        frames: frames.to_vec(),
    })
}

impl VirtioDevice for PagerDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_PAGER
    }

    fn vendor_id(&self) -> u32 {
        VIRTIO_PAGER_VENDOR
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= self.config.len() {
            return;
        }
        let n = data.len().min(self.config.len() - start);
        data[..n].copy_from_slice(&self.config[start..start + n]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::warn!(
            offset,
            len = data.len(),
            "virtio-pager: config space is read-only"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = queues.len();
        let mut it = queues.into_iter();
        let (Some(mut req), Some(mut ev), None) = (it.next(), it.next(), it.next()) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        for (i, q) in [&req, &ev].into_iter().enumerate() {
            if !q.queue.ready() || !q.queue.is_valid(&mem) {
                return Err(ActivateError::BadQueue(i));
            }
        }
        let event_idx = acked_features & (1 << features::VIRTIO_RING_F_EVENT_IDX) != 0;
        req.queue.set_event_idx(event_idx);
        ev.queue.set_event_idx(event_idx);
        self.acked_features = acked_features;
        self.needs_reset = false;
        self.active = Some(Active {
            mem: Arc::new(mem),
            reqq: req.queue,
            evq: ev.queue,
            req_evt: req.notify,
            ev_evt: ev.notify,
            interrupt,
            event_bufs: VecDeque::new(),
        });
        // Wake the event loop so it registers the queue fds.
        self.activate_evt.write(1)?;
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.generation += 1;
        self.acked_features = 0;
        self.needs_reset = false;
        self.backlog.clear();
        if let Some(a) = self.active.take() {
            self.stale_fds.push(a.req_evt);
            self.stale_fds.push(a.ev_evt);
            let mem = a.mem;
            // The pagers still count this kernel as a mapper of every
            // initialised object; a fresh driver will INIT again.
            for (i, slot) in self.objects.iter_mut().enumerate() {
                if matches!(slot.state, ObjState::Ready(_) | ObjState::Initializing) {
                    let job = Job {
                        head: None,
                        generation: self.generation,
                        object: ObjectId(i as u32),
                        pager: slot.pager.clone(),
                        kernel: self.kernel,
                        control: None,
                        request: Request::Terminate,
                        status: vm_memory::GuestAddress(0),
                        mem: mem.clone(),
                    };
                    let _ = self.pool.submit(job);
                }
                slot.state = ObjState::Uninit;
            }
        }
        self.queues_registered = false;
        let _ = self.activate_evt.write(1);
    }

    fn reset_pending(&self) -> bool {
        // Until every worker is done with guest memory of the old instance.
        self.completions.in_flight() > 0
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }
}
