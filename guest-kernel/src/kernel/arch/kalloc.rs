//! The kernel heap's front end: per-size-class free lists over the
//! first-fit linked-list heap.
//!
//! Why: a first-fit allocator walks its hole list on every allocation, and
//! the IPC path allocates a few small blocks per message (the copy-in
//! buffer, the kernel message, effect lists). Where ring 0 is emulated each
//! instruction of that walk costs ~1 µs. A block freed into its class is
//! handed out again by a pop: a handful of instructions.
//!
//! Bounded hoarding: each class keeps at most `KEEP` free blocks and gives
//! the rest back, so memory freed in one size stays usable for others and
//! allocation failure still means the heap is really full.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{NonNull, null_mut};
use linked_list_allocator::LockedHeap;
use spin::Mutex;

/// Block sizes of the classes; a request goes to the first that fits its
/// size and alignment (every class is a power of two, aligned to itself).
const CLASSES: [usize; 8] = [16, 32, 64, 128, 256, 512, 1024, 2048];
/// Free blocks kept per class (at most 2048 × 64 = 128 KiB in the largest).
const KEEP: usize = 64;

struct Free {
    next: Option<NonNull<Free>>,
}

struct Lists {
    head: [Option<NonNull<Free>>; CLASSES.len()],
    len: [usize; CLASSES.len()],
}

// SAFETY: the lists hold pointers into the heap only, used under the lock.
unsafe impl Send for Lists {}

pub struct KernelHeap {
    pub backing: LockedHeap,
    lists: Mutex<Lists>,
}

impl KernelHeap {
    pub const fn empty() -> KernelHeap {
        KernelHeap {
            backing: LockedHeap::empty(),
            lists: Mutex::new(Lists {
                head: [None; CLASSES.len()],
                len: [0; CLASSES.len()],
            }),
        }
    }
}

fn class_of(layout: Layout) -> Option<usize> {
    let need = layout.size().max(layout.align());
    CLASSES.iter().position(|&c| c >= need)
}

fn class_layout(c: usize) -> Layout {
    // SAFETY: every class size is a nonzero power of two.
    unsafe { Layout::from_size_align_unchecked(CLASSES[c], CLASSES[c]) }
}

// SAFETY: blocks come from the backing heap with the class's layout and go
// back to it with that same layout; a free block is on one list only.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class_of(layout) else {
            // SAFETY: forwarded unchanged.
            return unsafe { self.backing.alloc(layout) };
        };
        {
            let mut l = self.lists.lock();
            if let Some(b) = l.head[c] {
                // SAFETY: `b` is a free block of class `c` we own.
                l.head[c] = unsafe { b.as_ref().next };
                l.len[c] -= 1;
                return b.as_ptr().cast();
            }
        }
        // SAFETY: a valid nonzero layout.
        unsafe { self.backing.alloc(class_layout(c)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(c) = class_of(layout) else {
            // SAFETY: it came from the backing heap with this layout.
            return unsafe { self.backing.dealloc(ptr, layout) };
        };
        let Some(b) = NonNull::new(ptr.cast::<Free>()) else {
            return;
        };
        {
            let mut l = self.lists.lock();
            if l.len[c] < KEEP {
                // SAFETY: the block is ours again, at least 16 bytes and
                // aligned for `Free`.
                unsafe { b.as_ptr().write(Free { next: l.head[c] }) };
                l.head[c] = Some(b);
                l.len[c] += 1;
                return;
            }
        }
        // SAFETY: allocated from the backing heap with the class layout.
        unsafe { self.backing.dealloc(ptr, class_layout(c)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's layout is valid; `new_size` fits isize by contract.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if class_of(layout).is_some_and(|c| Some(c) == class_of(new)) {
            // Same block serves both sizes.
            return ptr;
        }
        // SAFETY: as `alloc`; the copy covers the smaller of the two sizes.
        unsafe {
            let p = self.alloc(new);
            if p.is_null() {
                return null_mut();
            }
            core::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
            self.dealloc(ptr, layout);
            p
        }
    }
}
