//! `fs-demo NAME`: the paper's minimal filesystem (Young et al. 1987, §4.1)
//! over the host object NAME (`vmm run --object NAME=file:IMG`), in three
//! tasks, checking itself as it goes.
//!
//! - This task starts a name server, makes it the bootstrap port its
//!   children inherit, starts the server and the client, waits for the
//!   client, then lets the server go and waits for it. It prints
//!   `fs-demo: done` and exits 0 only if both exited 0.
//! - The server (`fs-demo --server NAME`) maps the whole object with
//!   vm_allocate_with_pager (its page faults go to the host file through
//!   the virtio-pager device), checks the image's table
//!   (src/fsimage.rs documents the format), checks in a port as
//!   `fs.NAME` and serves the `fs` interface below. A read maps the
//!   file's pages again (as the paper's fs_read_file maps its object) and
//!   sends them out of line with the deallocate flag: the client gets a
//!   copy-on-write region of the object, the kernel copies no data. A
//!   write copies the request's out-of-line bytes into the server's own
//!   mapping; those pages become dirty and go back to the host file when
//!   the object ends: the server unmaps it when told to stop (the death of
//!   a lifeline port this task holds), and clean shutdown would too.
//! - The client (`fs-demo --client NAME`) finds the server through the
//!   name server and runs the paper's example with checks: read hello.txt
//!   (the host made it: src/fsimage.rs `demo`), change its copy in two
//!   places, re-read to see the server's data unchanged, write the first
//!   half of its copy back, re-read to see that change and not the other,
//!   and try requests that must be refused.
//!
//! Why reads map afresh instead of sending from the server's long-lived
//! mapping: sending a region copy-on-write makes the sender's entry
//! copy-on-write too (the kernel's symmetric copy, docs/vm.md), so the
//! server's next write there would land in a private shadow and never
//! reach the file. Each read's window is the only thing ever sent.
#![no_std]
#![no_main]

// Its host half (building images) is not needed here.
#[allow(dead_code)]
#[path = "../fsimage.rs"]
mod fsimage;
mod rt;

use core::fmt::Write;
use fsimage::{File, NAME_MAX, PAGE, Table, demo};
use libmach::abi::{self, Name};
use libmach::message::{Builder, Item, Message, MsgBuf};
use libmach::name_server::name_server;
use libmach::rpc::{Bytes, Kernel, Ool, RpcError};
use libmach::traps::{self, KernError};
use libmach::vm;

/// Room for every name of a full table, each with its '\n'.
const LIST_MAX: usize = fsimage::MAX_FILES * (NAME_MAX + 1);
/// The name this task checks in; its port's death stops the server.
const LIFELINE: &[u8] = b"fs-demo.lifeline";
/// How long a client waits for the server, each way.
const RPC_TIMEOUT_MS: u32 = 30_000;

libmach::mach_interface! {
    /// The file server. A file is named by its index in the image's table
    /// (`stat` gives it). Ranges must be non-empty and lie within the
    /// file (KERN_INVALID_ARGUMENT otherwise); files never grow.
    pub interface fs = 4200 {
        /// Every file's name, each followed by '\n'.
        fn list() -> (names: Bytes<LIST_MAX>);
        /// The index and size of the file called `name` (KERN_INVALID_NAME if none).
        fn stat(name: Bytes<NAME_MAX>) -> (file: u32, size: u64);
        /// `length` bytes of `file` from `offset`: a copy-on-write region,
        /// the caller's to change and to vm_deallocate.
        fn read(file: u32, offset: u64, length: u64) -> (data: Ool);
        /// `data` replaces the file's bytes at `offset`
        /// (KERN_PROTECTION_FAILURE on a read-only object).
        fn write(file: u32, offset: u64, data: Ool) -> ();
    }
}

fn kern<T>(r: Result<T, KernError>) -> Result<T, &'static str> {
    r.map_err(|e| e.name())
}

fn rpc<T>(r: Result<T, RpcError>) -> Result<T, &'static str> {
    r.map_err(|e| e.name())
}

