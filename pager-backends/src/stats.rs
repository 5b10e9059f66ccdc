//! Per-object statistics: an `Instrumented` wrapper around any pager that
//! counts every call by kind, the pages and bytes moved, failures, and the
//! latency of data_request and data_write as seen by the caller (the time
//! spent inside the pager call, whatever its outcome).
//!
//! "In" and "out" are the guest's paging directions: pages in are data a
//! data_request provided, pages out are data a data_write took back.
//!
//! Counters are atomics; each latency histogram sits behind its own mutex,
//! held only to add one sample (tens of nanoseconds against requests of
//! microseconds or more), so instrumenting does not serialise the parallel
//! requests it measures.

use crate::error::{PagerError, Result};
use crate::pager::{DataReply, KernelControl, ObjectInfo, Pager, UnlockReply};
use crate::poison;
use crate::sg;
use crate::types::{Access, KernelId, ObjectOffset, PAGE_SIZE};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::VolatileSlice;

/// Longest latency told apart: an hour (longer ones count as an hour; a
/// request that long has met any sane pager timeout many times over).
const MAX_TRACKED_NS: u64 = 3_600 * 1_000_000_000;
/// Two significant digits: quantiles within 1%, and a fixed ~40 KiB per
/// histogram allocated up front, never on the request path.
const SIGNIFICANT_DIGITS: u8 = 2;

/// Nanosecond latencies of one kind of call.
pub struct LatencyHistogram(Mutex<Histogram<u64>>);

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(Mutex::new(
            Histogram::new_with_max(MAX_TRACKED_NS, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid"),
        ))
    }
}

impl LatencyHistogram {
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Clamped, never failing: beyond MAX_TRACKED_NS counts as the max.
        self.lock().saturating_record(ns);
    }

    pub fn snapshot(&self) -> LatencySummary {
        let h = self.lock();
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50: Duration::from_nanos(h.value_at_quantile(0.50)),
            p99: Duration::from_nanos(h.value_at_quantile(0.99)),
            max: Duration::from_nanos(h.max()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        // A panic elsewhere while recording leaves the counts usable.
        poison::lock(&self.0)
    }
}

/// Quantiles of a latency histogram; all zero when nothing was recorded.
/// Values are the upper end of their histogram bucket (within 1%).
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
    /// Calls by kind, whatever their outcome.
    pub inits: u64,
    pub data_requests: u64,
    pub data_writes: u64,
    pub data_unlocks: u64,
    pub terminates: u64,
    pub syncs: u64,
    /// Pages and bytes provided by data_request (read-ahead included).
    pub pages_in: u64,
    pub bytes_in: u64,
    /// Pages and bytes data_write accepted.
    pub pages_out: u64,
    pub bytes_out: u64,
    /// data_requests answered `Unavailable` (the kernel zero-fills).
    pub unavailable: u64,
    /// Failed calls, other than timeouts.
    pub errors: u64,
    /// Calls that failed with `PagerError::Timeout`.
    pub timeouts: u64,
    /// Some call failed with `PagerError::Dead`: the pager is gone.
    pub dead: bool,
    /// Time spent inside the backend answering data requests, summed.
    pub request_time: Duration,
    pub request_latency: LatencySummary,
    pub write_latency: LatencySummary,
}

