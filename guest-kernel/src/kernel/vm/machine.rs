//! The kernel's side of the machine-independent VM: its long-lived state
//! (the object table and the reverse maps), and the glue that lets the pure
//! fault, map and object code drive real page tables, real frames and the
//! TLB. Everything here is thin; the logic is in guest_kernel::vm.

use crate::arch::mm::phys_to_virt;
use core::cell::RefCell;
use guest_kernel::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use guest_kernel::arch::paging::TableMemory;
use guest_kernel::arch::pmap::{PvTable, Tlb, X86PhysMaps, X86Pmap};
use guest_kernel::vm::copy_store::CopyStore;
use guest_kernel::vm::fault::{FaultMachine, PageIn};
use guest_kernel::vm::frame::{Frame, FrameAllocator};
use guest_kernel::vm::object::Objects;
use guest_kernel::vm::object::PagerPort;
use guest_kernel::vm::page::FrameSource;
use guest_kernel::vm::pmap::{PhysMaps, Pmap};
use guest_kernel::vm::types::{ObjectId, ObjectOffset, VmError, VmProt};

/// Heap bytes one resident page or one mapping costs the kernel at most
/// (the page record, up to twice over while its arena doubles, a free-list
/// slot and a hash bucket; a pv entry). The limits below keep
/// the VM's bookkeeping inside its share of the heap, so a task touching
/// memory meets ResourceShortage, never a heap abort.
const PAGE_RECORD_BYTES: u64 = 160;
const PV_RECORD_BYTES: u64 = 48;
/// The pv table's word per frame of RAM, taken off the share first.
const PV_FRAME_BYTES: u64 = 4;
/// Memory objects alive at once (every vm_allocate and copy-on-write shadow
/// makes one).
const OBJECT_LIMIT: usize = 16 * 1024;
/// Copy-on-write snapshots carried by messages at once, and their entries
/// (each a few dozen heap bytes; a region that is one map entry, however
/// large, is one). Past either, a region is copied instead.
const SNAPSHOT_LIMIT: usize = 4096;
const SNAPSHOT_ENTRY_LIMIT: usize = 16 * 1024;
/// Frames kept back from unprivileged faults for the kernel's own needs
/// (page tables, the pageout path and the default pager, §6.2.3).
pub const RESERVED_FRAMES: u64 = 256;

/// Fault and page counters (vm_statistics).
#[derive(Clone, Copy, Debug, Default)]
pub struct VmCounters {
    pub faults: u64,
    pub zero_fill: u64,
    /// Zero fills whose frame the kernel had to clear (a recycled frame).
    pub zeroed_by_kernel: u64,
    pub cow_faults: u64,
    pub soft_faults: u64,
}

pub struct Vm {
    pub objects: Objects,
    pub pv: PvTable,
    pub counters: VmCounters,
    /// Out-of-line snapshots in messages in flight (handles in the IPC).
    pub copies: CopyStore,
}

impl Vm {
    /// Sized from the RAM the frame allocator manages and the heap share the
    /// VM may use.
    pub fn new(total_frames: u64, heap_bytes: u64) -> Vm {
        let share = (heap_bytes / 4).saturating_sub(total_frames * PV_FRAME_BYTES);
        let pages = (share / PAGE_RECORD_BYTES).min(total_frames);
        let maps = share / PV_RECORD_BYTES;
        let mut objects = Objects::new(OBJECT_LIMIT, pages as usize, RESERVED_FRAMES);
        // The time stamp counter at boot is secret enough to keep tasks from
        // aiming page offsets at one hash bucket; the table is empty now, so
        // this cannot fail.
        // SAFETY: rdtsc has no memory effects.
        let _ = objects
            .pages
            .seed_hash(unsafe { core::arch::x86_64::_rdtsc() });
        Vm {
            objects,
            pv: PvTable::new(maps as usize),
            counters: VmCounters::default(),
            copies: CopyStore::new(SNAPSHOT_LIMIT, SNAPSHOT_ENTRY_LIMIT),
        }
    }
}

/// The frame allocator shared by the page tables the pmap grows and the
/// frames the VM takes for pages: both are needed at once during a fault,
/// and each use borrows only for the one allocation.
pub struct SharedFrames<'a>(pub &'a RefCell<&'a mut FrameAllocator>);

