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
    static __text_start: u8;
    static __rodata_start: u8;
    static __data_start: u8;
    static __kernel_end: u8;
}

/// The image's sections (kernel.ld), as link addresses, page-aligned.
struct Image {
    text: u64,
    rodata: u64,
    data: u64,
    end: u64,
}

fn image() -> Image {
    Image {
        text: &raw const __text_start as u64,
        rodata: &raw const __rodata_start as u64,
        data: &raw const __data_start as u64,
        end: &raw const __kernel_end as u64,
    }
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

/// The kernel half, W^X: text read-only and executable, rodata read-only,
/// data and stacks writable, all else no-execute; guard pages below every
/// static stack left out. The direct map's alias of text and rodata is
/// read-only too (else the text could be rewritten through it), so the
/// 2 MiB spans holding the image are mapped with 4 KiB pages there.
fn map_kernel(
    tables: &mut DirectTables,
    root: PhysAddr,
    ram_end: u64,
) -> Result<(), paging::MapError> {
    let im = image();
    let phys = |va: u64| kernel_virt_to_phys(va);
    let rx = 0;
    let ro = NO_EXECUTE;
    let rw = WRITABLE | NO_EXECUTE;
    for (from, to, rights) in [
        (im.text, im.rodata, rx),
        (im.rodata, im.data, ro),
        (im.data, im.end, rw),
    ] {
        paging::map_small_range(tables, root, VirtAddr(from), phys(from), to - from, rights)?;
    }
    for (guard, _) in super::kstack::static_guards() {
        paging::unmap(tables, root, VirtAddr(guard));
    }

    let small_end = phys(im.end).0.div_ceil(LARGE_PAGE_SIZE) * LARGE_PAGE_SIZE;
    let (ro_from, ro_to) = (phys(im.text).0, phys(im.data).0);
    for (from, to, rights) in [
        (0, ro_from, rw),
        (ro_from, ro_to, ro),
        (ro_to, small_end, rw),
    ] {
        paging::map_small_range(
            tables,
            root,
            VirtAddr(DIRECT_MAP_BASE + from),
            PhysAddr(from),
            to - from,
            rights,
        )?;
    }
    let direct = ram_end.div_ceil(LARGE_PAGE_SIZE) * LARGE_PAGE_SIZE;
    if direct > small_end {
        paging::map_large_range(
            tables,
            root,
            VirtAddr(DIRECT_MAP_BASE + small_end),
            PhysAddr(small_end),
            direct - small_end,
            rw,
        )?;
    }
    Ok(())
}

/// Checks W^X over the kernel half of `root` (the kernel's own tables, and
/// the half every address space shares).
pub fn audit_wx(frames: &mut FrameAllocator, root: PhysAddr) -> paging::WxAudit {
    paging::audit_wx(&mut DirectTables(frames), root)
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
    map_kernel(&mut tables, root, ram_end).map_err(|_| MemError::NoTables)?;
    if !super::kstack::init(&mut frames, root) {
        return Err(MemError::NoTables);
    }
    super::protect::enable_paging_rights();
    // SAFETY: the new tables map the kernel image and the direct map at the
    // addresses the boot tables did (with tighter rights; the running code
    // and its stack keep theirs); only the low identity map goes away.
    unsafe { crate::arch::cpu::set_cr3(root.0) };
    Ok(Memory {
        frames,
        kernel_root: root,
        heap_bytes: heap_pages * PAGE_SIZE,
    })
}
