//! Model check of rights transfer: a reference model of which rights each
//! of N spaces holds for each port, against the real `Ipc`, under random
//! allocate / send (every disposition) / receive / deallocate / space
//! death. After every step the rights per (space, port), the queue
//! lengths and the internal counts must agree; at the end nothing leaks.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::tests::{It, check_invariants, msg, nomem};
use super::*;

const N: usize = 3;
const DEST: [u8; 5] = [
    COPY_SEND,
    MAKE_SEND,
    MOVE_SEND,
    MOVE_SEND_ONCE,
    MAKE_SEND_ONCE,
];
const ITEM: [u8; 6] = [
    COPY_SEND,
    MAKE_SEND,
    MOVE_SEND,
    MOVE_SEND_ONCE,
    MAKE_SEND_ONCE,
    MOVE_RECEIVE,
];
/// Outside any table: never a valid name.
const BOGUS: Name = 0x00ff_f001;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Hold {
    recv: bool,
    send: u32,
    so: u32,
    dead: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Space(usize),
    Transit(usize),
}

#[derive(Clone, Debug)]
struct MMsg {
    id: i32,
    reply: Option<(usize, u8)>,
    right: Option<(usize, u8)>,
}

#[derive(Clone, Debug)]
struct MPort {
    id: PortId,
    alive: bool,
    loc: Loc,
    queue: VecDeque<MMsg>,
}

struct Model {
    alive: [bool; N],
    ports: Vec<MPort>,
    /// hold[space][port]
    hold: [Vec<Hold>; N],
}

impl Model {
    fn kill(&mut self, j: usize) {
        let mut work = vec![j];
        while let Some(j) = work.pop() {
            if !self.ports[j].alive {
                continue;
            }
            self.ports[j].alive = false;
            for h in self.hold.iter_mut() {
                let h = &mut h[j];
                h.dead += h.send + h.so;
                *h = Hold {
                    dead: h.dead,
                    ..Hold::default()
                };
            }
            for m in core::mem::take(&mut self.ports[j].queue) {
                if let Some((k, PORT_RECEIVE)) = m.right {
                    work.push(k);
                }
            }
        }
    }

    /// Takes `disp` from `h` as copyin would; false if not held.
    fn take(h: &mut Hold, disp: u8) -> bool {
        match disp {
            MOVE_RECEIVE if h.recv => h.recv = false,
            COPY_SEND if h.send > 0 => {}
            MOVE_SEND if h.send > 0 => h.send -= 1,
            MAKE_SEND | MAKE_SEND_ONCE if h.recv => {}
            MOVE_SEND_ONCE if h.so > 0 => h.so -= 1,
            _ => return false,
        }
        true
    }
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(usize),
    Send {
        from: usize,
        dest: usize,
        ddisp: usize,
        reply: Option<(usize, usize)>,
        item: Option<(usize, usize)>,
    },
    Recv(usize, usize),
    Dealloc(usize, usize, usize),
    Destroy(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..N).prop_map(Op::Alloc),
        8 => (
            (0..N, 0..16usize, 0..DEST.len()),
            proptest::option::weighted(0.3, (0..16usize, 0..DEST.len())),
            proptest::option::weighted(0.7, (0..16usize, 0..ITEM.len())),
        )
            .prop_map(|((from, dest, ddisp), reply, item)| Op::Send { from, dest, ddisp, reply, item }),
        5 => (0..N, 0..16usize).prop_map(|(s, p)| Op::Recv(s, p)),
        2 => (0..N, 0..16usize, 0..4usize).prop_map(|(s, p, k)| Op::Dealloc(s, p, k)),
        1 => (0..N).prop_map(Op::Destroy),
    ]
}

