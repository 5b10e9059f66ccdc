//! Typed addresses: guest-physical and guest-virtual are different things
//! and the type system keeps them apart.

pub const PAGE_SIZE: u64 = 4096;
pub const LARGE_PAGE_SIZE: u64 = 2 * 1024 * 1024;

/// A guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(pub u64);

/// A guest-virtual address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtAddr(pub u64);

macro_rules! addr_ops {
    ($t:ident) => {
        impl $t {
            pub const fn raw(self) -> u64 {
                self.0
            }
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 % align == 0
            }
            pub const fn align_down(self, align: u64) -> Self {
                $t(self.0 & !(align - 1))
            }
            /// `None` on overflow.
            pub const fn align_up(self, align: u64) -> Option<Self> {
                match self.0.checked_add(align - 1) {
                    Some(v) => Some($t(v & !(align - 1))),
                    None => None,
                }
            }
            pub const fn checked_add(self, n: u64) -> Option<Self> {
                match self.0.checked_add(n) {
                    Some(v) => Some($t(v)),
                    None => None,
                }
            }
            pub const fn page_offset(self) -> u64 {
                self.0 % PAGE_SIZE
            }
        }
    };
}
addr_ops!(PhysAddr);
addr_ops!(VirtAddr);

impl VirtAddr {
    /// Lower half: what a user task may name.
    pub const fn is_user(self) -> bool {
        self.0 < 0x0000_8000_0000_0000
    }
}

/// Where the kernel sees all of physical memory (PML4 slot 256).
pub const DIRECT_MAP_BASE: u64 = 0xffff_8000_0000_0000;
/// Where threads' kernel stacks live, each below an unmapped guard page
/// (PML4 slot 510, shared by every address space).
pub const KERNEL_STACKS_BASE: u64 = 0xffff_ff00_0000_0000;
/// Where the kernel image is linked (top 2 GiB, PML4 slot 511).
pub const KERNEL_BASE: u64 = 0xffff_ffff_8000_0000;
