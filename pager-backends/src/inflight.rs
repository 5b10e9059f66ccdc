//! Requests in flight on one connection (NBD or external pager), matched to
//! replies by id.
//!
//! A fixed table of slots is allocated once per connection: a request takes
//! a free slot (no allocation on the hot path), its id is the slot index plus
//! a generation so stale or duplicated replies are recognised. The reader
//! thread *claims* a slot when a reply arrives and reads the payload
//! straight into the waiting caller's buffers, which stay borrowed because
//! the caller cannot return while its slot is claimed.

use crate::error::{PagerError, Result};
use crate::poison::{self, lock};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use vm_memory::VolatileSlice;

/// The caller's scatter list, lifetime erased so the reader thread can fill
/// it. Sound because `wait` does not return while a claim is outstanding.
#[derive(Clone, Copy)]
pub(crate) struct RawBufs {
    ptr: *const VolatileSlice<'static>,
    n: usize,
}
// SAFETY: only dereferenced while the owning caller is blocked in `wait`.
unsafe impl Send for RawBufs {}

impl RawBufs {
    /// SAFETY: the caller must keep `bufs` alive until `wait` returns.
    // The casts only change lifetimes; they say what is being erased.
    #[allow(clippy::unnecessary_cast)]
    fn new(bufs: &[VolatileSlice<'_>]) -> RawBufs {
        RawBufs {
            ptr: bufs.as_ptr() as *const VolatileSlice<'static>,
            n: bufs.len(),
        }
    }
    /// SAFETY: only valid while the claim that produced this is outstanding.
    #[allow(clippy::unnecessary_cast)]
    pub(crate) unsafe fn get<'a>(&self) -> &'a [VolatileSlice<'a>] {
        // SAFETY: see above.
        unsafe { std::slice::from_raw_parts(self.ptr as *const VolatileSlice<'a>, self.n) }
    }
}

/// What the reader needs to know about a waiting request.
#[derive(Clone, Copy)]
pub(crate) struct Expect {
    /// Request kind tag, for the protocol to check the reply makes sense.
    pub kind: u16,
    /// Bytes the request expects (NBD read length) or accepts at most.
    pub len: u64,
    /// Where in `bufs` the reply data starts (a chunk of a split request).
    pub skip: u64,
    pub bufs: Option<RawBufs>,
}

enum State<R> {
    Free,
    Waiting {
        generation: u32,
        expect: Expect,
    },
    Filling {
        generation: u32,
    },
    Done {
        generation: u32,
        res: Result<R>,
    },
    /// Its caller gave up waiting (timeout) but the peer may still answer:
    /// the slot stays taken until it does, and the answer is read and
    /// thrown away (`expect` has no buffers any more).
    Abandoned {
        generation: u32,
        expect: Expect,
    },
}

struct Slot<R> {
    st: Mutex<State<R>>,
    cv: Condvar,
}

struct FreeList {
    idle: Vec<u32>,
    next_gen: u32,
    dead: Option<String>,
    /// Slots held by abandoned requests.
    abandoned: usize,
}

pub(crate) struct Inflight<R> {
    slots: Box<[Slot<R>]>,
    free: Mutex<FreeList>,
    free_cv: Condvar,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    idx: u32,
    generation: u32,
}

impl Ticket {
    pub(crate) fn id(&self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.idx)
    }
}

/// A reply being delivered: the reader owns the slot until `complete`.
pub(crate) struct Claim {
    idx: u32,
    generation: u32,
    pub expect: Expect,
    /// No one waits for it: read the reply, then drop it.
    pub abandoned: bool,
}

impl<R> Inflight<R> {
    pub(crate) fn new(max: usize) -> Self {
        let max = max.clamp(1, 1 << 16);
        Inflight {
            slots: (0..max)
                .map(|_| Slot {
                    st: Mutex::new(State::Free),
                    cv: Condvar::new(),
                })
                .collect(),
            free: Mutex::new(FreeList {
                idle: (0..max as u32).rev().collect(),
                next_gen: 1,
                dead: None,
                abandoned: 0,
            }),
            free_cv: Condvar::new(),
        }
    }

    /// Why the connection is dead, if it is.
    pub(crate) fn dead(&self) -> Option<String> {
        lock(&self.free).dead.clone()
    }

    /// Takes a slot for a new request; waits (bounded) when all are busy.
    pub(crate) fn start(
        &self,
        kind: u16,
        len: u64,
        skip: u64,
        bufs: Option<&[VolatileSlice<'_>]>,
        timeout: Duration,
    ) -> Result<Ticket> {
        let deadline = Instant::now() + timeout;
        let mut f = lock(&self.free);
        let idx = loop {
            if let Some(why) = &f.dead {
                return Err(PagerError::Dead(why.clone()));
            }
            if let Some(i) = f.idle.pop() {
                break i;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PagerError::Timeout(timeout));
            }
            f = poison::wait_timeout(&self.free_cv, f, deadline - now).0;
        };
        // Generation 0 is never used, so id 0 is never valid.
        let generation = f.next_gen;
        f.next_gen = f.next_gen.checked_add(1).unwrap_or(1);
        drop(f);
        let expect = Expect {
            kind,
            len,
            skip,
            bufs: bufs.map(RawBufs::new),
        };
        *lock(&self.slots[idx as usize].st) = State::Waiting { generation, expect };
        Ok(Ticket { idx, generation })
    }

    fn release(&self, idx: u32) {
        let mut f = lock(&self.free);
        f.idle.push(idx);
        drop(f);
        self.free_cv.notify_one();
    }

    /// Gives back a slot whose request could not even be sent.
    pub(crate) fn cancel(&self, t: Ticket) {
        let slot = &self.slots[t.idx as usize];
        let mut st = lock(&slot.st);
        if matches!(*st, State::Waiting { generation, .. } if generation == t.generation) {
            *st = State::Free;
            drop(st);
            self.release(t.idx);
        }
    }

    /// Blocks until the reply arrives, the connection dies, or `timeout`
    /// passes. A request still unanswered at the deadline is abandoned, as
    /// long as fewer than `max_abandoned` are: the connection stays up (a
    /// peer that was slow once is not dead) and the late answer, when it
    /// comes, is recognised by its id and dropped. Past that many, `abort`
    /// is called (it should shut the transport down) and, if the reader is
    /// mid-way through filling our buffers, we wait for it to let go before
    /// returning.
    pub(crate) fn wait_or_abandon(
        &self,
        t: Ticket,
        timeout: Duration,
        max_abandoned: usize,
        abort: impl FnOnce(),
    ) -> Result<R> {
        let deadline = Instant::now() + timeout;
        let slot = &self.slots[t.idx as usize];
        let mut st = lock(&slot.st);
        let mut abort = Some(abort);
        loop {
            match &*st {
                State::Done { generation, .. } if *generation == t.generation => {
                    let State::Done { res, .. } = std::mem::replace(&mut *st, State::Free) else {
                        unreachable!("matched Done above")
                    };
                    drop(st);
                    self.release(t.idx);
                    return res;
                }
                State::Waiting { generation, expect } if *generation == t.generation => {
                    let now = Instant::now();
                    if now >= deadline && self.try_abandon(max_abandoned) {
                        *st = State::Abandoned {
                            generation: *generation,
                            expect: Expect {
                                bufs: None,
                                ..*expect
                            },
                        };
                        return Err(PagerError::Timeout(timeout));
                    }
                    if now >= deadline {
                        *st = State::Free;
                        drop(st);
                        if let Some(a) = abort.take() {
                            a();
                        }
                        self.release(t.idx);
                        return Err(PagerError::Timeout(timeout));
                    }
                    st = poison::wait_timeout(&slot.cv, st, deadline - now).0;
                }
                State::Filling { generation } if *generation == t.generation => {
                    if Instant::now() >= deadline {
                        // The reader is writing into our buffers: make its
                        // socket fail, then wait for it to complete us.
                        if let Some(a) = abort.take() {
                            a();
                        }
                        st = poison::wait(&slot.cv, st);
                    } else {
                        let left = deadline - Instant::now();
                        st = poison::wait_timeout(&slot.cv, st, left).0;
                    }
                }
                _ => {
                    // Our slot was reset under us: only possible via a bug.
                    return Err(PagerError::Protocol("request slot lost".into()));
                }
            }
        }
    }

    /// Counts one more abandoned request if fewer than `max` are.
    fn try_abandon(&self, max: usize) -> bool {
        let mut f = lock(&self.free);
        if f.abandoned < max {
            f.abandoned += 1;
            true
        } else {
            false
        }
    }

    /// The reader found a reply with id `id`: claims the waiting request.
    /// An id that is not waiting (never sent, already answered, timed out)
    /// is a protocol violation by the peer.
    pub(crate) fn claim(&self, id: u64) -> Result<Claim> {
        let idx = (id & 0xffff_ffff) as usize;
        let want_gen = (id >> 32) as u32;
        let bad =
            || PagerError::Protocol(format!("reply to unknown or finished request id {id:#x}"));
        let slot = self.slots.get(idx).ok_or_else(bad)?;
        let mut st = lock(&slot.st);
        match &*st {
            State::Waiting { generation, expect } | State::Abandoned { generation, expect }
                if *generation == want_gen =>
            {
                let c = Claim {
                    idx: idx as u32,
                    generation: *generation,
                    expect: *expect,
                    abandoned: matches!(*st, State::Abandoned { .. }),
                };
                *st = State::Filling {
                    generation: *generation,
                };
                Ok(c)
            }
            _ => Err(bad()),
        }
    }

    pub(crate) fn complete(&self, c: Claim, res: Result<R>) {
        let slot = &self.slots[c.idx as usize];
        if c.abandoned {
            // The late answer is read; no one wants it.
            *lock(&slot.st) = State::Free;
            lock(&self.free).abandoned -= 1;
            self.release(c.idx);
            return;
        }
        *lock(&slot.st) = State::Done {
            generation: c.generation,
            res,
        };
        slot.cv.notify_all();
    }

    /// The connection is gone, for `why` unless it was already dead (the
    /// first cause is the one reported): requests started from now on
    /// fail at once. Set before a waiter is told, so no caller can send
    /// on the dead connection in between and replace the cause.
    pub(crate) fn set_dead(&self, why: &str) {
        {
            let mut f = lock(&self.free);
            if f.dead.is_none() {
                f.dead = Some(why.to_string());
            }
        }
        self.free_cv.notify_all();
    }

    /// The connection is gone: fail everything waiting and everything after.
    pub(crate) fn fail_all(&self, why: &str) {
        self.set_dead(why);
        for slot in self.slots.iter() {
            let mut st = lock(&slot.st);
            if let State::Waiting { generation, .. } = *st {
                *st = State::Done {
                    generation,
                    res: Err(PagerError::Dead(why.to_string())),
                };
                slot.cv.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn the_first_cause_of_death_is_kept_and_later_requests_fail_with_it() {
        let f: Inflight<u32> = Inflight::new(4);
        let short = Duration::from_millis(10);
        f.set_dead("lost mid-reply");
        // A caller woken by the reader finds the connection dead before it
        // can send, and a later failure does not replace the cause.
        let Err(PagerError::Dead(why)) = f.start(1, 0, 0, None, short) else {
            panic!("a request started on a dead connection");
        };
        assert_eq!(why, "lost mid-reply");
        f.fail_all("sending request failed: Broken pipe");
        assert_eq!(f.dead().as_deref(), Some("lost mid-reply"));
    }

    #[test]
    fn timeouts_abandon_up_to_the_limit_then_abort() {
        let f: Inflight<u32> = Inflight::new(4);
        let aborted = Cell::new(0);
        let short = Duration::from_millis(10);
        let a = f.start(1, 0, 0, None, short).expect("slot");
        let err = f.wait_or_abandon(a, short, 1, || aborted.set(aborted.get() + 1));
        assert!(matches!(err, Err(PagerError::Timeout(_))));
        assert_eq!(aborted.get(), 0, "the first timeout is only abandoned");
        // Past the limit the peer is given up on.
        let b = f.start(1, 0, 0, None, short).expect("slot");
        let err = f.wait_or_abandon(b, short, 1, || aborted.set(aborted.get() + 1));
        assert!(matches!(err, Err(PagerError::Timeout(_))));
        assert_eq!(aborted.get(), 1);
        // The late answer to the first is claimed as abandoned, and its
        // slot comes back when it is done; a second answer is refused.
        let c = f.claim(a.id()).expect("late answer recognised");
        assert!(c.abandoned && c.expect.bufs.is_none());
        f.complete(c, Ok(7));
        assert!(f.claim(a.id()).is_err());
        assert_eq!(lock(&f.free).abandoned, 0);
        assert_eq!(lock(&f.free).idle.len(), 4);
    }
}
