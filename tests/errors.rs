//! Every user mistake gets a clear message and a non-zero exit, never a
//! panic.

mod support;
use support::{kvm_available, vmm};

fn assert_error(args: &[&str], env: &[(&str, &str)], expect: &str) {
    let out = vmm(args, env);
    assert_eq!(
        out.status,
        Some(1),
        "vmm {args:?}: {}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains(expect),
        "vmm {args:?}: expected {expect:?} in:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn missing_kvm_device() {
    assert_error(
        &["run"],
        &[("VMM_KVM_DEVICE", "/nonexistent/kvm")],
        "cannot open /nonexistent/kvm",
    );
}

#[test]
fn missing_kernel_file() {
    assert_error(
        &["run", "--kernel", "/nonexistent/kernel"],
        &[],
        "cannot read kernel /nonexistent/kernel",
    );
}

#[test]
fn kernel_that_is_not_elf() {
    let path = std::env::temp_dir().join(format!("duality-not-elf-{}", std::process::id()));
    std::fs::write(&path, b"#!/bin/sh\necho not a kernel\n").unwrap();
    let p = path.to_str().unwrap();
    assert_error(&["run", "--kernel", p], &[], "not an ELF file");
    let _ = std::fs::remove_file(&path);
}

/// A file that opens but is not KVM: said so, with the ioctl's own error.
#[test]
fn kvm_device_that_is_not_kvm() {
    let out = vmm(&["run"], &[("VMM_KVM_DEVICE", "/dev/null")]);
    assert_error(
        &["run"],
        &[("VMM_KVM_DEVICE", "/dev/null")],
        "/dev/null is not a KVM device",
    );
    assert!(
        out.stderr
            .contains("Inappropriate ioctl for device (os error 25)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("API version"), "{}", out.stderr);
}

#[test]
fn memory_too_small_or_not_page_multiple() {
    assert_error(&["run", "--mem", "4M"], &[], "too small");
    // Shown as given, not rounded down to "0 MiB".
    assert_error(
        &["run", "--mem", "4096"],
        &[],
        "memory size 4 KiB is too small: the guest needs at least 16 MiB",
    );
    assert_error(
        &["run", "--mem", "16777217"],
        &[],
        "not a multiple of the 4 KiB page size",
    );
    assert_error(&["run", "--mem", "lots"], &[], "invalid memory size");
    assert_error(&["run", "--mem", "1.5G"], &[], "fractions are not taken");
}

/// Sizes past the limit, and past 64 bits, are "too large", not unparseable.
#[test]
fn memory_too_large_even_past_64_bits() {
    for (mem, shown) in [("65G", "65 GiB"), ("99999999T", "99999999T")] {
        assert_error(
            &["run", "--mem", mem],
            &[],
            &format!("memory size {shown} is larger than the supported 64 GiB"),
        );
    }
}

#[test]
fn swap_size_mistakes() {
    assert_error(&["run", "--swap", "0.5G"], &[], "fractions are not taken");
    assert_error(&["run", "--swap", "99999999T"], &[], "at most 1 TiB");
    assert_error(
        &["run", "--swap", "4097"],
        &[],
        "4097 bytes is not a multiple",
    );
    assert_error(&["run", "--swap=-1"], &[], "0 turns swap off");
}

/// At the limit, the message gives the room that is the user's (the limit
/// less what the VMM adds) and the length of what they gave.
#[test]
fn cmdline_too_long_says_how_much_fits() {
    // Without objects (--swap 0): "init=init " + the user's words, 4095
    // bytes at most.
    let room = 4095 - "init=init ".len();
    let long = "x".repeat(room + 1);
    assert_error(
        &["run", "--swap", "0", "--cmdline", &long],
        &[],
        &format!(
            "--cmdline is {} bytes, but at most {room} fit: the kernel command line holds 4095 bytes, and the VMM adds 10",
            room + 1
        ),
    );
    // The default swap object brings the device's word; --stats adds
    // " vm_stats=1": both are the VMM's bytes, not the user's.
    let device = " virtio_mmio.device=4K@0xd0000000:5".len();
    assert_error(
        &["run", "--cmdline", &long],
        &[],
        &format!("but at most {} fit", room - device),
    );
    assert_error(
        &["run", "--stats", "--cmdline", &long],
        &[],
        &format!("but at most {} fit", room - device - " vm_stats=1".len()),
    );
}

/// `vmm run --help` explains the exit codes.
#[test]
fn run_help_has_the_exit_code_table() {
    let out = vmm(&["run", "--help"], &[]);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    for want in ["Exit status:", "255 ", "101 ", "128+N"] {
        assert!(out.stdout.contains(want), "no {want:?} in:\n{}", out.stdout);
    }
}

/// A non-zero status never exits 0: 256 is not 0 mod 256 here, and a
/// negative status is not whatever its low byte is.
#[test]
fn init_status_that_does_not_fit_exits_255() {
    if !kvm_available("init_status_that_does_not_fit_exits_255") {
        return;
    }
    for (status, note) in [("256", true), ("-1", true), ("512", true), ("255", false)] {
        let out = vmm(&["run", "--init", "init", status], &[]);
        assert_eq!(
            out.status,
            Some(255),
            "init {status}: {}{}",
            out.stdout,
            out.stderr
        );
        let said = format!("init exited with status {status}, which does not fit");
        assert_eq!(out.stderr.contains(&said), note, "{}", out.stderr);
    }
}

#[test]
fn unknown_init_program() {
    assert_error(
        &["run", "--init", "no-such-program"],
        &[],
        "unknown init program \"no-such-program\"",
    );
}
