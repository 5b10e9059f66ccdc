//! `vmm bench vm`: page faults in a guest task, served by the guest's Mach
//! VM, next to the same kind of fault taken by this host process in the
//! same run (first touch of anonymous memory; a minor fault on a populated
//! shared mapping; a write to a private mapping of populated memory). The
//! guest side (`vmbench`) brackets each loop with benchmark marks, so per
//! fault the kernel instructions, VM exits and interrupts come from the
//! vCPU's KVM statistics; they carry over to hardware KVM, the wall times
//! do not.
//!
//! Then out-of-line message data: a 64 MiB region sent by copy-on-write
//! mapping next to the same bytes sent by copy, as far as the kernel's
//! bounds on copied bytes allow (16 MiB per message, less in flight on a
//! small heap), compared per MiB, with the cost of first reading what
//! arrived (a soft fault per page for the mapping, none for the copy).

use crate::bench_ipc::guest_marks;
use crate::error::{Result, VmmError};
use std::time::Instant;

const PAGE: usize = 4096;

#[derive(Clone, Copy)]
enum HostFault {
    ZeroFill,
    Minor,
    CopyOnWrite,
}

/// ns per fault for `pages` faults of `kind` in this process (best of 3).
fn host_faults(kind: HostFault, pages: usize) -> Result<f64> {
    let len = pages * PAGE;
    let os = |what: &str| VmmError::Boot(format!("{what}: {}", std::io::Error::last_os_error()));
    // SAFETY: a new anonymous memory file.
    let fd = unsafe { libc::memfd_create(c"vmm-bench-vm".as_ptr(), 0) };
    if fd < 0 {
        return Err(os("memfd_create"));
    }
    let mut best = f64::MAX;
    let result = (|| {
        // SAFETY: our own fd.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            return Err(os("ftruncate"));
        }
        for _ in 0..3 {
            let (flags, fd_arg, populate) = match kind {
                HostFault::ZeroFill => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, false),
                HostFault::Minor => (libc::MAP_SHARED, fd, true),
                HostFault::CopyOnWrite => (libc::MAP_PRIVATE, fd, true),
            };
            if populate {
                // Bring every page of the file into the page cache.
                // SAFETY: a fresh shared mapping of our file, unmapped below.
                let p = unsafe {
                    libc::mmap(
                        core::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED | libc::MAP_POPULATE,
                        fd,
                        0,
                    )
                };
                if p == libc::MAP_FAILED {
                    return Err(os("mmap"));
                }
                // SAFETY: the mapping just made.
                unsafe { libc::munmap(p, len) };
            }
            // SAFETY: a fresh mapping, touched only below and then unmapped.
            let p = unsafe {
                libc::mmap(
                    core::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    fd_arg,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(os("mmap"));
            }
            let base = p as *mut u8;
            let write = !matches!(kind, HostFault::Minor);
            let start = Instant::now();
            let mut sum = 0u64;
            for i in 0..pages {
                // SAFETY: within the mapping.
                unsafe {
                    let a = base.add(i * PAGE) as *mut u64;
                    if write {
                        core::ptr::write_volatile(a, i as u64);
                    } else {
                        sum = sum.wrapping_add(core::ptr::read_volatile(a));
                    }
                }
            }
            let ns = start.elapsed().as_nanos() as f64 / pages as f64;
            std::hint::black_box(sum);
            best = best.min(ns);
            // SAFETY: the mapping made above.
            unsafe { libc::munmap(p, len) };
        }
        Ok(best)
    })();
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    result
}

