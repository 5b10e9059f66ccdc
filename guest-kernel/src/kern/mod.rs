//! Kernel-proper pure logic: the run queue.

pub mod sched;
