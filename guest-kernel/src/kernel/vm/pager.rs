//! The kernel as the pager of host objects (paper Tables 3-5/3-6 over the
//! virtio-pager device): a memory object whose port is a kernel port for a
//! device object has its data_request and data_write sent to the device,
//! which fills or reads the page's frame directly; the completion is the
//! pager's data_provided / data_unavailable / data_error, or the end of a
//! write-back. Up to the port, a fault on a host object takes the same path
//! as one on any other pager's object (kernel/vm/fault.rs).
//!
//! Requests wait in `HostPaging` while the device is full and go out as
//! slots free; faults that need them sleep on their object
//! (State::PageWait) and retry when it changes.

use crate::dev::virtio_pager::{self, Driver};
use crate::kern::console::Dec;
use crate::kern::scheduler::Kernel;
use alloc::vec::Vec;
use guest_kernel::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use guest_kernel::dev::virtio::pager::{
    self, ACCESS_READ, ACCESS_WRITE, Completion, ObjState, Op, Segment, SubmitError, status,
};
use guest_kernel::ipc::{KObject, PortId};
use guest_kernel::kern::sched::TaskId;
use guest_kernel::vm::fault::PageIn;
use guest_kernel::vm::fault_around;
use guest_kernel::vm::frame::FrameAllocator;
use guest_kernel::vm::lock_completion::{LockCompletions, MAX_WAITING, Reply, ReplyTo};
use guest_kernel::vm::object::{ObjectAction, PagerPort, PagerRef};
use guest_kernel::vm::page::FrameSource;
use guest_kernel::vm::readahead::ReadAhead;
use guest_kernel::vm::types::{ObjectId, ObjectOffset, VmProt};
use spin::MutexGuard;

/// Pager references of host objects: this bit plus the device's object
/// number. (Others will be ports of in-guest pagers.)
const HOST: u64 = 1 << 62;
/// Completion tokens of page transfers: this bit plus the slot (bit 63
/// marks object initialisation, bit 62 the power-off sync).
pub const PAGE_TOKEN: u64 = 1 << 61;
/// Completion tokens of LOCK_COMPLETED replies (nothing waits for them).
pub const LOCK_REPLY_TOKEN: u64 = 1 << 60;
/// Transfers in flight or waiting at once; further faults wait on their
/// object until one ends. One bit each in `HostPaging::used`.
const SLOTS: usize = 64;
const _: () = assert!(SLOTS == 64, "the slot masks are one u64");
/// Pages one data_request asks for at most: the faulting page and those
/// after it (read-ahead; data_provided takes pages no fault asked for).
/// The window is sized by the access pattern (guest_kernel::vm::readahead):
/// it starts at CLUSTER_FIRST and doubles while faults stay sequential, so
/// one device round trip serves a run of sequential faults and a random
/// reader asks for its page alone. 64 pages (256 KiB): per page, a
/// cluster's fixed costs (the fault that asks, the request, the
/// completion, the wake-up and the soft fault that maps the run) are half
/// what they were at 32, ~390 -> ~355 kernel instructions per page read
/// in sequence.
pub(crate) const CLUSTER: usize = 64;
const CLUSTER_FIRST: u32 = 4;
/// Read-ahead takes frames only while more than this many are free: above
/// pageout's low watermark by a cluster, so under memory pressure pageout
/// keeps making room for whole clusters (clean pages of a file are cheap to
/// drop) instead of the faults falling back to one page per request.
const READ_AHEAD_MIN_FREE: u64 = super::default_pager::FREE_MIN + CLUSTER as u64;
/// Slots write-backs leave to data_requests, so a fault needing a page
/// back does not find every slot taken by pageout's writes.
const READ_RESERVE: usize = 16;
/// How long a fault spins for its page's answer before it sleeps (hybrid
/// polling): less than sleeping costs it (an interrupt or a later look, a
/// wake-up, a second pass through the fault handler: here ~1,000 emulated
/// instructions, 0.7 ms), more than the device mostly takes to answer from
/// the host's page cache when the first look found nothing (measured here:
/// 50-400 µs, the host thread's wake-up on shared cores).
const POLL_US: u64 = 300;
/// After this many spins in a row ran out of time the device is taken to
/// be slow (a remote or busy pager): faults stop spinning, but for one in
/// SPIN_PROBE, which finds out when it is fast again.
const SPIN_MISSES: u32 = 4;
const SPIN_PROBE: u32 = 32;

pub fn host_pager(object: u32) -> PagerRef {
    PagerRef(HOST | u64::from(object))
}

/// The device object a pager reference names, if it is a host object.
pub fn host_object(p: PagerRef) -> Option<u32> {
    (p.0 & HOST != 0).then_some((p.0 & !HOST) as u32)
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    object: ObjectId,
    device_object: u32,
    /// The first page's offset in the object.
    offset: ObjectOffset,
    /// Where on the device (the object offset, or a swap slot's).
    dev_offset: u64,
    /// The default pager's (swap) transfer.
    default: bool,
    /// The pages' frames: one for a data_write (the object's own), up to
    /// CLUSTER for a data_request (ours until provided).
    frames: [PhysAddr; CLUSTER],
    count: usize,
    write: bool,
    /// A data_unlock for the page at `offset` (no frames): `desired` is
    /// the access asked for.
    unlock: bool,
    desired: VmProt,
    /// A read fault's data_request: the answer is mapped in the reader's
    /// space as it arrives. Set only for a fault that waits for the answer
    /// (`set_reader`), and taken when the transfer ends (`finish`, the one
    /// way such a slot is freed), so a request never sees a stale one.
    reader: Option<Reader>,
}

