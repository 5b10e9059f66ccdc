//! Physical frame allocator.
//!
//! Guest RAM starts zeroed, and zeroing a page in ring 0 is costly where
//! ring 0 is emulated (hundreds of µs), so the allocator tells the caller
//! whether a frame is known to be zero: frames never handed out before are;
//! recycled frames are not, and only those get zeroed (by the caller).

use crate::addr::{PAGE_SIZE, PhysAddr};
use crate::bootinfo::MAX_REGIONS;
use alloc::vec::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub addr: PhysAddr,
    /// The frame's contents are all zero.
    pub zeroed: bool,
}

pub struct FrameAllocator {
    /// Never-used RAM, as [start, end) page-aligned ranges.
    fresh: [(u64, u64); MAX_REGIONS],
    nr_fresh: usize,
    /// Frames given back; contents unknown. Empty (no heap use) until the
    /// first free, which only happens once the heap is up.
    recycled: Vec<PhysAddr>,
    /// Frames left in `fresh`, kept so `free_frames` (asked on every page
    /// fault, for the reserve) is not a walk over the ranges.
    fresh_left: u64,
    total: u64,
    /// Frames a device is reading or writing for a task (object I/O), by
    /// address: one freed meanwhile (its region unmapped, its object gone)
    /// is kept until the device is done, so it never becomes someone
    /// else's memory under a transfer. Empty but for transfers in flight.
    pinned: Vec<Pin>,
}

#[derive(Clone, Copy, Debug)]
struct Pin {
    frame: PhysAddr,
    count: u32,
    /// Freed while pinned: goes back at the last unpin.
    freed: bool,
}

impl FrameAllocator {
    /// Manages the RAM ranges `(start, size)` above `floor` (everything
    /// below holds the kernel image, boot data and modules).
    pub fn new(ram: impl Iterator<Item = (PhysAddr, u64)>, floor: PhysAddr) -> FrameAllocator {
        let mut fa = FrameAllocator {
            fresh: [(0, 0); MAX_REGIONS],
            nr_fresh: 0,
            recycled: Vec::new(),
            fresh_left: 0,
            total: 0,
            pinned: Vec::new(),
        };
        for (start, size) in ram {
            let end = start.0.saturating_add(size) & !(PAGE_SIZE - 1);
            let start = start.0.max(floor.0).saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
            if start < end && fa.nr_fresh < MAX_REGIONS {
                fa.fresh[fa.nr_fresh] = (start, end);
                fa.nr_fresh += 1;
                fa.total += (end - start) / PAGE_SIZE;
                fa.fresh_left += (end - start) / PAGE_SIZE;
            }
        }
        fa
    }

    pub fn alloc(&mut self) -> Option<Frame> {
        if let Some(addr) = self.recycled.pop() {
            return Some(Frame {
                addr,
                zeroed: false,
            });
        }
        self.alloc_contiguous(1)
            .map(|addr| Frame { addr, zeroed: true })
    }

    /// `pages` physically contiguous, never-used (so zeroed) frames.
    pub fn alloc_contiguous(&mut self, pages: u64) -> Option<PhysAddr> {
        let bytes = pages.checked_mul(PAGE_SIZE)?;
        for r in self.fresh[..self.nr_fresh].iter_mut() {
            if r.1 - r.0 >= bytes {
                let at = r.0;
                r.0 += bytes;
                self.fresh_left -= pages;
                return Some(PhysAddr(at));
            }
        }
        None
    }

    /// Fills `out` with frames (contents unknown to the caller: a device
    /// is about to fill them), recycled ones first, then a run of fresh
    /// ones taken at once; how many it filled. A read-ahead cluster's
    /// frames cost one call, not one each.
    pub fn alloc_into(&mut self, out: &mut [PhysAddr]) -> usize {
        let mut n = 0;
        while n < out.len()
            && let Some(f) = self.recycled.pop()
        {
            out[n] = f;
            n += 1;
        }
        let recycled = n;
        if n < out.len() {
            for r in self.fresh[..self.nr_fresh].iter_mut() {
                while n < out.len() && r.0 < r.1 {
                    out[n] = PhysAddr(r.0);
                    r.0 += PAGE_SIZE;
                    n += 1;
                }
            }
        }
        self.fresh_left -= (n - recycled) as u64;
        n
    }

    pub fn free(&mut self, frame: PhysAddr) {
        debug_assert!(frame.is_aligned(PAGE_SIZE));
        if !self.pinned.is_empty()
            && let Ok(i) = self.pinned.binary_search_by_key(&frame, |p| p.frame)
        {
            self.pinned[i].freed = true;
            return;
        }
        self.recycled.push(frame);
    }

    /// Pins `frames` for a device transfer: until `unpin`, freeing one
    /// only marks it. False, with nothing pinned, without memory to note
    /// them (the transfer must not start).
    pub fn pin(&mut self, frames: &[PhysAddr]) -> bool {
        if self.pinned.try_reserve(frames.len()).is_err() {
            return false;
        }
        for &frame in frames {
            match self.pinned.binary_search_by_key(&frame, |p| p.frame) {
                Ok(i) => self.pinned[i].count = self.pinned[i].count.saturating_add(1),
                Err(i) => self.pinned.insert(
                    i,
                    Pin {
                        frame,
                        count: 1,
                        freed: false,
                    },
                ),
            }
        }
        true
    }

