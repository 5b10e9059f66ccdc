//! Kernel stacks with guard pages: an overflow runs into an unmapped page
//! and is reported (kernel_fault names the stack), instead of silently
//! overwriting whatever lies below.
//!
//! Static stacks (boot, IST) carry their guard page in front of them; the
//! kernel's page tables leave it out (arch/mm.rs). Threads' stacks are heap
//! memory mapped a second time into a slot of the stack area
//! (`KERNEL_STACKS_BASE`), one unmapped page between slots, and used only
//! at that address. The area's upper tables are made at boot and shared by
//! every address space (their PML4 slot is copied into each), so a stack
//! mapped later is seen by all of them.

use crate::arch::cpu;
use crate::arch::mm::{DirectTables, alloc_zeroed};
use alloc::alloc::{Layout, alloc, alloc_zeroed as heap_zeroed, dealloc};
use guest_kernel::addr::{DIRECT_MAP_BASE, KERNEL_STACKS_BASE, PAGE_SIZE, PhysAddr};
use guest_kernel::arch::paging::{NO_EXECUTE, PRESENT, TableMemory, WRITABLE};
use guest_kernel::vm::frame::FrameAllocator;
use spin::Mutex;

pub const GUARD_SIZE: usize = PAGE_SIZE as usize;

/// A statically allocated stack with its guard page below it.
#[repr(C, align(4096))]
pub struct GuardedStack<const N: usize> {
    guard: [u8; GUARD_SIZE],
    stack: [u8; N],
}

impl<const N: usize> GuardedStack<N> {
    pub const fn new() -> Self {
        GuardedStack {
            guard: [0; GUARD_SIZE],
            stack: [0; N],
        }
    }
    /// Address of the guard page (to leave unmapped).
    pub fn guard(this: *const Self) -> u64 {
        this as u64
    }
    /// Initial stack pointer.
    pub fn top(this: *const Self) -> u64 {
        this as u64 + (GUARD_SIZE + N) as u64
    }
}

/// Size of the boot stack (used until the first task runs). kmain builds
/// the kernel's state in its frame (over 50 KiB, most of it the
/// page-transfer slots); 32 KiB once overflowed into the IST stacks.
pub const BOOT_STACK_SIZE: usize = 128 * 1024;
const IST_STACK_SIZE: usize = 8 * 1024;
const IDLE_STACK_SIZE: usize = 16 * 1024;

// Not in .bss: stacks need no zeroing, and zeroing costs ring-0 work.
#[unsafe(link_section = ".stack")]
pub static mut BOOT_STACK: GuardedStack<BOOT_STACK_SIZE> = GuardedStack::new();
/// Double fault, NMI, machine check (gdt.rs).
#[unsafe(link_section = ".stack")]
static mut IST_STACKS: [GuardedStack<IST_STACK_SIZE>; 3] = [const { GuardedStack::new() }; 3];
/// What the scheduler's idle loop runs on.
#[unsafe(link_section = ".stack")]
static mut IDLE_STACK: GuardedStack<IDLE_STACK_SIZE> = GuardedStack::new();

pub fn ist_top(i: usize) -> u64 {
    let ist = &raw const IST_STACKS;
    // SAFETY: the address of an element (`i` < 3 by the caller), not read.
    GuardedStack::top(unsafe { &raw const (*ist)[i.min(2)] })
}

pub fn idle_top() -> u64 {
    GuardedStack::top(&raw const IDLE_STACK)
}

/// The static stacks' guard pages, with the stack's name: the kernel's
/// page tables leave them unmapped (arch/mm.rs).
pub fn static_guards() -> [(u64, &'static str); 5] {
    let ist = &raw const IST_STACKS;
    // SAFETY: addresses of the statics' elements, nothing is read.
    let g = |i: usize| GuardedStack::guard(unsafe { &raw const (*ist)[i] });
    [
        (GuardedStack::guard(&raw const BOOT_STACK), "boot"),
        (g(0), "double-fault"),
        (g(1), "NMI"),
        (g(2), "machine-check"),
        (GuardedStack::guard(&raw const IDLE_STACK), "idle"),
    ]
}

/// A thread's kernel stack: 16 KiB.
pub const KSTACK_PAGES: u64 = 4;
pub const KSTACK_SIZE: u64 = KSTACK_PAGES * PAGE_SIZE;
/// Stack plus the guard page below it.
const SLOT_PAGES: u64 = KSTACK_PAGES + 1;
/// Threads the kernel can hold at once (64 tasks × 64 threads): the area is
/// 80 MiB of address space, inside the one page directory made at boot.
const SLOTS: usize = 64 * 64;
const WORDS: usize = SLOTS / 64;
const _: () = assert!(SLOTS as u64 * SLOT_PAGES * PAGE_SIZE <= 1 << 30);
/// Page tables of the area, each covering 2 MiB (102 slots), made when the
/// first slot in their range is used and kept.
const TABLES: usize = (SLOTS * SLOT_PAGES as usize).div_ceil(512);
const STACK_LAYOUT: Layout = match Layout::from_size_align(KSTACK_SIZE as usize, 4096) {
    Ok(l) => l,
    Err(_) => panic!("bad kernel stack layout"),
};
const TABLE_LAYOUT: Layout = match Layout::from_size_align(4096, 4096) {
    Ok(l) => l,
    Err(_) => panic!("bad page-table layout"),
};

struct Area {
    /// The page directory covering the area (0 before `init`).
    pd: PhysAddr,
    tables: [Option<PhysAddr>; TABLES],
    used: [u64; WORDS],
}

static AREA: Mutex<Area> = Mutex::new(Area {
    pd: PhysAddr(0),
    tables: [None; TABLES],
    used: [0; WORDS],
});

/// Makes the area's PDPT and page directory and hooks them into
/// `kernel_root` (before any address space copies the kernel half).
pub fn init(frames: &mut FrameAllocator, kernel_root: PhysAddr) -> bool {
    let (Some(pdpt), Some(pd)) = (alloc_zeroed(frames), alloc_zeroed(frames)) else {
        return false;
    };
    let mut t = DirectTables(frames);
    let slot = ((KERNEL_STACKS_BASE >> 39) & 511) as usize;
    let pdpt_index = ((KERNEL_STACKS_BASE >> 30) & 511) as usize;
    t.table(pdpt)[pdpt_index] = pd.0 | PRESENT | WRITABLE;
    t.table(kernel_root)[slot] = pdpt.0 | PRESENT | WRITABLE;
    AREA.lock().pd = pd;
    true
}

fn slot_base(slot: usize) -> u64 {
    KERNEL_STACKS_BASE + slot as u64 * SLOT_PAGES * PAGE_SIZE
}

/// The heap is in the direct map, so its blocks' physical addresses are
/// their offsets there.
fn heap_phys(p: *mut u8) -> PhysAddr {
    PhysAddr(p as u64 - DIRECT_MAP_BASE)
}

fn table(pa: PhysAddr) -> &'static mut [u64; 512] {
    // SAFETY: a page table of the area, reached through the direct map;
    // used under the AREA lock only.
    unsafe { &mut *((DIRECT_MAP_BASE + pa.0) as *mut [u64; 512]) }
}

