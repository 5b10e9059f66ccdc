//! Bounds on everything IPC allocates on a task's behalf (docs §6).

/// The bounds; `Limits::default()` is docs/mach-ipc.md §6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Names (entries) in one space → `NO_SPACE`.
    pub names_per_space: u32,
    /// Live ports in total → `RESOURCE_SHORTAGE`.
    pub ports_total: u32,
    /// Live spaces (tasks) in total → `RESOURCE_SHORTAGE`.
    pub spaces_total: u32,
    /// Messages a space has sent that are not yet received → `SEND_NO_BUFFER`.
    pub queued_per_space: u32,
    /// Kernel message memory (inline bytes plus bookkeeping) → `SEND_NO_BUFFER`.
    pub kmsg_bytes_total: usize,
    /// Out-of-line bytes a space has in flight, copied or mapped (a
    /// snapshot counts its pages) → `SEND_NO_BUFFER`.
    pub ool_bytes_per_space: u64,
    /// Out-of-line bytes in flight in total → `SEND_NO_BUFFER`.
    pub ool_bytes_total: u64,
    /// The copied part of a space's bytes in flight (kernel heap) →
    /// `SEND_NO_BUFFER`; one message copies at most `OOL_MAX` bytes
    /// (`SEND_TOO_LARGE`).
    pub ool_copied_per_space: u64,
    /// Copied out-of-line bytes in total (kernel heap) → `SEND_NO_BUFFER`.
    pub ool_copied_total: u64,
    /// Dead-name requests registered on one port → `RESOURCE_SHORTAGE`.
    pub dead_name_requests_per_port: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            names_per_space: 1024,
            ports_total: 16384,
            spaces_total: 64,
            queued_per_space: 256,
            kmsg_bytes_total: 4 << 20,
            ool_bytes_per_space: 256 << 20,
            ool_bytes_total: 1 << 30,
            ool_copied_per_space: 16 << 20,
            ool_copied_total: 16 << 20,
            dead_name_requests_per_port: 64,
        }
    }
}

/// Largest index a name can carry: `index << 8` must fit, and the top index
/// would let a name equal `PORT_DEAD`.
pub(super) const NAME_INDEX_MAX: u32 = 0x00ff_fffe;

/// Send user references one name can hold (Mach's UREFS_MAX); extra
/// references arriving in messages are released instead of overflowing.
pub(super) const UREFS_MAX: u32 = 0xffff;

/// Bookkeeping charged per message on top of its bytes, so a flood of empty
/// messages is bounded by `kmsg_bytes_total` too.
pub(super) const KMSG_OVERHEAD: usize = 128;
