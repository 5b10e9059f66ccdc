//! A benchmark's guest run once more under `--kernel-profile`: where the
//! kernel instructions between two marks go, per unit of the benchmark's
//! work (`vmm bench fault --profile`).

use crate::bench_ipc::guest_marks;
use crate::error::{Result, VmmError};
use crate::images;
use crate::kprof::{self, Profile, Report, Symbols, Units};
use std::path::Path;

/// Functions shown; the rest are summed on one line.
const TOP: usize = 20;

/// Runs the guest (`run_args`, then `init`) profiling from `mark` to
/// `mark + 1`, with the report and raw histogram at `file` (and
/// `file.raw`), and returns the lines to print: the top functions per
/// unit, then the profile's total next to KVM's own count between the same
/// marks, and the interrupts per unit, which stepping inflates.
pub(crate) fn profile_span(
    bench: &str,
    run_args: &[&str],
    init: &[&str],
    mark: u32,
    units: &Units,
    file: &Path,
) -> Result<Vec<String>> {
    let spec = format!("{mark}:{}", file.display());
    let mut args = run_args.to_vec();
    args.extend(["--kernel-profile", &spec]);
    let (text, marks) = guest_marks(bench, &args, init)?;
    let raw_path = kprof::raw_path(file);
    let raw = std::fs::read_to_string(&raw_path)?;
    let counts = kprof::parse_raw(&raw)
        .map_err(|e| VmmError::KernelProfile(format!("{}: {e}", raw_path.display())))?;
    let at = |id: u64| marks.iter().find(|m| m[0] == id);
    let (Some(a), Some(b)) = (at(u64::from(mark)), at(u64::from(mark) + 1)) else {
        return Err(VmmError::Guest(format!(
            "{bench} bench: no marks {mark}-{} in the profiled run: {text}",
            mark + 1
        )));
    };
    let profile = Profile {
        mark,
        spans: marks.iter().filter(|m| m[0] == u64::from(mark)).count() as u32,
        unfinished: false,
        counts,
        user_steps: 0,
    };
    // The child booted this binary's own kernel: the same symbols.
    let symbols = Symbols::from_elf(images::KERNEL)
        .map_err(|e| VmmError::KernelProfile(format!("the built-in kernel: {e}")))?;
    let report = Report::new(&profile, &symbols);
    let mut out = report.lines(Some(units), Some(TOP));
    let k = units.count.max(1) as f64;
    let kvm = b[2].saturating_sub(a[2]);
    let total = report.total;
    out.push(format!(
        "  KVM's own count between the same marks (insn_emulation): {kvm} ({:.1} per {}); the profile has {:.2}% of it",
        kvm as f64 / k,
        units.name,
        100.0 * total as f64 / kvm.max(1) as f64
    ));
    out.push(format!(
        "  interrupts per {} in this run: {:.2} (timer ticks follow the wall clock, which stepping stretches)",
        units.name,
        b[4].saturating_sub(a[4]) as f64 / k
    ));
    Ok(out)
}
