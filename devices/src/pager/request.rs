//! The request queue: take chains, validate them (wire.rs), apply the
//! object state rules (objects.rs), answer what the pager can answer without
//! blocking right here, hand the rest to the workers, retire completions.

use super::device::PagerDevice;
use super::objects::{Admission, Next};
use super::wire::{
    self, MAX_CHAIN_LEN, ObjectId, QUEUE_SIZE, REQ_HDR_SIZE, REQUEST_QUEUE, RESP_SIZE, Request,
    Response, VIRTIO_PAGER_F_LOCK_COMPLETED, status,
};
use super::worker::{self, Completion, Job};
use crate::virtio::{Segment, collect_chain_into, features};
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// How long one pass over the ring may spend answering requests inline
/// before it hands the rest to the workers: bounds how long a pass holds
/// the device (and so delays the vCPU's register accesses and the event
/// loop's other fds), whatever the request sizes. A time rather than a byte
/// count, so a batch of large requests the pager has in memory is not split
/// between the event loop and the slower worker hand-off for no reason.
pub(crate) const INLINE_TIME_PER_PASS: Duration = Duration::from_micros(500);

/// With `PagerDevice::set_parallel_batches(true)`, a pass with at least
/// this many admitted DATA_REQUESTs shares them with the workers... Off by
/// default: on a loaded 2-CPU host the hand-off (and waking the event loop
/// for the worker's completions) cost more than the parallel copy saved
/// (4 KiB x32: 0.36 M req/s shared vs 0.85 M inline, same run).
pub(crate) const PARALLEL_MIN: usize = 16;
/// ...handing this percentage (the tail of the batch) to one worker.
pub(crate) const PARALLEL_SHARE_PCT: usize = 50;

/// The inline allowance of one pass. The clock is read once per inline
/// request, after it (a single request is bounded by 1 MiB of copying).
pub(crate) struct InlineBudget {
    limit: Duration,
    deadline: Option<Instant>,
    spent: bool,
}

impl InlineBudget {
    fn new(limit: Duration) -> Self {
        InlineBudget {
            limit,
            deadline: None,
            spent: false,
        }
    }

    fn available(&self) -> bool {
        !self.spent
    }

    /// Called after each request tried inline; the pass's clock starts
    /// with the first.
    fn charge(&mut self) {
        let now = Instant::now();
        let deadline = *self.deadline.get_or_insert(now + self.limit);
        self.spent = now >= deadline;
    }
}

impl PagerDevice {
    /// Request queue notification: take every available chain (one kick may
    /// carry many requests), up to the in-flight bound.
    pub fn process_request_queue(&mut self) {
        if self.take_requests() {
            self.signal_used(REQUEST_QUEUE);
        }
    }

    /// Completion kick: retire every finished job, then take chains left on
    /// the ring for want of room; one interrupt for all of it.
    pub fn process_completions(&mut self) {
        let _ = self.completions.evt().read();
        // Events a pager issued before answering are in the backlog now:
        // they go first, so the driver never sees a reply before the calls
        // its pager made ahead of it (docs/virtio-pager.md §7).
        self.deliver();
        let mut used = false;
        for c in self.completions.take() {
            used |= self.retire(c);
        }
        if self.req_throttled {
            used |= self.take_requests();
        }
        if used {
            self.signal_used(REQUEST_QUEUE);
        }
    }

    /// Returns true if used entries were added.
    pub(super) fn take_requests(&mut self) -> bool {
        self.req_throttled = false;
        if self.needs_reset {
            return false;
        }
        let Some(active) = self.active.as_ref() else {
            return false;
        };
        let mem = active.mem.clone();
        // A well-behaved driver never has more chains out than the ring
        // holds; one that republishes heads without waiting is held here.
        let bound = usize::from(active.reqq.size());
        let event_idx = self.has(features::VIRTIO_RING_F_EVENT_IDX);
        let mut budget = InlineBudget::new(self.inline_time_per_pass);
        let mut used = false;
        loop {
            let room = bound.saturating_sub(self.outstanding);
            if room == 0 {
                // Completions free room and call us again; until then the
                // chains wait on the ring (never rejected, never dropped).
                self.req_throttled = true;
                self.stats.throttled += 1;
                return used;
            }
            let Some(active) = self.active.as_mut() else {
                return used;
            };
            if event_idx && active.reqq.disable_notification(&*mem).is_err() {
                self.enter_needs_reset("request queue unreadable");
                return used;
            }
            let chains: Vec<DescriptorChain<&GuestMemoryMmap>> = match active.reqq.iter(&*mem) {
                Ok(it) => it.take(room).collect(),
                Err(_) => {
                    self.enter_needs_reset("request queue available index out of range");
                    return used;
                }
            };
            let took = chains.len();
            let mut ready = std::mem::take(&mut self.scratch_jobs);
            for chain in chains {
                used |= self.handle_request(&mem, chain, &mut ready);
            }
            used |= self.run_data_requests(&mut ready, &mut budget);
            self.scratch_jobs = ready;
            if took == room {
                // Maybe more; the bound check above decides.
                continue;
            }
            if !event_idx {
                return used;
            }
            let Some(active) = self.active.as_mut() else {
                return used;
            };
            match active.reqq.enable_notification(&*mem) {
                Ok(true) => continue,
                Ok(false) => return used,
                Err(_) => {
                    self.enter_needs_reset("request queue unreadable");
                    return used;
                }
            }
        }
    }

