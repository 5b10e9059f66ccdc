//! Out-of-line message data, by copy for now (the VM issue maps it
//! copy-on-write instead, behind the same two traits): read from the
//! sender at send time, placed in fresh pages of the receiver.

use crate::arch::copy::read_in;
use crate::arch::mm::{DirectTables, alloc_zeroed, phys_to_virt};
use alloc::vec::Vec;
use guest_kernel::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use guest_kernel::arch::paging::{self, NO_EXECUTE, PageSize, USER, WRITABLE};
use guest_kernel::ipc::{OolSink, OolSource};
use guest_kernel::vm::frame::FrameAllocator;

/// The sender's address space.
pub struct Source<'a> {
    pub frames: &'a mut FrameAllocator,
    pub root: PhysAddr,
}

impl OolSource for Source<'_> {
    fn read(&mut self, addr: u64, len: u64, out: &mut [u8]) -> bool {
        len as usize == out.len() && read_in(self.frames, self.root, VirtAddr(addr), out).is_ok()
    }
}

/// The receiver's address space: regions go at `next`, page by page, up to
/// `end`; the frames are recorded for the task to free.
pub struct Sink<'a> {
    pub frames: &'a mut FrameAllocator,
    pub root: PhysAddr,
    pub next: u64,
    pub end: u64,
    pub placed: Vec<PhysAddr>,
}

impl OolSink for Sink<'_> {
    fn place(&mut self, data: &[u8]) -> Option<u64> {
        let pages = (data.len() as u64).div_ceil(PAGE_SIZE).max(1);
        let at = self.next;
        if at.checked_add(pages * PAGE_SIZE)? > self.end
            || self.placed.try_reserve(pages as usize).is_err()
        {
            return None;
        }
        let first = self.placed.len();
        for i in 0..pages {
            let ok = alloc_zeroed(self.frames).and_then(|pa| {
                let va = VirtAddr(at + i * PAGE_SIZE);
                let flags = USER | WRITABLE | NO_EXECUTE;
                paging::map(
                    &mut DirectTables(self.frames),
                    self.root,
                    va,
                    pa,
                    flags,
                    PageSize::Small,
                )
                .ok()
                .map(|_| pa)
            });
            match ok {
                Some(pa) => {
                    let off = (i * PAGE_SIZE) as usize;
                    let n = data.len().saturating_sub(off).min(PAGE_SIZE as usize);
                    // SAFETY: a fresh frame of the receiver, through the
                    // direct map.
                    unsafe {
                        core::ptr::copy_nonoverlapping(data[off..].as_ptr(), phys_to_virt(pa), n)
                    };
                    self.placed.push(pa);
                }
                None => {
                    // Undo this region: unmap and free what was placed.
                    for (j, pa) in self.placed.drain(first..).enumerate() {
                        let _ = paging::unmap(
                            &mut DirectTables(self.frames),
                            self.root,
                            VirtAddr(at + j as u64 * PAGE_SIZE),
                        );
                        self.frames.free(pa);
                    }
                    return None;
                }
            }
        }
        self.next = at + pages * PAGE_SIZE;
        Some(at)
    }
}
