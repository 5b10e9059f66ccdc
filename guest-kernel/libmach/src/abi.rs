//! The Mach trap ABI and message format (docs/mach-ipc.md is the prose).
//! Shared verbatim by the kernel and by user programs.

/// A port name in a task's name space.
pub type Name = u32;
pub const PORT_NULL: Name = 0;
/// A right whose port died in transit.
pub const PORT_DEAD: Name = 0xffff_ffff;

// Trap numbers (rax).
pub const TRAP_MACH_MSG: u64 = 0x20;
pub const TRAP_PORT_ALLOCATE: u64 = 0x21;
pub const TRAP_PORT_DEALLOCATE: u64 = 0x22;
pub const TRAP_PORT_ENABLE: u64 = 0x23;
pub const TRAP_PORT_DISABLE: u64 = 0x24;
pub const TRAP_PORT_MESSAGES: u64 = 0x25;
pub const TRAP_PORT_STATUS: u64 = 0x26;
pub const TRAP_PORT_SET_BACKLOG: u64 = 0x27;
pub const TRAP_PORT_REQUEST_DEAD_NAME: u64 = 0x28;
pub const TRAP_TASK_SELF: u64 = 0x29;
pub const TRAP_THREAD_SELF: u64 = 0x2a;
pub const TRAP_TASK_CREATE: u64 = 0x2b;
pub const TRAP_TASK_TERMINATE: u64 = 0x2c;
pub const TRAP_TASK_SUSPEND: u64 = 0x2d;
pub const TRAP_TASK_RESUME: u64 = 0x2e;
pub const TRAP_THREAD_CREATE: u64 = 0x2f;
pub const TRAP_THREAD_TERMINATE: u64 = 0x30;
pub const TRAP_THREAD_SUSPEND: u64 = 0x31;
pub const TRAP_THREAD_RESUME: u64 = 0x32;
pub const TRAP_THREAD_GET_STATE: u64 = 0x33;
pub const TRAP_THREAD_SET_STATE: u64 = 0x34;
pub const TRAP_TASK_SET_EXCEPTION_PORT: u64 = 0x35;
pub const TRAP_THREAD_SET_EXCEPTION_PORT: u64 = 0x36;
pub const TRAP_TASK_SET_BOOTSTRAP_PORT: u64 = 0x37;
pub const TRAP_TASK_GET_BOOTSTRAP_PORT: u64 = 0x38;

// mach_msg options.
pub const SEND_MSG: u32 = 0x1;
pub const RCV_MSG: u32 = 0x2;
pub const SEND_TIMEOUT: u32 = 0x10;
pub const RCV_TIMEOUT: u32 = 0x100;
pub const RCV_LARGE: u32 = 0x800;

/// Largest message (header and inline items), in bytes.
pub const MSG_SIZE_MAX: u32 = 64 * 1024;
/// Largest out-of-line bytes one message carries by copy (regions outside
/// the VM window, or sent with `OOL_PHYSICAL_COPY`); regions mapped
/// copy-on-write are bounded by the bytes a task has in flight instead.
pub const OOL_MAX: u64 = 16 << 20;
pub const BACKLOG_DEFAULT: u32 = 5;
pub const BACKLOG_MAX: u32 = 64;

// Header bits.
pub const BITS_REMOTE_MASK: u32 = 0xff;
pub const BITS_LOCAL_SHIFT: u32 = 8;
pub const BITS_COMPLEX: u32 = 1 << 31;

pub const HEADER_SIZE: usize = 24;
pub const ITEM_HEADER_SIZE: usize = 16;

/// The fixed message header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub bits: u32,
    pub size: u32,
    pub remote: Name,
    pub local: Name,
    pub seqno: u32,
    pub id: i32,
}

impl Header {
    pub fn remote_disposition(&self) -> u8 {
        (self.bits & BITS_REMOTE_MASK) as u8
    }
    pub fn local_disposition(&self) -> u8 {
        ((self.bits >> BITS_LOCAL_SHIFT) & 0xff) as u8
    }
    pub fn bits(remote: u8, local: u8) -> u32 {
        u32::from(remote) | (u32::from(local) << BITS_LOCAL_SHIFT)
    }
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&self.bits.to_le_bytes());
        b[4..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..12].copy_from_slice(&self.remote.to_le_bytes());
        b[12..16].copy_from_slice(&self.local.to_le_bytes());
        b[16..20].copy_from_slice(&self.seqno.to_le_bytes());
        b[20..24].copy_from_slice(&self.id.to_le_bytes());
        b
    }
    pub fn from_bytes(b: &[u8]) -> Option<Header> {
        let w = |i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
        };
        Some(Header {
            bits: w(0)?,
            size: w(4)?,
            remote: w(8)?,
            local: w(12)?,
            seqno: w(16)?,
            id: w(20)? as i32,
        })
    }
}