    /// The device is done with `frame`: at its last unpin, a frame freed
    /// meanwhile goes back.
    pub fn unpin(&mut self, frame: PhysAddr) {
        let Ok(i) = self.pinned.binary_search_by_key(&frame, |p| p.frame) else {
            return;
        };
        let p = &mut self.pinned[i];
        p.count -= 1;
        if p.count == 0 {
            let freed = p.freed;
            self.pinned.remove(i);
            if freed {
                self.recycled.push(frame);
            }
        }
    }

    pub fn free_frames(&self) -> u64 {
        self.fresh_left + self.recycled.len() as u64
    }

    pub fn total_frames(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_frame_freed_meanwhile_comes_back_only_at_its_last_unpin() {
        let mut fa = FrameAllocator::new(
            [(PhysAddr(0x10_0000), 2 * PAGE_SIZE)].into_iter(),
            PhysAddr(0),
        );
        let a = fa.alloc().unwrap().addr;
        let b = fa.alloc().unwrap().addr;
        assert!(fa.alloc().is_none());
        // Two transfers on `a`, one on `b`.
        assert!(fa.pin(&[a, b]));
        assert!(fa.pin(&[a]));
        fa.free(a);
        fa.free(b);
        assert_eq!(fa.free_frames(), 0, "pinned frames are not handed out");
        assert!(fa.alloc().is_none());
        fa.unpin(b);
        assert_eq!(fa.alloc().map(|f| f.addr), Some(b));
        fa.unpin(a);
        assert!(fa.alloc().is_none(), "a is still under the second transfer");
        fa.unpin(a);
        assert_eq!(fa.alloc().map(|f| f.addr), Some(a));
        // Unpinned and never freed: stays its owner's; a stray unpin is
        // ignored.
        assert!(fa.pin(&[b]));
        fa.unpin(b);
        fa.unpin(b);
        assert!(fa.alloc().is_none());
        fa.free(b);
        assert_eq!(fa.alloc().map(|f| f.addr), Some(b));
    }

    #[test]
    fn alloc_into_takes_recycled_frames_then_a_fresh_run() {
        let ram = [(PhysAddr(0x100000), 0x4000), (PhysAddr(0x200000), 0x2000)];
        let mut fa = FrameAllocator::new(ram.into_iter(), PhysAddr(0));
        assert_eq!(fa.free_frames(), 6);
        let mut first = [PhysAddr(0); 2];
        assert_eq!(fa.alloc_into(&mut first), 2);
        assert_eq!(first, [PhysAddr(0x100000), PhysAddr(0x101000)]);
        fa.free(PhysAddr(0x101000));
        fa.free(PhysAddr(0x100000));
        // The two recycled (last freed first), then fresh across both ranges.
        let mut out = [PhysAddr(0); 8];
        assert_eq!(fa.alloc_into(&mut out), 6);
        assert_eq!(
            out[..6],
            [
                PhysAddr(0x100000),
                PhysAddr(0x101000),
                PhysAddr(0x102000),
                PhysAddr(0x103000),
                PhysAddr(0x200000),
                PhysAddr(0x201000)
            ]
        );
        assert_eq!(fa.free_frames(), 0);
        assert_eq!(fa.alloc_into(&mut out), 0);
    }

    #[test]
    fn allocates_above_floor_and_recycles_dirty() {
        let ram = [(PhysAddr(0), 0x9f000), (PhysAddr(0x100000), 0x300000)];
        let mut fa = FrameAllocator::new(ram.into_iter(), PhysAddr(0x180800));
        assert_eq!(fa.total_frames(), (0x400000 - 0x181000) / PAGE_SIZE);
        let f = fa.alloc().unwrap();
        assert_eq!(
            f,
            Frame {
                addr: PhysAddr(0x181000),
                zeroed: true
            }
        );
        fa.free(f.addr);
        assert_eq!(
            fa.alloc().unwrap(),
            Frame {
                addr: PhysAddr(0x181000),
                zeroed: false
            }
        );
        assert_eq!(fa.alloc().unwrap().addr, PhysAddr(0x182000));
    }

    #[test]
    fn contiguous_skips_small_ranges_and_exhausts() {
        let ram = [(PhysAddr(0x1000), 0x2000), (PhysAddr(0x10000), 0x8000)];
        let mut fa = FrameAllocator::new(ram.into_iter(), PhysAddr(0));
        assert_eq!(fa.alloc_contiguous(4), Some(PhysAddr(0x10000)));
        assert_eq!(fa.alloc_contiguous(5), None);
        assert_eq!(fa.free_frames(), 2 + 4);
        let mut n = 0;
        while fa.alloc().is_some() {
            n += 1;
        }
        assert_eq!(n, 6);
        assert_eq!(fa.alloc_contiguous(u64::MAX), None);
    }

    #[test]
    fn unaligned_regions_are_trimmed() {
        let ram = [(PhysAddr(0x1234), 0x3000)];
        let fa = FrameAllocator::new(ram.into_iter(), PhysAddr(0));
        // [0x2000, 0x4000) survives
        assert_eq!(fa.total_frames(), 2);
    }
}