/// Who asked for a data_request by a read fault, and where: the task and
/// its faulting page's address. The answer's pages are mapped there as
/// they are made (fault_around::provide_to_reader), so the reader, woken,
/// takes no second fault for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reader {
    pub task: TaskId,
    pub va: VirtAddr,
}

const NO_TRANSFER: Transfer = Transfer {
    object: ObjectId {
        index: 0,
        generation: 0,
    },
    device_object: 0,
    offset: ObjectOffset(0),
    dev_offset: 0,
    default: false,
    frames: [PhysAddr(0); CLUSTER],
    count: 0,
    write: false,
    unlock: false,
    desired: VmProt::NONE,
    reader: None,
};

/// Page transfers between the VM and the device, and the kernel ports that
/// name host objects.
pub struct HostPaging {
    /// The transfers, filled in place (a record is a few hundred bytes, so
    /// it is never moved on the fault path); `used` says which slots hold
    /// one, `unsent` which of those the device has not been given yet
    /// (checked on every kernel exit, so kept as bits, not a scan).
    slots: [Transfer; SLOTS],
    used: u64,
    unsent: u64,
    /// Object actions from reaping (write-backs of dying objects), handed
    /// to `start` on the way out of the kernel.
    pub actions: Vec<ObjectAction>,
    ports: Vec<(u32, PortId)>,
    /// Calls for guest pagers, sent as messages on the way out of the
    /// kernel (where the IPC state is at hand).
    calls: Vec<(PagerRef, Call)>,
    /// The default pager: swap slots and pageout (default_pager.rs).
    pub default: super::default_pager::DefaultPager,
    /// Sequential-access detection for host objects' request windows.
    readahead: ReadAhead,
    /// Pages brought in from the device (host objects and swap) and
    /// pages written back to it, failed transfers among them.
    pub pages_in: u64,
    pub pages_out: u64,
    pub failed: u64,
    /// Host objects whose pager failed; write-backs to host objects that
    /// failed; dirty pages lost (their object ended with the write failed).
    pub dead_objects: u64,
    pub failed_writes: u64,
    pub lost_pages: u64,
    /// data_requests the pager left unanswered past the object's timeout.
    pub timeouts: u64,
    /// POLL_US in TSC cycles (0 until the timer has shown the rate); the
    /// spins in a row that ran out of time, and the page-ins since.
    poll_cycles: u64,
    spin_misses: u32,
    spin_skipped: u32,
    /// Faults whose page the device answered while they waited (page_in),
    /// the waits that spun for it, and those that ran out of time.
    pub at_once: u64,
    pub spins: u64,
    pub spin_timeouts: u64,
    /// TSC cycles spent spinning (vm_statistics shows them as µs).
    pub spin_cycles: u64,
    /// What host pagers said unprompted (pager_events.rs).
    pub events: super::pager_events::EventCounts,
    /// Lock requests whose pager waits for LOCK_COMPLETED.
    pub lock_replies: LockCompletions,
    pub event_clock: super::pager_events::EventClock,
    write_failure_reported: bool,
    timeout_reported: bool,
}

/// A Table 3-5 call a fault needs from a guest pager.
#[derive(Clone, Copy, Debug)]
pub enum Call {
    DataRequest {
        offset: ObjectOffset,
        desired: VmProt,
    },
    DataUnlock {
        offset: ObjectOffset,
        access: VmProt,
    },
}

impl Default for HostPaging {
    fn default() -> Self {
        HostPaging {
            slots: [NO_TRANSFER; SLOTS],
            used: 0,
            unsent: 0,
            actions: Vec::new(),
            ports: Vec::new(),
            calls: Vec::new(),
            default: Default::default(),
            readahead: ReadAhead::new(CLUSTER_FIRST, CLUSTER as u32),
            pages_in: 0,
            pages_out: 0,
            failed: 0,
            dead_objects: 0,
            failed_writes: 0,
            lost_pages: 0,
            timeouts: 0,
            poll_cycles: 0,
            spin_misses: 0,
            spin_skipped: 0,
            at_once: 0,
            spins: 0,
            spin_timeouts: 0,
            spin_cycles: 0,
            events: Default::default(),
            lock_replies: Default::default(),
            event_clock: Default::default(),
            write_failure_reported: false,
            timeout_reported: false,
        }
    }
}

impl HostPaging {
    /// Transfers waiting for the device, or write-backs to start.
    pub fn has_work(&self) -> bool {
        self.unsent != 0
            || !self.actions.is_empty()
            || !self.calls.is_empty()
            || self.lock_replies.has_ready()
    }

    /// A free slot, not yet marked used.
    fn free_slot(&self) -> Option<usize> {
        let free = !self.used;
        (free != 0).then(|| free.trailing_zeros() as usize)
    }

    /// Fills free slot `slot` with a transfer of one page's `frame` (a
    /// write-back: the object's own frame) and queues it for the device.
    #[allow(clippy::too_many_arguments)] // one transfer's fields
    fn queue_write(
        &mut self,
        slot: usize,
        object: ObjectId,
        device_object: u32,
        offset: ObjectOffset,
        dev_offset: u64,
        default: bool,
        frame: PhysAddr,
    ) {
        let t = &mut self.slots[slot];
        t.object = object;
        t.device_object = device_object;
        t.offset = offset;
        t.dev_offset = dev_offset;
        t.default = default;
        t.frames[0] = frame;
        t.count = 1;
        t.write = true;
        t.unlock = false;
        t.desired = VmProt::NONE;
        t.reader = None;
        self.used |= 1 << slot;
        self.unsent |= 1 << slot;
    }
}

