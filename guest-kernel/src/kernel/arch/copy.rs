//! copyin/copyout: every user pointer is checked against the task's page
//! tables before the kernel touches the memory behind it, and user memory
//! is reached through the direct map, never through the user mapping (so a
//! user can't make the kernel fault or write its own pages behind a
//! read-only mapping). The `_in` forms work on any task's address space
//! (a message delivered straight into a waiting receiver's buffer). Pages of
//! the VM window not yet present are faulted in first (vm::fault::prefault),
//! as a copyin fault would be.

use crate::arch::mm::{DirectTables, phys_to_virt};
use crate::kern::scheduler::Kernel;
use alloc::vec::Vec;
use guest_kernel::abi::{ERR_BAD_ADDRESS, ERR_INVALID, ERR_NO_MEMORY};
use guest_kernel::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use guest_kernel::arch::paging::{self, USER, WRITABLE};
use guest_kernel::vm::frame::FrameAllocator;

/// Walks the user range of the address space `root` page by page:
/// `(physical address, length)` pieces, or an error if any page is not
/// mapped with `need` rights for the user.
pub fn pieces_in(
    frames: &mut FrameAllocator,
    root: PhysAddr,
    va: VirtAddr,
    len: u64,
    need: u64,
    mut each: impl FnMut(PhysAddr, u64),
) -> Result<(), i64> {
    let end = va.checked_add(len).ok_or(ERR_BAD_ADDRESS)?;
    if !va.is_user() || (len > 0 && !VirtAddr(end.0 - 1).is_user()) || root.0 == 0 {
        return Err(ERR_BAD_ADDRESS);
    }
    let mut walker = paging::Walker::new(root);
    let mut at = va;
    while at < end {
        let (pa, flags) = walker
            .translate(&mut DirectTables(frames), at)
            .ok_or(ERR_BAD_ADDRESS)?;
        if flags & (need | USER) != need | USER {
            return Err(ERR_BAD_ADDRESS);
        }
        let n = (PAGE_SIZE - at.page_offset()).min(end.0 - at.0);
        each(pa, n);
        at = VirtAddr(at.0 + n);
    }
    Ok(())
}

/// Reads `out.len()` bytes at `va` of the address space `root`.
pub fn read_in(
    frames: &mut FrameAllocator,
    root: PhysAddr,
    va: VirtAddr,
    out: &mut [u8],
) -> Result<(), i64> {
    let mut done = 0usize;
    pieces_in(frames, root, va, out.len() as u64, USER, |pa, n| {
        let n = n as usize;
        // SAFETY: a user page just checked, read through the direct map.
        unsafe { core::ptr::copy_nonoverlapping(phys_to_virt(pa), out[done..].as_mut_ptr(), n) };
        done += n;
    })
}

/// Writes `bytes` at `va` of the address space `root` (writable user
/// pages only; nothing is written unless all of the range is). A range of
/// a few pages (every message up to 8 KiB) is walked once: the check keeps
/// its translations and the copy uses them.
pub fn write_in(
    frames: &mut FrameAllocator,
    root: PhysAddr,
    va: VirtAddr,
    bytes: &[u8],
) -> Result<(), i64> {
    const KEPT: usize = 4;
    let mut kept = [(PhysAddr(0), 0u64); KEPT];
    let mut count = 0usize;
    pieces_in(frames, root, va, bytes.len() as u64, WRITABLE, |pa, n| {
        if let Some(slot) = kept.get_mut(count) {
            *slot = (pa, n);
        }
        count += 1;
    })?;
    let mut done = 0usize;
    let mut put = |pa: PhysAddr, n: u64| {
        let n = n as usize;
        // SAFETY: a user page just checked writable, through the direct map.
        unsafe { core::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), phys_to_virt(pa), n) };
        done += n;
    };
    if count <= KEPT {
        for &(pa, n) in &kept[..count] {
            put(pa, n);
        }
    } else {
        pieces_in(frames, root, va, bytes.len() as u64, WRITABLE, put)?;
    }
    mark_written(frames, root, va, bytes.len() as u64);
    Ok(())
}

/// The pages of the VM window the kernel (or a device) wrote at `va`
/// through the direct map are modified, as if the task had written them:
/// pageout and termination must write them back (a message received into
/// a mapped file, into anonymous memory), not drop them as clean. Pages
/// outside the window are never paged out.
pub fn mark_written(frames: &mut FrameAllocator, root: PhysAddr, va: VirtAddr, len: u64) {
    if !crate::vm::fault::in_window(va.0, len) {
        return;
    }
    let end = va.0.saturating_add(len);
    let mut at = va.0 & !(PAGE_SIZE - 1);
    while at < end {
        if crate::vm::fault::in_window(at, 1) {
            paging::mark_written(&mut DirectTables(frames), root, VirtAddr(at));
        }
        at += PAGE_SIZE;
    }
}

/// `pieces_in` for the running thread's task.
pub fn user_pieces(
    k: &mut Kernel,
    va: VirtAddr,
    len: u64,
    need: u64,
    each: impl FnMut(PhysAddr, u64),
) -> Result<(), i64> {
    let (task, root) = k.current_task().ok_or(ERR_BAD_ADDRESS)?;
    crate::vm::fault::prefault(k, task, va.0, len, need & WRITABLE != 0)?;
    pieces_in(&mut k.frames, root, va, len, need, each)
}

/// Reads into `out` from the running task.
pub fn read_user(k: &mut Kernel, va: VirtAddr, out: &mut [u8]) -> Result<(), i64> {
    let (task, root) = k.current_task().ok_or(ERR_BAD_ADDRESS)?;
    crate::vm::fault::prefault(k, task, va.0, out.len() as u64, false)?;
    read_in(&mut k.frames, root, va, out)
}

/// Copies at most `max` bytes from the running task into a new buffer.
pub fn copy_from_user(k: &mut Kernel, va: VirtAddr, len: u64, max: u64) -> Result<Vec<u8>, i64> {
    if len > max {
        return Err(ERR_INVALID);
    }
    let mut out = Vec::new();
    out.try_reserve_exact(len as usize)
        .map_err(|_| ERR_NO_MEMORY)?;
    out.resize(len as usize, 0);
    read_user(k, va, &mut out)?;
    Ok(out)
}

/// Copies `bytes` into the running task's writable pages at `va`.
pub fn copy_to_user(k: &mut Kernel, va: VirtAddr, bytes: &[u8]) -> Result<(), i64> {
    let (task, root) = k.current_task().ok_or(ERR_BAD_ADDRESS)?;
    crate::vm::fault::prefault(k, task, va.0, bytes.len() as u64, true)?;
    write_in(&mut k.frames, root, va, bytes)
}

/// Clears a frame through the direct map: one `rep stosq` (512 stores),
/// which on emulated ring 0 costs far less than byte-wise clearing.
pub fn zero_frame(frame: PhysAddr) {
    // SAFETY: a frame the caller owns, reached through the direct map.
    unsafe {
        core::arch::asm!("rep stosq", inout("rdi") phys_to_virt(frame) => _,
            inout("rcx") PAGE_SIZE / 8 => _, in("rax") 0u64, options(nostack))
    }
}
