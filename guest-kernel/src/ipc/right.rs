//! Right transfer: copyin of each disposition from the sender's space
//! (check-then-commit, so a failed send changes nothing), copyout of each
//! right type into the receiver's space, release of rights a destroyed
//! message held, and port death.

use super::kmsg::{KRight, Kmsg, OolData};
use super::limits::UREFS_MAX;
use super::port::Receiver;
use super::space::{Kind, name_index};
use super::{Effects, Ipc, Name, PortId, SpaceId, Wake};
use libmach::abi::*;

impl Ipc {
    /// Phase 1 of copyin: checks that `name` in `s` can give `disp` after
    /// whatever this message already takes from it, and records the take
    /// in the entry's pending fields. The caller reserved `touched`.
    pub(super) fn copyin_check(&mut self, s: SpaceId, name: Name, disp: u8) -> Option<PortId> {
        let space = self.spaces.get_mut(s.0.index, s.0.generation)?;
        let e = space.lookup_mut(name)?;
        let port = e.port;
        self.ports.get(port.index, port.generation)?; // dead names carry nothing
        let first = !e.pending();
        let ok = match (e.kind, disp) {
            (Kind::Port, MOVE_RECEIVE) if e.receive && !e.pend_recv => {
                e.pend_recv = true;
                true
            }
            (Kind::Port, MOVE_SEND) if e.urefs > e.pend_send => {
                e.pend_send += 1;
                true
            }
            (Kind::Port, COPY_SEND) => e.urefs > e.pend_send,
            (Kind::Port, MAKE_SEND | MAKE_SEND_ONCE) => e.receive && !e.pend_recv,
            (Kind::SendOnce, MOVE_SEND_ONCE) if !e.pend_once => {
                e.pend_once = true;
                true
            }
            _ => false,
        };
        if !ok {
            return None;
        }
        if first && e.pending() && self.touched.len() < self.touched.capacity() {
            self.touched.push(name_index(name));
        }
        Some(port)
    }

    /// Undoes phase 1: the sender's space is as before.
    pub(super) fn copyin_abort(&mut self, s: SpaceId) {
        let touched = core::mem::take(&mut self.touched);
        if let Some(space) = self.spaces.get_mut(s.0.index, s.0.generation) {
            for &i in &touched {
                if let Some((_, e)) = space.at_mut(i) {
                    e.pend_send = 0;
                    e.pend_once = false;
                    e.pend_recv = false;
                }
            }
        }
        self.touched = touched;
        self.touched.clear();
    }

    /// Phase 2, sender side: applies the pending takes to the entries.
    pub(super) fn copyin_commit(&mut self, s: SpaceId) {
        let touched = core::mem::take(&mut self.touched);
        for &i in &touched {
            let Some(space) = self.spaces.get_mut(s.0.index, s.0.generation) else {
                break;
            };
            let Some((name, e)) = space.at_mut(i) else {
                continue;
            };
            if e.pend_recv {
                e.receive = false;
            }
            e.urefs -= e.pend_send.min(e.urefs);
            let gone = e.pend_once || (e.kind == Kind::Port && !e.receive && e.urefs == 0);
            e.pend_send = 0;
            e.pend_once = false;
            e.pend_recv = false;
            let port = e.port;
            let kind = e.kind;
            if gone {
                space.free(name);
                self.entry_freed(s, name, port, kind);
            }
        }
        self.touched = touched;
        self.touched.clear();
    }

    /// Phase 2, port side, for one right of disposition `disp` now carried
    /// by a message to `dest`. Returns the right as the message holds it.
    pub(super) fn copyin_port(
        &mut self,
        port: PortId,
        disp: u8,
        dest: PortId,
        fx: &mut Effects,
    ) -> KRight {
        let Some(ty) = super::kmsg::received_type(disp) else {
            return KRight::Null;
        };
        let Some(p) = self.port_mut(port) else {
            return KRight::Dead;
        };
        match disp {
            COPY_SEND | MAKE_SEND => p.srights += 1,
            MAKE_SEND_ONCE => p.sorights += 1,
            MOVE_RECEIVE => {
                self.group_remove(port, fx);
                if let Some(p) = self.port_mut(port) {
                    p.receiver = Receiver::Transit { dest };
                    let ws = core::mem::take(&mut p.queue.waiters);
                    self.wake_all(ws, Wake::PortDied, fx);
                }
            }
            _ => {} // moves transfer a right that is already counted
        }
        KRight::Port { port, ty }
    }

