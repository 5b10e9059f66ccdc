//! The virtual memory calls of Table 3-3 as traps: each decodes its
//! arguments, names its target task by a send right to the task's port (as
//! in Mach, so a task may operate on another's memory), and runs the map
//! operation of guest_kernel::vm::map. Addresses and sizes are rounded to
//! pages the way Mach rounds them; user pointers go through copyin/copyout.

use super::{pager, user_pager, with_task};
use crate::arch::copy::{copy_to_user, read_user};
use crate::arch::trap::TrapFrame;
use crate::kern::scheduler::Kernel;
use guest_kernel::addr::{PAGE_SIZE, VirtAddr};
use guest_kernel::ipc::KObject;
use guest_kernel::kern::sched::TaskId;
use guest_kernel::vm::map::{EntryAttrs, VmCopy, VmMap};
use guest_kernel::vm::object::{Objects, PagerEntry};
use guest_kernel::vm::types::{Inheritance, ObjectOffset, ObjectRefs, VmError, VmProt};
use libmach::abi::*;

pub fn trap(k: &mut Kernel, f: &TrapFrame) -> u32 {
    match call(k, f) {
        Ok(()) => KERN_SUCCESS,
        Err(e) => e,
    }
}

/// The kern_return of Table 3-3 for each VM error.
fn kr(e: VmError) -> u32 {
    match e {
        VmError::InvalidArgument => KERN_INVALID_ARGUMENT,
        VmError::InvalidAddress => KERN_INVALID_ADDRESS,
        VmError::NoSpace => KERN_NO_SPACE,
        VmError::ProtectionFailure => KERN_PROTECTION_FAILURE,
        VmError::ResourceShortage => KERN_RESOURCE_SHORTAGE,
        VmError::MemoryError => KERN_MEMORY_ERROR,
    }
}

/// The task a send right in the caller's space names.
fn target_task(k: &mut Kernel, name: u32) -> Result<TaskId, u32> {
    let (me, _) = k.current_task().ok_or(KERN_FAILURE)?;
    let space = k.task(me).and_then(|t| t.space).ok_or(KERN_FAILURE)?;
    let port = k.ipc.resolve_send(space, name)?;
    match k.ipc.kobject(port) {
        Some(KObject::Task(t)) => Ok(TaskId(t)),
        _ => Err(KERN_INVALID_ARGUMENT),
    }
}

/// [trunc_page(addr), round_page(addr + size)), as Mach rounds a range.
fn page_range(addr: u64, size: u64) -> Result<(VirtAddr, u64), u32> {
    let end = addr
        .checked_add(size)
        .and_then(|e| e.checked_next_multiple_of(PAGE_SIZE))
        .ok_or(KERN_INVALID_ARGUMENT)?;
    let start = addr & !(PAGE_SIZE - 1);
    Ok((VirtAddr(start), end - start))
}

fn read_u64(k: &mut Kernel, at: u64) -> Result<u64, u32> {
    let mut b = [0u8; 8];
    read_user(k, VirtAddr(at), &mut b).map_err(|_| KERN_INVALID_ADDRESS)?;
    Ok(u64::from_le_bytes(b))
}

fn write_u64(k: &mut Kernel, at: u64, v: u64) -> Result<(), u32> {
    copy_to_user(k, VirtAddr(at), &v.to_le_bytes()).map_err(|_| KERN_INVALID_ADDRESS)
}

/// A `#[repr(C)]` ABI record as bytes, for copyout.
fn record_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: the ABI records are plain integers with no padding.
    unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

