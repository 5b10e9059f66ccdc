//! Boots the real guest kernel under KVM and checks what it does.

mod support;
use support::{kvm_available, vmm};

#[test]
fn hello_and_exit_status_round_trip() {
    if !kvm_available("hello_and_exit_status_round_trip") {
        return;
    }
    let out = vmm(&["run"], &[]);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line("Duality Mach kernel").is_some(),
        "no banner: {}",
        out.stdout
    );
    assert!(
        out.line("init: hello from user mode").is_some(),
        "{}",
        out.stdout
    );

    let out = vmm(&["run", "--init", "init", "42"], &[]);
    assert_eq!(out.status, Some(42), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line("init: hello from user mode (args: \"42\")")
            .is_some(),
        "{}",
        out.stdout
    );
}

#[test]
fn faulting_task_is_killed_and_others_keep_running() {
    if !kvm_available("faulting_task_is_killed_and_others_keep_running") {
        return;
    }
    let out = vmm(&["run", "--init", "spawn", "fault", "init:5"], &[]);
    let killed = out
        .line("(fault) killed: page fault at 0xdead0000")
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(out.line("fault: still alive").is_none());
    assert!(
        out.line("exited with status 142").is_some(),
        "killed task's status is 128+14: {}",
        out.stdout
    );
    // The kernel went on: the other task ran and was collected.
    assert!(
        out.line("init: hello from user mode (args: \"5\")")
            .is_some(),
        "{}",
        out.stdout
    );
    assert!(out.line("exited with status 5").is_some(), "{}", out.stdout);
    assert!(killed < out.last_line("spawn: task").unwrap_or(0));
    // spawn exits with the number of children that failed: both.
    assert_eq!(out.status, Some(2), "{}", out.stdout);
}

#[test]
fn privileged_instruction_kills_the_task() {
    if !kvm_available("privileged_instruction_kills_the_task") {
        return;
    }
    let out = vmm(&["run", "--init", "spawn", "priv", "init"], &[]);
    assert!(
        out.line("(priv) killed: general protection fault (vector 13")
            .is_some(),
        "{}",
        out.stdout
    );
    assert!(out.line("priv: still alive").is_none());
    assert!(
        out.line("exited with status 141").is_some(),
        "{}",
        out.stdout
    );
    assert!(
        out.line("init: hello from user mode").is_some(),
        "{}",
        out.stdout
    );
    assert_eq!(out.status, Some(1), "{}", out.stdout);
}

#[test]
fn two_cpu_bound_tasks_preempt_each_other() {
    if !kvm_available("two_cpu_bound_tasks_preempt_each_other") {
        return;
    }
    let out = vmm(&["run", "--init", "spawn", "spin:a", "spin:b"], &[]);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    // Neither task yields: interleaved rounds prove the timer preempts.
    let first_b = out
        .line("spin b: round 1")
        .unwrap_or_else(|| panic!("{}", out.stdout));
    let last_a = out
        .line("spin a: round 6")
        .unwrap_or_else(|| panic!("{}", out.stdout));
    let first_a = out
        .line("spin a: round 1")
        .unwrap_or_else(|| panic!("{}", out.stdout));
    let last_b = out
        .line("spin b: round 6")
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        first_b < last_a && first_a < last_b,
        "rounds did not interleave:\n{}",
        out.stdout
    );
    // Preemption kept each task's SSE registers.
    assert!(
        out.line("spin a: done, FPU state intact").is_some(),
        "{}",
        out.stdout
    );
    assert!(
        out.line("spin b: done, FPU state intact").is_some(),
        "{}",
        out.stdout
    );
}

#[test]
fn kernel_panic_reports_location_and_fails() {
    if !kvm_available("kernel_panic_reports_location_and_fails") {
        return;
    }
    let out = vmm(&["run", "--cmdline", "crash=panic"], &[]);
    assert_eq!(out.status, Some(101), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line("kernel panic at guest-kernel/src/kernel/arch/crashtest.rs:")
            .is_some(),
        "{}",
        out.stdout
    );
    assert!(out.line("init: hello").is_none());
}