    /// Would moving the receive rights pending in `s` into a message to
    /// `dest` make a port reachable only through its own queue?
    pub(super) fn receive_cycle(&self, s: SpaceId, dest: PortId) -> bool {
        let mut cur = dest;
        for _ in 0..=self.ports.live() {
            let Some(p) = self.port(cur) else {
                return false;
            };
            match p.receiver {
                Receiver::Transit { dest } => cur = dest,
                Receiver::Space { space, name } => {
                    return space == s
                        && self
                            .spaces
                            .get(s.0.index, s.0.generation)
                            .and_then(|sp| sp.lookup(name))
                            .is_some_and(|e| e.pend_recv);
                }
                Receiver::Kernel => return false,
            }
        }
        true
    }

    /// Bookkeeping after `name` (on `port`) left `s`'s table.
    pub(super) fn entry_freed(&mut self, s: SpaceId, name: Name, port: PortId, kind: Kind) {
        let Some(p) = self.port_mut(port) else { return };
        if kind == Kind::Port {
            p.remove_holder(s, name);
        }
        // Requests about a name that no longer exists can never fire.
        let mut i = 0;
        while let Some(r) = p.dead_requests.get(i).copied() {
            if r.space == s && r.name == name {
                p.dead_requests.swap_remove(i);
                self.release_send_once(r.notify);
                return self.entry_freed(s, name, port, Kind::SendOnce);
            }
            i += 1;
        }
    }

    pub(super) fn release_send_once(&mut self, p: PortId) {
        if let Some(port) = self.port_mut(p) {
            port.sorights = port.sorights.saturating_sub(1);
        }
    }

    /// Drops a right a message or the kernel held; receive rights kill
    /// their port (queued for `reap`, so chains of ports need no recursion).
    pub(super) fn release(&mut self, r: KRight) {
        let KRight::Port { port, ty } = r else { return };
        let Some(p) = self.port_mut(port) else { return };
        match ty {
            PORT_SEND => p.srights = p.srights.saturating_sub(1),
            PORT_SEND_ONCE => p.sorights = p.sorights.saturating_sub(1),
            PORT_RECEIVE => self.dying.push(port),
            _ => {}
        }
    }

    /// Copyout of one right into `s`: its name there, `PORT_DEAD` if the
    /// port died in transit, `PORT_NULL` if `s` has no room (the right is
    /// then released).
    pub(super) fn insert_right(
        &mut self,
        s: SpaceId,
        port: PortId,
        ty: u8,
        fx: &mut Effects,
    ) -> Name {
        if self.port(port).is_none() {
            return PORT_DEAD;
        }
        match self.insert_right_inner(s, port, ty) {
            Some(name) => name,
            None => {
                self.release(KRight::Port { port, ty });
                self.reap(fx);
                PORT_NULL
            }
        }
    }

    fn insert_right_inner(&mut self, s: SpaceId, port: PortId, ty: u8) -> Option<Name> {
        let limit = self.limits.names_per_space;
        let p = self.ports.get_mut(port.index, port.generation)?;
        let space = self.spaces.get_mut(s.0.index, s.0.generation)?;
        if ty == PORT_SEND_ONCE {
            return space.alloc(limit, Kind::SendOnce, port).ok();
        }
        let name = match p.holder_name(s) {
            Some(n) => n,
            None => {
                p.holders.try_reserve(1).ok()?;
                let n = space.alloc(limit, Kind::Port, port).ok()?;
                p.holders.push((s, n));
                n
            }
        };
        let e = space.lookup_mut(name)?;
        if ty == PORT_RECEIVE {
            e.receive = true;
            p.receiver = Receiver::Space { space: s, name };
            p.enabled = false;
        } else if e.urefs < UREFS_MAX {
            e.urefs += 1;
        } else {
            p.srights = p.srights.saturating_sub(1); // past UREFS_MAX the extra reference is dropped
        }
        Some(name)
    }

