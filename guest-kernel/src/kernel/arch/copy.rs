//! copyin/copyout: every user pointer is checked against the task's page
//! tables before the kernel touches the memory behind it, and user memory
//! is reached through the direct map, never through the user mapping (so a
//! user can't make the kernel fault or write its own pages behind a
//! read-only mapping).

use crate::arch::mm::{DirectTables, phys_to_virt};
use crate::kern::scheduler::Kernel;
use alloc::vec::Vec;
use guest_kernel::abi::{ERR_BAD_ADDRESS, ERR_INVALID, ERR_NO_MEMORY};
use guest_kernel::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use guest_kernel::arch::paging::{self, USER, WRITABLE};

/// Walks the user range page by page: `(physical address, length)` pieces,
/// or an error if any page is not mapped for the user.
pub fn user_pieces(
    k: &mut Kernel,
    va: VirtAddr,
    len: u64,
    need: u64,
    mut each: impl FnMut(PhysAddr, u64),
) -> Result<(), i64> {
    let end = va.checked_add(len).ok_or(ERR_BAD_ADDRESS)?;
    if !va.is_user() || (len > 0 && !VirtAddr(end.0 - 1).is_user()) {
        return Err(ERR_BAD_ADDRESS);
    }
    let (_, root) = k.current_task().ok_or(ERR_BAD_ADDRESS)?;
    let mut walker = paging::Walker::new(root);
    let mut at = va;
    while at < end {
        let (pa, flags) = walker
            .translate(&mut DirectTables(&mut k.frames), at)
            .ok_or(ERR_BAD_ADDRESS)?;
        if flags & need != need {
            return Err(ERR_BAD_ADDRESS);
        }
        let n = (PAGE_SIZE - at.page_offset()).min(end.0 - at.0);
        each(pa, n);
        at = VirtAddr(at.0 + n);
    }
    Ok(())
}

pub fn copy_from_user(k: &mut Kernel, va: VirtAddr, len: u64, max: u64) -> Result<Vec<u8>, i64> {
    if len > max {
        return Err(ERR_INVALID);
    }
    let mut out = Vec::new();
    out.try_reserve_exact(len as usize)
        .map_err(|_| ERR_NO_MEMORY)?;
    user_pieces(k, va, len, USER, |pa, n| {
        // SAFETY: a user page just checked, read through the direct map.
        out.extend_from_slice(unsafe { core::slice::from_raw_parts(phys_to_virt(pa), n as usize) })
    })?;
    Ok(out)
}

/// Copies `bytes` into the user's writable pages at `va`.
pub fn copy_to_user(k: &mut Kernel, va: VirtAddr, bytes: &[u8]) -> Result<(), i64> {
    // Check the whole range first so a bad tail writes nothing.
    user_pieces(k, va, bytes.len() as u64, USER | WRITABLE, |_, _| {})?;
    let mut done = 0usize;
    user_pieces(k, va, bytes.len() as u64, USER | WRITABLE, |pa, n| {
        let n = n as usize;
        // SAFETY: a user page just checked writable, through the direct map.
        unsafe { core::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), phys_to_virt(pa), n) };
        done += n;
    })
}