#[test]
fn kernel_exception_is_reported_with_vector_rip_and_cr2() {
    if !kvm_available("kernel_exception_is_reported_with_vector_rip_and_cr2") {
        return;
    }
    let out = vmm(&["run", "--cmdline", "crash=fault"], &[]);
    assert_eq!(out.status, Some(102), "{}{}", out.stdout, out.stderr);
    let l = out
        .line("kernel fault: page fault (vector 14")
        .unwrap_or_else(|| panic!("{}", out.stdout));
    let line = out.stdout.lines().nth(l).unwrap_or("");
    assert!(
        line.contains("cr2 0x7000dead0000") && line.contains("rip 0xffffffff80"),
        "{line}"
    );
}

#[test]
fn kernel_mappings_are_wx_with_text_read_only() {
    if !kvm_available("kernel_mappings_are_wx_with_text_read_only") {
        return;
    }
    // The kernel walks its own page tables (every mapping of the kernel
    // half, which all address spaces share) and counts the rights.
    let out = vmm(&["run", "--cmdline", "wx_audit=1"], &[]);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    let l = out
        .line("kernel W^X audit: ")
        .unwrap_or_else(|| panic!("{}", out.stdout));
    let line = out.stdout.lines().nth(l).unwrap_or("");
    assert!(line.trim_end().ends_with("none both"), "{line:?}");
    let kib = |what: &str| -> u64 {
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .windows(3)
            .find(|w| w[1] == "KiB" && w[2].starts_with(what))
            .and_then(|w| w[0].parse().ok())
            .unwrap_or_else(|| panic!("no {what} in {line}"))
    };
    // Executable is the kernel text only: a few hundred KiB, not the
    // direct map of all RAM (256 MiB here) nor the data.
    assert!(kib("executable") > 0 && kib("executable") < 4096, "{line}");
    // All of RAM is mapped (the direct map), nearly all of it writable.
    assert!(kib("mapped") >= 256 * 1024, "{line}");
    assert!(kib("writable") >= 250 * 1024, "{line}");
    assert!(
        kib("mapped") >= kib("writable") + kib("executable"),
        "{line}"
    );
}

#[test]
fn kernel_protections_fault_and_say_which() {
    if !kvm_available("kernel_protections_fault_and_say_which") {
        return;
    }
    let cases = [
        (
            "write-text",
            "page fault (vector 14",
            "W^X: the kernel wrote to a read-only page",
        ),
        (
            "write-text-alias",
            "page fault (vector 14",
            "W^X: the kernel wrote to a read-only page",
        ),
        (
            "exec-data",
            "page fault (vector 14",
            "W^X: the kernel tried to execute a no-execute page",
        ),
        (
            "exec-user",
            "page fault (vector 14",
            "SMEP: the kernel tried to execute user memory",
        ),
        (
            "read-user",
            "page fault (vector 14",
            "SMAP: the kernel touched user memory",
        ),
        (
            "stack-overflow",
            "double fault (vector 8",
            "the boot stack ran into its guard page",
        ),
        (
            "kstack-overflow",
            "double fault (vector 8",
            "a thread's kernel stack ran into its guard page",
        ),
    ];
    for (crash, fault, why) in cases {
        let out = vmm(&["run", "--cmdline", &format!("crash={crash}")], &[]);
        let protection = out
            .line("kernel protection: ")
            .and_then(|l| out.stdout.lines().nth(l))
            .unwrap_or_else(|| panic!("{crash}: {}", out.stdout))
            .to_string();
        // SMEP and SMAP are only promised where the CPU has them; without
        // them the access goes through and the boot carries on.
        let lacking = (crash == "exec-user" && protection.contains("SMEP off"))
            || (crash == "read-user" && protection.contains("SMAP off"));
        if lacking {
            eprintln!("{crash}: not enforced here ({protection})");
            assert_eq!(out.status, Some(0), "{crash}: {}", out.stdout);
            continue;
        }
        assert_eq!(
            out.status,
            Some(102),
            "{crash}: {}{}",
            out.stdout,
            out.stderr
        );
        let l = out
            .line(&format!("kernel fault: {fault}"))
            .unwrap_or_else(|| panic!("{crash}: {}", out.stdout));
        let line = out.stdout.lines().nth(l).unwrap_or("");
        assert!(line.contains(why), "{crash}: {line}");
        assert!(out.line("init: hello").is_none(), "{crash}: {}", out.stdout);
    }
}

