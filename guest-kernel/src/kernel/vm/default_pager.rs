//! The default pager (paper §5.4, §6.2.3): internal (zero-fill) memory
//! leaves RAM for the host's `swap` object (`vmm run --swap SIZE`, an
//! `anon` backend) and comes back from it, and the pageout daemon that
//! decides which pages go.
//!
//! It lives in the kernel, beside the host-object transfers of
//! kernel/vm/pager.rs, whose machinery it reuses: a page written out is one
//! DATA_WRITE from the page's own frame at its swap slot (no copy), a page
//! brought back one DATA_REQUEST into a fresh frame; completions go
//! through `pager::finish` like a host object's. The slots are
//! guest_kernel::vm::swap's: a slot stays the page's while its object
//! lives (a clean page that came back in may then be dropped again without
//! a write, as in Mach's default pager), and all of an object's slots are
//! freed when it dies (`ObjectAction::DefaultPagerRelease`).
//!
//! Pageout (guest_kernel::vm::pageout) runs when free frames fall below
//! [`FREE_MIN`] (checked with one compare after every fault and on every
//! tick) and when a fault gets ResourceShortage: that fault's thread then
//! sleeps (State::FrameWait) until write-backs free frames, instead of
//! taking an exception. Without swap nothing here runs, and a shortage is
//! an exception as before. The reserved pool (machine.rs
//! RESERVED_FRAMES) is below both watermarks: pageout itself needs no
//! frames, and a page-in takes its frame past the reserve.

use super::machine::RESERVED_FRAMES;
use crate::dev::virtio_pager;
use crate::kern::scheduler::Kernel;
use crate::kern::thread::State;
use guest_kernel::addr::PAGE_SIZE;
use guest_kernel::dev::virtio::pager::{ObjState, Op};
use guest_kernel::vm::object::{ObjectAction, PagerPort};
use guest_kernel::vm::pageout::{PageoutConfig, pageout_scan};
use guest_kernel::vm::swap::SwapMap;
use guest_kernel::vm::types::{ObjectId, ObjectOffset};

/// The swap object's name in the device's table.
pub const SWAP_NAME: &[u8] = b"swap";
/// Below this many free frames pageout runs.
pub const FREE_MIN: u64 = RESERVED_FRAMES + 128;
/// A scan tries to bring free frames (counting writes in flight) up to
/// this.
pub const FREE_TARGET: u64 = RESERVED_FRAMES + 512;
/// Pages a fault that met ResourceShortage asks pageout for, at least
/// (the shortage may be of page records rather than frames).
const SHORTAGE_BATCH: u64 = 256;
/// Swap pages the kernel keeps books for at most (16 GiB; the bitmap is
/// 512 KiB then).
const MAX_SWAP_PAGES: u64 = 4 << 20;

pub enum Swap {
    /// No swap object (or it is unusable).
    None,
    /// Initialisation sent at boot; device object `id`.
    Pending(u32),
    Ready {
        dev: u32,
        map: SwapMap,
    },
}

/// The default pager's state.
pub struct DefaultPager {
    pub swap: Swap,
    /// The device's `swap` object, set at boot before any task runs.
    reserved: Option<u32>,
    /// DataWrites to swap queued or in flight.
    pub writing: u64,
    /// A thread sleeps in FrameWait.
    pub sleepers: bool,
    pub pageouts: u64,
    pub pageins: u64,
}

impl Default for DefaultPager {
    fn default() -> Self {
        DefaultPager {
            swap: Swap::None,
            reserved: None,
            writing: 0,
            sleepers: false,
            pageouts: 0,
            pageins: 0,
        }
    }
}

impl DefaultPager {
    /// The device object the default pager owns: private to the kernel,
    /// since it holds every task's paged-out memory.
    /// It stays private even if it turns out unusable as swap.
    pub fn swap_object(&self) -> Option<u32> {
        self.reserved
    }

