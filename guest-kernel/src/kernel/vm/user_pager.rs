//! Pagers that are guest tasks (paper §3.4): a memory object is a port
//! whose receive right a task holds. The kernel sends it the Table 3-5
//! calls as messages (libmach::memory_object has the wire format) with a
//! send right to the object's control port, a kernel port the pager's
//! Table 3-6 answers arrive on and the kernel serves here. Up to the
//! object's port this is the path a host object's faults take too
//! (kernel/vm/pager.rs is the other pager).

use crate::kern::scheduler::Kernel;
use alloc::vec::Vec;
use guest_kernel::addr::{PAGE_SIZE, PhysAddr};
use guest_kernel::ipc::{Effects, KObject, Kmsg, PortId};
use guest_kernel::vm::lock_completion::{Reply, ReplyTo};
use guest_kernel::vm::memory_object::ManagerCall;
use guest_kernel::vm::object::PagerRef;
use guest_kernel::vm::page::FrameSource;
use guest_kernel::vm::types::{ObjectId, ObjectOffset, VmProt};
use libmach::abi::{MSG_SUCCESS, PORT_SEND, SEND_INVALID_DEST};
use libmach::memory_object::{self as mo, Fields};

/// Pager references of guest pagers: this bit plus a serial number.
const USER: u64 = 1 << 61;
/// Objects served by guest pagers at once.
const MAX_PAGERS: usize = 256;
/// Pages one data_provided may bring (its inline data fits a message).
const MAX_PROVIDED: usize = 15;

/// One object a guest pager serves.
#[derive(Clone, Copy, Debug)]
struct UserPager {
    pager: PagerRef,
    object: ObjectId,
    /// The memory object: the pager's port.
    memory_object: PortId,
    /// The kernel port its answers come to.
    control: PortId,
}

#[derive(Default)]
pub struct UserPagers {
    list: Vec<UserPager>,
    next: u64,
}

pub fn is_user(p: PagerRef) -> bool {
    p.0 & USER != 0
}

fn find(k: &Kernel, p: PagerRef) -> Option<UserPager> {
    k.user_pagers.list.iter().find(|u| u.pager == p).copied()
}

/// The pager reference already standing for `memory_object`, if any (its
/// object is then entered again, not made twice).
pub fn pager_of(k: &Kernel, memory_object: PortId) -> Option<PagerRef> {
    k.user_pagers
        .list
        .iter()
        .find(|u| u.memory_object == memory_object)
        .map(|u| u.pager)
}

/// A new pager reference for `memory_object` (before its object exists).
pub fn new_pager(k: &mut Kernel) -> Result<PagerRef, u32> {
    if k.user_pagers.list.len() >= MAX_PAGERS || k.user_pagers.list.try_reserve(1).is_err() {
        return Err(libmach::abi::KERN_RESOURCE_SHORTAGE);
    }
    k.user_pagers.next += 1;
    Ok(PagerRef(USER | k.user_pagers.next))
}

/// pager_init: the object for `pager` exists now; its control port is
/// made and the pager told. Err if the pager cannot be told (its port is
/// dead): the caller gives the object up.
pub fn init(
    k: &mut Kernel,
    pager: PagerRef,
    object: ObjectId,
    memory_object: PortId,
) -> Result<(), u32> {
    let control = k.ipc.kernel_port(KObject::MemoryControl(object.to_raw()))?;
    let u = UserPager {
        pager,
        object,
        memory_object,
        control,
    };
    let head = Fields::encode_head(PAGE_SIZE, 0, 0);
    if let Err(e) = send(k, &u, mo::MEMORY_OBJECT_INIT, &head) {
        let mut fx = Effects::default();
        k.ipc.destroy_kernel_port(control, &mut fx);
        crate::ipc::apply(k, fx);
        return Err(e);
    }
    // Room was reserved by new_pager.
    k.user_pagers.list.push(u);
    Ok(())
}

fn send(k: &mut Kernel, u: &UserPager, id: i32, inline: &[u8]) -> Result<(), u32> {
    let mut fx = Effects::default();
    let r = k.ipc.kernel_send(
        u.memory_object,
        id,
        &[(u.control, PORT_SEND)],
        inline,
        None,
        &mut fx,
    );
    crate::ipc::apply(k, fx);
    r
}

/// Sends a Table 3-5 call with header fields only. A pager whose port is
/// dead is dead: its object's outstanding and later requests fail.
fn call(k: &mut Kernel, pager: PagerRef, id: i32, a: u64, b: u64, c: u32) {
    let Some(u) = find(k, pager) else {
        return;
    };
    if send(k, &u, id, &Fields::encode_head(a, b, c)).is_err() {
        died(k, u.object);
    }
}

fn died(k: &mut Kernel, object: ObjectId) {
    crate::vm::with_objects(k, |objects, _, _| {
        let _ = objects.pager_died(object);
    });
    k.wake_page_waiters(object);
}

