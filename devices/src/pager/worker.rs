//! The worker pool: every backend call runs here, never on a vCPU thread or
//! the event loop. A worker moves page data straight between guest frames
//! and the pager (the frames' VolatileSlices are what the pager sees), writes
//! the response into the guest's status descriptor, then queues a completion
//! and kicks the event loop, which owns the used ring.

use super::wire::{
    INIT_F_MAY_CACHE, INIT_F_READ_ONLY, ObjectId, RESP_SIZE, Request, Response, kind, status,
};
use crate::virtio::Segment;
use pager_backends::poison;
use pager_backends::pool::{PoolOptions, WorkPool};
use pager_backends::{
    DataReply, KernelControl, KernelId, ObjectInfo, PAGE_SIZE, Pager, PagerError, ThreadHook,
};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// What a worker does.
pub struct Job {
    /// Descriptor head to complete; `None` for device-internal work
    /// (terminating objects on reset) that has no used-ring entry.
    pub head: Option<u16>,
    /// Device activation the job belongs to; stale completions are dropped.
    pub generation: u64,
    pub object: ObjectId,
    pub pager: Arc<dyn Pager>,
    pub kernel: KernelId,
    pub control: Option<Arc<dyn KernelControl>>,
    pub request: Request,
    pub status: GuestAddress,
    pub mem: Arc<GuestMemoryMmap>,
}

/// Side effects the event loop applies when it retires a completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    None,
    Initialized(ObjectInfo),
    InitFailed,
    Terminated,
}

#[derive(Debug)]
pub struct Completion {
    /// `None` for device-internal work: no used-ring entry, effect only.
    pub head: Option<u16>,
    pub generation: u64,
    pub object: ObjectId,
    pub used_len: u32,
    pub effect: Effect,
}

/// Finished jobs, handed from workers to the event loop.
#[derive(Debug)]
pub struct Completions {
    done: Mutex<Vec<Completion>>,
    evt: EventFd,
    /// Jobs accepted but not yet finished (a reset waits for zero).
    in_flight: AtomicUsize,
}

