//! `vmm bench vm`: page faults in a guest task, served by the guest's Mach
//! VM, next to the same kind of fault taken by this host process in the
//! same run (first touch of anonymous memory; a minor fault on a populated
//! shared mapping; a write to a private mapping of populated memory). The
//! guest side (`vmbench`) brackets each loop with benchmark marks, so per
//! fault the kernel instructions, VM exits and interrupts come from the
//! vCPU's KVM statistics; they carry over to hardware KVM, the wall times
//! do not.

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
        ("host file (virtio-pager)", 9, HostFault::Minor),
        ("guest pager (messages)", 11, HostFault::Minor),
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
    Ok(())
}
