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

/// Largest memory object: the largest file offset (`off_t` is signed 64
/// bits) in whole pages. Any size up to it rounds up to whole pages without
/// overflow, and every offset in it is valid for pread/pwrite. Sizes that
/// peers report (NBD servers, external pagers) are checked against it.
pub const MAX_OBJECT_SIZE: u64 = (i64::MAX as u64) & !(PAGE_SIZE - 1);

/// `n` rounded up to whole pages. Only for sizes within MAX_OBJECT_SIZE.
pub(crate) fn round_up_page(n: u64) -> u64 {
    n.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// Refuses an object size `who` reported that no memory object can have.
pub(crate) fn check_object_size(size: u64, who: impl std::fmt::Display) -> Result<u64> {
    if size > MAX_OBJECT_SIZE {
        return Err(PagerError::Protocol(format!(
            "{who} reports an object of {size} bytes; a memory object has at most {MAX_OBJECT_SIZE} bytes"
        )));
    }
    Ok(size)
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
    // Backends keep their sizes within MAX_OBJECT_SIZE; checked all the
    // same, since an overflow here would wave any range through.
    let end_pages = size
        .div_ceil(PAGE_SIZE)
        .checked_mul(PAGE_SIZE)
        .ok_or(bad("the object's size is out of range"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_near_the_top_are_refused_not_wrapped() {
        assert_eq!(
            check_object_size(MAX_OBJECT_SIZE, "x").unwrap(),
            MAX_OBJECT_SIZE
        );
        assert_eq!(round_up_page(MAX_OBJECT_SIZE - 1), MAX_OBJECT_SIZE);
        for size in [MAX_OBJECT_SIZE + 1, u64::MAX - 4095, u64::MAX] {
            let e = check_object_size(size, "nbd server h:1").unwrap_err();
            assert!(e.to_string().contains("nbd server h:1 reports"), "{e}");
        }
        let mut buf = vec![0u8; 4096];
        let b = [VolatileSlice::from(&mut buf[..])];
        let e = check_range(ObjectOffset(u64::MAX - 4095), 4096, u64::MAX, &b).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }
}
