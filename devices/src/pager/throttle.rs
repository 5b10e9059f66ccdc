//! Per-object rate limits (`?ops=`, `?bandwidth=`; docs/virtio-pager.md
//! §8): a request its object's buckets do not allow yet is taken off the
//! ring anyway and parked, per object and in arrival order, so requests for
//! other objects behind it on the shared queue go on at once. A timerfd,
//! armed only while something is parked, resumes them when tokens are back.
//!
//! Parked chains count as outstanding, so the device's in-flight bound
//! (the ring size) bounds the parked set too: a guest cannot make it grow.
//!
//! What a request costs: DATA_REQUEST one operation and its length in bytes
//! (read-ahead into frames offered beyond the length is not charged),
//! DATA_WRITE one operation and its data, DATA_UNLOCK and SYNC one
//! operation. INIT, TERMINATE and LOCK_COMPLETED cost nothing (the last
//! answers the pager's own lock request, bounded by the reply table), but
//! a TERMINATE (or any
//! request) for an object with requests parked waits behind them, so the
//! pager sees the object's requests in the order the device took them.

use super::device::PagerDevice;
use super::metrics::ObjectThrottle;
use super::wire::{ObjectId, REQUEST_QUEUE, Request};
use super::worker::Job;
use crate::rate_limiter::{RateLimit, RateLimiter};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The shortest timer the device arms: a wait shorter than this is rounded
/// up, so a limit with a tiny burst costs a wake-up per this much time at
/// most, not one per token.
pub(crate) const MIN_TIMER: Duration = Duration::from_micros(100);

struct Parked {
    job: Job,
    since: Instant,
}

/// One object's limiter and the requests waiting for it.
pub(crate) struct Throttle {
    limiter: Option<RateLimiter>,
    parked: VecDeque<Parked>,
    pub(crate) stats: ObjectThrottle,
}

/// (operations, bytes) a request costs; None for lifecycle calls.
fn cost(request: &Request) -> Option<(u64, u64)> {
    match request {
        Request::DataRequest { len, .. } | Request::DataWrite { len, .. } => Some((1, *len)),
        Request::DataUnlock { .. } | Request::Sync => Some((1, 0)),
        // LOCK_COMPLETED answers a request the pager made itself, one per
        // entry of the device's bounded reply table: not charged.
        Request::Init | Request::Terminate | Request::LockCompleted { .. } => None,
    }
}

impl Throttle {
    pub(crate) fn new(limit: RateLimit, now: Instant) -> Throttle {
        Throttle {
            limiter: RateLimiter::new(limit, now),
            parked: VecDeque::new(),
            stats: ObjectThrottle::default(),
        }
    }

    /// Takes what `job` costs if it may go now (nothing parked before it,
    /// tokens there) and gives it back; else parks it. `Err(Some(wait))`:
    /// it is the first one parked, and tokens may be back after `wait`.
    fn admit(&mut self, job: Job, now: Instant) -> Result<Job, Option<Duration>> {
        let Some(limiter) = self.limiter.as_mut() else {
            return Ok(job);
        };
        let wait = if !self.parked.is_empty() {
            None
        } else {
            match cost(&job.request) {
                None => return Ok(job),
                Some((ops, bytes)) => match limiter.try_take(ops, bytes, now) {
                    Ok(()) => return Ok(job),
                    Err(wait) => Some(wait),
                },
            }
        };
        self.stats.throttled += 1;
        self.parked.push_back(Parked { job, since: now });
        Err(wait)
    }

    /// Moves to `out`, in order, the parked requests the buckets allow now.
    /// Returns how long until the next one may go, if any is left.
    fn release(&mut self, now: Instant, out: &mut Vec<Job>) -> Option<Duration> {
        while let Some(front) = self.parked.front() {
            if let (Some(limiter), Some((ops, bytes))) =
                (self.limiter.as_mut(), cost(&front.job.request))
                && let Err(wait) = limiter.try_take(ops, bytes, now)
            {
                return Some(wait);
            }
            if let Some(p) = self.parked.pop_front() {
                self.count_time(p.since, now);
                out.push(p.job);
            }
        }
        None
    }