impl FrameSource for SharedFrames<'_> {
    fn alloc_frame(&mut self) -> Option<Frame> {
        self.0.borrow_mut().alloc()
    }
    fn free_frame(&mut self, frame: PhysAddr) {
        self.0.borrow_mut().free(frame)
    }
    fn free_count(&self) -> u64 {
        self.0.borrow().free_frames()
    }
}

impl TableMemory for SharedFrames<'_> {
    fn table(&mut self, frame: PhysAddr) -> &mut [u64; 512] {
        // SAFETY: `frame` is a page-table frame of this kernel, reached
        // through the direct map.
        unsafe { &mut *(phys_to_virt(frame) as *mut [u64; 512]) }
    }
    fn alloc_table(&mut self) -> Option<PhysAddr> {
        crate::arch::mm::alloc_zeroed(&mut self.0.borrow_mut())
    }
}

/// On one CPU only the loaded address space can cache a translation.
pub struct LoadedTlb {
    pub loaded: PhysAddr,
}

impl Tlb for LoadedTlb {
    fn invalidate(&mut self, root: PhysAddr, va: VirtAddr) {
        if root == self.loaded {
            crate::arch::cpu::invlpg(va.0);
        }
    }
}

/// One VM operation's view of the machine: the space it works on, every
/// space's mappings of a frame, and frame contents through the direct map.
pub struct Machine<'a> {
    pub tables: SharedFrames<'a>,
    pub pv: &'a mut PvTable,
    pub tlb: LoadedTlb,
    pub root: PhysAddr,
    /// The host-object transfers, where a fault may ask a pager itself
    /// (`page_in`); absent for operations that run from a completion.
    pub pager: Option<&'a mut super::pager::HostPaging>,
}

impl<'a> Machine<'a> {
    /// The pmap of the space this operation works on.
    pub fn pmap(&mut self) -> X86Pmap<'_, SharedFrames<'a>> {
        X86Pmap {
            mem: &mut self.tables,
            pv: self.pv,
            tlb: &mut self.tlb,
            root: self.root,
        }
    }
    fn phys(&mut self) -> X86PhysMaps<'_, SharedFrames<'a>> {
        X86PhysMaps {
            mem: &mut self.tables,
            pv: self.pv,
            tlb: &mut self.tlb,
        }
    }
}

impl PhysMaps for Machine<'_> {
    fn page_protect(&mut self, frame: PhysAddr, prot: VmProt) {
        self.phys().page_protect(frame, prot)
    }
    fn clear_referenced(&mut self, frame: PhysAddr) -> bool {
        self.phys().clear_referenced(frame)
    }
    fn clear_modified(&mut self, frame: PhysAddr) -> bool {
        self.phys().clear_modified(frame)
    }
}

impl FaultMachine for Machine<'_> {
    fn enter(&mut self, va: VirtAddr, frame: PhysAddr, prot: VmProt) -> Result<(), VmError> {
        self.pmap().enter(va, frame, prot)
    }
    fn mapped(&mut self, va: VirtAddr) -> bool {
        self.pmap().lookup(va).is_some()
    }
    fn enter_ahead(&mut self, va: VirtAddr, frames: &[PhysAddr], prot: VmProt) -> usize {
        self.pmap().enter_ahead(va, frames, prot)
    }
    fn zero_frame(&mut self, frame: PhysAddr) {
        crate::arch::copy::zero_frame(frame);
    }
    fn page_in(
        &mut self,
        object: ObjectId,
        pager: PagerPort,
        offset: ObjectOffset,
        size: u64,
        desired: VmProt,
    ) -> PageIn {
        let (PagerPort::Pager(p), Some(paging)) = (pager, self.pager.as_deref_mut()) else {
            return PageIn::Later;
        };
        let mut frames = self.tables.0.borrow_mut();
        super::pager::page_in(paging, &mut frames, object, p, offset, size, desired)
    }
    fn copy_frame(&mut self, src: PhysAddr, dst: PhysAddr) {
        // SAFETY: two distinct frames the VM owns, through the direct map.
        unsafe {
            core::ptr::copy_nonoverlapping(
                phys_to_virt(src) as *const u64,
                phys_to_virt(dst) as *mut u64,
                (PAGE_SIZE / 8) as usize,
            )
        }
    }
}
