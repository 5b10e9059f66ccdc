//! Manager → kernel calls (Table 3-6). A pager calls `KernelControl` from
//! any thread at any time; the call only appends to a bounded backlog and
//! kicks the event loop, which copies events into buffers the guest posted
//! on the event queue. Nothing here touches guest memory or blocks.

use super::wire::{Event, ObjectId, event};
use pager_backends::poison;
use pager_backends::{
    Access, KernelControl, LockRequest, ObjectOffset, PAGE_SIZE, PagerError, Result,
};
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Events waiting for a guest buffer, at most this many...
pub const MAX_PENDING_EVENTS: usize = 1024;
/// ...and at most this many bytes of offered page data.
pub const MAX_PENDING_OFFER_BYTES: usize = 16 << 20;
/// One object's share of either: a pager that floods cannot take the
/// backlog from the other objects' pagers.
pub const MAX_PENDING_EVENTS_PER_OBJECT: usize = MAX_PENDING_EVENTS / 4;
pub const MAX_PENDING_OFFER_BYTES_PER_OBJECT: usize = MAX_PENDING_OFFER_BYTES / 4;
/// Lock requests with a reply that the driver has not yet answered with
/// LOCK_COMPLETED, over all objects (docs/virtio-pager.md §5.2: a driver
/// that negotiates F_LOCK_COMPLETED tracks at least this many)...
pub const MAX_PENDING_REPLIES: usize = 64;
/// ...and per object, so one pager cannot take them all.
pub const MAX_PENDING_REPLIES_PER_OBJECT: usize = MAX_PENDING_REPLIES / 4;

/// A lock request waiting for its LOCK_COMPLETED: what the driver must
/// echo (tag, range) and what the pager gets back (cookie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AwaitedReply {
    object: ObjectId,
    tag: u32,
    offset: u64,
    len: u64,
    cookie: u64,
}

/// One event not yet delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    pub event: Event,
    /// Page data of an unsolicited DATA_PROVIDED.
    pub data: Vec<u8>,
}

#[derive(Debug, Default)]
struct Backlog {
    /// With the epoch of the handle that queued each.
    events: VecDeque<(PendingEvent, u64)>,
    offer_bytes: usize,
    /// Per object: the epoch of the one control handle allowed to queue
    /// events. A new INIT, a TERMINATE or a reset moves it on, so a pager
    /// holding an older handle is refused instead of reaching a driver that
    /// no longer (or not yet) knows the object.
    epochs: Vec<u64>,
    /// Per object: events and offered bytes waiting, and calls refused
    /// because the backlog (or the object's share) was full.
    queued: Vec<(usize, usize)>,
    refused: Vec<u64>,
    /// Lock requests waiting for the driver's LOCK_COMPLETED, at most
    /// MAX_PENDING_REPLIES; `next_tag` names the next one.
    replies: Vec<AwaitedReply>,
    next_tag: u32,
}

impl Backlog {
    fn take(&mut self, ev: &PendingEvent) {
        self.offer_bytes -= ev.data.len();
        if let Some(q) = self.queued.get_mut(ev.event.object_id as usize) {
            q.0 -= 1;
            q.1 -= ev.data.len();
        }
    }

    /// Moves `object`'s epoch on (older handles stop working) and drops the
    /// events they queued that are not delivered yet. Returns the new epoch.
    fn revoke(&mut self, object: ObjectId) -> Option<u64> {
        let e = self.epochs.get_mut(object.0 as usize)?;
        *e += 1;
        let epoch = *e;
        let before = self.events.len();
        self.events.retain(|(ev, _)| ev.event.object_id != object.0);
        if self.events.len() != before {
            self.offer_bytes = self.events.iter().map(|(ev, _)| ev.data.len()).sum();
        }
        if let Some(q) = self.queued.get_mut(object.0 as usize) {
            *q = (0, 0);
        }
        // The driver that would answer them no longer knows the object.
        self.replies.retain(|r| r.object != object);
        Some(epoch)
    }
}

/// Shared by every object's `DeviceControl` and the event loop.
#[derive(Debug)]
pub struct EventBacklog {
    inner: Mutex<Backlog>,
    kick: EventFd,
}

