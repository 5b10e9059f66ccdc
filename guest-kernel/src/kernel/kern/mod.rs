//! The kernel proper: tasks, threads, scheduling and the switch, the system
//! call table, and the console.

pub mod bootstrap;
pub mod clock;
pub mod console;
pub mod heap;
pub mod scheduler;
pub mod syscall;
pub mod task;
pub mod thread;