    /// The swap object and its slots, if ready.
    pub fn ready(&mut self) -> Option<(u32, &mut SwapMap)> {
        if let Swap::Pending(id) = self.swap {
            self.swap = open(id);
        }
        match &mut self.swap {
            Swap::Ready { dev, map } => Some((*dev, map)),
            _ => None,
        }
    }

    /// The swap slot (as a device offset) holding `object`'s page at
    /// `offset`, if it was ever written.
    pub fn page_in(&mut self, object: ObjectId, offset: ObjectOffset) -> Option<(u32, u64)> {
        let (dev, map) = self.ready()?;
        let slot = map.lookup(object, offset)?;
        self.pageins += 1;
        Some((dev, u64::from(slot) * PAGE_SIZE))
    }

    /// The swap slot to write `object`'s page at `offset` to: the one it
    /// has, or a new one. None if swap is full, off or out of bookkeeping.
    pub fn page_out(&mut self, object: ObjectId, offset: ObjectOffset) -> Option<(u32, u64)> {
        let (dev, map) = self.ready()?;
        let slot = map.assign(object, offset).ok()?;
        self.pageouts += 1;
        Some((dev, u64::from(slot) * PAGE_SIZE))
    }

    /// An internal object with data in swap is gone.
    pub fn release(&mut self, object: ObjectId) {
        if let Swap::Ready { map, .. } = &mut self.swap {
            map.release_object(object);
        }
    }
}

/// The swap object's state after its initialisation was sent.
fn open(id: u32) -> Swap {
    let guard = virtio_pager::lock();
    let Some(d) = guard.as_ref() else {
        return Swap::None;
    };
    match d.object(id).map(|o| o.state) {
        Some(ObjState::Ready {
            size,
            read_only: false,
            ..
        }) => match SwapMap::new((size / PAGE_SIZE).min(MAX_SWAP_PAGES), 1 << 20) {
            Ok(map) => Swap::Ready { dev: id, map },
            Err(_) => {
                crate::kprint!("default pager: no memory for the swap map\n");
                Swap::None
            }
        },
        Some(ObjState::Initializing) => Swap::Pending(id),
        Some(ObjState::Ready { .. }) => {
            crate::kprint!("default pager: the swap object is read-only\n");
            Swap::None
        }
        _ => Swap::Pending(id),
    }
}

/// Boot: finds the swap object and sends its initialisation (the answer
/// is picked up on first use).
pub fn boot(k: &mut Kernel) {
    let mut guard = virtio_pager::lock();
    let Some(d) = guard.as_mut() else { return };
    let Some(id) = d.find(SWAP_NAME) else { return };
    k.paging.default.reserved = Some(id);
    if !matches!(d.object(id).map(|o| o.state), Some(ObjState::Ready { .. }))
        && d.submit(
            id,
            Op::Init,
            super::object_io::INIT_TOKEN | u64::from(id),
            [],
        )
        .is_err()
    {
        crate::kprint!("default pager: cannot initialise the swap object\n");
        return;
    }
    d.kick();
    drop(guard);
    k.paging.default.swap = Swap::Pending(id);
}

/// The watermark check (after a fault, on the tick): one compare unless
/// frames are low.
#[inline]
pub fn check(k: &mut Kernel) {
    if k.frames.free_frames() < FREE_MIN {
        low(k);
    }
}

#[inline(never)]
fn low(k: &mut Kernel) {
    // Hysteresis: writes already under way count as free frames, so one
    // scan serves until FREE_TARGET - FREE_MIN more frames are taken.
    if matches!(k.paging.default.swap, Swap::None)
        || k.frames.free_frames() + pending(k) >= FREE_MIN
    {
        return;
    }
    pageout(k, 0);
}

/// Write-backs queued or in flight (their frames are as good as free).
fn pending(k: &Kernel) -> u64 {
    k.paging.default.writing + k.paging.actions.len() as u64
}

