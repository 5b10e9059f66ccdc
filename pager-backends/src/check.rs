//! Validation every backend applies to a request before touching storage:
//! the kernel side is untrusted input as far as a pager is concerned.

use crate::error::{PagerError, Result};
use crate::sg;
use crate::types::{ObjectOffset, PAGE_SIZE};
use vm_memory::VolatileSlice;

/// Largest single request (data request or write) a backend accepts. Large
/// enough for generous read-ahead, small enough that one request cannot pin
/// a remote pager or an NBD server for long.
pub const MAX_REQUEST: u64 = 8 << 20;

pub(crate) fn round_up_page(n: u64) -> u64 {
    n.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// Checks offset/length/buffers against the object size. `size` need not be
/// a page multiple: the last partial page is addressable as a whole page.
pub(crate) fn check_range(
    offset: ObjectOffset,
    len: u64,
    size: u64,
    bufs: &[VolatileSlice<'_>],
) -> Result<()> {
    let bad = |why| PagerError::BadRange { offset, len, why };
    if !offset.is_page_aligned() {
        return Err(bad("offset is not page aligned"));
    }
    if len == 0 {
        return Err(bad("length is zero"));
    }
    if !len.is_multiple_of(PAGE_SIZE) {
        return Err(bad("length is not a whole number of pages"));
    }
    if len > MAX_REQUEST {
        return Err(bad("length exceeds the maximum request size"));
    }
    if sg::total_len(bufs) < len {
        return Err(bad("buffers are shorter than the length"));
    }
    let end_pages = round_up_page(size);
    if offset.raw() >= end_pages {
        return Err(PagerError::PastEnd { offset, size });
    }
    match offset.checked_add(len) {
        Some(end) if end.raw() <= end_pages => Ok(()),
        _ => Err(bad("range extends past the end of the object")),
    }
}

/// How many bytes of buffer the caller offered in total, in whole pages,
/// capped at MAX_REQUEST: the most a reply may fill with read-ahead.
pub(crate) fn offered(bufs: &[VolatileSlice<'_>]) -> u64 {
    (sg::total_len(bufs).min(MAX_REQUEST) / PAGE_SIZE) * PAGE_SIZE
}
