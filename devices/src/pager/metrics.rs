//! Device counters, read by `PagerDevice::stats` (for `vmm pager stat`,
//! the benchmark and the tests).

/// Counters since the device was created; `in_flight` is a gauge.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PagerStats {
    /// Chains taken from the request queue.
    pub requests: u64,
    /// Chains refused by validation or the object state rules.
    pub rejected: u64,
    /// Requests answered by the pager (inline or by a worker).
    pub completed: u64,
    /// DATA_REQUESTs the pager answered without blocking, on the event loop.
    pub inline: u64,
    /// Requests taken from the ring and not yet completed.
    pub in_flight: u64,
    /// Times the device left chains on the ring because `in_flight` had
    /// reached the bound (the driver published more than the ring holds).
    pub throttled: u64,
    pub events_delivered: u64,
    pub event_bufs_rejected: u64,
    pub offers_dropped: u64,
    pub interrupts: u64,
    /// Guest notifications of either queue (each ioeventfd write counted,
    /// however many one wake-up took together).
    pub doorbells: u64,
}

/// Pager-initiated events delivered to the guest for one object, by kind
/// (counted when the event lands in a guest buffer, not when the pager
/// queues it: a refused or revoked event never reaches the kernel).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ObjectEvents {
    /// data_lock, flush_request and clean_request.
    pub lock_requests: u64,
    pub cache: u64,
    /// Unrequested data_provided (offers).
    pub data_provided: u64,
    pub destroy: u64,
    /// The pager's calls refused because the backlog, or the object's
    /// share of it, was full (the guest took events more slowly).
    pub refused: u64,
}

impl ObjectEvents {
    /// Counts one delivered event of wire type `ev_type`.
    pub(crate) fn count(&mut self, ev_type: u16) {
        use super::wire::event;
        let n = match ev_type {
            event::LOCK_REQUEST => &mut self.lock_requests,
            event::CACHE => &mut self.cache,
            event::DATA_PROVIDED => &mut self.data_provided,
            event::DESTROY => &mut self.destroy,
            // Only control.rs builds events, all of the kinds above.
            _ => return,
        };
        *n += 1;
    }
}

/// An object's rate limit at work (throttle.rs): requests the device took
/// off the ring and parked until the object's buckets allowed them, and
/// the time they spent parked (counted when each leaves the park: resumed,
/// or dropped by a reset).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ObjectThrottle {
    pub throttled: u64,
    pub parked_time: std::time::Duration,
}