// Item kinds.
pub const ITEM_INLINE: u8 = 1;
pub const ITEM_PORTS: u8 = 2;
pub const ITEM_OOL: u8 = 3;
/// OOL `disp` bit: the region leaves the sender's address space.
pub const OOL_DEALLOCATE: u8 = 1;
/// OOL `disp` bit: copy the bytes at send time even if the region could be
/// mapped copy-on-write (Mach's `MACH_MSG_PHYSICAL_COPY`).
pub const OOL_PHYSICAL_COPY: u8 = 2;
/// Every OOL `disp` bit.
pub const OOL_FLAGS: u8 = OOL_DEALLOCATE | OOL_PHYSICAL_COPY;

/// The 16-byte descriptor in front of every item.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItemHeader {
    pub kind: u8,
    pub disp: u8,
    pub reserved: u16,
    pub count: u32,
    pub addr: u64,
}

impl ItemHeader {
    pub fn to_bytes(&self) -> [u8; ITEM_HEADER_SIZE] {
        let mut b = [0u8; ITEM_HEADER_SIZE];
        b[0] = self.kind;
        b[1] = self.disp;
        b[2..4].copy_from_slice(&self.reserved.to_le_bytes());
        b[4..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..16].copy_from_slice(&self.addr.to_le_bytes());
        b
    }
    pub fn from_bytes(b: &[u8]) -> Option<ItemHeader> {
        let b: &[u8; ITEM_HEADER_SIZE] = b.get(..ITEM_HEADER_SIZE)?.try_into().ok()?;
        Some(ItemHeader {
            kind: b[0],
            disp: b[1],
            reserved: u16::from_le_bytes([b[2], b[3]]),
            count: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            addr: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        })
    }
    /// Payload bytes after the descriptor, padded to 8 (None on overflow).
    pub fn payload_len(&self) -> Option<usize> {
        let raw = match self.kind {
            ITEM_INLINE => self.count as usize,
            ITEM_PORTS => (self.count as usize).checked_mul(4)?,
            _ => 0,
        };
        raw.checked_add(7).map(|n| n & !7)
    }
}

// Dispositions (send) and received right types.
pub const MOVE_RECEIVE: u8 = 16;
pub const MOVE_SEND: u8 = 17;
pub const MOVE_SEND_ONCE: u8 = 18;
pub const COPY_SEND: u8 = 19;
pub const MAKE_SEND: u8 = 20;
pub const MAKE_SEND_ONCE: u8 = 21;
pub const PORT_RECEIVE: u8 = 16;
pub const PORT_SEND: u8 = 17;
pub const PORT_SEND_ONCE: u8 = 18;

// kern_return_t.
pub const KERN_SUCCESS: u32 = 0;
pub const KERN_INVALID_ADDRESS: u32 = 1;
pub const KERN_NO_SPACE: u32 = 3;
pub const KERN_INVALID_ARGUMENT: u32 = 4;
pub const KERN_FAILURE: u32 = 5;
pub const KERN_RESOURCE_SHORTAGE: u32 = 6;
pub const KERN_NAME_EXISTS: u32 = 9;
pub const KERN_INVALID_NAME: u32 = 15;
pub const KERN_INVALID_RIGHT: u32 = 17;
pub const KERN_INVALID_VALUE: u32 = 18;
pub const KERN_TERMINATED: u32 = 36;

// mach_msg_return_t.
pub const MSG_SUCCESS: u32 = 0;
pub const SEND_INVALID_DATA: u32 = 0x1000_0002;
pub const SEND_INVALID_DEST: u32 = 0x1000_0003;
pub const SEND_TIMED_OUT: u32 = 0x1000_0004;
pub const SEND_INVALID_REPLY: u32 = 0x1000_0007;
pub const SEND_INVALID_RIGHT: u32 = 0x1000_0008;
pub const SEND_TOO_LARGE: u32 = 0x1000_000a;
pub const SEND_MSG_TOO_SMALL: u32 = 0x1000_000b;
pub const SEND_INVALID_TYPE: u32 = 0x1000_000c;
pub const SEND_NO_BUFFER: u32 = 0x1000_000d;
pub const RCV_INVALID_NAME: u32 = 0x1000_4002;
pub const RCV_TIMED_OUT: u32 = 0x1000_4003;
pub const RCV_TOO_LARGE: u32 = 0x1000_4004;
pub const RCV_INVALID_DATA: u32 = 0x1000_4008;
pub const RCV_PORT_DIED: u32 = 0x1000_4009;