fn call(k: &mut Kernel, f: &TrapFrame) -> Result<(), u32> {
    if f.rax == TRAP_HOST_OBJECT_PORT {
        return host_object_port(k, f.rdi, f.rsi);
    }
    if f.rax == TRAP_HOST_OBJECT_INFO {
        return host_object_info(k, f.rdi, f.rsi);
    }
    let task = target_task(k, f.rdi as u32)?;
    match f.rax {
        TRAP_VM_ALLOCATE => {
            let hint = read_u64(k, f.rsi)?;
            let anywhere = f.r10 != 0;
            let (start, size) = page_range(if anywhere { 0 } else { hint }, f.rdx)?;
            let at = allocate(k, task, (!anywhere).then_some(start), size)?;
            hand_out(k, task, at, size, f.rsi)
        }
        TRAP_VM_DEALLOCATE => {
            let (start, size) = page_range(f.rsi, f.rdx)?;
            if size == 0 {
                return Ok(());
            }
            on_map(k, task, |map, objs, m| {
                map.deallocate(start, size, objs, &mut m.pmap())
            })
        }
        TRAP_VM_PROTECT => {
            let (start, size) = page_range(f.rsi, f.rdx)?;
            let prot = VmProt::from_bits(f.r8).ok_or(KERN_INVALID_ARGUMENT)?;
            let set_max = f.r10 != 0;
            on_map(k, task, |map, objs, m| {
                map.protect(start, size, set_max, prot, objs, &mut m.pmap())
            })
        }
        TRAP_VM_INHERIT => {
            let (start, size) = page_range(f.rsi, f.rdx)?;
            let inh = Inheritance::from_raw(f.r10).ok_or(KERN_INVALID_ARGUMENT)?;
            on_map(k, task, |map, objs, _| map.inherit(start, size, inh, objs))
        }
        TRAP_VM_READ => {
            let (start, size) = page_range(f.rsi, f.rdx)?;
            let (me, _) = k.current_task().ok_or(KERN_FAILURE)?;
            let copy = copy_in(k, task, start, size)?;
            let at = with_task(k, me, |map, objs, _, _| {
                map.insert_copy(None, copy, Some(EntryAttrs::COPYOUT), objs)
                    .map_err(|(e, c)| {
                        c.discard(objs);
                        kr(e)
                    })
            })
            .ok_or(KERN_TERMINATED)??;
            hand_out(k, me, at, size, f.r10)
        }
        TRAP_VM_WRITE => {
            let (dst, size) = page_range(f.rsi, f.r10)?;
            if f.rsi % PAGE_SIZE != f.rdx % PAGE_SIZE {
                return Err(KERN_INVALID_ARGUMENT);
            }
            let (src, _) = page_range(f.rdx, f.r10)?;
            let (me, _) = k.current_task().ok_or(KERN_FAILURE)?;
            let copy = copy_in(k, me, src, size)?;
            overwrite(k, task, dst, copy)
        }
        TRAP_VM_COPY => {
            let (src, size) = page_range(f.rsi, f.rdx)?;
            if f.rsi % PAGE_SIZE != f.r10 % PAGE_SIZE {
                return Err(KERN_INVALID_ARGUMENT);
            }
            let (dst, _) = page_range(f.r10, f.rdx)?;
            let copy = copy_in(k, task, src, size)?;
            overwrite(k, task, dst, copy)
        }
        TRAP_VM_REGION => {
            let from = read_u64(k, f.rsi)?;
            let r = with_task(k, task, |map, _, _, _| map.regions(VirtAddr(from)))
                .ok_or(KERN_TERMINATED)?
                .ok_or(KERN_NO_SPACE)?;
            let info = VmRegionInfo {
                start: r.start.0,
                size: r.size(),
                offset: r.offset.0,
                prot: u32::from(r.prot.bits()),
                max_prot: u32::from(r.max.bits()),
                inheritance: r.inheritance as u32,
                shared: u32::from(r.shared),
            };
            copy_to_user(k, VirtAddr(f.rdx), record_bytes(&info))
                .map_err(|_| KERN_INVALID_ADDRESS)?;
            write_u64(k, f.rsi, r.start.0)
        }
        TRAP_VM_STATISTICS => {
            let free = k.frames.free_frames();
            let vm = &k.vm;
            let c = vm.counters;
            let s = VmStatistics {
                page_size: PAGE_SIZE,
                free_count: free,
                active_count: vm.objects.pages.active_count(),
                inactive_count: vm.objects.pages.inactive_count(),
                faults: c.faults,
                zero_fill_count: c.zero_fill,
                zeroed_by_kernel: c.zeroed_by_kernel,
                cow_faults: c.cow_faults,
                soft_faults: c.soft_faults,
                objects: vm.objects.count() as u64,
            };
            copy_to_user(k, VirtAddr(f.rsi), record_bytes(&s)).map_err(|_| KERN_INVALID_ADDRESS)
        }
        TRAP_VM_ALLOCATE_WITH_PAGER => {
            let hint = read_u64(k, f.rsi)?;
            let (anywhere, prot) = pager_map_flags(f.r10)?;
            let (start, size) = page_range(if anywhere { 0 } else { hint }, f.rdx)?;
            let at = allocate_with_pager(
                k,
                task,
                (!anywhere).then_some(start),
                size,
                f.r8 as u32,
                f.r9,
                prot,
            )?;
            hand_out(k, task, at, size, f.rsi)
        }
        _ => Err(KERN_INVALID_ARGUMENT),
    }
}

