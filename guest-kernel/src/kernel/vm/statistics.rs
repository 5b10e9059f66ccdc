//! The VM's counts at the end of a run (`vmm run --stats` asks for them
//! with `vm_stats=1`): the guest's side of the per-object numbers the host
//! prints, in one line the host (and tests) can parse.

use crate::kern::console::Dec;
use crate::kern::scheduler::Kernel;
use crate::kprint;

/// Prints `vm_statistics: key=value ...` on the console.
pub fn report(k: &Kernel) {
    let c = k.vm.counters;
    let p = &k.paging;
    let deferred = crate::dev::virtio_pager::lock()
        .as_ref()
        .map_or(0, |d| d.stats.events_deferred);
    kprint!(
        "vm_statistics: faults=",
        Dec(c.faults),
        " zero_fill=",
        Dec(c.zero_fill),
        " cow=",
        Dec(c.cow_faults),
        " soft=",
        Dec(c.soft_faults),
        " pages_in=",
        Dec(p.pages_in),
        " paged_in_at_once=",
        Dec(p.at_once),
        " spins=",
        Dec(p.spins),
        " spin_timeouts=",
        Dec(p.spin_timeouts),
        " spin_us=",
        Dec(k.tsc.micros(p.spin_cycles, k.timer_hz)),
        " pages_out=",
        Dec(p.pages_out),
        " transfer_errors=",
        Dec(p.failed),
        " timeouts=",
        Dec(p.timeouts),
        " dead_objects=",
        Dec(p.dead_objects),
        " failed_writes=",
        Dec(p.failed_writes),
        " lost_pages=",
        Dec(p.lost_pages + k.vm.objects.lost_pages),
        " swap_outs=",
        Dec(p.default.pageouts),
        " swap_ins=",
        Dec(p.default.pageins),
        " free=",
        Dec(k.frames.free_frames()),
        " objects=",
        Dec(k.vm.objects.count() as u64),
        " pager_events=",
        Dec(p.events.applied),
        " events_ignored=",
        Dec(p.events.ignored),
        " pages_pushed=",
        Dec(p.events.pages_pushed),
        " pushes_dropped=",
        Dec(p.events.pushes_dropped),
        " events_deferred=",
        Dec(deferred),
        " events_throttled=",
        Dec(p.events.throttled_ticks),
        " lock_replies_refused=",
        Dec(p.lock_replies.refused),
        " nmis=",
        Dec(crate::arch::trap::NMIS.load(core::sync::atomic::Ordering::Relaxed)),
        "\n"
    );
}