    /// Kills every port queued in `dying`, and whatever their deaths kill.
    pub(super) fn reap(&mut self, fx: &mut Effects) {
        while let Some(p) = self.dying.pop() {
            self.kill_port(p, fx);
        }
    }

    /// Port death (docs §1): the receiver's entry loses the receive right,
    /// every waiter wakes with PortDied, dead-name requests notify, queued
    /// messages are destroyed. Other spaces' entries become dead names by
    /// themselves: they name a `PortId` that no longer resolves.
    fn kill_port(&mut self, id: PortId, fx: &mut Effects) {
        self.group_remove(id, fx);
        let Some(mut port) = self.ports.remove(id.index, id.generation) else {
            return;
        };
        if let Receiver::Space { space, name } = port.receiver
            && let Some(sp) = self.spaces.get_mut(space.0.index, space.0.generation)
            && let Some(e) = sp.lookup_mut(name)
            && e.port == id
        {
            e.receive = false;
            if e.urefs == 0 {
                sp.free(name);
            }
        }
        let ws = core::mem::take(&mut port.queue.waiters);
        self.wake_all(ws, Wake::PortDied, fx);
        let ws = core::mem::take(&mut port.send_waiters);
        self.wake_all(ws, Wake::PortDied, fx);
        for r in core::mem::take(&mut port.dead_requests) {
            let still_named = self
                .spaces
                .get(r.space.0.index, r.space.0.generation)
                .and_then(|sp| sp.lookup(r.name))
                .is_some_and(|e| e.port == id);
            if still_named {
                self.notify_dead_name(r.notify, r.name, fx);
            } else {
                self.release_send_once(r.notify);
            }
        }
        for k in port.queue.drain_all() {
            self.kmsg_free(k);
        }
    }

    /// Destroys a message: its charges, and every right it still holds.
    pub(super) fn kmsg_free(&mut self, mut k: Kmsg) {
        self.uncharge_sender(&mut k);
        self.kmsg_bytes -= k.charge.min(self.kmsg_bytes);
        self.ool_bytes -= k.ool_bytes.min(self.ool_bytes);
        self.ool_copied -= k.ool_copied.min(self.ool_copied);
        self.kmsgs_live -= 1;
        if !k.ool.is_empty() {
            self.release_regions(&mut k.ool);
        }
        if k.dest_ty != 0 {
            self.release(KRight::Port {
                port: k.dest,
                ty: k.dest_ty,
            });
        }
        self.release(k.reply);
        for &r in &k.rights {
            self.release(r);
        }
    }

    pub(super) fn uncharge_sender(&mut self, k: &mut Kmsg) {
        if !k.charged_sender {
            return;
        }
        k.charged_sender = false;
        if let Some(s) = k.sender
            && let Some(sp) = self.spaces.get_mut(s.0.index, s.0.generation)
        {
            sp.queued = sp.queued.saturating_sub(1);
            sp.ool_bytes = sp.ool_bytes.saturating_sub(k.ool_bytes);
            sp.ool_copied = sp.ool_copied.saturating_sub(k.ool_copied);
        }
    }

    /// The snapshots among `regions` go to the released list (whose room
    /// the send reserved: this never allocates).
    pub(super) fn release_regions(&mut self, regions: &mut [OolData]) {
        for o in regions.iter_mut() {
            if let OolData::Snapshot(snap) = *o {
                *o = OolData::Placed;
                self.snapshots = self.snapshots.saturating_sub(1);
                // Within capacity by the reservation (see `released`).
                self.released.push(snap.handle);
            }
        }
    }
}
