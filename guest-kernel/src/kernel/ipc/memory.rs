//! Out-of-line message data, as Mach moves it (ipc_kmsg with vm_map_copy):
//! a region in the sender's VM window is snapshotted copy-on-write at send
//! time (`VmMap::copy_out_of`, page-rounded) and the message carries the
//! snapshot's handle; at receive the snapshot is inserted anywhere in the
//! receiver's map, the data at the same offset in its first page. Regions
//! outside the window (the program image and stack) and those sent with
//! `OOL_PHYSICAL_COPY` are copied: read from the sender at send time
//! (faulting its VM pages in) and placed in a new zero-fill region of the
//! receiver. Either way the region is the receiver's to vm_deallocate.
//! Snapshots of messages destroyed unreceived are discarded by
//! `crate::vm::discard_released`.

use crate::arch::copy::read_in;
use crate::arch::mm::phys_to_virt;
use crate::vm::calls::zero_fill_region;
use crate::vm::fault::{prefault_in, resolve_in};
use crate::vm::{Parts, with_parts};
use guest_kernel::abi::{VM_MAX_ADDRESS, VM_MIN_ADDRESS};
use guest_kernel::addr::{PAGE_SIZE, VirtAddr};
use guest_kernel::ipc::{OolSink, OolSource, Snapshot};
use guest_kernel::vm::copy_store::Held;
use guest_kernel::vm::map::EntryAttrs;
use guest_kernel::vm::types::VmProt;

/// [trunc_page(addr), round_page(addr + len)) if it lies in the VM window.
fn window_pages(addr: u64, len: u64) -> Option<(u64, u64)> {
    let start = addr & !(PAGE_SIZE - 1);
    let end = addr.checked_add(len)?.checked_next_multiple_of(PAGE_SIZE)?;
    (VM_MIN_ADDRESS <= start && start < end && end <= VM_MAX_ADDRESS).then_some((start, end))
}

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
    /// A copy-on-write snapshot of the pages under the region, if they are
    /// in the window, allocated and readable, and the store has room (else
    /// the region is copied, which fails the same way if it is unreadable).
    fn snapshot(&mut self, addr: u64, len: u64) -> Option<Snapshot> {
        let (start, end) = window_pages(addr, len)?;
        if !self.parts.vm.copies.has_room() {
            return None;
        }
        let copy = with_parts(&mut self.parts, |map, objs, _, m| {
            map.copy_out_of(VirtAddr(start), end - start, objs, &mut m.pmap())
                .ok()
        })?;
        match self.parts.vm.copies.insert(copy, addr - start) {
            Ok(handle) => Some(Snapshot {
                handle,
                size: end - start,
            }),
            Err(copy) => {
                with_parts(&mut self.parts, |_, objs, _, _| copy.discard(objs));
                None
            }
        }
    }

    fn read(&mut self, addr: u64, len: u64, out: &mut [u8]) -> bool {
        len as usize == out.len()
            && prefault_in(&mut self.parts, addr, len, false).is_ok()
            && read_in(self.parts.frames, self.parts.root, VirtAddr(addr), out).is_ok()
    }

    /// OOL_DEALLOCATE: the region leaves the sender's map, after any
    /// snapshot of it was taken (memory outside the VM window, the program
    /// image and stack, stays).
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

/// The receiver's address space: a snapshot is inserted anywhere in its VM
/// window; copied data goes into a new zero-fill object mapped anywhere.
pub struct Sink<'a> {
    pub parts: Parts<'a>,
}

impl OolSink for Sink<'_> {
    /// vm_map_copyout: the snapshot's entries, copy-on-write, with what
    /// Mach gives out-of-line memory (read/write, copy inheritance). A map
    /// with no room leaves the snapshot to the message (released with it).
    fn place_snapshot(&mut self, handle: u64) -> Option<u64> {
        let Held { copy, offset } = self.parts.vm.copies.take(handle)?;
        let r = with_parts(&mut self.parts, |map, objs, _, _| {
            map.insert_copy(None, copy, Some(EntryAttrs::COPYOUT), objs)
        });
        match r {
            Ok(at) => Some(at.0 + offset),
            Err((_, copy)) => {
                let held = Held { copy, offset };
                if let Err(held) = self.parts.vm.copies.restore(handle, held) {
                    with_parts(&mut self.parts, |_, objs, _, _| held.copy.discard(objs));
                }
                None
            }
        }
    }

    fn place(&mut self, data: &[u8]) -> Option<u64> {
        let size = (data.len() as u64).div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;
        let at = with_parts(&mut self.parts, |map, objs, _, _| {
            zero_fill_region(map, objs, None, size).ok()
        })?;
        for (i, chunk) in data.chunks(PAGE_SIZE as usize).enumerate() {
            let va = VirtAddr(at.0 + i as u64 * PAGE_SIZE);
            let Ok(frame) = resolve_in(&mut self.parts, va, VmProt::WRITE, 0) else {
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
