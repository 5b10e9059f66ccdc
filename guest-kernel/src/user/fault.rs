//! Touches an unmapped address: the kernel must kill this task, report the
//! fault address, and keep running the others.
#![no_std]
#![no_main]

mod rt;

const UNMAPPED: usize = 0xdead_0000;

fn main(_args: &[u8]) -> i32 {
    println!("fault: writing to {UNMAPPED:#x}");
    // SAFETY: deliberately not safe: this page is not mapped.
    unsafe { core::ptr::write_volatile(UNMAPPED as *mut u64, 1) };
    println!("fault: still alive, which is wrong");
    0
}