#[test]
fn stats_count_kernel_instructions_and_exits() {
    if !kvm_available("stats_count_kernel_instructions_and_exits") {
        return;
    }
    let out = vmm(&["run", "--stats"], &[]);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("vmm-stats:"))
        .unwrap_or_else(|| panic!("{}", out.stderr));
    let get = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line}"))
    };
    // Boot exits at least once per console line and for the milestone.
    assert!(get("boot_exits") >= 2, "{line}");
    assert!(out.stderr.contains("exits = "), "{}", out.stderr);
}

#[test]
fn stats_include_the_guest_vm_statistics_at_exit() {
    if !kvm_available("stats_include_the_guest_vm_statistics_at_exit") {
        return;
    }
    // vmtest's allocate sub-test takes zero-fill faults, which the kernel
    // counts and prints when init exits under --stats (and only then).
    let out = vmm(&["run", "--stats", "--init", "vmtest", "allocate"], &[]);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    let line = all
        .lines()
        .find(|l| l.starts_with("vm_statistics:"))
        .unwrap_or_else(|| panic!("no vm_statistics line in {all}"));
    let get = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line}"))
    };
    assert!(get("zero_fill") > 0, "{line}");
    assert!(get("faults") >= get("zero_fill"), "{line}");
    let quiet = vmm(&["run", "--init", "vmtest", "allocate"], &[]);
    let all = format!("{}{}", quiet.stdout, quiet.stderr);
    assert!(!all.contains("vm_statistics:"), "{all}");
}

#[test]
fn boots_through_pvh_and_direct_64_bit_entry() {
    if !kvm_available("boots_through_pvh_and_direct_64_bit_entry") {
        return;
    }
    for boot in ["pvh", "direct"] {
        let out = vmm(&["run", "--boot", boot, "--init", "init", "3"], &[]);
        assert_eq!(
            out.status,
            Some(3),
            "--boot {boot}: {}{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.line("init: hello from user mode").is_some(),
            "--boot {boot}: {}",
            out.stdout
        );
    }
}

#[test]
fn mach_ipc_round_trips_between_two_tasks() {
    if !kvm_available("mach_ipc_round_trips_between_two_tasks") {
        return;
    }
    // Two tasks find each other through the inherited bootstrap port and
    // make null, 4 KiB inline and 64 KiB out-of-line msg_rpc round trips;
    // every reply must echo its request.
    let out = vmm(&["run", "--init", "ipcbench", "20"], &[]);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line("ipcbench: 20 null and 20 4 KiB inline round trips, 2 of 64 KiB out-of-line: ok")
            .is_some(),
        "{}",
        out.stdout
    );
}

