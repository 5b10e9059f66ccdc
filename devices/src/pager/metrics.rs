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
}
