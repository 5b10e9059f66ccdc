//! The default pager's bookkeeping (paper §5.4, §6.2.3), pure: which pages
//! of the swap object hold which internal object's data.
//!
//! - A bitmap of the swap object's pages (one bit each, bounded by the
//!   object's size), taken lowest first so the owner records below grow
//!   only as far as swap is in use.
//! - The (object, offset) → slot map: a chained hash over per-slot owner
//!   records (the chains and each object's list of slots are threaded
//!   through the records, so nothing is allocated per page beyond its
//!   record), and a per-object list head indexed by the object's slot, so
//!   an object's death frees its slots in time proportional to them.
//!
//! Every allocation is fallible (`try_reserve`) and bounded by the swap
//! size and the object limit; a failure is `None`/`Err`, never an abort.

use alloc::vec::Vec;

use crate::addr::PAGE_SIZE;
use crate::vm::types::{ObjectId, ObjectOffset};

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Owner {
    object: ObjectId,
    /// Page number in the object.
    page: u64,
    /// Next record in the same hash bucket.
    hash_next: u32,
    /// The object's list of slots.
    prev: u32,
    next: u32,
}

#[derive(Clone, Copy, Debug)]
struct Head {
    generation: u32,
    first: u32,
    count: u32,
}

/// Swap slots of the default pager.
#[derive(Debug, Default)]
pub struct SwapMap {
    /// One bit per swap page: set = in use.
    bits: Vec<u64>,
    pages: u32,
    used: u32,
    /// The lowest bitmap word that may have a free bit.
    hint: usize,
    /// Indexed by slot, as far as slots have been used.
    owners: Vec<Owner>,
    /// Bucket heads (slots), a power of two long, or empty.
    buckets: Vec<u32>,
    /// Per object slot index: the object's slots.
    heads: Vec<Head>,
    object_limit: usize,
}

/// Why a slot could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapError {
    /// Every swap page is in use.
    Full,
    /// The kernel heap refused the bookkeeping.
    NoMemory,
    /// An object index past the object limit, or an offset too large.
    Invalid,
}

impl SwapMap {
    /// A map of `pages` swap pages (at most 2^32 - 2) for objects with
    /// index below `object_limit`. The bitmap is allocated here.
    pub fn new(pages: u64, object_limit: usize) -> Result<SwapMap, SwapError> {
        let pages = u32::try_from(pages.min(u64::from(NONE - 1))).unwrap_or(NONE - 1);
        let words = pages.div_ceil(64) as usize;
        let mut bits = Vec::new();
        bits.try_reserve_exact(words)
            .map_err(|_| SwapError::NoMemory)?;
        bits.resize(words, 0);
        // Bits past the end are permanently "used".
        if pages % 64 != 0
            && let Some(w) = bits.last_mut()
        {
            *w = !0u64 << (pages % 64);
        }
        Ok(SwapMap {
            bits,
            pages,
            object_limit,
            ..SwapMap::default()
        })
    }

    /// Swap pages in all.
    pub fn pages(&self) -> u64 {
        u64::from(self.pages)
    }

    /// Swap pages in use.
    pub fn used(&self) -> u64 {
        u64::from(self.used)
    }

    /// Slots `object` holds.
    pub fn object_slots(&self, object: ObjectId) -> u64 {
        self.head(object).map_or(0, |h| u64::from(h.count))
    }

    fn head(&self, object: ObjectId) -> Option<&Head> {
        self.heads
            .get(object.index as usize)
            .filter(|h| h.generation == object.generation && h.first != NONE)
    }

    fn bucket(&self, object: ObjectId, page: u64) -> usize {
        let h = (object.to_raw() ^ page.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 32) as usize & (self.buckets.len() - 1)
    }