#[test]
fn mach_ipc_semantics_in_the_guest() {
    if !kvm_available("mach_ipc_semantics_in_the_guest") {
        return;
    }
    // ipctest runs each sub-test in the guest and prints its verdict:
    // three client tasks on one server, receive timeouts, backlog and
    // send timeout, short buffers, malicious messages (each refused with
    // its documented error), dead names, killing a task blocked in
    // receive, shared-memory threads, an exception handler
    // that fixes a #UD and a #PF, receive, send and send-once rights moved
    // to another task, clients and a server finding each other through the
    // name server, exhaustion of ports, queued messages, threads and
    // tasks ending in errors, with a normal exchange afterwards, and a
    // child task suspended, resumed, given a thread, debugged and ended
    // by messages to its task and thread ports (served by the kernel).
    let out = vmm(&["run", "--init", "ipctest", "all"], &[]);
    let all = format!("{}{}", out.stdout, out.stderr);
    for name in [
        "many-clients",
        "receive-timeout",
        "backlog",
        "too-small",
        "malicious",
        "dead-name",
        "kill-blocked",
        "thread",
        "exception",
        "rights",
        "name-server",
        "exhaustion",
        "kobject-msgs",
    ] {
        assert!(
            out.line(&format!("ipctest: {name} ok")).is_some(),
            "sub-test {name} did not pass:\n{all}"
        );
    }
    assert!(out.line("ipctest: 0 failed").is_some(), "{all}");
    assert_eq!(out.status, Some(0), "{all}");
}

#[test]
fn anonymous_memory_pages_out_to_swap_and_back() {
    if !kvm_available("anonymous_memory_pages_out_to_swap_and_back") {
        return;
    }
    // A 24 MiB guest (about 15 MiB free for tasks) writes a pattern over
    // 20 MiB of vm_allocate'd memory and reads it all back, while a child
    // task rewrites and checks 64 pages of its own 300 times: internal
    // pages must go to the `swap` object (the default pager) and come back
    // intact, and faults that find no frame must wait for pageout instead
    // of ending the task. 20 MiB, not 128: every page transfer costs some
    // 4,000 emulated kernel instructions here (about 10 ms), so this is
    // ~5,800 transfers and under a minute.
    let out = vmm(
        &[
            "run", "--mem", "24M", "--swap", "64M", "--init", "vmtest", "swap", "20",
        ],
        &[],
    );
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        out.line("vmtest: swap: 20 MiB read back intact").is_some(),
        "{all}"
    );
    assert!(
        out.line("vmtest: swap-child: 300 rounds intact").is_some(),
        "{all}"
    );
    assert!(out.line("vmtest: swap ok").is_some(), "{all}");
    assert_eq!(out.status, Some(0), "{all}");
}

#[test]
fn swap_size_is_checked() {
    let out = vmm(&["run", "--swap", "12Q"], &[]);
    assert_ne!(out.status, Some(0));
    assert!(out.stderr.contains("--swap \"12Q\""), "{}", out.stderr);
}

#[test]
fn mach_vm_in_the_guest() {
    if !kvm_available("mach_vm_in_the_guest") {
        return;
    }
    // vmtest runs each sub-test in the guest: zero-fill allocation, fixed
    // placement and the argument checks, deallocation (the page then
    // faults, caught as an exception message), current and maximum
    // protection with violations as exceptions, vm_region's walk,
    // copy-on-write vm_read/vm_copy/vm_write, copy/share/none inheritance
    // by a child task, the kernel faulting in untouched message buffers,
    // 3 MiB of out-of-line data arriving as a region of its own (freed by
    // vm_deallocate; the deallocate flag removes the sender's), a pager
    // thread serving a region (computed pages, data_lock then data_unlock
    // on write, clean_request and flush_request, termination, a dead
    // pager's fault as an exception),
    // vm_statistics, and the map-entry limit ending in
    // KERN_RESOURCE_SHORTAGE.
    let out = vmm(&["run", "--init", "vmtest", "all"], &[]);
    let all = format!("{}{}", out.stdout, out.stderr);
    for name in [
        "allocate",
        "protect",
        "regions",
        "read-write-copy",
        "inherit",
        "no-inherit",
        "copy-fault-in",
        "out-of-line",
        "user-pager",
        "statistics",
        "exhaustion",
    ] {
        assert!(
            out.line(&format!("vmtest: {name} ok")).is_some(),
            "sub-test {name} did not pass:\n{all}"
        );
    }
    assert!(out.line("vmtest: 0 failed").is_some(), "{all}");
    assert_eq!(out.status, Some(0), "{all}");
}
