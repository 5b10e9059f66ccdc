//! The guest's platform ABI: ports the VMM serves, system call numbers and
//! exit codes. Shared verbatim by the kernel, the user programs (which
//! include this file by path) and the VMM, so the three cannot drift apart.

/// Console write doorbell (32-bit `out`). The value is the guest-physical
/// address (below 4 GiB) of a [`ConsoleWrite`] record; the VMM copies the
/// bytes it names to the console. One exit per line, not per byte.
pub const PORT_CONSOLE: u16 = 0x600;
/// Power-off with a status (32-bit `out`): the VMM exits with it.
pub const PORT_EXIT: u16 = 0x604;
/// Boot milestones (32-bit `out`), for measurements: see `MILESTONE_*`.
pub const PORT_MILESTONE: u16 = 0x608;

/// The first user task (init) is about to run.
pub const MILESTONE_INIT_START: u32 = 1;

/// Record read by the VMM on a `PORT_CONSOLE` doorbell.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConsoleWrite {
    /// Guest-physical address of the bytes.
    pub addr: u64,
    /// Number of bytes.
    pub len: u32,
    pub _pad: u32,
}

/// Exit status when the kernel panics.
pub const EXIT_KERNEL_PANIC: u32 = 101;
/// Exit status when the kernel takes an exception in ring 0.
pub const EXIT_KERNEL_FAULT: u32 = 102;
/// Exit status when boot cannot continue (bad boot info, no init).
pub const EXIT_BOOT_FAILED: u32 = 103;
/// A task killed by exception `v` exits with status `KILLED_BASE + v`.
pub const KILLED_BASE: i64 = 128;

/// System call numbers (rax). Arguments in rdi, rsi, rdx, r10, r8, r9;
/// result in rax, negative values are errors (`ERR_*`).
pub const SYS_EXIT: u64 = 0;
/// (ptr, len): write bytes to the console.
pub const SYS_CONSOLE_WRITE: u64 = 1;
/// (name ptr, name len, args ptr, args len) -> task id.
pub const SYS_TASK_SPAWN: u64 = 2;
/// (task id) -> exit status of that task, once it has exited.
pub const SYS_TASK_WAIT: u64 = 3;
/// Give up the processor.
pub const SYS_YIELD: u64 = 4;

/// (name ptr, name len) -> object id. The first lookup of an object
/// initialises it with its pager (pager_init) and blocks until it answers.
pub const SYS_OBJECT_LOOKUP: u64 = 5;
/// (object id, out ptr to [`ObjectStat`]) -> 0.
pub const SYS_OBJECT_STAT: u64 = 6;
/// (object id, offset, buf ptr, len) -> bytes read. Offset, buffer and
/// length page aligned, len ≤ [`OBJECT_IO_MAX`]; the device fills the
/// task's own frames (no copy). Bytes past the object's end read as zero.
pub const SYS_OBJECT_READ: u64 = 7;
/// (object id, offset, buf ptr, len) -> bytes written; as for read. The
/// part of the last page beyond the object's end is not written.
pub const SYS_OBJECT_WRITE: u64 = 8;
/// (object id) -> 0 once every write so far is durable with the pager.
pub const SYS_OBJECT_SYNC: u64 = 9;

/// (id 0..=255): a benchmark mark. The kernel writes
/// `MILESTONE_USER_BASE | id` to the milestone port, where the VMM snapshots
/// time and the vCPU counters, so a benchmark can bracket exactly the work
/// it measures.
pub const SYS_MILESTONE: u64 = 10;
pub const MILESTONE_USER_BASE: u32 = 0x100;

/// Largest object read or write in one call.
pub const OBJECT_IO_MAX: u64 = 1 << 20;

/// What SYS_OBJECT_STAT reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ObjectStat {
    /// Current size in bytes (as the pager told it at initialisation).
    pub size: u64,
    /// `OBJECT_READ_ONLY` and friends.
    pub flags: u64,
}
pub const OBJECT_READ_ONLY: u64 = 1;
pub const OBJECT_MAY_CACHE: u64 = 2;

pub const ERR_IO: i64 = -5;
pub const ERR_NO_DEVICE: i64 = -6;
pub const ERR_BUSY: i64 = -16;
pub const ERR_NO_OBJECT: i64 = -19;
pub const ERR_READ_ONLY: i64 = -30;
pub const ERR_PAST_END: i64 = -34;
/// The pager broke protocol or died.
pub const ERR_PAGER_FAILED: i64 = -71;
/// The pager did not answer within the object's timeout.
pub const ERR_PAGER_TIMED_OUT: i64 = -110;
/// The device was reset while the request was in flight; look the object
/// up again.
pub const ERR_RESET: i64 = -104;
pub const ERR_BAD_ADDRESS: i64 = -14;
pub const ERR_NO_SUCH_PROGRAM: i64 = -2;
pub const ERR_NO_SUCH_TASK: i64 = -3;
pub const ERR_NO_MEMORY: i64 = -12;
pub const ERR_INVALID: i64 = -22;
pub const ERR_NO_SYSCALL: i64 = -38;

/// A short description of an error code, for user programs' messages.
pub fn error_name(e: i64) -> &'static str {
    match e {
        ERR_BAD_ADDRESS => "bad address",
        ERR_NO_SUCH_PROGRAM => "no such program",
        ERR_NO_SUCH_TASK => "no such task",
        ERR_NO_MEMORY => "out of memory",
        ERR_INVALID => "invalid argument",
        ERR_NO_SYSCALL => "no such system call",
        ERR_IO => "I/O error in the backing store",
        ERR_NO_DEVICE => "no virtio-pager device",
        ERR_BUSY => "too many requests in flight",
        ERR_NO_OBJECT => "no such object",
        ERR_READ_ONLY => "object is read-only",
        ERR_PAST_END => "offset past the end of the object",
        ERR_PAGER_FAILED => "pager failed (died or broke protocol)",
        ERR_PAGER_TIMED_OUT => "pager timed out",
        ERR_RESET => "device was reset",
        _ => "unknown error",
    }
}

/// Where user programs are linked and where their stack lives.
pub const USER_STACK_TOP: u64 = 0x0000_7fff_ffff_f000;
pub const USER_STACK_PAGES: u64 = 16;

/// The part of every task's address space the Mach VM manages (vm_allocate
/// and friends, docs/vm.md): above the program image and below the window
/// where received out-of-line regions are placed and the stack.
pub const VM_MIN_ADDRESS: u64 = 0x0000_1000_0000_0000;
pub const VM_MAX_ADDRESS: u64 = 0x0000_6000_0000_0000;
