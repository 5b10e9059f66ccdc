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
use guest_kernel::addr::{PAGE_SIZE, PhysAddr};
use guest_kernel::dev::virtio::pager::{
    self, ACCESS_READ, ACCESS_WRITE, Completion, ObjState, Op, Segment, SubmitError, status,
};
use guest_kernel::ipc::{KObject, PortId};
use guest_kernel::vm::frame::FrameAllocator;
use guest_kernel::vm::object::{ObjectAction, PagerPort, PagerRef};
use guest_kernel::vm::page::FrameSource;
use guest_kernel::vm::readahead::ReadAhead;
use guest_kernel::vm::types::{ObjectId, ObjectOffset, VmProt};

/// Pager references of host objects: this bit plus the device's object
/// number. (Others will be ports of in-guest pagers.)
const HOST: u64 = 1 << 62;
/// Completion tokens of page transfers: this bit plus the slot (bit 63
/// marks object initialisation, bit 62 the power-off sync).
pub const PAGE_TOKEN: u64 = 1 << 61;
/// Transfers in flight or waiting at once; further faults wait on their
/// object until one ends.
const SLOTS: usize = 64;
/// Pages one data_request asks for at most: the faulting page and those
/// after it (read-ahead; data_provided takes pages no fault asked for).
/// The window is sized by the access pattern (guest_kernel::vm::readahead):
/// it starts at CLUSTER_FIRST and doubles while faults stay sequential, so
/// one device round trip serves a run of sequential faults and a random
/// reader asks for its page alone.
const CLUSTER: usize = 32;
const CLUSTER_FIRST: u32 = 4;
/// Read-ahead takes frames only while more than this many are free: above
/// pageout's low watermark by a cluster, so under memory pressure pageout
/// keeps making room for whole clusters (clean pages of a file are cheap to
/// drop) instead of the faults falling back to one page per request.
const READ_AHEAD_MIN_FREE: u64 = super::default_pager::FREE_MIN + CLUSTER as u64;
/// Slots write-backs leave to data_requests, so a fault needing a page
/// back does not find every slot taken by pageout's writes.
const READ_RESERVE: usize = 16;

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
    desired: VmProt,
    /// Handed to the device (else still waiting for a free device slot).
    submitted: bool,
}

/// Page transfers between the VM and the device, and the kernel ports that
/// name host objects.
pub struct HostPaging {
    slots: [Option<Transfer>; SLOTS],
    /// Object actions from reaping (write-backs of dying objects), handed
    /// to `start` on the way out of the kernel.
    pub actions: Vec<ObjectAction>,
    ports: Vec<(u32, PortId)>,
    /// Slots not yet handed to the device (checked on every kernel exit,
    /// so kept as a count).
    waiting: usize,
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
    /// What host pagers said unprompted (pager_events.rs).
    pub events: super::pager_events::EventCounts,
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
            slots: [None; SLOTS],
            actions: Vec::new(),
            ports: Vec::new(),
            waiting: 0,
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
            events: Default::default(),
            event_clock: Default::default(),
            write_failure_reported: false,
            timeout_reported: false,
        }
    }
}

