//! The machine-independent Mach IPC core (docs/mach-ipc.md): ports, name
//! spaces, right transfer, messages, the default group and dead-name
//! notifications, as pure logic the host tests.
//!
//! The kernel calls [`Ipc`] under one lock from the trap layer. `Ipc`
//! never blocks and never touches hardware: an operation that cannot
//! proceed says so ([`Send::Full`], [`Recv::Empty`]), the kernel parks the
//! thread with [`Ipc::wait_send`] / [`Ipc::wait_receive`], and every
//! operation reports in [`Effects`] the threads whose wait may be over.
//! A woken thread re-runs its operation (retry model); a thread that gives
//! up (timeout) calls [`Ipc::cancel_wait`].
//!
//! Layout, one job per file as in GNU Mach's ipc/: `space` (names →
//! entries), `port`, `right` (copyin/copyout of each disposition, port
//! death), `kmsg` (validation, kernel form, copyout), `mqueue` (queues
//! and the default group), `notify` (kernel-generated messages), `kobject`
//! (requests to the kernel's task and thread ports), `limits`.
//!
//! How the kernel drives it:
//! - `mach_msg` send: copy the user's bytes in, `send`. `Full` → unless
//!   `SEND_TIMEOUT` is 0, `wait_send(port, thread)` and sleep; on wake,
//!   re-run `send`. `ToKernel(k)` → `kobject::decode(&k)`, perform it,
//!   `kernel_reply(k.take_reply(), ..)` with the result, `kmsg_destroy(k)`.
//! - receive: `receive`; `Empty` → `wait_receive` and sleep, retry on wake;
//!   `Message(k)` → `copyout` into the kernel's copy of the buffer, then
//!   copy that to the user.
//! - a thread that dies or times out while parked: `cancel_wait`.
//! - exceptions: `kernel_send(exception port, EXCEPTION_RAISE, ..,
//!   Some(reply))` with `reply` from `kernel_port_allocate`, then
//!   `wait_kernel(reply, thread)`; on wake `kernel_receive(reply)`.
//! - after every call, carry out `Effects::wake` (pushes there are the
//!   one allocation not bounded by a limit: they are bounded by the
//!   number of parked threads), and discard every snapshot handle
//!   [`Ipc::take_released`] gives back: messages destroyed unreceived
//!   (port death, `RCV_TOO_LARGE`, a space's destruction, a failed send)
//!   release their out-of-line snapshots there. The list never allocates
//!   when it grows: a send reserves room for its snapshots up front.
//!
//! Choices the docs leave open:
//! - A failed send changes nothing: every right is checked (against what
//!   the message already took from the same name) before any is moved.
//! - Moving a receive right into a message whose destination is that port,
//!   or is reachable only through it (a cycle), fails with
//!   `SEND_INVALID_RIGHT`.
//! - Item names may be `PORT_NULL` or `PORT_DEAD` (carried as such); other
//!   dead names in items fail with `SEND_INVALID_RIGHT`.
//! - A right the receiver has no room for is released and arrives as
//!   `PORT_NULL`; an out-of-line region the sink cannot place arrives with
//!   `addr` = 0 and `count` = 0.
//! - Out-of-line regions go as copy-on-write snapshots when the source can
//!   take one (`OolSource::snapshot`: the kernel does for memory in the VM
//!   window) and are copied otherwise, or with `OOL_PHYSICAL_COPY`. All of
//!   them count against the bytes in flight per space and in total (a
//!   snapshot by its pages); copies also against their own, smaller,
//!   bounds (`OOL_MAX` per message, `ool_copied_*`): they are kernel heap.
//! - Kernel messages (notifications, `kernel_send`) ignore the backlog;
//!   `kernel_reply` does not (a full reply port loses the reply).
//! - `port_deallocate` drops a send reference if the name has one, else
//!   the receive right.
//! - Header bits 16-30 must be 0 (`SEND_INVALID_TYPE`).

mod kmsg;
pub mod kobject;
mod limits;
mod mqueue;
mod notify;
mod port;
mod right;
mod space;
mod table;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use alloc::vec::Vec;

use kmsg::OolData;
pub use kmsg::{KRight, Kmsg};
pub use libmach::abi::{Name, PortStatus};
pub use limits::Limits;
pub use notify::KItem;

use libmach::abi::*;
use limits::KMSG_OVERHEAD;
use port::{DeadRequest, Port, Receiver};
use space::{Kind, Space};
use table::Table;

#[derive(Copy, Clone, Eq, PartialEq, Ord, PartialOrd, Debug, Hash)]
struct Id {
    index: u32,
    generation: u32,
}

/// A name space (one per task). Stale ids never alias a new space.
#[derive(Copy, Clone, Eq, PartialEq, Ord, PartialOrd, Debug, Hash)]
pub struct SpaceId(Id);

/// A port, as the kernel holds it. Stale ids never alias a new port.
#[derive(Copy, Clone, Eq, PartialEq, Ord, PartialOrd, Debug, Hash)]
pub struct PortId {
    index: u32,
    generation: u32,
}

impl PortId {
    /// Never valid (table generations start at 1).
    pub(crate) const NONE: PortId = PortId {
        index: u32::MAX,
        generation: 0,
    };
}

/// An opaque thread id from the kernel.
#[derive(Copy, Clone, Eq, PartialEq, Debug)]
pub struct Waiter(pub u64);

/// Why a waiter was woken.
#[derive(Copy, Clone, Eq, PartialEq, Debug)]
pub enum Wake {
    /// A message arrived where it waits to receive.
    Message,
    /// The port it waits to send to has room.
    Room,
    /// The port died (or the receive right left, or the group emptied):
    /// the retry fails with the right error.
    PortDied,
}

/// What a kernel-served port stands for.
#[derive(Copy, Clone, Eq, PartialEq, Debug)]
pub enum KObject {
    Task(u32),
    Thread(u32),
    /// A memory object the host serves through the virtio-pager device
    /// (its object number there): the kernel is its pager.
    HostObject(u32),
    /// A memory object's control (request) port, through which its pager,
    /// a guest task, answers the kernel (a VM object id, raw).
    MemoryControl(u64),
}

/// Side effects the kernel carries out after an operation.
#[derive(Debug, Default)]
pub struct Effects {
    pub wake: Vec<(Waiter, Wake)>,
}

/// The outcome of [`Ipc::send`].
#[must_use]
#[derive(Debug)]
pub enum Send {
    Queued,
    /// Backlog reached: nothing changed; block with `wait_send`, retry.
    Full {
        port: PortId,
    },
    /// The destination is a kernel object's port: the kernel serves the
    /// message, then gives it back with `kmsg_destroy`.
    ToKernel(Kmsg),
    Error(u32),
}

/// A receiver blocked in receive that a send may deliver to at once
/// ([`Ipc::send_direct`]): its space, the name it receives on, the most it
/// takes, and where its received form goes.
pub struct DirectTo<'a> {
    pub waiter: Waiter,
    pub space: SpaceId,
    pub name: Name,
    pub max: usize,
    pub out: &'a mut [u8],
}

