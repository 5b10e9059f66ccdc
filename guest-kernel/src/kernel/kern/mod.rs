//! The kernel proper: tasks, scheduling and the switch, the system call
//! table, and the console.

pub mod console;
pub mod scheduler;
pub mod syscall;
pub mod task;
