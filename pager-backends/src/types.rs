//! Typed quantities shared by the pager interface: object offsets, access
//! rights, and the identity of a mapping kernel.

use std::fmt;

/// Size of a page as the interface counts it. Requests and replies are whole
/// pages (the paper: "the kernel can only handle integral multiples of the
/// system page size"; partial pages are discarded).
pub const PAGE_SIZE: u64 = 4096;

/// A byte offset inside a memory object (not a guest address of any kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ObjectOffset(pub u64);

impl ObjectOffset {
    pub const fn raw(self) -> u64 {
        self.0
    }
    pub const fn is_page_aligned(self) -> bool {
        self.0.is_multiple_of(PAGE_SIZE)
    }
    /// `self + len`, or `None` on overflow (lengths come from untrusted callers).
    pub fn checked_add(self, len: u64) -> Option<ObjectOffset> {
        self.0.checked_add(len).map(ObjectOffset)
    }
}

impl fmt::Display for ObjectOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A set of access rights (the paper's `desired_access` and `lock_value`).
/// In a lock value the bits are the accesses that are *prevented*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Access(u8);

impl Access {
    pub const NONE: Access = Access(0);
    pub const READ: Access = Access(1);
    pub const WRITE: Access = Access(2);
    pub const EXECUTE: Access = Access(4);
    pub const ALL: Access = Access(7);

    /// Builds from wire bits; unknown bits are rejected rather than ignored.
    pub const fn from_bits(bits: u8) -> Option<Access> {
        if bits & !7 == 0 {
            Some(Access(bits))
        } else {
            None
        }
    }
    pub const fn bits(self) -> u8 {
        self.0
    }
    pub const fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }
}

/// Identifies one mapping kernel (one guest VM) to a pager. An object may be
/// mapped by several kernels at once (paper section 4.2); each gets its own
/// id, the analogue of its pager request port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelId(pub u64);