/// The kernel port naming device object `id` (made once, kept for the
/// kernel's life: there are few objects and the port is their name).
pub fn object_port(k: &mut Kernel, id: u32) -> Result<PortId, u32> {
    if let Some(&(_, p)) = k.paging.ports.iter().find(|(o, _)| *o == id) {
        return Ok(p);
    }
    k.paging
        .ports
        .try_reserve(1)
        .map_err(|_| libmach::abi::KERN_RESOURCE_SHORTAGE)?;
    let p = k.ipc.kernel_port(KObject::HostObject(id))?;
    k.paging.ports.push((id, p));
    Ok(p)
}

/// What a ready device object's pager said of it at INIT.
#[derive(Clone, Copy, Debug)]
pub struct ReadyObject {
    pub size: u64,
    pub read_only: bool,
    /// The VM may keep the object and its pages once nothing maps it
    /// (pager_cache given at INIT; a later CACHE event may change it).
    pub may_cache: bool,
}

/// A ready device object's size, writability and caching.
pub fn object_info(id: u32) -> Option<ReadyObject> {
    let guard = virtio_pager::lock();
    match guard.as_ref()?.object(id)?.state {
        ObjState::Ready {
            size,
            read_only,
            may_cache,
        } => Some(ReadyObject {
            size,
            read_only,
            may_cache,
        }),
        _ => None,
    }
}

/// An answer the fault path takes itself: data for the page, nothing
/// else (every other answer goes through `finish`).
fn plain_success(c: &Completion) -> bool {
    c.status == status::OK && c.kind == pager::KIND_PROVIDED && c.bytes >= PAGE_SIZE && c.lock == 0
}

/// Whether a fault whose answer is not there yet spins for it: while the
/// bound is known, and unless the device has been slow lately (then one
/// in SPIN_PROBE still does, to see whether it is fast again).
fn should_spin(paging: &mut HostPaging) -> bool {
    if paging.poll_cycles == 0 {
        return false;
    }
    if paging.spin_misses < SPIN_MISSES {
        return true;
    }
    paging.spin_skipped = paging.spin_skipped.wrapping_add(1);
    paging.spin_skipped.is_multiple_of(SPIN_PROBE)
}

/// Timer tick: the poll bound follows the TSC's rate as the timer sees it.
pub fn tick(k: &mut Kernel) {
    k.paging.poll_cycles = k.tsc.cycles(POLL_US, k.timer_hz);
}

/// A data_request queued for the device: its transfer slot and how many
/// pages it asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    pub slot: usize,
    pub pages: usize,
}

/// How a fault's request went.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Sent (or queued): the answer wakes the object's waiters. The
    /// transfer, for a request to the device.
    Yes(Option<Sent>),
    /// The kernel cannot ask (no free slot or frame, not a host object):
    /// the caller fails the request.
    No,
    /// The default pager has nothing for the page (no swap slot): the
    /// caller settles it as data_unavailable (zero fill).
    Unavailable,
}

/// A fault asked `pager` for the page at `offset` of `object`, whose
/// size in bytes `size` tells (asked only when read-ahead would go past
/// the page; a busy placeholder is in place).
pub fn request(
    paging: &mut HostPaging,
    frames: &mut FrameAllocator,
    object: ObjectId,
    size: impl FnOnce() -> u64,
    pager: PagerPort,
    offset: ObjectOffset,
    desired: VmProt,
) -> Asked {
    let (dev, dev_offset, default) = match pager {
        PagerPort::Default => match paging.default.page_in(object, offset) {
            Some((dev, at)) => (dev, at, true),
            None => return Asked::Unavailable,
        },
        PagerPort::Pager(p) if crate::vm::user_pager::is_user(p) => {
            return if defer(paging, p, Call::DataRequest { offset, desired }) {
                Asked::Yes(None)
            } else {
                Asked::No
            };
        }
        PagerPort::Pager(p) => match host_object(p) {
            Some(dev) => (dev, offset.0, false),
            None => return Asked::No,
        },
    };
    let Some(slot) = paging.free_slot() else {
        return Asked::No;
    };
    // Swap pages come one at a time (neighbouring slots are not
    // neighbouring pages); host objects by their stream's window.
    let window = if default {
        1
    } else {
        paging
            .readahead
            .window(object.to_raw(), offset.0, PAGE_SIZE) as usize
    };
    let pages = if window > 1 {
        (size().saturating_sub(offset.0).div_ceil(PAGE_SIZE) as usize)
            .min(window)
            .clamp(1, CLUSTER)
    } else {
        1
    };
    let t = &mut paging.slots[slot];
    t.object = object;
    t.device_object = dev;
    t.offset = offset;
    t.dev_offset = dev_offset;
    t.default = default;
    t.count = 0;
    t.write = false;
    t.unlock = false;
    t.desired = desired;
    t.count = if pages == 1 {
        // A random fault's one page: the allocator's one-frame path.
        frames.alloc().map_or(0, |f| {
            t.frames[0] = f.addr;
            1
        })
    } else {
        // Read-ahead is only worth free frames (the faulting page is not
        // optional): a page past the first only while more than
        // READ_AHEAD_MIN_FREE frames would be left. The cluster's frames
        // are taken in one call.
        let spare = frames.free_frames().saturating_sub(READ_AHEAD_MIN_FREE);
        let pages = pages.min((spare.min(CLUSTER as u64) as usize).max(1));
        frames.alloc_into(&mut t.frames[..pages])
    };
    if t.count == 0 {
        return Asked::No;
    }
    paging.used |= 1 << slot;
    paging.unsent |= 1 << slot;
    Asked::Yes(Some(Sent {
        slot,
        pages: t.count,
    }))
}

