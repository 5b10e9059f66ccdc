//! Every user mistake gets a clear message and a non-zero exit, never a
//! panic.

mod support;
use support::vmm;

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
    assert_error(
        &["run", "--mem", "16777217"],
        &[],
        "not a multiple of the 4 KiB page size",
    );
    assert_error(&["run", "--mem", "lots"], &[], "invalid memory size");
}

#[test]
fn unknown_init_program() {
    assert_error(
        &["run", "--init", "no-such-program"],
        &[],
        "unknown init program \"no-such-program\"",
    );
}