// Kernel-generated message ids.
pub const NOTIFY_DEAD_NAME: i32 = 0x48;
pub const EXCEPTION_RAISE: i32 = 2400;
pub const EXCEPTION_REPLY: i32 = 2500;

// Messages the kernel serves on task and thread ports (docs/mach-ipc.md
// §5.1): the operation of trap N is request id N + KOBJECT_ID_BASE, sent
// to the task or thread port it acts on; the reply (to the request's reply
// port) has id + REPLY_ID_OFFSET and carries an INLINE i32 return code,
// then the out value if there is one. `kernel_msgs` is the client.

/// Request id of a kernel-object operation = its trap number + this.
pub const KOBJECT_ID_BASE: i32 = 1000;
/// A reply's id is its request's + this (MIG's convention).
pub const REPLY_ID_OFFSET: i32 = 100;
/// To a task port; no arguments.
pub const MSG_TASK_TERMINATE: i32 = KOBJECT_ID_BASE + TRAP_TASK_TERMINATE as i32;
/// To a task port; no arguments. Suspends every thread of the task.
pub const MSG_TASK_SUSPEND: i32 = KOBJECT_ID_BASE + TRAP_TASK_SUSPEND as i32;
/// To a task port; no arguments.
pub const MSG_TASK_RESUME: i32 = KOBJECT_ID_BASE + TRAP_TASK_RESUME as i32;
/// To a task port; three INLINE u64: entry, stack, argument. Reply: a
/// `PORTS` item with a send right to the new thread's port.
pub const MSG_THREAD_CREATE: i32 = KOBJECT_ID_BASE + TRAP_THREAD_CREATE as i32;
/// To a thread port; no arguments.
pub const MSG_THREAD_TERMINATE: i32 = KOBJECT_ID_BASE + TRAP_THREAD_TERMINATE as i32;
/// To a thread port; no arguments.
pub const MSG_THREAD_SUSPEND: i32 = KOBJECT_ID_BASE + TRAP_THREAD_SUSPEND as i32;
/// To a thread port; no arguments.
pub const MSG_THREAD_RESUME: i32 = KOBJECT_ID_BASE + TRAP_THREAD_RESUME as i32;
/// To a thread port; no arguments. Reply: INLINE `ThreadState` (144 bytes).
pub const MSG_THREAD_GET_STATE: i32 = KOBJECT_ID_BASE + TRAP_THREAD_GET_STATE as i32;
/// To a thread port; INLINE `ThreadState` (144 bytes).
pub const MSG_THREAD_SET_STATE: i32 = KOBJECT_ID_BASE + TRAP_THREAD_SET_STATE as i32;
/// To a task port; a `PORTS` item of one send right (or `PORT_NULL`).
pub const MSG_TASK_SET_EXCEPTION_PORT: i32 = KOBJECT_ID_BASE + TRAP_TASK_SET_EXCEPTION_PORT as i32;
/// To a thread port; a `PORTS` item of one send right (or `PORT_NULL`).
pub const MSG_THREAD_SET_EXCEPTION_PORT: i32 =
    KOBJECT_ID_BASE + TRAP_THREAD_SET_EXCEPTION_PORT as i32;
/// To a task port; a `PORTS` item of one send right (or `PORT_NULL`).
pub const MSG_TASK_SET_BOOTSTRAP_PORT: i32 = KOBJECT_ID_BASE + TRAP_TASK_SET_BOOTSTRAP_PORT as i32;
/// To a task port; no arguments. Reply: a `PORTS` item, one send right.
pub const MSG_TASK_GET_BOOTSTRAP_PORT: i32 = KOBJECT_ID_BASE + TRAP_TASK_GET_BOOTSTRAP_PORT as i32;

// MIG return codes (negative, as in Mach), in replies of kernel-served
// and `mach_interface!` servers.
/// The reply is not of the type the routine returns.
pub const MIG_TYPE_ERROR: u32 = -300i32 as u32;
/// The reply's id is not the request's + 100.
pub const MIG_REPLY_MISMATCH: u32 = -301i32 as u32;
/// The server knows no routine with the request's id.
pub const MIG_BAD_ID: u32 = -303i32 as u32;
/// The request's items do not match the routine's arguments.
pub const MIG_BAD_ARGUMENTS: u32 = -304i32 as u32;

