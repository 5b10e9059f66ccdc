//! `faultbench RANDOM SEQUENTIAL SEED`: the guest side of `vmm bench fault`.
//! Maps two host objects with vm_allocate_with_pager and reads them through
//! page faults, between benchmark marks (the VMM samples the vCPU's KVM
//! statistics at each):
//! 1-2 one word of every page of RANDOM, pages in the order
//! `bench_order::random_order(SEED)` gives (the VMM's userfaultfd peer uses
//! the same order), each fault timed on its own with the TSC;
//! 3-4 every word of SEQUENTIAL, front to back.
//! Then it prints the per-fault times (TSC cycles), the loops' cycles and
//! the sums of what it read, which the VMM checks against its own reads of
//! the same files.
//!
//! Why the TSC: this loop runs in ring 3, where `rdtsc` is native both on
//! hardware KVM and on software KVM, and costs tens of cycles against a
//! fault of microseconds. KVM gives the guest the host's TSC plus a constant
//! offset (the VMM sets no TSC scaling), so differences are host TSC cycles
//! and the host converts them with the TSC rate it measures itself. `lfence`
//! keeps the read of the page from moving across either `rdtsc`.
#![no_std]
#![no_main]

#[path = "../bench_order.rs"]
mod bench_order;
mod rt;

use libmach::{traps, vm};

const PAGE: u64 = 4096;

#[inline(always)]
fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: lfence and rdtsc only read the TSC; ring 3 may (CR4.TSD is
    // clear).
    unsafe {
        core::arch::asm!("lfence", "rdtsc", "lfence", out("eax") lo, out("edx") hi,
                         options(nostack, nomem, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Fresh zero-fill memory for `len` bytes, every page touched now so no
/// fault on it lands inside a measured loop.
fn scratch(me: libmach::abi::Name, len: u64) -> Result<u64, &'static str> {
    let mut at = 0;
    vm::vm_allocate(me, &mut at, len.max(1), true).map_err(|e| e.name())?;
    for p in 0..len.div_ceil(PAGE) {
        // SAFETY: inside the region just allocated.
        unsafe { core::ptr::write_volatile((at + p * PAGE) as *mut u64, 0) };
    }
    Ok(at)
}

/// Maps host object `name` whole; (address, size in bytes).
fn map(me: libmach::abi::Name, name: &[u8]) -> Result<(u64, u64), &'static str> {
    let id = rt::object::lookup(name).map_err(rt::abi::error_name)?;
    let size = rt::object::stat(id).map_err(rt::abi::error_name)?.size;
    if size < PAGE {
        return Err("the object is smaller than a page");
    }
    let port = vm::host_object_port(id).map_err(|e| e.name())?;
    let mut at = 0;
    vm::vm_map_pager(me, &mut at, size, true, libmach::abi::VM_PROT_READ, port, 0)
        .map_err(|e| e.name())?;
    Ok((at, size))
}

fn run(random: &[u8], sequential: &[u8], seed: u64) -> Result<(), &'static str> {
    let me = traps::task_self().map_err(|e| e.name())?;
    let (r_at, r_size) = map(me, random)?;
    let pages = r_size / PAGE;
    let order_at = scratch(me, pages * 4)?;
    let times_at = scratch(me, pages * 8)?;
    // SAFETY: two regions of this task, each sized for `pages` entries.
    let (order, times) = unsafe {
        (
            core::slice::from_raw_parts_mut(order_at as *mut u32, pages as usize),
            core::slice::from_raw_parts_mut(times_at as *mut u64, pages as usize),
        )
    };
    bench_order::random_order(seed, order);

    rt::milestone(1);
    let start = tsc();
    let mut r_sum = 0u64;
    for (t, &p) in times.iter_mut().zip(order.iter()) {
        let a = (r_at + u64::from(p) * PAGE) as *const u64;
        let t0 = tsc();
        // SAFETY: a page of the mapping made above.
        r_sum = r_sum.wrapping_add(unsafe { core::ptr::read_volatile(a) });
        *t = tsc().wrapping_sub(t0);
    }
    let r_cycles = tsc().wrapping_sub(start);
    rt::milestone(2);

    let (s_at, s_size) = map(me, sequential)?;
    rt::milestone(3);
    let start = tsc();
    let mut s_sum = 0u64;
    for w in 0..s_size / 8 {
        // SAFETY: a word of the mapping made above.
        s_sum =
            s_sum.wrapping_add(unsafe { core::ptr::read_volatile((s_at + w * 8) as *const u64) });
    }
    let s_cycles = tsc().wrapping_sub(start);
    rt::milestone(4);

    println!("faultbench: random pages={pages} cycles={r_cycles} sum={r_sum}");
    println!("faultbench: sequential bytes={s_size} cycles={s_cycles} sum={s_sum}");
    // Ten to a line keeps each under the console line's 256 bytes.
    for chunk in times.chunks(10) {
        let mut l = rt::Line::new();
        let _ = core::fmt::Write::write_str(&mut l, "faultbench: t");
        for t in chunk {
            let _ = core::fmt::Write::write_fmt(&mut l, format_args!(" {t}"));
        }
        let _ = core::fmt::Write::write_str(&mut l, "\n");
        l.send();
    }
    let k = |r: Result<(), traps::KernError>| r.map_err(|e| e.name());
    k(vm::vm_deallocate(me, s_at, s_size))?;
    k(vm::vm_deallocate(me, r_at, r_size))?;
    k(vm::vm_deallocate(me, order_at, pages * 4))?;
    k(vm::vm_deallocate(me, times_at, pages * 8))
}

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args);
    let (Some(random), Some(sequential), Some(seed)) = (
        words.next(),
        words.next(),
        words.next().and_then(|s| rt::str(s).parse::<u64>().ok()),
    ) else {
        println!("usage: faultbench RANDOM SEQUENTIAL SEED");
        return 2;
    };
    match run(random, sequential, seed) {
        Ok(()) => {
            println!("faultbench: ok");
            0
        }
        Err(e) => {
            println!("faultbench: {e}");
            1
        }
    }
}
