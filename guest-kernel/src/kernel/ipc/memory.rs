//! Out-of-line message data, by copy for now: read from the sender's
//! memory at send time (faulting its VM pages in), placed in a new region of
//! the receiver's address map, which it frees with vm_deallocate. Mapping
//! the sender's pages copy-on-write instead is the next step, behind the
//! same two traits.

use crate::arch::copy::read_in;
use crate::arch::mm::phys_to_virt;
use crate::vm::calls::zero_fill_region;
use crate::vm::fault::{prefault_in, resolve_in};
use crate::vm::{Parts, with_parts};
use guest_kernel::addr::{PAGE_SIZE, VirtAddr};
use guest_kernel::ipc::{OolSink, OolSource};
use guest_kernel::vm::types::VmProt;

/// A message with no out-of-line items needs no address space.
pub struct NoOol;

impl OolSource for NoOol {
    fn read(&mut self, _: u64, _: u64, _: &mut [u8]) -> bool {
        false
    }
}

impl OolSink for NoOol {
    fn place(&mut self, _: &[u8]) -> Option<u64> {
        None
    }
}

/// The sender's address space.
pub struct Source<'a> {
    pub parts: Parts<'a>,
}

impl OolSource for Source<'_> {
    fn read(&mut self, addr: u64, len: u64, out: &mut [u8]) -> bool {
        len as usize == out.len()
            && prefault_in(&mut self.parts, addr, len, false).is_ok()
            && read_in(self.parts.frames, self.parts.root, VirtAddr(addr), out).is_ok()
    }

    /// OOL_DEALLOCATE: the region leaves the sender's map (memory outside
    /// the VM window, the program image and stack, stays).
    fn deallocate(&mut self, addr: u64, len: u64) {
        let start = addr & !(PAGE_SIZE - 1);
        let Some(end) = addr
            .checked_add(len)
            .and_then(|e| e.checked_next_multiple_of(PAGE_SIZE))
        else {
            return;
        };
        if end > start && crate::vm::fault::in_window(start, end - start) {
            with_parts(&mut self.parts, |map, objs, _, m| {
                let _ = map.deallocate(VirtAddr(start), end - start, objs, &mut m.pmap());
            });
        }
    }
}

/// The receiver's address space: each region becomes a new zero-fill
/// object mapped anywhere in its VM window, filled with the data.
pub struct Sink<'a> {
    pub parts: Parts<'a>,
}

impl OolSink for Sink<'_> {
    fn place(&mut self, data: &[u8]) -> Option<u64> {
        let size = (data.len() as u64).div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;
        let at = with_parts(&mut self.parts, |map, objs, _, _| {
            zero_fill_region(map, objs, None, size).ok()
        })?;
        for (i, chunk) in data.chunks(PAGE_SIZE as usize).enumerate() {
            let va = VirtAddr(at.0 + i as u64 * PAGE_SIZE);
            let Ok(frame) = resolve_in(&mut self.parts, va, VmProt::WRITE) else {
                with_parts(&mut self.parts, |map, objs, _, m| {
                    let _ = map.deallocate(at, size, objs, &mut m.pmap());
                });
                return None;
            };
            // SAFETY: the frame just mapped for the receiver's new region,
            // through the direct map.
            unsafe {
                core::ptr::copy_nonoverlapping(chunk.as_ptr(), phys_to_virt(frame), chunk.len())
            };
        }
        Some(at.0)
    }
}
