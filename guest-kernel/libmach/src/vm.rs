//! The virtual memory calls of Table 3-3, over the traps of docs/vm.md.
//! Each names its target task by a send right (usually `task_self()`).
//! Sizes need not be page multiples: the kernel rounds the range out to
//! whole pages, as Mach does.

use crate::abi::{self, Name, VmRegionInfo, VmStatistics};
use crate::traps::{KernError, kr, trap};

/// vm_allocate: zero-filled memory, at `*addr` or (with `anywhere`) where
/// the kernel finds room; `*addr` is set to where it went.
pub fn vm_allocate(task: Name, addr: &mut u64, size: u64, anywhere: bool) -> Result<(), KernError> {
    // SAFETY: `addr` is a valid, writable u64.
    kr(unsafe {
        trap(
            abi::TRAP_VM_ALLOCATE,
            u64::from(task),
            addr as *mut u64 as u64,
            size,
            u64::from(anywhere),
            0,
            0,
        )
    })
}

/// vm_deallocate: the range is no longer valid in `task`.
pub fn vm_deallocate(task: Name, addr: u64, size: u64) -> Result<(), KernError> {
    // SAFETY: scalar arguments only.
    kr(unsafe {
        trap(
            abi::TRAP_VM_DEALLOCATE,
            u64::from(task),
            addr,
            size,
            0,
            0,
            0,
        )
    })
}

/// vm_protect: sets the current protection (or, with `set_maximum`, the
/// maximum, lowering the current one to fit) to `prot` (VM_PROT_* bits).
pub fn vm_protect(
    task: Name,
    addr: u64,
    size: u64,
    set_maximum: bool,
    prot: u32,
) -> Result<(), KernError> {
    // SAFETY: scalar arguments only.
    kr(unsafe {
        trap(
            abi::TRAP_VM_PROTECT,
            u64::from(task),
            addr,
            size,
            u64::from(set_maximum),
            u64::from(prot),
            0,
        )
    })
}

/// vm_inherit: what a child created by task_create gets of the range
/// (VM_INHERIT_SHARE, _COPY or _NONE).
pub fn vm_inherit(task: Name, addr: u64, size: u64, inheritance: u32) -> Result<(), KernError> {
    // SAFETY: scalar arguments only.
    kr(unsafe {
        trap(
            abi::TRAP_VM_INHERIT,
            u64::from(task),
            addr,
            size,
            u64::from(inheritance),
            0,
            0,
        )
    })
}

/// vm_read: a copy-on-write copy of `task`'s range, mapped somewhere in the
/// caller; returns its address (free it with vm_deallocate).
pub fn vm_read(task: Name, addr: u64, size: u64) -> Result<u64, KernError> {
    let mut data = 0u64;
    // SAFETY: `data` is a valid, writable u64.
    kr(unsafe {
        trap(
            abi::TRAP_VM_READ,
            u64::from(task),
            addr,
            size,
            &raw mut data as u64,
            0,
            0,
        )
    })
    .map(|()| data)
}

/// vm_write: the caller's `[data, data + size)` replaces `task`'s
/// `[addr, addr + size)` (allocated and writable; same offset within a page).
pub fn vm_write(task: Name, addr: u64, data: u64, size: u64) -> Result<(), KernError> {
    // SAFETY: the kernel reads the caller's range through its own checks.
    kr(unsafe { trap(abi::TRAP_VM_WRITE, u64::from(task), addr, data, size, 0, 0) })
}

/// vm_copy: within `task`, `[src, src + size)` replaces `[dst, dst + size)`.
pub fn vm_copy(task: Name, src: u64, size: u64, dst: u64) -> Result<(), KernError> {
    // SAFETY: scalar arguments only.
    kr(unsafe { trap(abi::TRAP_VM_COPY, u64::from(task), src, size, dst, 0, 0) })
}

/// vm_region: the region containing `addr`, or the next one above it
/// (KERN_NO_SPACE when there is none).
pub fn vm_region(task: Name, addr: u64) -> Result<VmRegionInfo, KernError> {
    let mut at = addr;
    let mut info = VmRegionInfo::default();
    // SAFETY: valid, writable out-pointers.
    kr(unsafe {
        trap(
            abi::TRAP_VM_REGION,
            u64::from(task),
            &raw mut at as u64,
            &raw mut info as u64,
            0,
            0,
            0,
        )
    })
    .map(|()| info)
}

/// vm_statistics: page counts and fault counters.
pub fn vm_statistics(task: Name) -> Result<VmStatistics, KernError> {
    let mut s = VmStatistics::default();
    // SAFETY: a valid, writable out-pointer.
    kr(unsafe {
        trap(
            abi::TRAP_VM_STATISTICS,
            u64::from(task),
            &raw mut s as u64,
            0,
            0,
            0,
            0,
        )
    })
    .map(|()| s)
}

/// vm_allocate_with_pager (Table 3-4): maps `[offset, offset + size)` of
/// `memory_object` at `*addr` (or anywhere); reads and writes there are
/// served by the object's pager through page faults.
pub fn vm_allocate_with_pager(
    task: Name,
    addr: &mut u64,
    size: u64,
    anywhere: bool,
    memory_object: Name,
    offset: u64,
) -> Result<(), KernError> {
    vm_map_pager(
        task,
        addr,
        size,
        anywhere,
        abi::VM_PROT_DEFAULT,
        memory_object,
        offset,
    )
}

/// vm_allocate_with_pager with the protection `prot` (VM_PROT_* bits):
/// VM_PROT_READ maps a read-only object, which refuses a writable mapping
/// with KERN_PROTECTION_FAILURE.
pub fn vm_map_pager(
    task: Name,
    addr: &mut u64,
    size: u64,
    anywhere: bool,
    prot: u32,
    memory_object: Name,
    offset: u64,
) -> Result<(), KernError> {
    let flags = (u64::from(anywhere) * abi::PAGER_MAP_ANYWHERE)
        | ((u64::from(prot) << abi::PAGER_MAP_PROT_SHIFT) & abi::PAGER_MAP_PROT_MASK);
    // SAFETY: `addr` is a valid, writable u64.
    kr(unsafe {
        trap(
            abi::TRAP_VM_ALLOCATE_WITH_PAGER,
            u64::from(task),
            addr as *mut u64 as u64,
            size,
            flags,
            u64::from(memory_object),
            offset,
        )
    })
}

/// The memory object (a send right) of host object `object`, the number
/// the object lookup call returned.
pub fn host_object_port(object: u64) -> Result<Name, KernError> {
    let mut out: Name = 0;
    // SAFETY: a valid, writable out-pointer.
    kr(unsafe {
        trap(
            abi::TRAP_HOST_OBJECT_PORT,
            object,
            &raw mut out as u64,
            0,
            0,
            0,
            0,
        )
    })
    .map(|()| out)
}

/// The size and flags of the host object whose memory object is `port`
/// (a send right, e.g. from the name server).
pub fn host_object_info(port: Name) -> Result<abi::HostObjectInfo, KernError> {
    let mut out = abi::HostObjectInfo::default();
    // SAFETY: a valid, writable out-pointer to a repr(C) record.
    kr(unsafe {
        trap(
            abi::TRAP_HOST_OBJECT_INFO,
            u64::from(port),
            &raw mut out as u64,
            0,
            0,
            0,
            0,
        )
    })
    .map(|()| out)
}
