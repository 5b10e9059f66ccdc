//! `vmm run --stats`: everything the host measured, formatted here and only
//! here. The numbers are counted where they happen: KVM's per-vCPU stats
//! (stats.rs), the virtio-pager device (devices/src/pager/metrics.rs) and
//! each object's pager calls (pager_backends::Instrumented). The guest's own
//! VM counts are printed by the guest kernel on its console.

use crate::bench::STATS_TAG;
use crate::run::RunReport;
use devices::pager::{ObjectEvents, ObjectThrottle};
use guest_kernel::abi::{MILESTONE_INIT_START, MILESTONE_USER_BASE};
use pager_backends::{LatencySummary, StatsSnapshot};
use std::fmt::Write;
use std::time::Duration;

/// What one `--object` saw, read after the final sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectReport {
    pub name: String,
    /// As given on the command line.
    pub uri: String,
    /// The pager calls made through the device and the final sync.
    pub pager: StatsSnapshot,
    /// Pager-initiated events delivered to the guest.
    pub events: ObjectEvents,
    /// Requests its rate limit (`?ops=`, `?bandwidth=`) parked.
    pub throttle: ObjectThrottle,
}

/// The lines `--stats` prints on stderr, in order.
pub fn stats_lines(report: &RunReport) -> Vec<String> {
    let mut out = Vec::new();
    let t = &report.totals;
    out.push(format!(
        "vmm: vCPU 0: {} exits, {} emulated kernel instructions",
        t.exits(),
        t.kernel_instructions()
    ));
    let mut nonzero: Vec<_> = t.0.iter().filter(|(_, v)| *v != 0).collect();
    nonzero.sort();
    for (name, v) in nonzero {
        out.push(format!("vmm:   {name} = {v}"));
    }
    if let Some(m) = report
        .milestones
        .iter()
        .find(|m| m.id == MILESTONE_INIT_START)
    {
        out.push(format!(
            "vmm: boot to init: {} kernel instructions, {} exits",
            m.stats.kernel_instructions(),
            m.stats.exits()
        ));
        out.push(format!(
            "{STATS_TAG} init_start_ns={} boot_insn={} boot_exits={}",
            m.mono_ns,
            m.stats.kernel_instructions(),
            m.stats.exits()
        ));
    }
    for m in &report.milestones {
        if let Some(mark) = m.id.checked_sub(MILESTONE_USER_BASE) {
            out.push(format!(
                "{STATS_TAG} mark={mark} ns={} insn={} exits={} irqs={} mmio={} doorbells={}",
                m.mono_ns,
                m.stats.kernel_instructions(),
                m.stats.exits(),
                m.stats.get("irq_injections"),
                m.stats.get("mmio_exits"),
                m.doorbells
            ));
            // Every counter, so a benchmark can say where the exits of a
            // span went (`vmm bench fault` separates kvm_pvm's own page
            // fault handling from the kernel's exits).
            let all: Vec<String> = m.stats.0.iter().map(|(n, v)| format!("{n}={v}")).collect();
            out.push(format!("{STATS_TAG} counters_at={mark} {}", all.join(" ")));
        }
    }
    if let Some(p) = &report.pager_stats {
        out.push(format!(
            "vmm: virtio-pager: {} requests, {} completed, {} rejected, {} interrupts",
            p.requests, p.completed, p.rejected, p.interrupts
        ));
    }
    for o in &report.objects {
        out.extend(object_lines(o));
    }
    // The same for benchmarks to read (vmm bench fault), after the blocks.
    for o in &report.objects {
        let (s, l) = (&o.pager, &o.pager.request_latency);
        out.push(format!(
            "{STATS_TAG} object={} requests={} bytes={} request_ns={} p50_ns={} p99_ns={} \
             throttled={} parked_ns={}",
            o.name,
            s.data_requests,
            s.bytes_in,
            s.request_time.as_nanos(),
            l.p50.as_nanos(),
            l.p99.as_nanos(),
            o.throttle.throttled,
            o.throttle.parked_time.as_nanos()
        ));
    }
    out
}

/// Width of the row labels in an object's block, so values line up.
const LABEL: usize = 13;