/// A fault by `reader` waits for the answer to the data_request in `slot`
/// (its own): if it was a read of a host object's page, the answer is
/// mapped in the reader's space as it arrives (a write's page must fault
/// for write access anyway). Recorded only once the fault is to wait, so
/// a page taken at once (`page_in`) costs nothing for it.
pub fn set_reader(paging: &mut HostPaging, slot: usize, reader: Reader) {
    let t = &mut paging.slots[slot];
    if !t.default && !t.write && !t.unlock && t.desired == VmProt::READ {
        t.reader = Some(reader);
    }
}

/// A fault by `reader` waits for the page at `offset` of `object` (Wait):
/// the data_request in flight from that page on, if there is one without
/// a reader yet, is this fault's or another's for the same page, and its
/// answer is mapped for this reader ([`set_reader`]). A request that
/// starts at another page is left alone: its answer is mapped from its
/// own first page or not at all.
pub fn wait_as_reader(
    paging: &mut HostPaging,
    object: ObjectId,
    offset: ObjectOffset,
    reader: Reader,
) {
    let mut used = paging.used;
    while used != 0 {
        let slot = used.trailing_zeros() as usize;
        used &= used - 1;
        let t = &paging.slots[slot];
        let request = !t.write && !t.unlock && !t.default;
        if request && t.object == object && t.offset == offset && t.reader.is_none() {
            set_reader(paging, slot, reader);
            return;
        }
    }
}

/// A fault's call to a guest pager, sent by `start`.
fn defer(paging: &mut HostPaging, pager: PagerRef, call: Call) -> bool {
    if paging.calls.len() >= SLOTS * 4 || paging.calls.try_reserve(1).is_err() {
        return false;
    }
    paging.calls.push((pager, call));
    true
}

/// pager_data_unlock for a fault on `object`'s page at `offset`: a
/// message to a guest pager, a DATA_UNLOCK request to a host object's
/// device (its answer, the lock now in force, is applied by `finish`).
/// False if it cannot be asked.
pub fn unlock(
    paging: &mut HostPaging,
    object: ObjectId,
    pager: PagerPort,
    offset: ObjectOffset,
    access: VmProt,
) -> bool {
    let PagerPort::Pager(p) = pager else {
        return false;
    };
    if crate::vm::user_pager::is_user(p) {
        return defer(paging, p, Call::DataUnlock { offset, access });
    }
    let (Some(dev), Some(slot)) = (host_object(p), paging.free_slot()) else {
        return false;
    };
    // A device that does not take unlocks (no F_UNLOCK) would refuse it.
    let takes_unlocks = virtio_pager::try_lock().is_none_or(|g| {
        g.as_ref()
            .is_some_and(|d| d.features() & (1 << pager::F_UNLOCK) != 0)
    });
    if !takes_unlocks {
        return false;
    }
    let t = &mut paging.slots[slot];
    t.object = object;
    t.device_object = dev;
    t.offset = offset;
    t.dev_offset = offset.0;
    t.default = false;
    t.count = 0;
    t.write = false;
    t.unlock = true;
    t.desired = access;
    t.reader = None;
    paging.used |= 1 << slot;
    paging.unsent |= 1 << slot;
    true
}

/// Takes the write-backs reaping produced into free slots (frames stay
/// the objects'). Those without room stay queued.
fn take_actions(k: &mut Kernel) {
    while let Some(&a) = k.paging.actions.last() {
        if matches!(a, ObjectAction::DataWrite { .. })
            && k.paging.used.count_ones() as usize >= SLOTS - READ_RESERVE
        {
            return;
        }
        if let ObjectAction::DataWrite {
            object,
            pager: PagerPort::Default,
            offset,
            frame,
        } = a
        {
            let Some(slot) = k.paging.free_slot() else {
                return;
            };
            k.paging.actions.pop();
            let Some((device_object, dev_offset)) = k.paging.default.page_out(object, offset)
            else {
                // Swap full (or gone): the page stays in memory.
                refuse_write(k, object, offset);
                continue;
            };
            k.paging
                .queue_write(slot, object, device_object, offset, dev_offset, true, frame);
            continue;
        }
        if let ObjectAction::DefaultPagerRelease { object } = a {
            k.paging.actions.pop();
            k.paging.default.release(object);
            continue;
        }
        if let ObjectAction::DataWrite {
            object,
            pager: PagerPort::Pager(p),
            offset,
            frame,
        } = a
            && let Some(device_object) = host_object(p)
        {
            let Some(slot) = k.paging.free_slot() else {
                return;
            };
            k.paging
                .queue_write(slot, object, device_object, offset, offset.0, false, frame);
        } else if let ObjectAction::DataWrite {
            object,
            pager: PagerPort::Pager(p),
            offset,
            frame,
        } = a
        {
            k.paging.actions.pop();
            crate::vm::user_pager::data_write(k, p, object, offset, frame);
            // The data went in the message (or never will): ended, for a
            // lock request waiting for it.
            k.paging.lock_replies.write_ended(object, offset);
            continue;
        } else if let ObjectAction::Terminate { object, pager } = a {
            k.paging.actions.pop();
            // What the default pager kept of it (its pager died) goes too.
            k.paging.default.release(object);
            // A host object's end leaves the device object as it is.
            if crate::vm::user_pager::is_user(pager) {
                crate::vm::user_pager::terminate(k, pager);
            }
            continue;
        }
        k.paging.actions.pop();
    }
}

