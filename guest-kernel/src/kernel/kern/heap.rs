//! Fallible allocation for kernel objects made on a task's behalf: a full
//! heap is an error for the caller, never an abort.

use alloc::alloc::{Layout, alloc};
use alloc::boxed::Box;

/// `Box::new` that gives the value back instead of aborting when the heap
/// is full (the caller may have to release what the value holds).
pub fn try_box<T>(value: T) -> Result<Box<T>, T> {
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        return Ok(Box::new(value));
    }
    // SAFETY: a non-zero-sized layout; the pointer is checked, written
    // once, and handed to Box, which frees it with the same layout.
    unsafe {
        let p = alloc(layout) as *mut T;
        if p.is_null() {
            return Err(value);
        }
        p.write(value);
        Ok(Box::from_raw(p))
    }
}
