//! Adaptive read-ahead: a window that doubles while faults are sequential
//! and collapses on the first random one. Only ever fills buffer space the
//! caller offered beyond the requested length.

use crate::types::{ObjectOffset, PAGE_SIZE};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub(crate) struct ReadAhead {
    /// Where the next sequential fault would start.
    next: AtomicU64,
    /// Current extra bytes to read beyond a request.
    window: AtomicU64,
    max: u64,
}

impl ReadAhead {
    pub(crate) fn new(max: u64) -> Self {
        ReadAhead {
            next: AtomicU64::new(u64::MAX),
            window: AtomicU64::new(0),
            max: max / PAGE_SIZE * PAGE_SIZE,
        }
    }

    /// Bytes to read for a request of `len` at `offset`, given `offered`
    /// bytes of buffer and `left` addressable bytes to the end of the object.
    /// Races between threads only make the guess worse, never wrong: any
    /// answer between `len` and `min(offered, left)` is valid.
    pub(crate) fn plan(&self, offset: ObjectOffset, len: u64, offered: u64, left: u64) -> u64 {
        let window = if self.next.load(Relaxed) == offset.raw() {
            let w = self.window.load(Relaxed);
            let grown = if w == 0 {
                4 * PAGE_SIZE
            } else {
                w.saturating_mul(2)
            }
            .min(self.max);
            self.window.store(grown, Relaxed);
            grown
        } else {
            self.window.store(0, Relaxed);
            0
        };
        let want = len.saturating_add(window).min(offered).min(left);
        let want = want / PAGE_SIZE * PAGE_SIZE;
        let want = want.max(len);
        self.next.store(offset.raw().saturating_add(want), Relaxed);
        want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_on_sequential_and_resets_on_random() {
        let ra = ReadAhead::new(64 * PAGE_SIZE);
        let p = PAGE_SIZE;
        assert_eq!(ra.plan(ObjectOffset(0), p, 128 * p, 1 << 30), p); // first: no history
        assert_eq!(ra.plan(ObjectOffset(p), p, 128 * p, 1 << 30), 5 * p);
        assert_eq!(ra.plan(ObjectOffset(6 * p), p, 128 * p, 1 << 30), 9 * p);
        assert_eq!(ra.plan(ObjectOffset(100 * p), p, 128 * p, 1 << 30), p); // random
        // Never more than offered or than the object has left, never less than len.
        assert_eq!(ra.plan(ObjectOffset(101 * p), p, 2 * p, 1 << 30), 2 * p);
        assert_eq!(ra.plan(ObjectOffset(103 * p), p, 128 * p, 3 * p), 3 * p);
        assert_eq!(ra.plan(ObjectOffset(0), 2 * p, 2 * p, 1 << 30), 2 * p);
    }
}
