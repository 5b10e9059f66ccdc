//! Port name spaces: a task's table of names → rights.
//!
//! A name is `index << 8 | generation`. Lookup is one bounds-checked index
//! plus a generation compare, so a stale or forged name fails instead of
//! aliasing whatever reuses the slot. Index 0 is never used (name 0 is
//! `PORT_NULL`).

use alloc::vec::Vec;

use super::limits::NAME_INDEX_MAX;
use super::{Name, PortId, Waiter};
use libmach::abi::KERN_NO_SPACE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Free,
    /// Receive and/or send rights (they share one name, as in Mach 3). Once
    /// the port is dead, `urefs` are dead-name references.
    Port,
    /// One send-once right (or, once the port is dead, one dead name).
    SendOnce,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Entry {
    pub(super) generation: u8,
    pub(super) kind: Kind,
    pub(super) port: PortId,
    pub(super) receive: bool,
    pub(super) urefs: u32,
    // Copyin scratch: what the message being sent takes from this entry.
    // Nonzero only inside one `send`; checking against (state − pending)
    // makes a multi-right message all-or-nothing without an undo log.
    pub(super) pend_send: u32,
    pub(super) pend_once: bool,
    pub(super) pend_recv: bool,
    next_free: u32,
}

impl Entry {
    const FREE: Entry = Entry {
        generation: 0,
        kind: Kind::Free,
        port: PortId::NONE,
        receive: false,
        urefs: 0,
        pend_send: 0,
        pend_once: false,
        pend_recv: false,
        next_free: 0,
    };

    pub(super) fn pending(&self) -> bool {
        self.pend_send != 0 || self.pend_once || self.pend_recv
    }
}

pub(super) struct Space {
    entries: Vec<Entry>,
    free_head: u32,
    used: u32,
    /// Messages this space sent that are still queued.
    pub(super) queued: u32,
    /// Out-of-line bytes of those messages (copies and snapshots), and
    /// the copied part.
    pub(super) ool_bytes: u64,
    pub(super) ool_copied: u64,
    /// The default group: enabled receive rights.
    pub(super) group: Vec<PortId>,
    /// Threads blocked receiving on the default group.
    pub(super) group_waiters: Vec<Waiter>,
}

pub(super) fn name_index(name: Name) -> u32 {
    name >> 8
}

fn make_name(index: u32, generation: u8) -> Name {
    (index << 8) | u32::from(generation)
}

impl Space {
    pub(super) fn new() -> Space {
        Space {
            entries: Vec::new(),
            free_head: 0,
            used: 0,
            queued: 0,
            ool_bytes: 0,
            ool_copied: 0,
            group: Vec::new(),
            group_waiters: Vec::new(),
        }
    }

    pub(super) fn used(&self) -> u32 {
        self.used
    }

    /// The entry `name` denotes, if it is live and of this generation.
    pub(super) fn lookup(&self, name: Name) -> Option<&Entry> {
        let index = name_index(name);
        if index == 0 {
            return None;
        }
        let e = self.entries.get(index as usize)?;
        (e.kind != Kind::Free && make_name(index, e.generation) == name).then_some(e)
    }

    pub(super) fn lookup_mut(&mut self, name: Name) -> Option<&mut Entry> {
        let index = name_index(name);
        if index == 0 {
            return None;
        }
        let e = self.entries.get_mut(index as usize)?;
        (e.kind != Kind::Free && make_name(index, e.generation) == name).then_some(e)
    }

    /// A new name for `kind` on `port`; `NO_SPACE` past `limit` names.
    pub(super) fn alloc(&mut self, limit: u32, kind: Kind, port: PortId) -> Result<Name, u32> {
        if self.used >= limit.min(NAME_INDEX_MAX) {
            return Err(KERN_NO_SPACE);
        }
        let index = if self.free_head != 0 {
            let i = self.free_head;
            self.free_head = self.entries.get(i as usize).map_or(0, |e| e.next_free);
            i
        } else {
            if self.entries.is_empty() {
                // Slot 0 stands for PORT_NULL and is never handed out.
                self.entries.try_reserve(8).map_err(|_| KERN_NO_SPACE)?;
                self.entries.push(Entry::FREE);
            }
            self.entries.try_reserve(1).map_err(|_| KERN_NO_SPACE)?;
            let i = self.entries.len() as u32;
            self.entries.push(Entry::FREE);
            i
        };
        let e = self.entries.get_mut(index as usize).ok_or(KERN_NO_SPACE)?;
        e.kind = kind;
        e.port = port;
        e.receive = false;
        e.urefs = 0;
        e.pend_send = 0;
        e.pend_once = false;
        e.pend_recv = false;
        self.used += 1;
        Ok(make_name(index, e.generation))
    }

    pub(super) fn free(&mut self, name: Name) {
        let index = name_index(name);
        let head = self.free_head;
        if let Some(e) = self.lookup_mut(name) {
            let generation = e.generation.wrapping_add(1);
            *e = Entry {
                generation,
                next_free: head,
                ..Entry::FREE
            };
            self.free_head = index;
            self.used -= 1;
        }
    }

    /// Every live name and its entry (teardown and tests).
    pub(super) fn names(&self) -> impl Iterator<Item = (Name, &Entry)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind != Kind::Free)
            .map(|(i, e)| (make_name(i as u32, e.generation), e))
    }
}

impl Space {
    /// The entry at `index` whatever its generation (copyin bookkeeping,
    /// which recorded the index itself).
    pub(super) fn at_mut(&mut self, index: u32) -> Option<(Name, &mut Entry)> {
        let e = self.entries.get_mut(index as usize)?;
        (e.kind != Kind::Free).then(|| (make_name(index, e.generation), e))
    }
}
