//! Copy-on-write snapshots in transit (Mach's vm_map_copy objects carried by
//! messages): the kernel keeps each [`VmCopy`] here while a message holds
//! it, and the message carries only an opaque handle (the IPC layer never
//! sees VM types). A handle is an index plus a generation, so a stale one
//! finds nothing instead of another message's snapshot.
//!
//! Bounded: at most `max_copies` snapshots and `max_entries` copy entries
//! (each a [`CopyEntry`] on the heap) at once. Past either, `insert` hands
//! the copy back and the caller discards it (the kernel then copies the
//! region's bytes instead, under the IPC's bounds for copies).

use alloc::vec::Vec;

use crate::vm::map::VmCopy;
use crate::vm::types::ObjectRefs;

struct Slot {
    generation: u32,
    held: Option<Held>,
}

/// A snapshot and where its data starts in its first page.
#[derive(Debug)]
pub struct Held {
    pub copy: VmCopy,
    pub offset: u64,
}

pub struct CopyStore {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    entries: usize,
    max_copies: usize,
    max_entries: usize,
}

fn split(handle: u64) -> (usize, u32) {
    ((handle & 0xffff_ffff) as usize, (handle >> 32) as u32)
}

impl CopyStore {
    pub fn new(max_copies: usize, max_entries: usize) -> CopyStore {
        CopyStore {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            entries: 0,
            max_copies: max_copies.min(u32::MAX as usize),
            max_entries,
        }
    }

    /// Snapshots held.
    pub fn live(&self) -> usize {
        self.live
    }
    /// Copy entries held, across all snapshots.
    pub fn entries(&self) -> usize {
        self.entries
    }
    /// Whether one more snapshot may be stored (the entry bound is checked
    /// by `insert`, once the snapshot's size is known).
    pub fn has_room(&self) -> bool {
        self.live < self.max_copies && self.entries < self.max_entries
    }

