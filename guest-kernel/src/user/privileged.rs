//! Executes a privileged instruction in ring 3: the kernel must kill this
//! task (general protection fault) and keep running the others.
#![no_std]
#![no_main]

mod rt;

fn main(_args: &[u8]) -> i32 {
    println!("priv: executing hlt in user mode");
    // SAFETY: deliberately faults.
    unsafe { core::arch::asm!("hlt") };
    println!("priv: still alive, which is wrong");
    0
}