/// Hands waiting transfers to the device. Called on the way out of the
/// kernel and after completions, with the driver lock not held. Returns
/// the driver, still locked, when it sent something (the way out takes
/// the completions next, under the same lock).
pub fn start(k: &mut Kernel) -> Option<MutexGuard<'static, Option<Driver>>> {
    while let Some((p, call)) = k.paging.calls.pop() {
        crate::vm::user_pager::send_call(k, p, call);
    }
    if !k.paging.actions.is_empty() {
        take_actions(k);
    }
    if k.paging.lock_replies.has_ready() {
        send_lock_replies(k);
    }
    if k.paging.unsent == 0 {
        return None;
    }
    let mut guard = virtio_pager::lock();
    let Some(d) = guard.as_mut() else {
        drop(guard);
        fail_waiting(k);
        return None;
    };
    let (sent, failed) = submit_unsent(&mut k.paging, &mut k.frames, d);
    if failed {
        drop(guard);
        fail_waiting(k);
        return None;
    }
    sent.then_some(guard)
}

/// Sends the completions of the lock requests that are done: a message
/// to a guest task's pager (on its memory object port, after the
/// data_writes this way out sent there), LOCK_COMPLETED to a host pager's
/// device object as far as request slots allow (the rest go on a later
/// way out). A reply the device refuses outright (the object was reset or
/// terminated since: the device forgot the request too) is dropped.
fn send_lock_replies(k: &mut Kernel) {
    let mut ready = [None; MAX_WAITING];
    for (at, r) in ready.iter_mut().zip(k.paging.lock_replies.ready()) {
        *at = Some(r);
    }
    for &(slot, r) in ready.iter().flatten() {
        if let ReplyTo::Task { pager, cookie } = r.to {
            crate::vm::user_pager::lock_completed(k, pager, r.offset, r.length, cookie);
            k.paging.lock_replies.sent(slot);
        }
    }
    let device = ready.iter().flatten().filter_map(|&(slot, r)| match r.to {
        ReplyTo::Device { object, tag } => Some((slot, object, tag, r)),
        ReplyTo::Task { .. } => None,
    });
    let replies = &mut k.paging.lock_replies;
    let Some(mut guard) = virtio_pager::try_lock() else {
        return;
    };
    let Some(d) = guard.as_mut() else {
        // No device: nobody to tell.
        for (slot, ..) in device {
            replies.sent(slot);
        }
        return;
    };
    let mut sent = false;
    for (slot, object, tag, r) in device {
        let op = Op::LockCompleted {
            offset: r.offset,
            len: r.length,
            tag,
        };
        match d.submit(object, op, LOCK_REPLY_TOKEN, core::iter::empty()) {
            Ok(()) => sent = true,
            Err(SubmitError::Busy) => break,
            Err(_) => {}
        }
        replies.sent(slot);
    }
    if sent {
        d.kick();
    }
}

/// A host pager's LOCK_REQUEST asked for a reply: its lock and write-backs
/// are applied and queued; from here the kernel counts the writes in its
/// range (those just queued and those on their way before) and sends
/// LOCK_COMPLETED when the last has ended. Without room to count, the
/// request stays unanswered (counted in vm_statistics): a reply before the
/// writes are done would tell the pager something false.
pub fn track_lock_reply(k: &mut Kernel, object: ObjectId, reply: Reply) {
    let size = reply.length;
    let flying =
        k.vm.objects
            .writes_in_flight(object, ObjectOffset(reply.offset), size);
    match flying {
        Ok(pages) => {
            let _ = k.paging.lock_replies.begin(object, reply, &pages);
        }
        Err(_) => k.paging.lock_replies.refused += 1,
    }
}

/// Hands the transfers not yet sent to the device and notifies it (after
/// disarming completion interrupts: the way out of the kernel takes the
/// answers). Returns (something sent, something refused); refused
/// transfers stay unsent for `start` to fail.
fn submit_unsent(
    paging: &mut HostPaging,
    frames: &mut FrameAllocator,
    d: &mut Driver,
) -> (bool, bool) {
    let mut sent = false;
    let mut failed = false;
    // Never more pages in one request than the device takes.
    let max = ((d.max_request_bytes() / PAGE_SIZE) as usize)
        .min(d.max_frames())
        .max(1);
    let mut pending = paging.unsent;
    while pending != 0 {
        let i = pending.trailing_zeros() as usize;
        pending &= pending - 1;
        let t = &mut paging.slots[i];
        if t.count > max {
            for &f in &t.frames[max..t.count] {
                frames.free(f);
            }
            t.count = max;
        }
        match submit(d, t, i) {
            Ok(()) => {
                paging.unsent &= !(1 << i);
                sent = true;
            }
            Err(SubmitError::Busy) => break,
            Err(_) => failed = true,
        }
    }
    if sent {
        crate::vm::object_io::disarm_for_exit(d);
        d.kick();
    }
    (sent, failed)
}