#[derive(Default)]
struct Counters {
    inits: AtomicU64,
    data_requests: AtomicU64,
    data_writes: AtomicU64,
    data_unlocks: AtomicU64,
    terminates: AtomicU64,
    syncs: AtomicU64,
    pages_in: AtomicU64,
    bytes_in: AtomicU64,
    pages_out: AtomicU64,
    bytes_out: AtomicU64,
    unavailable: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    dead: AtomicBool,
    request_ns: AtomicU64,
    request_latency: LatencyHistogram,
    write_latency: LatencyHistogram,
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
            inits: c.inits.load(Relaxed),
            data_requests: c.data_requests.load(Relaxed),
            data_writes: c.data_writes.load(Relaxed),
            data_unlocks: c.data_unlocks.load(Relaxed),
            terminates: c.terminates.load(Relaxed),
            syncs: c.syncs.load(Relaxed),
            pages_in: c.pages_in.load(Relaxed),
            bytes_in: c.bytes_in.load(Relaxed),
            pages_out: c.pages_out.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            unavailable: c.unavailable.load(Relaxed),
            errors: c.errors.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            dead: c.dead.load(Relaxed),
            request_time: Duration::from_nanos(c.request_ns.load(Relaxed)),
            request_latency: c.request_latency.snapshot(),
            write_latency: c.write_latency.snapshot(),
        }
    }

    /// Counts a failure by kind and passes the result on.
    fn count<T>(&self, r: Result<T>) -> Result<T> {
        match &r {
            Ok(_) => {}
            Err(PagerError::Timeout(_)) => {
                self.c.timeouts.fetch_add(1, Relaxed);
            }
            Err(e) => {
                if matches!(e, PagerError::Dead(_)) {
                    self.c.dead.store(true, Relaxed);
                }
                self.c.errors.fetch_add(1, Relaxed);
            }
        }
        r
    }

    /// Counts one call of `kind` and its failure, if any.
    fn call<T>(&self, kind: &AtomicU64, r: Result<T>) -> Result<T> {
        kind.fetch_add(1, Relaxed);
        self.count(r)
    }

    /// `len`: the bytes asked for; `room`: the bytes of buffer offered.
    fn record_request(
        &self,
        t: Instant,
        r: Result<DataReply>,
        len: u64,
        room: u64,
    ) -> Result<DataReply> {
        let took = t.elapsed();
        // An answer no kernel can take (the device fails it as the pager
        // breaking protocol) moved no pages: counted as the error it is.
        let r = r.and_then(|reply| consistent(reply, len, room));
        self.c.request_latency.record(took);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.c.request_ns.fetch_add(ns, Relaxed);
        match &r {
            Ok(DataReply::Provided { bytes, .. }) => {
                self.c.bytes_in.fetch_add(*bytes, Relaxed);
                self.c
                    .pages_in
                    .fetch_add(bytes.div_ceil(PAGE_SIZE), Relaxed);
            }
            Ok(DataReply::Unavailable { .. }) => {
                self.c.unavailable.fetch_add(1, Relaxed);
            }
            Err(_) => {}
        }
        self.call(&self.c.data_requests, r)
    }
}

/// A data_request's answer as a kernel can take it: provided data covers
/// the request, fits the buffers offered and is whole pages; unavailable
/// covers the request and is whole pages. Anything else is the pager
/// breaking protocol.
fn consistent(reply: DataReply, len: u64, room: u64) -> Result<DataReply> {
    let ok = match reply {
        DataReply::Provided { bytes, .. } => {
            bytes >= len && bytes <= room && bytes.is_multiple_of(PAGE_SIZE)
        }
        DataReply::Unavailable { bytes } => bytes >= len && bytes.is_multiple_of(PAGE_SIZE),
    };
    if ok {
        Ok(reply)
    } else {
        Err(PagerError::Protocol(format!(
            "answered {reply:?} to a request of {len} bytes with {room} bytes of buffers"
        )))
    }
}

impl Pager for Instrumented {
    fn init(&self, kernel: KernelId, control: Arc<dyn KernelControl>) -> Result<ObjectInfo> {
        self.call(&self.c.inits, self.inner.init(kernel, control))
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
        self.record_request(t, r, len, sg::total_len(bufs))
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
        Some(self.record_request(t, r, len, sg::total_len(bufs)))
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
        if r.is_ok() {
            self.c.bytes_out.fetch_add(len, Relaxed);
            self.c.pages_out.fetch_add(len.div_ceil(PAGE_SIZE), Relaxed);
        }
        self.call(&self.c.data_writes, r)
    }

    fn data_unlock(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
    ) -> Result<UnlockReply> {
        let r = self.inner.data_unlock(kernel, offset, len, desired);
        self.call(&self.c.data_unlocks, r)
    }

    /// Not a protocol request (the device asks once, at creation), so only
    /// its failure is counted.
    fn extent(&self) -> Result<u64> {
        self.count(self.inner.extent())
    }

