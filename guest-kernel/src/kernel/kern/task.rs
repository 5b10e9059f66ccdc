//! A task (paper §3.1): the unit of resource allocation, an address space
//! (built from an embedded program's ELF image) and the threads that run in
//! it; its teardown.

use crate::arch::mm::{DirectTables, alloc_zeroed, phys_to_virt};
use crate::kern::thread::UserStart;
use alloc::vec::Vec;
use guest_kernel::abi::{USER_STACK_PAGES, USER_STACK_TOP, VM_MAX_ADDRESS, VM_MIN_ADDRESS};
use guest_kernel::addr::{PAGE_SIZE, PhysAddr, VirtAddr};
use guest_kernel::arch::paging::{
    self, MapError, NO_EXECUTE, PageSize, TableMemory, USER, WRITABLE,
};
use guest_kernel::bootinfo::Module;
use guest_kernel::elf::{Elf, ElfError};
use guest_kernel::ipc::{PortId, SpaceId};
use guest_kernel::kern::sched::{TaskId, ThreadId};
use guest_kernel::vm::frame::FrameAllocator;
use guest_kernel::vm::map::VmMap;

/// Bytes of arguments a task starts with: users may pass 1,024 (the spawn
/// call's bound); the kernel's bootstrap name server gets every host
/// object's name (59 of at most 48 bytes). They sit at the stack's top.
const MAX_ARGS: usize = 3072;
/// Threads one task may have (docs/mach-ipc.md §6).
pub const MAX_THREADS: usize = 64;

pub struct Task {
    pub parent: Option<TaskId>,
    name: [u8; 16],
    name_len: usize,
    /// `Some(status)` once it has exited (kept until collected).
    pub exited: Option<i64>,
    pub root: PhysAddr,
    /// Its threads, at most MAX_THREADS.
    pub threads: Vec<ThreadId>,
    /// Frames private to this task (data, bss, stack), freed at exit.
    owned: Vec<PhysAddr>,
    /// Its port name space, its own port (a kernel object), and the ports
    /// it was given for bootstrap (the name server) and exceptions.
    pub space: Option<SpaceId>,
    pub port: Option<PortId>,
    pub bootstrap: Option<PortId>,
    pub exception: Option<PortId>,
    /// Its address map over the VM window (vm_allocate and inheritance).
    pub map: VmMap,
}

/// Entries one task's map may hold (docs/vm.md).
pub const MAP_ENTRY_LIMIT: usize = 4096;

#[derive(Debug)]
#[allow(dead_code)] // the payloads are for debugging output
pub enum LoadError {
    Elf(ElfError),
    Map(MapError),
    NoMemory,
    ModuleNotPageAligned,
    ArgsTooLong,
}

impl From<MapError> for LoadError {
    fn from(e: MapError) -> Self {
        match e {
            MapError::NoMemory => LoadError::NoMemory,
            e => LoadError::Map(e),
        }
    }
}

