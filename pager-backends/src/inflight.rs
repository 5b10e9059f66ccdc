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
    Waiting { generation: u32, expect: Expect },
    Filling { generation: u32 },
    Done { generation: u32, res: Result<R> },
}

struct Slot<R> {
    st: Mutex<State<R>>,
    cv: Condvar,
}

struct FreeList {
    idle: Vec<u32>,
    next_gen: u32,
    dead: Option<String>,
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
    /// passes. On timeout `abort` is called (it should shut the transport
    /// down) and, if the reader is mid-way through filling our buffers, we
    /// wait for it to let go before returning.
    pub(crate) fn wait(&self, t: Ticket, timeout: Duration, abort: impl FnOnce()) -> Result<R> {
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
                State::Waiting { generation, .. } if *generation == t.generation => {
                    let now = Instant::now();
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
            State::Waiting { generation, expect } if *generation == want_gen => {
                let c = Claim {
                    idx: idx as u32,
                    generation: *generation,
                    expect: *expect,
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
        *lock(&slot.st) = State::Done {
            generation: c.generation,
            res,
        };
        slot.cv.notify_all();
    }

    /// The connection is gone: fail everything waiting and everything after.
    pub(crate) fn fail_all(&self, why: &str) {
        {
            let mut f = lock(&self.free);
            if f.dead.is_none() {
                f.dead = Some(why.to_string());
            }
        }
        self.free_cv.notify_all();
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
