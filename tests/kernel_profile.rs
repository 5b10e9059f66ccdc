//! `vmm run --kernel-profile MARK[:FILE]`: the guest kernel single-stepped
//! between two benchmark marks, its instructions counted per function.
//! The profile is checked against KVM's own count of the same instructions
//! (`insn_emulation` at each mark, from `--stats`): both count every
//! emulated ring-0 instruction between the marks, so they agree closely
//! whatever the machine's speed.

mod support;
use std::path::PathBuf;
use support::{Output, kvm_available, vmm};

/// Round trips of `ipcbench`'s first loop (marks 1-2: null msg_rpc).
const ROUNDS: &str = "20";

struct Temp(PathBuf);

impl Temp {
    fn new(what: &str) -> Temp {
        Temp(std::env::temp_dir().join(format!("duality-kprof-{what}-{}", std::process::id())))
    }
    fn raw(&self) -> PathBuf {
        let mut p = self.0.clone().into_os_string();
        p.push(".raw");
        p.into()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(self.raw());
    }
}

/// KVM's kernel instruction count at user mark `id` (`--stats`).
fn insn_at(out: &Output, id: u32) -> u64 {
    let head = format!("vmm-stats: mark={id} ");
    out.stderr
        .lines()
        .find(|l| l.starts_with(&head))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("insn=")?.parse().ok())
        })
        .unwrap_or_else(|| panic!("no mark {id} in:\n{}", out.stderr))
}

/// The report's total: "... N kernel instructions in M functions".
fn total(report: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.contains("kernel profile: from mark"))
        .unwrap_or_else(|| panic!("no profile summary in:\n{report}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(3)
        .find(|w| w[1] == "kernel" && w[2] == "instructions")
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no total in {line:?}"))
}

/// The function rows: (instructions, name and address).
fn functions(report: &str) -> Vec<(u64, String)> {
    report
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().peekable();
            let n = w.next()?.parse().ok()?;
            w.next()?.strip_suffix('%')?;
            // The per-unit column, when there are units.
            w.next_if(|x| x.parse::<f64>().is_ok());
            Some((n, w.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

#[test]
fn the_profile_names_the_ipc_path_and_matches_kvms_count() {
    if !kvm_available("the_profile_names_the_ipc_path_and_matches_kvms_count") {
        return;
    }
    let file = Temp::new("report");
    let spec = format!("1:{}", file.0.display());
    let out = vmm(
        &[
            "run",
            "--stats",
            "--kernel-profile",
            &spec,
            "--kernel-profile-units",
            ROUNDS,
            "--init",
            "ipcbench",
            ROUNDS,
        ],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    let report = std::fs::read_to_string(&file.0).expect("the report file");
    // With a FILE the report goes there, not to stderr.
    assert!(!out.stderr.contains("kernel profile:"), "{}", out.stderr);

    let kvm = insn_at(&out, 2) - insn_at(&out, 1);
    let profiled = total(&report);
    assert!(kvm > 0);
    let off = profiled.abs_diff(kvm) as f64 / kvm as f64;
    assert!(
        off <= 0.05,
        "profile {profiled} vs KVM {kvm} between marks 1 and 2:\n{report}"
    );

    // A round trip: two system calls through the one trap path, a message
    // sent and received, a switch between the two tasks.
    let rows = functions(&report);
    for want in [
        "dispatch",
        "kernel::kern::syscall::handle",
        "kernel::ipc::mach_msg::receive",
        "kernel::kern::scheduler::Kernel::switch_to",
    ] {
        assert!(
            rows.iter()
                .any(|(n, f)| *n > 0 && f.starts_with(&format!("{want} ["))),
            "{want} not in:\n{report}"
        );
    }
    let sum: u64 = rows.iter().map(|(n, _)| n).sum();
    assert_eq!(sum, profiled, "{report}");
    assert!(report.contains("per unit (20 units)"), "{report}");

    // The raw histogram: kernel addresses whose counts add up to the total.
    let raw = std::fs::read_to_string(file.raw()).expect("the raw histogram");
    let mut raw_sum = 0u64;
    for l in raw.lines() {
        let (a, n) = l.split_once(' ').expect("ADDRESS COUNT");
        let a = u64::from_str_radix(a.trim_start_matches("0x"), 16).expect("hex address");
        assert!(a >= 0xffff_8000_0000_0000, "{l}");
        raw_sum += n.parse::<u64>().expect("count");
    }
    assert_eq!(raw_sum, profiled);
}

#[test]
fn without_a_file_the_report_goes_to_stderr_and_a_missing_mark_is_said() {
    if !kvm_available("without_a_file_the_report_goes_to_stderr_and_a_missing_mark_is_said") {
        return;
    }
    // ipcbench marks 1 to 6: mark 200 never comes, and the guest runs as usual.
    let out = vmm(
        &["run", "--kernel-profile", "200", "--init", "ipcbench", "5"],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(
            "vmm: kernel profile: the guest never reached mark 200: nothing was profiled"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_profile_options_are_refused_before_the_guest_starts() {
    for (args, says) in [
        (vec!["--kernel-profile", "256"], "0 to 255"),
        (vec!["--kernel-profile", "1:"], "no FILE"),
        (vec!["--kernel-profile-units", "5"], "--kernel-profile"),
        (
            vec!["--kernel-profile", "1:/nonexistent-dir/report"],
            "/nonexistent-dir/report",
        ),
    ] {
        let mut a = vec!["run"];
        a.extend(&args);
        a.extend(["--init", "init"]);
        let out = vmm(&a, &[]);
        assert_ne!(out.status, Some(0), "{args:?}");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert!(
            out.stdout.is_empty(),
            "{args:?}: the guest ran: {}",
            out.stdout
        );
    }
}
