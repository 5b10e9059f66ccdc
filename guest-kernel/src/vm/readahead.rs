//! How many pages a data_request asks for (the paper's clustering, sized
//! by the access pattern): a fault just past the previous request's
//! window on the same object is a sequential stream, whose window doubles
//! up to a maximum; any other fault asks for its page alone and starts
//! watching again. Kept for a few objects at once (the most recent ones),
//! so interleaved readers of different objects each keep their stream.

/// Streams remembered at once (one bit each in `ReadAhead::live`).
const STREAMS: usize = 8;
const _: () = assert!(STREAMS <= 8);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stream {
    object: u64,
    /// The first byte after the last request's window.
    next: u64,
    pages: u32,
    /// Last use (for replacing the oldest stream).
    stamp: u64,
}

/// Per-object sequential detection for data_request windows.
#[derive(Clone, Debug)]
pub struct ReadAhead {
    streams: [Stream; STREAMS],
    /// Which entries of `streams` hold one.
    live: u8,
    /// The entry used last, looked at first: every fault of a reader
    /// asks, mostly about the same object as the one before.
    last: usize,
    clock: u64,
    first: u32,
    max: u32,
}

impl ReadAhead {
    /// Windows start at `first` pages for an object not seen before and
    /// grow to `max` (both at least 1).
    pub const fn new(first: u32, max: u32) -> ReadAhead {
        let max = if max == 0 { 1 } else { max };
        let first = if first == 0 {
            1
        } else if first > max {
            max
        } else {
            first
        };
        ReadAhead {
            streams: [Stream {
                object: 0,
                next: 0,
                pages: 0,
                stamp: 0,
            }; STREAMS],
            live: 0,
            last: 0,
            clock: 0,
            first,
            max,
        }
    }

    /// The window, in pages, for a fault at byte `offset` (page aligned) of
    /// `object`, remembered as asked (`page_size` bytes per page). The
    /// caller may ask for fewer (the object's end, free frames).
    pub fn window(&mut self, object: u64, offset: u64, page_size: u64) -> u32 {
        self.clock += 1;
        let stamp = self.clock;
        let pages = match self.find(object) {
            Some(i) => {
                self.last = i;
                let s = &mut self.streams[i];
                // Sequential: at the window's end, or inside it (a page the
                // pager did not provide, or one reclaimed since).
                let start = s.next.saturating_sub(u64::from(s.pages) * page_size);
                let pages = if offset == s.next {
                    s.pages.saturating_mul(2).min(self.max)
                } else if offset >= start && offset < s.next {
                    s.pages
                } else {
                    1
                };
                s.pages = pages;
                s.next = offset.saturating_add(u64::from(pages) * page_size);
                s.stamp = stamp;
                return pages;
            }
            None => self.first,
        };
        let s = Stream {
            object,
            next: offset.saturating_add(u64::from(pages) * page_size),
            pages,
            stamp,
        };
        let slot = if self.live != u8::MAX >> (8 - STREAMS) {
            (!self.live).trailing_zeros() as usize
        } else {
            (0..STREAMS)
                .min_by_key(|&i| self.streams[i].stamp)
                .unwrap_or(0)
        };
        self.streams[slot] = s;
        self.live |= 1 << slot;
        self.last = slot;
        pages
    }

    /// The entry holding `object`'s stream.
    fn find(&self, object: u64) -> Option<usize> {
        let held = |i: usize| self.live & (1 << i) != 0 && self.streams[i].object == object;
        if held(self.last) {
            return Some(self.last);
        }
        (0..STREAMS).find(|&i| held(i))
    }

    /// `object` is gone: its stream is forgotten (its id may be reused).
    pub fn forget(&mut self, object: u64) {
        if let Some(i) = self.find(object) {
            self.live &= !(1 << i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 4096;

    #[test]
    fn sequential_faults_double_the_window_up_to_the_maximum() {
        let mut r = ReadAhead::new(4, 32);
        let mut at = 0;
        let mut seen = alloc::vec::Vec::new();
        for _ in 0..6 {
            let w = r.window(1, at, P);
            seen.push(w);
            at += u64::from(w) * P;
        }
        assert_eq!(seen, [4, 8, 16, 32, 32, 32]);
    }

    #[test]
    fn a_random_fault_asks_for_one_page_and_restarts() {
        let mut r = ReadAhead::new(4, 32);
        assert_eq!(r.window(1, 0, P), 4);
        assert_eq!(r.window(1, 4 * P, P), 8);
        assert_eq!(r.window(1, 100 * P, P), 1, "a jump");
        assert_eq!(r.window(1, 101 * P, P), 2, "sequential again");
        // Inside the last window (a page not provided): same size.
        assert_eq!(r.window(1, 102 * P, P), 2);
    }

    #[test]
    fn interleaved_objects_keep_their_own_streams() {
        let mut r = ReadAhead::new(2, 16);
        assert_eq!(r.window(1, 0, P), 2);
        assert_eq!(r.window(2, 0, P), 2);
        assert_eq!(r.window(1, 2 * P, P), 4);
        assert_eq!(r.window(2, 2 * P, P), 4);
        r.forget(1);
        assert_eq!(r.window(1, 6 * P, P), 2, "forgotten: a new stream");
    }

    #[test]
    fn the_oldest_stream_makes_room() {
        let mut r = ReadAhead::new(1, 8);
        for o in 0..STREAMS as u64 {
            r.window(o, 0, P);
        }
        // Object 0 is the oldest; a new object replaces it.
        r.window(99, 0, P);
        assert_eq!(r.window(1, P, P), 2, "object 1 kept its stream");
        assert_eq!(r.window(0, P, P), 1, "object 0 was replaced");
    }

    #[test]
    fn degenerate_sizes_are_clamped() {
        let mut r = ReadAhead::new(0, 0);
        assert_eq!(r.window(1, 0, P), 1);
        assert_eq!(r.window(1, P, P), 1);
        let mut r = ReadAhead::new(9, 4);
        assert_eq!(r.window(1, 0, P), 4);
        assert_eq!(r.window(1, u64::MAX - 10, P), 1, "no overflow");
    }
}
