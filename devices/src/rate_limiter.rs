//! Token-bucket rate limits for a device's requests: one bucket for
//! operations per second, one for bytes per second, each optional (the
//! model of Firecracker's drive `rate_limiter`).
//!
//! A bucket holds at most `burst` tokens and gains `rate` tokens a second.
//! A request may go when the bucket holds at least its cost, or, for a
//! request larger than the whole bucket, when the bucket is full; either way
//! the full cost is taken and the bucket may go into debt, which later
//! requests wait out. So no request is refused for being large, and over
//! any long stretch the rate is what was configured.
//!
//! The limiter never reads a clock: every call takes `now`, so the device
//! decides where time comes from (a `Clock`) and tests step it by hand.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

/// Where a device reads the time its limits run on.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The monotonic clock (`Instant::now`), the one the VMM uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// One bucket's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Tokens gained per second.
    pub rate: NonZeroU64,
    /// Most tokens held at once: how much may go at once after a quiet
    /// spell.
    pub burst: NonZeroU64,
}

impl Bucket {
    /// `rate` a second with one second's worth as the burst.
    pub fn per_second(rate: NonZeroU64) -> Bucket {
        Bucket { rate, burst: rate }
    }
}

/// The limits of one object: each bucket is optional; none means
/// unlimited.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second.
    pub ops: Option<Bucket>,
    /// Bytes per second.
    pub bandwidth: Option<Bucket>,
}

impl RateLimit {
    pub fn is_unlimited(&self) -> bool {
        self.ops.is_none() && self.bandwidth.is_none()
    }
}