fn service_name(object: &[u8]) -> Option<Bytes<NAME_MAX>> {
    let mut n = [0u8; NAME_MAX];
    let end = 3 + object.len();
    n.get_mut(..3)?.copy_from_slice(b"fs.");
    n.get_mut(3..end)?.copy_from_slice(object);
    Bytes::new(n.get(..end)?)
}

// ---- the server ----

struct Server {
    table: Table,
    me: Name,
    /// The memory object (a send right to the host object's port).
    object: Name,
    /// Where the whole object is mapped, and how much of it.
    base: u64,
    mapped: u64,
    writable: bool,
    /// The protection its mappings ask for: read-only for a read-only
    /// object.
    prot: u32,
    /// The window of the read being answered: the reply's send unmaps it,
    /// so if that send fails the server unmaps it itself.
    window: Option<(u64, u64)>,
}

const INVALID: KernError = KernError(abi::KERN_INVALID_ARGUMENT);

impl Server {
    fn file(&self, file: u32) -> Result<File, KernError> {
        self.table.get(file).copied().ok_or(INVALID)
    }

    /// Takes back a read's window whose reply was not sent.
    fn take_back_window(&mut self) {
        if let Some((at, size)) = self.window.take() {
            let _ = vm::vm_deallocate(self.me, at, size);
        }
    }
}

impl fs::Server for Server {
    fn list(&mut self) -> Result<Bytes<LIST_MAX>, KernError> {
        let mut out = [0u8; LIST_MAX];
        let mut n = 0;
        for f in self.table.files() {
            let end = n + f.name().len();
            out.get_mut(n..end)
                .ok_or(INVALID)?
                .copy_from_slice(f.name());
            *out.get_mut(end).ok_or(INVALID)? = b'\n';
            n = end + 1;
        }
        Bytes::new(out.get(..n).ok_or(INVALID)?).ok_or(INVALID)
    }

    fn stat(&mut self, name: &[u8]) -> Result<(u32, u64), KernError> {
        let i = self
            .table
            .find(name)
            .ok_or(KernError(abi::KERN_INVALID_NAME))?;
        Ok((i, self.file(i)?.length))
    }

    fn read(&mut self, file: u32, offset: u64, length: u64) -> Result<Ool, KernError> {
        let f = self.file(file)?;
        let len = u32::try_from(length).map_err(|_| INVALID)?;
        if !f.contains(offset, length) {
            return Err(INVALID);
        }
        // Within the image (the table was checked against its size), so
        // within the object's pages: no overflow below.
        let start = f.offset + offset;
        let first = start - start % PAGE;
        let size = (start + length).next_multiple_of(PAGE) - first;
        let mut at = 0;
        vm::vm_map_pager(self.me, &mut at, size, true, self.prot, self.object, first)?;
        self.window = Some((at, size));
        // SAFETY: nothing but this reply refers to the window, and the
        // server forgets it once the reply is sent.
        Ok(unsafe { Ool::moving(at + (start - first), len) })
    }

    fn write(&mut self, file: u32, offset: u64, data: Ool) -> Result<(), KernError> {
        let f = self.file(file)?;
        if !f.contains(offset, u64::from(data.len())) {
            return Err(INVALID);
        }
        if !self.writable {
            return Err(KernError(abi::KERN_PROTECTION_FAILURE));
        }
        // SAFETY: the kernel mapped the received region in this task (the
        // serve loop unmaps it after this call); the destination lies in
        // the object's mapping, inside the file (checked above), and no
        // other reference to it is alive.
        let (src, dst) = unsafe {
            (
                core::slice::from_raw_parts(data.addr() as *const u8, data.len() as usize),
                core::slice::from_raw_parts_mut(
                    (self.base + f.offset + offset) as *mut u8,
                    data.len() as usize,
                ),
            )
        };
        dst.copy_from_slice(src);
        Ok(())
    }
}