/// One object's block: a header line, then one labelled row per group of
/// `key=value` fields; one line only for an object the guest never used.
pub fn object_lines(o: &ObjectReport) -> Vec<String> {
    let s = &o.pager;
    let e = &o.events;
    let t = &o.throttle;
    let head = format!("vmm: object {} ({})", o.name, o.uri);
    if quiet(o) {
        return vec![format!(
            "{head}: no paging (init={} terminate={} sync={})",
            s.inits, s.terminates, s.syncs
        )];
    }
    let row = |label: &str, fields: String| format!("vmm:   {label:<LABEL$}{fields}");
    vec![
        head,
        row(
            "requests",
            format!(
                "init={} data_request={} data_write={} data_unlock={} terminate={} sync={} \
                 throttled={} parked_time={}",
                s.inits,
                s.data_requests,
                s.data_writes,
                s.data_unlocks,
                s.terminates,
                s.syncs,
                t.throttled,
                duration(t.parked_time)
            ),
        ),
        row(
            "events",
            format!(
                "lock_request={} cache={} data_provided={} destroy={} refused={}",
                e.lock_requests, e.cache, e.data_provided, e.destroy, e.refused
            ),
        ),
        row(
            "paging",
            format!(
                "pages_in={} pages_out={} bytes_in={} bytes_out={} unavailable={}",
                s.pages_in, s.pages_out, s.bytes_in, s.bytes_out, s.unavailable
            ),
        ),
        row(
            "failures",
            format!(
                "errors={} timeouts={} dead={}",
                s.errors,
                s.timeouts,
                if s.dead { "yes" } else { "no" }
            ),
        ),
        row("data_request", latency(&s.request_latency)),
        row("data_write", latency(&s.write_latency)),
    ]
}

/// Nothing but lifecycle calls that all went well and were never held
/// back by a rate limit (an object the guest
/// never touched still gets the VMM's sync at exit; swap gets an init).
fn quiet(o: &ObjectReport) -> bool {
    let s = &o.pager;
    s.data_requests == 0
        && s.data_writes == 0
        && s.data_unlocks == 0
        && s.errors == 0
        && s.timeouts == 0
        && !s.dead
        && o.events == ObjectEvents::default()
        && o.throttle == ObjectThrottle::default()
}

/// `n=COUNT p50=.. p99=.. max=..`; quantiles of nothing are left out.
fn latency(l: &LatencySummary) -> String {
    let mut s = format!("n={}", l.count);
    if l.count > 0 {
        let _ = write!(
            s,
            " p50={} p99={} max={}",
            duration(l.p50),
            duration(l.p99),
            duration(l.max)
        );
    }
    s
}

