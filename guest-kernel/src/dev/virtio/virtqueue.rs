//! A split virtqueue (virtio 1.2 §2.7), driver side. The rings live in
//! memory shared with the device; everything here is volatile access plus
//! the few barriers x86's ordering still needs. Descriptor ownership (which
//! heads are free) belongs to the caller: the pager driver gives each
//! request slot a fixed head, so there is no free list to walk.

use super::full_barrier;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, compiler_fence};

pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;
pub const DESC_INDIRECT: u16 = 4;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

pub const DESC_SIZE: usize = 16;

/// Bytes of each ring part for `size` entries (event-index fields included).
pub const fn desc_bytes(size: u16) -> usize {
    DESC_SIZE * size as usize
}
pub const fn avail_bytes(size: u16) -> usize {
    6 + 2 * size as usize
}
pub const fn used_bytes(size: u16) -> usize {
    6 + 8 * size as usize
}

/// Writes one descriptor (in a ring's table or an indirect table).
///
/// # Safety
/// `table` must point at writable memory with room for entry `i`.
#[inline]
pub unsafe fn write_desc(table: *mut u8, i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    // SAFETY: the caller guarantees the entry is inside the table.
    unsafe {
        // Two stores, not four: every ring-0 instruction counts where it is
        // emulated. Little-endian: len, flags, next in one quadword.
        let d = table.add(i * DESC_SIZE);
        write_volatile(d as *mut u64, addr);
        write_volatile(
            d.add(8) as *mut u64,
            u64::from(len) | (u64::from(flags) << 32) | (u64::from(next) << 48),
        );
    }
}

/// Reads descriptor `i` back: (addr, len, flags, next).
///
/// # Safety
/// As for `write_desc`.
#[inline]
pub unsafe fn read_desc(table: *const u8, i: usize) -> (u64, u32, u16, u16) {
    // SAFETY: the caller guarantees the entry is inside the table.
    unsafe {
        let d = table.add(i * DESC_SIZE);
        (
            read_volatile(d as *const u64),
            read_volatile(d.add(8) as *const u32),
            read_volatile(d.add(12) as *const u16),
            read_volatile(d.add(14) as *const u16),
        )
    }
}

/// `vring_need_event` (virtio 1.2 §2.7.10.1): has `new_idx` moved past
/// `event` since `old`?
#[inline]
pub fn need_event(event: u16, new_idx: u16, old: u16) -> bool {
    new_idx.wrapping_sub(event).wrapping_sub(1) < new_idx.wrapping_sub(old)
}

pub struct SplitQueue {
    size: u16,
    /// size - 1: queue sizes are powers of two (virtio 1.2 §2.7), so ring
    /// positions are a mask, not a division.
    mask: u16,
    desc: *mut u8,
    avail: *mut u8,
    used: *mut u8,
    event_idx: bool,
    /// Next avail slot to fill (shadow of avail.idx, ahead of it until
    /// `publish`).
    next_avail: u16,
    /// avail.idx as last written.
    published: u16,
    /// Next used entry to consume.
    last_used: u16,
    /// `last_used` when the interrupt was last armed: arming again before
    /// anything was consumed would only repeat the same write and barrier.
    armed_at: Option<u16>,
}

// SAFETY: the pointers name memory the queue's owner owns; whoever holds
// the queue (under a lock) is the only CPU touching the driver side.
unsafe impl Send for SplitQueue {}

