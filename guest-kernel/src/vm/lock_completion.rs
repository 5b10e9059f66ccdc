//! Lock requests a pager wants to hear the end of (GNU Mach's
//! memory_object_lock_request with a reply port, answered by
//! lock_completed). A request is done when its lock is in force (applied
//! at once, before it is registered here) and every write-back it must
//! wait for has ended: the pages it started cleaning *and* those already
//! being cleaned when it came (the pager must have them too). A write
//! that fails has ended as well: the pager answered it.
//!
//! Each waited-for write is recorded once, by page, with a bit per request
//! waiting for it, so the write of a page started *after* a request (the
//! page dirtied and cleaned again) is never taken for one it waits for.
//! The table of requests is fixed (MAX_WAITING); the page records grow
//! with the writes in flight (one per page at most, as a page has one
//! write in flight at a time), taken with `try_reserve`.

use alloc::vec::Vec;

use crate::vm::object::PagerRef;
use crate::vm::types::{ObjectId, ObjectOffset};

/// Requests waiting at once; one bit each in a page record's mask. The
/// virtio-pager device keeps at most this many waiting for its driver
/// (docs/virtio-pager.md §5.2), so a well-behaved device never fills it.
pub const MAX_WAITING: usize = 64;
const _: () = assert!(MAX_WAITING == 64, "the masks are one u64");

/// What to send when a request is done: the request's own range, to
/// whoever serves the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub to: ReplyTo,
    pub offset: u64,
    pub length: u64,
}

/// Where a lock request's completion goes: a memory object is a port,
/// whoever serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    /// A host pager: LOCK_COMPLETED on its device object, with the tag its
    /// LOCK_REQUEST event carried.
    Device { object: u32, tag: u32 },
    /// A guest task's pager: a MEMORY_OBJECT_LOCK_COMPLETED message on the
    /// memory object port (after the data_writes sent there before it),
    /// with the cookie its request carried.
    Task { pager: PagerRef, cookie: u64 },
}

/// Why a request is not tracked (the kernel then applies it without a
/// reply, and counts it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// MAX_WAITING requests are waiting already.
    Full,
    /// No memory for the page records.
    NoMemory,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    reply: Reply,
    /// Writes not yet ended.
    outstanding: usize,
}

/// A write some requests wait for.
#[derive(Clone, Copy, Debug)]
struct Write {
    object: u64,
    offset: u64,
    waiters: u64,
}

#[derive(Debug)]
pub struct LockCompletions {
    entries: [Option<Entry>; MAX_WAITING],
    /// Entries whose writes have all ended: their reply is to be sent.
    ready: u64,
    /// Sorted by (object, offset).
    writes: Vec<Write>,
    /// Requests that asked for a reply and were refused one.
    pub refused: u64,
    /// Replies handed over to be sent.
    pub completed: u64,
}

impl Default for LockCompletions {
    fn default() -> Self {
        LockCompletions {
            entries: [None; MAX_WAITING],
            ready: 0,
            writes: Vec::new(),
            refused: 0,
            completed: 0,
        }
    }
}

impl LockCompletions {
    /// A request on `object` whose lock is applied; `in_flight` are the
    /// offsets of the pages in its range being written back now (those it
    /// started and those already on their way). With none, it is done at
    /// once. On Err nothing is recorded (and the refusal is counted).
    pub fn begin(
        &mut self,
        object: ObjectId,
        reply: Reply,
        in_flight: &[ObjectOffset],
    ) -> Result<(), Refused> {
        let r = self.try_begin(object, reply, in_flight);
        if r.is_err() {
            self.refused += 1;
        }
        r
    }

    fn try_begin(
        &mut self,
        object: ObjectId,
        reply: Reply,
        in_flight: &[ObjectOffset],
    ) -> Result<(), Refused> {
        let slot = self
            .entries
            .iter()
            .position(Option::is_none)
            .ok_or(Refused::Full)?;
        // Room for every record first, so the loop below cannot fail
        // halfway with some pages marked.
        self.writes
            .try_reserve(in_flight.len())
            .map_err(|_| Refused::NoMemory)?;
        let bit = 1u64 << slot;
        let raw = object.to_raw();
        let mut outstanding = 0;
        for off in in_flight {
            match self.find(raw, off.0) {
                Ok(i) => {
                    if self.writes[i].waiters & bit == 0 {
                        self.writes[i].waiters |= bit;
                        outstanding += 1;
                    }
                }
                Err(i) => {
                    self.writes.insert(
                        i,
                        Write {
                            object: raw,
                            offset: off.0,
                            waiters: bit,
                        },
                    );
                    outstanding += 1;
                }
            }
        }
        self.entries[slot] = Some(Entry { reply, outstanding });
        if outstanding == 0 {
            self.ready |= bit;
        }
        Ok(())
    }

    fn find(&self, object: u64, offset: u64) -> Result<usize, usize> {
        self.writes
            .binary_search_by(|w| (w.object, w.offset).cmp(&(object, offset)))
    }

    /// The write-back of `object`'s page at `offset` ended (the pager
    /// answered it, or it was never sent). Requests waiting only for it
    /// become ready.
    pub fn write_ended(&mut self, object: ObjectId, offset: ObjectOffset) {
        let Ok(i) = self.find(object.to_raw(), offset.0) else {
            return;
        };
        let mut waiters = self.writes.remove(i).waiters;
        while waiters != 0 {
            let slot = waiters.trailing_zeros() as usize;
            waiters &= waiters - 1;
            if let Some(e) = self.entries[slot].as_mut() {
                e.outstanding = e.outstanding.saturating_sub(1);
                if e.outstanding == 0 {
                    self.ready |= 1 << slot;
                }
            }
        }
    }

