//! A generation-checked slab: the storage behind `PortId` and `SpaceId`.
//!
//! A freed slot bumps its generation, so an id kept past its object's death
//! never resolves to the object that reuses the slot.

use alloc::vec::Vec;

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

pub(super) struct Table<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Table<T> {
    pub(super) const fn new() -> Self {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    pub(super) fn live(&self) -> usize {
        self.live
    }

    /// Stores `value`; `None` when growing the table fails (the caller
    /// turns that into a resource shortage, never an abort).
    pub(super) fn insert(&mut self, value: T) -> Option<(u32, u32)> {
        if let Some(index) = self.free.pop() {
            let slot = self.slots.get_mut(index as usize)?;
            slot.value = Some(value);
            self.live += 1;
            return Some((index, slot.generation));
        }
        let index = u32::try_from(self.slots.len()).ok()?;
        // Reserve the free-list room now so `remove` never allocates.
        self.slots.try_reserve(1).ok()?;
        self.free
            .try_reserve(self.slots.len() + 1 - self.free.len())
            .ok()?;
        self.slots.push(Slot {
            generation: 1,
            value: Some(value),
        });
        self.live += 1;
        Some((index, 1))
    }

    pub(super) fn get(&self, index: u32, generation: u32) -> Option<&T> {
        let slot = self.slots.get(index as usize)?;
        if slot.generation != generation {
            return None;
        }
        slot.value.as_ref()
    }

    pub(super) fn get_mut(&mut self, index: u32, generation: u32) -> Option<&mut T> {
        let slot = self.slots.get_mut(index as usize)?;
        if slot.generation != generation {
            return None;
        }
        slot.value.as_mut()
    }

    pub(super) fn remove(&mut self, index: u32, generation: u32) -> Option<T> {
        let slot = self.slots.get_mut(index as usize)?;
        if slot.generation != generation {
            return None;
        }
        let value = slot.value.take()?;
        // Skip 0 so a zeroed id is never valid.
        slot.generation = slot.generation.wrapping_add(1).max(1);
        self.live -= 1;
        self.free.push(index);
        Some(value)
    }

    /// Every live object (invariant checks in tests).
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, u32, &T)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u32, s.generation, s.value.as_ref()?)))
    }
}