/// Three significant digits or so, in the unit that suits (ASCII `us`, so
/// the output stays easy to grep and parse).
pub fn duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}us", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.2}s", ns as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Snapshot;
    use crate::vcpu::Outcome;

    fn used() -> ObjectReport {
        ObjectReport {
            name: "h".into(),
            uri: "file:/etc/hostname?ro".into(),
            pager: StatsSnapshot {
                inits: 1,
                data_requests: 3,
                syncs: 2,
                pages_in: 5,
                bytes_in: 5 * 4096,
                unavailable: 1,
                errors: 2,
                timeouts: 1,
                dead: true,
                request_latency: LatencySummary {
                    count: 3,
                    p50: Duration::from_nanos(21_480),
                    p99: Duration::from_micros(1_250),
                    max: Duration::from_secs(2),
                },
                ..StatsSnapshot::default()
            },
            events: ObjectEvents {
                lock_requests: 4,
                cache: 1,
                data_provided: 2,
                destroy: 1,
                refused: 0,
            },
            throttle: ObjectThrottle {
                throttled: 2,
                parked_time: Duration::from_micros(1_500),
            },
        }
    }

    #[test]
    fn a_used_object_is_a_block_of_aligned_rows() {
        let lines = object_lines(&used());
        assert_eq!(
            lines,
            [
                "vmm: object h (file:/etc/hostname?ro)",
                "vmm:   requests     init=1 data_request=3 data_write=0 data_unlock=0 terminate=0 sync=2 throttled=2 parked_time=1.50ms",
                "vmm:   events       lock_request=4 cache=1 data_provided=2 destroy=1 refused=0",
                "vmm:   paging       pages_in=5 pages_out=0 bytes_in=20480 bytes_out=0 unavailable=1",
                "vmm:   failures     errors=2 timeouts=1 dead=yes",
                "vmm:   data_request n=3 p50=21.5us p99=1.25ms max=2.00s",
                "vmm:   data_write   n=0",
            ]
        );
        // Every row's fields start in the same column.
        let col = |l: &str| l.find('=').and_then(|eq| l[..eq].rfind(' '));
        let cols: Vec<_> = lines[1..].iter().map(|l| col(l)).collect();
        assert!(cols.windows(2).all(|w| w[0] == w[1]), "{cols:?}");
    }

    #[test]
    fn an_object_without_paging_is_one_line() {
        let mut o = ObjectReport {
            name: "swap".into(),
            uri: "anon?size=1073741824".into(),
            ..ObjectReport::default()
        };
        // Lifecycle calls alone (the default pager's init, the VMM's
        // final sync) fit on one line...
        o.pager.inits = 1;
        o.pager.syncs = 2;
        assert_eq!(
            object_lines(&o),
            ["vmm: object swap (anon?size=1073741824): no paging (init=1 terminate=0 sync=2)"]
        );
        // ...but a request, a failure, or an event delivered get the block.
        for change in [
            |o: &mut ObjectReport| o.pager.data_requests = 1,
            |o: &mut ObjectReport| o.pager.data_writes = 1,
            |o: &mut ObjectReport| o.pager.data_unlocks = 1,
            |o: &mut ObjectReport| o.pager.errors = 1,
            |o: &mut ObjectReport| o.pager.timeouts = 1,
            |o: &mut ObjectReport| o.pager.dead = true,
            |o: &mut ObjectReport| o.events.cache = 1,
            |o: &mut ObjectReport| o.throttle.throttled = 1,
        ] {
            let mut o = o.clone();
            change(&mut o);
            assert_eq!(object_lines(&o).len(), 7, "{o:?}");
        }
    }

    #[test]
    fn durations_in_the_unit_that_suits() {
        assert_eq!(duration(Duration::ZERO), "0ns");
        assert_eq!(duration(Duration::from_nanos(999)), "999ns");
        assert_eq!(duration(Duration::from_nanos(1_000)), "1.0us");
        assert_eq!(duration(Duration::from_nanos(999_940)), "999.9us");
        assert_eq!(duration(Duration::from_micros(4_560)), "4.56ms");
        assert_eq!(duration(Duration::from_millis(61_000)), "61.00s");
    }

    #[test]
    fn objects_follow_the_device_line_in_table_order() {
        let report = RunReport {
            outcome: Outcome::Exited(0),
            milestones: Vec::new(),
            totals: Snapshot(vec![("exits".into(), 7)]),
            pager_stats: Some(Default::default()),
            objects: vec![
                used(),
                ObjectReport {
                    name: "z".into(),
                    uri: "zero".into(),
                    ..ObjectReport::default()
                },
            ],
            sync_failures: 0,
            kernel_profile: None,
        };
        let lines = stats_lines(&report);
        assert_eq!(
            lines[0],
            "vmm: vCPU 0: 7 exits, 0 emulated kernel instructions"
        );
        let dev = lines
            .iter()
            .position(|l| l.starts_with("vmm: virtio-pager:"))
            .expect("device line");
        assert_eq!(lines[dev + 1], "vmm: object h (file:/etc/hostname?ro)");
        assert_eq!(
            lines[dev + 8],
            "vmm: object z (zero): no paging (init=0 terminate=0 sync=0)"
        );
        assert_eq!(lines.len(), dev + 9 + report.objects.len());
        assert!(lines[dev + 9].starts_with(&format!("{STATS_TAG} object=h requests=")));
        assert!(
            lines[dev + 9].ends_with(" throttled=2 parked_ns=1500000"),
            "{}",
            lines[dev + 9]
        );
    }
}