impl Completions {
    pub fn new() -> io::Result<Self> {
        Ok(Completions {
            done: Mutex::new(Vec::new()),
            evt: EventFd::new(EFD_NONBLOCK)?,
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn evt(&self) -> &EventFd {
        &self.evt
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Completion>> {
        poison::lock(&self.done)
    }

    pub fn take(&self) -> Vec<Completion> {
        std::mem::take(&mut *self.lock())
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn push(&self, c: Completion) {
        self.lock().push(c);
        self.pushed(1);
    }

    /// A batch's completions: one lock, one kick.
    fn push_all(&self, cs: Vec<Completion>) {
        let n = cs.len();
        self.lock().extend(cs);
        self.pushed(n);
    }

    fn pushed(&self, n: usize) {
        // Decrement after the push so "in_flight == 0" implies every
        // completion is visible to `take`.
        self.in_flight.fetch_sub(n, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::error!(%e, "virtio-pager: completion kick failed");
        }
    }
}

/// How long a worker that ran out of work keeps looking for more before it
/// sleeps. At most one worker spins at a time, so the others (and the
/// event loop) keep their CPUs; a batch arriving within this window starts
/// without a wake-up's latency.
pub const WORKER_SPIN: Duration = Duration::from_micros(50);

/// The device's workers: pager_backends' pool over batches of jobs, with
/// the device's count of jobs in flight kept around it.
pub struct WorkerPool {
    pool: WorkPool<Vec<Job>>,
    completions: Arc<Completions>,
}

impl WorkerPool {
    /// `hook` runs first on each worker (the VMM confines it there), before
    /// it takes any job; a worker whose hook fails fails the pool.
    pub fn new(
        threads: usize,
        completions: Arc<Completions>,
        hook: Option<&ThreadHook>,
    ) -> io::Result<Self> {
        let done = completions.clone();
        let pool = WorkPool::new(
            PoolOptions {
                name: "pager-worker".into(),
                threads,
                // The device bounds what it admits (requests in flight <=
                // queue size, plus at most one internal TERMINATE per
                // object), so submitting never has to wait.
                capacity: None,
                spin: WORKER_SPIN,
                hook: hook.cloned(),
            },
            move |batch: Vec<Job>| run_batch(batch, &done),
        )?;
        Ok(WorkerPool { pool, completions })
    }

    /// Queue a job. Never blocks.
    pub fn submit(&self, job: Job) -> bool {
        self.submit_batch(vec![job]).is_ok()
    }

    /// Queue jobs that one worker runs one after the other: one hand-off
    /// (and at most one wake-up) for all of them. Gives them back if the
    /// pool is closed.
    pub fn submit_batch(&self, jobs: Vec<Job>) -> Result<(), Vec<Job>> {
        if jobs.is_empty() {
            return Ok(());
        }
        let n = jobs.len();
        // Counted before a worker can finish them (the count only drops
        // after a completion is visible), uncounted if refused.
        self.completions.in_flight.fetch_add(n, Ordering::SeqCst);
        self.pool.submit(jobs).inspect_err(|_| {
            self.completions.in_flight.fetch_sub(n, Ordering::SeqCst);
        })
    }

    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
}

// Dropping the pool closes its queue: the workers end once the queued work
// is done, and nobody waits for them (a hung backend must not hang VMM
// shutdown).

fn run_batch(batch: Vec<Job>, done: &Completions) {
    if batch.len() == 1 {
        for job in batch {
            done.push(run(job));
        }
    } else {
        let out: Vec<Completion> = batch.into_iter().map(run).collect();
        done.push_all(out);
    }
}

/// Runs one job to completion, blocking as long as the pager does, and
/// writes its response.
pub fn run(job: Job) -> Completion {
    let (resp, data_bytes, effect) = execute(&job);
    finish(&job, &resp, data_bytes, effect)
}

/// The event loop's fast path: a DATA_REQUEST the pager can answer without
/// blocking (`Pager::try_data_request`) is completed right here. `None`:
/// the pager would block (or the job is not a DATA_REQUEST); hand the job
/// to a worker.
pub fn try_run(job: &Job) -> Option<Completion> {
    let Request::DataRequest {
        offset,
        len,
        desired,
        frames,
    } = &job.request
    else {
        return None;
    };
    let Some(bufs) = frame_slices(&job.mem, frames) else {
        let resp = Response::error(status::BAD_REQUEST);
        return Some(finish(job, &resp, 0, Effect::None));
    };
    let reply = job
        .pager
        .try_data_request(job.kernel, *offset, *len, *desired, &bufs)?;
    let (resp, data_bytes) = data_response(reply, *len, frames);
    Some(finish(job, &resp, data_bytes, Effect::None))
}

/// Writes the response into the guest's status descriptor.
fn finish(job: &Job, resp: &Response, data_bytes: u64, effect: Effect) -> Completion {
    let used_len = match job.head {
        None => 0,
        Some(_) => match job.mem.write_slice(&resp.to_bytes(), job.status) {
            // Used length counts every byte written to device-writable
            // buffers: page data placed in frames plus the response.
            Ok(()) => u32::try_from(data_bytes + RESP_SIZE as u64).unwrap_or(u32::MAX),
            Err(e) => {
                // Cannot happen for a validated chain, but the guest must
                // still get its buffer back.
                tracing::warn!(%e, "virtio-pager: response write failed");
                0
            }
        },
    };
    Completion {
        head: job.head,
        generation: job.generation,
        object: job.object,
        used_len,
        effect,
    }
}

/// Checks the pager's answer to a DATA_REQUEST: a buggy backend must not
/// make the guest map pages that were not filled.
fn data_response(
    reply: pager_backends::Result<DataReply>,
    len: u64,
    frames: &[Segment],
) -> (Response, u64) {
    let total: u64 = frames.iter().map(|f| u64::from(f.len)).sum();
    match reply {
        Ok(DataReply::Provided { bytes, lock }) => {
            if bytes < len || bytes > total || bytes % PAGE_SIZE != 0 {
                tracing::warn!(
                    bytes,
                    len,
                    total,
                    "virtio-pager: pager returned a bad length"
                );
                return (Response::error(status::PAGER_FAILED), 0);
            }
            let resp = Response {
                kind: kind::DATA_PROVIDED,
                bytes,
                lock: lock.bits(),
                ..Default::default()
            };
            (resp, bytes)
        }
        Ok(DataReply::Unavailable { bytes }) => {
            if bytes < len || bytes % PAGE_SIZE != 0 {
                return (Response::error(status::PAGER_FAILED), 0);
            }
            let resp = Response {
                kind: kind::DATA_UNAVAILABLE,
                // The guest can only zero-fill frames it offered.
                bytes: bytes.min(total),
                ..Default::default()
            };
            (resp, 0)
        }
        Err(e) => (Response::error(error_status(&e)), 0),
    }
}

fn execute(job: &Job) -> (Response, u64, Effect) {
    let p = &job.pager;
    let k = job.kernel;
    match &job.request {
        Request::Init => {
            let Some(control) = job.control.clone() else {
                return (Response::error(status::BAD_STATE), 0, Effect::InitFailed);
            };
            match p.init(k, control) {
                Ok(info) => {
                    let mut flags = 0;
                    if info.read_only {
                        flags |= INIT_F_READ_ONLY;
                    }
                    if info.may_cache {
                        flags |= INIT_F_MAY_CACHE;
                    }
                    let resp = Response {
                        bytes: info.size,
                        flags,
                        ..Default::default()
                    };
                    (resp, 0, Effect::Initialized(info))
                }
                Err(e) => (Response::error(error_status(&e)), 0, Effect::InitFailed),
            }
        }
        Request::DataRequest {
            offset,
            len,
            desired,
            frames,
        } => {
            let Some(bufs) = frame_slices(&job.mem, frames) else {
                return (Response::error(status::BAD_REQUEST), 0, Effect::None);
            };
            let reply = p.data_request(k, *offset, *len, *desired, &bufs);
            let (resp, bytes) = data_response(reply, *len, frames);
            (resp, bytes, Effect::None)
        }
        Request::DataWrite {
            offset,
            len,
            frames,
        } => {
            let Some(bufs) = frame_slices(&job.mem, frames) else {
                return (Response::error(status::BAD_REQUEST), 0, Effect::None);
            };
            (
                result(p.data_write(k, *offset, *len, &bufs)),
                0,
                Effect::None,
            )
        }
        Request::DataUnlock {
            offset,
            len,
            desired,
        } => match p.data_unlock(k, *offset, *len, *desired) {
            Ok(r) => (
                Response {
                    lock: r.lock.bits(),
                    ..Default::default()
                },
                0,
                Effect::None,
            ),
            Err(e) => (Response::error(error_status(&e)), 0, Effect::None),
        },
        // Whatever the pager says, the object is no longer initialised.
        Request::Terminate => (result(p.terminate(k)), 0, Effect::Terminated),
        Request::Sync => (result(p.sync()), 0, Effect::None),
        Request::LockCompleted {
            offset,
            len,
            cookie,
            ..
        } => (
            result(p.lock_completed(k, *offset, *len, *cookie)),
            0,
            Effect::None,
        ),
    }
}

fn result(r: pager_backends::Result<()>) -> Response {
    match r {
        Ok(()) => Response::default(),
        Err(e) => Response::error(error_status(&e)),
    }
}

/// Guest frames as host slices: the zero-copy path. A frame may straddle
/// two memory regions, hence several slices per segment.
fn frame_slices<'a>(
    mem: &'a GuestMemoryMmap,
    frames: &[Segment],
) -> Option<Vec<VolatileSlice<'a>>> {
    let mut out = Vec::with_capacity(frames.len());
    for f in frames {
        for s in GuestMemoryBackend::get_slices(mem, f.addr, f.len as usize) {
            out.push(s.ok()?);
        }
    }
    Some(out)
}

pub fn error_status(e: &PagerError) -> u32 {
    match e {
        PagerError::BadRange { .. } => status::BAD_RANGE,
        PagerError::PastEnd { .. } => status::PAST_END,
        PagerError::ReadOnly => status::READ_ONLY,
        PagerError::UnknownKernel(_) => status::BAD_STATE,
        PagerError::Io(_) => status::IO_ERROR,
        PagerError::Timeout(_) => status::TIMED_OUT,
        PagerError::Protocol(_) | PagerError::Dead(_) => status::PAGER_FAILED,
        PagerError::Unsupported(_) => status::UNSUPPORTED,
        // pager-backends grows variants (e.g. URI errors) as backends land.
        #[allow(unreachable_patterns)]
        _ => status::PAGER_FAILED,
    }
}