impl EventBacklog {
    pub fn new(objects: usize) -> io::Result<Self> {
        Ok(EventBacklog {
            inner: Mutex::new(Backlog {
                epochs: vec![0; objects],
                queued: vec![(0, 0); objects],
                refused: vec![0; objects],
                ..Backlog::default()
            }),
            kick: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// A control handle for a new INIT of `object`; older handles of the
    /// object stop working. `replies`: the driver negotiated
    /// F_LOCK_COMPLETED, so the handle may ask for lock completion.
    pub fn open(self: &Arc<Self>, object: ObjectId, replies: bool) -> DeviceControl {
        let epoch = self.lock().revoke(object).unwrap_or(u64::MAX);
        DeviceControl {
            object,
            epoch,
            replies,
            backlog: self.clone(),
        }
    }

    /// The driver's LOCK_COMPLETED for `tag` on `object`: the pager's
    /// cookie, if such a request is waiting with exactly this range (it
    /// stops waiting). `None`: the driver names a request that does not
    /// exist, was answered already, or belongs to an earlier INIT.
    pub fn take_reply(&self, object: ObjectId, tag: u32, offset: u64, len: u64) -> Option<u64> {
        let mut b = self.lock();
        let i = b
            .replies
            .iter()
            .position(|r| r.object == object && r.tag == tag)?;
        let r = b.replies[i];
        if r.offset != offset || r.len != len {
            return None;
        }
        b.replies.swap_remove(i);
        Some(r.cookie)
    }

    /// Lock requests waiting for LOCK_COMPLETED.
    pub fn replies_waiting(&self) -> usize {
        self.lock().replies.len()
    }

    /// Those of them for `object` (at most MAX_PENDING_REPLIES_PER_OBJECT).
    pub fn replies_waiting_for(&self, object: ObjectId) -> usize {
        self.lock()
            .replies
            .iter()
            .filter(|r| r.object == object)
            .count()
    }

    /// TERMINATE: the object's current handle stops working.
    pub fn revoke(&self, object: ObjectId) {
        self.lock().revoke(object);
    }

    /// Readable when events were queued; watched by the event loop.
    pub fn kick_evt(&self) -> &EventFd {
        &self.kick
    }

    fn lock(&self) -> MutexGuard<'_, Backlog> {
        poison::lock(&self.inner)
    }

    /// Queues `ev`; with `cookie`, it is a lock request whose completion
    /// the pager awaits: it gets a tag, and waits in the reply table (both
    /// under one lock, so a reset or TERMINATE drops event and entry
    /// together).
    fn push(&self, epoch: u64, mut ev: PendingEvent, cookie: Option<u64>) -> Result<()> {
        {
            let mut b = self.lock();
            // Checked under the same lock `clear` takes: no event of an old
            // driver instance can slip in after a reset.
            if b.epochs.get(ev.event.object_id as usize) != Some(&epoch) {
                return Err(PagerError::Protocol(
                    "virtio-pager: the kernel no longer has this object initialised".into(),
                ));
            }
            let i = ev.event.object_id as usize;
            let (mine, my_bytes) = b.queued.get(i).copied().unwrap_or_default();
            if b.events.len() >= MAX_PENDING_EVENTS
                || b.offer_bytes.saturating_add(ev.data.len()) > MAX_PENDING_OFFER_BYTES
                || mine >= MAX_PENDING_EVENTS_PER_OBJECT
                || my_bytes.saturating_add(ev.data.len()) > MAX_PENDING_OFFER_BYTES_PER_OBJECT
            {
                if let Some(r) = b.refused.get_mut(i) {
                    *r += 1;
                }
                // Refuse rather than drop silently: the pager learns the
                // guest is not taking its events as fast as it sends them.
                return Err(PagerError::Protocol(
                    "virtio-pager event backlog full: the guest is not taking events this fast"
                        .into(),
                ));
            }
            if let Some(cookie) = cookie {
                let object = ObjectId(ev.event.object_id);
                let mine = b.replies.iter().filter(|r| r.object == object).count();
                if b.replies.len() >= MAX_PENDING_REPLIES || mine >= MAX_PENDING_REPLIES_PER_OBJECT
                {
                    if let Some(r) = b.refused.get_mut(i) {
                        *r += 1;
                    }
                    return Err(PagerError::Protocol(
                        "virtio-pager: too many lock requests waiting for their completion".into(),
                    ));
                }
                let tag = b.next_tag;
                b.next_tag = tag.wrapping_add(1);
                ev.event.tag = tag;
                b.replies.push(AwaitedReply {
                    object,
                    tag,
                    offset: ev.event.offset,
                    len: ev.event.length,
                    cookie,
                });
            }
            b.offer_bytes += ev.data.len();
            if let Some(q) = b.queued.get_mut(i) {
                q.0 += 1;
                q.1 += ev.data.len();
            }
            b.events.push_back((ev, epoch));
        }
        self.kick.write(1)?;
        Ok(())
    }

    /// The oldest event whose handle is still current. Events queued on a
    /// handle that a TERMINATE or a new INIT has since revoked are dropped
    /// here: the driver no longer (or not yet) knows the object they speak
    /// of, so nothing issued before a TERMINATE reaches it after.
    pub fn pop(&self) -> Option<PendingEvent> {
        let mut b = self.lock();
        loop {
            let (ev, epoch) = b.events.pop_front()?;
            b.take(&ev);
            if b.epochs.get(ev.event.object_id as usize) == Some(&epoch) {
                return Some(ev);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().events.len()
    }

    /// Calls refused because the backlog was full, per object.
    pub fn refused(&self) -> Vec<u64> {
        self.lock().refused.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Device reset: events addressed to the old driver instance are void,
    /// and so is every control handle given out before.
    pub fn clear(&self) {
        let mut b = self.lock();
        b.events.clear();
        b.offer_bytes = 0;
        b.queued.iter_mut().for_each(|q| *q = (0, 0));
        b.replies.clear();
        for e in &mut b.epochs {
            *e += 1;
        }
    }
}

/// The `KernelControl` handed to one object's pager at INIT
/// (`EventBacklog::open`).
#[derive(Debug)]
pub struct DeviceControl {
    object: ObjectId,
    epoch: u64,
    /// The driver answers LOCK_REQUESTs with F_REPLY.
    replies: bool,
    backlog: Arc<EventBacklog>,
}

impl DeviceControl {
    fn push(&self, event: Event, data: Vec<u8>) -> Result<()> {
        self.backlog
            .push(self.epoch, PendingEvent { event, data }, None)
    }

    fn event(&self, ev_type: u16, flags: u16, offset: u64, length: u64, lock: Access) -> Event {
        Event {
            ev_type,
            flags,
            object_id: self.object.0,
            offset,
            length,
            lock: lock.bits(),
            tag: 0,
        }
    }

    fn lock_event(&self, offset: ObjectOffset, len: u64, req: LockRequest, reply: bool) -> Event {
        let mut flags = 0;
        if req.clean {
            flags |= event::F_CLEAN;
        }
        if req.flush {
            flags |= event::F_FLUSH;
        }
        if reply {
            flags |= event::F_REPLY;
        }
        self.event(event::LOCK_REQUEST, flags, offset.raw(), len, req.lock)
    }
}

fn check_pages(offset: ObjectOffset, len: u64) -> Result<()> {
    let why = if len == 0 {
        "zero length"
    } else if !offset.is_page_aligned() || !len.is_multiple_of(PAGE_SIZE) {
        "not page aligned"
    } else if offset.checked_add(len).is_none() {
        "overflows"
    } else {
        return Ok(());
    };
    Err(PagerError::BadRange { offset, len, why })
}

impl KernelControl for DeviceControl {
    fn lock_request(
        &self,
        offset: ObjectOffset,
        len: u64,
        lock: Access,
        clean: bool,
        flush: bool,
    ) -> Result<()> {
        check_pages(offset, len)?;
        let req = LockRequest { lock, clean, flush };
        self.push(self.lock_event(offset, len, req, false), Vec::new())
    }

    fn lock_request_with_reply(
        &self,
        offset: ObjectOffset,
        len: u64,
        req: LockRequest,
        cookie: u64,
    ) -> Result<()> {
        check_pages(offset, len)?;
        if !self.replies {
            return Err(PagerError::Unsupported(
                "the guest driver did not negotiate VIRTIO_PAGER_F_LOCK_COMPLETED",
            ));
        }
        let event = self.lock_event(offset, len, req, true);
        let pending = PendingEvent {
            event,
            data: Vec::new(),
        };
        self.backlog.push(self.epoch, pending, Some(cookie))
    }

    fn offer(&self, offset: ObjectOffset, data: &[u8], lock: Access) -> Result<()> {
        check_pages(offset, data.len() as u64)?;
        let event = self.event(
            event::DATA_PROVIDED,
            0,
            offset.raw(),
            data.len() as u64,
            lock,
        );
        self.push(event, data.to_vec())
    }

    fn set_cache(&self, may_cache: bool) -> Result<()> {
        let flags = if may_cache { event::F_MAY_CACHE } else { 0 };
        let event = self.event(event::CACHE, flags, 0, 0, Access::NONE);
        self.push(event, Vec::new())
    }

    fn destroy(&self, reason: &str) -> Result<()> {
        tracing::info!(
            object = self.object.0,
            reason,
            "virtio-pager: object destroyed by its pager"
        );
        let event = self.event(event::DESTROY, 0, 0, 0, Access::NONE);
        self.push(event, Vec::new())
    }
}
