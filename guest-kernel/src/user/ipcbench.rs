//! `ipcbench [ROUNDS]`: Mach IPC between two tasks, for `vmm bench ipc` and
//! the boot tests. This task starts a copy of itself as the server (it finds
//! us through the bootstrap port it inherits, and sends back its service
//! port), then makes ROUNDS msg_rpc round trips of each kind: null, 4 KiB
//! inline each way, 64 KiB out-of-line each way (ROUNDS/10 of those: the
//! regions stay mapped in the receivers until vm_deallocate exists).
//! Benchmark marks bracket each loop.
#![no_std]
#![no_main]

mod rt;

use libmach::abi::{self, Name};
use libmach::message::{Builder, Item, Message, MsgBuf};
use libmach::traps;

const HELLO: i32 = 100;
const PING: i32 = 200;
const REPLY: i32 = PING + 100;
const TIMEOUT: Option<u32> = Some(20_000);
const BIG: usize = 64 * 1024;

static mut BUF: MsgBuf<{ 4096 + 256 }> = MsgBuf([0; 4096 + 256]);
static mut DATA: [u8; BIG] = [0; BIG];

// `&raw mut` then a deref: a reference to a `static mut` is refused.
#[allow(clippy::deref_addrof)]
fn buf() -> &'static mut [u8] {
    // SAFETY: one thread per task uses it, never reentrantly.
    unsafe { &mut (*(&raw mut BUF)).0 }
}

#[allow(clippy::deref_addrof)]
fn data() -> &'static mut [u8; BIG] {
    // SAFETY: as for `buf`.
    unsafe { &mut *(&raw mut DATA) }
}

fn fail(what: &str, e: &str) -> i32 {
    println!("ipcbench: {what}: {e}");
    1
}

/// A send right under the receive right's own name (sent to ourselves).
fn make_send(port: Name) -> Result<(), &'static str> {
    let b = buf();
    let n = Builder::new(b)
        .dest(port, abi::MAKE_SEND)
        .id(0)
        .ports(&[port], abi::MAKE_SEND)
        .finish()
        .map_err(|e| e.name())?;
    traps::msg_send(&b[..n], Some(0)).map_err(|e| e.name())?;
    traps::msg_receive(b, port, Some(0)).map_err(|e| e.name())?;
    Ok(())
}

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args);
    let first = words.next();
    if first == Some(b"server") {
        return server();
    }
    let rounds = first
        .and_then(|w| rt::str(w).parse::<u32>().ok())
        .unwrap_or(1000)
        .max(1);
    let rendezvous = match traps::port_allocate() {
        Ok(p) => p,
        Err(e) => return fail("port_allocate", e.name()),
    };
    if let Err(e) = make_send(rendezvous) {
        return fail("make_send", e);
    }
    let me = match traps::task_self() {
        Ok(t) => t,
        Err(e) => return fail("task_self", e.name()),
    };
    // The server inherits our bootstrap port: the rendezvous.
    if let Err(e) = traps::task_set_bootstrap_port(me, rendezvous) {
        return fail("task_set_bootstrap_port", e.name());
    }
    let child = match traps::task_create(b"ipcbench", b"server", false) {
        Ok(t) => t,
        Err(e) => return fail("task_create", e.name()),
    };
    let service = match hello(rendezvous) {
        Ok(s) => s,
        Err(e) => return fail("hello", e),
    };
    let reply = match traps::port_allocate() {
        Ok(p) => p,
        Err(e) => return fail("port_allocate", e.name()),
    };
    for (i, b) in data().iter_mut().enumerate() {
        *b = (i * 7 + i / 251) as u8;
    }
    let ool_rounds = (rounds / 10).max(1);
    let cases: [(u8, usize, u32); 3] = [(0, 0, rounds), (1, 4096, rounds), (2, BIG, ool_rounds)];
    for (kind, bytes, n) in cases {
        rt::milestone(2 * kind + 1);
        for _ in 0..n {
            if let Err(e) = round_trip(service, reply, kind, bytes) {
                return fail("round trip", e);
            }
        }
        rt::milestone(2 * kind + 2);
    }
    println!(
        "ipcbench: {rounds} null and {rounds} 4 KiB inline round trips, {ool_rounds} of 64 KiB out-of-line: ok"
    );
    let _ = traps::task_terminate(child);
    0
}