    /// The admitted DATA_REQUESTs of one pass. A large batch is shared:
    /// a tail goes to the workers as one hand-off first, so a worker copies
    /// in parallel with the event loop, which serves the rest inline (as
    /// long as its allowance lasts and the pager needs no blocking). Returns
    /// true if used entries were added.
    fn run_data_requests(&mut self, ready: &mut Vec<Job>, budget: &mut InlineBudget) -> bool {
        let n = ready.len();
        let mut used = false;
        if n >= self.parallel_min && self.pool.threads() > 0 {
            let tail = ready.split_off(n - n * PARALLEL_SHARE_PCT / 100);
            if let Err(jobs) = self.pool.submit_batch(tail) {
                for job in jobs {
                    used |= self.pool_refused(job.head, job.status);
                }
            }
        }
        for job in ready.drain(..) {
            if budget.available() {
                // The fast path: no hand-off to a worker and back.
                let served = worker::try_run(&job);
                budget.charge();
                if let Some(c) = served {
                    self.stats.inline += 1;
                    used |= self.retire(c);
                    continue;
                }
            }
            used |= self.start(job);
        }
        used
    }

    /// Runs admitted jobs taken from somewhere other than the ring (parked
    /// requests resumed): DATA_REQUESTs inline within one pass's
    /// allowance, the rest to the workers. Returns true if used entries
    /// were added.
    pub(super) fn dispatch(&mut self, jobs: Vec<Job>) -> bool {
        let mut ready = std::mem::take(&mut self.scratch_jobs);
        let mut used = false;
        for job in jobs {
            if matches!(job.request, Request::DataRequest { .. }) {
                ready.push(job);
            } else {
                used |= self.start(job);
            }
        }
        let mut budget = InlineBudget::new(self.inline_time_per_pass);
        used |= self.run_data_requests(&mut ready, &mut budget);
        self.scratch_jobs = ready;
        used
    }

    /// Returns true if the chain was completed at once (rejected).
    /// Admitted DATA_REQUESTs are left in `ready` for `run_data_requests`.
    fn handle_request(
        &mut self,
        mem: &Arc<GuestMemoryMmap>,
        chain: DescriptorChain<&GuestMemoryMmap>,
        ready: &mut Vec<Job>,
    ) -> bool {
        self.stats.requests += 1;
        // One buffer for every chain walked (taken out of `self` while
        // borrowed by the parse below, put back at the end).
        let mut segs = std::mem::take(&mut self.scratch_segs);
        let used = self.handle_chain(mem, chain, &mut segs, ready);
        self.scratch_segs = segs;
        used
    }

