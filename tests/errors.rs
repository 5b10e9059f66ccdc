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
fn kernel_that_is_a_device_is_refused_unread() {
    // /dev/zero would otherwise be read until memory runs out.
    assert_error(
        &["run", "--kernel", "/dev/zero"],
        &[],
        "kernel /dev/zero is a character device, not a regular file",
    );
    assert_error(
        &["run", "--kernel", "/tmp"],
        &[],
        "kernel /tmp is a directory, not a regular file",
    );
}

#[test]
fn kernel_that_is_a_fifo_is_refused_without_waiting_for_a_writer() {
    let path = std::env::temp_dir().join(format!("duality-kernel-fifo-{}", std::process::id()));
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let p = path.to_str().unwrap();
    // No writer ever opens it: a blocking open would hang until the
    // harness's guard kills vmm.
    assert_error(
        &["run", "--kernel", p],
        &[],
        &format!("kernel {p} is a FIFO, not a regular file"),
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn kernel_over_the_size_cap_is_refused_unread() {
    let path = std::env::temp_dir().join(format!("duality-kernel-big-{}", std::process::id()));
    // Sparse: it takes no disk space, and vmm must not read it.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len((64 << 20) + 1).unwrap();
    let p = path.to_str().unwrap();
    assert_error(
        &["run", "--kernel", p],
        &[],
        "is 67108865 bytes, over the 64 MiB (67108864-byte) kernel file limit",
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn kernel_with_a_segment_past_the_end_of_the_file() {
    // ELF header + one PT_LOAD whose 0x1000 file bytes at 0x100 are not
    // in the 0x200-byte file.
    let mut d = vec![0u8; 0x200];
    d[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    d[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    d[24..32].copy_from_slice(&0xffff_ffff_8010_0000u64.to_le_bytes()); // entry
    d[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    d[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    d[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    d[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    d[72..80].copy_from_slice(&0x100u64.to_le_bytes()); // offset
    d[88..96].copy_from_slice(&0x10_0000u64.to_le_bytes()); // paddr
    d[96..104].copy_from_slice(&0x1000u64.to_le_bytes()); // filesz
    d[104..112].copy_from_slice(&0x1000u64.to_le_bytes()); // memsz
    let path = std::env::temp_dir().join(format!("duality-kernel-short-{}", std::process::id()));
    std::fs::write(&path, &d).unwrap();
    let p = path.to_str().unwrap();
    assert_error(
        &["run", "--kernel", p],
        &[],
        "segment 0: bytes 0x100..0x1100 run past the end of the file (0x200 bytes)",
    );
    let _ = std::fs::remove_file(&path);
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