impl HostPaging {
    /// Transfers waiting for the device, or write-backs to start.
    pub fn has_work(&self) -> bool {
        self.waiting != 0 || !self.actions.is_empty() || !self.calls.is_empty()
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

/// The size and writability of a ready device object.
pub fn object_info(id: u32) -> Option<(u64, bool)> {
    let guard = virtio_pager::lock();
    match guard.as_ref()?.object(id)?.state {
        ObjState::Ready {
            size, read_only, ..
        } => Some((size, read_only)),
        _ => None,
    }
}

/// How a fault's request went.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Sent (or queued): the answer wakes the object's waiters.
    Yes,
    /// The kernel cannot ask (no free slot or frame, not a host object):
    /// the caller fails the request.
    No,
    /// The default pager has nothing for the page (no swap slot): the
    /// caller settles it as data_unavailable (zero fill).
    Unavailable,
}

/// A fault asked `pager` for the page at `offset` of `object`, `size`
/// bytes long (a busy placeholder is in place).
pub fn request(
    paging: &mut HostPaging,
    frames: &mut FrameAllocator,
    object: ObjectId,
    size: u64,
    pager: PagerPort,
    offset: ObjectOffset,
    desired: VmProt,
) -> Asked {
    let (dev, dev_offset, default, size) = match pager {
        PagerPort::Default => match paging.default.page_in(object, offset) {
            // One page: swap slots of neighbouring pages are not neighbours.
            Some((dev, at)) => (dev, at, true, offset.0.saturating_add(PAGE_SIZE)),
            None => return Asked::Unavailable,
        },
        PagerPort::Pager(p) if crate::vm::user_pager::is_user(p) => {
            return if defer(paging, p, Call::DataRequest { offset, desired }) {
                Asked::Yes
            } else {
                Asked::No
            };
        }
        PagerPort::Pager(p) => match host_object(p) {
            Some(dev) => (dev, offset.0, false, size),
            None => return Asked::No,
        },
    };
    let Some(slot) = paging.slots.iter().position(Option::is_none) else {
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
    let pages = (size.saturating_sub(offset.0).div_ceil(PAGE_SIZE) as usize)
        .min(window)
        .clamp(1, CLUSTER);
    let mut t = Transfer {
        object,
        device_object: dev,
        offset,
        dev_offset,
        default,
        frames: [PhysAddr(0); CLUSTER],
        count: 0,
        write: false,
        desired,
        submitted: false,
    };
    for f in t.frames.iter_mut().take(pages) {
        // Read-ahead is only worth free frames (the faulting page is not
        // optional).
        // (Checked before allocating: a frame taken and then refused
        // would be lost.)
        if t.count > 0 && frames.free_frames() <= READ_AHEAD_MIN_FREE {
            break;
        }
        match frames.alloc_frame() {
            Some(fr) => {
                *f = fr.addr;
                t.count += 1;
            }
            None => break,
        }
    }
    if t.count == 0 {
        return Asked::No;
    }
    paging.slots[slot] = Some(t);
    paging.waiting += 1;
    Asked::Yes
}

/// A fault's call to a guest pager, sent by `start`.
fn defer(paging: &mut HostPaging, pager: PagerRef, call: Call) -> bool {
    if paging.calls.len() >= SLOTS * 4 || paging.calls.try_reserve(1).is_err() {
        return false;
    }
    paging.calls.push((pager, call));
    true
}

/// pager_data_unlock for a fault: only guest pagers lock pages.
pub fn unlock(
    paging: &mut HostPaging,
    pager: PagerPort,
    offset: ObjectOffset,
    access: VmProt,
) -> bool {
    match pager {
        PagerPort::Pager(p) if crate::vm::user_pager::is_user(p) => {
            defer(paging, p, Call::DataUnlock { offset, access })
        }
        _ => false,
    }
}

/// Takes the write-backs reaping produced into free slots (frames stay
/// the objects'). Those without room stay queued.
fn take_actions(k: &mut Kernel) {
    while let Some(&a) = k.paging.actions.last() {
        if matches!(a, ObjectAction::DataWrite { .. })
            && k.paging.slots.iter().filter(|s| s.is_some()).count() >= SLOTS - READ_RESERVE
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
            let Some(slot) = k.paging.slots.iter().position(Option::is_none) else {
                return;
            };
            k.paging.actions.pop();
            let Some((device_object, dev_offset)) = k.paging.default.page_out(object, offset)
            else {
                // Swap full (or gone): the page stays in memory.
                refuse_write(k, object, offset);
                continue;
            };
            k.paging.slots[slot] = Some(Transfer {
                object,
                device_object,
                offset,
                dev_offset,
                default: true,
                frames: one(frame),
                count: 1,
                write: true,
                desired: VmProt::NONE,
                submitted: false,
            });
            k.paging.waiting += 1;
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
            let Some(slot) = k.paging.slots.iter().position(Option::is_none) else {
                return;
            };
            k.paging.slots[slot] = Some(Transfer {
                object,
                device_object,
                offset,
                dev_offset: offset.0,
                default: false,
                frames: one(frame),
                count: 1,
                write: true,
                desired: VmProt::NONE,
                submitted: false,
            });
            k.paging.waiting += 1;
        } else if let ObjectAction::DataWrite {
            object,
            pager: PagerPort::Pager(p),
            offset,
            frame,
        } = a
        {
            k.paging.actions.pop();
            crate::vm::user_pager::data_write(k, p, object, offset, frame);
            continue;
        } else if let ObjectAction::Terminate { pager, .. } = a {
            k.paging.actions.pop();
            crate::vm::user_pager::terminate(k, pager);
            continue;
        }
        // Anything else needs nothing sent: a host object's end leaves the
        // device object as it is.
        k.paging.actions.pop();
    }
}

/// Hands waiting transfers to the device. Called on the way out of the
/// kernel and after completions, with the driver lock not held.
pub fn start(k: &mut Kernel) {
    while let Some((p, call)) = k.paging.calls.pop() {
        crate::vm::user_pager::send_call(k, p, call);
    }
    if !k.paging.actions.is_empty() {
        take_actions(k);
    }
    if k.paging.waiting == 0 {
        return;
    }
    let mut guard = virtio_pager::lock();
    let Some(d) = guard.as_mut() else {
        drop(guard);
        fail_waiting(k);
        return;
    };
    let mut sent = false;
    let mut failed = false;
    let (paging, frames) = (&mut k.paging, &mut k.frames);
    // Never more pages in one request than the device takes.
    let max = ((d.max_request_bytes() / PAGE_SIZE) as usize)
        .min(d.max_frames())
        .max(1);
    for (i, slot) in paging.slots.iter_mut().enumerate() {
        let Some(t) = slot.as_mut().filter(|t| !t.submitted) else {
            continue;
        };
        if t.count > max {
            for &f in &t.frames[max..t.count] {
                frames.free(f);
            }
            t.count = max;
        }
        match submit(d, t, i) {
            Ok(()) => {
                t.submitted = true;
                paging.waiting -= 1;
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
    drop(guard);
    if failed {
        fail_waiting(k);
    }
}

fn one(frame: PhysAddr) -> [PhysAddr; CLUSTER] {
    let mut f = [PhysAddr(0); CLUSTER];
    f[0] = frame;
    f
}

fn submit(d: &mut Driver, t: &Transfer, slot: usize) -> Result<(), SubmitError> {
    let len = t.count as u64 * PAGE_SIZE;
    let op = if t.write {
        Op::DataWrite {
            offset: t.dev_offset,
            len,
        }
    } else {
        let mut desired = ACCESS_READ;
        if t.desired.contains(VmProt::WRITE) {
            desired |= ACCESS_WRITE;
        }
        Op::DataRequest {
            offset: t.dev_offset,
            len,
            desired,
        }
    };
    let frames = t.frames[..t.count].iter().map(|&addr| Segment {
        addr,
        len: PAGE_SIZE as u32,
    });
    d.submit(t.device_object, op, PAGE_TOKEN | slot as u64, frames)
}

/// Transfers the device refused outright (no device, object gone, broken
/// queue) end as errors: the faults waiting get MemoryError.
fn fail_waiting(k: &mut Kernel) {
    for i in 0..SLOTS {
        if k.paging.slots[i].is_some_and(|t| !t.submitted) {
            finish(k, i, status::IO_ERROR, 0, 0);
        }
    }
}

/// A page transfer finished (called from the driver's completion path).
pub fn complete(k: &mut Kernel, c: &Completion) {
    let slot = (c.token & !PAGE_TOKEN) as usize;
    if slot < SLOTS && k.paging.slots[slot].is_some_and(|t| t.submitted) {
        finish(k, slot, c.status, c.kind, c.bytes);
    }
}

fn finish(k: &mut Kernel, slot: usize, code: u32, kind: u32, bytes: u64) {
    let Some(mut t) = k.paging.slots[slot].take() else {
        return;
    };
    if !t.submitted {
        k.paging.waiting -= 1;
    }
    let ok = code == status::OK;
    k.paging.failed += u64::from(!ok);
    if t.write {
        k.paging.pages_out += u64::from(ok);
    } else if ok && kind == pager::KIND_PROVIDED {
        k.paging.pages_in += bytes.div_ceil(PAGE_SIZE).min(t.count as u64);
    }
    // A host object's pager that failed (broke protocol, timed out, is
    // gone) is dead from now on (paper §6.1): absent pages fault, resident
    // ones stay readable, dirty ones go to the default pager.
    let died = !t.default && code == status::PAGER_FAILED;
    if code == status::TIMED_OUT && !t.write {
        // Not dead: the waiting threads get the memory exception (the
        // object's policy was `error`; `zero` arrives as unavailable).
        k.paging.timeouts += 1;
        if !k.paging.timeout_reported {
            k.paging.timeout_reported = true;
            crate::kprint!(
                "vm: host object ",
                Dec(u64::from(t.device_object)),
                ": a data_request timed out; the faulting threads get a memory exception (further timeouts are counted in vm_statistics)\n"
            );
        }
    }
    let mut newly_dead = false;
    let mut lost = false;
    let ended = crate::vm::with_objects(k, |objects, frames, m| {
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
            (bytes.div_ceil(PAGE_SIZE) as usize).min(t.count)
        } else {
            0
        };
        let r = if have > 0 {
            objects.data_provided(
                t.object,
                t.offset,
                &t.frames[..have],
                VmProt::NONE,
                false,
                frames,
            )
        } else if ok {
            objects.data_unavailable(t.object, t.offset, t.count as u64 * PAGE_SIZE)
        } else {
            objects.data_error(t.object, t.offset, t.count as u64 * PAGE_SIZE)
        };
        // Frames are the object's only if provided and taken
        // (data_provided frees those it does not need itself).
        let kept = if r.is_ok() { have } else { 0 };
        for &f in &t.frames[kept..t.count] {
            frames.free_frame(f);
        }
        t.count = 0;
        None
    });
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
    // (An external object's end after its last write-back needs nothing
    // sent to a host object.)
    if let Some(ObjectAction::DefaultPagerRelease { object }) = ended {
        k.paging.default.release(object);
    }
    if t.write && t.default {
        k.paging.default.writing = k.paging.default.writing.saturating_sub(1);
    }
    k.wake_page_waiters(t.object);
    if t.write {
        super::default_pager::frames_freed(k);
    }
}

/// Queues the write-backs a pager's call started. Without room to
/// remember them, the pages go back to how they were (dirty, not in
/// transit), rather than waiting for a write no one will make.
pub fn queue_actions(k: &mut Kernel, actions: Vec<ObjectAction>) {
    if actions.is_empty() || k.paging.actions.try_reserve(actions.len()).is_ok() {
        k.paging.actions.extend(actions);
        return;
    }
    for a in actions {
        if let ObjectAction::DataWrite { object, offset, .. } = a {
            unwind_write(k, object, offset);
        }
    }
}

/// A write-back that will not be made: the page is dirty again, not in
/// transit (and an object waiting for its last write may end now).
fn unwind_write(k: &mut Kernel, object: ObjectId, offset: ObjectOffset) {
    let ended = crate::vm::with_objects(k, |objects, frames, m| {
        objects
            .data_write_refused(object, offset, frames, m)
            .ok()
            .flatten()
    });
    if let Some(ObjectAction::DefaultPagerRelease { object }) = ended {
        k.paging.default.release(object);
    }
}

/// A write to swap that cannot be made: the page keeps its data.
fn refuse_write(k: &mut Kernel, object: ObjectId, offset: ObjectOffset) {
    unwind_write(k, object, offset);
    k.paging.default.writing = k.paging.default.writing.saturating_sub(1);
    k.wake_page_waiters(object);
    super::default_pager::frames_freed(k);
}

/// Power-off: hands every queued write-back to the device and polls until
/// all transfers are done, so dirty pages reach their pagers before the
/// power-off sync. Bounded, as the other polled waits are: a stuck pager
/// is ended by the host's timeout.
pub fn drain_at_power_off(k: &mut Kernel) {
    for _ in 0..50_000_000u64 {
        start(k);
        if k.paging.slots.iter().all(Option::is_none) && k.paging.actions.is_empty() {
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