    /// Stores `copy`; its handle. Err gives it back when a bound (or the
    /// heap) says no.
    pub fn insert(&mut self, copy: VmCopy, offset: u64) -> Result<u64, VmCopy> {
        let n = copy.entries().len();
        if self.live >= self.max_copies || self.entries + n > self.max_entries {
            return Err(copy);
        }
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                // `free` can hold every slot, so `take` never allocates.
                let slots = self.slots.len() + 1;
                if self.slots.try_reserve(1).is_err() || self.free.try_reserve(slots).is_err() {
                    return Err(copy);
                }
                self.slots.push(Slot {
                    generation: 0,
                    held: None,
                });
                self.slots.len() - 1
            }
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return Err(copy);
        };
        slot.generation = slot.generation.wrapping_add(1).max(1);
        slot.held = Some(Held { copy, offset });
        self.live += 1;
        self.entries += n;
        Ok((u64::from(slot.generation) << 32) | index as u64)
    }

    /// Takes the snapshot out (to map it, or to discard it); None for a
    /// handle that holds nothing.
    pub fn take(&mut self, handle: u64) -> Option<Held> {
        let (index, generation) = split(handle);
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let held = slot.held.take()?;
        self.live -= 1;
        self.entries -= held.copy.entries().len();
        // Room was reserved when the slot was made.
        self.free.push(index as u32);
        Some(held)
    }

    /// Puts back what `take(handle)` just gave (a mapping that failed), so
    /// the handle's owner can still release it.
    pub fn restore(&mut self, handle: u64, held: Held) -> Result<(), Held> {
        let (index, generation) = split(handle);
        let Some(slot) = self.slots.get_mut(index) else {
            return Err(held);
        };
        let Some(pos) = self.free.iter().rposition(|&i| i as usize == index) else {
            return Err(held);
        };
        if slot.generation != generation || slot.held.is_some() {
            return Err(held);
        }
        self.free.swap_remove(pos);
        self.live += 1;
        self.entries += held.copy.entries().len();
        slot.held = Some(held);
        Ok(())
    }

    /// Discards the snapshot `handle` holds (its references go to `refs`);
    /// false if it held none.
    pub fn discard(&mut self, handle: u64, refs: &mut dyn ObjectRefs) -> bool {
        match self.take(handle) {
            Some(h) => {
                h.copy.discard(refs);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{PAGE_SIZE, VirtAddr};
    use crate::vm::map::VmMap;
    use crate::vm::pmap::{SimMachine, SpaceHandle};
    use crate::vm::types::{Inheritance, ObjectId, ObjectOffset, VmError, VmProt};
    use alloc::collections::BTreeMap;

    /// Reference counts only.
    #[derive(Default)]
    struct Refs(BTreeMap<u32, u32>);

    impl ObjectRefs for Refs {
        fn reference(&mut self, id: ObjectId) {
            *self.0.entry(id.index).or_default() += 1;
        }
        fn release(&mut self, id: ObjectId) {
            let n = self.0.get_mut(&id.index).expect("release of no reference");
            *n -= 1;
            if *n == 0 {
                self.0.remove(&id.index);
            }
        }
        fn shadow(&mut self, _: ObjectId, _: ObjectOffset, _: u64) -> Result<ObjectId, VmError> {
            Err(VmError::ResourceShortage)
        }
    }

    struct Env {
        map: VmMap,
        refs: Refs,
        m: SimMachine,
        sp: SpaceHandle,
        at: VirtAddr,
    }

    /// A map with one 4-page region of object 1.
    fn env() -> Env {
        let mut m = SimMachine::new();
        let sp = m.new_space();
        let mut refs = Refs::default();
        let mut map = VmMap::new(VirtAddr(0x1000_0000)..VirtAddr(0x2000_0000), 64).unwrap();
        let obj = ObjectId {
            index: 1,
            generation: 1,
        };
        refs.reference(obj);
        let at = map
            .allocate(
                None,
                4 * PAGE_SIZE,
                obj,
                ObjectOffset(0),
                VmProt::DEFAULT,
                VmProt::ALL,
                Inheritance::Copy,
                false,
                &mut refs,
            )
            .unwrap();
        Env {
            map,
            refs,
            m,
            sp,
            at,
        }
    }

    impl Env {
        fn copy(&mut self, pages: u64) -> VmCopy {
            let mut pmap = self.m.pmap(self.sp);
            self.map
                .copy_out_of(self.at, pages * PAGE_SIZE, &mut self.refs, &mut pmap)
                .unwrap()
        }
        /// References held beyond the map's own one.
        fn extra(&self) -> u32 {
            self.refs.0.values().sum::<u32>() - self.map.len() as u32
        }
    }

    #[test]
    fn handles_are_checked_and_references_balance() {
        let mut t = env();
        let mut store = CopyStore::new(2, 16);
        let c = t.copy(2);
        let h1 = store.insert(c, 0x10).unwrap();
        let c = t.copy(2);
        let h2 = store.insert(c, 0).unwrap();
        assert_eq!(t.extra(), 2);
        // Full: the copy comes back to be discarded.
        let c = t.copy(1);
        let back = store.insert(c, 0).unwrap_err();
        back.discard(&mut t.refs);
        assert!(!store.has_room());
        assert_eq!((store.live(), store.entries()), (2, 2));
        // take, restore, discard; a stale handle finds nothing.
        let held = store.take(h1).unwrap();
        assert_eq!(held.offset, 0x10);
        assert!(store.take(h1).is_none());
        store.restore(h1, held).unwrap();
        assert!(store.discard(h1, &mut t.refs));
        assert!(!store.discard(h1, &mut t.refs));
        let c = t.copy(4);
        let h3 = store.insert(c, 0).unwrap();
        assert_ne!(h3, h1, "a reused slot gets a new generation");
        assert!(store.take(h1).is_none());
        assert!(store.discard(h2, &mut t.refs));
        assert!(store.discard(h3, &mut t.refs));
        assert!(!store.discard(u64::MAX, &mut t.refs));
        assert_eq!((store.live(), store.entries()), (0, 0));
        assert_eq!(t.extra(), 0);
    }

    #[test]
    fn restore_only_what_was_just_taken() {
        let mut t = env();
        let mut store = CopyStore::new(4, 16);
        let c = t.copy(1);
        let h = store.insert(c, 0).unwrap();
        let held = store.take(h).unwrap();
        // The slot was reused in between: the old handle cannot come back.
        let c = t.copy(1);
        let h2 = store.insert(c, 0).unwrap();
        let held = store.restore(h, held).unwrap_err();
        held.copy.discard(&mut t.refs);
        assert!(store.discard(h2, &mut t.refs));
        assert_eq!(t.extra(), 0);
    }

    #[test]
    fn the_entry_bound_applies() {
        let mut t = env();
        // Two entries: split the region by protection first.
        let mut pmap = t.m.pmap(t.sp);
        t.map
            .protect(t.at, PAGE_SIZE, false, VmProt::READ, &mut t.refs, &mut pmap)
            .unwrap();
        let c = t.copy(4);
        assert_eq!(c.entries().len(), 2);
        let mut store = CopyStore::new(8, 1);
        let c = store.insert(c, 0).unwrap_err();
        c.discard(&mut t.refs);
        assert_eq!(store.live(), 0);
        assert_eq!(t.extra(), 0);
    }
}