/// A bucket's state. Token counts are kept in nano-tokens (tokens x 10^9),
/// so refilling for any number of nanoseconds is exact integer arithmetic
/// and no fraction of a token is lost between calls.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: i128,
    capacity: i128,
    /// May be negative: the debt of a request larger than the bucket.
    budget: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(config: Bucket, now: Instant) -> TokenBucket {
        let capacity = i128::from(config.burst.get()) * NANOS_PER_SEC;
        TokenBucket {
            rate: i128::from(config.rate.get()),
            capacity,
            budget: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A `now` before the last one (a caller's clock is its own) adds
        // nothing rather than going backwards.
        let Some(elapsed) = now.checked_duration_since(self.last) else {
            return;
        };
        self.last = now;
        let room = self.capacity - self.budget;
        // At most u64::MAX x u64::MAX: fits; saturate anyway for clarity.
        let gained = i128::try_from(elapsed.as_nanos())
            .unwrap_or(i128::MAX)
            .saturating_mul(self.rate);
        self.budget += gained.min(room);
    }

    /// Nano-tokens the bucket must hold before `cost` may be taken.
    fn needed(&self, cost: u64) -> i128 {
        (i128::from(cost) * NANOS_PER_SEC).min(self.capacity)
    }

    /// How long until `cost` may be taken; zero if it may be now.
    pub fn wait_for(&mut self, cost: u64, now: Instant) -> Duration {
        self.refill(now);
        if cost == 0 {
            return Duration::ZERO;
        }
        let short = self.needed(cost) - self.budget;
        if short <= 0 {
            return Duration::ZERO;
        }
        // Rounded up, so the wait is never a nanosecond too early.
        let nanos = (short + self.rate - 1) / self.rate;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Takes `cost` tokens (the caller checked `wait_for` is zero).
    pub fn take(&mut self, cost: u64) {
        self.budget -= i128::from(cost) * NANOS_PER_SEC;
    }

    /// Whole tokens held now (negative in debt), for tests and messages.
    pub fn tokens(&mut self, now: Instant) -> i64 {
        self.refill(now);
        i64::try_from(self.budget.div_euclid(NANOS_PER_SEC)).unwrap_or(i64::MAX)
    }
}

/// An object's buckets together: a request goes when every bucket it
/// costs something in allows it, and then pays in all of them.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    ops: Option<TokenBucket>,
    bandwidth: Option<TokenBucket>,
}

impl RateLimiter {
    /// None for an unlimited `limit` (nothing to account).
    pub fn new(limit: RateLimit, now: Instant) -> Option<RateLimiter> {
        if limit.is_unlimited() {
            return None;
        }
        Some(RateLimiter {
            ops: limit.ops.map(|b| TokenBucket::new(b, now)),
            bandwidth: limit.bandwidth.map(|b| TokenBucket::new(b, now)),
        })
    }

    /// Takes `ops` operations and `bytes` bytes if both buckets allow it
    /// now; else takes nothing and says how long until they might.
    pub fn try_take(&mut self, ops: u64, bytes: u64, now: Instant) -> Result<(), Duration> {
        let wait = [(&mut self.ops, ops), (&mut self.bandwidth, bytes)]
            .into_iter()
            .filter_map(|(b, cost)| b.as_mut().map(|b| b.wait_for(cost, now)))
            .max()
            .unwrap_or(Duration::ZERO);
        if !wait.is_zero() {
            return Err(wait);
        }
        if let Some(b) = &mut self.ops {
            b.take(ops);
        }
        if let Some(b) = &mut self.bandwidth {
            b.take(bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_paces_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Bucket::per_second(nz(10)), t0);
        for _ in 0..10 {
            assert_eq!(b.wait_for(1, t0), Duration::ZERO);
            b.take(1);
        }
        // Empty: one token takes a tenth of a second to come back.
        assert_eq!(b.wait_for(1, t0), ms(100));
        assert_eq!(b.wait_for(1, t0 + ms(60)), ms(40));
        assert_eq!(b.wait_for(1, t0 + ms(100)), Duration::ZERO);
        b.take(1);
        assert_eq!(b.tokens(t0 + ms(100)), 0);
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            Bucket {
                rate: nz(100),
                burst: nz(5),
            },
            t0,
        );
        b.take(5);
        assert_eq!(b.tokens(t0 + Duration::from_secs(3600)), 5);
    }

    #[test]
    fn fractions_of_a_token_are_kept_between_calls() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Bucket::per_second(nz(3)), t0);
        b.take(3);
        // 3 tokens a second: a third of a second per token, in steps that
        // each add a fraction.
        let mut t = t0;
        for _ in 0..9 {
            t += Duration::from_nanos(111_111_112);
            let _ = b.wait_for(1, t);
        }
        assert_eq!(b.wait_for(3, t), Duration::ZERO, "1.000000008 s refilled");
    }

    #[test]
    fn a_request_larger_than_the_bucket_goes_when_full_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Bucket::per_second(nz(1000)), t0);
        assert_eq!(b.wait_for(4000, t0), Duration::ZERO, "full bucket");
        b.take(4000);
        assert_eq!(b.tokens(t0), -3000);
        // The debt and then a whole bucket come back before the next one.
        assert_eq!(b.wait_for(4000, t0), Duration::from_secs(4));
        assert_eq!(b.wait_for(1, t0 + Duration::from_secs(3)), ms(1));
    }

    #[test]
    fn zero_cost_never_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Bucket::per_second(nz(1)), t0);
        b.take(5);
        assert_eq!(b.wait_for(0, t0), Duration::ZERO);
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(Bucket::per_second(nz(10)), t0);
        b.take(10);
        assert_eq!(b.wait_for(1, t0 - Duration::from_secs(5)), ms(100));
        assert_eq!(b.tokens(t0), 0);
    }

    #[test]
    fn huge_rates_and_waits_do_not_overflow() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Bucket::per_second(nz(u64::MAX)), t0);
        b.take(u64::MAX);
        b.take(u64::MAX);
        assert!(b.wait_for(1, t0 + Duration::from_secs(1)) > Duration::ZERO);
        assert_eq!(b.wait_for(1, t0 + Duration::from_secs(2)), Duration::ZERO);
        assert_eq!(b.tokens(t0 + Duration::from_secs(1 << 40)), i64::MAX);
        let mut slow = TokenBucket::new(Bucket::per_second(nz(1)), t0);
        slow.take(u64::MAX);
        assert_eq!(slow.wait_for(1, t0), Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn unlimited_is_no_limiter() {
        assert!(RateLimiter::new(RateLimit::default(), Instant::now()).is_none());
    }

    #[test]
    fn both_buckets_must_allow_and_both_pay() {
        let t0 = Instant::now();
        let limit = RateLimit {
            ops: Some(Bucket::per_second(nz(2))),
            bandwidth: Some(Bucket::per_second(nz(8192))),
        };
        let mut l = RateLimiter::new(limit, t0).unwrap();
        assert_eq!(l.try_take(1, 4096, t0), Ok(()));
        assert_eq!(l.try_take(1, 4096, t0), Ok(()));
        // Both empty now; the bandwidth one is the slower to refill for a
        // 8 KiB request (1 s) than ops (0.5 s).
        assert_eq!(l.try_take(1, 8192, t0), Err(Duration::from_secs(1)));
        // A refused request took nothing: half a second later one op and
        // 4 KiB are back, so a 4 KiB request goes.
        assert_eq!(l.try_take(1, 4096, t0 + ms(500)), Ok(()));
        // Operations that move no bytes wait for ops only.
        assert_eq!(l.try_take(1, 0, t0 + ms(500)), Err(ms(500)));
        assert_eq!(l.try_take(1, 0, t0 + ms(1000)), Ok(()));
    }

    #[test]
    fn one_bucket_alone_limits_only_its_own_kind() {
        let t0 = Instant::now();
        let bw = RateLimit {
            ops: None,
            bandwidth: Some(Bucket::per_second(nz(4096))),
        };
        let mut l = RateLimiter::new(bw, t0).unwrap();
        for _ in 0..1000 {
            assert_eq!(l.try_take(1, 0, t0), Ok(()), "no ops limit");
        }
        assert_eq!(l.try_take(1, 4096, t0), Ok(()));
        assert!(l.try_take(1, 4096, t0).is_err());
    }
}