    fn sync(&self) -> Result<()> {
        self.call(&self.c.syncs, self.inner.sync())
    }

    fn lock_completed(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        cookie: u64,
    ) -> Result<()> {
        // Not a paging operation: passed on, not counted.
        self.inner.lock_completed(kernel, offset, len, cookie)
    }

    fn terminate(&self, kernel: KernelId) -> Result<()> {
        self.call(&self.c.terminates, self.inner.terminate(kernel))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoKernel;
    impl KernelControl for NoKernel {
        fn lock_request(&self, _: ObjectOffset, _: u64, _: Access, _: bool, _: bool) -> Result<()> {
            Ok(())
        }
        fn offer(&self, _: ObjectOffset, _: &[u8], _: Access) -> Result<()> {
            Ok(())
        }
        fn set_cache(&self, _: bool) -> Result<()> {
            Ok(())
        }
        fn destroy(&self, _: &str) -> Result<()> {
            Ok(())
        }
    }

    /// Answers by page number, so each test call picks its outcome.
    struct Scripted;

    fn outcome(offset: ObjectOffset) -> Result<()> {
        match offset.raw() / PAGE_SIZE {
            2 => Err(PagerError::Timeout(Duration::from_secs(5))),
            3 => Err(PagerError::Dead("gone".into())),
            4 => Err(PagerError::Protocol("nonsense".into())),
            _ => Ok(()),
        }
    }

    impl Pager for Scripted {
        fn init(&self, _: KernelId, _: Arc<dyn KernelControl>) -> Result<ObjectInfo> {
            Ok(ObjectInfo {
                size: 1 << 20,
                read_only: false,
                may_cache: true,
            })
        }
        fn data_request(
            &self,
            _: KernelId,
            offset: ObjectOffset,
            len: u64,
            _: Access,
            _: &[VolatileSlice<'_>],
        ) -> Result<DataReply> {
            outcome(offset)?;
            Ok(if offset.raw() == PAGE_SIZE {
                DataReply::Unavailable { bytes: len }
            } else {
                // One page of read-ahead beyond what was asked.
                DataReply::Provided {
                    bytes: len + PAGE_SIZE,
                    lock: Access::NONE,
                }
            })
        }
        fn data_write(
            &self,
            _: KernelId,
            offset: ObjectOffset,
            _: u64,
            _: &[VolatileSlice<'_>],
        ) -> Result<()> {
            outcome(offset)
        }
        fn data_unlock(
            &self,
            _: KernelId,
            offset: ObjectOffset,
            _: u64,
            desired: Access,
        ) -> Result<UnlockReply> {
            outcome(offset)?;
            Ok(UnlockReply { lock: desired })
        }
        fn extent(&self) -> Result<u64> {
            Ok(1 << 20)
        }
        fn sync(&self) -> Result<()> {
            Err(PagerError::Timeout(Duration::from_secs(1)))
        }
        fn terminate(&self, _: KernelId) -> Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    fn page(n: u64) -> ObjectOffset {
        ObjectOffset(n * PAGE_SIZE)
    }

    #[test]
    fn counts_calls_pages_and_failures_by_kind() {
        let p = Instrumented::new(Arc::new(Scripted));
        let k = KernelId(1);
        let r = Access::READ;
        let mut buf = vec![0u8; 2 * PAGE_SIZE as usize];
        let two = [VolatileSlice::from(&mut buf[..])];
        assert_eq!(p.stats(), StatsSnapshot::default());
        p.init(k, Arc::new(NoKernel)).unwrap();
        // Provided 2 pages for 1 asked, twice; unavailable once; then a
        // timeout, a dead pager and a protocol error.
        p.data_request(k, page(0), PAGE_SIZE, r, &two).unwrap();
        p.data_request(k, page(8), PAGE_SIZE, r, &two).unwrap();
        p.data_request(k, page(1), 2 * PAGE_SIZE, r, &two).unwrap();
        assert!(p.data_request(k, page(2), PAGE_SIZE, r, &two).is_err());
        assert!(p.data_request(k, page(3), PAGE_SIZE, r, &two).is_err());
        assert!(p.data_request(k, page(4), PAGE_SIZE, r, &two).is_err());
        p.data_write(k, page(0), 3 * PAGE_SIZE, &[]).unwrap();
        assert!(p.data_write(k, page(2), PAGE_SIZE, &[]).is_err());
        p.data_unlock(k, page(0), PAGE_SIZE, Access::WRITE).unwrap();
        assert!(p.sync().is_err());
        p.terminate(k).unwrap();
        p.extent().unwrap();

        let s = p.stats();
        assert_eq!(
            (s.inits, s.data_requests, s.data_writes, s.data_unlocks),
            (1, 6, 2, 1)
        );
        assert_eq!((s.terminates, s.syncs), (1, 1));
        assert_eq!((s.pages_in, s.bytes_in), (4, 4 * PAGE_SIZE));
        assert_eq!((s.pages_out, s.bytes_out), (3, 3 * PAGE_SIZE));
        assert_eq!(s.unavailable, 1);
        // Timeouts (request, write, sync) are not among the errors.
        assert_eq!((s.errors, s.timeouts), (2, 3));
        assert!(s.dead);
        assert_eq!(s.request_latency.count, 6);
        assert_eq!(s.write_latency.count, 2);
        assert!(s.request_latency.p50 <= s.request_latency.p99);
        assert!(s.request_latency.p99 <= s.request_latency.max);
    }

    #[test]
    fn an_answer_the_kernel_cannot_take_moves_no_pages() {
        let p = Instrumented::new(Arc::new(Scripted));
        let k = KernelId(1);
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        let one = [VolatileSlice::from(&mut buf[..])];
        // Scripted provides a page more than asked: more than one page
        // of buffer holds.
        let r = p.data_request(k, page(0), PAGE_SIZE, Access::READ, &one);
        assert!(matches!(r, Err(PagerError::Protocol(_))), "{r:?}");
        let s = p.stats();
        assert_eq!((s.data_requests, s.errors), (1, 1));
        assert_eq!((s.pages_in, s.bytes_in), (0, 0));
        assert_eq!(
            consistent(DataReply::Unavailable { bytes: 0 }, PAGE_SIZE, PAGE_SIZE).ok(),
            None
        );
        assert_eq!(
            consistent(
                DataReply::Provided {
                    bytes: PAGE_SIZE + 1,
                    lock: Access::NONE
                },
                PAGE_SIZE,
                2 * PAGE_SIZE
            )
            .ok(),
            None
        );
    }

    #[test]
    fn not_dead_without_a_dead_error() {
        let p = Instrumented::new(Arc::new(Scripted));
        let k = KernelId(1);
        assert!(
            p.data_request(k, page(4), PAGE_SIZE, Access::READ, &[])
                .is_err()
        );
        assert!(
            p.data_request(k, page(2), PAGE_SIZE, Access::READ, &[])
                .is_err()
        );
        let s = p.stats();
        assert_eq!((s.errors, s.timeouts, s.dead), (1, 1, false));
        assert_eq!((s.pages_in, s.unavailable), (0, 0));
    }

    #[test]
    fn quantiles_within_one_percent() {
        let h = LatencyHistogram::default();
        assert_eq!(h.snapshot(), LatencySummary::default());
        for _ in 0..98 {
            h.record(Duration::from_nanos(1000));
        }
        h.record(Duration::from_micros(1000));
        h.record(Duration::from_micros(2000));
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        let within = |d: Duration, v: u64| {
            d.as_nanos() >= v as u128 && d.as_nanos() <= (v + v / 100) as u128
        };
        assert!(within(s.p50, 1000), "{s:?}");
        assert!(within(s.p99, 1_000_000), "{s:?}");
        assert!(within(s.max, 2_000_000), "{s:?}");
    }

    #[test]
    fn latencies_beyond_the_range_count_as_its_top() {
        let h = LatencyHistogram::default();
        h.record(Duration::MAX);
        let s = h.snapshot();
        assert_eq!(s.count, 1);
        assert!(s.max >= Duration::from_nanos(MAX_TRACKED_NS), "{s:?}");
        assert!(s.max < Duration::from_nanos(MAX_TRACKED_NS * 2), "{s:?}");
    }
}
