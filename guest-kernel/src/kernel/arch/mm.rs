//! Memory at boot and after: the frame allocator, the kernel heap, and the
//! kernel's own page tables (all RAM in the direct map, the image in the
//! top 2 GiB).

use super::kalloc::KernelHeap;
use guest_kernel::addr::{
    DIRECT_MAP_BASE, KERNEL_BASE, LARGE_PAGE_SIZE, PAGE_SIZE, PhysAddr, VirtAddr,
};
use guest_kernel::arch::paging::{self, NO_CACHE, NO_EXECUTE, TableMemory, WRITABLE};
use guest_kernel::bootinfo::{BootInfo, PhysRead};
use guest_kernel::vm::frame::FrameAllocator;

#[global_allocator]
static HEAP: KernelHeap = KernelHeap::empty();

/// Kernel heap (task and thread records, kernel stacks, queued messages):
/// an eighth of RAM, between 4 MiB and 64 MiB.
const HEAP_MIN_PAGES: u64 = 1024;
const HEAP_MAX_PAGES: u64 = 16 * 1024;

unsafe extern "C" {
    static __kernel_end: u8;
}

pub fn phys_to_virt(pa: PhysAddr) -> *mut u8 {
    (DIRECT_MAP_BASE + pa.0) as *mut u8
}

pub fn kernel_virt_to_phys(va: u64) -> PhysAddr {
    PhysAddr(va - KERNEL_BASE)
}

pub fn kernel_end() -> PhysAddr {
    kernel_virt_to_phys(&raw const __kernel_end as u64)
}

/// Reads physical memory through the direct map (the VMM's boot tables map
/// it too, so this works before and after the switch to the kernel's own).
pub struct DirectRead;
impl PhysRead for DirectRead {
    fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> bool {
        if addr
            .0
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > 1 << 46)
        {
            return false;
        }
        // SAFETY: the direct map covers the boot data the VMM placed.
        unsafe { core::ptr::copy_nonoverlapping(phys_to_virt(addr), buf.as_mut_ptr(), buf.len()) };
        true
    }
}

/// Table frames come from the frame allocator and are reached through the
/// direct map.
pub struct DirectTables<'a>(pub &'a mut FrameAllocator);
impl TableMemory for DirectTables<'_> {
    fn table(&mut self, frame: PhysAddr) -> &mut [u64; 512] {
        // SAFETY: `frame` is a page-table frame this kernel allocated.
        unsafe { &mut *(phys_to_virt(frame) as *mut [u64; 512]) }
    }
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        alloc_zeroed(self.0)
    }
}

/// A zeroed frame; only recycled frames cost a clear.
pub fn alloc_zeroed(frames: &mut FrameAllocator) -> Option<PhysAddr> {
    let f = frames.alloc()?;
    if !f.zeroed {
        // SAFETY: a free frame, reached through the direct map.
        unsafe { core::ptr::write_bytes(phys_to_virt(f.addr), 0, PAGE_SIZE as usize) };
    }
    Some(f.addr)
}

/// Makes device registers at `pa` reachable through the direct map
/// (uncached, 2 MiB granule). RAM that is already mapped there stays as it
/// is: KVM traps every access to an address without a memory slot anyway.
pub fn map_mmio(frames: &mut FrameAllocator, root: PhysAddr, pa: PhysAddr) -> bool {
    let base = pa.align_down(LARGE_PAGE_SIZE);
    let va = VirtAddr(DIRECT_MAP_BASE + base.0);
    let mut tables = DirectTables(frames);
    if paging::translate(&mut tables, root, va).is_some() {
        return true;
    }
    paging::map_large_range(
        &mut tables,
        root,
        va,
        base,
        LARGE_PAGE_SIZE,
        WRITABLE | NO_EXECUTE | NO_CACHE,
    )
    .is_ok()
}

pub struct Memory {
    pub frames: FrameAllocator,
    pub kernel_root: PhysAddr,
    pub heap_bytes: u64,
}

#[derive(Debug)]
pub enum MemError {
    NoHeap,
    NoTables,
}

pub fn init(boot: &BootInfo) -> Result<Memory, MemError> {
    let floor = kernel_end().max(boot.modules_end());
    let mut frames = FrameAllocator::new(boot.ram().map(|r| (r.start, r.size)), floor);

    let heap_pages = (frames.total_frames() / 8).clamp(HEAP_MIN_PAGES, HEAP_MAX_PAGES);
    let heap = frames
        .alloc_contiguous(heap_pages)
        .ok_or(MemError::NoHeap)?;
    // SAFETY: the range is fresh RAM no one else uses, mapped by the direct map.
    unsafe {
        HEAP.backing
            .lock()
            .init(phys_to_virt(heap), (heap_pages * PAGE_SIZE) as usize)
    };

    let mut tables = DirectTables(&mut frames);
    let root = tables.alloc_table().ok_or(MemError::NoTables)?;
    let ram_end = boot.ram().map(|r| r.start.0 + r.size).max().unwrap_or(0);
    let direct = ram_end.div_ceil(LARGE_PAGE_SIZE) * LARGE_PAGE_SIZE;
    paging::map_large_range(
        &mut tables,
        root,
        VirtAddr(DIRECT_MAP_BASE),
        PhysAddr(0),
        direct,
        WRITABLE | NO_EXECUTE,
    )
    .map_err(|_| MemError::NoTables)?;
    let image = kernel_end().0.div_ceil(LARGE_PAGE_SIZE) * LARGE_PAGE_SIZE;
    paging::map_large_range(
        &mut tables,
        root,
        VirtAddr(KERNEL_BASE),
        PhysAddr(0),
        image,
        WRITABLE,
    )
    .map_err(|_| MemError::NoTables)?;
    // SAFETY: the new tables map the kernel image and the direct map exactly
    // as the boot tables did; only the low identity map goes away.
    unsafe { crate::arch::cpu::set_cr3(root.0) };
    Ok(Memory {
        frames,
        kernel_root: root,
        heap_bytes: heap_pages * PAGE_SIZE,
    })
}