/// Gives back what a request brought that nobody keeps: out-of-line
/// regions (a write's bytes are copied by then) and port rights (the
/// interface takes none), whatever the request was, so a client cannot
/// fill the server's address space or name space.
fn release(me: Name, m: &Message<'_>) {
    for item in m.items() {
        match item {
            Item::Ool { addr, len, .. } if len > 0 => {
                let _ = vm::vm_deallocate(me, addr, u64::from(len));
            }
            Item::Ports { names, .. } => {
                for n in names.iter() {
                    if n != abi::PORT_NULL && n != abi::PORT_DEAD {
                        let _ = traps::port_deallocate(n);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether `m` is the dead-name notification for `watched`.
fn is_death_of(m: &Message<'_>, watched: Name) -> bool {
    if m.id() != abi::NOTIFY_DEAD_NAME {
        return false;
    }
    matches!(m.items().next(), Some(Item::Inline(d))
        if <[u8; 4]>::try_from(d).is_ok_and(|b| u32::from_le_bytes(b) == watched))
}

/// Serves `service` until the lifeline's death is notified on `notify`.
fn serve(s: &mut Server, service: Name, notify: Name, lifeline: Name) -> Result<(), &'static str> {
    let mut req = MsgBuf::<1024>::new();
    let mut rep = MsgBuf::<{ LIST_MAX + 256 }>::new();
    loop {
        let n = match traps::msg_receive(&mut req.0, abi::PORT_NULL, None) {
            Ok(n) => n,
            // Too large for any request: the kernel destroyed it.
            Err(e) if e.0 == abi::RCV_TOO_LARGE => continue,
            Err(e) => return Err(e.name()),
        };
        let msg = req.0.get(..n).unwrap_or(&[]);
        let Ok(m) = Message::parse(msg) else { continue };
        let local = m.header().local;
        if local == notify {
            if is_death_of(&m, lifeline) {
                return Ok(());
            }
            continue;
        }
        if local == service {
            let reply = fs::dispatch(s, msg, &mut rep.0).and_then(|len| rep.0.get(..len));
            let sent = reply.is_some_and(|r| traps::msg_send(r, Some(0)).is_ok());
            // A read's window left with the reply only if the reply carried
            // it (not an error reply made after the read) and was sent.
            let carried = sent
                && reply
                    .and_then(|r| Message::parse(r).ok())
                    .is_some_and(|m| m.items().any(|i| matches!(i, Item::Ool { .. })));
            if carried {
                s.window = None;
            } else {
                s.take_back_window();
            }
        }
        release(s.me, &m);
    }
}

fn server(object: &[u8]) -> Result<(), &'static str> {
    let me = kern(traps::task_self())?;
    let mut ns = kern(libmach::name_server::bootstrap())?;
    let service_as = service_name(object).ok_or("object name too long")?;
    let id = rt::object::lookup(object).map_err(rt::abi::error_name)?;
    let st = rt::object::stat(id).map_err(rt::abi::error_name)?;
    if st.size < PAGE {
        return Err("the object is smaller than an image's header page");
    }
    let port = kern(vm::host_object_port(id))?;
    let mapped = st.size.next_multiple_of(PAGE);
    let mut base = 0;
    // A read-only image is mapped read-only (a writable mapping of it is
    // refused); its server refuses writes itself.
    let prot = if st.flags & rt::abi::OBJECT_READ_ONLY == 0 {
        libmach::abi::VM_PROT_DEFAULT
    } else {
        libmach::abi::VM_PROT_READ
    };
    kern(vm::vm_map_pager(me, &mut base, mapped, true, prot, port, 0))?;
    // SAFETY: the header page is mapped (the object has at least one page).
    let header = unsafe { core::slice::from_raw_parts(base as *const u8, PAGE as usize) };
    let table = match Table::parse(header, st.size) {
        Ok(t) => t,
        Err(e) => {
            println!("fs-demo: server: {}: not an image: {e}", rt::str(object));
            return Err("bad image");
        }
    };
    let mut s = Server {
        table,
        me,
        object: port,
        base,
        mapped,
        writable: prot == libmach::abi::VM_PROT_DEFAULT,
        prot,
        window: None,
    };
    let service = kern(traps::port_allocate_with_send())?;
    let notify = kern(traps::port_allocate())?;
    kern(traps::port_enable(service))?;
    kern(traps::port_enable(notify))?;
    let lifeline = rpc(ns.look_up(LIFELINE))?;
    kern(traps::port_request_dead_name(lifeline, notify))?;
    rpc(ns.check_in(service_as.as_slice(), service))?;
    println!(
        "fs-demo: server: {} files in {}, served as {}",
        s.table.files().len(),
        rt::str(object),
        rt::str(service_as.as_slice())
    );
    let r = serve(&mut s, service, notify, lifeline);
    // Its last mapping (the client is done by now): the object ends and
    // its dirty pages go back to the host file.
    kern(vm::vm_deallocate(me, s.base, s.mapped))?;
    let _ = traps::port_deallocate(port);
    let _ = traps::port_deallocate(service);
    r?;
    println!("fs-demo: server: stopped, mapping released");
    Ok(())
}

// ---- the client ----

/// Sleeps `ms` (a receive that times out on a port nobody sends to).
fn sleep(idle: Name, ms: u32) {
    let mut b = [0u8; 64];
    let _ = traps::msg_receive(&mut b, idle, Some(ms));
}

/// Looks `name` up, waiting (up to ~10 s) for it to be checked in.
fn look_up_retry(ns: &mut name_server::Client<Kernel>, name: &[u8]) -> Result<Name, &'static str> {
    let idle = kern(traps::port_allocate())?;
    let mut r = Err("never checked in");
    for _ in 0..1000 {
        match ns.look_up(name) {
            Ok(p) => {
                r = Ok(p);
                break;
            }
            Err(RpcError::Kern(e)) if e.0 == abi::KERN_INVALID_NAME => sleep(idle, 10),
            Err(e) => {
                r = Err(e.name());
                break;
            }
        }
    }
    let _ = traps::port_deallocate(idle);
    r
}

/// A region a read returned, as bytes this task may change.
///
/// # Safety
/// `o` must be a region the kernel mapped in this task and that nothing
/// else refers to (until it is given back with `unmap`).
unsafe fn region<'a>(o: Ool) -> &'a mut [u8] {
    // SAFETY: the caller's promise.
    unsafe { core::slice::from_raw_parts_mut(o.addr() as *mut u8, o.len() as usize) }
}

fn unmap(me: Name, o: Ool) -> Result<(), &'static str> {
    kern(vm::vm_deallocate(me, o.addr(), u64::from(o.len())))
}

fn is_original(bytes: &[u8], from: usize) -> bool {
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b == demo::hello_byte(from + i))
}

fn refused<T>(r: Result<T, RpcError>, code: u32) -> bool {
    matches!(r, Err(RpcError::Kern(e)) if e.0 == code)
}

/// Requests the server must refuse (and survive): each field out of
/// range, overflowing ranges, and a message outside the interface that
/// carries memory and a right.
fn bad_requests(fs: &mut fs::Client<Kernel>, file: u32, size: u64) -> Result<(), &'static str> {
    let inv = abi::KERN_INVALID_ARGUMENT;
    let two = [0u8; 2];
    let two = Ool::of(&two).ok_or("ool")?;
    let none = Ool::of(&[]).ok_or("ool")?;
    let checks = [
        (
            "read of a file past the table",
            refused(fs.read(99, 0, 1), inv),
        ),
        ("read at the end", refused(fs.read(file, size, 1), inv)),
        (
            "read past the end",
            refused(fs.read(file, 0, size + 1), inv),
        ),
        ("read of nothing", refused(fs.read(file, 0, 0), inv)),
        ("overflowing read", refused(fs.read(file, u64::MAX, 2), inv)),
        ("huge read", refused(fs.read(file, 1, u64::MAX), inv)),
        (
            "write past the end",
            refused(fs.write(file, size - 1, two), inv),
        ),
        (
            "overflowing write",
            refused(fs.write(file, u64::MAX, two), inv),
        ),
        ("write of nothing", refused(fs.write(file, 0, none), inv)),
        (
            "write of a file past the table",
            refused(fs.write(7777, 0, two), inv),
        ),
        (
            "stat of a missing file",
            refused(fs.stat(b"missing.txt"), abi::KERN_INVALID_NAME),
        ),
    ];
    for (what, ok) in checks {
        if !ok {
            println!("fs-demo: {what} was not refused");
            return Err("a bad request was not refused");
        }
    }
    // Not the interface at all: an unknown id with a region and a right.
    let reply = kern(traps::port_allocate())?;
    let junk = [7u8; 100];
    let mut b = MsgBuf::<256>::new();
    let n = Builder::new(&mut b.0)
        .dest(fs.port, abi::COPY_SEND)
        .reply(reply, abi::MAKE_SEND_ONCE)
        .id(fs::BASE + 77)
        .ool(&junk)
        .ports(&[reply], abi::MAKE_SEND)
        .finish()
        .map_err(|e| e.name())?;
    let got = traps::msg_rpc(&mut b.0, n, reply, Some(RPC_TIMEOUT_MS)).map_err(|e| e.name())?;
    let m = Message::parse(b.0.get(..got).unwrap_or(&[])).map_err(|e| e.name())?;
    let code = match m.items().next() {
        Some(Item::Inline(d)) => <[u8; 4]>::try_from(d).map(i32::from_le_bytes).ok(),
        _ => None,
    };
    let _ = traps::port_deallocate(reply);
    if code != Some(libmach::rpc::MIG_BAD_ID as i32) {
        return Err("a message outside the interface was not refused");
    }
    Ok(())
}

