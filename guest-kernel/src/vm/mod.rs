//! Virtual-memory pure logic: the physical frame allocator.

pub mod frame;