/// The name of `s` that gives `disp` for `port` (the `skip`th send-once
/// name for MOVE_SEND_ONCE), else any name for the port, else a bogus one.
fn find(ipc: &Ipc, s: SpaceId, port: PortId, disp: u8, skip: usize) -> Name {
    let names = ipc.names(s);
    let mine = names.iter().filter(|(_, r)| r.port == port);
    let fits = |r: &Rights| match disp {
        COPY_SEND | MOVE_SEND => r.send > 0,
        MAKE_SEND | MAKE_SEND_ONCE | MOVE_RECEIVE => r.receive,
        MOVE_SEND_ONCE => r.send_once,
        // Deallocate: 0 the send/receive name, 1 a send-once, 2 a dead name.
        0 => r.send > 0 || r.receive,
        1 => r.send_once,
        2 => r.dead > 0,
        _ => false,
    };
    mine.clone()
        .filter(|(_, r)| fits(r))
        .nth(skip)
        .or_else(|| mine.clone().next())
        .map_or(BOGUS, |(n, _)| *n)
}

fn compare(ipc: &Ipc, m: &Model, sp: &[SpaceId; N]) -> Result<(), TestCaseError> {
    check_invariants(ipc);
    for (i, &s) in sp.iter().enumerate() {
        if !m.alive[i] {
            prop_assert!(ipc.names(s).is_empty());
            continue;
        }
        let mut real = vec![Hold::default(); m.ports.len()];
        for (_, r) in ipc.names(s) {
            let j = m.ports.iter().position(|p| p.id == r.port);
            prop_assert!(j.is_some(), "a right to an unknown port");
            let h = &mut real[j.unwrap_or(0)];
            h.recv |= r.receive;
            h.send += r.send;
            h.so += u32::from(r.send_once);
            h.dead += r.dead;
        }
        prop_assert_eq!(&real, &m.hold[i], "space {}", i);
    }
    for (j, p) in m.ports.iter().enumerate() {
        if let (true, Loc::Space(i)) = (p.alive, p.loc) {
            let name = find(ipc, sp[i], p.id, MAKE_SEND, 0);
            let st = ipc.port_status(sp[i], name);
            prop_assert_eq!(
                st.map(|s| s.num_msgs as usize),
                Ok(p.queue.len()),
                "port {}",
                j
            );
        }
    }
    prop_assert_eq!(ipc.live_ports(), m.ports.iter().filter(|p| p.alive).count());
    prop_assert_eq!(
        ipc.live_kmsgs(),
        m.ports.iter().map(|p| p.queue.len()).sum::<usize>()
    );
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut ipc = Ipc::new(Limits::default());
    let sp: [SpaceId; N] = core::array::from_fn(|_| ipc.space_create().unwrap());
    let mut m = Model {
        alive: [true; N],
        ports: Vec::new(),
        hold: core::array::from_fn(|_| Vec::new()),
    };
    let mut fx = Effects::default();
    // Each space starts with an inbox, and every other space with a send
    // right to it, so rights can travel between spaces from step one.
    for i in 0..N {
        let name = ipc.port_allocate(sp[i]).unwrap();
        let pid = ipc.rights(sp[i], name).unwrap().port;
        m.ports.push(MPort {
            id: pid,
            alive: true,
            loc: Loc::Space(i),
            queue: VecDeque::new(),
        });
        for (t, h) in m.hold.iter_mut().enumerate() {
            h.push(Hold {
                recv: t == i,
                send: u32::from(t != i),
                ..Hold::default()
            });
            if t != i {
                ipc.insert_send(sp[t], pid).unwrap();
            }
        }
    }
    compare(&ipc, &m, &sp)?;
    for (step, op) in ops.into_iter().enumerate() {
        let id = step as i32;
        match op {
            Op::Alloc(i) => {
                let r = ipc.port_allocate(sp[i]);
                if !m.alive[i] {
                    prop_assert!(r.is_err());
                    continue;
                }
                let name = r.map_err(|e| TestCaseError::fail(alloc::format!("{e}")))?;
                let pid = ipc.rights(sp[i], name).unwrap().port;
                m.ports.push(MPort {
                    id: pid,
                    alive: true,
                    loc: Loc::Space(i),
                    queue: VecDeque::new(),
                });
                for h in m.hold.iter_mut() {
                    h.push(Hold::default());
                }
                m.hold[i].last_mut().unwrap().recv = true;
            }
            Op::Send {
                from,
                dest,
                ddisp,
                reply,
                item,
            } => {
                if m.ports.is_empty() || !m.alive[from] {
                    continue;
                }
                let j = dest % m.ports.len();
                let dd = DEST[ddisp];
                let dname = find(&ipc, sp[from], m.ports[j].id, dd, 0);
                let rp = reply.map(|(k, e)| (k % m.ports.len(), DEST[e]));
                let it = item.map(|(k, e)| (k % m.ports.len(), ITEM[e]));
                // Distinct send-once names for each MOVE_SEND_ONCE of one port.
                let once = |k: usize, e: u8| {
                    usize::from(k == j && e == MOVE_SEND_ONCE && dd == MOVE_SEND_ONCE)
                };
                let rname = rp.map(|(k, e)| find(&ipc, sp[from], m.ports[k].id, e, once(k, e)));
                let iname = it.map(|(k, e)| {
                    let skip = once(k, e)
                        + rp.map_or(0, |(rk, re)| {
                            usize::from(rk == k && re == MOVE_SEND_ONCE && e == MOVE_SEND_ONCE)
                        });
                    find(&ipc, sp[from], m.ports[k].id, e, skip)
                });
                let items: Vec<It> = match (it, iname) {
                    (Some((_, e)), Some(n)) => vec![It::Ports(e, vec![n])],
                    _ => vec![],
                };
                let before = ipc.names(sp[from]);
                let (lname, ld) = match (rp, rname) {
                    (Some((_, e)), Some(n)) => (n, e),
                    _ => (0, 0),
                };
                let r = ipc.send(
                    sp[from],
                    &msg(dname, dd, lname, ld, id, &items),
                    &mut nomem(),
                    &mut fx,
                );
                // The model's verdict, in the order copyin checks.
                let mut h = m.hold[from].clone();
                let want: Result<bool, u32> = (|| {
                    if !m.ports[j].alive || !Model::take(&mut h[j], dd) {
                        return Err(SEND_INVALID_DEST);
                    }
                    if m.ports[j].queue.len() >= BACKLOG_DEFAULT as usize {
                        return Ok(false);
                    }
                    if let Some((k, e)) = rp
                        && (!m.ports[k].alive || !Model::take(&mut h[k], e))
                    {
                        return Err(SEND_INVALID_REPLY);
                    }
                    if let Some((k, e)) = it {
                        if !m.ports[k].alive || !Model::take(&mut h[k], e) {
                            return Err(SEND_INVALID_RIGHT);
                        }
                        if e == MOVE_RECEIVE {
                            let mut cur = j;
                            while let Loc::Transit(x) = m.ports[cur].loc {
                                cur = x;
                            }
                            if cur == k {
                                return Err(SEND_INVALID_RIGHT);
                            }
                        }
                    }
                    Ok(true)
                })();
                match (&r, want) {
                    (Send::Queued, Ok(true)) => {
                        m.hold[from] = h;
                        let right = it.map(|(k, e)| (k, kmsg::received_type(e).unwrap()));
                        if let Some((k, PORT_RECEIVE)) = right {
                            m.ports[k].loc = Loc::Transit(j);
                        }
                        let reply = rp.map(|(k, e)| (k, kmsg::received_type(e).unwrap()));
                        m.ports[j].queue.push_back(MMsg { id, reply, right });
                    }
                    (Send::Full { port }, Ok(false)) => {
                        prop_assert_eq!(*port, m.ports[j].id);
                        prop_assert_eq!(&ipc.names(sp[from]), &before);
                    }
                    (Send::Error(e), Err(w)) => {
                        prop_assert_eq!(*e, w, "step {} {:?}", step, op);
                        prop_assert_eq!(&ipc.names(sp[from]), &before);
                    }
                    _ => prop_assert!(false, "step {}: {:?} but model says {:?}", step, r, want),
                }
            }
            Op::Recv(i, p) => {
                if m.ports.is_empty() || !m.alive[i] {
                    continue;
                }
                let j = p % m.ports.len();
                let name = find(&ipc, sp[i], m.ports[j].id, MAKE_SEND, 0);
                let held = m.ports[j].alive && m.hold[i][j].recv;
                match super::tests::recv(&mut ipc, sp[i], name) {
                    Ok(g) => {
                        prop_assert!(held);
                        let mm = m.ports[j].queue.pop_front();
                        prop_assert!(mm.is_some(), "a message the model lacks");
                        let mm = mm.unwrap();
                        prop_assert_eq!(g.h.id, mm.id);
                        prop_assert_eq!(g.h.local, name);
                        match mm.reply {
                            Some((k, ty)) if m.ports[k].alive => {
                                prop_assert_eq!(g.h.bits & 0xff, u32::from(ty));
                                prop_assert_eq!(
                                    ipc.rights(sp[i], g.h.remote).map(|r| r.port),
                                    Ok(m.ports[k].id)
                                );
                                let h = &mut m.hold[i][k];
                                if ty == PORT_SEND {
                                    h.send += 1;
                                } else {
                                    h.so += 1;
                                }
                            }
                            Some(_) => prop_assert_eq!(g.h.remote, PORT_DEAD),
                            None => prop_assert_eq!(g.h.remote, PORT_NULL),
                        }
                        if let Some((k, ty)) = mm.right {
                            let got = g.items()[0].1[..4]
                                .try_into()
                                .map(u32::from_le_bytes)
                                .unwrap();
                            if !m.ports[k].alive {
                                prop_assert_eq!(got, PORT_DEAD);
                                continue;
                            }
                            prop_assert_eq!(
                                ipc.rights(sp[i], got).map(|r| r.port),
                                Ok(m.ports[k].id)
                            );
                            let h = &mut m.hold[i][k];
                            match ty {
                                PORT_RECEIVE => {
                                    h.recv = true;
                                    m.ports[k].loc = Loc::Space(i);
                                }
                                PORT_SEND => h.send += 1,
                                _ => h.so += 1,
                            }
                        }
                    }
                    Err(0xe) => prop_assert!(held && m.ports[j].queue.is_empty()),
                    Err(e) => {
                        prop_assert_eq!(e, RCV_INVALID_NAME);
                        prop_assert!(!held);
                    }
                }
            }
            Op::Dealloc(i, p, kind) => {
                if m.ports.is_empty() || !m.alive[i] || kind > 2 {
                    continue;
                }
                let j = p % m.ports.len();
                let name = find(&ipc, sp[i], m.ports[j].id, kind as u8, 0);
                let r = ipc.rights(sp[i], name);
                let res = ipc.port_deallocate(sp[i], name, &mut fx);
                let Ok(r) = r else {
                    prop_assert_eq!(res, Err(KERN_INVALID_NAME));
                    continue;
                };
                prop_assert_eq!(res, Ok(()));
                let h = &mut m.hold[i][j];
                if r.dead > 0 {
                    h.dead -= 1;
                } else if r.send_once {
                    h.so -= 1;
                } else if r.send > 0 {
                    h.send -= 1;
                } else {
                    prop_assert!(r.receive);
                    h.recv = false;
                    m.kill(j);
                }
            }
            Op::Destroy(i) => {
                if !m.alive[i] {
                    continue;
                }
                ipc.space_destroy(sp[i], &mut fx);
                m.alive[i] = false;
                for j in 0..m.ports.len() {
                    if m.hold[i][j].recv {
                        m.hold[i][j].recv = false;
                        m.kill(j);
                    }
                }
                m.hold[i].iter_mut().for_each(|h| *h = Hold::default());
            }
        }
        compare(&ipc, &m, &sp)?;
    }
    for s in sp {
        ipc.space_destroy(s, &mut fx);
    }
    prop_assert_eq!(ipc.live_ports(), 0, "ports leaked");
    prop_assert_eq!(ipc.live_kmsgs(), 0, "messages leaked");
    prop_assert_eq!(ipc.kmsg_bytes(), 0);
    prop_assert_eq!(ipc.blocked(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn rights_transfer_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