fn client(object: &[u8]) -> Result<(), &'static str> {
    let me = kern(traps::task_self())?;
    let mut ns = kern(libmach::name_server::bootstrap())?;
    let service_as = service_name(object).ok_or("object name too long")?;
    let port = look_up_retry(&mut ns, service_as.as_slice())?;
    let mut transport = Kernel::new();
    transport.timeout = Some(RPC_TIMEOUT_MS);
    let mut fs = fs::Client::new(port, transport);

    let names = rpc(fs.list())?;
    let mut line = rt::Line::new();
    let _ = write!(line, "fs-demo: list:");
    for n in names
        .as_slice()
        .split(|&c| c == b'\n')
        .filter(|n| !n.is_empty())
    {
        let _ = write!(line, " {}", rt::str(n));
    }
    let _ = writeln!(line);
    line.send();

    let (notes, notes_size) = rpc(fs.stat(demo::NOTES))?;
    let data = rpc(fs.read(notes, 0, notes_size))?;
    // SAFETY: the region the read returned, ours until unmapped.
    if unsafe { region(data) } != demo::NOTES_TEXT {
        return Err("notes.txt does not hold what the host wrote");
    }
    unmap(me, data)?;
    println!("fs-demo: read notes.txt {notes_size} bytes ok");

    let (file, size) = rpc(fs.stat(demo::HELLO))?;
    if size != demo::HELLO_LEN as u64 {
        return Err("hello.txt is not the size the demo's image has");
    }
    let copy = rpc(fs.read(file, 0, size))?;
    // SAFETY: as above; `mine` is the paper's `file_data`.
    let mine = unsafe { region(copy) };
    if !is_original(mine, 0) {
        return Err("hello.txt does not hold what the host wrote");
    }
    println!("fs-demo: read hello.txt {size} bytes ok");

    let piece = rpc(fs.read(file, 4000, 200))?;
    // SAFETY: as above.
    if unsafe { region(piece) }.len() != 200 || !is_original(unsafe { region(piece) }, 4000) {
        return Err("a read across a page boundary got other bytes");
    }
    unmap(me, piece)?;
    println!("fs-demo: read hello.txt 4000..4200 ok");

    // Change the copy in place: copy-on-write, so only ours changes.
    let (w, p) = (demo::WRITTEN_AT, demo::PRIVATE_AT);
    mine.get_mut(w..w + demo::WRITTEN.len())
        .ok_or("short copy")?
        .copy_from_slice(demo::WRITTEN);
    mine.get_mut(p..p + demo::PRIVATE.len())
        .ok_or("short copy")?
        .copy_from_slice(demo::PRIVATE);
    println!("fs-demo: changed the copy at {w} and {p}");

    let again = rpc(fs.read(file, 0, size))?;
    // SAFETY: as above.
    if !is_original(unsafe { region(again) }, 0) {
        return Err("the client's change to its copy reached the server");
    }
    unmap(me, again)?;
    if mine.get(w..w + demo::WRITTEN.len()) != Some(demo::WRITTEN) {
        return Err("the copy lost the client's change");
    }
    println!("fs-demo: re-read hello.txt: the server's data is unchanged ok");

    let half = demo::WRITE_BACK_LEN;
    let part = Ool::of(mine.get(..half).ok_or("short copy")?).ok_or("too long")?;
    if let Err(e) = fs.write(file, 0, part) {
        println!("fs-demo: write of hello.txt refused: {}", e.name());
        return Err("the write was refused");
    }
    println!("fs-demo: wrote hello.txt 0..{half} back ok");

    let after = rpc(fs.read(file, 0, size))?;
    // SAFETY: as above.
    let now = unsafe { region(after) };
    if now.get(..half) != mine.get(..half) {
        return Err("the written range does not hold the client's bytes");
    }
    if !is_original(now.get(half..).ok_or("short read")?, half) {
        return Err("bytes the client did not write back changed");
    }
    unmap(me, after)?;
    println!(
        "fs-demo: re-read hello.txt: the written range changed, the private change is absent ok"
    );

    bad_requests(&mut fs, file, size)?;
    // The server is still there after all that.
    let last = rpc(fs.read(file, 0, 1))?;
    unmap(me, last)?;
    println!("fs-demo: bad requests refused ok");

    // The paper's last step: throw away the working copy.
    unmap(me, copy)
}

