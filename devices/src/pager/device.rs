//! The virtio-pager device's state: the object table, what was negotiated,
//! the active queues and the worker pool. The request loop is request.rs,
//! event delivery events.rs, the virtio trait virtio_device.rs, the epoll
//! side event_handler.rs.

use super::control::EventBacklog;
use super::metrics::{ObjectEvents, PagerStats};
use super::objects::ObjectSlot;
use super::throttle::Throttle;
use super::wire::{
    self, Limits, MAX_CHAIN_LEN, MAX_FRAME_SEGMENTS, MAX_REQUEST_BYTES, OBJ_F_READ_ONLY,
    ObjectEntry, ObjectId, REQUEST_QUEUE, VIRTIO_PAGER_F_EVENTS, VIRTIO_PAGER_F_LOCK_COMPLETED,
    VIRTIO_PAGER_F_READAHEAD, VIRTIO_PAGER_F_UNLOCK,
};
use super::worker::{Completions, WorkerPool};
use crate::rate_limiter::{Clock, MonotonicClock, RateLimit};
use crate::virtio::{Interrupt, Segment, features};
use pager_backends::{KernelId, Pager, ThreadHook};
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

/// One memory object exported to the guest.
pub struct PagerObject {
    /// Shown in the config-space table (at most 47 bytes are kept).
    pub name: String,
    pub pager: Arc<dyn Pager>,
    /// Refuse DATA_WRITE regardless of what the pager says at INIT.
    pub read_only: bool,
    /// Requests and bytes per second the guest may ask of this object's
    /// pager (throttle.rs); the default is unlimited.
    pub rate_limit: RateLimit,
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

/// A posted event-queue buffer: the 32-byte event slot plus optional frames
/// for unsolicited page data.
pub(crate) struct EventBuf {
    pub(crate) head: u16,
    pub(crate) slot: Segment,
    pub(crate) frames: Vec<Segment>,
}

pub(crate) struct Active {
    pub(crate) mem: Arc<GuestMemoryMmap>,
    pub(crate) reqq: Queue,
    pub(crate) evq: Queue,
    pub(crate) req_evt: EventFd,
    pub(crate) ev_evt: EventFd,
    pub(crate) interrupt: Arc<Interrupt>,
    /// At most evq.size() (a driver republishing heads cannot grow it).
    pub(crate) event_bufs: VecDeque<EventBuf>,
}

pub struct PagerDevice {
    pub(crate) kernel: KernelId,
    pub(crate) objects: Vec<ObjectSlot>,
    pub(crate) config: Vec<u8>,
    pub(crate) avail_features: u64,
    pub(crate) acked_features: u64,
    pub(crate) active: Option<Active>,
    /// Guest memory of the last activation, for device-internal jobs that
    /// finish after a reset (they never touch it).
    pub(crate) retired_mem: Option<Arc<GuestMemoryMmap>>,
    /// Bumped by every reset; completions of older generations are dropped.
    pub(crate) generation: u64,
    pub(crate) needs_reset: bool,
    pub(crate) pool: WorkerPool,
    pub(crate) completions: Arc<Completions>,
    pub(crate) backlog: Arc<EventBacklog>,
    /// Chains of the current ring taken and not yet completed (including
    /// an INIT parked behind a TERMINATE). Bounded by the queue size.
    pub(crate) outstanding: usize,
    /// Chains were left on the request ring because `outstanding` was at
    /// the bound; retiring completions resumes taking them.
    pub(crate) req_throttled: bool,
    /// Same for the event queue (posted buffers are at the bound).
    pub(crate) ev_throttled: bool,
    /// Written whenever the set of queue fds changes (activate, reset) so
    /// the event loop re-registers them.
    pub(crate) activate_evt: EventFd,
    /// Queue fds of a previous activation, to be removed from epoll.
    pub(crate) stale_fds: Vec<EventFd>,
    pub(crate) queues_registered: bool,
    pub(crate) stats: PagerStats,
    /// Guest notifications (queue notify writes) taken from the ioeventfds,
    /// shared so a vCPU thread can read it at a benchmark mark without the
    /// device lock. On hardware KVM each is an exit.
    pub(crate) doorbells: Arc<AtomicU64>,
    /// Events delivered, per object id (index into `objects`).
    pub(crate) object_events: Vec<ObjectEvents>,
    /// request.rs INLINE_TIME_PER_PASS; tests set it to make the split
    /// between inline and workers deterministic.
    pub(crate) inline_time_per_pass: std::time::Duration,
    /// Reused for every request chain walked (no allocation per chain).
    pub(crate) scratch_segs: Vec<Segment>,
    /// Admitted DATA_REQUESTs of the current pass (request.rs).
    pub(crate) scratch_jobs: Vec<super::worker::Job>,
    /// request.rs PARALLEL_MIN when batches are shared with the workers;
    /// usize::MAX (the default) keeps every batch on the event loop.
    pub(crate) parallel_min: usize,
    /// Per object (index = id): its rate limit and parked requests.
    pub(crate) throttles: Vec<Throttle>,
    /// What the rate limits measure time with (tests step their own).
    pub(crate) clock: Arc<dyn Clock>,
    /// Resumes parked requests; armed only while some are parked.
    pub(crate) rate_timer: TimerFd,
    /// When it is set to fire, if armed.
    pub(crate) rate_timer_at: Option<std::time::Instant>,
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
        Self::with_worker_hook(kernel, objects, workers, None)
    }

