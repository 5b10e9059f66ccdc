//! Unit tests: one per rule of docs/mach-ipc.md the IPC core enforces.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use super::{Direct, DirectTo};

// ---- helpers ----

pub(super) enum It {
    Inline(Vec<u8>),
    Ports(u8, Vec<Name>),
    Ool(u8, u64, u32),
}

fn pad8(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
}

pub(super) fn msg(
    remote: Name,
    rdisp: u8,
    local: Name,
    ldisp: u8,
    id: i32,
    items: &[It],
) -> Vec<u8> {
    let mut body = Vec::new();
    let mut complex = false;
    for it in items {
        let (kind, disp, count, addr) = match it {
            It::Inline(d) => (ITEM_INLINE, 0, d.len() as u32, 0),
            It::Ports(disp, n) => {
                complex = true;
                (ITEM_PORTS, *disp, n.len() as u32, 0)
            }
            It::Ool(f, a, l) => {
                complex = true;
                (ITEM_OOL, *f, *l, *a)
            }
        };
        let h = ItemHeader {
            kind,
            disp,
            reserved: 0,
            count,
            addr,
        };
        body.extend_from_slice(&h.to_bytes());
        match it {
            It::Inline(d) => body.extend_from_slice(d),
            It::Ports(_, n) => n
                .iter()
                .for_each(|x| body.extend_from_slice(&x.to_le_bytes())),
            It::Ool(..) => {}
        }
        pad8(&mut body);
    }
    let h = Header {
        bits: Header::bits(rdisp, ldisp) | if complex { BITS_COMPLEX } else { 0 },
        size: (HEADER_SIZE + body.len()) as u32,
        remote,
        local,
        seqno: 0,
        id,
    };
    let mut m = h.to_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

/// Sender memory: `base` .. `base + data.len()` is readable. With `cow`
/// it takes snapshots of ranges inside it (handles from 1, counted in
/// `taken`) the way the kernel does for its VM window: page-rounded.
#[derive(Default)]
pub(super) struct Mem {
    pub(super) base: u64,
    pub(super) data: Vec<u8>,
    pub(super) freed: Vec<(u64, u64)>,
    pub(super) cow: bool,
    /// (handle, addr, len) of every snapshot taken.
    pub(super) taken: Vec<(u64, u64, u64)>,
    /// Calls to `read`.
    pub(super) reads: usize,
}

pub(super) const PAGE: u64 = 4096;

impl OolSource for Mem {
    fn snapshot(&mut self, addr: u64, len: u64) -> Option<Snapshot> {
        let end = addr.checked_add(len)?;
        let inside = addr >= self.base && end <= self.base + self.data.len() as u64;
        if !self.cow || !inside {
            return None;
        }
        let handle = self.taken.len() as u64 + 1;
        self.taken.push((handle, addr, len));
        let size = end.next_multiple_of(PAGE) - (addr & !(PAGE - 1));
        Some(Snapshot { handle, size })
    }
    fn read(&mut self, addr: u64, len: u64, out: &mut [u8]) -> bool {
        self.reads += 1;
        let Some(off) = addr.checked_sub(self.base) else {
            return false;
        };
        match self.data.get(off as usize..(off + len) as usize) {
            Some(d) => {
                out.copy_from_slice(d);
                true
            }
            None => false,
        }
    }
    fn deallocate(&mut self, addr: u64, len: u64) {
        self.freed.push((addr, len));
    }
}

pub(super) fn nomem() -> Mem {
    Mem::default()
}

/// `size` bytes at 0x1000 (page 1) that snapshot.
pub(super) fn cow_mem(size: usize) -> Mem {
    Mem {
        base: 0x1000,
        data: (0..=255).cycle().take(size).collect(),
        cow: true,
        ..Mem::default()
    }
}

#[derive(Default)]
pub(super) struct Sink {
    pub(super) placed: Vec<Vec<u8>>,
    /// Snapshot handles mapped, in order.
    pub(super) mapped: Vec<u64>,
    pub(super) full: bool,
}

impl OolSink for Sink {
    fn place(&mut self, data: &[u8]) -> Option<u64> {
        if self.full {
            return None;
        }
        self.placed.push(data.to_vec());
        Some(0x10_0000 * self.placed.len() as u64)
    }
    fn place_snapshot(&mut self, handle: u64) -> Option<u64> {
        if self.full {
            return None;
        }
        self.mapped.push(handle);
        Some(0x8000_0000 + 0x10_0000 * self.mapped.len() as u64)
    }
}

pub(super) struct Got {
    pub(super) h: Header,
    pub(super) bytes: Vec<u8>,
}

impl Got {
    /// (kind, disp, count, addr, payload) of every item.
    pub(super) fn items(&self) -> Vec<(ItemHeader, Vec<u8>)> {
        let body = &self.bytes[HEADER_SIZE..];
        let mut off = 0;
        let mut v = Vec::new();
        while let Ok(Some((h, p, next))) = kmsg::item_at(body, off) {
            v.push((h, body[p..next].to_vec()));
            off = next;
        }
        v
    }
    pub(super) fn names(&self) -> Vec<Name> {
        let mut out = Vec::new();
        for (h, p) in self.items() {
            if h.kind == ITEM_PORTS {
                for i in 0..h.count as usize {
                    out.push(u32::from_le_bytes(p[i * 4..i * 4 + 4].try_into().unwrap()));
                }
            }
        }
        out
    }
}

pub(super) fn send(ipc: &mut Ipc, s: SpaceId, m: &[u8]) -> Result<(), u32> {
    let mut fx = Effects::default();
    match ipc.send(s, m, &mut nomem(), &mut fx) {
        Send::Queued => Ok(()),
        Send::Error(e) => Err(e),
        Send::Full { .. } => Err(0xf011),
        Send::ToKernel(k) => {
            ipc.kmsg_destroy(k, &mut fx);
            Err(0xce11)
        }
    }
}

pub(super) fn recv(ipc: &mut Ipc, s: SpaceId, name: Name) -> Result<Got, u32> {
    let mut fx = Effects::default();
    match ipc.receive(s, name, 4096, false, &mut fx) {
        Recv::Message(k) => {
            let mut buf = vec![0u8; 4096];
            let n = ipc.copyout(s, k, &mut buf, &mut Sink::default(), &mut fx)?;
            buf.truncate(n);
            Ok(Got {
                h: Header::from_bytes(&buf).unwrap(),
                bytes: buf,
            })
        }
        Recv::Empty => Err(0xe),
        Recv::TooLarge { .. } => Err(RCV_TOO_LARGE),
        Recv::Error(e) => Err(e),
    }
}

fn small() -> Limits {
    Limits {
        names_per_space: 16,
        ports_total: 64,
        spaces_total: 8,
        queued_per_space: 16,
        kmsg_bytes_total: 64 << 10,
        ool_bytes_per_space: 4096,
        ool_bytes_total: 8192,
        ool_copied_per_space: 4096,
        ool_copied_total: 8192,
        dead_name_requests_per_port: 4,
    }
}

fn setup() -> (Ipc, SpaceId, SpaceId) {
    let mut ipc = Ipc::new(small());
    let a = ipc.space_create().unwrap();
    let b = ipc.space_create().unwrap();
    (ipc, a, b)
}

/// Gives `to` a send right (name returned) to the port `from` receives on
/// under `name`, by a MAKE_SEND in a message to a port of `to`.
fn give_send(ipc: &mut Ipc, from: SpaceId, name: Name, to: SpaceId) -> Name {
    let inbox = ipc.port_allocate(to).unwrap();
    let p = ipc.rights(to, inbox).unwrap().port;
    let carrier = ipc.insert_send(from, p).unwrap();
    send(
        ipc,
        from,
        &msg(
            carrier,
            MOVE_SEND,
            0,
            0,
            1,
            &[It::Ports(MAKE_SEND, vec![name])],
        ),
    )
    .unwrap();
    let g = recv(ipc, to, inbox).unwrap();
    let mut fx = Effects::default();
    ipc.port_deallocate(to, inbox, &mut fx).unwrap();
    g.names()[0]
}

/// Every count in the IPC matches the rights that exist (entries, queued
/// messages, dead-name requests) and no copyin scratch is left.
pub(super) fn check_invariants(ipc: &Ipc) {
    let mut send: BTreeMap<PortId, u32> = BTreeMap::new();
    let mut once: BTreeMap<PortId, u32> = BTreeMap::new();
    for (si, sg, sp) in ipc.spaces.iter() {
        let sid = SpaceId(Id {
            index: si,
            generation: sg,
        });
        for (name, e) in sp.names() {
            assert!(!e.pending(), "pending copyin left");
            let Some(port) = ipc.port(e.port) else {
                continue;
            };
            match e.kind {
                Kind::Port => {
                    *send.entry(e.port).or_default() += e.urefs;
                    assert!(port.holders.contains(&(sid, name)), "holder missing");
                    if e.receive {
                        assert_eq!(port.receiver, Receiver::Space { space: sid, name });
                    }
                    assert!(e.receive || e.urefs > 0, "empty entry");
                }
                Kind::SendOnce => *once.entry(e.port).or_default() += 1,
                Kind::Free => unreachable!(),
            }
        }
    }
    let mut queued = 0;
    for (pi, pg, port) in ipc.ports.iter() {
        let _ = PortId {
            index: pi,
            generation: pg,
        };
        for k in port.queue.iter() {
            queued += 1;
            let all = [
                KRight::Port {
                    port: k.dest,
                    ty: k.dest_ty,
                },
                k.reply,
            ];
            for r in all.iter().chain(k.rights.iter()) {
                if let KRight::Port { port, ty } = *r {
                    match ty {
                        PORT_SEND => *send.entry(port).or_default() += 1,
                        PORT_SEND_ONCE => *once.entry(port).or_default() += 1,
                        _ => {}
                    }
                }
            }
        }
        for r in &port.dead_requests {
            *once.entry(r.notify).or_default() += 1;
        }
        for &(s, n) in &port.holders {
            let e = ipc
                .space(s)
                .and_then(|sp| sp.lookup(n))
                .expect("stale holder");
            assert_eq!(e.kind, Kind::Port);
        }
    }
    for (pi, pg, port) in ipc.ports.iter() {
        let id = PortId {
            index: pi,
            generation: pg,
        };
        assert_eq!(
            port.srights,
            send.get(&id).copied().unwrap_or(0),
            "srights of {id:?}"
        );
        assert_eq!(
            port.sorights,
            once.get(&id).copied().unwrap_or(0),
            "sorights of {id:?}"
        );
    }
    assert_eq!(ipc.live_kmsgs(), queued, "kmsgs outside queues");
    // Out-of-line accounting: every snapshot and byte in flight is in a
    // queued message, and releasing the snapshots held cannot allocate.
    let (mut snaps, mut bytes, mut copied) = (0, 0, 0);
    for (_, _, port) in ipc.ports.iter() {
        for k in port.queue.iter() {
            snaps += k
                .ool
                .iter()
                .filter(|o| matches!(o, OolData::Snapshot(_)))
                .count();
            bytes += k.ool_bytes;
            copied += k.ool_copied;
        }
    }
    assert_eq!(ipc.snapshots, snaps, "snapshots outside queued messages");
    assert_eq!((ipc.ool_bytes, ipc.ool_copied), (bytes, copied));
    assert!(ipc.released.capacity() >= ipc.released.len() + ipc.snapshots);
}

fn snapshot(ipc: &Ipc, s: SpaceId) -> Vec<(Name, Rights)> {
    ipc.names(s)
}

// ---- names and ports ----

#[test]
fn allocate_status_deallocate_and_stale_names() {
    let (mut ipc, a, _) = setup();
    let mut fx = Effects::default();
    let n = ipc.port_allocate(a).unwrap();
    assert_ne!(n, PORT_NULL);
    let st = ipc.port_status(a, n).unwrap();
    assert_eq!(
        (st.receiver, st.backlog, st.num_msgs, st.send_refs),
        (1, BACKLOG_DEFAULT, 0, 0)
    );
    ipc.port_deallocate(a, n, &mut fx).unwrap();
    assert_eq!(ipc.live_ports(), 0);
    assert_eq!(ipc.port_status(a, n), Err(KERN_INVALID_NAME));
    // The slot is reused under a new generation: the old name stays stale.
    let m = ipc.port_allocate(a).unwrap();
    assert_ne!(m, n);
    assert_eq!(m >> 8, n >> 8);
    assert_eq!(ipc.port_deallocate(a, n, &mut fx), Err(KERN_INVALID_NAME));
    assert_eq!(ipc.port_status(a, 0), Err(KERN_INVALID_NAME));
    assert_eq!(ipc.port_status(a, PORT_DEAD), Err(KERN_INVALID_NAME));
    assert_eq!(ipc.port_status(a, 0x1234_5601), Err(KERN_INVALID_NAME));
    check_invariants(&ipc);
}

#[test]
fn header_fields_on_receive() {
    let (mut ipc, a, _) = setup();
    let p = ipc.port_allocate(a).unwrap();
    let r = ipc.port_allocate(a).unwrap();
    for i in 0..3 {
        send(
            &mut ipc,
            a,
            &msg(
                p,
                MAKE_SEND,
                r,
                MAKE_SEND_ONCE,
                7 + i,
                &[It::Inline(b"hi".to_vec())],
            ),
        )
        .unwrap();
    }
    for i in 0..3 {
        let g = recv(&mut ipc, a, p).unwrap();
        assert_eq!(g.h.local, p);
        assert_eq!(g.h.seqno, i as u32);
        assert_eq!(g.h.id, 7 + i);
        assert_eq!(g.h.bits & 0xff, u32::from(PORT_SEND_ONCE));
        assert_eq!(g.h.size as usize, g.bytes.len());
        let rr = ipc.rights(a, g.h.remote).unwrap();
        assert!(rr.send_once);
        assert_eq!(rr.port, ipc.rights(a, r).unwrap().port);
        assert_eq!(g.items()[0].1[..2], *b"hi");
        check_invariants(&ipc);
    }
    assert_eq!(ipc.port_status(a, p).unwrap().seqno, 3);
}

// ---- each disposition ----

#[test]
fn move_receive_transfers_the_port() {
    let (mut ipc, a, b) = setup();
    let inbox = ipc.port_allocate(b).unwrap();
    let to_b = give_send(&mut ipc, b, inbox, a);
    let q = ipc.port_allocate(a).unwrap();
    let qid = ipc.rights(a, q).unwrap().port;
    send(
        &mut ipc,
        a,
        &msg(
            to_b,
            COPY_SEND,
            0,
            0,
            1,
            &[It::Ports(MOVE_RECEIVE, vec![q])],
        ),
    )
    .unwrap();
    assert_eq!(ipc.port_status(a, q), Err(KERN_INVALID_NAME));
    let g = recv(&mut ipc, b, inbox).unwrap();
    assert_eq!(g.items()[0].0.disp, PORT_RECEIVE);
    let nq = g.names()[0];
    assert_eq!(
        ipc.rights(b, nq).unwrap(),
        Rights {
            port: qid,
            receive: true,
            send: 0,
            send_once: false,
            dead: 0
        }
    );
    check_invariants(&ipc);
}

#[test]
fn move_send_copy_send_make_send() {
    let (mut ipc, a, b) = setup();
    let inbox = ipc.port_allocate(b).unwrap();
    let to_b = give_send(&mut ipc, b, inbox, a);
    let q = ipc.port_allocate(a).unwrap();
    // MAKE_SEND: a keeps the receive right, b gets a send right.
    send(
        &mut ipc,
        a,
        &msg(
            to_b,
            COPY_SEND,
            0,
            0,
            1,
            &[It::Ports(MAKE_SEND, vec![q, q])],
        ),
    )
    .unwrap();
    assert_eq!(ipc.rights(a, q).unwrap().send, 0);
    let g = recv(&mut ipc, b, inbox).unwrap();
    let ns = g.names();
    assert_eq!(ns[0], ns[1], "send rights for one port share one name");
    assert_eq!(ipc.rights(b, ns[0]).unwrap().send, 2);
    assert_eq!(g.items()[0].0.disp, PORT_SEND);
    // COPY_SEND: a keeps its reference.
    let qa = ipc.insert_send(a, ipc.rights(a, q).unwrap().port).unwrap();
    assert_eq!(qa, q, "a send right joins the receive right's name");
    send(
        &mut ipc,
        a,
        &msg(to_b, COPY_SEND, 0, 0, 1, &[It::Ports(COPY_SEND, vec![q])]),
    )
    .unwrap();
    assert_eq!(ipc.rights(a, q).unwrap().send, 1);
    recv(&mut ipc, b, inbox).unwrap();
    assert_eq!(ipc.rights(b, ns[0]).unwrap().send, 3);
    // MOVE_SEND: the reference leaves a.
    send(
        &mut ipc,
        a,
        &msg(to_b, COPY_SEND, 0, 0, 1, &[It::Ports(MOVE_SEND, vec![q])]),
    )
    .unwrap();
    assert_eq!(ipc.rights(a, q).unwrap().send, 0);
    assert!(ipc.rights(a, q).unwrap().receive);
    recv(&mut ipc, b, inbox).unwrap();
    assert_eq!(ipc.rights(b, ns[0]).unwrap().send, 4);
    check_invariants(&ipc);
}

#[test]
fn send_once_is_made_moved_and_consumed() {
    let (mut ipc, a, b) = setup();
    let inbox = ipc.port_allocate(b).unwrap();
    let to_b = give_send(&mut ipc, b, inbox, a);
    let q = ipc.port_allocate(a).unwrap();
    send(
        &mut ipc,
        a,
        &msg(
            to_b,
            COPY_SEND,
            0,
            0,
            1,
            &[It::Ports(MAKE_SEND_ONCE, vec![q, q])],
        ),
    )
    .unwrap();
    let g = recv(&mut ipc, b, inbox).unwrap();
    let ns = g.names();
    assert_ne!(ns[0], ns[1], "each send-once right has its own name");
    assert_eq!(g.items()[0].0.disp, PORT_SEND_ONCE);
    // Used as a destination it is consumed.
    send(&mut ipc, b, &msg(ns[0], MOVE_SEND_ONCE, 0, 0, 2, &[])).unwrap();
    assert_eq!(ipc.rights(b, ns[0]), Err(KERN_INVALID_NAME));
    assert_eq!(
        send(&mut ipc, b, &msg(ns[0], MOVE_SEND_ONCE, 0, 0, 2, &[])),
        Err(SEND_INVALID_DEST)
    );
    // A send-once right cannot be copied or moved as a send right.
    assert_eq!(
        send(&mut ipc, b, &msg(ns[1], COPY_SEND, 0, 0, 2, &[])),
        Err(SEND_INVALID_DEST)
    );
    assert_eq!(
        send(&mut ipc, b, &msg(ns[1], MOVE_SEND, 0, 0, 2, &[])),
        Err(SEND_INVALID_DEST)
    );
    // Moved in an item, it leaves b and arrives in a.
    let to_a_box = ipc.port_allocate(a).unwrap();
    let to_a = give_send(&mut ipc, a, to_a_box, b);
    send(
        &mut ipc,
        b,
        &msg(
            to_a,
            COPY_SEND,
            0,
            0,
            3,
            &[It::Ports(MOVE_SEND_ONCE, vec![ns[1]])],
        ),
    )
    .unwrap();
    assert_eq!(ipc.rights(b, ns[1]), Err(KERN_INVALID_NAME));
    let g = recv(&mut ipc, a, to_a_box).unwrap();
    assert!(ipc.rights(a, g.names()[0]).unwrap().send_once);
    let g2 = recv(&mut ipc, a, q).unwrap();
    assert_eq!(g2.h.id, 2);
    check_invariants(&ipc);
}

#[test]
fn rpc_with_reply_port() {
    let (mut ipc, client, server) = setup();
    let svc = ipc.port_allocate(server).unwrap();
    let to_svc = give_send(&mut ipc, server, svc, client);
    let reply = ipc.port_allocate(client).unwrap();
    send(
        &mut ipc,
        client,
        &msg(to_svc, COPY_SEND, reply, MAKE_SEND_ONCE, 100, &[]),
    )
    .unwrap();
    let g = recv(&mut ipc, server, svc).unwrap();
    assert_eq!(g.h.bits & 0xff, u32::from(PORT_SEND_ONCE));
    send(
        &mut ipc,
        server,
        &msg(g.h.remote, MOVE_SEND_ONCE, 0, 0, 200, &[]),
    )
    .unwrap();
    assert_eq!(ipc.rights(server, g.h.remote), Err(KERN_INVALID_NAME));
    let r = recv(&mut ipc, client, reply).unwrap();
    assert_eq!((r.h.id, r.h.remote, r.h.local), (200, 0, reply));
    check_invariants(&ipc);
}

#[test]
fn bad_dispositions_and_reply() {
    let (mut ipc, a, _) = setup();
    let p = ipc.port_allocate(a).unwrap();
    let before = snapshot(&ipc, a);
    assert_eq!(
        send(&mut ipc, a, &msg(p, MOVE_RECEIVE, 0, 0, 1, &[])),
        Err(SEND_INVALID_DEST)
    );
    assert_eq!(
        send(&mut ipc, a, &msg(p, 0, 0, 0, 1, &[])),
        Err(SEND_INVALID_DEST)
    );
    assert_eq!(
        send(&mut ipc, a, &msg(p, COPY_SEND, 0, 0, 1, &[])),
        Err(SEND_INVALID_DEST)
    );
    assert_eq!(
        send(&mut ipc, a, &msg(0, COPY_SEND, 0, 0, 1, &[])),
        Err(SEND_INVALID_DEST)
    );
    assert_eq!(
        send(&mut ipc, a, &msg(p, MAKE_SEND, p, 99, 1, &[])),
        Err(SEND_INVALID_REPLY)
    );
    assert_eq!(
        send(&mut ipc, a, &msg(p, MAKE_SEND, p, MOVE_RECEIVE, 1, &[])),
        Err(SEND_INVALID_REPLY)
    );
    assert_eq!(
        send(&mut ipc, a, &msg(p, MAKE_SEND, p, MOVE_SEND, 1, &[])),
        Err(SEND_INVALID_REPLY)
    );
    assert_eq!(
        send(
            &mut ipc,
            a,
            &msg(p, MAKE_SEND, 0x999, MAKE_SEND_ONCE, 1, &[])
        ),
        Err(SEND_INVALID_REPLY)
    );
    assert_eq!(snapshot(&ipc, a), before);
    assert_eq!(ipc.live_kmsgs(), 0);
    check_invariants(&ipc);
}

// ---- port death ----

#[test]
fn receive_right_death_leaves_dead_names() {
    let (mut ipc, a, b) = setup();
    let mut fx = Effects::default();
    let p = ipc.port_allocate(a).unwrap();
    let s = give_send(&mut ipc, a, p, b);
    send(&mut ipc, a, &msg(p, MAKE_SEND, 0, 0, 1, &[])).unwrap(); // queued, dies with p
    ipc.port_deallocate(a, p, &mut fx).unwrap();
    assert_eq!(ipc.live_kmsgs(), 0);
    assert_eq!(ipc.rights(b, s).unwrap().dead, 1);
    assert_eq!(ipc.port_status(b, s), Err(KERN_INVALID_RIGHT));
    assert_eq!(ipc.resolve_send(b, s), Err(KERN_TERMINATED));
    let before = snapshot(&ipc, b);
    assert_eq!(
        send(&mut ipc, b, &msg(s, COPY_SEND, 0, 0, 1, &[])),
        Err(SEND_INVALID_DEST)
    );
    assert_eq!(snapshot(&ipc, b), before);
    ipc.port_deallocate(b, s, &mut fx).unwrap();
    assert_eq!(ipc.rights(b, s), Err(KERN_INVALID_NAME));
    check_invariants(&ipc);
}

#[test]
fn dead_name_notification_carries_the_name() {
    let (mut ipc, a, b) = setup();
    let mut fx = Effects::default();
    let p = ipc.port_allocate(a).unwrap();
    let s = give_send(&mut ipc, a, p, b);
    let notify = ipc.port_allocate(b).unwrap();
    ipc.request_dead_name(b, s, notify, &mut fx).unwrap();
    check_invariants(&ipc);
    ipc.wait_receive(b, notify, Waiter(9)).unwrap();
    ipc.port_deallocate(a, p, &mut fx).unwrap();
    assert!(fx.wake.contains(&(Waiter(9), Wake::Message)));
    let g = recv(&mut ipc, b, notify).unwrap();
    assert_eq!(g.h.id, NOTIFY_DEAD_NAME);
    assert_eq!(g.items()[0].1[..4], s.to_le_bytes());
    // Already dead: the notification goes at once.
    ipc.request_dead_name(b, s, notify, &mut fx).unwrap();
    let g = recv(&mut ipc, b, notify).unwrap();
    assert_eq!(g.items()[0].1[..4], s.to_le_bytes());
    // A receive-only name never becomes a dead name; notify must be a right.
    assert_eq!(
        ipc.request_dead_name(b, notify, notify, &mut fx),
        Err(KERN_INVALID_RIGHT)
    );
    assert_eq!(
        ipc.request_dead_name(b, s, 0x777, &mut fx),
        Err(KERN_INVALID_NAME)
    );
    check_invariants(&ipc);
}

#[test]
fn dead_name_requests_are_bounded_and_dropped_with_the_name() {
    let (mut ipc, a, b) = setup();
    let mut fx = Effects::default();
    let p = ipc.port_allocate(a).unwrap();
    let notify = ipc.port_allocate(b).unwrap();
    let mut names = Vec::new();
    let c = ipc.space_create().unwrap();
    for sp in [b, c] {
        let s = give_send(&mut ipc, a, p, sp);
        names.push((sp, s));
    }
    let n2 = ipc.port_allocate(c).unwrap();
    for _ in 0..4 {
        // Replacing a request does not use up the bound.
        ipc.request_dead_name(b, names[0].1, notify, &mut fx)
            .unwrap();
    }
    // Fill the bound with send-once names of c.
    let so: Vec<Name> = (0..3)
        .map(|_| {
            let to_c = give_send(&mut ipc, c, n2, a);
            send(
                &mut ipc,
                a,
                &msg(
                    to_c,
                    MOVE_SEND,
                    0,
                    0,
                    1,
                    &[It::Ports(MAKE_SEND_ONCE, vec![p])],
                ),
            )
            .unwrap();
            recv(&mut ipc, c, n2).unwrap().names()[0]
        })
        .collect();
    for &n in &so {
        ipc.request_dead_name(c, n, n2, &mut fx).unwrap();
    }
    assert_eq!(
        ipc.request_dead_name(c, names[1].1, n2, &mut fx),
        Err(KERN_RESOURCE_SHORTAGE)
    );
    // Dropping the name drops its request.
    ipc.port_deallocate(c, so[0], &mut fx).unwrap();
    ipc.request_dead_name(c, names[1].1, n2, &mut fx).unwrap();
    check_invariants(&ipc);
    ipc.port_deallocate(a, p, &mut fx).unwrap();
    assert_eq!(ipc.port_status(c, n2).unwrap().num_msgs, 3);
    assert_eq!(ipc.port_status(b, notify).unwrap().num_msgs, 1);
    check_invariants(&ipc);
}

// ---- backlog ----

#[test]
fn backlog_full_then_room_wakes_the_sender() {
    let (mut ipc, a, b) = setup();
    let mut fx = Effects::default();
    let p = ipc.port_allocate(a).unwrap();
    ipc.port_set_backlog(a, p, 1, &mut fx).unwrap();
    assert_eq!(
        ipc.port_set_backlog(a, p, 0, &mut fx),
        Err(KERN_INVALID_VALUE)
    );
    assert_eq!(
        ipc.port_set_backlog(a, p, BACKLOG_MAX + 1, &mut fx),
        Err(KERN_INVALID_VALUE)
    );
    let s = give_send(&mut ipc, a, p, b);
    let m = msg(s, COPY_SEND, 0, 0, 1, &[]);
    send(&mut ipc, b, &m).unwrap();
    let before = snapshot(&ipc, b);
    let full = ipc.send(b, &m, &mut nomem(), &mut fx);
    let Send::Full { port } = full else {
        panic!("{full:?}")
    };
    assert_eq!(snapshot(&ipc, b), before);
    ipc.wait_send(port, Waiter(1)).unwrap();
    assert_eq!(ipc.blocked(), 1);
    let mut fx = Effects::default();
    let Recv::Message(k) = ipc.receive(a, p, 4096, false, &mut fx) else {
        panic!()
    };
    assert_eq!(fx.wake, vec![(Waiter(1), Wake::Room)]);
    assert_eq!(ipc.blocked(), 0);
    ipc.kmsg_destroy(k, &mut fx);
    send(&mut ipc, b, &m).unwrap();
    // Raising the backlog wakes a blocked sender.
    let Send::Full { port } = ipc.send(b, &m, &mut nomem(), &mut fx) else {
        panic!()
    };
    ipc.wait_send(port, Waiter(2)).unwrap();
    let mut fx = Effects::default();
    ipc.port_set_backlog(a, p, 3, &mut fx).unwrap();
    assert_eq!(fx.wake, vec![(Waiter(2), Wake::Room)]);
    send(&mut ipc, b, &m).unwrap();
    // A blocked sender wakes when the port dies; the retry fails.
    send(&mut ipc, b, &m).unwrap();
    let Send::Full { port } = ipc.send(b, &m, &mut nomem(), &mut fx) else {
        panic!()
    };
    ipc.wait_send(port, Waiter(3)).unwrap();
    let mut fx = Effects::default();
    ipc.port_deallocate(a, p, &mut fx).unwrap();
    assert_eq!(fx.wake, vec![(Waiter(3), Wake::PortDied)]);
    assert_eq!(send(&mut ipc, b, &m), Err(SEND_INVALID_DEST));
    assert_eq!(ipc.wait_send(port, Waiter(3)), Err(SEND_INVALID_DEST));
    check_invariants(&ipc);
}

#[test]
fn cancel_wait_forgets_the_waiter() {
    let (mut ipc, a, _) = setup();
    let p = ipc.port_allocate(a).unwrap();
    ipc.wait_receive(a, p, Waiter(5)).unwrap();
    ipc.wait_receive(a, p, Waiter(5)).unwrap(); // one wait per waiter
    assert_eq!(ipc.blocked(), 1);
    ipc.cancel_wait(Waiter(5));
    assert_eq!(ipc.blocked(), 0);
    let mut fx = Effects::default();
    assert!(
        ipc.send(a, &msg(p, MAKE_SEND, 0, 0, 1, &[]), &mut nomem(), &mut fx)
            .is_queued()
    );
    assert!(fx.wake.is_empty());
    assert_eq!(ipc.wait_receive(a, 0x55, Waiter(5)), Err(RCV_INVALID_NAME));
}

impl Send {
    fn is_queued(&self) -> bool {
        matches!(self, Send::Queued)
    }
}

// ---- default group ----

#[test]
fn default_group_takes_the_oldest_across_enabled_ports() {
    let (mut ipc, a, _) = setup();
    let mut fx = Effects::default();
    assert_eq!(recv(&mut ipc, a, 0).err(), Some(RCV_INVALID_NAME));
    let p1 = ipc.port_allocate(a).unwrap();
    let p2 = ipc.port_allocate(a).unwrap();
    let p3 = ipc.port_allocate(a).unwrap();
    ipc.port_enable(a, p1).unwrap();
    ipc.port_enable(a, p2).unwrap();
    assert_eq!(ipc.port_status(a, p1).unwrap().enabled, 1);
    assert_eq!(recv(&mut ipc, a, 0).err(), Some(0xe));
    for (p, id) in [(p2, 1), (p3, 2), (p1, 3), (p2, 4)] {
        send(&mut ipc, a, &msg(p, MAKE_SEND, 0, 0, id, &[])).unwrap();
    }
    let mut out = [0; 4];
    let n = ipc.port_messages(a, &mut out);
    let mut got = out[..n].to_vec();
    got.sort();
    let mut want = vec![p1, p2];
    want.sort();
    assert_eq!(got, want);
    let order: Vec<(i32, Name)> = (0..3)
        .map(|_| {
            let g = recv(&mut ipc, a, 0).unwrap();
            (g.h.id, g.h.local)
        })
        .collect();
    assert_eq!(order, vec![(1, p2), (3, p1), (4, p2)]);
    assert_eq!(recv(&mut ipc, a, 0).err(), Some(0xe));
    // A group waiter wakes on a message to an enabled port.
    ipc.wait_receive(a, 0, Waiter(4)).unwrap();
    let mut fx2 = Effects::default();
    let _ = ipc.send(a, &msg(p1, MAKE_SEND, 0, 0, 5, &[]), &mut nomem(), &mut fx2);
    assert_eq!(fx2.wake, vec![(Waiter(4), Wake::Message)]);
    recv(&mut ipc, a, 0).unwrap();
    // Emptying the group wakes its waiters; their retry fails.
    ipc.wait_receive(a, 0, Waiter(4)).unwrap();
    ipc.port_disable(a, p1, &mut fx).unwrap();
    assert!(fx.wake.is_empty());
    ipc.port_deallocate(a, p2, &mut fx).unwrap();
    assert_eq!(fx.wake, vec![(Waiter(4), Wake::PortDied)]);
    assert_eq!(recv(&mut ipc, a, 0).err(), Some(RCV_INVALID_NAME));
    assert_eq!(recv(&mut ipc, a, p3).unwrap().h.id, 2);
    check_invariants(&ipc);
}

#[test]
fn enable_needs_a_receive_right() {
    let (mut ipc, a, b) = setup();
    let mut fx = Effects::default();
    let p = ipc.port_allocate(a).unwrap();
    let s = give_send(&mut ipc, a, p, b);
    assert_eq!(ipc.port_enable(b, s), Err(KERN_INVALID_RIGHT));
    assert_eq!(ipc.port_enable(b, 0x4242), Err(KERN_INVALID_NAME));
    assert_eq!(ipc.port_disable(b, s, &mut fx), Err(KERN_INVALID_RIGHT));
    assert_eq!(
        ipc.port_set_backlog(b, s, 2, &mut fx),
        Err(KERN_INVALID_RIGHT)
    );
    assert_eq!(recv(&mut ipc, b, s).err(), Some(RCV_INVALID_NAME));
}

// ---- too large ----

#[test]
fn too_large_with_and_without_large() {
    let (mut ipc, a, _) = setup();
    let mut fx = Effects::default();
    let p = ipc.port_allocate(a).unwrap();
    let q = ipc.port_allocate(a).unwrap();
    let m = msg(
        p,
        MAKE_SEND,
        0,
        0,
        1,
        &[It::Inline(vec![1; 40]), It::Ports(MOVE_RECEIVE, vec![q])],
    );
    send(&mut ipc, a, &m).unwrap();
    let need = m.len();
    let r = ipc.receive(a, p, 32, true, &mut fx);
    assert!(
        matches!(r, Recv::TooLarge { size } if size == need),
        "{r:?}"
    );
    assert_eq!(ipc.port_status(a, p).unwrap().num_msgs, 1);
    assert_eq!(ipc.port_status(a, p).unwrap().seqno, 0);
    // Without `large` the message is destroyed, and the port it carried dies.
    assert_eq!(ipc.live_ports(), 2);
    let r = ipc.receive(a, p, 32, false, &mut fx);
    assert!(
        matches!(r, Recv::TooLarge { size } if size == need),
        "{r:?}"
    );
    assert_eq!(ipc.port_status(a, p).unwrap().num_msgs, 0);
    assert_eq!(ipc.live_ports(), 1);
    assert_eq!(ipc.live_kmsgs(), 0);
    check_invariants(&ipc);
    // A copyout buffer that is too small fails and destroys the message.
    send(
        &mut ipc,
        a,
        &msg(p, MAKE_SEND, 0, 0, 1, &[It::Inline(vec![1; 40])]),
    )
    .unwrap();
    let Recv::Message(k) = ipc.receive(a, p, 4096, false, &mut fx) else {
        panic!()
    };
    let mut buf = [0u8; 16];
    assert_eq!(
        ipc.copyout(a, k, &mut buf, &mut Sink::default(), &mut fx),
        Err(RCV_INVALID_DATA)
    );
    assert_eq!(ipc.live_kmsgs(), 0);
}

// ---- validation ----

fn raw_item(kind: u8, disp: u8, reserved: u16, count: u32, addr: u64) -> Vec<u8> {
    ItemHeader {
        kind,
        disp,
        reserved,
        count,
        addr,
    }
    .to_bytes()
    .to_vec()
}

fn with_body(remote: Name, bits: u32, body: &[u8]) -> Vec<u8> {
    let h = Header {
        bits,
        size: (HEADER_SIZE + body.len()) as u32,
        remote,
        local: 0,
        seqno: 0,
        id: 0,
    };
    let mut m = h.to_bytes().to_vec();
    m.extend_from_slice(body);
    m
}

#[test]
fn malformed_messages_fail_and_change_nothing() {
    let (mut ipc, a, _) = setup();
    let p = ipc.port_allocate(a).unwrap();
    let q = ipc.port_allocate(a).unwrap();
    let cx = Header::bits(MAKE_SEND, 0) | BITS_COMPLEX;
    let plain = Header::bits(MAKE_SEND, 0);
    let ports = |disp, n: u32, names: &[Name]| {
        let mut v = raw_item(ITEM_PORTS, disp, 0, n, 0);
        names
            .iter()
            .for_each(|x| v.extend_from_slice(&x.to_le_bytes()));
        pad8(&mut v);
        v
    };
    let cases: Vec<(Vec<u8>, u32)> = vec![
        (vec![0; 16], SEND_MSG_TOO_SMALL),
        (
            {
                let mut m = with_body(p, plain, &[]);
                m[4] = 32; // size ≠ send_size
                m
            },
            SEND_MSG_TOO_SMALL,
        ),
        (
            {
                let mut m = with_body(p, plain, &[0; 4]);
                m[4] = 28;
                m
            },
            SEND_MSG_TOO_SMALL,
        ),
        (
            with_body(p, plain, &vec![0; MSG_SIZE_MAX as usize]),
            SEND_TOO_LARGE,
        ),
        (with_body(p, plain | 1 << 20, &[]), SEND_INVALID_TYPE),
        (
            with_body(p, plain, &raw_item(9, 0, 0, 0, 0)),
            SEND_INVALID_TYPE,
        ),
        (
            with_body(p, plain, &raw_item(0, 0, 0, 0, 0)),
            SEND_INVALID_TYPE,
        ),
        (
            with_body(p, plain, &raw_item(ITEM_INLINE, 0, 1, 0, 0)),
            SEND_INVALID_TYPE,
        ),
        (
            with_body(p, plain, &raw_item(ITEM_INLINE, 1, 0, 0, 0)),
            SEND_INVALID_TYPE,
        ),
        (
            with_body(p, plain, &raw_item(ITEM_INLINE, 0, 0, 0, 8)),
            SEND_INVALID_TYPE,
        ),
        (
            with_body(p, plain, &raw_item(ITEM_INLINE, 0, 0, 9, 0)),
            SEND_INVALID_TYPE,
        ),
        (
            with_body(p, plain, &raw_item(ITEM_INLINE, 0, 0, u32::MAX, 0)),
            SEND_INVALID_TYPE,
        ),
        (
            with_body(p, plain, &[1, 0, 0, 0, 0, 0, 0, 0]),
            SEND_INVALID_TYPE,
        ),
        (
            with_body(p, plain, &ports(MAKE_SEND, 1, &[q])),
            SEND_INVALID_TYPE,
        ),
        (
            with_body(p, cx, &ports(MAKE_SEND, 3, &[q])),
            SEND_INVALID_TYPE,
        ),
        (
            with_body(p, cx, &ports(MAKE_SEND, u32::MAX, &[q])),
            SEND_INVALID_TYPE,
        ),
        (with_body(p, cx, &ports(0, 1, &[q])), SEND_INVALID_RIGHT),
        (
            with_body(p, cx, &ports(PORT_RECEIVE + 9, 1, &[q])),
            SEND_INVALID_RIGHT,
        ),
        (
            with_body(
                p,
                cx,
                &[ports(MAKE_SEND, 1, &[q]), raw_item(ITEM_OOL, 4, 0, 0, 0)].concat(),
            ),
            SEND_INVALID_TYPE,
        ),
        (
            with_body(p, plain, &raw_item(ITEM_OOL, 0, 0, 8, 0x1000)),
            SEND_INVALID_TYPE,
        ),
        (
            with_body(p, cx, &raw_item(ITEM_OOL, 0, 0, u32::MAX, 0x1000)),
            SEND_TOO_LARGE,
        ),
        (
            with_body(p, cx, &raw_item(ITEM_OOL, 0, 0, 64, 0x1000)),
            SEND_INVALID_DATA,
        ),
    ];
    let before = snapshot(&ipc, a);
    for (i, (m, want)) in cases.iter().enumerate() {
        assert_eq!(send(&mut ipc, a, m), Err(*want), "case {i}");
        assert_eq!(snapshot(&ipc, a), before, "case {i}");
    }
    assert_eq!(ipc.live_kmsgs(), 0);
    assert_eq!(ipc.kmsg_bytes(), 0);
    check_invariants(&ipc);
}

#[test]
fn rights_not_held_fail_transactionally() {
    let (mut ipc, a, b) = setup();
    let mut fx = Effects::default();
    let p = ipc.port_allocate(a).unwrap();
    let q = ipc.port_allocate(a).unwrap();
    let r = ipc.port_allocate(a).unwrap();
    let pid = ipc.rights(a, p).unwrap().port;
    let s = ipc.insert_send(a, pid).unwrap(); // one send ref on p's name
    let _ = b;
    let stale = ipc.port_allocate(a).unwrap();
    ipc.port_deallocate(a, stale, &mut fx).unwrap();
    let before = snapshot(&ipc, a);
    let bad: Vec<(Vec<It>, u32)> = vec![
        // q has no send right to move or copy.
        (vec![It::Ports(MOVE_SEND, vec![q])], SEND_INVALID_RIGHT),
        (vec![It::Ports(COPY_SEND, vec![q])], SEND_INVALID_RIGHT),
        (vec![It::Ports(MOVE_SEND_ONCE, vec![q])], SEND_INVALID_RIGHT),
        // Stale and bogus names.
        (vec![It::Ports(MAKE_SEND, vec![stale])], SEND_INVALID_RIGHT),
        (
            vec![It::Ports(MAKE_SEND, vec![0xdead_0001])],
            SEND_INVALID_RIGHT,
        ),
        // Moving one ref twice; the good move before the bad one is undone.
        (vec![It::Ports(MOVE_SEND, vec![s, s])], SEND_INVALID_RIGHT),
        (
            vec![
                It::Ports(MOVE_RECEIVE, vec![q]),
                It::Ports(MOVE_RECEIVE, vec![q]),
            ],
            SEND_INVALID_RIGHT,
        ),
        (
            vec![
                It::Ports(MOVE_RECEIVE, vec![r, q]),
                It::Ports(MAKE_SEND, vec![q]),
            ],
            SEND_INVALID_RIGHT,
        ),
        (
            vec![It::Ports(MOVE_SEND, vec![s]), It::Ports(COPY_SEND, vec![s])],
            SEND_INVALID_RIGHT,
        ),
        // The receive right of the destination itself (a cycle).
        (vec![It::Ports(MOVE_RECEIVE, vec![p])], SEND_INVALID_RIGHT),
    ];
    for (i, (items, want)) in bad.iter().enumerate() {
        assert_eq!(
            send(&mut ipc, a, &msg(p, MAKE_SEND, 0, 0, 1, items)),
            Err(*want),
            "case {i}"
        );
        assert_eq!(snapshot(&ipc, a), before, "case {i}");
        check_invariants(&ipc);
    }
    // The destination's own last ref moved as dest and again in an item.
    assert_eq!(
        send(
            &mut ipc,
            a,
            &msg(s, MOVE_SEND, 0, 0, 1, &[It::Ports(MOVE_SEND, vec![s])])
        ),
        Err(SEND_INVALID_RIGHT)
    );
    assert_eq!(snapshot(&ipc, a), before);
    // NULL and DEAD names are carried as such.
    send(
        &mut ipc,
        a,
        &msg(
            p,
            MAKE_SEND,
            0,
            0,
            1,
            &[It::Ports(MOVE_SEND, vec![0, PORT_DEAD])],
        ),
    )
    .unwrap();
    assert_eq!(recv(&mut ipc, a, p).unwrap().names(), vec![0, PORT_DEAD]);
    check_invariants(&ipc);
}

#[test]
fn receive_right_cycles_are_refused() {
    let (mut ipc, a, _) = setup();
    let p = ipc.port_allocate(a).unwrap();
    let q = ipc.port_allocate(a).unwrap();
    // p's receive right goes into q's queue: fine.
    send(
        &mut ipc,
        a,
        &msg(q, MAKE_SEND, 0, 0, 1, &[It::Ports(MOVE_RECEIVE, vec![p])]),
    )
    .unwrap();
    let pid_name = give_send_self(&mut ipc, a, q);
    let _ = pid_name;
    // Sending q's receive right to p (now in transit inside q) would close
    // the loop q → p → q.
    let mut fx = Effects::default();
    let s = ipc.send(
        a,
        &msg(q, MAKE_SEND, 0, 0, 2, &[It::Ports(MOVE_RECEIVE, vec![q])]),
        &mut nomem(),
        &mut fx,
    );
    assert!(matches!(s, Send::Error(SEND_INVALID_RIGHT)), "{s:?}");
    check_invariants(&ipc);
    let mut fx = Effects::default();
    ipc.space_destroy(a, &mut fx);
    assert_eq!((ipc.live_ports(), ipc.live_kmsgs()), (0, 0));
}

fn give_send_self(ipc: &mut Ipc, a: SpaceId, q: Name) -> Name {
    let id = ipc.rights(a, q).unwrap().port;
    ipc.insert_send(a, id).unwrap()
}

#[test]
fn receive_right_cycle_through_transit_is_refused() {
    let (mut ipc, a, _) = setup();
    let p = ipc.port_allocate(a).unwrap();
    let q = ipc.port_allocate(a).unwrap();
    let pid = ipc.rights(a, p).unwrap().port;
    let to_p = ipc.insert_send(a, pid).unwrap();
    assert_eq!(to_p, p);
    // p's receive right into q.
    send(
        &mut ipc,
        a,
        &msg(q, MAKE_SEND, 0, 0, 1, &[It::Ports(MOVE_RECEIVE, vec![p])]),
    )
    .unwrap();
    // Now q's receive right into p: p lives in q's queue → cycle.
    let before = snapshot(&ipc, a);
    assert_eq!(
        send(
            &mut ipc,
            a,
            &msg(p, COPY_SEND, 0, 0, 2, &[It::Ports(MOVE_RECEIVE, vec![q])])
        ),
        Err(SEND_INVALID_RIGHT)
    );
    assert_eq!(snapshot(&ipc, a), before);
    // Messages to the in-transit port still queue.
    send(&mut ipc, a, &msg(p, COPY_SEND, 0, 0, 3, &[])).unwrap();
    let g = recv(&mut ipc, a, q).unwrap();
    let np = g.names()[0];
    assert_eq!(np, p, "the receive right rejoins its send name");
    assert_eq!(recv(&mut ipc, a, np).unwrap().h.id, 3);
    check_invariants(&ipc);
}

// ---- bounds ----

#[test]
fn name_exhaustion_then_service() {
    let (mut ipc, a, _) = setup();
    let mut fx = Effects::default();
    let names: Vec<Name> = (0..16).map(|_| ipc.port_allocate(a).unwrap()).collect();
    assert_eq!(ipc.port_allocate(a), Err(KERN_NO_SPACE));
    assert_eq!(ipc.live_ports(), 16);
    // A right arriving into a full space is dropped: PORT_NULL.
    send(
        &mut ipc,
        a,
        &msg(
            names[0],
            MAKE_SEND,
            names[1],
            MAKE_SEND_ONCE,
            1,
            &[It::Ports(MAKE_SEND_ONCE, vec![names[2]])],
        ),
    )
    .unwrap();
    let g = recv(&mut ipc, a, names[0]).unwrap();
    assert_eq!((g.h.remote, g.h.bits & 0xff), (0, 0));
    assert_eq!(g.names(), vec![0]);
    check_invariants(&ipc);
    ipc.port_deallocate(a, names[3], &mut fx).unwrap();
    ipc.port_allocate(a).unwrap();
    check_invariants(&ipc);
}

#[test]
fn port_and_space_exhaustion_then_service() {
    let mut ipc = Ipc::new(Limits {
        ports_total: 3,
        spaces_total: 2,
        ..small()
    });
    let mut fx = Effects::default();
    let a = ipc.space_create().unwrap();
    let b = ipc.space_create().unwrap();
    assert_eq!(ipc.space_create(), Err(KERN_RESOURCE_SHORTAGE));
    let n: Vec<Name> = (0..3).map(|_| ipc.port_allocate(a).unwrap()).collect();
    assert_eq!(ipc.port_allocate(b), Err(KERN_RESOURCE_SHORTAGE));
    assert_eq!(
        ipc.kernel_port(KObject::Task(1)),
        Err(KERN_RESOURCE_SHORTAGE)
    );
    assert_eq!(ipc.names(b), vec![]);
    ipc.port_deallocate(a, n[0], &mut fx).unwrap();
    ipc.port_allocate(b).unwrap();
    ipc.space_destroy(a, &mut fx);
    ipc.space_create().unwrap();
    assert_eq!(ipc.live_ports(), 1);
}

#[test]
fn queued_message_bound_then_service() {
    let mut ipc = Ipc::new(Limits {
        queued_per_space: 3,
        ..small()
    });
    let mut fx = Effects::default();
    let a = ipc.space_create().unwrap();
    let b = ipc.space_create().unwrap();
    let p = ipc.port_allocate(a).unwrap();
    let q = ipc.port_allocate(a).unwrap();
    ipc.port_set_backlog(a, p, 64, &mut fx).unwrap();
    let s = give_send(&mut ipc, a, p, b);
    let t = give_send(&mut ipc, a, q, b);
    for _ in 0..3 {
        send(&mut ipc, b, &msg(s, COPY_SEND, 0, 0, 1, &[])).unwrap();
    }
    // The bound is per sender, across ports.
    let before = snapshot(&ipc, b);
    assert_eq!(
        send(&mut ipc, b, &msg(t, COPY_SEND, 0, 0, 1, &[])),
        Err(SEND_NO_BUFFER)
    );
    assert_eq!(snapshot(&ipc, b), before);
    // Others still can send.
    send(&mut ipc, a, &msg(p, MAKE_SEND, 0, 0, 1, &[])).unwrap();
    recv(&mut ipc, a, p).unwrap();
    send(&mut ipc, b, &msg(t, COPY_SEND, 0, 0, 1, &[])).unwrap();
    check_invariants(&ipc);
}

#[test]
fn kernel_memory_and_ool_bounds_then_service() {
    let mut ipc = Ipc::new(Limits {
        kmsg_bytes_total: 1200,
        ..small()
    });
    let mut fx = Effects::default();
    let a = ipc.space_create().unwrap();
    let p = ipc.port_allocate(a).unwrap();
    ipc.port_set_backlog(a, p, 64, &mut fx).unwrap();
    let big = msg(p, MAKE_SEND, 0, 0, 1, &[It::Inline(vec![7; 400])]);
    send(&mut ipc, a, &big).unwrap();
    send(&mut ipc, a, &big).unwrap();
    assert_eq!(send(&mut ipc, a, &big), Err(SEND_NO_BUFFER));
    recv(&mut ipc, a, p).unwrap();
    send(&mut ipc, a, &big).unwrap();
    recv(&mut ipc, a, p).unwrap();
    recv(&mut ipc, a, p).unwrap();
    // Out-of-line: per space in flight (4096 here).
    let mut mem = Mem {
        base: 0x1000,
        data: (0..=255).cycle().take(3000).collect(),
        ..Mem::default()
    };
    let q = ipc.port_allocate(a).unwrap();
    let ool = msg(
        q,
        MAKE_SEND,
        0,
        0,
        2,
        &[It::Ool(OOL_DEALLOCATE, 0x1000, 3000)],
    );
    assert!(ipc.send(a, &ool, &mut mem, &mut fx).is_queued());
    assert_eq!(mem.freed, vec![(0x1000, 3000)]);
    assert!(matches!(
        ipc.send(a, &ool, &mut mem, &mut fx),
        Send::Error(SEND_NO_BUFFER)
    ));
    let Recv::Message(k) = ipc.receive(a, q, 4096, false, &mut fx) else {
        panic!()
    };
    let mut buf = vec![0; 4096];
    let mut sink = Sink::default();
    let n = ipc.copyout(a, k, &mut buf, &mut sink, &mut fx).unwrap();
    let g = Got {
        h: Header::from_bytes(&buf).unwrap(),
        bytes: buf[..n].to_vec(),
    };
    let (ih, _) = g.items()[0].clone();
    assert_eq!((ih.kind, ih.count, ih.addr), (ITEM_OOL, 3000, 0x10_0000));
    assert_eq!(sink.placed[0], mem.data);
    assert!(ipc.send(a, &ool, &mut mem, &mut fx).is_queued());
    // A sink out of memory: the item arrives with no region.
    let Recv::Message(k) = ipc.receive(a, q, 4096, false, &mut fx) else {
        panic!()
    };
    let full = &mut Sink {
        full: true,
        ..Sink::default()
    };
    ipc.copyout(a, k, &mut buf, full, &mut fx).unwrap();
    let ih = ItemHeader::from_bytes(&buf[HEADER_SIZE..]).unwrap();
    assert_eq!((ih.count, ih.addr), (0, 0));
    check_invariants(&ipc);
}

// ---- space death ----

#[test]
fn space_destroy_wakes_blocked_receivers_and_kills_its_ports() {
    let (mut ipc, a, b) = setup();
    let mut fx = Effects::default();
    let p = ipc.port_allocate(a).unwrap();
    let g = ipc.port_allocate(a).unwrap();
    ipc.port_enable(a, g).unwrap();
    let s = give_send(&mut ipc, a, p, b);
    let inbox = ipc.port_allocate(b).unwrap();
    let to_b = give_send(&mut ipc, b, inbox, a);
    // a's message to b carries a MAKE_SEND of p; a's port p holds b's
    // message carrying the receive right of another port of b.
    send(
        &mut ipc,
        a,
        &msg(to_b, COPY_SEND, 0, 0, 1, &[It::Ports(MAKE_SEND, vec![p])]),
    )
    .unwrap();
    let bq = ipc.port_allocate(b).unwrap();
    send(
        &mut ipc,
        b,
        &msg(s, COPY_SEND, 0, 0, 1, &[It::Ports(MOVE_RECEIVE, vec![bq])]),
    )
    .unwrap();
    ipc.wait_receive(a, p, Waiter(1)).unwrap();
    ipc.wait_receive(a, 0, Waiter(2)).unwrap();
    let ports_before = ipc.live_ports();
    ipc.space_destroy(a, &mut fx);
    let mut woken = fx.wake.clone();
    woken.sort_by_key(|(w, _)| w.0);
    assert_eq!(
        woken,
        vec![(Waiter(1), Wake::PortDied), (Waiter(2), Wake::PortDied)]
    );
    assert_eq!(ipc.blocked(), 0);
    assert_eq!(
        ipc.live_ports(),
        ports_before - 3,
        "p, g and bq (in p's queue) died"
    );
    assert_eq!(ipc.rights(b, s).unwrap().dead, 1);
    // a's message to b survives a; its right to the dead p arrives dead.
    let got = recv(&mut ipc, b, inbox).unwrap();
    assert_eq!(got.names(), vec![PORT_DEAD]);
    assert_eq!(
        send(&mut ipc, a, &msg(to_b, COPY_SEND, 0, 0, 1, &[])),
        Err(SEND_INVALID_DEST)
    );
    assert_eq!(ipc.port_allocate(a), Err(KERN_INVALID_ARGUMENT));
    check_invariants(&ipc);
    ipc.space_destroy(b, &mut fx);
    assert_eq!(
        (ipc.live_ports(), ipc.live_kmsgs(), ipc.kmsg_bytes()),
        (0, 0, 0)
    );
}

// ---- kernel objects and kernel messages ----

#[test]
fn kernel_object_ports() {
    let (mut ipc, a, b) = setup();
    let mut fx = Effects::default();
    let tp = ipc.kernel_port(KObject::Task(7)).unwrap();
    assert_eq!(ipc.kobject(tp), Some(KObject::Task(7)));
    let n = ipc.insert_send(a, tp).unwrap();
    assert_eq!(ipc.insert_send(a, tp), Ok(n));
    assert_eq!(ipc.rights(a, n).unwrap().send, 2);
    assert_eq!(ipc.resolve_send(a, n), Ok(tp));
    let reply = ipc.port_allocate(a).unwrap();
    let r = ipc.send(
        a,
        &msg(
            n,
            COPY_SEND,
            reply,
            MAKE_SEND_ONCE,
            1044,
            &[It::Inline(vec![1, 2, 3])],
        ),
        &mut nomem(),
        &mut fx,
    );
    let Send::ToKernel(k) = r else {
        panic!("{r:?}")
    };
    assert_eq!((k.id(), k.inline()), (1044, Some(&[1u8, 2, 3][..])));
    let rp = k.reply_port().unwrap();
    ipc.kernel_send(rp, 1144, &[], &0i32.to_le_bytes(), None, &mut fx)
        .unwrap();
    ipc.kmsg_destroy(k, &mut fx);
    let g = recv(&mut ipc, a, reply).unwrap();
    assert_eq!(g.h.id, 1144);
    check_invariants(&ipc);
    // The task dies: holders get dead names and their notifications.
    let bn = ipc.insert_send(b, tp).unwrap();
    let notify = ipc.port_allocate(b).unwrap();
    ipc.request_dead_name(b, bn, notify, &mut fx).unwrap();
    ipc.destroy_kernel_port(tp, &mut fx);
    assert_eq!(ipc.resolve_send(a, n), Err(KERN_TERMINATED));
    assert_eq!(ipc.rights(a, n).unwrap().dead, 2);
    assert_eq!(ipc.kobject(tp), None);
    assert_eq!(
        recv(&mut ipc, b, notify).unwrap().items()[0].1[..4],
        bn.to_le_bytes()
    );
    assert_eq!(ipc.insert_send(a, tp), Err(KERN_INVALID_ARGUMENT));
    check_invariants(&ipc);
}

#[test]
fn exception_message_and_kernel_reply_port() {
    let (mut ipc, a, _) = setup();
    let mut fx = Effects::default();
    let exc = ipc.port_allocate(a).unwrap();
    let excp = ipc.rights(a, exc).unwrap().port;
    let thread = ipc.kernel_port(KObject::Thread(3)).unwrap();
    let task = ipc.kernel_port(KObject::Task(1)).unwrap();
    let kreply = ipc.kernel_port_allocate().unwrap();
    let info = [0x0e_u8; 32];
    ipc.kernel_send(
        excp,
        EXCEPTION_RAISE,
        &[(thread, PORT_SEND), (task, PORT_SEND)],
        &info,
        Some(kreply),
        &mut fx,
    )
    .unwrap();
    ipc.wait_kernel(kreply, Waiter(77)).unwrap();
    let g = recv(&mut ipc, a, exc).unwrap();
    assert_eq!(g.h.id, EXCEPTION_RAISE);
    assert_eq!(g.h.bits & 0xff, u32::from(PORT_SEND_ONCE));
    let names = g.names();
    assert_eq!(ipc.resolve_send(a, names[0]), Ok(thread));
    assert_eq!(ipc.resolve_send(a, names[1]), Ok(task));
    assert_eq!(g.items()[1].1, info);
    check_invariants(&ipc);
    let mut fx = Effects::default();
    send(
        &mut ipc,
        a,
        &msg(
            g.h.remote,
            MOVE_SEND_ONCE,
            0,
            0,
            EXCEPTION_REPLY,
            &[It::Inline(0i32.to_le_bytes().to_vec())],
        ),
    )
    .unwrap_or_else(|e| panic!("{e:x}"));
    let mut fx2 = Effects::default();
    let _ = ipc.send(
        a,
        &msg(exc, MAKE_SEND, 0, 0, 1, &[]),
        &mut nomem(),
        &mut fx2,
    );
    let k = ipc.kernel_receive(kreply, &mut fx).unwrap();
    assert_eq!((k.id(), k.inline()), (EXCEPTION_REPLY, Some(&[0u8; 4][..])));
    ipc.kmsg_destroy(k, &mut fx);
    assert!(ipc.kernel_receive(kreply, &mut fx).is_none());
    assert!(
        ipc.kernel_receive(excp, &mut fx).is_none(),
        "not a kernel port"
    );
    assert_eq!(
        ipc.kernel_send(PortId::NONE, 1, &[], &[], None, &mut fx),
        Err(SEND_INVALID_DEST)
    );
    check_invariants(&ipc);
}

#[test]
fn kernel_receive_port_wakes_the_waiter() {
    let (mut ipc, a, _) = setup();
    let kp = ipc.kernel_port_allocate().unwrap();
    let n = ipc.insert_send(a, kp).unwrap();
    ipc.wait_kernel(kp, Waiter(8)).unwrap();
    let mut fx = Effects::default();
    assert!(
        ipc.send(a, &msg(n, COPY_SEND, 0, 0, 5, &[]), &mut nomem(), &mut fx)
            .is_queued()
    );
    assert_eq!(fx.wake, vec![(Waiter(8), Wake::Message)]);
    let k = ipc.kernel_receive(kp, &mut fx).unwrap();
    ipc.kmsg_destroy(k, &mut fx);
    ipc.destroy_kernel_port(kp, &mut fx);
    assert_eq!(ipc.rights(a, n).unwrap().dead, 1);
    check_invariants(&ipc);
}

// ---- out-of-line regions as copy-on-write snapshots ----

fn ool_limits() -> Limits {
    Limits {
        ool_bytes_per_space: 8 * PAGE,
        ool_bytes_total: 12 * PAGE,
        ool_copied_per_space: 4096,
        ool_copied_total: 8192,
        ..small()
    }
}

fn send_from(ipc: &mut Ipc, s: SpaceId, m: &[u8], mem: &mut Mem) -> Result<(), u32> {
    let mut fx = Effects::default();
    match ipc.send(s, m, mem, &mut fx) {
        Send::Queued => Ok(()),
        Send::Error(e) => Err(e),
        Send::Full { .. } => Err(0xf011),
        Send::ToKernel(k) => {
            ipc.kmsg_destroy(k, &mut fx);
            Err(0xce11)
        }
    }
}

fn recv_into(ipc: &mut Ipc, s: SpaceId, name: Name, sink: &mut Sink) -> Result<Got, u32> {
    let mut fx = Effects::default();
    match ipc.receive(s, name, 4096, false, &mut fx) {
        Recv::Message(k) => {
            let mut buf = vec![0u8; 4096];
            let n = ipc.copyout(s, k, &mut buf, sink, &mut fx)?;
            buf.truncate(n);
            Ok(Got {
                h: Header::from_bytes(&buf).unwrap(),
                bytes: buf,
            })
        }
        Recv::Empty => Err(0xe),
        Recv::TooLarge { .. } => Err(RCV_TOO_LARGE),
        Recv::Error(e) => Err(e),
    }
}

/// Every handle released since the last call, in order.
fn released(ipc: &mut Ipc) -> Vec<u64> {
    let mut v = Vec::new();
    while let Some(h) = ipc.take_released() {
        v.push(h);
    }
    v.sort();
    v
}

/// (count, addr) of every OOL item received.
fn ool_items(g: &Got) -> Vec<(u32, u64)> {
    g.items()
        .iter()
        .filter(|(h, _)| h.kind == ITEM_OOL)
        .map(|(h, _)| (h.count, h.addr))
        .collect()
}

#[test]
fn ool_regions_go_as_snapshots_unless_copied() {
    let mut ipc = Ipc::new(ool_limits());
    let a = ipc.space_create().unwrap();
    let b = ipc.space_create().unwrap();
    let p = ipc.port_allocate(b).unwrap();
    let s = give_send(&mut ipc, b, p, a);
    let mut mem = cow_mem(6 * PAGE as usize);
    // 5000 bytes from 0x1010 lie in two pages; the physical copy is read.
    let m = msg(
        s,
        COPY_SEND,
        0,
        0,
        9,
        &[
            It::Inline(vec![1, 2, 3]),
            It::Ool(OOL_DEALLOCATE, 0x1010, 5000),
            It::Ool(OOL_PHYSICAL_COPY, 0x1000, 100),
            It::Ool(0, 0x1000, 0),
        ],
    );
    send_from(&mut ipc, a, &m, &mut mem).unwrap();
    assert_eq!(mem.taken, vec![(1, 0x1010, 5000)]);
    assert_eq!(mem.reads, 2, "the copy and the empty region are read");
    assert_eq!(mem.freed, vec![(0x1010, 5000)]);
    assert_eq!(ipc.snapshots_held(), 1);
    assert_eq!(ipc.ool_bytes(), 2 * PAGE + 100);
    check_invariants(&ipc);
    let mut sink = Sink::default();
    let g = recv_into(&mut ipc, b, p, &mut sink).unwrap();
    assert_eq!(sink.mapped, vec![1]);
    assert_eq!(sink.placed, vec![mem.data[..100].to_vec(), vec![]]);
    assert_eq!(
        ool_items(&g),
        vec![(5000, 0x8010_0000), (100, 0x10_0000), (0, 0x20_0000)]
    );
    assert_eq!((ipc.snapshots_held(), ipc.ool_bytes()), (0, 0));
    assert!(!ipc.has_released(), "a placed snapshot is the receiver's");
    check_invariants(&ipc);
}

#[test]
fn snapshots_of_messages_never_received_are_released() {
    let mut ipc = Ipc::new(ool_limits());
    let mut fx = Effects::default();
    let a = ipc.space_create().unwrap();
    let b = ipc.space_create().unwrap();
    let mut mem = cow_mem(8 * PAGE as usize);
    let ool = |dest: Name| msg(dest, COPY_SEND, 0, 0, 1, &[It::Ool(0, 0x1000, 4096)]);
    let mut all = Vec::new();
    let mut gone = |ipc: &mut Ipc, want: usize| {
        let r = released(ipc);
        assert_eq!(r.len(), want, "released {r:?}");
        all.extend(r);
        check_invariants(ipc);
    };
    // Port death: both queued messages go.
    let p = ipc.port_allocate(b).unwrap();
    let sp = give_send(&mut ipc, b, p, a);
    send_from(&mut ipc, a, &ool(sp), &mut mem).unwrap();
    send_from(&mut ipc, a, &ool(sp), &mut mem).unwrap();
    assert_eq!(ipc.snapshots_held(), 2);
    gone(&mut ipc, 0);
    ipc.port_deallocate(b, p, &mut fx).unwrap();
    gone(&mut ipc, 2);
    // RCV_TOO_LARGE: with RCV_LARGE it stays queued, without it goes.
    let q = ipc.port_allocate(b).unwrap();
    let sq = give_send(&mut ipc, b, q, a);
    send_from(&mut ipc, a, &ool(sq), &mut mem).unwrap();
    assert!(matches!(
        ipc.receive(b, q, HEADER_SIZE, true, &mut fx),
        Recv::TooLarge { .. }
    ));
    gone(&mut ipc, 0);
    assert!(matches!(
        ipc.receive(b, q, HEADER_SIZE, false, &mut fx),
        Recv::TooLarge { .. }
    ));
    gone(&mut ipc, 1);
    // A receive buffer too small for copyout (RCV_INVALID_DATA).
    send_from(&mut ipc, a, &ool(sq), &mut mem).unwrap();
    let Recv::Message(k) = ipc.receive(b, q, 4096, false, &mut fx) else {
        panic!()
    };
    let mut tiny = [0u8; HEADER_SIZE];
    assert_eq!(
        ipc.copyout(b, k, &mut tiny, &mut Sink::default(), &mut fx),
        Err(RCV_INVALID_DATA)
    );
    gone(&mut ipc, 1);
    // A receiver that cannot map it gets no region; the snapshot goes.
    send_from(&mut ipc, a, &ool(sq), &mut mem).unwrap();
    let full = &mut Sink {
        full: true,
        ..Sink::default()
    };
    let g = recv_into(&mut ipc, b, q, full).unwrap();
    assert_eq!(ool_items(&g), vec![(0, 0)]);
    gone(&mut ipc, 1);
    // A port whose receive right travels in a queued message dies with
    // that message, and its own queued messages with it.
    let r = ipc.port_allocate(a).unwrap();
    let sr = ipc.insert_send(a, ipc.rights(a, r).unwrap().port).unwrap();
    send_from(&mut ipc, a, &ool(sr), &mut mem).unwrap();
    let carry = msg(
        sq,
        COPY_SEND,
        0,
        0,
        2,
        &[It::Ports(MOVE_RECEIVE, vec![r]), It::Ool(0, 0x2000, 10)],
    );
    send_from(&mut ipc, a, &carry, &mut mem).unwrap();
    assert_eq!(ipc.snapshots_held(), 2);
    gone(&mut ipc, 0);
    // The task holding the receive right for q dies with both queued.
    ipc.space_destroy(b, &mut fx);
    gone(&mut ipc, 2);
    // A message the kernel serves is destroyed once served.
    let kp = ipc.kernel_port(KObject::Task(7)).unwrap();
    let sk = ipc.insert_send(a, kp).unwrap();
    let Send::ToKernel(k) = ipc.send(a, &ool(sk), &mut mem, &mut fx) else {
        panic!()
    };
    assert_eq!(ipc.snapshots_held(), 1);
    ipc.kmsg_destroy(k, &mut fx);
    gone(&mut ipc, 1);
    // Every snapshot taken was released exactly once.
    let taken: Vec<u64> = mem.taken.iter().map(|t| t.0).collect();
    all.sort();
    assert_eq!(all, taken);
    assert_eq!((ipc.snapshots_held(), ipc.ool_bytes()), (0, 0));
    assert_eq!(ipc.live_kmsgs(), 0);
}

#[test]
fn a_failed_send_releases_the_snapshots_it_took() {
    let mut ipc = Ipc::new(ool_limits());
    let a = ipc.space_create().unwrap();
    let p = ipc.port_allocate(a).unwrap();
    let mut mem = cow_mem(4 * PAGE as usize);
    let before = snapshot(&ipc, a);
    // The second region cannot be read (outside the memory, so copied).
    let bad = msg(
        p,
        MAKE_SEND,
        0,
        0,
        1,
        &[
            It::Ool(OOL_DEALLOCATE, 0x1000, 100),
            It::Ool(0, 0x9_0000, 100),
        ],
    );
    assert_eq!(
        send_from(&mut ipc, a, &bad, &mut mem),
        Err(SEND_INVALID_DATA)
    );
    assert_eq!(released(&mut ipc), vec![1]);
    assert!(mem.freed.is_empty(), "a failed send deallocated");
    // Rights are checked before any snapshot is taken.
    let bad_right = msg(
        p,
        MAKE_SEND,
        0,
        0,
        1,
        &[It::Ool(0, 0x1000, 100), It::Ports(MOVE_SEND, vec![0x4242])],
    );
    assert_eq!(
        send_from(&mut ipc, a, &bad_right, &mut mem),
        Err(SEND_INVALID_RIGHT)
    );
    assert_eq!(mem.taken.len(), 1);
    assert_eq!(snapshot(&ipc, a), before);
    assert_eq!((ipc.snapshots_held(), ipc.ool_bytes()), (0, 0));
    check_invariants(&ipc);
}

#[test]
fn snapshots_count_their_pages_in_flight_and_copies_their_own_bounds() {
    let mut ipc = Ipc::new(ool_limits()); // 8 pages per space, 4 KiB copied
    let mut fx = Effects::default();
    let a = ipc.space_create().unwrap();
    let b = ipc.space_create().unwrap();
    let p = ipc.port_allocate(a).unwrap();
    ipc.port_set_backlog(a, p, 64, &mut fx).unwrap();
    let mut mem = cow_mem(16 * PAGE as usize);
    let one =
        |disp: u8, addr: u64, len: u32| msg(p, MAKE_SEND, 0, 0, 1, &[It::Ool(disp, addr, len)]);
    // One byte counts its whole page; then 6 pages: 7 of 8 in flight.
    send_from(&mut ipc, a, &one(0, 0x1fff, 1), &mut mem).unwrap();
    assert_eq!(ipc.ool_bytes(), PAGE);
    send_from(&mut ipc, a, &one(0, 0x2000, 6 * PAGE as u32), &mut mem).unwrap();
    // Two bytes fit as sent, but they straddle two pages: no room now
    // (the snapshot is released, the sender keeps its range).
    assert_eq!(
        send_from(&mut ipc, a, &one(OOL_DEALLOCATE, 0x1fff, 2), &mut mem),
        Err(SEND_NO_BUFFER)
    );
    assert_eq!(released(&mut ipc), vec![3]);
    assert!(mem.freed.is_empty());
    // Never room: 9 pages as sent.
    let taken = mem.taken.len();
    assert_eq!(
        send_from(&mut ipc, a, &one(0, 0x1000, 9 * PAGE as u32), &mut mem),
        Err(SEND_TOO_LARGE)
    );
    assert_eq!(mem.taken.len(), taken, "refused before any snapshot");
    // Copies: 4 KiB per space. A copy of 4 KiB + 1 never fits; the same
    // bytes as a snapshot do (in another space, which has room).
    let q = ipc.port_allocate(b).unwrap();
    let sq = give_send(&mut ipc, b, q, a);
    let _ = sq;
    let bq = |disp: u8, len: u32| msg(q, MAKE_SEND, 0, 0, 1, &[It::Ool(disp, 0x1000, len)]);
    assert_eq!(
        send_from(&mut ipc, b, &bq(OOL_PHYSICAL_COPY, 4097), &mut mem),
        Err(SEND_TOO_LARGE)
    );
    send_from(&mut ipc, b, &bq(0, 4097), &mut mem).unwrap();
    send_from(&mut ipc, b, &bq(OOL_PHYSICAL_COPY, 4096), &mut mem).unwrap();
    assert_eq!(
        send_from(&mut ipc, b, &bq(OOL_PHYSICAL_COPY, 1), &mut mem),
        Err(SEND_NO_BUFFER)
    );
    check_invariants(&ipc);
    // Receiving gives the room back.
    while recv_into(&mut ipc, a, p, &mut Sink::default()).is_ok() {}
    while recv_into(&mut ipc, b, q, &mut Sink::default()).is_ok() {}
    assert_eq!((ipc.snapshots_held(), ipc.ool_bytes()), (0, 0));
    // Never room either: 8 pages from mid-page are 9 once rounded.
    assert_eq!(
        send_from(&mut ipc, a, &one(0, 0x1800, 8 * PAGE as u32), &mut mem),
        Err(SEND_TOO_LARGE)
    );
    assert_eq!(released(&mut ipc).len(), 1);
    send_from(&mut ipc, b, &bq(OOL_PHYSICAL_COPY, 4096), &mut mem).unwrap();
    send_from(&mut ipc, a, &one(0, 0x1000, 8 * PAGE as u32), &mut mem).unwrap();
    check_invariants(&ipc);
}

#[test]
fn a_copy_is_bounded_per_message_a_snapshot_only_in_flight() {
    let mut ipc = Ipc::new(Limits::default());
    let a = ipc.space_create().unwrap();
    let p = ipc.port_allocate(a).unwrap();
    let big = OOL_MAX as usize + 1;
    let mut mem = cow_mem(big);
    let m = |disp: u8| msg(p, MAKE_SEND, 0, 0, 1, &[It::Ool(disp, 0x1000, big as u32)]);
    assert_eq!(
        send_from(&mut ipc, a, &m(OOL_PHYSICAL_COPY), &mut mem),
        Err(SEND_TOO_LARGE)
    );
    assert_eq!(mem.reads, 0);
    send_from(&mut ipc, a, &m(0), &mut mem).unwrap();
    let mut sink = Sink::default();
    let g = recv_into(&mut ipc, a, p, &mut sink).unwrap();
    assert_eq!(ool_items(&g), vec![(big as u32, 0x8010_0000)]);
    check_invariants(&ipc);
}

/// Not a check: `vmm bench ipc`'s null msg_rpc round trip on the pure
/// core (receivers already waiting, as in the kernel), for profiling:
/// `valgrind --tool=callgrind <test binary> --ignored null_rpc_profile`.
#[test]
#[ignore]
fn null_rpc_profile() {
    let (mut ipc, client, server, service, to_service, reply) = rpc_pair();
    let req = msg(to_service, COPY_SEND, reply, MAKE_SEND_ONCE, 7, &[]);
    let mut buf = [0u8; 256];
    let mut fx = Effects::default();
    for _ in 0..2000 {
        ipc.wait_receive(server, service, Waiter(1)).unwrap();
        let mut d = DirectTo {
            waiter: Waiter(1),
            space: server,
            name: service,
            max: 256,
            out: &mut buf,
        };
        assert!(matches!(
            ipc.send_direct(client, &req, &mut d, &mut fx),
            Direct::Delivered { .. }
        ));
        let got = Header::from_bytes(&buf).unwrap();
        ipc.wait_receive(client, reply, Waiter(2)).unwrap();
        let rep = msg(got.remote, MOVE_SEND_ONCE, 0, 0, 8, &[]);
        let mut d = DirectTo {
            waiter: Waiter(2),
            space: client,
            name: reply,
            max: 256,
            out: &mut buf,
        };
        assert!(matches!(
            ipc.send_direct(server, &rep, &mut d, &mut fx),
            Direct::Delivered { .. }
        ));
    }
    check_invariants(&ipc);
}

/// Two identical IPCs: a client with a send right to a server's port and
/// a reply port of its own.
fn rpc_pair() -> (Ipc, SpaceId, SpaceId, Name, Name, Name) {
    let (mut ipc, client, server) = setup();
    let service = ipc.port_allocate(server).unwrap();
    let to_service = give_send(&mut ipc, server, service, client);
    let reply = ipc.port_allocate(client).unwrap();
    (ipc, client, server, service, to_service, reply)
}

/// What a receiver got (or the send's error), and who else was woken.
type RpcSeen = (Result<Vec<u8>, u32>, Vec<(Waiter, Wake)>);

/// The slow path's view of one send to a parked receiver: send, then the
/// receiver's receive and copyout.
fn slow_rpc(ipc: &mut Ipc, from: SpaceId, m: &[u8], to: SpaceId, on: Name, max: usize) -> RpcSeen {
    let mut fx = Effects::default();
    let (mut src, mut sink) = (nomem(), Sink::default());
    match ipc.send(from, m, &mut src, &mut fx) {
        Send::Queued => {}
        Send::Error(e) => return (Err(e), fx.wake),
        other => panic!("{other:?}"),
    }
    let mut wake: Vec<_> = fx
        .wake
        .drain(..)
        .filter(|(_, w)| *w != Wake::Message)
        .collect();
    let Recv::Message(k) = ipc.receive(to, on, max, false, &mut fx) else {
        panic!("nothing received")
    };
    let mut buf = vec![0u8; max];
    let n = ipc.copyout(to, k, &mut buf, &mut sink, &mut fx).unwrap();
    buf.truncate(n);
    wake.extend(fx.wake);
    (Ok(buf), wake)
}

fn fast_rpc(
    ipc: &mut Ipc,
    from: SpaceId,
    m: &[u8],
    to: SpaceId,
    on: Name,
    max: usize,
    w: Waiter,
) -> Option<RpcSeen> {
    let mut fx = Effects::default();
    let mut buf = vec![0u8; 256];
    let mut d = DirectTo {
        waiter: w,
        space: to,
        name: on,
        max,
        out: &mut buf,
    };
    match ipc.send_direct(from, m, &mut d, &mut fx) {
        Direct::Delivered { waiter, size } => {
            assert_eq!(waiter, w);
            buf.truncate(size);
            Some((Ok(buf), fx.wake))
        }
        Direct::Declined => None,
        Direct::Sent(Send::Error(e)) => Some((Err(e), fx.wake)),
        Direct::Sent(other) => panic!("{other:?}"),
    }
}

/// The fast path gives what the slow path gives: the same received bytes,
/// the same names and rights in both spaces, the same counters, over many
/// round trips and every reply disposition; and it declines, changing
/// nothing, where it does not apply.
#[test]
fn send_direct_matches_slow_path() {
    let replies = [MAKE_SEND_ONCE, MAKE_SEND, COPY_SEND, 0];
    for (round, &rdisp) in replies.iter().cycle().take(24).enumerate() {
        let (mut a, client, server, service, to_service, reply) = rpc_pair();
        let (mut b, ..) = rpc_pair();
        let items: Vec<It> = if round % 3 == 1 {
            vec![It::Inline(vec![round as u8; 20])]
        } else {
            vec![]
        };
        let (local, ldisp) = if rdisp == 0 { (0, 0) } else { (reply, rdisp) };
        let req = msg(to_service, COPY_SEND, local, ldisp, 7, &items);
        for step in 0..3 {
            a.wait_receive(server, service, Waiter(1)).unwrap();
            b.wait_receive(server, service, Waiter(1)).unwrap();
            let slow = slow_rpc(&mut a, client, &req, server, service, 256);
            let fast =
                fast_rpc(&mut b, client, &req, server, service, 256, Waiter(1)).expect("declined");
            assert_eq!(slow, fast, "round {round} step {step}");
            // (A COPY_SEND reply needs a send right the client lacks.)
            let Ok(bytes) = slow.0.as_ref() else {
                assert_eq!(slow.0, Err(SEND_INVALID_REPLY));
                a.cancel_wait(Waiter(1));
                b.cancel_wait(Waiter(1));
                continue;
            };
            let got = Header::from_bytes(bytes).unwrap();
            // The server answers on the reply right it got.
            if got.remote != PORT_NULL {
                let rd = if got.bits & 0xff == u32::from(PORT_SEND_ONCE) {
                    MOVE_SEND_ONCE
                } else {
                    COPY_SEND
                };
                let rep = msg(got.remote, rd, 0, 0, 8, &[]);
                a.wait_receive(client, reply, Waiter(2)).unwrap();
                b.wait_receive(client, reply, Waiter(2)).unwrap();
                let slow = slow_rpc(&mut a, server, &rep, client, reply, 256);
                let fast = fast_rpc(&mut b, server, &rep, client, reply, 256, Waiter(2))
                    .expect("declined");
                assert_eq!(slow, fast, "reply, round {round} step {step}");
            }
            for s in [client, server] {
                assert_eq!(a.names(s), b.names(s));
            }
            assert_eq!(
                (a.live_kmsgs(), a.kmsg_bytes(), a.blocked(), a.live_ports()),
                (b.live_kmsgs(), b.kmsg_bytes(), b.blocked(), b.live_ports())
            );
            check_invariants(&a);
            check_invariants(&b);
        }
    }
}

#[test]
fn send_direct_declines_without_changes() {
    let (mut ipc, client, server, service, to_service, reply) = rpc_pair();
    let mut fx = Effects::default();
    let before = (ipc.names(client), ipc.names(server));
    let mut buf = vec![0u8; 256];
    let req = msg(to_service, COPY_SEND, reply, MAKE_SEND_ONCE, 7, &[]);
    // Nobody waiting.
    let mut d = DirectTo {
        waiter: Waiter(1),
        space: server,
        name: service,
        max: 256,
        out: &mut buf,
    };
    assert!(matches!(
        ipc.send_direct(client, &req, &mut d, &mut fx),
        Direct::Declined
    ));
    ipc.wait_receive(server, service, Waiter(1)).unwrap();
    // Another waiter than the first; too small a receiver; the group.
    for (w, max, name) in [
        (Waiter(2), 256, service),
        (Waiter(1), 16, service),
        (Waiter(1), 256, PORT_NULL),
    ] {
        let mut d = DirectTo {
            waiter: w,
            space: server,
            name,
            max,
            out: &mut buf,
        };
        assert!(matches!(
            ipc.send_direct(client, &req, &mut d, &mut fx),
            Direct::Declined
        ));
    }
    // Complex.
    let cx = msg(
        to_service,
        COPY_SEND,
        0,
        0,
        7,
        &[It::Ports(COPY_SEND, vec![to_service])],
    );
    let mut d = DirectTo {
        waiter: Waiter(1),
        space: server,
        name: service,
        max: 256,
        out: &mut buf,
    };
    assert!(matches!(
        ipc.send_direct(client, &cx, &mut d, &mut fx),
        Direct::Declined
    ));
    // Errors are send's errors.
    let bad = msg(to_service ^ 0x100, COPY_SEND, 0, 0, 7, &[]);
    assert!(matches!(
        ipc.send_direct(client, &bad, &mut d, &mut fx),
        Direct::Sent(Send::Error(SEND_INVALID_DEST))
    ));
    assert_eq!((ipc.names(client), ipc.names(server)), before);
    assert_eq!(ipc.blocked(), 1);
    assert!(fx.wake.is_empty());
    check_invariants(&ipc);
}

/// `receive_or_wait` is `receive`, then `wait_receive` on `Empty`.
#[test]
fn receive_or_wait_is_receive_then_wait() {
    let (mut ipc, client, server, service, to_service, _) = rpc_pair();
    let mut fx = Effects::default();
    assert!(matches!(
        ipc.receive_or_wait(server, service, 256, false, Waiter(1), &mut fx),
        Recv::Empty
    ));
    assert_eq!(ipc.blocked(), 1);
    send(&mut ipc, client, &msg(to_service, COPY_SEND, 0, 0, 7, &[])).unwrap();
    assert_eq!(fx.wake.len(), 0);
    let Recv::Message(k) = ipc.receive_or_wait(server, service, 256, false, Waiter(1), &mut fx)
    else {
        panic!("no message")
    };
    assert_eq!(k.id(), 7);
    ipc.kmsg_destroy(k, &mut fx);
    assert!(matches!(
        ipc.receive_or_wait(server, service ^ 0x100, 256, false, Waiter(1), &mut fx),
        Recv::Error(RCV_INVALID_NAME)
    ));
    // The default group, empty: as wait_receive says.
    assert!(matches!(
        ipc.receive_or_wait(server, PORT_NULL, 256, false, Waiter(1), &mut fx),
        Recv::Error(RCV_INVALID_NAME)
    ));
    ipc.cancel_wait(Waiter(1));
    check_invariants(&ipc);
}
