//! Virtual-memory pure logic (paper §5): the physical frame allocator and the
//! types the map, object, page and fault modules share.

pub mod copy_store;
pub mod fault;
pub mod fault_around;
pub mod frame;
pub mod lock_completion;
pub mod map;
pub mod memory_object;
pub mod object;
pub mod page;
pub mod pageout;
pub mod pmap;
pub mod readahead;
pub mod swap;
pub mod types;
