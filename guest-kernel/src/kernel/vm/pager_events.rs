//! What a host pager says unprompted (paper Table 3-6: data_lock,
//! flush_request, clean_request, cache, pages it pushes, the object's
//! destruction), delivered by the virtio-pager device's event queue. Each
//! event becomes the same manager call a guest pager's message would
//! (guest_kernel::vm::memory_object), so one object behaves the same
//! whoever serves it.
//!
//! A pager cannot flood the kernel: the driver takes at most EVENT_BUDGET
//! events per timer tick (dev/virtio/pager.rs), and none while the time
//! spent on earlier ones exceeds a quarter of the time between ticks (one
//! flush of a large object can cost much more than a tick, above all where
//! ring 0 is emulated). The device holds what waits in a bounded backlog,
//! then refuses the pager's calls. Pushed pages only go into memory that is
//! free beyond pageout's target, so they never evict what tasks use. All of
//! it is counted (vm_statistics).

use crate::kern::clock;
use crate::kern::console::Dec;
use crate::kern::scheduler::Kernel;
use crate::vm::default_pager::FREE_TARGET;
use crate::vm::pager::{host_pager, queue_actions, track_lock_reply};
use guest_kernel::addr::{PAGE_SIZE, PhysAddr};
use guest_kernel::dev::virtio::pager::{EVENT_BUDGET, Event, event};
use guest_kernel::vm::lock_completion::{Reply, ReplyTo};
use guest_kernel::vm::memory_object::ManagerCall;
use guest_kernel::vm::types::{ObjectOffset, VmProt};

/// Events, as vm_statistics reports them.
#[derive(Clone, Copy, Debug, Default)]
pub struct EventCounts {
    /// Events applied to an object.
    pub applied: u64,
    /// Pages a pager pushed that the kernel kept, and those it dropped
    /// (memory short, malformed, already present: the paper lets the
    /// kernel drop pages it did not ask for).
    pub pages_pushed: u64,
    pub pushes_dropped: u64,
    /// Events for no object the kernel knows, or malformed.
    pub ignored: u64,
    /// Ticks that gave no new budget: earlier events still being paid for.
    pub throttled_ticks: u64,
}

/// The share of the time between ticks events may take: 1/4.
const SHARE_SHIFT: u32 = 2;

/// Time spent on events against time allowed, in TSC cycles (the
/// allowance is a share of the cycles per tick, kern/clock.rs).
#[derive(Clone, Copy, Debug, Default)]
pub struct EventClock {
    /// Allowance left; negative while paying for events that overran it.
    balance: i64,
}

/// Timer tick: credits this tick's share and says how many events the
/// driver may take until the next one.
pub fn budget_for_tick(k: &mut Kernel) -> u32 {
    let share = (k.tsc.per_tick(k.timer_hz) >> SHARE_SHIFT).min(i64::MAX as u64) as i64;
    let c = &mut k.paging.event_clock;
    // Unused allowance does not pile up: at most one tick's share.
    c.balance = c.balance.saturating_add(share).min(share);
    if c.balance >= 0 {
        EVENT_BUDGET
    } else {
        k.paging.events.throttled_ticks += 1;
        0
    }
}

/// Applies one event; returns a fresh frame for the driver to post in
/// place of a pushed page the kernel kept (only for an event with data).
/// Its time is charged to the event clock.
pub fn on_event(k: &mut Kernel, e: &Event) -> Option<PhysAddr> {
    let start = clock::now();
    let fresh = apply(k, e);
    let spent = clock::now().saturating_sub(start).min(i64::MAX as u64) as i64;
    let c = &mut k.paging.event_clock;
    c.balance = c.balance.saturating_sub(spent);
    fresh
}

fn apply(k: &mut Kernel, e: &Event) -> Option<PhysAddr> {
    let Some(object) = k.vm.objects.lookup_pager(host_pager(e.object)) else {
        k.paging.events.ignored += 1;
        return None;
    };
    let offset = ObjectOffset(e.offset);
    let lock = VmProt::from_bits(u64::from(e.lock));
    let mut kept = [PhysAddr(0)];
    let mut fresh = None;
    let call = match (e.kind, lock) {
        (event::LOCK_REQUEST, Some(lock)) => ManagerCall::LockRequest {
            offset,
            size: e.length,
            lock: Some(lock),
            clean: e.flags & (event::F_CLEAN | event::F_FLUSH) != 0,
            flush: e.flags & event::F_FLUSH != 0,
        },
        (event::CACHE, _) => ManagerCall::Cache {
            may_cache: e.flags & event::F_MAY_CACHE != 0,
        },
        (event::DATA_PROVIDED, Some(lock)) => {
            let Some(data) = e.data.filter(|_| e.length >= PAGE_SIZE) else {
                k.paging.events.pushes_dropped += 1;
                return None;
            };
            // Only into memory no one needs: above pageout's target.
            if k.frames.free_frames() <= FREE_TARGET {
                k.paging.events.pushes_dropped += 1;
                return None;
            }
            let Some(f) = k.frames.alloc() else {
                k.paging.events.pushes_dropped += 1;
                return None;
            };
            // The driver posts the fresh frame; the VM owns the pushed one.
            fresh = Some(f.addr);
            kept[0] = data;
            k.paging.events.pages_pushed += 1;
            ManagerCall::DataProvided {
                offset,
                data: &kept,
                lock,
            }
        }
        (event::DESTROY, _) => ManagerCall::Destroy,
        _ => {
            k.paging.events.ignored += 1;
            return None;
        }
    };
    let destroy = matches!(call, ManagerCall::Destroy)
        && k.vm.objects.get(object).is_ok_and(|o| !o.pager_dead());
    let actions = crate::vm::with_objects(k, |objects, frames, m| {
        objects.manager_call(object, call, frames, m)
    });
    match actions {
        Ok(a) => {
            k.paging.events.applied += 1;
            let queued = queue_actions(k, a);
            // (The driver clears F_REPLY unless F_LOCK_COMPLETED was agreed.)
            if e.kind == event::LOCK_REQUEST && e.flags & event::F_REPLY != 0 && !queued {
                // Its writes were not made: no reply, never a false one.
                k.paging.lock_replies.refused += 1;
            } else if e.kind == event::LOCK_REQUEST && e.flags & event::F_REPLY != 0 {
                let reply = Reply {
                    to: ReplyTo::Device {
                        object: e.object,
                        tag: e.tag,
                    },
                    offset: e.offset,
                    length: e.length,
                };
                track_lock_reply(k, object, reply);
            }
        }
        Err(_) => k.paging.events.ignored += 1,
    }
    if destroy {
        k.paging.dead_objects += 1;
        crate::kprint!(
            "vm: host object ",
            Dec(u64::from(e.object)),
            ": destroyed by its pager, object dead (absent pages fault, dirty pages go to the default pager)\n"
        );
    }
    k.wake_page_waiters(object);
    fresh
}