fn hello(rendezvous: Name) -> Result<Name, &'static str> {
    let b = buf();
    let n = traps::msg_receive(b, rendezvous, TIMEOUT).map_err(|e| e.name())?;
    let m = Message::parse(&b[..n]).map_err(|e| e.name())?;
    if m.id() != HELLO {
        return Err("unexpected message");
    }
    m.items()
        .find_map(|i| match i {
            Item::Ports { names, .. } => names.get(0),
            _ => None,
        })
        .ok_or("no service port")
}

/// One msg_rpc: the reply must echo what was sent.
fn round_trip(service: Name, reply: Name, kind: u8, bytes: usize) -> Result<(), &'static str> {
    let b = buf();
    let d = &data()[..bytes];
    let mut m = Builder::new(b);
    m.dest(service, abi::COPY_SEND)
        .reply(reply, abi::MAKE_SEND_ONCE)
        .id(PING + i32::from(kind));
    match kind {
        1 => {
            m.inline(d);
        }
        2 => {
            m.ool(d);
        }
        _ => {}
    }
    let n = m.finish().map_err(|e| e.name())?;
    let got = traps::msg_rpc(b, n, reply, TIMEOUT).map_err(|e| e.name())?;
    let m = Message::parse(&b[..got]).map_err(|e| e.name())?;
    if m.id() != REPLY + i32::from(kind) {
        return Err("wrong reply id");
    }
    let echoed = m.items().any(|i| match i {
        Item::Inline(x) => x == d,
        Item::Ool { addr, len, .. } => {
            // SAFETY: the kernel mapped the region at addr for us.
            let r = unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) };
            let same = r == d;
            // The region is ours now: give it back, as a Mach client must.
            let freed = traps::task_self()
                .and_then(|me| libmach::vm::vm_deallocate(me, addr, u64::from(len)));
            same && freed.is_ok()
        }
        _ => false,
    });
    if bytes > 0 && !echoed {
        return Err("reply does not echo the request");
    }
    Ok(())
}

fn server() -> i32 {
    let me = match traps::task_self() {
        Ok(t) => t,
        Err(e) => return fail("server: task_self", e.name()),
    };
    let boot = match traps::task_get_bootstrap_port(me) {
        Ok(p) => p,
        Err(e) => return fail("server: bootstrap", e.name()),
    };
    let service = match traps::port_allocate() {
        Ok(p) => p,
        Err(e) => return fail("server: port_allocate", e.name()),
    };
    let b = buf();
    let n = match Builder::new(b)
        .dest(boot, abi::COPY_SEND)
        .id(HELLO)
        .ports(&[service], abi::MAKE_SEND)
        .finish()
    {
        Ok(n) => n,
        Err(e) => return fail("server: hello", e.name()),
    };
    if let Err(e) = traps::msg_send(&b[..n], TIMEOUT) {
        return fail("server: hello", e.name());
    }
    // Receive a request, reply with the same payload; after the first,
    // each reply and the next receive are one trap (msg_rpc's server form).
    let mut got = match traps::msg_receive(b, service, None) {
        Ok(n) => n,
        Err(e) => return fail("server: receive", e.name()),
    };
    loop {
        let Some((n, _)) = echo(b, got) else {
            return fail("server", "bad request");
        };
        got = match traps::msg_rpc(b, n, service, None) {
            Ok(n) => n,
            Err(e) => return fail("server: reply", e.name()),
        };
    }
}

/// Turns the request in `b[..got]` into its reply, in place; its size.
fn echo(b: &mut [u8], got: usize) -> Option<(usize, ())> {
    let mut scratch = [0u8; 4096];
    let (reply_to, id, kind, len, addr) = {
        let m = Message::parse(b.get(..got)?).ok()?;
        let h = *m.header();
        let mut kind = 0u8;
        let (mut len, mut addr) = (0usize, 0u64);
        for i in m.items() {
            match i {
                Item::Inline(x) => {
                    kind = 1;
                    len = x.len();
                    scratch.get_mut(..len)?.copy_from_slice(x);
                }
                Item::Ool {
                    addr: a, len: l, ..
                } => {
                    kind = 2;
                    addr = a;
                    len = l as usize;
                }
                _ => {}
            }
        }
        (h.remote, h.id, kind, len, addr)
    };
    let mut m = Builder::new(b);
    m.dest(reply_to, abi::MOVE_SEND_ONCE).id(id + 100);
    match kind {
        1 => {
            m.inline(scratch.get(..len)?);
        }
        2 => {
            // SAFETY: the kernel mapped the request's region at addr for
            // us; the reply moves it on (deallocate), and nothing here
            // refers to it afterwards.
            unsafe { m.ool_raw(addr, len, true) };
        }
        _ => {}
    }
    m.finish().ok().map(|n| (n, ()))
}