/// The outcome of [`Ipc::send_direct`].
#[must_use]
#[derive(Debug)]
pub enum Direct {
    /// Sent and received in one step: `waiter` (no longer parked) got
    /// `size` bytes in `DirectTo::out`, exactly what `receive` + `copyout`
    /// of the queued message would have given it.
    Delivered { waiter: Waiter, size: usize },
    /// Not the common case (complex, too large, nobody waiting first in
    /// line, a kernel port...): nothing changed, use [`Ipc::send`].
    Declined,
    /// What [`Ipc::send`] would have returned (an error, or `Full`).
    Sent(Send),
}

enum Outcome {
    Send(Send),
    Direct { waiter: Waiter, size: usize },
    Declined,
}

/// The outcome of [`Ipc::receive`].
#[must_use]
#[derive(Debug)]
pub enum Recv {
    /// Dequeued: give it to `copyout` (or `kmsg_destroy`).
    Message(Kmsg),
    /// Nothing queued: block with `wait_receive`, retry.
    Empty,
    /// The first message needs `size` bytes. With `large` it stays queued;
    /// without, it was destroyed.
    TooLarge {
        size: usize,
    },
    Error(u32),
}

/// A copy-on-write snapshot of an out-of-line region (Mach's vm_map_copy),
/// taken by the sender's memory and held by the kernel while the message is
/// in flight. The IPC only carries it: the handle is the kernel's.
#[derive(Copy, Clone, Eq, PartialEq, Debug)]
pub struct Snapshot {
    pub handle: u64,
    /// Bytes it maps (the region rounded out to whole pages): what it
    /// counts against the bounds on out-of-line bytes in flight.
    pub size: u64,
}

/// The sender's memory, for out-of-line regions.
pub trait OolSource {
    /// A copy-on-write snapshot of `len` (> 0) bytes at `addr` instead of
    /// their bytes; None: the region is copied (`read`). The default never
    /// snapshots.
    fn snapshot(&mut self, _addr: u64, _len: u64) -> Option<Snapshot> {
        None
    }
    /// Fills `out` from `len` bytes at `addr`; false if not readable.
    fn read(&mut self, addr: u64, len: u64, out: &mut [u8]) -> bool;
    /// The send succeeded and the item had `OOL_DEALLOCATE`: unmap it
    /// (after any snapshot of it was taken).
    fn deallocate(&mut self, _addr: u64, _len: u64) {}
}

/// No sender memory: a direct send carries no out-of-line region.
struct NoSource;

impl OolSource for NoSource {
    fn read(&mut self, _addr: u64, _len: u64, _out: &mut [u8]) -> bool {
        false
    }
}

/// The receiver's memory, for out-of-line regions.
pub trait OolSink {
    /// Copies `data` into fresh pages; their address, or None if no memory.
    fn place(&mut self, data: &[u8]) -> Option<u64>;
    /// Maps the snapshot `handle` anywhere; the address of the region's
    /// first byte (its offset in its first page as the sender had it). On
    /// None the handle is still the message's, and is released with it.
    fn place_snapshot(&mut self, _handle: u64) -> Option<u64> {
        None
    }
}

/// What a name denotes in a space (a fuller `port_status`, for tests and
/// debugging).
#[derive(Copy, Clone, Eq, PartialEq, Debug)]
pub struct Rights {
    pub port: PortId,
    pub receive: bool,
    pub send: u32,
    pub send_once: bool,
    pub dead: u32,
}

#[derive(Copy, Clone, Eq, PartialEq, Debug)]
enum WaitOn {
    Receive(PortId),
    Group(SpaceId),
    Send(PortId),
}

/// Every port and space, and the bounds on them.
pub struct Ipc {
    limits: Limits,
    ports: Table<Port>,
    spaces: Table<Space>,
    /// One entry per blocked thread (the kernel's threads bound it).
    waits: Vec<(Waiter, WaitOn)>,
    kmsgs_live: usize,
    kmsg_bytes: usize,
    /// Out-of-line bytes in flight (copies and snapshots) / copied.
    ool_bytes: u64,
    ool_copied: u64,
    /// Snapshots held by messages (neither placed nor released).
    snapshots: usize,
    /// Snapshot handles of destroyed messages, for the kernel to discard.
    /// Its capacity always covers `snapshots` more, so pushing never
    /// allocates.
    released: Vec<u64>,
    stamp: u64,
    /// Ports whose death is pending (see `right::reap`).
    dying: Vec<PortId>,
    /// Copyin scratch: entry indexes with pending takes.
    touched: Vec<u32>,
}

fn is_dest_disposition(d: u8) -> bool {
    matches!(
        d,
        COPY_SEND | MAKE_SEND | MOVE_SEND | MOVE_SEND_ONCE | MAKE_SEND_ONCE
    )
}

impl Ipc {
    pub fn new(limits: Limits) -> Ipc {
        Ipc {
            limits,
            ports: Table::new(),
            spaces: Table::new(),
            waits: Vec::new(),
            kmsgs_live: 0,
            kmsg_bytes: 0,
            ool_bytes: 0,
            ool_copied: 0,
            snapshots: 0,
            released: Vec::new(),
            stamp: 0,
            dying: Vec::new(),
            touched: Vec::new(),
        }
    }

    // ---- debug counters (leak checks) ----

    pub fn live_ports(&self) -> usize {
        self.ports.live()
    }
    pub fn live_kmsgs(&self) -> usize {
        self.kmsgs_live
    }
    pub fn live_spaces(&self) -> usize {
        self.spaces.live()
    }
    pub fn kmsg_bytes(&self) -> usize {
        self.kmsg_bytes
    }
    pub fn blocked(&self) -> usize {
        self.waits.len()
    }
    /// Snapshots held by messages in flight.
    pub fn snapshots_held(&self) -> usize {
        self.snapshots
    }
    /// Out-of-line bytes in flight (copies and snapshots).
    pub fn ool_bytes(&self) -> u64 {
        self.ool_bytes
    }

    /// One snapshot handle of a destroyed message, for the kernel to
    /// discard (see the module doc); None when there are no more.
    pub fn take_released(&mut self) -> Option<u64> {
        self.released.pop()
    }
    /// Whether `take_released` has something (cheap: the kernel asks
    /// after every call).
    #[inline]
    pub fn has_released(&self) -> bool {
        !self.released.is_empty()
    }

    // ---- internal accessors ----

    fn port(&self, p: PortId) -> Option<&Port> {
        self.ports.get(p.index, p.generation)
    }
    fn port_mut(&mut self, p: PortId) -> Option<&mut Port> {
        self.ports.get_mut(p.index, p.generation)
    }
    fn space(&self, s: SpaceId) -> Option<&Space> {
        self.spaces.get(s.0.index, s.0.generation)
    }
    fn space_mut(&mut self, s: SpaceId) -> Option<&mut Space> {
        self.spaces.get_mut(s.0.index, s.0.generation)
    }