/// `port_status` out value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStatus {
    /// In the task's default group.
    pub enabled: u32,
    pub num_msgs: u32,
    pub backlog: u32,
    /// The caller holds the receive right.
    pub receiver: u32,
    pub send_refs: u32,
    pub seqno: u32,
}

/// What an exception message carries about the fault.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExceptionInfo {
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cr2: u64,
}

/// `thread_get_state` / `thread_set_state`: the user registers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadState {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

impl ThreadState {
    /// Bytes on the wire (the trap's memory layout, the messages' INLINE item).
    pub const SIZE: usize = 18 * 8;

    /// The registers in field order.
    #[rustfmt::skip]
    pub fn words(&self) -> [u64; 18] {
        [
            self.rax, self.rbx, self.rcx, self.rdx, self.rsi, self.rdi, self.rbp, self.rsp,
            self.r8, self.r9, self.r10, self.r11, self.r12, self.r13, self.r14, self.r15,
            self.rip, self.rflags,
        ]
    }
    #[rustfmt::skip]
    pub fn from_words(w: [u64; 18]) -> ThreadState {
        let [rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15, rip,
            rflags] = w;
        ThreadState {
            rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15, rip,
            rflags,
        }
    }
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        for (c, w) in b.chunks_exact_mut(8).zip(self.words()) {
            c.copy_from_slice(&w.to_le_bytes());
        }
        b
    }
    /// None unless `b` is exactly `SIZE` bytes.
    pub fn from_bytes(b: &[u8]) -> Option<ThreadState> {
        if b.len() != Self::SIZE {
            return None;
        }
        let mut w = [0u64; 18];
        for (x, c) in w.iter_mut().zip(b.chunks_exact(8)) {
            *x = u64::from_le_bytes(c.try_into().ok()?);
        }
        Some(ThreadState::from_words(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_item_round_trip() {
        let h = Header {
            bits: Header::bits(COPY_SEND, MAKE_SEND_ONCE) | BITS_COMPLEX,
            size: 48,
            remote: 0x105,
            local: 0x201,
            seqno: 9,
            id: -3,
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()), Some(h));
        assert_eq!(h.remote_disposition(), COPY_SEND);
        assert_eq!(h.local_disposition(), MAKE_SEND_ONCE);
        assert_eq!(Header::from_bytes(&[0; 23]), None);
        let i = ItemHeader {
            kind: ITEM_PORTS,
            disp: MOVE_SEND,
            reserved: 0,
            count: 3,
            addr: 0,
        };
        assert_eq!(ItemHeader::from_bytes(&i.to_bytes()), Some(i));
        assert_eq!(i.payload_len(), Some(16));
        let big = ItemHeader {
            kind: ITEM_INLINE,
            count: u32::MAX,
            ..i
        };
        assert_eq!(big.payload_len(), Some((u32::MAX as usize + 7) & !7));
    }

    #[test]
    fn thread_state_bytes_are_its_memory_layout() {
        let w: [u64; 18] = core::array::from_fn(|i| 0x1111 * (i as u64 + 1));
        let st = ThreadState::from_words(w);
        assert_eq!(
            (st.rax, st.rsp, st.rip, st.rflags),
            (w[0], w[7], w[16], w[17])
        );
        assert_eq!(st.words(), w);
        let b = st.to_bytes();
        assert_eq!(core::mem::size_of::<ThreadState>(), ThreadState::SIZE);
        // SAFETY: ThreadState is repr(C) u64s; read as bytes.
        let mem =
            unsafe { core::slice::from_raw_parts(&st as *const _ as *const u8, ThreadState::SIZE) };
        assert_eq!(&b[..], mem);
        assert_eq!(ThreadState::from_bytes(&b), Some(st));
        assert_eq!(ThreadState::from_bytes(&b[..143]), None);
    }

    #[test]
    fn kernel_object_ids_are_trap_numbers_plus_base() {
        assert_eq!(MSG_TASK_TERMINATE, 1044);
        assert_eq!(MSG_THREAD_GET_STATE, 1051);
        assert_eq!(MSG_TASK_GET_BOOTSTRAP_PORT, 1056);
        // No clash with the other ids the kernel knows, replies included.
        for id in [NOTIFY_DEAD_NAME, EXCEPTION_RAISE, EXCEPTION_REPLY] {
            assert!(
                !(MSG_TASK_TERMINATE..=MSG_TASK_GET_BOOTSTRAP_PORT + REPLY_ID_OFFSET).contains(&id)
            );
        }
    }
}

// ---- Virtual memory (paper Table 3-3; docs/vm.md) ----

// Trap numbers. Each names its target task by a send right to its port.
/// (task, *addr in/out, size, anywhere)
pub const TRAP_VM_ALLOCATE: u64 = 0x40;
/// (task, addr, size)
pub const TRAP_VM_DEALLOCATE: u64 = 0x41;
/// (task, addr, size, set_maximum, prot)
pub const TRAP_VM_PROTECT: u64 = 0x42;
/// (task, addr, size, inheritance)
pub const TRAP_VM_INHERIT: u64 = 0x43;
/// (task, addr, size, *data out): a copy-on-write copy of the target's
/// range, mapped anywhere in the caller.
pub const TRAP_VM_READ: u64 = 0x44;
/// (task, addr, data, size): the caller's [data, data+size) over the
/// target's [addr, addr+size), copy-on-write.
pub const TRAP_VM_WRITE: u64 = 0x45;
/// (task, src, size, dst): within the target, copy-on-write.
pub const TRAP_VM_COPY: u64 = 0x46;
/// (task, *addr in/out, *VmRegionInfo out): the region at or above addr.
pub const TRAP_VM_REGION: u64 = 0x47;
/// (task, *VmStatistics out)
pub const TRAP_VM_STATISTICS: u64 = 0x48;
/// (task, *addr in/out, size, flags, memory object, offset): maps
/// [offset, offset+size) of the memory object (a port) into the task.
/// flags: PAGER_MAP_ANYWHERE, and the protection asked for shifted by
/// PAGER_MAP_PROT_SHIFT (0: read/write). A writable mapping of a read-only
/// object fails with KERN_PROTECTION_FAILURE.
pub const TRAP_VM_ALLOCATE_WITH_PAGER: u64 = 0x49;
pub const PAGER_MAP_ANYWHERE: u64 = 1;
pub const PAGER_MAP_PROT_SHIFT: u32 = 8;
pub const PAGER_MAP_PROT_MASK: u64 = 7 << PAGER_MAP_PROT_SHIFT;
/// (host object number from object_lookup, *name out): a send right to
/// the kernel port that is that host object's memory object.
pub const TRAP_HOST_OBJECT_PORT: u64 = 0x4a;
/// (memory object send right, *HostObjectInfo out): the size and flags of
/// the host object behind a memory object port (KERN_INVALID_ARGUMENT for
/// any other port).
pub const TRAP_HOST_OBJECT_INFO: u64 = 0x4b;

/// What TRAP_HOST_OBJECT_INFO writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostObjectInfo {
    /// Bytes, as the host's pager told at initialisation.
    pub size: u64,
    /// HOST_OBJECT_READ_ONLY: only a read-only mapping is allowed.
    pub flags: u64,
}
pub const HOST_OBJECT_READ_ONLY: u64 = 1;

