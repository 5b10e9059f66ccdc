//! The benchmarks run end to end at tiny sizes and print every row they
//! promise. Nothing here judges a time: only that the figures are there.

mod support;
use support::{kvm_available, vmm};

#[test]
fn bench_fault_prints_every_row() {
    if !kvm_available("bench_fault_prints_every_row") {
        return;
    }
    let out = vmm(&["bench", "fault", "--pages", "16", "--mib", "1"], &[]);
    assert_eq!(out.status, Some(0), "{}\n{}", out.stdout, out.stderr);
    let rows = [
        "(a) random faults: 16 pages",
        "guest task (virtio-pager, file)",
        "host process (userfaultfd)",
        "(b) sequential page-in: every word of a 1 MiB file",
        "host process (mmap)",
        "ratio guest / mmap",
        "(c) split",
        "per random fault",
        "per sequential page",
        "(d) from the vCPU's KVM statistics",
        "kernel instructions per fault <= 1500:",
        "exits per fault <= 1:",
        "interrupts per fault <= 1:",
        "far fewer per page when clustered",
        "p50 <= 1.5x userfaultfd:",
        "throughput >= 1.0x host mmap:",
    ];
    for row in rows {
        assert!(out.line(row).is_some(), "no '{row}' in:\n{}", out.stdout);
    }
    // Every random fault asks the device, which idles between them: about
    // one doorbell each (the last column of (d)'s row).
    let bells: f64 = out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("(d)"))
        .find(|l| l.trim_start().starts_with("per random fault"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no doorbells per random fault in:\n{}", out.stdout));
    assert!(
        bells >= 0.5,
        "{bells} doorbells per random fault:\n{}",
        out.stdout
    );
    // Where userfaultfd is allowed, the peer and the ratio are there too.
    if !out.stdout.contains("unavailable") {
        assert!(
            out.line("ratio guest / userfaultfd").is_some(),
            "{}",
            out.stdout
        );
    }
}

/// `--profile` adds the random case once more under the kernel profiler:
/// the fault path's functions per fault, and a total that agrees with
/// KVM's count between the same marks (a count, not a time).
#[test]
fn bench_fault_profile_shows_where_a_faults_instructions_go() {
    if !kvm_available("bench_fault_profile_shows_where_a_faults_instructions_go") {
        return;
    }
    let out = vmm(
        &["bench", "fault", "--pages", "16", "--mib", "1", "--profile"],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}\n{}", out.stdout, out.stderr);
    let profile = out
        .line("(f) where a random fault's kernel instructions go")
        .unwrap_or_else(|| panic!("no profile in:\n{}", out.stdout));
    let rest: Vec<&str> = out.stdout.lines().skip(profile).collect();
    let rest = rest.join("\n");
    for row in [
        "per fault (16 faults)",
        " dispatch [0x",
        "kernel::vm::fault::",
        "single-stepped",
        "without the profiler, in (d):",
    ] {
        assert!(rest.contains(row), "no '{row}' in:\n{rest}");
    }
    let share: f64 = rest
        .split("the profile has ")
        .nth(1)
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no share of KVM's count in:\n{rest}"));
    assert!((95.0..=105.0).contains(&share), "{rest}");
}
