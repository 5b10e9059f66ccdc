//! The name server: `nameserver prog[:arg] ...` starts each listed program
//! with the server's port as its bootstrap port (or, as the kernel starts
//! it, `nameserver --objects NAME...` publishes the host objects), then serves
//! libmach::name_server (check_in, look_up) forever. The table is bounded
//! (64 names of at most 32 bytes); a checked-in port that dies is dropped
//! when its dead-name notification arrives on a second, private port (so
//! no client can forge one).
#![no_std]
#![no_main]

mod rt;

use libmach::abi::{self, Name};
use libmach::message::{Builder, Item, Message, MsgBuf};
use libmach::name_server::{NAME_MAX, name_server};
use libmach::rpc;
use libmach::traps::{self, KernError};
use libmach::vm;

const MAX_ENTRIES: usize = 64;

#[derive(Clone, Copy)]
struct Entry {
    name: [u8; NAME_MAX],
    len: usize,
    /// Our send right (a dead name once the port dies).
    port: Name,
}

impl Entry {
    fn name(&self) -> &[u8] {
        self.name.get(..self.len).unwrap_or(&[])
    }
}

struct Table {
    entries: [Option<Entry>; MAX_ENTRIES],
    /// Where dead-name notifications for checked-in ports go.
    notify: Name,
}

impl Table {
    fn find(&self, name: &[u8]) -> Option<&Entry> {
        self.entries.iter().flatten().find(|e| e.name() == name)
    }

    fn insert(&mut self, name: &[u8], port: Name) -> Result<(), KernError> {
        if name.is_empty()
            || name.len() > NAME_MAX
            || port == abi::PORT_NULL
            || port == abi::PORT_DEAD
        {
            return Err(KernError(abi::KERN_INVALID_ARGUMENT));
        }
        if self.find(name).is_some() {
            return Err(KernError(abi::KERN_NAME_EXISTS));
        }
        let slot = self
            .entries
            .iter_mut()
            .find(|e| e.is_none())
            .ok_or(KernError(abi::KERN_NO_SPACE))?;
        // Fails if the port is already dead: then it is not worth a slot.
        traps::port_request_dead_name(port, self.notify)?;
        let mut e = Entry {
            name: [0; NAME_MAX],
            len: name.len(),
            port,
        };
        e.name
            .get_mut(..name.len())
            .ok_or(KernError(abi::KERN_INVALID_ARGUMENT))?
            .copy_from_slice(name);
        *slot = Some(e);
        Ok(())
    }

    /// A `NOTIFY_DEAD_NAME` message: forget every entry of that name.
    fn dead_name(&mut self, msg: &[u8]) {
        let Ok(m) = Message::parse(msg) else { return };
        if m.id() != abi::NOTIFY_DEAD_NAME {
            return;
        }
        let Some(Item::Inline(d)) = m.items().next() else {
            return;
        };
        let Ok(b) = <[u8; 4]>::try_from(d) else {
            return;
        };
        let dead = u32::from_le_bytes(b);
        for slot in self.entries.iter_mut() {
            if slot.is_some_and(|e| e.port == dead) {
                *slot = None;
                let _ = traps::port_deallocate(dead);
            }
        }
    }
}

impl name_server::Server for Table {
    fn check_in(&mut self, name: &[u8], port: Name) -> Result<(), KernError> {
        let r = self.insert(name, port);
        if r.is_err() {
            // The right the request carried is ours now: don't leak it.
            let _ = traps::port_deallocate(port);
        }
        r
    }

    fn look_up(&mut self, name: &[u8]) -> Result<Name, KernError> {
        // The reply copies our send right (SendRight = COPY_SEND).
        self.find(name)
            .map(|e| e.port)
            .ok_or(KernError(abi::KERN_INVALID_NAME))
    }
}

/// Gives us a send right to our own `port` (under the same name) by
/// sending ourselves one, so the bootstrap port we hand out is a send
/// right whichever the kernel wants.
fn make_send(port: Name) -> Result<(), &'static str> {
    let mut buf = MsgBuf::<64>::new();
    let n = Builder::new(&mut buf.0)
        .dest(port, abi::MAKE_SEND)
        .id(0)
        .ports(&[port], abi::MAKE_SEND)
        .finish()
        .map_err(|e| e.name())?;
    traps::msg_send(buf.0.get(..n).unwrap_or(&[]), Some(0)).map_err(|e| e.name())?;
    traps::msg_receive(&mut buf.0, port, Some(0)).map_err(|e| e.name())?;
    Ok(())
}

fn start(port: Name, args: &[u8]) {
    if let Ok(me) = traps::task_self() {
        // Tasks inherit their creator's bootstrap port (Mach): ours.
        let _ = traps::task_set_bootstrap_port(me, port);
    }
    for word in rt::words(args) {
        let (name, arg) = match word.iter().position(|&c| c == b':') {
            Some(i) => (
                word.get(..i).unwrap_or(&[]),
                word.get(i + 1..).unwrap_or(&[]),
            ),
            None => (word, &b""[..]),
        };
        match traps::task_create(name, arg, false) {
            Ok(task) => match traps::task_set_bootstrap_port(task, port) {
                Ok(()) => println!("nameserver: started {}", rt::str(word)),
                Err(e) => println!(
                    "nameserver: {}: bootstrap port: {}",
                    rt::str(name),
                    e.name()
                ),
            },
            Err(e) => println!("nameserver: cannot start {}: {}", rt::str(name), e.name()),
        }
    }
}

/// `--objects NAME...`: started by the kernel (kern/bootstrap.rs), which
/// made our bootstrap port and gave us its receive right. Each host
/// object's memory object is published under its name before we serve, so
/// lookups that arrive first wait in the queue and find it.
fn publish_objects(table: &mut Table, names: &[u8]) {
    for name in rt::words(names) {
        let port = rt::object::lookup(name)
            .map_err(rt::abi::error_name)
            .and_then(|id| vm::host_object_port(id).map_err(|e| e.name()));
        let r = port.and_then(|p| table.insert(name, p).map_err(|e| e.name()));
        if let Err(e) = r {
            println!("nameserver: cannot publish {}: {e}", rt::str(name));
        }
    }
}

fn main(args: &[u8]) -> i32 {
    let published = args.strip_prefix(b"--objects");
    // The kernel's bootstrap server serves the port it was given; one
    // started by a task makes its own.
    let mine = match published {
        Some(_) => traps::task_self().and_then(traps::task_get_bootstrap_port),
        None => traps::port_allocate(),
    };
    let (port, notify) = match (mine, traps::port_allocate()) {
        (Ok(p), Ok(n)) => (p, n),
        (Err(e), _) | (_, Err(e)) => {
            println!("nameserver: port_allocate: {}", e.name());
            return 1;
        }
    };
    // Both in the default group: one receive serves requests and notices.
    for p in [port, notify] {
        if let Err(e) = traps::port_enable(p) {
            println!("nameserver: port_enable: {}", e.name());
            return 1;
        }
    }
    let mut table = Table {
        entries: [None; MAX_ENTRIES],
        notify,
    };
    match published {
        Some(names) => publish_objects(&mut table, names),
        None => {
            if let Err(e) = make_send(port) {
                println!("nameserver: send right: {e}");
            }
            start(port, args);
        }
    }
    let e = rpc::serve::<1024>(abi::PORT_NULL, |req, reply| {
        let local = abi::Header::from_bytes(req)?.local;
        if local == notify {
            table.dead_name(req);
            None
        } else if local == port {
            name_server::dispatch(&mut table, req, reply)
        } else {
            None
        }
    });
    println!("nameserver: receive: {}", e.name());
    1
}