impl Task {
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len]
    }

    /// Builds a task running `module` with `args` (bytes handed to the
    /// program in rdi/rsi). Read-only segments map the module's own frames
    /// (shared by every task of that program); writable ones get private
    /// frames with the file bytes copied in.
    pub fn load(
        parent: Option<TaskId>,
        module: &Module,
        args: &[u8],
        kernel_root: PhysAddr,
        frames: &mut FrameAllocator,
    ) -> Result<(Task, UserStart), LoadError> {
        if args.len() > MAX_ARGS {
            return Err(LoadError::ArgsTooLong);
        }
        if !module.start.is_aligned(PAGE_SIZE) {
            return Err(LoadError::ModuleNotPageAligned);
        }
        // SAFETY: the VMM placed the module in RAM below the frame floor;
        // nothing writes it.
        let image = unsafe {
            core::slice::from_raw_parts(phys_to_virt(module.start), module.size as usize)
        };
        let elf = Elf::parse(image).map_err(LoadError::Elf)?;

        // The window is a valid user range, so this fails only if the
        // constants are wrong.
        let map = VmMap::new(
            VirtAddr(VM_MIN_ADDRESS)..VirtAddr(VM_MAX_ADDRESS),
            MAP_ENTRY_LIMIT,
        )
        .map_err(|_| LoadError::NoMemory)?;
        let mut tables = DirectTables(frames);
        let root = tables.alloc_table().ok_or(LoadError::NoMemory)?;
        // The kernel half is shared by every address space.
        let kernel_half: [u64; 256] = tables.table(kernel_root)[256..]
            .try_into()
            .unwrap_or([0; 256]);
        tables.table(root)[256..].copy_from_slice(&kernel_half);

        let mut task = Task {
            parent,
            name: [0; 16],
            name_len: module.name().len().min(16),
            exited: None,
            root,
            threads: Vec::new(),
            owned: Vec::new(),
            space: None,
            port: None,
            bootstrap: None,
            exception: None,
            map,
        };
        task.name[..task.name_len].copy_from_slice(&module.name()[..task.name_len]);
        // From here on, failure must give back what was taken.
        match task.build(&elf, module, args, frames) {
            Ok(start) => Ok((task, start)),
            Err(e) => {
                task.release_memory(frames);
                frames.free(task.root);
                Err(e)
            }
        }
    }

    fn build(
        &mut self,
        elf: &Elf,
        module: &Module,
        args: &[u8],
        frames: &mut FrameAllocator,
    ) -> Result<UserStart, LoadError> {
        for seg in elf.segments() {
            let seg = seg.map_err(LoadError::Elf)?;
            let first = seg.vaddr.align_down(PAGE_SIZE);
            let end = seg
                .vaddr
                .checked_add(seg.mem_size)
                .and_then(|e| e.align_up(PAGE_SIZE))
                .ok_or(LoadError::Elf(ElfError::BadSegment))?;
            let mut flags = USER;
            if seg.writable {
                flags |= WRITABLE;
            }
            if !seg.executable {
                flags |= NO_EXECUTE;
            }
            let share = !seg.writable && seg.file_size == seg.mem_size;
            let mut va = first;
            while va < end {
                let pa = if share {
                    PhysAddr(
                        module.start.0 + seg.file_offset - seg.vaddr.page_offset()
                            + (va.0 - first.0),
                    )
                } else {
                    let pa = self.private_page(frames)?;
                    // Copy the part of the file that falls in this page.
                    let lo = va.0.max(seg.vaddr.0);
                    let hi = (va.0 + PAGE_SIZE).min(seg.vaddr.0 + seg.file_size);
                    if lo < hi {
                        let src = seg.file_offset + (lo - seg.vaddr.0);
                        let bytes = &elf.data()[src as usize..(src + hi - lo) as usize];
                        // SAFETY: a fresh private frame, through the direct map.
                        unsafe {
                            core::ptr::copy_nonoverlapping(
                                bytes.as_ptr(),
                                phys_to_virt(pa).add((lo - va.0) as usize),
                                bytes.len(),
                            )
                        };
                    }
                    pa
                };
                paging::map(
                    &mut DirectTables(frames),
                    self.root,
                    va,
                    pa,
                    flags,
                    PageSize::Small,
                )?;
                va = VirtAddr(va.0 + PAGE_SIZE);
            }
        }

        // Stack, with the arguments at its top.
        let mut top_page = 0;
        for i in 0..USER_STACK_PAGES {
            let va = VirtAddr(USER_STACK_TOP - (i + 1) * PAGE_SIZE);
            let pa = self.private_page(frames)?;
            if i == 0 {
                top_page = pa.0;
            }
            paging::map(
                &mut DirectTables(frames),
                self.root,
                va,
                pa,
                USER | WRITABLE | NO_EXECUTE,
                PageSize::Small,
            )?;
        }
        let args_off = PAGE_SIZE as usize - args.len();
        // SAFETY: the stack's top frame, ours alone.
        unsafe {
            core::ptr::copy_nonoverlapping(
                args.as_ptr(),
                phys_to_virt(PhysAddr(top_page)).add(args_off),
                args.len(),
            )
        };
        let args_va = USER_STACK_TOP - args.len() as u64;

        Ok(UserStart {
            rip: elf.entry.0,
            rsp: (args_va & !15) - 8, // as after a call: rsp+8 is 16-aligned
            rdi: args_va,
            rsi: args.len() as u64,
        })
    }

    fn private_page(&mut self, frames: &mut FrameAllocator) -> Result<PhysAddr, LoadError> {
        self.owned.try_reserve(1).map_err(|_| LoadError::NoMemory)?;
        let pa = alloc_zeroed(frames).ok_or(LoadError::NoMemory)?;
        self.owned.push(pa);
        Ok(pa)
    }

    /// Gives back the user half: page tables and private frames. The root
    /// and the kernel stack stay until the task can no longer be running
    /// on them (`release_rest`).
    pub fn release_memory(&mut self, frames: &mut FrameAllocator) {
        let root = self.root;
        let mut freed: Vec<PhysAddr> = Vec::new();
        paging::release_user_tables(&mut DirectTables(frames), root, &mut |f| freed.push(f));
        for f in freed.into_iter().chain(self.owned.drain(..)) {
            frames.free(f);
        }
    }

    /// Takes the root table, which must outlive the trap path that ended
    /// the task (CR3 may still hold it).
    pub fn take_root(&mut self) -> Remains {
        let r = Remains { root: self.root };
        self.root = PhysAddr(0);
        r
    }
}

/// A dead task's root table, freed once no trap path can be running on it.
pub struct Remains {
    root: PhysAddr,
}

impl Remains {
    pub fn release(self, frames: &mut FrameAllocator) {
        if self.root.0 != 0 {
            frames.free(self.root);
        }
    }
}