/// A fault asks a host object's pager for its page from inside the fault
/// handler (`FaultMachine::page_in`): the transfer is made and handed to
/// the device at once, and for a single page whose answer is already
/// there (the device often answers within the few instructions between),
/// the answer is taken on the spot, so the fault maps the page in the
/// same pass: no placeholder made and filled, no second pass through the
/// fault handler. Only a plain success is taken so; any other answer, or
/// one behind another on the ring, is left for the way out of the kernel,
/// which deals with every kind (`finish`), and the fault waits for it.
pub fn page_in(
    paging: &mut HostPaging,
    frames: &mut FrameAllocator,
    object: ObjectId,
    pager: PagerRef,
    offset: ObjectOffset,
    size: u64,
    desired: VmProt,
) -> PageIn {
    if crate::vm::user_pager::is_user(pager) || host_object(pager).is_none() {
        return PageIn::Later;
    }
    let asked = request(
        paging,
        frames,
        object,
        || size,
        PagerPort::Pager(pager),
        offset,
        desired,
    );
    let Asked::Yes(Some(sent)) = asked else {
        // No room to ask: the fault's caller asks (and reports) it.
        return PageIn::Later;
    };
    // A VM operation run from a completion holds the driver: the transfer
    // then waits for the way out.
    let Some(mut guard) = virtio_pager::try_lock() else {
        return PageIn::Asked;
    };
    let Some(d) = guard.as_mut() else {
        return PageIn::Asked;
    };
    submit_unsent(paging, frames, d);
    let bit = 1u64 << sent.slot;
    if sent.pages != 1 || paging.unsent & bit != 0 {
        return PageIn::Asked;
    }
    let token = PAGE_TOKEN | sent.slot as u64;
    // One look; if the answer is not ours yet, a wait for the device
    // (while spinning is worth it, never past the bound) and one more
    // look. The second look is taken also when something arrived just
    // after the first: the device often answers within those few
    // instructions, and a fault that then slept for it cost a sleep, a
    // wake-up and a second fault. One call site, so the take is inlined
    // and the completion never written out.
    let mut looked = false;
    let taken = loop {
        let taken = d.take_completion(token, plain_success);
        if taken.is_some() || looked {
            break taken;
        }
        looked = true;
        if d.completions_waiting() != 0 {
            continue;
        }
        if !should_spin(paging) {
            break None;
        }
        paging.spins += 1;
        let start = crate::kern::clock::now();
        let waited = loop {
            core::hint::spin_loop();
            let waited = crate::kern::clock::now().wrapping_sub(start);
            if d.completions_waiting() != 0 || waited > paging.poll_cycles {
                break waited;
            }
        };
        paging.spin_cycles = paging.spin_cycles.wrapping_add(waited);
        if d.completions_waiting() == 0 {
            paging.spin_misses = paging.spin_misses.saturating_add(1);
            paging.spin_timeouts += 1;
            break None;
        }
    };
    if taken.is_none() {
        return PageIn::Asked;
    }
    paging.spin_misses = 0;
    paging.at_once += 1;
    crate::vm::object_io::rearm_if_idle(d);
    paging.used &= !bit;
    paging.pages_in += 1;
    PageIn::Provided(paging.slots[sent.slot].frames[0])
}

fn submit(d: &mut Driver, t: &Transfer, slot: usize) -> Result<(), SubmitError> {
    let len = t.count as u64 * PAGE_SIZE;
    let mut desired = ACCESS_READ;
    if t.desired.contains(VmProt::WRITE) {
        desired |= ACCESS_WRITE;
    }
    let op = if t.unlock {
        Op::DataUnlock {
            offset: t.dev_offset,
            len: PAGE_SIZE,
            desired,
        }
    } else if t.write {
        Op::DataWrite {
            offset: t.dev_offset,
            len,
        }
    } else {
        Op::DataRequest {
            offset: t.dev_offset,
            len,
            desired,
        }
    };
    // (An unlock has no frames: the same, empty, iterator.)
    let frames = t.frames[..t.count].iter().map(|&addr| Segment {
        addr,
        len: PAGE_SIZE as u32,
    });
    d.submit(t.device_object, op, PAGE_TOKEN | slot as u64, frames)
}

/// Transfers the device refused outright (no device, object gone, broken
/// queue) end as errors: the faults waiting get MemoryError.
fn fail_waiting(k: &mut Kernel) {
    while k.paging.unsent != 0 {
        let i = k.paging.unsent.trailing_zeros() as usize;
        finish(k, i, status::IO_ERROR, 0, 0, 0);
    }
}

/// What `finish` needs of a transfer besides its frames.
struct Ended {
    object: ObjectId,
    device_object: u32,
    offset: ObjectOffset,
    default: bool,
    write: bool,
    reader: Option<Reader>,
}

/// A page transfer finished (called from the driver's completion path).
pub fn complete(k: &mut Kernel, c: &Completion) {
    let slot = (c.token & !PAGE_TOKEN) as usize;
    let sent = k.paging.used & !k.paging.unsent;
    if slot < SLOTS && sent & (1 << slot) != 0 {
        finish(k, slot, c.status, c.kind, c.bytes, c.lock);
    }
}

