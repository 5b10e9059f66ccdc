//! Ports: one receiver, a queue with a backlog, the count of rights that
//! denote it, the spaces holding send rights, dead-name requests, and a
//! kernel-object tag when the kernel serves it.

use alloc::vec::Vec;

use super::mqueue::MQueue;
use super::{KObject, Name, PortId, SpaceId, Waiter};

/// Who holds the receive right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Receiver {
    Space {
        space: SpaceId,
        name: Name,
    },
    /// The kernel: a kernel object's port, or one of its own reply ports.
    Kernel,
    /// In a message queued on `dest` (used to refuse receive-right cycles).
    Transit {
        dest: PortId,
    },
}

/// A registered dead-name request: when the port dies, `name` in `space`
/// is reported to `notify`, through the send-once right the request holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct DeadRequest {
    pub(super) space: SpaceId,
    pub(super) name: Name,
    pub(super) notify: PortId,
}

pub(super) struct Port {
    pub(super) receiver: Receiver,
    pub(super) kobject: Option<KObject>,
    pub(super) queue: MQueue,
    /// In its receiver's default group.
    pub(super) enabled: bool,
    /// Send references that exist anywhere (entries' urefs + in messages).
    pub(super) srights: u32,
    /// Send-once rights that exist anywhere.
    pub(super) sorights: u32,
    /// (space, name) of every space entry holding send/receive rights for
    /// this port; at most one per space. Send-once names are not listed.
    pub(super) holders: Vec<(SpaceId, Name)>,
    pub(super) dead_requests: Vec<DeadRequest>,
    /// Threads blocked because the queue was full.
    pub(super) send_waiters: Vec<Waiter>,
}

impl Port {
    pub(super) fn new(receiver: Receiver, kobject: Option<KObject>) -> Port {
        Port {
            receiver,
            kobject,
            queue: MQueue::new(),
            enabled: false,
            srights: 0,
            sorights: 0,
            holders: Vec::new(),
            dead_requests: Vec::new(),
            send_waiters: Vec::new(),
        }
    }

    /// The name of the send/receive entry `space` has for this port.
    pub(super) fn holder_name(&self, space: SpaceId) -> Option<Name> {
        self.holders
            .iter()
            .find(|(s, _)| *s == space)
            .map(|(_, n)| *n)
    }

    pub(super) fn remove_holder(&mut self, space: SpaceId, name: Name) {
        if let Some(i) = self.holders.iter().position(|h| *h == (space, name)) {
            self.holders.swap_remove(i);
        }
    }

    pub(super) fn is_full(&self) -> bool {
        self.queue.len() >= self.queue.backlog as usize
    }
}