// ---- the demo's first task ----

/// Starts `fs-demo ROLE OBJECT`; its task id.
fn start(role: &str, object: &[u8]) -> Result<i64, &'static str> {
    let mut args = rt::Line::new();
    let _ = write!(args, "{role} {}", rt::str(object));
    let id = rt::spawn(b"fs-demo", args.bytes());
    if id < 0 {
        return Err("cannot start fs-demo");
    }
    Ok(id)
}

fn demo(object: &[u8]) -> Result<bool, &'static str> {
    let me = kern(traps::task_self())?;
    // A name server of our own, found through its task (it makes itself
    // its bootstrap port).
    let ns_task = kern(traps::task_create(b"nameserver", b"", false))?;
    let mine = traps::task_get_bootstrap_port(me).unwrap_or(abi::PORT_NULL);
    let idle = kern(traps::port_allocate())?;
    let mut ns_port = abi::PORT_NULL;
    for _ in 0..1000 {
        match traps::task_get_bootstrap_port(ns_task) {
            Ok(p) if p != abi::PORT_NULL && p != mine => {
                ns_port = p;
                break;
            }
            _ => sleep(idle, 5),
        }
    }
    if ns_port == abi::PORT_NULL {
        return Err("the name server never published its port");
    }
    // Children inherit it.
    kern(traps::task_set_bootstrap_port(me, ns_port))?;
    let mut ns = name_server::Client::new(ns_port, Kernel::new());
    let lifeline = kern(traps::port_allocate_with_send())?;
    rpc(ns.check_in(LIFELINE, lifeline))?;

    let server = start("--server", object)?;
    let client = start("--client", object)?;
    let client_status = rt::wait(client);
    println!("fs-demo: client exited with status {client_status}");
    // Our send right, then the receive right: the port dies, and the
    // server hears of it.
    kern(traps::port_deallocate(lifeline))?;
    kern(traps::port_deallocate(lifeline))?;
    let server_status = rt::wait(server);
    println!("fs-demo: server exited with status {server_status}");
    let _ = traps::task_terminate(ns_task);
    Ok(client_status == 0 && server_status == 0)
}

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args);
    let (role, object) = match (words.next(), words.next(), words.next()) {
        (Some(b"--server"), Some(o), None) => ("server", o),
        (Some(b"--client"), Some(o), None) => ("client", o),
        (Some(o), None, None) => ("demo", o),
        _ => {
            println!("usage: fs-demo NAME");
            return 2;
        }
    };
    let r = match role {
        "server" => server(object).map(|()| true),
        "client" => client(object).map(|()| true),
        _ => demo(object),
    };
    match r {
        Ok(true) => {
            if role == "demo" {
                println!("fs-demo: done");
            }
            0
        }
        Ok(false) => {
            println!("fs-demo: FAILED");
            1
        }
        Err(e) => {
            println!("fs-demo: {role}: {}: {e}", rt::str(object));
            1
        }
    }
}