/// host_object_port: a send right, in the caller's space, to the memory
/// object of a ready host object.
fn host_object_port(k: &mut Kernel, object: u64, out: u64) -> Result<(), u32> {
    let id = u32::try_from(object).map_err(|_| KERN_INVALID_ARGUMENT)?;
    if !super::object_io::user_visible(k, id) {
        return Err(KERN_INVALID_ARGUMENT);
    }
    pager::object_info(id).ok_or(KERN_INVALID_ARGUMENT)?;
    let port = pager::object_port(k, id)?;
    let (me, _) = k.current_task().ok_or(KERN_FAILURE)?;
    let space = k.task(me).and_then(|t| t.space).ok_or(KERN_FAILURE)?;
    let name = k.ipc.insert_send(space, port)?;
    if copy_to_user(k, VirtAddr(out), &name.to_le_bytes()).is_err() {
        let mut fx = guest_kernel::ipc::Effects::default();
        let _ = k.ipc.port_deallocate(space, name, &mut fx);
        crate::ipc::apply(k, fx);
        return Err(KERN_INVALID_ADDRESS);
    }
    Ok(())
}

/// host_object_info: size and flags of the host object behind a memory
/// object send right in the caller's space.
fn host_object_info(k: &mut Kernel, name: u64, out: u64) -> Result<(), u32> {
    let (me, _) = k.current_task().ok_or(KERN_FAILURE)?;
    let space = k.task(me).and_then(|t| t.space).ok_or(KERN_FAILURE)?;
    let name = u32::try_from(name).map_err(|_| KERN_INVALID_NAME)?;
    let port = k.ipc.resolve_send(space, name)?;
    let Some(KObject::HostObject(id)) = k.ipc.kobject(port) else {
        return Err(KERN_INVALID_ARGUMENT);
    };
    let o = pager::object_info(id).ok_or(KERN_INVALID_ARGUMENT)?;
    let info = HostObjectInfo {
        size: o.size,
        flags: if o.read_only {
            HOST_OBJECT_READ_ONLY
        } else {
            0
        },
    };
    copy_to_user(k, VirtAddr(out), record_bytes(&info)).map_err(|_| KERN_INVALID_ADDRESS)
}

/// vm_allocate_with_pager's flags word: bit 0 "anywhere", bits 8..=10 the
/// protection asked for (0: the default, read and write).
fn pager_map_flags(raw: u64) -> Result<(bool, VmProt), u32> {
    if raw & !(PAGER_MAP_ANYWHERE | PAGER_MAP_PROT_MASK) != 0 {
        return Err(KERN_INVALID_ARGUMENT);
    }
    let prot = (raw & PAGER_MAP_PROT_MASK) >> PAGER_MAP_PROT_SHIFT;
    let prot = match VmProt::from_bits(prot) {
        Some(VmProt::NONE) => VmProt::DEFAULT,
        Some(p) => p,
        None => return Err(KERN_INVALID_ARGUMENT),
    };
    Ok((raw & PAGER_MAP_ANYWHERE != 0, prot))
}