    /// Whether some reply waits to be sent.
    pub fn has_ready(&self) -> bool {
        self.ready != 0
    }

    /// The next reply to send, and its slot for `sent`.
    pub fn next_ready(&self) -> Option<(usize, Reply)> {
        if self.ready == 0 {
            return None;
        }
        let slot = self.ready.trailing_zeros() as usize;
        self.entries[slot].map(|e| (slot, e.reply))
    }

    /// Every reply ready to be sent, with its slot for `sent`.
    pub fn ready(&self) -> impl Iterator<Item = (usize, Reply)> + '_ {
        let mut bits = self.ready;
        core::iter::from_fn(move || {
            while bits != 0 {
                let slot = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(e) = self.entries.get(slot).copied().flatten() {
                    return Some((slot, e.reply));
                }
            }
            None
        })
    }

    /// The reply of `slot` is on its way (or could never be sent): the
    /// slot is free again.
    pub fn sent(&mut self, slot: usize) {
        if slot < MAX_WAITING && self.ready & (1 << slot) != 0 {
            self.ready &= !(1 << slot);
            self.entries[slot] = None;
            self.completed += 1;
        }
    }

    /// Requests waiting (for writes, or to be sent).
    pub fn waiting(&self) -> usize {
        self.entries.iter().filter(|e| e.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBJ: ObjectId = ObjectId {
        index: 3,
        generation: 1,
    };
    const OTHER: ObjectId = ObjectId {
        index: 4,
        generation: 1,
    };

    fn reply(tag: u32) -> Reply {
        Reply {
            to: ReplyTo::Device { object: 0, tag },
            offset: 0,
            length: 16 * 4096,
        }
    }

    fn pages(n: u64) -> Vec<ObjectOffset> {
        (0..n).map(|i| ObjectOffset(i * 4096)).collect()
    }

    #[test]
    fn a_clean_of_n_pages_completes_after_the_nth_write_only() {
        let mut t = LockCompletions::default();
        t.begin(OBJ, reply(7), &pages(3)).unwrap();
        assert_eq!(t.next_ready(), None);
        t.write_ended(OBJ, ObjectOffset(0));
        t.write_ended(OBJ, ObjectOffset(8192));
        assert!(!t.has_ready(), "one write still out");
        // Another object's page at the same offset is not ours.
        t.write_ended(OTHER, ObjectOffset(4096));
        assert!(!t.has_ready());
        t.write_ended(OBJ, ObjectOffset(4096));
        let (slot, r) = t.next_ready().unwrap();
        assert_eq!(r, reply(7));
        t.sent(slot);
        assert_eq!((t.waiting(), t.completed), (0, 1));
        assert_eq!(t.next_ready(), None);
    }

    #[test]
    fn nothing_in_flight_is_done_at_once() {
        let mut t = LockCompletions::default();
        t.begin(OBJ, reply(1), &[]).unwrap();
        assert_eq!(t.next_ready().map(|r| r.1), Some(reply(1)));
    }

    #[test]
    fn a_failed_write_counts_like_any_other_end() {
        // The kernel reports a write's end whatever the pager answered;
        // the table cannot tell, and must not need to.
        let mut t = LockCompletions::default();
        t.begin(OBJ, reply(2), &pages(1)).unwrap();
        t.write_ended(OBJ, ObjectOffset(0));
        assert!(t.has_ready());
    }

    #[test]
    fn a_later_write_of_the_same_page_is_not_counted_twice() {
        let mut t = LockCompletions::default();
        t.begin(OBJ, reply(1), &pages(2)).unwrap();
        t.write_ended(OBJ, ObjectOffset(0));
        // Page 0 dirtied and cleaned again: its new write ends, but it is
        // not one this request waits for.
        t.write_ended(OBJ, ObjectOffset(0));
        assert!(!t.has_ready(), "page 1's write is still out");
        t.write_ended(OBJ, ObjectOffset(4096));
        assert!(t.has_ready());
    }

    #[test]
    fn overlapping_requests_share_a_write_and_finish_apart() {
        let mut t = LockCompletions::default();
        // The first request's write of page 0 is already in flight when
        // the second comes: it waits for it too.
        t.begin(OBJ, reply(1), &pages(1)).unwrap();
        t.begin(OBJ, reply(2), &pages(2)).unwrap();
        t.write_ended(OBJ, ObjectOffset(0));
        let (slot, r) = t.next_ready().unwrap();
        assert_eq!(r, reply(1));
        t.sent(slot);
        assert!(!t.has_ready());
        t.write_ended(OBJ, ObjectOffset(4096));
        assert_eq!(t.next_ready().map(|r| r.1), Some(reply(2)));
    }

    #[test]
    fn the_table_is_bounded_and_refusals_are_counted() {
        let mut t = LockCompletions::default();
        for i in 0..MAX_WAITING as u32 {
            t.begin(OBJ, reply(i), &pages(1)).unwrap();
        }
        assert_eq!(t.begin(OBJ, reply(99), &[]), Err(Refused::Full));
        assert_eq!(t.refused, 1);
        // One write serves all 64; they all become ready, and free.
        t.write_ended(OBJ, ObjectOffset(0));
        while let Some((slot, _)) = t.next_ready() {
            t.sent(slot);
        }
        assert_eq!(t.completed, MAX_WAITING as u64);
        assert!(t.begin(OBJ, reply(100), &[]).is_ok());
    }
}
