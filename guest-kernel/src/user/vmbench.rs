//! `vmbench PAGES`: the guest side of `vmm bench vm`. Each loop touches
//! PAGES pages, one fault per page, between two benchmark marks (the VMM
//! samples the vCPU's statistics at each):
//! 1-2 zero fill on fresh frames, 3-4 soft faults (reading a vm_read copy
//! whose pages are resident), 5-6 copy-on-write faults (writing that copy),
//! 7-8 zero fill on recycled frames (the kernel clears each one).
//!
//! Then out-of-line data, one message from this task to itself (send and
//! receive): 9-10 a 64 MiB region (every page resident) by copy-on-write
//! mapping, 11-12 reading one word per page of the first COPY bytes of
//! what arrived (soft faults), 13-14 the first COPY bytes of the same
//! region by copy (`OOL_PHYSICAL_COPY`), 15-16 reading those. COPY is the
//! most the kernel's bounds on copied bytes allow (16 MiB per message,
//! less in flight on a small heap); the run prints it.
//!
//! Then, with `vmbench PAGES OBJECT`, 17-18 faults on a host object mapped
//! with vm_allocate_with_pager (each a data_request the device fills), and
//! 19-20 faults on a memory object served by a pager thread of this task
//! (each a data_request message and a data_provided answer).
#![no_std]
#![no_main]

#[path = "computed_pager.rs"]
mod computed_pager;
mod rt;

use libmach::abi::{self, Name};
use libmach::message::{Builder, Item, Message, MsgBuf};
use libmach::traps;
use libmach::vm;

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
    let id = rt::object::lookup(name).map_err(rt::abi::error_name)?;
    let port = vm::host_object_port(id).map_err(|e| e.name())?;
    let mut at = 0;
    vm::vm_map_pager(
        me,
        &mut at,
        pages * PAGE,
        true,
        libmach::abi::VM_PROT_READ,
        port,
        0,
    )
    .map_err(|e| e.name())?;
    rt::milestone(17);
    touch(at, pages, false);
    rt::milestone(18);
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
    rt::milestone(19);
    touch(at, pages, false);
    rt::milestone(20);
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

static mut BUF: MsgBuf<256> = MsgBuf([0; 256]);

#[allow(clippy::deref_addrof)]
fn buf() -> &'static mut [u8] {
    // SAFETY: only the main thread uses it, never reentrantly.
    unsafe { &mut (*(&raw mut BUF)).0 }
}

/// Sends `len` bytes at `at` to `port` out of line (by copy with
/// `physical`) and receives the message; where the region arrived.
fn ool_round(port: Name, at: u64, len: u64, physical: bool) -> Result<u64, traps::MsgError> {
    let b = buf();
    let mut m = Builder::new(b);
    m.dest(port, abi::MAKE_SEND_ONCE).id(1);
    if physical {
        // SAFETY: [at, at + len) is ours and mapped.
        m.ool_physical(unsafe { core::slice::from_raw_parts(at as *const u8, len as usize) });
    } else {
        // SAFETY: as above; without deallocate the region is only read.
        unsafe { m.ool_raw(at, len as usize, false) };
    }
    let n = m
        .finish()
        .map_err(|_| traps::MsgError(abi::SEND_INVALID_TYPE))?;
    traps::msg_send(&b[..n], Some(0))?;
    let n = traps::msg_receive(b, port, Some(0))?;
    let m = Message::parse(&b[..n]).map_err(|_| traps::MsgError(abi::RCV_INVALID_DATA))?;
    m.items()
        .find_map(|i| match i {
            Item::Ool { addr, len: l, .. } if u64::from(l) == len => Some(addr),
            _ => None,
        })
        .ok_or(traps::MsgError(abi::RCV_INVALID_DATA))
}

const OOL_BYTES: u64 = 64 << 20;

fn out_of_line() -> Result<u64, &'static str> {
    let me = traps::task_self().map_err(|e| e.name())?;
    let k = |r: Result<(), traps::KernError>| r.map_err(|e| e.name());
    let m = |r: Result<u64, traps::MsgError>| r.map_err(|e| e.name());
    let pages = OOL_BYTES / PAGE;
    let mut a = 0;
    k(vm::vm_allocate(me, &mut a, OOL_BYTES, true))?;
    touch(a, pages, true);
    let port = traps::port_allocate().map_err(|e| e.name())?;
    // The largest copy the bounds take, to a MiB: down from OOL_MAX until
    // one fits (a refused send is turned down before anything is copied).
    const MIB: u64 = 1 << 20;
    let mut copy = abi::OOL_MAX;
    let by_copy = loop {
        match ool_round(port, a, copy, true) {
            Ok(got) => break got,
            Err(traps::MsgError(abi::SEND_NO_BUFFER | abi::SEND_TOO_LARGE)) if copy > MIB => {
                copy -= MIB
            }
            Err(e) => return Err(e.name()),
        }
    };
    k(vm::vm_deallocate(me, by_copy, copy))?;
    let copy_pages = copy / PAGE;
    rt::milestone(9);
    let mapped = m(ool_round(port, a, OOL_BYTES, false))?;
    rt::milestone(10);
    rt::milestone(11);
    let sum = touch(mapped, copy_pages, false);
    rt::milestone(12);
    if sum != copy_pages * (copy_pages - 1) / 2 {
        return Err("the mapped region does not hold what was sent");
    }
    rt::milestone(13);
    let copied = m(ool_round(port, a, copy, true))?;
    rt::milestone(14);
    rt::milestone(15);
    let sum = touch(copied, copy_pages, false);
    rt::milestone(16);
    if sum != copy_pages * (copy_pages - 1) / 2 {
        return Err("the copied region does not hold what was sent");
    }
    k(vm::vm_deallocate(me, copied, copy))?;
    k(vm::vm_deallocate(me, mapped, OOL_BYTES))?;
    k(vm::vm_deallocate(me, a, OOL_BYTES))?;
    let _ = traps::port_deallocate(port);
    Ok(copy)
}

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args);
    let pages = words.next().and_then(rt::parse_size).unwrap_or(1000).max(1);
    let object = words.next();
    let all = run(pages)
        .and_then(|()| out_of_line())
        .and_then(|copy| user_pager(pages).map(|()| copy))
        .and_then(|copy| object.map_or(Ok(copy), |o| host_object(o, pages).map(|()| copy)));
    match all {
        Ok(copy) => {
            println!("vmbench: {pages} pages per case, out-of-line copy of {copy} bytes: ok");
            0
        }
        Err(e) => {
            println!("vmbench: {e}");
            1
        }
    }
}