/// vm_allocate_with_pager: the memory object named by a send right in the
/// caller's space, mapped over [offset, offset + size) with protection
/// `prot`: a host object's kernel port, or the port of a pager task. A
/// read-only host object refuses a writable mapping
/// (KERN_PROTECTION_FAILURE), rather than mapping it and faulting later.
fn allocate_with_pager(
    k: &mut Kernel,
    task: TaskId,
    at: Option<VirtAddr>,
    size: u64,
    memory_object: u32,
    offset: u64,
    prot: VmProt,
) -> Result<VirtAddr, u32> {
    let (me, _) = k.current_task().ok_or(KERN_FAILURE)?;
    let space = k.task(me).and_then(|t| t.space).ok_or(KERN_FAILURE)?;
    let port = k.ipc.resolve_send(space, memory_object)?;
    let id = match k.ipc.kobject(port) {
        Some(KObject::HostObject(id)) => id,
        None => return map_user_object(k, task, at, size, port, offset, prot),
        Some(_) => return Err(KERN_INVALID_ARGUMENT),
    };
    let info = pager::object_info(id).ok_or(KERN_INVALID_ARGUMENT)?;
    let obj_pages = info
        .size
        .checked_next_multiple_of(PAGE_SIZE)
        .ok_or(KERN_INVALID_ARGUMENT)?;
    let in_object = offset.checked_add(size).is_some_and(|end| end <= obj_pages);
    if size == 0 || !offset.is_multiple_of(PAGE_SIZE) || !in_object {
        return Err(KERN_INVALID_ARGUMENT);
    }
    let max = if info.read_only {
        VmProt::READ.union(VmProt::EXECUTE)
    } else {
        VmProt::ALL
    };
    if !max.contains(prot) {
        return Err(KERN_PROTECTION_FAILURE);
    }
    with_task(k, task, |map, objs, frames, m| {
        let obj = match objs.enter_pager(pager::host_pager(id), obj_pages)? {
            PagerEntry::New(o) => {
                // The device initialised the object when it was looked up;
                // its pager's INIT answer said whether the object may stay
                // cached once unmapped (paper §3.4.2, pager_cache).
                objs.set_pager_ready(o)?;
                if info.may_cache {
                    objs.cache(o, true, frames, m)?;
                }
                o
            }
            PagerEntry::Existing(o) => o,
        };
        map_object(map, objs, at, size, obj, offset, (prot, max))
    })
    .ok_or(KERN_TERMINATED)?
    .map_err(kr)
}

/// Writes the address of a region just made in `task` to the caller's
/// `out`; if the caller cannot learn it, the region is taken back.
fn hand_out(k: &mut Kernel, task: TaskId, at: VirtAddr, size: u64, out: u64) -> Result<(), u32> {
    let r = write_u64(k, out, at.0);
    if r.is_err() {
        let _ = with_task(k, task, |map, objs, _, m| {
            map.deallocate(at, size, objs, &mut m.pmap())
        });
    }
    r
}