pub const VM_PROT_NONE: u32 = 0;
pub const VM_PROT_READ: u32 = 1;
pub const VM_PROT_WRITE: u32 = 2;
pub const VM_PROT_EXECUTE: u32 = 4;
pub const VM_PROT_DEFAULT: u32 = VM_PROT_READ | VM_PROT_WRITE;
pub const VM_PROT_ALL: u32 = 7;

pub const VM_INHERIT_SHARE: u32 = 0;
pub const VM_INHERIT_COPY: u32 = 1;
pub const VM_INHERIT_NONE: u32 = 2;

pub const KERN_PROTECTION_FAILURE: u32 = 2;
pub const KERN_MEMORY_ERROR: u32 = 10;

/// vm_region's answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmRegionInfo {
    pub start: u64,
    pub size: u64,
    /// Offset of `start` in the region's memory object.
    pub offset: u64,
    pub prot: u32,
    pub max_prot: u32,
    pub inheritance: u32,
    /// Nonzero if another task shares the region (inherited shared).
    pub shared: u32,
}

/// vm_statistics' answer: page counts and fault counters since boot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmStatistics {
    pub page_size: u64,
    pub free_count: u64,
    pub active_count: u64,
    pub inactive_count: u64,
    pub faults: u64,
    pub zero_fill_count: u64,
    /// Zero fills whose frame the kernel had to clear itself.
    pub zeroed_by_kernel: u64,
    pub cow_faults: u64,
    pub soft_faults: u64,
    pub objects: u64,
}