    /// As `new`, with `hook` run first on each worker thread (the VMM
    /// confines its workers there, before they take any request).
    pub fn with_worker_hook(
        kernel: KernelId,
        objects: Vec<PagerObject>,
        workers: usize,
        hook: Option<&ThreadHook>,
    ) -> Result<Self, PagerDeviceError> {
        if objects.len() > u32::MAX as usize / 2 {
            return Err(PagerDeviceError::TooManyObjects(objects.len()));
        }
        let mut entries = Vec::with_capacity(objects.len());
        let mut slots = Vec::with_capacity(objects.len());
        let mut throttles = Vec::with_capacity(objects.len());
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock);
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
            slots.push(ObjectSlot::new(o.pager, o.read_only));
            throttles.push(Throttle::new(o.rate_limit, clock.now()));
        }
        let completions = Arc::new(Completions::new()?);
        Ok(PagerDevice {
            kernel,
            config: wire::encode_config(&entries),
            backlog: Arc::new(EventBacklog::new(slots.len())?),
            object_events: vec![ObjectEvents::default(); slots.len()],
            objects: slots,
            avail_features: (1 << VIRTIO_PAGER_F_READAHEAD)
                | (1 << VIRTIO_PAGER_F_UNLOCK)
                | (1 << VIRTIO_PAGER_F_EVENTS)
                | (1 << VIRTIO_PAGER_F_LOCK_COMPLETED)
                | (1 << features::VIRTIO_RING_F_INDIRECT_DESC)
                | (1 << features::VIRTIO_RING_F_EVENT_IDX)
                | (1 << features::VIRTIO_F_VERSION_1),
            acked_features: 0,
            active: None,
            retired_mem: None,
            generation: 0,
            needs_reset: false,
            pool: WorkerPool::new(workers, completions.clone(), hook)?,
            completions,
            outstanding: 0,
            req_throttled: false,
            ev_throttled: false,
            activate_evt: EventFd::new(EFD_NONBLOCK)?,
            stale_fds: Vec::new(),
            queues_registered: false,
            stats: PagerStats::default(),
            doorbells: Arc::new(AtomicU64::new(0)),
            inline_time_per_pass: super::request::INLINE_TIME_PER_PASS,
            scratch_segs: Vec::with_capacity(MAX_CHAIN_LEN),
            scratch_jobs: Vec::with_capacity(usize::from(wire::QUEUE_SIZE)),
            parallel_min: usize::MAX,
            throttles,
            clock,
            rate_timer: TimerFd::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?,
            rate_timer_at: None,
        })
    }

    pub fn stats(&self) -> PagerStats {
        PagerStats {
            in_flight: self.outstanding as u64,
            doorbells: self.doorbells.load(Ordering::Relaxed),
            ..self.stats
        }
    }

    /// The count of guest notifications, readable without the device lock.
    pub fn doorbell_counter(&self) -> Arc<AtomicU64> {
        self.doorbells.clone()
    }

    /// Events delivered to the guest, per object in table order.
    pub fn object_events(&self) -> Vec<ObjectEvents> {
        let refused = self.backlog.refused();
        let mut out = self.object_events.clone();
        for (o, r) in out.iter_mut().zip(refused) {
            o.refused = r;
        }
        out
    }

    /// Share large batches of DATA_REQUESTs between the event loop and a
    /// worker (request.rs PARALLEL_MIN); off by default.
    pub fn set_parallel_batches(&mut self, on: bool) {
        self.parallel_min = if on {
            super::request::PARALLEL_MIN
        } else {
            usize::MAX
        };
    }

    pub fn worker_threads(&self) -> usize {
        self.pool.threads()
    }

    /// Events from pagers not yet delivered to the guest.
    pub fn pending_events(&self) -> usize {
        self.backlog.len()
    }

    /// Lock requests waiting for the driver's LOCK_COMPLETED.
    pub fn replies_waiting(&self) -> usize {
        self.backlog.replies_waiting()
    }

    pub(crate) fn has(&self, bit: u32) -> bool {
        self.acked_features & (1u64 << bit) != 0
    }

    pub(crate) fn limits(&self) -> Limits {
        Limits {
            num_objects: self.objects.len() as u32,
            max_frames: MAX_FRAME_SEGMENTS,
            max_request_bytes: MAX_REQUEST_BYTES,
            readahead: self.has(VIRTIO_PAGER_F_READAHEAD),
            unlock: self.has(VIRTIO_PAGER_F_UNLOCK),
            lock_completed: self.has(VIRTIO_PAGER_F_LOCK_COMPLETED),
        }
    }

    /// A queue is broken beyond per-request errors: stop processing and ask
    /// the driver for a reset (DEVICE_NEEDS_RESET + config interrupt).
    pub(crate) fn enter_needs_reset(&mut self, why: &str) {
        if self.needs_reset {
            return;
        }
        tracing::warn!(why, "virtio-pager: entering NEEDS_RESET");
        self.needs_reset = true;
        if let Some(a) = &self.active {
            let _ = a.interrupt.signal_config_change();
        }
    }

    pub(crate) fn add_used(&mut self, queue: usize, head: u16, len: u32) -> bool {
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

    /// One interrupt for everything added to `queue`'s used ring since the
    /// last one. Every raise writes the irqfd.
    pub(crate) fn signal_used(&mut self, queue: usize) {
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
}