impl SplitQueue {
    /// Takes over rings at the given addresses and clears their headers, so
    /// a queue reused after a device reset starts from index 0 like the
    /// device does.
    ///
    /// # Safety
    /// The three areas must be valid, exclusively the queue's, and large
    /// enough (`desc_bytes`, `avail_bytes`, `used_bytes`); `size` must be a
    /// power of two.
    pub unsafe fn new(
        size: u16,
        desc: *mut u8,
        avail: *mut u8,
        used: *mut u8,
        event_idx: bool,
    ) -> Self {
        // SAFETY: the caller guarantees the areas.
        unsafe {
            write_volatile(avail as *mut u32, 0);
            write_volatile(avail.add(4 + 2 * size as usize) as *mut u16, 0);
            write_volatile(used as *mut u32, 0);
            // A stale avail_event from before a reset would make us skip
            // the first notification the fresh device needs.
            write_volatile(used.add(4 + 8 * size as usize) as *mut u16, 0);
        }
        SplitQueue {
            size,
            mask: size.wrapping_sub(1),
            desc,
            avail,
            used,
            event_idx,
            next_avail: 0,
            published: 0,
            last_used: 0,
            armed_at: None,
        }
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// The descriptor table, for the owner to write heads into.
    pub fn desc_table(&self) -> *mut u8 {
        self.desc
    }

    /// Queues `head` in the available ring (not visible until `publish`).
    pub fn push(&mut self, head: u16) {
        let slot = (self.next_avail & self.mask) as usize;
        // SAFETY: slot < size, inside the avail ring.
        unsafe { write_volatile(self.avail.add(4 + 2 * slot) as *mut u16, head) };
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Heads pushed but not yet published.
    pub fn unpublished(&self) -> u16 {
        self.next_avail.wrapping_sub(self.published)
    }

    /// Makes pushed heads visible; true if the device wants a notification.
    pub fn publish(&mut self) -> bool {
        let old = self.published;
        let new = self.next_avail;
        if old == new {
            return false;
        }
        // x86 keeps stores in order; the fence keeps the compiler from
        // moving descriptor writes after the index.
        compiler_fence(Ordering::Release);
        // SAFETY: avail.idx.
        unsafe { write_volatile(self.avail.add(2) as *mut u16, new) };
        self.published = new;
        // The index store must be visible before we read the device's
        // event index, or both sides may decide not to signal.
        full_barrier();
        if self.event_idx {
            // SAFETY: used.avail_event, just past the used ring.
            let event =
                unsafe { read_volatile(self.used.add(4 + 8 * self.size as usize) as *const u16) };
            need_event(event, new, old)
        } else {
            // SAFETY: used.flags.
            let flags = unsafe { read_volatile(self.used as *const u16) };
            flags & USED_F_NO_NOTIFY == 0
        }
    }

    /// Moves `next_avail` back so that pushed but unpublished heads are
    /// forgotten (a submission that failed half way).
    pub fn unpush_all(&mut self) {
        self.next_avail = self.published;
    }

    /// The next used element (id, len), if the device returned one.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        let e = self.peek_used()?;
        self.last_used = self.last_used.wrapping_add(1);
        Some(e)
    }

    /// Used elements not taken yet.
    pub fn used_waiting(&self) -> u16 {
        // SAFETY: used.idx.
        let idx = unsafe { read_volatile(self.used.add(2) as *const u16) };
        idx.wrapping_sub(self.last_used)
    }

    /// Takes the used element `peek_used` just gave (without reading the
    /// ring again).
    pub fn skip_used(&mut self) {
        self.last_used = self.last_used.wrapping_add(1);
    }

    /// The next used element, left where it is (`pop_used` takes it).
    pub fn peek_used(&self) -> Option<(u32, u32)> {
        // SAFETY: used.idx.
        let idx = unsafe { read_volatile(self.used.add(2) as *const u16) };
        if idx == self.last_used {
            return None;
        }
        // The element is read after the index that covers it.
        compiler_fence(Ordering::Acquire);
        let slot = (self.last_used & self.mask) as usize;
        // SAFETY: slot < size, inside the used ring.
        unsafe {
            let e = self.used.add(4 + 8 * slot);
            Some((
                read_volatile(e as *const u32),
                read_volatile(e.add(4) as *const u32),
            ))
        }
    }

    /// Asks for an interrupt at the next used entry. Returns true if entries
    /// arrived meanwhile (the caller must poll again, or it could sleep
    /// through them).
    pub fn arm(&mut self) -> bool {
        if self.armed_at == Some(self.last_used) {
            // SAFETY: used.idx.
            return unsafe { read_volatile(self.used.add(2) as *const u16) != self.last_used };
        }
        self.armed_at = Some(self.last_used);
        // SAFETY: avail.used_event (just past the avail ring) / avail.flags.
        unsafe {
            if self.event_idx {
                write_volatile(
                    self.avail.add(4 + 2 * self.size as usize) as *mut u16,
                    self.last_used,
                );
            } else {
                write_volatile(self.avail as *mut u16, 0);
            }
        }
        full_barrier();
        // SAFETY: used.idx.
        unsafe { read_volatile(self.used.add(2) as *const u16) != self.last_used }
    }

    /// Asks the device not to interrupt until `arm` (virtio's
    /// "disable callbacks"): with EVENT_IDX by putting used_event just
    /// behind what was consumed, so no batch of fewer than 65535 entries
    /// crosses it; without, by VIRTQ_AVAIL_F_NO_INTERRUPT. The device may
    /// still interrupt for entries it added before it saw this.
    pub fn disarm(&mut self) {
        if self.armed_at.is_none() {
            return;
        }
        self.armed_at = None;
        // SAFETY: avail.used_event / avail.flags.
        unsafe {
            if self.event_idx {
                write_volatile(
                    self.avail.add(4 + 2 * self.size as usize) as *mut u16,
                    self.last_used.wrapping_sub(1),
                );
            } else {
                write_volatile(self.avail as *mut u16, AVAIL_F_NO_INTERRUPT);
            }
        }
    }

    pub fn is_armed(&self) -> bool {
        self.armed_at.is_some()
    }

    /// Raw index manipulation for the hostile-driver self test: publishes an
    /// avail index `ahead` entries past what was pushed.
    pub fn corrupt_avail_index(&mut self, ahead: u16) {
        let bogus = self.next_avail.wrapping_add(ahead);
        // SAFETY: avail.idx.
        unsafe { write_volatile(self.avail.add(2) as *mut u16, bogus) };
        self.published = bogus;
        self.next_avail = bogus;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_the_spec_formula() {
        // Device asked to be told once avail passes 5.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 10, 3));
        assert!(!need_event(5, 5, 3));
        assert!(!need_event(9, 6, 3));
        // Wrap-around.
        assert!(need_event(0xffff, 0, 0xfffe));
        assert!(!need_event(2, 1, 0xffff));
    }

    #[test]
    fn push_publish_pop_round_trip() {
        let size = 4u16;
        let mut desc = vec![0u8; desc_bytes(size)];
        let mut avail = vec![0xffu8; avail_bytes(size)];
        let mut used = vec![0u8; used_bytes(size)];
        // SAFETY: the vectors are large enough and outlive the queue.
        let mut q = unsafe {
            SplitQueue::new(
                size,
                desc.as_mut_ptr(),
                avail.as_mut_ptr(),
                used.as_mut_ptr(),
                true,
            )
        };
        assert_eq!(&avail[..4], &[0, 0, 0, 0], "header cleared");
        for h in [3u16, 1] {
            q.push(h);
        }
        assert_eq!(q.unpublished(), 2);
        // avail_event 0: the device wants to hear about index 1.
        assert!(q.publish());
        assert_eq!(u16::from_le_bytes([avail[2], avail[3]]), 2);
        assert_eq!(u16::from_le_bytes([avail[4], avail[5]]), 3);
        assert_eq!(u16::from_le_bytes([avail[6], avail[7]]), 1);
        // Device: used entry (id 1, len 24), then advertise avail_event 5.
        used[4..8].copy_from_slice(&1u32.to_le_bytes());
        used[8..12].copy_from_slice(&24u32.to_le_bytes());
        used[2..4].copy_from_slice(&1u16.to_le_bytes());
        let ev = 4 + 8 * size as usize;
        used[ev..ev + 2].copy_from_slice(&5u16.to_le_bytes());
        assert_eq!(q.pop_used(), Some((1, 24)));
        assert_eq!(q.pop_used(), None);
        assert!(!q.arm());
        let ue = 4 + 2 * size as usize;
        assert_eq!(u16::from_le_bytes([avail[ue], avail[ue + 1]]), 1);
        q.push(0);
        assert!(!q.publish(), "device is not waiting for index 3");
        // Pushed but never published heads can be dropped.
        q.push(2);
        q.unpush_all();
        assert_eq!(q.unpublished(), 0);
        // SAFETY: the table has 4 entries.
        unsafe { write_desc(desc.as_mut_ptr(), 2, 0x1000, 4096, DESC_WRITE, 0) };
        // SAFETY: as above.
        assert_eq!(
            unsafe { read_desc(desc.as_ptr(), 2) },
            (0x1000, 4096, DESC_WRITE, 0)
        );
    }
}