/// A fault's call (deferred by kernel/vm/pager.rs to the way out of the
/// kernel): pager_data_request or pager_data_unlock.
pub fn send_call(k: &mut Kernel, pager: PagerRef, c: super::pager::Call) {
    match c {
        super::pager::Call::DataRequest { offset, desired } => {
            let d = u32::from(desired.bits());
            call(
                k,
                pager,
                mo::MEMORY_OBJECT_DATA_REQUEST,
                offset.0,
                PAGE_SIZE,
                d,
            );
        }
        super::pager::Call::DataUnlock { offset, access } => {
            let a = u32::from(access.bits());
            call(
                k,
                pager,
                mo::MEMORY_OBJECT_DATA_UNLOCK,
                offset.0,
                PAGE_SIZE,
                a,
            );
        }
    }
}

/// pager_data_write of one page: the data travels in the message, so the
/// write is done (for the kernel) once it is sent.
pub fn data_write(
    k: &mut Kernel,
    pager: PagerRef,
    object: ObjectId,
    offset: ObjectOffset,
    frame: PhysAddr,
) {
    let sent = find(k, pager).is_some_and(|u| {
        let mut body = Vec::new();
        if body
            .try_reserve_exact(mo::FIELDS + PAGE_SIZE as usize)
            .is_err()
        {
            return false;
        }
        body.extend_from_slice(&Fields::encode_head(offset.0, PAGE_SIZE, 0));
        // SAFETY: the page's frame, held busy by the object until
        // data_write_done below, through the direct map.
        let page = unsafe {
            core::slice::from_raw_parts(crate::arch::mm::phys_to_virt(frame), PAGE_SIZE as usize)
        };
        body.extend_from_slice(page);
        send(k, &u, mo::MEMORY_OBJECT_DATA_WRITE, &body).is_ok()
    });
    // Not sent (the pager is dead): the page keeps its data, dirty, and
    // pageout takes it to the default pager from now on; unless the object
    // is ending, when it is lost (counted).
    let ending =
        k.vm.objects
            .get(object)
            .is_ok_and(|o| o.state() == guest_kernel::vm::object::ObjectState::Terminating);
    k.paging.lost_pages += u64::from(!sent && ending);
    let ended = crate::vm::with_objects(k, |objects, frames, m| {
        let r = if sent {
            objects.data_write_done(object, offset, frames, m)
        } else {
            objects.data_write_refused(object, offset, frames, m)
        };
        r.ok().flatten()
    });
    // The last write-back of an object that ended: its termination (which
    // was dropped here, so a pager whose object ended with modified pages
    // never heard of it, and its control port stayed).
    if let Some(a) = ended {
        let _ = crate::vm::pager::queue_actions(k, alloc::vec![a]);
    }
    if !sent {
        died(k, object);
    }
    k.wake_page_waiters(object);
}

/// The object is gone: pager_terminate, and its control port goes.
pub fn terminate(k: &mut Kernel, pager: PagerRef) {
    let Some(i) = k.user_pagers.list.iter().position(|u| u.pager == pager) else {
        return;
    };
    let u = k.user_pagers.list.swap_remove(i);
    let _ = send(
        k,
        &u,
        mo::MEMORY_OBJECT_TERMINATE,
        &Fields::encode_head(0, 0, 0),
    );
    let mut fx = Effects::default();
    k.ipc.destroy_kernel_port(u.control, &mut fx);
    crate::ipc::apply(k, fx);
}