    fn handle_chain(
        &mut self,
        mem: &Arc<GuestMemoryMmap>,
        chain: DescriptorChain<&GuestMemoryMmap>,
        segs: &mut Vec<Segment>,
        ready: &mut Vec<Job>,
    ) -> bool {
        let head = chain.head_index();
        let segs = match collect_chain_into(chain, QUEUE_SIZE, MAX_CHAIN_LEN, segs) {
            Ok(()) => &segs[..],
            Err(e) => {
                // No trustworthy status slot in a chain we could not walk.
                tracing::debug!(%e, "virtio-pager: bad request chain");
                return self.reject(mem, head, None, status::BAD_REQUEST);
            }
        };
        let limits = self.limits();
        let parsed = wire::parse_request(segs, &limits, |addr| {
            let mut b = [0u8; REQ_HDR_SIZE];
            mem.read_slice(&mut b, addr).ok().map(|_| b)
        });
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(%e, "virtio-pager: bad request");
                return self.reject(mem, head, wire::status_slot(segs), e.status());
            }
        };
        let object = parsed.object;
        let mut parsed = parsed;
        let Some(slot) = self.objects.get_mut(object.0 as usize) else {
            return self.reject(mem, head, Some(parsed.status), status::NO_OBJECT);
        };
        let admission = slot.admit(&parsed.request);
        if let (
            Admission::Run,
            Request::LockCompleted {
                offset,
                len,
                tag,
                cookie,
            },
        ) = (&admission, &mut parsed.request)
        {
            // Only a completion the device asked for reaches the pager,
            // and only once; taken only once the object takes requests
            // (admitting it changes nothing), so a refused one stays.
            match self.backlog.take_reply(object, *tag, offset.raw(), *len) {
                Some(c) => *cookie = c,
                None => {
                    tracing::debug!(tag, "virtio-pager: LOCK_COMPLETED for no waiting request");
                    return self.reject(mem, head, Some(parsed.status), status::BAD_STATE);
                }
            }
        }
        let job = Job {
            head: Some(head),
            generation: self.generation,
            object,
            pager: slot.pager.clone(),
            kernel: self.kernel,
            control: None,
            request: parsed.request,
            status: parsed.status,
            mem: mem.clone(),
        };
        match admission {
            Admission::Reject(code) => self.reject(mem, head, Some(job.status), code),
            Admission::Defer => {
                self.outstanding += 1;
                if let Some(slot) = self.objects.get_mut(object.0 as usize) {
                    slot.defer(job);
                }
                false
            }
            Admission::Run => {
                self.outstanding += 1;
                // Over its object's rate limit: parked, resumed later
                // (throttle.rs); the pass goes on with the next chain.
                let Some(job) = self.throttle(job) else {
                    return false;
                };
                if matches!(job.request, Request::DataRequest { .. }) {
                    ready.push(job);
                    return false;
                }
                self.start(job)
            }
        }
    }

    /// Hands a job to the workers. An INIT gets its control handle here, so
    /// handles of earlier INITs of the object stop working. Returns true if
    /// the chain had to be completed at once (the pool is gone).
    fn start(&mut self, mut job: Job) -> bool {
        let object = job.object;
        match job.request {
            Request::Init => {
                let replies = self.has(VIRTIO_PAGER_F_LOCK_COMPLETED);
                job.control = Some(Arc::new(self.backlog.open(object, replies)));
            }
            Request::Terminate => self.backlog.revoke(object),
            _ => {}
        }
        let (head, status_at) = (job.head, job.status);
        if self.pool.submit(job) {
            return false;
        }
        if let Some(s) = self.objects.get_mut(object.0 as usize) {
            s.init_not_started();
        }
        self.pool_refused(head, status_at)
    }

    /// The pool is gone: complete the chain with PAGER_FAILED. Returns true
    /// if a used entry was added.
    fn pool_refused(&mut self, head: Option<u16>, status_at: GuestAddress) -> bool {
        match head {
            Some(head) => {
                self.outstanding = self.outstanding.saturating_sub(1);
                let Some(a) = self.active.as_ref() else {
                    return false;
                };
                let mem = a.mem.clone();
                self.reject(&mem, head, Some(status_at), status::PAGER_FAILED)
            }
            None => false,
        }
    }

    /// Device-internal TERMINATE (no chain): the pager forgets this kernel.
    pub(crate) fn terminate_internally(&mut self, object: ObjectId, mem: Arc<GuestMemoryMmap>) {
        let Some(slot) = self.objects.get(object.0 as usize) else {
            return;
        };
        let job = Job {
            head: None,
            generation: self.generation,
            object,
            pager: slot.pager.clone(),
            kernel: self.kernel,
            control: None,
            request: Request::Terminate,
            status: GuestAddress(0),
            mem,
        };
        self.start(job);
    }

    /// Applies a completion's effect on the object and, if it belongs to
    /// the current ring, adds its used entry. Returns true if one was added.
    fn retire(&mut self, c: Completion) -> bool {
        let next = match self.objects.get_mut(c.object.0 as usize) {
            Some(slot) => slot.finished(&c.effect),
            None => Next::Nothing,
        };
        let mut used = false;
        match next {
            Next::Nothing => {}
            Next::Init(job) => used |= self.start(job),
            Next::Terminate => {
                if let Some(mem) = self.guest_mem() {
                    self.terminate_internally(c.object, mem);
                }
            }
        }
        if c.generation != self.generation || self.active.is_none() {
            // Finished after a reset: the ring it belonged to is gone.
            return used;
        }
        let Some(head) = c.head else {
            return used;
        };
        self.outstanding = self.outstanding.saturating_sub(1);
        self.stats.completed += 1;
        used | self.add_used(REQUEST_QUEUE, head, c.used_len)
    }

    /// Guest memory for a device-internal job (any will do: a TERMINATE
    /// never touches it).
    fn guest_mem(&self) -> Option<Arc<GuestMemoryMmap>> {
        self.active
            .as_ref()
            .map(|a| a.mem.clone())
            .or_else(|| self.retired_mem.clone())
    }

    fn reject(
        &mut self,
        mem: &GuestMemoryMmap,
        head: u16,
        slot: Option<GuestAddress>,
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
}
