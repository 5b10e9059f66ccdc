//! The vocabulary the VM modules share: object offsets, protections,
//! inheritance, object names and the errors of Table 3-3.
//!
//! Kept apart so that the address map (map.rs), the objects and their
//! resident pages (object.rs, page.rs) and the fault handler (fault.rs) agree
//! on one set of types without depending on each other.

use crate::addr::PAGE_SIZE;

/// A byte offset into a memory object (not an address in any space).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ObjectOffset(pub u64);

impl ObjectOffset {
    pub const fn raw(self) -> u64 {
        self.0
    }
    pub const fn is_page_aligned(self) -> bool {
        self.0.is_multiple_of(PAGE_SIZE)
    }
    pub const fn page_down(self) -> ObjectOffset {
        ObjectOffset(self.0 & !(PAGE_SIZE - 1))
    }
    /// `None` on overflow.
    pub const fn checked_add(self, n: u64) -> Option<ObjectOffset> {
        match self.0.checked_add(n) {
            Some(v) => Some(ObjectOffset(v)),
            None => None,
        }
    }
}

/// Page protection (Table 3-3's vm_protect values). A bit set, not an enum:
/// current protection is always a subset of the maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VmProt(pub u8);

impl VmProt {
    pub const NONE: VmProt = VmProt(0);
    pub const READ: VmProt = VmProt(1);
    pub const WRITE: VmProt = VmProt(2);
    pub const EXECUTE: VmProt = VmProt(4);
    pub const ALL: VmProt = VmProt(7);
    pub const DEFAULT: VmProt = VmProt(3);

    pub const fn bits(self) -> u8 {
        self.0
    }
    /// From a user's value; unknown bits are an error, not ignored.
    pub const fn from_bits(b: u64) -> Option<VmProt> {
        if b & !7 == 0 {
            Some(VmProt(b as u8))
        } else {
            None
        }
    }
    pub const fn contains(self, other: VmProt) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn union(self, other: VmProt) -> VmProt {
        VmProt(self.0 | other.0)
    }
    pub const fn intersect(self, other: VmProt) -> VmProt {
        VmProt(self.0 & other.0)
    }
    pub const fn without(self, other: VmProt) -> VmProt {
        VmProt(self.0 & !other.0)
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// What a child task gets of a region at task_create (vm_inherit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Inheritance {
    /// Both tasks see the same memory; writes by either are seen by both.
    Share,
    /// The child gets a copy-on-write copy (the default, as in Mach).
    #[default]
    Copy,
    /// The child has nothing there.
    None,
}

impl Inheritance {
    /// The ABI values (VM_INHERIT_SHARE = 0, COPY = 1, NONE = 2).
    pub const fn from_raw(v: u64) -> Option<Inheritance> {
        match v {
            0 => Some(Inheritance::Share),
            1 => Some(Inheritance::Copy),
            2 => Some(Inheritance::None),
            _ => None,
        }
    }
    pub const fn raw(self) -> u64 {
        match self {
            Inheritance::Share => 0,
            Inheritance::Copy => 1,
            Inheritance::None => 2,
        }
    }
}

/// Names a memory object in the kernel's object table. The generation makes
/// a stale name (object since freed and its slot reused) detectable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub index: u32,
    pub generation: u32,
}

impl ObjectId {
    /// As one number (a kernel port's object, say).
    pub const fn to_raw(self) -> u64 {
        ((self.generation as u64) << 32) | self.index as u64
    }
    pub const fn from_raw(v: u64) -> ObjectId {
        ObjectId {
            index: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

/// Why a VM operation was refused (the KERN_* results of Table 3-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmError {
    /// An address or size not page aligned, a zero size, a range that wraps
    /// or leaves user space, an unknown protection or inheritance value.
    InvalidArgument,
    /// Part of the range is not allocated.
    InvalidAddress,
    /// A fixed-address allocation overlaps an existing region.
    NoSpace,
    /// Asked for more than the maximum protection allows.
    ProtectionFailure,
    /// A per-task or global limit (map entries, objects, pages) is reached;
    /// the kernel refuses rather than exhausts itself.
    ResourceShortage,
    /// The memory object's pager reported an error or died.
    MemoryError,
}

/// What the address map needs from the object table: map entries hold
/// object references, so clipping, copying and removing entries add and drop
/// them, and resolving a copy-on-write entry puts a shadow in front.
///
/// The map calls these instead of owning the objects, so map.rs and
/// object.rs stay independent and each is host-tested alone.
pub trait ObjectRefs {
    /// One more reference on `id` (an entry was split or shared).
    fn reference(&mut self, id: ObjectId);
    /// Drops one reference; the last one frees the object (or leaves it
    /// cached, when its pager allowed that).
    fn release(&mut self, id: ObjectId);
    /// Creates a shadow object of `size` bytes whose backing is `id` at
    /// `offset` (§5.2 copy-on-write). The caller's reference on `id` moves
    /// to the shadow; the shadow is returned holding one reference.
    fn shadow(
        &mut self,
        id: ObjectId,
        offset: ObjectOffset,
        size: u64,
    ) -> Result<ObjectId, VmError>;
}
