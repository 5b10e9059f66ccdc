//! Per-object statistics: an `Instrumented` wrapper around any pager that
//! counts requests, bytes and errors and keeps latency histograms.
//!
//! Everything is lock-free atomics so instrumenting never serialises the
//! parallel requests it measures.

use crate::error::Result;
use crate::pager::{DataReply, KernelControl, ObjectInfo, Pager, UnlockReply};
use crate::types::{Access, KernelId, ObjectOffset};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use vm_memory::VolatileSlice;

/// Sub-buckets per power of two: bounds the quantile error to ~1/SUB (12.5%).
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = 64 * SUB;

/// Log-linear histogram of nanosecond latencies.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros(); // >= SUB_BITS
    let mantissa = (ns >> (exp - SUB_BITS)) as usize & (SUB - 1);
    ((exp - SUB_BITS + 1) as usize) * SUB + mantissa
}

/// Upper bound of a bucket's range, in ns.
fn bucket_high(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let exp = (b / SUB) as u32 + SUB_BITS - 1;
    let mantissa = (b % SUB) as u64;
    let low = (1u64 << exp) | (mantissa << (exp - SUB_BITS));
    low + ((1u64 << (exp - SUB_BITS)) - 1)
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(ns)].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> LatencySummary {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| -> Duration {
            if total == 0 {
                return Duration::ZERO;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (b, &c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_nanos(bucket_high(b));
                }
            }
            Duration::from_nanos(u64::MAX)
        };
        LatencySummary {
            count: total,
            p50: quantile(0.50),
            p99: quantile(0.99),
            max: quantile(1.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// A point-in-time copy of an object's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub data_requests: u64,
    pub data_writes: u64,
    /// Bytes provided to the kernel (including read-ahead).
    pub bytes_out: u64,
    /// Bytes written back by the kernel.
    pub bytes_in: u64,
    /// Requests answered `Unavailable` (zero fill).
    pub unavailable: u64,
    pub errors: u64,
    /// Time spent inside the backend answering data requests, summed.
    pub request_time: Duration,
    pub request_latency: LatencySummary,
    pub write_latency: LatencySummary,
}

#[derive(Default)]
struct Counters {
    data_requests: AtomicU64,
    data_writes: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    unavailable: AtomicU64,
    errors: AtomicU64,
    request_ns: AtomicU64,
    request_latency: Histogram,
    write_latency: Histogram,
}

/// Wraps a pager and measures every call made through it.
pub struct Instrumented {
    inner: Arc<dyn Pager>,
    c: Counters,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn Pager>) -> Instrumented {
        Instrumented {
            inner,
            c: Counters::default(),
        }
    }

    pub fn inner(&self) -> &Arc<dyn Pager> {
        &self.inner
    }

    pub fn stats(&self) -> StatsSnapshot {
        let c = &self.c;
        StatsSnapshot {
            data_requests: c.data_requests.load(Relaxed),
            data_writes: c.data_writes.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            bytes_in: c.bytes_in.load(Relaxed),
            unavailable: c.unavailable.load(Relaxed),
            errors: c.errors.load(Relaxed),
            request_time: Duration::from_nanos(c.request_ns.load(Relaxed)),
            request_latency: c.request_latency.snapshot(),
            write_latency: c.write_latency.snapshot(),
        }
    }

    fn count<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.c.errors.fetch_add(1, Relaxed);
        }
        r
    }

    fn record_request(&self, t: Instant, r: Result<DataReply>) -> Result<DataReply> {
        let took = t.elapsed();
        self.c.request_latency.record(took);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.c.request_ns.fetch_add(ns, Relaxed);
        self.c.data_requests.fetch_add(1, Relaxed);
        match &r {
            Ok(DataReply::Provided { bytes, .. }) => {
                self.c.bytes_out.fetch_add(*bytes, Relaxed);
            }
            Ok(DataReply::Unavailable { .. }) => {
                self.c.unavailable.fetch_add(1, Relaxed);
            }
            Err(_) => {}
        }
        self.count(r)
    }
}

impl Pager for Instrumented {
    fn init(&self, kernel: KernelId, control: Arc<dyn KernelControl>) -> Result<ObjectInfo> {
        self.count(self.inner.init(kernel, control))
    }

    fn data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<DataReply> {
        let t = Instant::now();
        let r = self.inner.data_request(kernel, offset, len, desired, bufs);
        self.record_request(t, r)
    }

    fn try_data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Option<Result<DataReply>> {
        // Forwarded so wrapping a backend keeps its fast path; only answers
        // are counted (a "would block" is retried through data_request).
        let t = Instant::now();
        let r = self
            .inner
            .try_data_request(kernel, offset, len, desired, bufs)?;
        Some(self.record_request(t, r))
    }

    fn data_write(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.data_write(kernel, offset, len, bufs);
        self.c.write_latency.record(t.elapsed());
        self.c.data_writes.fetch_add(1, Relaxed);
        if r.is_ok() {
            self.c.bytes_in.fetch_add(len, Relaxed);
        }
        self.count(r)
    }

    fn data_unlock(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
    ) -> Result<UnlockReply> {
        self.count(self.inner.data_unlock(kernel, offset, len, desired))
    }

    fn extent(&self) -> Result<u64> {
        self.count(self.inner.extent())
    }

    fn sync(&self) -> Result<()> {
        self.count(self.inner.sync())
    }

    fn terminate(&self, kernel: KernelId) -> Result<()> {
        self.count(self.inner.terminate(kernel))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut last = 0;
        for ns in [
            0u64,
            1,
            7,
            8,
            9,
            15,
            16,
            100,
            1000,
            4095,
            4096,
            1 << 40,
            u64::MAX,
        ] {
            let b = bucket_of(ns);
            assert!(b >= last);
            last = b;
            assert!(
                bucket_high(b) >= ns,
                "{ns} in bucket {b} high {}",
                bucket_high(b)
            );
            if ns >= 8 {
                // relative error bound
                assert!(bucket_high(b) - ns <= ns / 8 + 1);
            }
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_nanos(1000));
        }
        h.record(Duration::from_nanos(1_000_000));
        h.record(Duration::from_nanos(1_000_000));
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        assert!(s.p50 >= Duration::from_nanos(1000) && s.p50 < Duration::from_nanos(1200));
        assert!(s.p99 >= Duration::from_micros(1000) && s.p99 < Duration::from_micros(1200));
    }
}