    fn new_port(&mut self, receiver: Receiver, kobject: Option<KObject>) -> Result<PortId, u32> {
        if self.ports.live() >= self.limits.ports_total as usize {
            return Err(KERN_RESOURCE_SHORTAGE);
        }
        let (index, generation) = self
            .ports
            .insert(Port::new(receiver, kobject))
            .ok_or(KERN_RESOURCE_SHORTAGE)?;
        Ok(PortId { index, generation })
    }

    /// The live receive right `name` denotes in `s`.
    fn receive_right(&self, s: SpaceId, name: Name) -> Result<PortId, u32> {
        let e = self
            .space(s)
            .and_then(|sp| sp.lookup(name))
            .ok_or(KERN_INVALID_NAME)?;
        if e.kind == Kind::Port && e.receive && self.port(e.port).is_some() {
            Ok(e.port)
        } else {
            Err(KERN_INVALID_RIGHT)
        }
    }

    // ---- waits ----

    fn unregister(&mut self, w: Waiter) {
        if let Some(i) = self.waits.iter().position(|(x, _)| *x == w) {
            self.waits.swap_remove(i);
        }
    }

    fn register(&mut self, w: Waiter, on: WaitOn) -> Result<(), u32> {
        self.cancel_wait(w);
        self.waits
            .try_reserve(1)
            .map_err(|_| KERN_RESOURCE_SHORTAGE)?;
        let list = match on {
            WaitOn::Receive(p) => self.port_mut(p).map(|p| &mut p.queue.waiters),
            WaitOn::Send(p) => self.port_mut(p).map(|p| &mut p.send_waiters),
            WaitOn::Group(s) => self.space_mut(s).map(|s| &mut s.group_waiters),
        }
        .ok_or(KERN_INVALID_NAME)?;
        list.try_reserve(1).map_err(|_| KERN_RESOURCE_SHORTAGE)?;
        list.push(w);
        self.waits.push((w, on));
        Ok(())
    }

    fn wake_all(&mut self, ws: Vec<Waiter>, why: Wake, fx: &mut Effects) {
        for w in ws {
            self.unregister(w);
            fx.wake.push((w, why));
        }
    }

    /// A message was queued on `p`: wake one thread receiving on it, or
    /// else on its receiver's group.
    fn wake_receiver(&mut self, p: PortId, fx: &mut Effects) {
        let Some(port) = self.port_mut(p) else { return };
        let w = if !port.queue.waiters.is_empty() {
            Some(port.queue.waiters.remove(0))
        } else if let (true, Receiver::Space { space, .. }) = (port.enabled, port.receiver) {
            self.space_mut(space)
                .filter(|sp| !sp.group_waiters.is_empty())
                .map(|sp| sp.group_waiters.remove(0))
        } else {
            None
        };
        if let Some(w) = w {
            self.unregister(w);
            fx.wake.push((w, Wake::Message));
        }
    }

    fn wake_sender(&mut self, p: PortId, fx: &mut Effects) {
        let Some(port) = self.port_mut(p) else { return };
        if !port.send_waiters.is_empty() {
            let w = port.send_waiters.remove(0);
            self.unregister(w);
            fx.wake.push((w, Wake::Room));
        }
    }

    /// Parks `w` until a message arrives on `name` (a receive right of `s`)
    /// or, for `PORT_NULL`, on the default group.
    pub fn wait_receive(&mut self, s: SpaceId, name: Name, w: Waiter) -> Result<(), u32> {
        if name == PORT_NULL {
            let sp = self.space(s).ok_or(RCV_INVALID_NAME)?;
            if sp.group.is_empty() {
                return Err(RCV_INVALID_NAME);
            }
            return self.register(w, WaitOn::Group(s));
        }
        let p = self.receive_right(s, name).map_err(|_| RCV_INVALID_NAME)?;
        self.register(w, WaitOn::Receive(p))
    }

    /// Parks `w` until a message arrives on one of the kernel's own ports.
    pub fn wait_kernel(&mut self, p: PortId, w: Waiter) -> Result<(), u32> {
        match self.port(p) {
            Some(port) if port.receiver == Receiver::Kernel => self.register(w, WaitOn::Receive(p)),
            _ => Err(KERN_INVALID_ARGUMENT),
        }
    }

    /// Parks `w` until `p` (which returned `Send::Full`) has room.
    /// `SEND_INVALID_DEST` if it already died.
    pub fn wait_send(&mut self, p: PortId, w: Waiter) -> Result<(), u32> {
        if self.port(p).is_none() {
            return Err(SEND_INVALID_DEST);
        }
        self.register(w, WaitOn::Send(p))
    }

    /// Forgets `w`'s wait, if any (timeout, thread death).
    pub fn cancel_wait(&mut self, w: Waiter) {
        let Some(i) = self.waits.iter().position(|(x, _)| *x == w) else {
            return;
        };
        let (_, on) = self.waits.swap_remove(i);
        let list = match on {
            WaitOn::Receive(p) => self.port_mut(p).map(|p| &mut p.queue.waiters),
            WaitOn::Send(p) => self.port_mut(p).map(|p| &mut p.send_waiters),
            WaitOn::Group(s) => self.space_mut(s).map(|s| &mut s.group_waiters),
        };
        if let Some(list) = list
            && let Some(j) = list.iter().position(|x| *x == w)
        {
            list.remove(j);
        }
    }

    // ---- spaces ----

    pub fn space_create(&mut self) -> Result<SpaceId, u32> {
        if self.spaces.live() >= self.limits.spaces_total as usize {
            return Err(KERN_RESOURCE_SHORTAGE);
        }
        let (index, generation) = self
            .spaces
            .insert(Space::new())
            .ok_or(KERN_RESOURCE_SHORTAGE)?;
        Ok(SpaceId(Id { index, generation }))
    }

    /// Drops every right `s` holds. Ports it held the receive right for die
    /// (docs §1); threads blocked on its group wake with PortDied.
    pub fn space_destroy(&mut self, s: SpaceId, fx: &mut Effects) {
        let Some(mut sp) = self.spaces.remove(s.0.index, s.0.generation) else {
            return;
        };
        let ws = core::mem::take(&mut sp.group_waiters);
        self.wake_all(ws, Wake::PortDied, fx);
        for (name, e) in sp.names() {
            let Some(p) = self.ports.get_mut(e.port.index, e.port.generation) else {
                continue; // a dead name
            };
            match e.kind {
                Kind::SendOnce => p.sorights = p.sorights.saturating_sub(1),
                Kind::Port => {
                    p.srights = p.srights.saturating_sub(e.urefs);
                    if e.receive {
                        p.enabled = false;
                        self.dying.push(e.port);
                    }
                }
                Kind::Free => {}
            }
            // Holder and dead-name requests of this name go too.
            self.entry_freed(s, name, e.port, e.kind);
        }
        self.reap(fx);
    }