fn finish(k: &mut Kernel, slot: usize, code: u32, kind: u32, bytes: u64, lock: u8) {
    let bit = 1u64 << slot;
    if k.paging.used & bit == 0 {
        return;
    }
    // The slot is free from here on. Its record is read below in place
    // (not copied out): only `request` and `take_actions` fill slots, and
    // nothing below calls them.
    k.paging.used &= !bit;
    k.paging.unsent &= !bit;
    let t = &k.paging.slots[slot];
    if t.unlock {
        let (object, offset, device_object) = (t.object, t.offset, t.device_object);
        if code == status::TIMED_OUT {
            timed_out(k, device_object, "a data_unlock");
        }
        if code == status::PAGER_FAILED {
            pager_failed(k, object, device_object);
        }
        unlocked(k, object, offset, (code == status::OK).then_some(lock));
        return;
    }
    // Unknown lock bits lock everything: the page is then only the
    // pager's to unlock.
    let lock = VmProt::from_bits(u64::from(lock)).unwrap_or(VmProt::ALL);
    let t = Ended {
        object: t.object,
        device_object: t.device_object,
        offset: t.offset,
        default: t.default,
        write: t.write,
        reader: k.paging.slots[slot].reader.take(),
    };
    let ok = code == status::OK;
    k.paging.failed += u64::from(!ok);
    if t.write {
        k.paging.pages_out += u64::from(ok);
    } else if ok && kind == pager::KIND_PROVIDED {
        let count = k.paging.slots[slot].count as u64;
        k.paging.pages_in += bytes.div_ceil(PAGE_SIZE).min(count);
    }
    // A host object's pager that failed (broke protocol, timed out, is
    // gone) is dead from now on (paper §6.1): absent pages fault, resident
    // ones stay readable, dirty ones go to the default pager.
    let died = !t.default && code == status::PAGER_FAILED;
    if code == status::TIMED_OUT && !t.write {
        // Not dead: the waiting threads get the memory exception (the
        // object's policy was `error`; `zero` arrives as unavailable).
        timed_out(k, t.device_object, "a data_request");
    }
    // A read fault's answer: made and mapped in the reader's space at
    // once; nothing below is needed for it but the wake-up.
    if let Some(reader) = t.reader
        && ok
        && kind == pager::KIND_PROVIDED
        && bytes != 0
        && provide_to_reader(k, slot, reader, t.object, t.offset, bytes, lock)
    {
        k.wake_page_waiters(t.object);
        return;
    }
    let mut newly_dead = false;
    let mut lost = false;
    let (vm, frames, paging, loaded) = k.vm_global();
    let pages = &paging.slots[slot].frames[..paging.slots[slot].count];
    let ended = crate::vm::run(
        vm,
        frames,
        &mut paging.actions,
        loaded,
        loaded,
        |objects, _, frames, m| {
            if died && objects.get(t.object).is_ok_and(|o| !o.pager_dead()) {
                newly_dead = objects.pager_died(t.object).is_ok();
            }
            if t.write && !ok {
                // The data stays in memory, dirty (unless the object is going
                // away: then it is lost, and counted).
                let terminating = objects
                    .get(t.object)
                    .is_ok_and(|o| o.state() == guest_kernel::vm::object::ObjectState::Terminating);
                lost = terminating;
                return objects
                    .data_write_refused(t.object, t.offset, frames, m)
                    .ok()
                    .flatten();
            }
            if t.write {
                if t.default {
                    // A dead pager's page now kept by the default pager.
                    let _ = objects.double_paged(t.object, t.offset);
                }
                return objects
                    .data_write_done(t.object, t.offset, frames, m)
                    .ok()
                    .flatten();
            }
            let provided = ok && kind == pager::KIND_PROVIDED;
            // The pager may provide less than asked (the object's end).
            let have = if provided {
                (bytes.div_ceil(PAGE_SIZE) as usize).min(pages.len())
            } else {
                0
            };
            let len = pages.len() as u64 * PAGE_SIZE;
            let r = if have > 0 {
                objects.data_provided(t.object, t.offset, &pages[..have], lock, false, frames)
            } else if ok {
                objects.data_unavailable(t.object, t.offset, len)
            } else {
                objects.data_error(t.object, t.offset, len)
            };
            // Frames are the object's only if provided and taken
            // (data_provided frees those it does not need itself).
            let kept = if r.is_ok() { have } else { 0 };
            for &f in &pages[kept..] {
                frames.free_frame(f);
            }
            None
        },
    );
    if newly_dead {
        k.paging.dead_objects += 1;
        crate::kprint!(
            "vm: host object ",
            Dec(u64::from(t.device_object)),
            ": pager failed, object dead (absent pages fault, dirty pages go to the default pager)\n"
        );
    }
    if t.write && !ok && !t.default {
        k.paging.failed_writes += 1;
        if !k.paging.write_failure_reported {
            k.paging.write_failure_reported = true;
            crate::kprint!(
                "vm: host object ",
                Dec(u64::from(t.device_object)),
                ": a write-back failed (status ",
                Dec(u64::from(code)),
                "); the page stays in memory (further failures are counted in vm_statistics)\n"
            );
        }
    }
    k.paging.lost_pages += u64::from(lost);
    // The object's end after its last write-back (a guest pager's object
    // whose dead pager's pages went to the default pager is told its
    // termination too).
    if let Some(a) = ended {
        let _ = queue_actions(k, alloc::vec![a]);
    }
    if t.write {
        // Ended, whatever the answer: a lock request waiting for it has
        // what it waited for (the pager answered).
        k.paging.lock_replies.write_ended(t.object, t.offset);
    }
    if t.write && t.default {
        k.paging.default.writing = k.paging.default.writing.saturating_sub(1);
    }
    k.wake_page_waiters(t.object);
    if t.write {
        super::default_pager::frames_freed(k);
    }
}

/// A request to host object `device_object` timed out: counted, and the
/// first one reported.
fn timed_out(k: &mut Kernel, device_object: u32, what: &str) {
    k.paging.timeouts += 1;
    if !k.paging.timeout_reported {
        k.paging.timeout_reported = true;
        crate::kprint!(
            "vm: host object ",
            Dec(u64::from(device_object)),
            ": ",
            what,
            " timed out; the faulting threads get a memory exception (further timeouts are counted in vm_statistics)\n"
        );
    }
}

/// A host object's pager broke protocol or died answering a data_unlock:
/// the object is dead from now on, as after a failed data_request.
fn pager_failed(k: &mut Kernel, object: ObjectId, device_object: u32) {
    let newly_dead = crate::vm::with_objects(k, |objects, _, _| {
        objects.get(object).is_ok_and(|o| !o.pager_dead()) && objects.pager_died(object).is_ok()
    });
    if newly_dead {
        k.paging.dead_objects += 1;
        crate::kprint!(
            "vm: host object ",
            Dec(u64::from(device_object)),
            ": pager failed, object dead (absent pages fault, dirty pages go to the default pager)\n"
        );
    }
}