/// Runs a map operation on `task`, as a kern_return.
fn on_map(
    k: &mut Kernel,
    task: TaskId,
    op: impl FnOnce(&mut VmMap, &mut Objects, &mut super::machine::Machine<'_>) -> Result<(), VmError>,
) -> Result<(), u32> {
    with_task(k, task, |map, objs, _, m| op(map, objs, m))
        .ok_or(KERN_TERMINATED)?
        .map_err(kr)
}

/// vm_allocate: a new zero-fill internal object over the range.
fn allocate(
    k: &mut Kernel,
    task: TaskId,
    at: Option<VirtAddr>,
    size: u64,
) -> Result<VirtAddr, u32> {
    if size == 0 {
        return Err(KERN_INVALID_ARGUMENT);
    }
    with_task(k, task, |map, objs, _, _| {
        zero_fill_region(map, objs, at, size)
    })
    .ok_or(KERN_TERMINATED)?
    .map_err(kr)
}

/// A new zero-fill internal object mapped over `size` bytes at `at` (or
/// anywhere) with the defaults of vm_allocate: read/write, any maximum,
/// copy inheritance.
pub fn zero_fill_region(
    map: &mut VmMap,
    objs: &mut Objects,
    at: Option<VirtAddr>,
    size: u64,
) -> Result<VirtAddr, VmError> {
    let obj = objs.create_internal(size)?;
    map_object(map, objs, at, size, obj, 0, (VmProt::DEFAULT, VmProt::ALL))
}

/// Maps `obj` (whose one reference the caller hands over) at `at` or
/// anywhere, with copy inheritance; on failure the reference is released.
fn map_object(
    map: &mut VmMap,
    objs: &mut Objects,
    at: Option<VirtAddr>,
    size: u64,
    obj: guest_kernel::vm::types::ObjectId,
    offset: u64,
    (prot, max): (VmProt, VmProt),
) -> Result<VirtAddr, VmError> {
    map.allocate(
        at,
        size,
        obj,
        ObjectOffset(offset),
        prot,
        max,
        Inheritance::Copy,
        false,
        objs,
    )
    .inspect_err(|_| objs.release(obj))
}

/// A copy-on-write snapshot of `task`'s range.
fn copy_in(k: &mut Kernel, task: TaskId, start: VirtAddr, size: u64) -> Result<VmCopy, u32> {
    if size == 0 {
        return Err(KERN_INVALID_ARGUMENT);
    }
    with_task(k, task, |map, objs, _, m| {
        map.copy_out_of(start, size, objs, &mut m.pmap())
    })
    .ok_or(KERN_TERMINATED)?
    .map_err(kr)
}

/// vm_write and vm_copy: `copy` replaces `task`'s [dst, dst + size), which
/// must be allocated and writable; each destination region keeps its own
/// protection, maximum and inheritance (the data is what changes). Nothing
/// changes unless all of it can.
fn overwrite(k: &mut Kernel, task: TaskId, dst: VirtAddr, copy: VmCopy) -> Result<(), u32> {
    with_task(k, task, |map, objs, _, m| {
        let r = overwrite_map(map, objs, m, dst, copy);
        r.map_err(|(e, c)| {
            c.discard(objs);
            kr(e)
        })
    })
    .ok_or(KERN_TERMINATED)?
}

/// Most distinct regions one overwrite restores the attributes of.
const OVERWRITE_REGIONS: usize = 64;

fn overwrite_map(
    map: &mut VmMap,
    objs: &mut Objects,
    m: &mut super::machine::Machine<'_>,
    dst: VirtAddr,
    copy: VmCopy,
) -> Result<(), (VmError, VmCopy)> {
    let size = copy.size();
    let end = dst.0 + size;
    // The destination's regions, checked before anything changes.
    let mut regions: [(VirtAddr, VirtAddr, EntryAttrs); OVERWRITE_REGIONS] =
        [(VirtAddr(0), VirtAddr(0), EntryAttrs::COPYOUT); OVERWRITE_REGIONS];
    let mut n = 0;
    let mut at = dst;
    while at.0 < end {
        let Some(l) = map.lookup(at) else {
            return Err((VmError::InvalidAddress, copy));
        };
        if !l.prot.contains(VmProt::WRITE) {
            return Err((VmError::ProtectionFailure, copy));
        }
        if n == OVERWRITE_REGIONS {
            return Err((VmError::ResourceShortage, copy));
        }
        let to = VirtAddr(l.end.0.min(end));
        regions[n] = (
            at,
            to,
            EntryAttrs {
                prot: l.prot,
                max: l.max,
                inheritance: l.inheritance,
            },
        );
        n += 1;
        at = to;
    }
    if map.len() + copy.entries().len() + 2 * n + 2 > map.entry_limit() {
        return Err((VmError::ResourceShortage, copy));
    }
    if let Err(e) = map.deallocate(dst, size, objs, &mut m.pmap()) {
        return Err((e, copy));
    }
    let all = EntryAttrs {
        prot: VmProt::ALL,
        max: VmProt::ALL,
        inheritance: Inheritance::Copy,
    };
    map.insert_copy(Some(dst), copy, Some(all), objs)?;
    for &(s, e, a) in &regions[..n] {
        let len = e.0 - s.0;
        let mut pmap = m.pmap();
        let _ = map.protect(s, len, true, a.max, objs, &mut pmap);
        let _ = map.protect(s, len, false, a.prot, objs, &mut pmap);
        let _ = map.inherit(s, len, a.inheritance, objs);
    }
    Ok(())
}

/// vm_allocate_with_pager on a guest pager's port: the object (made, and
/// its pager sent pager_init, on first use) covers at least the mapping.
fn map_user_object(
    k: &mut Kernel,
    task: TaskId,
    at: Option<VirtAddr>,
    size: u64,
    memory_object: guest_kernel::ipc::PortId,
    offset: u64,
    prot: VmProt,
) -> Result<VirtAddr, u32> {
    let end = offset.checked_add(size).ok_or(KERN_INVALID_ARGUMENT)?;
    if size == 0 || !offset.is_multiple_of(PAGE_SIZE) {
        return Err(KERN_INVALID_ARGUMENT);
    }
    let known = user_pager::pager_of(k, memory_object);
    let pager = match known {
        Some(p) => p,
        None => user_pager::new_pager(k)?,
    };
    let entry = k.vm.objects.enter_pager(pager, end).map_err(kr)?;
    let obj = match entry {
        PagerEntry::New(o) => {
            if let Err(e) = user_pager::init(k, pager, o, memory_object) {
                k.vm.objects.release(o);
                return Err(e);
            }
            let _ = k.vm.objects.set_pager_ready(o);
            o
        }
        PagerEntry::Existing(o) => o,
    };
    with_task(k, task, |map, objs, _, _| {
        map_object(map, objs, at, size, obj, offset, (prot, VmProt::ALL))
    })
    .ok_or(KERN_TERMINATED)?
    .map_err(kr)
}