    // ---- port operations (docs Table 3-2) ----

    /// A new port; `s` gets its receive right.
    pub fn port_allocate(&mut self, s: SpaceId) -> Result<Name, u32> {
        self.port_allocate_id(s).map(|(name, _)| name)
    }

    /// [`Ipc::port_allocate`], also giving the port itself, for a kernel
    /// that hands the port to other tasks too (a bootstrap port).
    pub fn port_allocate_id(&mut self, s: SpaceId) -> Result<(Name, PortId), u32> {
        let limit = self.limits.names_per_space;
        let sp = self.space(s).ok_or(KERN_INVALID_ARGUMENT)?;
        if sp.used() >= limit {
            return Err(KERN_NO_SPACE);
        }
        let p = self.new_port(Receiver::Kernel, None)?;
        let name = match self.space_mut(s).map(|sp| sp.alloc(limit, Kind::Port, p)) {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                self.ports.remove(p.index, p.generation);
                return Err(e);
            }
            None => {
                self.ports.remove(p.index, p.generation);
                return Err(KERN_INVALID_ARGUMENT);
            }
        };
        let port = self.port_mut(p).ok_or(KERN_FAILURE)?;
        if port.holders.try_reserve(1).is_err() {
            self.ports.remove(p.index, p.generation);
            if let Some(sp) = self.space_mut(s) {
                sp.free(name);
            }
            return Err(KERN_RESOURCE_SHORTAGE);
        }
        port.holders.push((s, name));
        port.receiver = Receiver::Space { space: s, name };
        if let Some(e) = self.space_mut(s).and_then(|sp| sp.lookup_mut(name)) {
            e.receive = true;
        }
        Ok((name, p))
    }

    /// Drops one send, send-once or dead-name reference, or (if the name
    /// has no send reference) the receive right, killing the port.
    pub fn port_deallocate(&mut self, s: SpaceId, name: Name, fx: &mut Effects) -> Result<(), u32> {
        let e = *self
            .space(s)
            .and_then(|sp| sp.lookup(name))
            .ok_or(KERN_INVALID_NAME)?;
        let alive = self.port(e.port).is_some();
        let mut free = false;
        match e.kind {
            Kind::SendOnce => {
                if alive {
                    self.release_send_once(e.port);
                }
                free = true;
            }
            Kind::Port if e.urefs > 0 => {
                if let Some(p) = self.port_mut(e.port) {
                    p.srights = p.srights.saturating_sub(1);
                }
                if let Some(en) = self.space_mut(s).and_then(|sp| sp.lookup_mut(name)) {
                    en.urefs -= 1;
                    free = en.urefs == 0 && !en.receive;
                }
            }
            Kind::Port if e.receive && alive => {
                // kill_port takes the receive right out of the entry.
                self.dying.push(e.port);
                self.reap(fx);
                return Ok(());
            }
            _ => return Err(KERN_INVALID_RIGHT),
        }
        if free {
            if let Some(sp) = self.space_mut(s) {
                sp.free(name);
            }
            self.entry_freed(s, name, e.port, e.kind);
        }
        Ok(())
    }

    /// Adds the receive right `name` to `s`'s default group.
    pub fn port_enable(&mut self, s: SpaceId, name: Name) -> Result<(), u32> {
        let p = self.receive_right(s, name)?;
        if self.port(p).is_some_and(|port| port.enabled) {
            return Ok(());
        }
        let sp = self.space_mut(s).ok_or(KERN_INVALID_NAME)?;
        sp.group
            .try_reserve(1)
            .map_err(|_| KERN_RESOURCE_SHORTAGE)?;
        sp.group.push(p);
        if let Some(port) = self.port_mut(p) {
            port.enabled = true;
        }
        Ok(())
    }

    /// Takes it out of the group; if the group is left empty, threads
    /// blocked on it wake (PortDied) and their retry fails.
    pub fn port_disable(&mut self, s: SpaceId, name: Name, fx: &mut Effects) -> Result<(), u32> {
        let p = self.receive_right(s, name)?;
        self.group_remove(p, fx);
        Ok(())
    }

    /// Writes the names of enabled ports with messages queued; returns how
    /// many it wrote.
    pub fn port_messages(&self, s: SpaceId, out: &mut [Name]) -> usize {
        let Some(sp) = self.space(s) else { return 0 };
        let names = sp.group.iter().filter_map(|&p| {
            let port = self.port(p)?;
            match port.receiver {
                Receiver::Space { name, .. } if port.queue.len() > 0 => Some(name),
                _ => None,
            }
        });
        let mut n = 0;
        for (slot, name) in out.iter_mut().zip(names) {
            *slot = name;
            n += 1;
        }
        n
    }

    /// `KERN_INVALID_RIGHT` for dead names (see `rights`).
    pub fn port_status(&self, s: SpaceId, name: Name) -> Result<PortStatus, u32> {
        let e = self
            .space(s)
            .and_then(|sp| sp.lookup(name))
            .ok_or(KERN_INVALID_NAME)?;
        let p = self.port(e.port).ok_or(KERN_INVALID_RIGHT)?;
        Ok(PortStatus {
            enabled: u32::from(e.receive && p.enabled),
            num_msgs: p.queue.len() as u32,
            backlog: p.queue.backlog,
            receiver: u32::from(e.receive),
            send_refs: if e.kind == Kind::SendOnce { 1 } else { e.urefs },
            seqno: p.queue.seqno,
        })
    }

    /// What `name` denotes in `s`, dead names included.
    pub fn rights(&self, s: SpaceId, name: Name) -> Result<Rights, u32> {
        let e = self
            .space(s)
            .and_then(|sp| sp.lookup(name))
            .ok_or(KERN_INVALID_NAME)?;
        Ok(rights_of(e, self.port(e.port).is_some()))
    }

    /// Every name of `s` and what it denotes (tests, debugging).
    pub fn names(&self, s: SpaceId) -> Vec<(Name, Rights)> {
        let Some(sp) = self.space(s) else {
            return Vec::new();
        };
        sp.names()
            .map(|(n, e)| (n, rights_of(e, self.port(e.port).is_some())))
            .collect()
    }

    /// 1..=BACKLOG_MAX; raising it wakes blocked senders that now fit.
    pub fn port_set_backlog(
        &mut self,
        s: SpaceId,
        name: Name,
        backlog: u32,
        fx: &mut Effects,
    ) -> Result<(), u32> {
        let p = self.receive_right(s, name)?;
        if !(1..=BACKLOG_MAX).contains(&backlog) {
            return Err(KERN_INVALID_VALUE);
        }
        let port = self.port_mut(p).ok_or(KERN_INVALID_RIGHT)?;
        port.queue.backlog = backlog;
        let room = (backlog as usize).saturating_sub(port.queue.len());
        for _ in 0..room {
            self.wake_sender(p, fx);
        }
        Ok(())
    }

    /// When `name`'s port dies, NOTIFY_DEAD_NAME carrying `name` goes to
    /// `notify` (a receive or send right of `s`, from which the kernel
    /// makes a send-once right). A second request for `name` replaces the
    /// first. If the port is already dead the notification goes at once.
    pub fn request_dead_name(
        &mut self,
        s: SpaceId,
        name: Name,
        notify: Name,
        fx: &mut Effects,
    ) -> Result<(), u32> {
        let sp = self.space(s).ok_or(KERN_INVALID_NAME)?;
        let e = *sp.lookup(name).ok_or(KERN_INVALID_NAME)?;
        let n = *sp.lookup(notify).ok_or(KERN_INVALID_NAME)?;
        if n.kind != Kind::Port || (!n.receive && n.urefs == 0) || self.port(n.port).is_none() {
            return Err(KERN_INVALID_RIGHT);
        }
        if e.kind == Kind::Port && e.urefs == 0 {
            return Err(KERN_INVALID_RIGHT); // receive only: it never becomes a dead name
        }
        let limit = self.limits.dead_name_requests_per_port as usize;
        let Some(port) = self.port_mut(e.port) else {
            // Already dead: notify now.
            if let Some(np) = self.port_mut(n.port) {
                np.sorights += 1;
            }
            self.notify_dead_name(n.port, name, fx);
            return Ok(());
        };
        let existing = port
            .dead_requests
            .iter()
            .position(|r| r.space == s && r.name == name);
        let request = DeadRequest {
            space: s,
            name,
            notify: n.port,
        };
        let old = match existing {
            Some(i) => port
                .dead_requests
                .get_mut(i)
                .map(|r| core::mem::replace(r, request).notify),
            None => {
                if port.dead_requests.len() >= limit {
                    return Err(KERN_RESOURCE_SHORTAGE);
                }
                port.dead_requests
                    .try_reserve(1)
                    .map_err(|_| KERN_RESOURCE_SHORTAGE)?;
                port.dead_requests.push(request);
                None
            }
        };
        if let Some(np) = self.port_mut(n.port) {
            np.sorights += 1;
        }
        if let Some(o) = old {
            self.release_send_once(o);
        }
        Ok(())
    }

    // ---- kernel objects ----

    /// A port the kernel receives on, standing for `obj`.
    pub fn kernel_port(&mut self, obj: KObject) -> Result<PortId, u32> {
        self.new_port(Receiver::Kernel, Some(obj))
    }

    /// A port the kernel receives on itself (reply ports for exception
    /// messages): sends to it queue, `kernel_receive` reads them.
    pub fn kernel_port_allocate(&mut self) -> Result<PortId, u32> {
        self.new_port(Receiver::Kernel, None)
    }

    /// The object died (or the kernel drops its reply port): the port dies.
    pub fn destroy_kernel_port(&mut self, p: PortId, fx: &mut Effects) {
        if self
            .port(p)
            .is_some_and(|port| port.receiver == Receiver::Kernel)
        {
            self.dying.push(p);
            self.reap(fx);
        }
    }

    /// Gives `s` one send reference to `p` (task_self, a new task's port).
    pub fn insert_send(&mut self, s: SpaceId, p: PortId) -> Result<Name, u32> {
        let port = self.port_mut(p).ok_or(KERN_INVALID_ARGUMENT)?;
        port.srights += 1;
        let mut fx = Effects::default();
        match self.insert_right(s, p, PORT_SEND, &mut fx) {
            PORT_NULL | PORT_DEAD => Err(KERN_NO_SPACE),
            n => Ok(n),
        }
    }

    /// The port a send or send-once right names (kernel-object traps).
    /// `KERN_TERMINATED` if it is a dead name.
    pub fn resolve_send(&self, s: SpaceId, name: Name) -> Result<PortId, u32> {
        let e = self
            .space(s)
            .and_then(|sp| sp.lookup(name))
            .ok_or(KERN_INVALID_NAME)?;
        if e.kind == Kind::Port && e.urefs == 0 {
            return Err(KERN_INVALID_RIGHT);
        }
        if self.port(e.port).is_none() {
            return Err(KERN_TERMINATED);
        }
        Ok(e.port)
    }

    pub fn kobject(&self, p: PortId) -> Option<KObject> {
        self.port(p)?.kobject
    }

    /// Releases a right the kernel took out of a message.
    pub fn release_right(&mut self, r: KRight, fx: &mut Effects) {
        self.release(r);
        self.reap(fx);
    }

    /// Gives back a message (served by the kernel, or not copied out):
    /// its rights are released, its memory uncharged.
    pub fn kmsg_destroy(&mut self, k: Kmsg, fx: &mut Effects) {
        self.kmsg_free(k);
        self.reap(fx);
    }

    // ---- messages ----

    /// Sends the message `msg` (docs §3) from `s`.
    pub fn send(
        &mut self,
        s: SpaceId,
        msg: &[u8],
        ool: &mut dyn OolSource,
        fx: &mut Effects,
    ) -> Send {
        match self.send_inner(s, msg, ool, None, fx) {
            Ok(Outcome::Send(r)) => r,
            // Only a direct send declines or delivers.
            Ok(_) => Send::Error(SEND_INVALID_DEST),
            Err(e) => Send::Error(e),
        }
    }

    /// The RPC fast path: [`Ipc::send`] of a simple message straight into
    /// the receiver `to`, when it is the first waiter on the destination,
    /// nothing is queued there and the message fits it. Same checks, same
    /// rights bookkeeping (one implementation: `send_inner`), same result
    /// as `send` followed by that receiver's `receive` and `copyout`, but
    /// no kernel message is built or queued.
    pub fn send_direct(
        &mut self,
        s: SpaceId,
        msg: &[u8],
        to: &mut DirectTo<'_>,
        fx: &mut Effects,
    ) -> Direct {
        let mut none = NoSource;
        match self.send_inner(s, msg, &mut none, Some(to), fx) {
            Ok(Outcome::Send(r)) => Direct::Sent(r),
            Ok(Outcome::Direct { waiter, size }) => Direct::Delivered { waiter, size },
            Ok(Outcome::Declined) => Direct::Declined,
            Err(e) => Direct::Sent(Send::Error(e)),
        }
    }

    /// The thread first in line to receive on the port `name` (a send or
    /// send-once right of `s`) denotes, if nothing is queued there: the
    /// receiver a [`Ipc::send_direct`] would deliver to.
    pub fn direct_candidate(&self, s: SpaceId, name: Name) -> Option<Waiter> {
        let e = self.space(s)?.lookup(name)?;
        let port = self.port(e.port)?;
        if port.kobject.is_some() || port.queue.len() != 0 {
            return None;
        }
        port.queue.waiters.first().copied()
    }

    fn send_inner(
        &mut self,
        s: SpaceId,
        msg: &[u8],
        src: &mut dyn OolSource,
        direct: Option<&mut DirectTo<'_>>,
        fx: &mut Effects,
    ) -> Result<Outcome, u32> {
        let sh = kmsg::check_header(msg)?;
        let h = sh.header;
        let body_bytes = msg.get(HEADER_SIZE..).ok_or(SEND_MSG_TOO_SMALL)?;
        let sp = self.space(s).ok_or(SEND_INVALID_DEST)?;
        // Destination, checked without changing anything.
        let dest_disp = h.remote_disposition();
        let de = sp.lookup(h.remote).ok_or(SEND_INVALID_DEST)?;
        let dest = de.port;
        let dport = self.port(dest).ok_or(SEND_INVALID_DEST)?;
        // The right itself is checked before fullness, so a task cannot
        // probe queues it holds no right to.
        let held = match (de.kind, dest_disp) {
            (Kind::Port, COPY_SEND | MOVE_SEND) => de.urefs > 0,
            (Kind::Port, MAKE_SEND | MAKE_SEND_ONCE) => de.receive,
            (Kind::SendOnce, MOVE_SEND_ONCE) => true,
            _ => false,
        };
        if !held {
            return Err(SEND_INVALID_DEST);
        }
        let to_kernel = dport.kobject.is_some();
        if !to_kernel && dport.is_full() {
            return Ok(Outcome::Send(Send::Full { port: dest }));
        }
        let local_disp = h.local_disposition();
        if h.local != PORT_NULL && !is_dest_disposition(local_disp) {
            return Err(SEND_INVALID_REPLY);
        }
        let scan = kmsg::scan(body_bytes, sh.complex)?;
        // Bounds (out-of-line ones again per region below, once it is known
        // which regions are snapshots and how many pages they take).
        let charge = KMSG_OVERHEAD + body_bytes.len() + scan.names * 16;
        // More than the bounds could ever take is too large; more than they
        // have room for now is no buffer.
        if scan.ool_bytes
            > self
                .limits
                .ool_bytes_per_space
                .min(self.limits.ool_bytes_total)
        {
            return Err(SEND_TOO_LARGE);
        }
        if self.kmsg_bytes + charge > self.limits.kmsg_bytes_total
            || sp.queued >= self.limits.queued_per_space
            || sp.ool_bytes + scan.ool_bytes > self.limits.ool_bytes_per_space
            || self.ool_bytes + scan.ool_bytes > self.limits.ool_bytes_total
        {
            return Err(SEND_NO_BUFFER);
        }
        // The fast path takes only what needs no kernel message: a simple
        // message to a port with nothing queued whose first waiter is the
        // receiver, receiving on it by name, with room for it.
        if let Some(to) = direct.as_ref() {
            let size = msg.len();
            let eligible = !sh.complex
                && !to_kernel
                && size <= to.max
                && size <= to.out.len()
                && self.port(dest).is_some_and(|p| p.queue.len() == 0)
                && self
                    .port(dest)
                    .is_some_and(|p| p.queue.waiters.first() == Some(&to.waiter))
                && to.name != PORT_NULL
                && self.receive_right(to.space, to.name) == Ok(dest);
            if !eligible {
                return Ok(Outcome::Declined);
            }
        }
        // Every allocation before any right moves.
        let nobuf = |_| SEND_NO_BUFFER;
        // (A direct send builds no kernel message: its body stays empty.)
        let mut body = Vec::new();
        if direct.is_none() {
            body.try_reserve_exact(body_bytes.len()).map_err(nobuf)?;
            body.extend_from_slice(body_bytes);
        }
        let mut rights = Vec::new();
        if scan.names > 0 {
            rights.try_reserve_exact(scan.names).map_err(nobuf)?;
        }
        let mut regions: Vec<OolData> = Vec::new();
        if scan.ool_count > 0 {
            regions.try_reserve_exact(scan.ool_count).map_err(nobuf)?;
        }
        if scan.ool_count > 0 {
            // Room to release every snapshot held, this message's too.
            self.released
                .try_reserve(self.snapshots + scan.ool_count)
                .map_err(nobuf)?;
        }
        let want = scan.names + 2;
        if self.touched.capacity() < want {
            self.touched.try_reserve(want).map_err(nobuf)?;
        }
        if !to_kernel
            && direct.is_none()
            && !self.port_mut(dest).is_some_and(|p| p.queue.reserve_one())
        {
            return Err(SEND_NO_BUFFER);
        }
        // Rights, phase 1: check everything, in order, against what the
        // message already takes.
        let dest_port = self.copyin_check(s, h.remote, dest_disp);
        if dest_port.is_none() {
            self.copyin_abort(s);
            return Err(SEND_INVALID_DEST);
        }
        let mut reply = None;
        if h.local != PORT_NULL {
            match self.copyin_check(s, h.local, local_disp) {
                Some(p) => reply = Some(p),
                None => {
                    self.copyin_abort(s);
                    return Err(SEND_INVALID_REPLY);
                }
            }
        }
        let mut off = if scan.names == 0 { body.len() } else { 0 };
        let mut failed = false;
        let mut moves_receive = false;
        while let Ok(Some((ih, payload, next))) = kmsg::item_at(&body, off) {
            if ih.kind == ITEM_PORTS {
                moves_receive |= ih.disp == MOVE_RECEIVE;
                for i in 0..ih.count as usize {
                    let at = payload + i * 4;
                    let name = body
                        .get(at..at + 4)
                        .map_or(PORT_NULL, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                    let r = match name {
                        PORT_NULL => KRight::Null,
                        PORT_DEAD => KRight::Dead,
                        _ => match self.copyin_check(s, name, ih.disp) {
                            // Disposition kept until phase 2 turns it into a type.
                            Some(port) => KRight::Port { port, ty: ih.disp },
                            None => {
                                failed = true;
                                break;
                            }
                        },
                    };
                    rights.push(r);
                }
                if failed {
                    break;
                }
                if let (Some(b), Some(ty)) = (body.get_mut(off + 1), kmsg::received_type(ih.disp)) {
                    *b = ty;
                }
            }
            off = next;
        }
        if failed {
            self.copyin_abort(s);
            return Err(SEND_INVALID_RIGHT);
        }
        // Only an item's MOVE_RECEIVE can make a cycle.
        if moves_receive && self.receive_cycle(s, dest) {
            self.copyin_abort(s);
            return Err(SEND_INVALID_RIGHT);
        }
        // Out-of-line regions: snapshots where the source takes them,
        // copies otherwise. The last step that can fail.
        let (ool_bytes, ool_copied) = if scan.ool_count == 0 {
            (0, 0)
        } else {
            match self.copyin_ool(s, &body, src, &mut regions) {
                Ok(n) => n,
                Err(e) => {
                    self.copyin_abort(s);
                    self.release_regions(&mut regions);
                    return Err(e);
                }
            }
        };
        // Phase 2: commit. Nothing below fails.
        self.copyin_commit(s);
        let dest_r = self.copyin_port(dest, dest_disp, dest, fx);
        let reply_r = match reply {
            Some(p) => self.copyin_port(p, local_disp, dest, fx),
            None => KRight::Null,
        };
        for r in rights.iter_mut() {
            if let KRight::Port { port, ty } = *r {
                *r = self.copyin_port(port, ty, dest, fx);
            }
        }
        let mut off = if scan.ool_count == 0 { body.len() } else { 0 };
        while let Ok(Some((ih, _, next))) = kmsg::item_at(&body, off) {
            if ih.kind == ITEM_OOL && ih.disp & OOL_DEALLOCATE != 0 {
                src.deallocate(ih.addr, u64::from(ih.count));
            }
            off = next;
        }
        if let Some(to) = direct {
            return Ok(self.direct_finish(&h, body_bytes, dest, dest_r, reply_r, to, fx));
        }
        let dest_ty = match dest_r {
            KRight::Port { ty, .. } => ty,
            _ => 0,
        };
        self.kmsg_bytes += charge;
        self.ool_bytes += ool_bytes;
        self.ool_copied += ool_copied;
        self.kmsgs_live += 1;
        let mut k = Kmsg {
            complex: sh.complex,
            dest,
            dest_ty,
            reply: reply_r,
            id: h.id,
            seqno: 0,
            rcv_name: PORT_NULL,
            body,
            rights,
            ool: regions,
            sender: Some(s),
            stamp: 0,
            charge,
            ool_bytes,
            ool_copied,
            charged_sender: !to_kernel,
        };
        if to_kernel {
            return Ok(Outcome::Send(Send::ToKernel(k)));
        }
        if let Some(sp) = self.space_mut(s) {
            sp.queued += 1;
            sp.ool_bytes += ool_bytes;
            sp.ool_copied += ool_copied;
        }
        self.stamp += 1;
        k.stamp = self.stamp;
        if let Some(p) = self.port_mut(dest) {
            p.queue.push(k);
        }
        self.wake_receiver(dest, fx);
        Ok(Outcome::Send(Send::Queued))
    }

    /// The end of a direct send (rights already committed; nothing here
    /// fails): what queueing the message, `receive` by `to`'s waiter
    /// (`dequeue`) and `copyout` would do, in the same order, without the
    /// kernel message. A simple message carries only its reply right.
    #[allow(clippy::too_many_arguments)]
    fn direct_finish(
        &mut self,
        h: &Header,
        body: &[u8],
        dest: PortId,
        dest_r: KRight,
        reply_r: KRight,
        to: &mut DirectTo<'_>,
        fx: &mut Effects,
    ) -> Outcome {
        // Queued (wake_receiver: the waiter leaves its wait) ...
        self.stamp += 1;
        let mut seqno = 0;
        if let Some(port) = self.port_mut(dest) {
            if !port.queue.waiters.is_empty() {
                port.queue.waiters.remove(0);
            }
            seqno = port.queue.seqno;
            port.queue.seqno = seqno.wrapping_add(1);
        }
        self.unregister(to.waiter);
        // ... dequeued: the destination right is consumed by delivery ...
        self.release(dest_r);
        self.wake_sender(dest, fx);
        // ... and copied out.
        let (remote, reply_ty) = match reply_r {
            KRight::Port { port, ty } => (self.insert_right(to.space, port, ty, fx), ty),
            _ => (PORT_NULL, 0),
        };
        let size = HEADER_SIZE + body.len();
        let header = Header {
            bits: u32::from(if remote == PORT_NULL { 0 } else { reply_ty }),
            size: size as u32,
            remote,
            local: to.name,
            seqno,
            id: h.id,
        };
        if let Some((head, out)) = to.out.get_mut(..size).map(|b| b.split_at_mut(HEADER_SIZE)) {
            head.copy_from_slice(&header.to_bytes());
            out.copy_from_slice(body);
        }
        self.reap(fx);
        Outcome::Direct {
            waiter: to.waiter,
            size,
        }
    }

    /// The out-of-line regions of `body` (a validated message from `s`)
    /// into `regions`, each checked against the bounds as it is added; the
    /// bytes they add in flight, and the copied part. On error `regions`
    /// holds the snapshots taken so far, for the caller to release.
    fn copyin_ool(
        &mut self,
        s: SpaceId,
        body: &[u8],
        src: &mut dyn OolSource,
        regions: &mut Vec<OolData>,
    ) -> Result<(u64, u64), u32> {
        let sp = self.space(s).ok_or(SEND_INVALID_DEST)?;
        let l = &self.limits;
        // What the bounds allow at all (beyond: too large), and now.
        let cap = l.ool_bytes_per_space.min(l.ool_bytes_total);
        let copy_cap = OOL_MAX.min(l.ool_copied_per_space).min(l.ool_copied_total);
        let room = (l.ool_bytes_per_space.saturating_sub(sp.ool_bytes))
            .min(l.ool_bytes_total.saturating_sub(self.ool_bytes));
        let copy_room = (l.ool_copied_per_space.saturating_sub(sp.ool_copied))
            .min(l.ool_copied_total.saturating_sub(self.ool_copied));
        let (mut bytes, mut copied) = (0u64, 0u64);
        let mut off = 0;
        while let Ok(Some((ih, _, next))) = kmsg::item_at(body, off) {
            off = next;
            if ih.kind != ITEM_OOL {
                continue;
            }
            let len = u64::from(ih.count);
            let snap = (len > 0 && ih.disp & OOL_PHYSICAL_COPY == 0)
                .then(|| src.snapshot(ih.addr, len))
                .flatten();
            if let Some(snap) = snap {
                self.snapshots += 1;
                regions.push(OolData::Snapshot(snap));
                bytes = bytes.saturating_add(snap.size);
            } else {
                bytes += len;
                copied += len;
            }
            if bytes > cap || copied > copy_cap {
                return Err(SEND_TOO_LARGE);
            }
            if bytes > room || copied > copy_room {
                return Err(SEND_NO_BUFFER);
            }
            if snap.is_some() {
                continue;
            }
            let mut data = Vec::new();
            data.try_reserve_exact(ih.count as usize)
                .map_err(|_| SEND_NO_BUFFER)?;
            data.resize(ih.count as usize, 0);
            if !src.read(ih.addr, len, &mut data) {
                return Err(SEND_INVALID_DATA);
            }
            regions.push(OolData::Bytes(data));
        }
        Ok((bytes, copied))
    }

    /// Receives on `name` (a receive right of `s`; `PORT_NULL`: the oldest
    /// message across the default group) into a buffer of `max_size`.
    pub fn receive(
        &mut self,
        s: SpaceId,
        name: Name,
        max_size: usize,
        large: bool,
        fx: &mut Effects,
    ) -> Recv {
        let p = if name == PORT_NULL {
            let Some(sp) = self.space(s) else {
                return Recv::Error(RCV_INVALID_NAME);
            };
            if sp.group.is_empty() {
                return Recv::Error(RCV_INVALID_NAME);
            }
            match self.group_oldest(s) {
                Some(p) => p,
                None => return Recv::Empty,
            }
        } else {
            match self.receive_right(s, name) {
                Ok(p) => p,
                Err(_) => return Recv::Error(RCV_INVALID_NAME),
            }
        };
        self.dequeue(p, max_size, large, fx)
    }

    /// [`Ipc::receive`], and where it would say `Empty`, [`Ipc::wait_receive`]
    /// of `w` at once (one lookup of the receive right for both); an error
    /// of the wait comes back as `Recv::Error`.
    pub fn receive_or_wait(
        &mut self,
        s: SpaceId,
        name: Name,
        max_size: usize,
        large: bool,
        w: Waiter,
        fx: &mut Effects,
    ) -> Recv {
        if name == PORT_NULL {
            return match self.receive(s, name, max_size, large, fx) {
                Recv::Empty => match self.wait_receive(s, name, w) {
                    Ok(()) => Recv::Empty,
                    Err(e) => Recv::Error(e),
                },
                r => r,
            };
        }
        let p = match self.receive_right(s, name) {
            Ok(p) => p,
            Err(_) => return Recv::Error(RCV_INVALID_NAME),
        };
        match self.dequeue(p, max_size, large, fx) {
            Recv::Empty => match self.register(w, WaitOn::Receive(p)) {
                Ok(()) => Recv::Empty,
                Err(e) => Recv::Error(e),
            },
            r => r,
        }
    }

    /// Reads a message sent to one of the kernel's own ports.
    /// Dequeuing makes room, so `fx` may wake a blocked sender.
    pub fn kernel_receive(&mut self, p: PortId, fx: &mut Effects) -> Option<Kmsg> {
        if self.port(p)?.receiver != Receiver::Kernel {
            return None;
        }
        match self.dequeue(p, usize::MAX, false, fx) {
            Recv::Message(k) => Some(k),
            _ => None,
        }
    }

    fn dequeue(&mut self, p: PortId, max_size: usize, large: bool, fx: &mut Effects) -> Recv {
        let Some(port) = self.port_mut(p) else {
            return Recv::Error(RCV_INVALID_NAME);
        };
        let Some(size) = port.queue.front().map(|k| k.size()) else {
            return Recv::Empty;
        };
        if size > max_size && large {
            return Recv::TooLarge { size };
        }
        let seqno = port.queue.seqno;
        let rcv_name = match port.receiver {
            Receiver::Space { name, .. } => name,
            _ => PORT_NULL,
        };
        let Some(mut k) = port.queue.pop() else {
            return Recv::Empty;
        };
        port.queue.seqno = seqno.wrapping_add(1);
        k.seqno = seqno;
        k.rcv_name = rcv_name;
        self.uncharge_sender(&mut k);
        // The destination right is consumed by delivery.
        self.release(KRight::Port {
            port: k.dest,
            ty: k.dest_ty,
        });
        k.dest_ty = 0;
        self.wake_sender(p, fx);
        if size > max_size {
            self.kmsg_destroy(k, fx);
            return Recv::TooLarge { size };
        }
        Recv::Message(k)
    }

    /// Writes a received message into `buf` (docs §3.1 receive column) and
    /// inserts its rights into `s`; returns its size. `RCV_INVALID_DATA`
    /// (the message destroyed) if `buf` is too small.
    pub fn copyout(
        &mut self,
        s: SpaceId,
        k: Kmsg,
        buf: &mut [u8],
        ool: &mut dyn OolSink,
        fx: &mut Effects,
    ) -> Result<usize, u32> {
        self.copyout_impl(s, k, buf, ool, fx)
    }

    /// A kernel-generated message (exception messages) to `dest`: the
    /// kernel makes the destination right, the `ports` rights (PORT_SEND or
    /// PORT_SEND_ONCE) and, with `reply`, a send-once right to it in
    /// `local`. Ignores the backlog; `SEND_INVALID_DEST` if `dest` is dead.
    pub fn kernel_send(
        &mut self,
        dest: PortId,
        id: i32,
        ports: &[(PortId, u8)],
        inline: &[u8],
        reply: Option<PortId>,
        fx: &mut Effects,
    ) -> Result<(), u32> {
        if self.port(dest).is_none() {
            return Err(SEND_INVALID_DEST);
        }
        if let Some(r) = reply
            && self.port(r).is_none()
        {
            return Err(SEND_INVALID_REPLY);
        }
        let reply_r = match reply {
            Some(r) => KRight::Port {
                port: r,
                ty: PORT_SEND_ONCE,
            },
            None => KRight::Null,
        };
        let items = [KItem::Ports(ports), KItem::Inline(inline)];
        let k = self.kmsg_kernel(dest, PORT_SEND, id, &items, reply_r)?;
        // Rights made only once the message exists, so a failure leaks none.
        if let Some(p) = self.port_mut(dest) {
            p.srights += 1;
        }
        if let Some(r) = reply
            && let Some(p) = self.port_mut(r)
        {
            p.sorights += 1;
        }
        self.deliver(k, fx)
    }

    /// The kernel's reply to a request it served (docs §5.1): to `reply`,
    /// the request's reply right (`Kmsg::take_reply`), which it consumes;
    /// id `id`, an `INLINE` i32 `code`, then `out`. The kernel never waits,
    /// so the reply is dropped (false) if the port died, is full (its
    /// backlog, as for any sender: this bounds what a task that never
    /// receives its replies can pile up), is itself a kernel object's port
    /// (nobody would read it), or there is no kernel memory for it.
    pub fn kernel_reply(
        &mut self,
        reply: KRight,
        id: i32,
        code: u32,
        out: Option<KItem<'_>>,
        fx: &mut Effects,
    ) -> bool {
        let KRight::Port { port, ty } = reply else {
            return false;
        };
        let room = self
            .port(port)
            .is_some_and(|p| p.kobject.is_none() && !p.is_full());
        let code = code.to_le_bytes();
        let items = [KItem::Inline(&code), out.unwrap_or(KItem::Inline(&[]))];
        // The reply right becomes the message's destination right.
        match room.then(|| self.kmsg_kernel(port, ty, id, &items, KRight::Null)) {
            Some(Ok(k)) => self.deliver(k, fx).is_ok(),
            _ => {
                self.release(reply);
                self.reap(fx);
                false
            }
        }
    }
}

fn rights_of(e: &space::Entry, alive: bool) -> Rights {
    let (send, once) = match e.kind {
        Kind::Port => (e.urefs, false),
        Kind::SendOnce => (0, true),
        Kind::Free => (0, false),
    };
    if alive {
        Rights {
            port: e.port,
            receive: e.receive,
            send,
            send_once: once,
            dead: 0,
        }
    } else {
        Rights {
            port: e.port,
            receive: false,
            send: 0,
            send_once: false,
            dead: if once { 1 } else { send },
        }
    }
}
