//! Virtual memory. Today: reading and writing memory objects served through
//! the virtio-pager device into a task's own pages; the Mach VM system
//! (maps, objects, faults, pageout) grows here.

pub mod object_io;