/// What a pageout pass did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Frames were freed at once: retry.
    Freed,
    /// Write-backs are in flight: wait for them.
    Writing,
    /// Nothing to do or nothing possible.
    Nothing,
}

/// One pageout pass towards FREE_TARGET (less writes in flight), or for
/// `at_least` pages more than are free now.
pub fn pageout(k: &mut Kernel, at_least: u64) -> Outcome {
    if k.paging.default.ready().is_none() {
        return Outcome::Nothing;
    }
    // A task's object read or write (kernel/vm/object_io.rs) hands its own
    // pages' frames to the device; none may be reclaimed under it, so
    // pageout waits for those to end (the tick retries; rare: only objsum-
    // and objfill-like calls into window memory).
    if k.any_in_io() {
        return Outcome::Writing;
    }
    let free = k.frames.free_frames();
    let writing = pending(k);
    let target = if at_least > 0 {
        free.saturating_add(at_least)
    } else {
        FREE_TARGET.saturating_sub(writing)
    };
    let cfg = PageoutConfig {
        free_min: FREE_MIN,
        free_target: target,
    };
    let scan = super::with_objects(k, |objects, frames, m| {
        pageout_scan(&cfg, objects, frames, m)
    });
    let Ok(r) = scan else {
        return outcome(0, writing);
    };
    let mut actions = r.actions;
    let queued = k.paging.actions.try_reserve(actions.len()).is_ok();
    let mut writes = 0;
    for a in actions.drain(..) {
        if !queued {
            // No room to remember the writes: the pages stay as they were.
            if let ObjectAction::DataWrite { object, offset, .. } = a {
                super::with_objects(k, |objects, frames, m| {
                    let _ = objects.data_write_refused(object, offset, frames, m);
                });
                k.wake_page_waiters(object);
            }
            continue;
        }
        if let ObjectAction::DataWrite {
            pager: PagerPort::Default,
            ..
        } = a
        {
            writes += 1;
        }
        k.paging.actions.push(a);
    }
    k.paging.default.writing += writes;
    // External objects' write-backs end as writes too (their waiters are
    // woken by the object), so any write counts as worth waiting for.
    outcome(
        r.freed,
        k.paging.default.writing + u64::from(!k.paging.actions.is_empty()),
    )
}

fn outcome(freed: u64, writing: u64) -> Outcome {
    if freed > 0 {
        Outcome::Freed
    } else if writing > 0 {
        Outcome::Writing
    } else {
        Outcome::Nothing
    }
}

/// A user fault got ResourceShortage. True if the thread may retry (now,
/// or once pageout has freed frames: it is then asleep); false keeps
/// today's behaviour (no swap, or nothing to page out): an exception.
pub fn shortage(k: &mut Kernel) -> bool {
    if matches!(k.paging.default.swap, Swap::None) {
        return false;
    }
    // Writes under way will free frames: wait for them rather than scan
    // again (a scan per shortage would queue ever more writes).
    let r = if pending(k) > 0 {
        Outcome::Writing
    } else {
        pageout(k, SHORTAGE_BATCH)
    };
    match r {
        Outcome::Freed => true,
        Outcome::Writing => {
            k.paging.default.sleepers = true;
            k.block_current(State::FrameWait);
            true
        }
        Outcome::Nothing => {
            crate::kprint!("default pager: out of memory, nothing to page out\n");
            false
        }
    }
}

/// A write-back ended (frames may be free): wake the threads waiting for
/// frames.
pub fn frames_freed(k: &mut Kernel) {
    if k.paging.default.sleepers {
        k.paging.default.sleepers = false;
        k.wake_frame_waiters();
    }
}

/// Timer tick: the watermark check, and a sleeper never stranded (no
/// write left in flight to wake it).
pub fn tick(k: &mut Kernel) {
    check(k);
    if k.paging.default.sleepers && k.paging.default.writing == 0 {
        frames_freed(k);
    }
}