    /// The slot holding `object`'s page at `offset`, if any.
    pub fn lookup(&self, object: ObjectId, offset: ObjectOffset) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let page = offset.0 / PAGE_SIZE;
        let mut s = self.buckets[self.bucket(object, page)];
        while s != NONE {
            let o = self.owners.get(s as usize)?;
            if o.object == object && o.page == page {
                return Some(s);
            }
            s = o.hash_next;
        }
        None
    }

    /// The slot for `object`'s page at `offset`: the one it has, else a
    /// new one.
    pub fn assign(&mut self, object: ObjectId, offset: ObjectOffset) -> Result<u32, SwapError> {
        if let Some(s) = self.lookup(object, offset) {
            return Ok(s);
        }
        let index = object.index as usize;
        if index >= self.object_limit {
            return Err(SwapError::Invalid);
        }
        if self.used >= self.pages {
            return Err(SwapError::Full);
        }
        // Everything that can fail is reserved before anything changes.
        if self.heads.len() <= index {
            let want = (index + 1).max(self.heads.len() * 2).min(self.object_limit);
            self.heads
                .try_reserve_exact(want - self.heads.len())
                .map_err(|_| SwapError::NoMemory)?;
            self.heads.resize(
                want,
                Head {
                    generation: 0,
                    first: NONE,
                    count: 0,
                },
            );
        }
        let slot = self.find_free().ok_or(SwapError::Full)?;
        if self.owners.len() <= slot as usize {
            let want = (slot as usize + 1)
                .max(self.owners.len() * 2)
                .min(self.pages as usize);
            self.owners
                .try_reserve_exact(want - self.owners.len())
                .map_err(|_| SwapError::NoMemory)?;
        }
        if (self.used as usize + 1) > self.buckets.len() {
            self.grow_buckets()?;
        }
        // Commit.
        let page = offset.0 / PAGE_SIZE;
        self.bits[slot as usize / 64] |= 1 << (slot % 64);
        self.used += 1;
        let b = self.bucket(object, page);
        let h = &mut self.heads[index];
        if h.generation != object.generation || h.first == NONE {
            *h = Head {
                generation: object.generation,
                first: NONE,
                count: 0,
            };
        }
        let rec = Owner {
            object,
            page,
            hash_next: self.buckets[b],
            prev: NONE,
            next: h.first,
        };
        if h.first != NONE {
            self.owners[h.first as usize].prev = slot;
        }
        h.first = slot;
        h.count += 1;
        if (slot as usize) < self.owners.len() {
            self.owners[slot as usize] = rec;
        } else {
            // Slots are taken lowest first, so a new one is the next record
            // (the reserve above made room); fill any gap defensively.
            while self.owners.len() < slot as usize {
                self.owners.push(Owner {
                    object: ObjectId {
                        index: NONE,
                        generation: 0,
                    },
                    page: 0,
                    hash_next: NONE,
                    prev: NONE,
                    next: NONE,
                });
            }
            self.owners.push(rec);
        }
        self.buckets[b] = slot;
        Ok(slot)
    }

    fn find_free(&mut self) -> Option<u32> {
        for w in self.hint..self.bits.len() {
            let word = self.bits[w];
            if word != !0 {
                self.hint = w;
                let bit = (!word).trailing_zeros();
                return Some(w as u32 * 64 + bit);
            }
        }
        None
    }

    /// Doubles the bucket array and rehashes (amortised: once per
    /// doubling of the slots in use).
    fn grow_buckets(&mut self) -> Result<(), SwapError> {
        let n = (self.buckets.len() * 2).max(64);
        let mut nb: Vec<u32> = Vec::new();
        nb.try_reserve_exact(n).map_err(|_| SwapError::NoMemory)?;
        nb.resize(n, NONE);
        let old = core::mem::replace(&mut self.buckets, nb);
        for mut s in old {
            while s != NONE {
                let o = self.owners[s as usize];
                let b = self.bucket(o.object, o.page);
                self.owners[s as usize].hash_next = self.buckets[b];
                self.buckets[b] = s;
                s = o.hash_next;
            }
        }
        Ok(())
    }

    /// Frees `object`'s slot for `offset` (its page is back in memory and
    /// will be written again if it leaves). The slot it had, if any.
    pub fn free(&mut self, object: ObjectId, offset: ObjectOffset) -> Option<u32> {
        let slot = self.lookup(object, offset)?;
        self.unlink(slot);
        Some(slot)
    }

    /// Frees every slot of `object` (it is gone); how many.
    pub fn release_object(&mut self, object: ObjectId) -> u64 {
        let mut n = 0;
        while let Some(h) = self.head(object) {
            let s = h.first;
            self.unlink(s);
            n += 1;
        }
        n
    }

    fn unlink(&mut self, slot: u32) {
        let Some(o) = self.owners.get(slot as usize).copied() else {
            return;
        };
        // Out of its bucket.
        let b = self.bucket(o.object, o.page);
        if self.buckets[b] == slot {
            self.buckets[b] = o.hash_next;
        } else {
            let mut s = self.buckets[b];
            while s != NONE {
                let next = self.owners[s as usize].hash_next;
                if next == slot {
                    self.owners[s as usize].hash_next = o.hash_next;
                    break;
                }
                s = next;
            }
        }
        // Out of its object's list.
        if o.prev != NONE {
            self.owners[o.prev as usize].next = o.next;
        } else if let Some(h) = self.heads.get_mut(o.object.index as usize) {
            h.first = o.next;
        }
        if o.next != NONE {
            self.owners[o.next as usize].prev = o.prev;
        }
        if let Some(h) = self.heads.get_mut(o.object.index as usize) {
            h.count = h.count.saturating_sub(1);
        }
        self.bits[slot as usize / 64] &= !(1 << (slot % 64));
        self.used -= 1;
        self.hint = self.hint.min(slot as usize / 64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(i: u32, g: u32) -> ObjectId {
        ObjectId {
            index: i,
            generation: g,
        }
    }
    fn off(p: u64) -> ObjectOffset {
        ObjectOffset(p * PAGE_SIZE)
    }

    #[test]
    fn assign_lookup_free() {
        let mut m = SwapMap::new(100, 16).unwrap();
        let a = obj(1, 1);
        assert_eq!(m.lookup(a, off(3)), None);
        let s = m.assign(a, off(3)).unwrap();
        assert_eq!(s, 0);
        assert_eq!(m.assign(a, off(3)).unwrap(), s, "same page, same slot");
        assert_eq!(m.lookup(a, off(3)), Some(s));
        assert_eq!(m.assign(a, off(4)).unwrap(), 1);
        assert_eq!(m.used(), 2);
        assert_eq!(m.free(a, off(3)), Some(0));
        assert_eq!(m.lookup(a, off(3)), None);
        assert_eq!(m.lookup(a, off(4)), Some(1));
        // The lowest free slot is reused.
        assert_eq!(m.assign(obj(2, 1), off(0)).unwrap(), 0);
        assert_eq!(m.used(), 2);
    }

    #[test]
    fn full_then_room_again() {
        let mut m = SwapMap::new(70, 4).unwrap();
        let a = obj(0, 1);
        for p in 0..70 {
            assert_eq!(m.assign(a, off(p)).unwrap(), p as u32);
        }
        assert_eq!(m.assign(a, off(70)), Err(SwapError::Full));
        // A page already holding a slot still finds it.
        assert_eq!(m.assign(a, off(69)), Ok(69));
        assert_eq!(m.free(a, off(65)), Some(65));
        assert_eq!(m.assign(a, off(70)), Ok(65));
        assert_eq!(m.used(), 70);
    }

    #[test]
    fn object_death_frees_its_slots_only() {
        let mut m = SwapMap::new(1000, 8).unwrap();
        let (a, b) = (obj(1, 1), obj(2, 1));
        for p in 0..300 {
            m.assign(if p % 3 == 0 { a } else { b }, off(p)).unwrap();
        }
        assert_eq!(m.object_slots(a), 100);
        assert_eq!(m.release_object(a), 100);
        assert_eq!(m.object_slots(a), 0);
        assert_eq!(m.used(), 200);
        for p in 0..300 {
            assert!(m.lookup(a, off(p)).is_none());
            assert_eq!(m.lookup(b, off(p)).is_some(), p % 3 != 0, "page {p}");
        }
        // A later object in the same table slot (a new generation) starts
        // empty and does not see the old one's data.
        let a2 = obj(1, 2);
        m.assign(a2, off(0)).unwrap();
        assert_eq!(m.object_slots(a2), 1);
        assert_eq!(m.release_object(a), 0);
        assert_eq!(m.object_slots(a2), 1);
        assert_eq!(m.release_object(b), 200);
        assert_eq!(m.used(), 1);
    }

    #[test]
    fn bounds() {
        let mut m = SwapMap::new(8, 2).unwrap();
        assert_eq!(m.assign(obj(2, 1), off(0)), Err(SwapError::Invalid));
        assert_eq!(m.used(), 0);
        assert_eq!(
            SwapMap::new(0, 2).unwrap().assign(obj(0, 1), off(0)),
            Err(SwapError::Full)
        );
    }

    #[test]
    fn random_against_a_model() {
        use alloc::collections::BTreeMap;
        let mut m = SwapMap::new(512, 8).unwrap();
        let mut model: BTreeMap<(u32, u64), u32> = BTreeMap::new();
        let mut x: u64 = 0x1234_5678;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let o = obj((x % 8) as u32, 1);
            let p = (x >> 8) % 128;
            match (x >> 20) % 5 {
                0..=2 => match m.assign(o, off(p)) {
                    Ok(s) => {
                        if let Some(&old) = model.get(&(o.index, p)) {
                            assert_eq!(old, s);
                        }
                        model.insert((o.index, p), s);
                    }
                    Err(SwapError::Full) => assert_eq!(model.len(), 512),
                    Err(e) => panic!("{e:?}"),
                },
                3 => assert_eq!(m.free(o, off(p)), model.remove(&(o.index, p))),
                _ => {
                    let n = model.keys().filter(|k| k.0 == o.index).count();
                    if (x >> 30).is_multiple_of(8) {
                        assert_eq!(m.release_object(o), n as u64);
                        model.retain(|k, _| k.0 != o.index);
                    } else {
                        assert_eq!(m.object_slots(o), n as u64);
                    }
                }
            }
            assert_eq!(m.used(), model.len() as u64);
        }
        // Slots are unique.
        let mut seen: alloc::vec::Vec<u32> = model.values().copied().collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), model.len());
        for (&(i, p), &s) in &model {
            assert_eq!(m.lookup(obj(i, 1), off(p)), Some(s));
        }
    }
}