/// A thread's kernel stack; unmapped and freed on drop, which its owner
/// delays until no trap path can be running on it (the graveyard).
pub struct KernelStack {
    slot: u32,
    mem: *mut u8,
}

impl KernelStack {
    /// A fresh stack, or None when the heap or the slots are exhausted.
    pub fn new() -> Option<KernelStack> {
        let mut a = AREA.lock();
        if a.pd.0 == 0 {
            return None;
        }
        let slot = (0..WORDS).find_map(|w| {
            let free = !a.used[w];
            (free != 0).then(|| w * 64 + free.trailing_zeros() as usize)
        })?;
        let base = slot_base(slot);
        let first = ((base - KERNEL_STACKS_BASE) / PAGE_SIZE) as usize + 1;
        // Make the page tables the slot's pages fall in (at most two).
        for page in [first, first + KSTACK_PAGES as usize - 1] {
            let ti = page / 512;
            if a.tables[ti].is_none() {
                // SAFETY: a page-sized, page-aligned block; checked below.
                let t = unsafe { heap_zeroed(TABLE_LAYOUT) };
                if t.is_null() {
                    return None;
                }
                let pa = heap_phys(t);
                table(a.pd)[ti] = pa.0 | PRESENT | WRITABLE;
                a.tables[ti] = Some(pa);
            }
        }
        // SAFETY: a non-zero layout; checked for null. No zeroing: a stack
        // is written before it is read.
        let mem = unsafe { alloc(STACK_LAYOUT) };
        if mem.is_null() {
            return None;
        }
        let pa = heap_phys(mem);
        for i in 0..KSTACK_PAGES as usize {
            let page = first + i;
            if let Some(t) = a.tables[page / 512] {
                table(t)[page % 512] =
                    (pa.0 + i as u64 * PAGE_SIZE) | PRESENT | WRITABLE | NO_EXECUTE;
            }
        }
        a.used[slot / 64] |= 1 << (slot % 64);
        Some(KernelStack {
            slot: slot as u32,
            mem,
        })
    }

    /// Initial stack pointer.
    pub fn top(&self) -> u64 {
        slot_base(self.slot as usize) + SLOT_PAGES * PAGE_SIZE
    }
}

impl Drop for KernelStack {
    fn drop(&mut self) {
        let mut a = AREA.lock();
        let slot = self.slot as usize;
        let base = slot_base(slot);
        let first = ((base - KERNEL_STACKS_BASE) / PAGE_SIZE) as usize + 1;
        for i in 0..KSTACK_PAGES as usize {
            let page = first + i;
            if let Some(t) = a.tables[page / 512] {
                table(t)[page % 512] = 0;
            }
            // Only this CPU can hold the translation (one CPU today; with
            // more, this becomes a shootdown).
            cpu::invlpg(base + (1 + i as u64) * PAGE_SIZE);
        }
        a.used[slot / 64] &= !(1 << (slot % 64));
        // SAFETY: allocated in `new` with this layout; no mapping of the
        // slot is left and the owner guarantees nothing runs on it.
        unsafe { dealloc(self.mem, STACK_LAYOUT) };
    }
}

/// If `addr` is the guard page of a thread's kernel stack: which slot.
pub fn guard_slot(addr: u64) -> Option<usize> {
    let off = addr.checked_sub(KERNEL_STACKS_BASE)?;
    let slot = (off / (SLOT_PAGES * PAGE_SIZE)) as usize;
    (slot < SLOTS && off % (SLOT_PAGES * PAGE_SIZE) < PAGE_SIZE).then_some(slot)
}
