//! Message queues, and the default group of a space: receiving on
//! `PORT_NULL` takes the oldest message across the enabled ports.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::kmsg::Kmsg;
use super::{Ipc, PortId, SpaceId, Waiter};
use libmach::abi::BACKLOG_DEFAULT;

pub(super) struct MQueue {
    msgs: VecDeque<Kmsg>,
    pub(super) backlog: u32,
    /// Sequence number the next dequeued message gets.
    pub(super) seqno: u32,
    /// Threads blocked receiving on this port.
    pub(super) waiters: Vec<Waiter>,
}

impl MQueue {
    pub(super) fn new() -> MQueue {
        MQueue {
            msgs: VecDeque::new(),
            backlog: BACKLOG_DEFAULT,
            seqno: 0,
            waiters: Vec::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.msgs.len()
    }

    pub(super) fn front(&self) -> Option<&Kmsg> {
        self.msgs.front()
    }

    /// Room for one more, reserved before a send commits so that the
    /// enqueue itself cannot fail.
    pub(super) fn reserve_one(&mut self) -> bool {
        self.msgs.try_reserve(1).is_ok()
    }

    pub(super) fn push(&mut self, k: Kmsg) {
        self.msgs.push_back(k);
    }

    pub(super) fn pop(&mut self) -> Option<Kmsg> {
        self.msgs.pop_front()
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = &Kmsg> + '_ {
        self.msgs.iter()
    }

    pub(super) fn drain_all(&mut self) -> VecDeque<Kmsg> {
        core::mem::take(&mut self.msgs)
    }
}

impl Ipc {
    /// The enabled port of `s` whose first message is the oldest.
    pub(super) fn group_oldest(&self, s: SpaceId) -> Option<PortId> {
        let space = self.spaces.get(s.0.index, s.0.generation)?;
        let mut best: Option<(u64, PortId)> = None;
        for &p in &space.group {
            let Some(port) = self.port(p) else { continue };
            if let Some(k) = port.queue.front()
                && best.is_none_or(|(stamp, _)| k.stamp < stamp)
            {
                best = Some((k.stamp, p));
            }
        }
        best.map(|(_, p)| p)
    }

    /// Takes `p` out of its receiver's group; wakes the group's waiters if
    /// it became empty (their retry then fails with RCV_INVALID_NAME).
    pub(super) fn group_remove(&mut self, p: PortId, fx: &mut super::Effects) {
        let Some(port) = self.port_mut(p) else { return };
        if !port.enabled {
            return;
        }
        port.enabled = false;
        let super::port::Receiver::Space { space, .. } = port.receiver else {
            return;
        };
        let Some(sp) = self.spaces.get_mut(space.0.index, space.0.generation) else {
            return;
        };
        if let Some(i) = sp.group.iter().position(|&q| q == p) {
            sp.group.swap_remove(i);
        }
        if sp.group.is_empty() {
            let ws = core::mem::take(&mut sp.group_waiters);
            for w in ws {
                self.unregister(w);
                fx.wake.push((w, super::Wake::PortDied));
            }
        }
    }
}