/// A read fault's data_request answered with data (`bytes` of it, from
/// `offset` of `object`, locked by `lock`): the pages are made and the run
/// from the faulting page mapped in the reader's space
/// (fault_around::provide_to_reader). False, with nothing done, if the
/// reader's space is gone: the caller provides the pages as for anyone.
fn provide_to_reader(
    k: &mut Kernel,
    slot: usize,
    reader: Reader,
    object: ObjectId,
    offset: ObjectOffset,
    bytes: u64,
    lock: VmProt,
) -> bool {
    let Some(p) = k.vm_parts(reader.task) else {
        return false;
    };
    let super::Parts {
        map,
        vm,
        paging,
        frames,
        root,
        loaded,
        ..
    } = p;
    let t = &paging.slots[slot];
    let pages = &t.frames[..t.count];
    // The pager may provide less than asked (the object's end).
    let have = (bytes.div_ceil(PAGE_SIZE) as usize).min(pages.len());
    super::run(
        vm,
        frames,
        &mut paging.actions,
        root,
        loaded,
        |objects, _, frames, m| {
            let r = fault_around::provide_to_reader(
                map,
                objects,
                frames,
                m,
                reader.va,
                object,
                offset,
                &pages[..have],
                lock,
            );
            // Frames are the object's only if taken (data_provided frees
            // those it does not need itself).
            let kept = if r.is_ok() { have } else { 0 };
            for &f in &pages[kept..] {
                frames.free_frame(f);
            }
        },
    );
    true
}

/// A host object's answer to a fault's data_unlock: `lock`, the lock now
/// in force on the page (None: the request failed). The answer is applied
/// as the pager's data_lock (paper §3.4.1: a pager grants access by
/// lowering the lock; one that does not leaves the fault waiting for a
/// later data_lock). A request that failed ends in the memory error for
/// the faults that waited for it.
fn unlocked(k: &mut Kernel, object: ObjectId, offset: ObjectOffset, lock: Option<u8>) {
    let lock = lock.and_then(|l| VmProt::from_bits(u64::from(l)));
    crate::vm::with_objects(k, |objects, _, m| match lock {
        Some(lock) => {
            let _ = objects.data_lock(object, offset, PAGE_SIZE, lock, m);
        }
        None => {
            let _ = objects.unlock_error(object, offset);
        }
    });
    k.wake_page_waiters(object);
}

/// Queues the write-backs a pager's call started. Without room to
/// remember them, the pages go back to how they were (dirty, not in
/// transit), rather than waiting for a write no one will make; false then
/// (a lock request must not be reported done: its writes were not made).
pub fn queue_actions(k: &mut Kernel, actions: Vec<ObjectAction>) -> bool {
    if actions.is_empty() || k.paging.actions.try_reserve(actions.len()).is_ok() {
        k.paging.actions.extend(actions);
        return true;
    }
    for a in actions {
        if let ObjectAction::DataWrite { object, offset, .. } = a {
            unwind_write(k, object, offset);
        }
    }
    false
}

/// A write-back that will not be made: the page is dirty again, not in
/// transit (and an object waiting for its last write may end now).
fn unwind_write(k: &mut Kernel, object: ObjectId, offset: ObjectOffset) {
    k.paging.lock_replies.write_ended(object, offset);
    let ended = crate::vm::with_objects(k, |objects, frames, m| {
        objects
            .data_write_refused(object, offset, frames, m)
            .ok()
            .flatten()
    });
    if let Some(a) = ended {
        let _ = queue_actions(k, alloc::vec![a]);
    }
}

/// A write to swap that cannot be made: the page keeps its data.
fn refuse_write(k: &mut Kernel, object: ObjectId, offset: ObjectOffset) {
    unwind_write(k, object, offset);
    k.paging.default.writing = k.paging.default.writing.saturating_sub(1);
    k.wake_page_waiters(object);
    super::default_pager::frames_freed(k);
}

/// Power-off: terminates every cached object, so that its modified pages
/// are queued for write-back like those of the objects whose last mapping
/// went.
pub fn uncache_all(k: &mut Kernel) {
    while k.vm.objects.has_cached() {
        let r = crate::vm::with_objects(k, |objects, frames, m| objects.evict_cached(frames, m));
        match r {
            Ok(actions) => {
                let _ = queue_actions(k, actions);
            }
            Err(_) => {
                crate::kprint!("vm: a cached object could not be ended at power-off\n");
                return;
            }
        }
    }
}

/// Power-off: hands every queued write-back to the device and polls until
/// all transfers are done, so dirty pages reach their pagers before the
/// power-off sync. Bounded, as the other polled waits are: a stuck pager
/// is ended by the host's timeout.
pub fn drain_at_power_off(k: &mut Kernel) {
    for _ in 0..50_000_000u64 {
        start(k);
        if k.paging.used == 0 && k.paging.actions.is_empty() {
            return;
        }
        let mut guard = virtio_pager::lock();
        let Some(d) = guard.as_mut() else {
            return;
        };
        d.poll(
            &mut |c: &Completion, fr: &pager::Frames| crate::vm::object_io::complete(k, c, fr),
            &mut virtio_pager::drop_event,
        );
        drop(guard);
        core::hint::spin_loop();
    }
    crate::kprint!("virtio-pager: write-back at power-off did not finish\n");
}
