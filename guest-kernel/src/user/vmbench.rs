//! `vmbench PAGES`: the guest side of `vmm bench vm`. Each loop touches
//! PAGES pages, one fault per page, between two benchmark marks (the VMM
//! samples the vCPU's statistics at each):
//! 1-2 zero fill on fresh frames, 3-4 soft faults (reading a vm_read copy
//! whose pages are resident), 5-6 copy-on-write faults (writing that copy),
//! 7-8 zero fill on recycled frames (the kernel clears each one);
//! with `vmbench PAGES OBJECT`, 9-10 faults on a host object mapped with
//! vm_allocate_with_pager (each a data_request the device fills);
//! 11-12 faults on a memory object served by a pager thread of this task
//! (each a data_request message and a data_provided answer).
#![no_std]
#![no_main]

#[path = "computed_pager.rs"]
mod computed_pager;
mod rt;

use libmach::traps;
use libmach::vm;
use rt::abi;

const PAGE: u64 = 4096;

fn touch(at: u64, pages: u64, write: bool) -> u64 {
    let mut sum = 0u64;
    for p in 0..pages {
        let a = (at + p * PAGE) as *mut u64;
        // SAFETY: a page of memory this task allocated.
        unsafe {
            if write {
                core::ptr::write_volatile(a, p);
            } else {
                sum = sum.wrapping_add(core::ptr::read_volatile(a));
            }
        }
    }
    sum
}

/// Reads the first `pages` pages of host object `name` through a mapping.
fn host_object(name: &[u8], pages: u64) -> Result<(), &'static str> {
    let me = traps::task_self().map_err(|e| e.name())?;
    let id = rt::object::lookup(name).map_err(abi::error_name)?;
    let port = vm::host_object_port(id).map_err(|e| e.name())?;
    let mut at = 0;
    vm::vm_allocate_with_pager(me, &mut at, pages * PAGE, true, port, 0).map_err(|e| e.name())?;
    rt::milestone(9);
    touch(at, pages, false);
    rt::milestone(10);
    vm::vm_deallocate(me, at, pages * PAGE).map_err(|e| e.name())
}

/// Reads `pages` pages of a memory object our own pager thread serves.
fn user_pager(pages: u64) -> Result<(), &'static str> {
    use core::sync::atomic::Ordering;
    let e = |e: traps::KernError| e.name();
    let me = traps::task_self().map_err(e)?;
    let port = traps::port_allocate_with_send().map_err(e)?;
    computed_pager::LOCK_WRITES.store(0, Ordering::SeqCst);
    let t = computed_pager::spawn(me, port).map_err(e)?;
    let mut at = 0;
    vm::vm_allocate_with_pager(me, &mut at, pages * PAGE, true, port, 0).map_err(e)?;
    rt::milestone(11);
    touch(at, pages, false);
    rt::milestone(12);
    vm::vm_deallocate(me, at, pages * PAGE).map_err(e)?;
    let _ = traps::port_deallocate(t);
    Ok(())
}

fn run(pages: u64) -> Result<(), &'static str> {
    let me = traps::task_self().map_err(|e| e.name())?;
    let size = pages * PAGE;
    let k = |r: Result<(), traps::KernError>| r.map_err(|e| e.name());
    let mut a = 0;
    k(vm::vm_allocate(me, &mut a, size, true))?;
    rt::milestone(1);
    touch(a, pages, true);
    rt::milestone(2);
    let c = vm::vm_read(me, a, size).map_err(|e| e.name())?;
    rt::milestone(3);
    let sum = touch(c, pages, false);
    rt::milestone(4);
    if sum != pages * (pages - 1) / 2 {
        return Err("the copy does not hold what was written");
    }
    rt::milestone(5);
    touch(c, pages, true);
    rt::milestone(6);
    k(vm::vm_deallocate(me, c, size))?;
    k(vm::vm_deallocate(me, a, size))?;
    let mut b = 0;
    k(vm::vm_allocate(me, &mut b, size, true))?;
    rt::milestone(7);
    touch(b, pages, true);
    rt::milestone(8);
    k(vm::vm_deallocate(me, b, size))
}

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args);
    let pages = words.next().and_then(rt::parse_size).unwrap_or(1000).max(1);
    let object = words.next();
    let all = run(pages)
        .and_then(|()| user_pager(pages))
        .and_then(|()| object.map_or(Ok(()), |o| host_object(o, pages)));
    match all {
        Ok(()) => {
            println!("vmbench: {pages} pages per case: ok");
            0
        }
        Err(e) => {
            println!("vmbench: {e}");
            1
        }
    }
}