    /// Device reset: the ring the parked chains came from is gone (the
    /// driver fails its requests itself once the reset is done). Returns
    /// true if a TERMINATE was among them: the object was left closing and
    /// only that TERMINATE's completion would have ended it.
    fn drop_parked(&mut self, now: Instant) -> bool {
        let mut terminate = false;
        while let Some(p) = self.parked.pop_front() {
            terminate |= matches!(p.job.request, Request::Terminate);
            self.count_time(p.since, now);
        }
        terminate
    }

    fn count_time(&mut self, since: Instant, now: Instant) {
        self.stats.parked_time += now.saturating_duration_since(since);
    }

    pub(crate) fn parked(&self) -> usize {
        self.parked.len()
    }
}

impl PagerDevice {
    /// An admitted request: `Some(job)` to run now, `None` if its object's
    /// limit parked it (it stays outstanding until it is resumed).
    pub(super) fn throttle(&mut self, job: Job) -> Option<Job> {
        let i = job.object.0 as usize;
        let Some(t) = self.throttles.get_mut(i) else {
            return Some(job);
        };
        if t.limiter.is_none() {
            return Some(job);
        }
        let now = self.clock.now();
        match t.admit(job, now) {
            Ok(job) => Some(job),
            Err(wait) => {
                if let Some(wait) = wait {
                    self.arm_rate_timer(now, wait);
                }
                None
            }
        }
    }

    /// The rate timer fired: resume every parked request its object's
    /// buckets allow now, then take chains the in-flight bound had left on
    /// the ring; one interrupt for all of it.
    pub fn process_rate_timer(&mut self) {
        // Disarming also clears the expiration count, so the fd stops
        // being readable without a read (which could block: a reset may
        // have re-armed the timer since epoll reported it).
        self.rate_timer_at = None;
        if let Err(e) = self.rate_timer.clear() {
            tracing::error!(%e, "virtio-pager: cannot disarm the rate timer");
        }
        if self.needs_reset || self.active.is_none() {
            // Nothing to resume into; a reset drops what is parked.
            return;
        }
        let now = self.clock.now();
        let mut go = Vec::new();
        let mut next: Option<Duration> = None;
        for t in &mut self.throttles {
            if let Some(wait) = t.release(now, &mut go) {
                next = Some(next.map_or(wait, |n| n.min(wait)));
            }
        }
        let mut used = self.dispatch(go);
        if self.req_throttled {
            used |= self.take_requests();
        }
        if used {
            self.signal_used(REQUEST_QUEUE);
        }
        if let Some(wait) = next {
            self.arm_rate_timer(now, wait);
        }
    }

    /// Device reset: drop every parked request. Runs on a vCPU thread, so
    /// it leaves the timer alone (its filter has no timerfd calls); a
    /// firing with nothing parked just disarms it. Returns the objects
    /// whose parked TERMINATE was dropped: the caller still owes their
    /// pagers that TERMINATE.
    pub(super) fn drop_parked(&mut self) -> Vec<ObjectId> {
        let now = self.clock.now();
        let mut terminated = Vec::new();
        for (i, t) in self.throttles.iter_mut().enumerate() {
            if t.drop_parked(now) {
                terminated.push(ObjectId(i as u32));
            }
        }
        terminated
    }

    /// Makes the timer fire `wait` after `now`, unless it fires sooner.
    fn arm_rate_timer(&mut self, now: Instant, wait: Duration) {
        let wait = wait.max(MIN_TIMER);
        let at = now + wait;
        if self.rate_timer_at.is_some_and(|t| t <= at) {
            return;
        }
        match self.rate_timer.reset(wait, None) {
            Ok(()) => self.rate_timer_at = Some(at),
            Err(e) => {
                // Nothing would resume the parked requests: have the driver
                // reset the device (it fails them) rather than wait forever.
                tracing::error!(%e, "virtio-pager: cannot arm the rate timer");
                self.enter_needs_reset("rate timer cannot be armed");
            }
        }
    }

    /// Per object in table order: requests parked by its rate limit and
    /// the time they spent parked.
    pub fn object_throttling(&self) -> Vec<ObjectThrottle> {
        self.throttles.iter().map(|t| t.stats).collect()
    }

    /// Requests parked now, all objects together.
    pub fn parked(&self) -> usize {
        self.throttles.iter().map(Throttle::parked).sum()
    }
}