pub fn vm(pages: u32) -> Result<()> {
    let pages = pages.max(1);
    // The host object: a file of `pages` pages the guest maps and reads.
    let file = std::env::temp_dir().join(format!("vmm-bench-vm-{}", std::process::id()));
    let data: Vec<u8> = (0..pages as usize * PAGE)
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(&file, &data)?;
    let object = format!("b=file:{}?ro", file.display());
    let run = guest_marks(
        "vm",
        &["--object", &object],
        &["vmbench", &pages.to_string(), "b"],
    );
    let _ = std::fs::remove_file(&file);
    let (text, m) = run?;
    let cases = [
        ("zero fill (fresh frame)", 1u64, HostFault::ZeroFill),
        ("soft (resident page)", 3, HostFault::Minor),
        ("copy-on-write", 5, HostFault::CopyOnWrite),
        ("zero fill (kernel zeroes)", 7, HostFault::ZeroFill),
        ("host file (virtio-pager)", 17, HostFault::Minor),
        ("guest pager (messages)", 19, HostFault::Minor),
    ];
    println!("vm benchmark: {pages} faults per case in a guest task vs this host process");
    println!(
        "{:>26} {:>12} {:>10} {:>10} {:>10} {:>10} {:>12} {:>8}",
        "case", "guest µs", "faults/s", "insn", "exits", "irqs", "host µs", "ratio"
    );
    let n = f64::from(pages);
    for (name, mark, host) in cases {
        let a = m.iter().find(|x| x[0] == mark);
        let b = m.iter().find(|x| x[0] == mark + 1);
        let (Some(a), Some(b)) = (a, b) else {
            return Err(VmmError::Guest(format!(
                "vm bench: no marks for {name}: {text}"
            )));
        };
        let guest_ns = (b[1] - a[1]) as f64 / n;
        let host_ns = host_faults(host, pages as usize)?;
        println!(
            "{:>26} {:>12.1} {:>10.0} {:>10.0} {:>10.2} {:>10.2} {:>12.3} {:>7.0}x",
            name,
            guest_ns / 1e3,
            1e9 / guest_ns.max(1.0),
            (b[2] - a[2]) as f64 / n,
            (b[3] - a[3]) as f64 / n,
            (b[4] - a[4]) as f64 / n,
            host_ns / 1e3,
            guest_ns / host_ns.max(1.0),
        );
    }
    println!(
        "(per fault; ratio = guest / host wall time; the host peer of the host-file and guest-pager cases is a minor fault on a populated shared mapping;\n goals: soft <= 300, zero fill <= 500, guest pager <= 1,500, host file <= 1,500 kernel instructions with <= 1 exit and <= 1 interrupt)"
    );
    out_of_line(&text, &m)
}

/// The out-of-line cases: marks 9-16 of `vmbench`.
fn out_of_line(text: &str, m: &[[u64; 5]]) -> Result<()> {
    let copy = text
        .split("out-of-line copy of ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| VmmError::Guest(format!("vm bench: no out-of-line copy size: {text}")))?;
    let span = |from: u64| -> Result<[f64; 4]> {
        let a = m.iter().find(|x| x[0] == from);
        let b = m.iter().find(|x| x[0] == from + 1);
        let (Some(a), Some(b)) = (a, b) else {
            return Err(VmmError::Guest(format!(
                "vm bench: no out-of-line marks {from}: {text}"
            )));
        };
        // ns, instructions, exits, interrupts.
        Ok([1, 2, 3, 4].map(|i| b[i].saturating_sub(a[i]) as f64))
    };
    const MIB: f64 = (1u64 << 20) as f64;
    let big = 64.0;
    let small = copy as f64 / MIB;
    let cases = [
        ("copy-on-write, send+receive", big, span(9)?),
        ("  then reading (soft faults)", small, span(11)?),
        ("copy, send+receive", small, span(13)?),
        ("  then reading", small, span(15)?),
    ];
    println!();
    println!(
        "out-of-line data: one message from a guest task to itself; copy limited to {small} MiB by the kernel's bounds on copied bytes (16 MiB per message, a quarter of the heap in flight)"
    );
    println!(
        "{:>30} {:>6} {:>12} {:>14} {:>12} {:>10} {:>10}",
        "case", "MiB", "guest ms", "insn", "insn/MiB", "exits/MiB", "ms/MiB"
    );
    for (name, mib, [ns, insn, exits, _]) in cases {
        println!(
            "{:>30} {:>6} {:>12.1} {:>14.0} {:>12.0} {:>10.1} {:>10.2}",
            name,
            mib,
            ns / 1e6,
            insn,
            insn / mib,
            exits / mib,
            ns / 1e6 / mib
        );
    }
    let per_mib = |i: usize| cases[i].2[1] / cases[i].1;
    let (cow, cow_read, cp, cp_read) = (per_mib(0), per_mib(1), per_mib(2), per_mib(3));
    println!(
        "copy / copy-on-write, kernel instructions per MiB: {:.0}x for the message, {:.1}x counting the first read of every page",
        cp / cow.max(1.0),
        (cp + cp_read) / (cow + cow_read).max(1.0)
    );
    Ok(())
}