/// A Table 3-6 call arrived on `object`'s control port. One-way: no reply;
/// a malformed call is dropped (the send itself succeeds, as for any
/// message a server ignores).
pub fn serve(k: &mut Kernel, raw: u64, km: Kmsg, fx: &mut Effects) -> u32 {
    let object = ObjectId::from_raw(raw);
    let id = km.id();
    let Some(f) = km.inline().and_then(Fields::decode) else {
        k.ipc.kmsg_destroy(km, fx);
        return MSG_SUCCESS;
    };
    let (off, size, c) = (ObjectOffset(f.a), f.b, f.c);
    let lock = VmProt::from_bits(u64::from(c));
    // The frames for data_provided are filled from the message here, then
    // the message goes.
    let mut frames_in = [PhysAddr(0); MAX_PROVIDED];
    let mut n = 0;
    if id == mo::MEMORY_OBJECT_DATA_PROVIDED {
        n = fill_frames(k, f.data, &mut frames_in);
    }
    // (Read before the message goes.)
    let locking = (id == mo::MEMORY_OBJECT_LOCK_REQUEST).then(|| lock_request(c, f.data));
    k.ipc.kmsg_destroy(km, fx);
    if k.vm.objects.get(object).is_err() {
        for &fr in &frames_in[..n] {
            k.frames.free(fr);
        }
        return SEND_INVALID_DEST;
    }
    let data = &frames_in[..n];
    let mut reply_cookie = None;
    let call = match (id, lock) {
        (mo::MEMORY_OBJECT_DATA_PROVIDED, Some(lock)) if n > 0 => ManagerCall::DataProvided {
            offset: off,
            data,
            lock,
        },
        (mo::MEMORY_OBJECT_DATA_UNAVAILABLE, _) => {
            ManagerCall::DataUnavailable { offset: off, size }
        }
        (mo::MEMORY_OBJECT_DATA_ERROR, _) => ManagerCall::DataError { offset: off, size },
        (mo::MEMORY_OBJECT_DATA_LOCK, Some(lock)) => ManagerCall::LockRequest {
            offset: off,
            size,
            lock: Some(lock),
            clean: false,
            flush: false,
        },
        (mo::MEMORY_OBJECT_FLUSH_REQUEST | mo::MEMORY_OBJECT_CLEAN_REQUEST, _) => {
            ManagerCall::LockRequest {
                offset: off,
                size,
                lock: None,
                clean: true,
                flush: id == mo::MEMORY_OBJECT_FLUSH_REQUEST,
            }
        }
        (mo::MEMORY_OBJECT_CACHE, _) => ManagerCall::Cache { may_cache: c != 0 },
        (mo::MEMORY_OBJECT_LOCK_REQUEST, _) => match locking.flatten() {
            Some((lock, clean, flush, cookie)) => {
                reply_cookie = Some(cookie);
                ManagerCall::LockRequest {
                    offset: off,
                    size,
                    lock,
                    clean,
                    flush,
                }
            }
            None => return MSG_SUCCESS,
        },
        _ => {
            // Malformed (a bad lock value) or unknown: dropped, with the
            // frames it brought.
            for &fr in data {
                k.frames.free(fr);
            }
            return MSG_SUCCESS;
        }
    };
    let actions = crate::vm::with_objects(k, |objects, frames, m| {
        objects
            .manager_call(object, call, frames, m)
            .unwrap_or_default()
    });
    if !crate::vm::pager::queue_actions(k, actions) && reply_cookie.take().is_some() {
        // Its writes were not made: no reply, never a false one.
        k.paging.lock_replies.refused += 1;
    }
    if let (Some(cookie), Some(pager)) = (
        reply_cookie,
        k.user_pagers
            .list
            .iter()
            .find(|u| u.object == object)
            .map(|u| u.pager),
    ) {
        let reply = Reply {
            to: ReplyTo::Task { pager, cookie },
            offset: off.0,
            length: size,
        };
        crate::vm::pager::track_lock_reply(k, object, reply);
    }
    k.wake_page_waiters(object);
    MSG_SUCCESS
}

/// MEMORY_OBJECT_LOCK_REQUEST's lock (None: unchanged), clean, flush and
/// cookie; None if malformed (unknown bits, a bad lock value, no cookie):
/// dropped as any malformed call.
fn lock_request(c: u32, data: &[u8]) -> Option<(Option<VmProt>, bool, bool, u64)> {
    let known = mo::LOCK_VALUE | mo::LOCK_SET | mo::LOCK_CLEAN | mo::LOCK_FLUSH;
    if c & !known != 0 {
        return None;
    }
    let lock = if c & mo::LOCK_SET != 0 {
        Some(VmProt::from_bits(u64::from(c & mo::LOCK_VALUE))?)
    } else {
        None
    };
    let cookie = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let flush = c & mo::LOCK_FLUSH != 0;
    Some((lock, flush || c & mo::LOCK_CLEAN != 0, flush, cookie))
}

/// A MEMORY_OBJECT_LOCK_REQUEST is done: the completion goes to the
/// memory object port, behind the data_writes it waited for. A pager whose
/// port is dead is dead.
pub fn lock_completed(k: &mut Kernel, pager: PagerRef, offset: u64, length: u64, cookie: u64) {
    let Some(u) = find(k, pager) else {
        return;
    };
    let mut body = [0u8; mo::FIELDS + 8];
    body[..mo::FIELDS].copy_from_slice(&Fields::encode_head(offset, length, 0));
    body[mo::FIELDS..].copy_from_slice(&cookie.to_le_bytes());
    if send(k, &u, mo::MEMORY_OBJECT_LOCK_COMPLETED, &body).is_err() {
        died(k, u.object);
    }
}

/// Copies data_provided's pages into fresh frames; how many (whole pages
/// only, at most MAX_PROVIDED).
fn fill_frames(k: &mut Kernel, data: &[u8], out: &mut [PhysAddr; MAX_PROVIDED]) -> usize {
    let mut n = 0;
    for page in data.chunks_exact(PAGE_SIZE as usize).take(MAX_PROVIDED) {
        let Some(f) = k.frames.alloc_frame() else {
            break;
        };
        // SAFETY: a frame just taken, through the direct map.
        unsafe {
            core::ptr::copy_nonoverlapping(
                page.as_ptr(),
                crate::arch::mm::phys_to_virt(f.addr),
                PAGE_SIZE as usize,
            )
        };
        out[n] = f.addr;
        n += 1;
    }
    n
}
