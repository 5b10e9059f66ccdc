//! `ipctest [NAME...]`: in-guest tests of Mach IPC, run by tests/ipc.rs.
//! Each sub-test prints `ipctest: NAME ok` or `ipctest: NAME FAILED: why`;
//! the exit status is the number that failed. No names: all of them.
//!
//! Sub-tests that need a second task start a copy of this program with a
//! `child-*` role; it finds us through the bootstrap port it inherits.
#![no_std]
#![no_main]

mod rt;

use core::sync::atomic::{AtomicU64, Ordering};
use libmach::abi::{self, ExceptionInfo, Name};
use libmach::message::{Builder, Item, Message, MsgBuf};
use libmach::name_server::name_server;
use libmach::traps::{self, MsgError};

const HELLO: i32 = 100;
const DIE: i32 = 101;
const PING: i32 = 200;
const T: Option<u32> = Some(5_000);

static mut BUF: MsgBuf<2048> = MsgBuf([0; 2048]);

// `&raw mut` then a deref, not `&mut BUF`: a reference to a `static mut`
// is refused by the 2024 edition.
#[allow(clippy::deref_addrof)]
fn buf() -> &'static mut [u8] {
    // SAFETY: only the main thread of each task uses it, never reentrantly.
    unsafe { &mut (*(&raw mut BUF)).0 }
}

type R = Result<(), &'static str>;

fn kern<T>(r: Result<T, traps::KernError>) -> Result<T, &'static str> {
    r.map_err(|e| e.name())
}
fn msg<T>(r: Result<T, MsgError>) -> Result<T, &'static str> {
    r.map_err(|e| e.name())
}
fn expect_err<T>(r: Result<T, MsgError>, want: u32, what: &'static str) -> R {
    match r {
        Err(MsgError(c)) if c == want => Ok(()),
        Err(_) => Err(what),
        Ok(_) => Err(what),
    }
}

/// A port whose name also carries a send right (made by a message to
/// ourselves, the only way a task makes a send right for its own port).
fn port_with_send() -> Result<Name, &'static str> {
    let p = kern(traps::port_allocate())?;
    let b = buf();
    let n = Builder::new(b)
        .dest(p, abi::MAKE_SEND)
        .id(0)
        .ports(&[p], abi::MAKE_SEND)
        .finish()
        .map_err(|e| e.name())?;
    msg(traps::msg_send(&b[..n], Some(0)))?;
    msg(traps::msg_receive(b, p, Some(0)))?;
    Ok(p)
}

fn send_simple(dest: Name, id: i32, body: &[u8], timeout: Option<u32>) -> Result<(), MsgError> {
    let b = buf();
    let n = Builder::new(b)
        .dest(dest, abi::COPY_SEND)
        .id(id)
        .inline(body)
        .finish()
        .map_err(|_| MsgError(abi::SEND_INVALID_DATA))?;
    traps::msg_send(&b[..n], timeout)
}

fn first_port(m: &Message<'_>) -> Option<Name> {
    m.items().find_map(|i| match i {
        Item::Ports { names, .. } => names.get(0),
        _ => None,
    })
}

/// A receive on an empty port with a timeout ends in RCV_TIMED_OUT.
fn receive_timeout() -> R {
    let p = kern(traps::port_allocate())?;
    expect_err(
        traps::msg_receive(buf(), p, Some(30)),
        abi::RCV_TIMED_OUT,
        "receive on an empty port did not time out",
    )?;
    kern(traps::port_deallocate(p))
}

/// A full queue blocks the sender; with a timeout it gets SEND_TIMED_OUT,
/// and once the receiver takes a message there is room again.
fn backlog() -> R {
    let p = port_with_send()?;
    kern(traps::port_set_backlog(p, 1))?;
    msg(send_simple(p, PING, b"one", Some(0)))?;
    expect_err(
        send_simple(p, PING, b"two", Some(20)),
        abi::SEND_TIMED_OUT,
        "a send to a full port did not time out",
    )?;
    if kern(traps::port_status(p))?.num_msgs != 1 {
        return Err("the timed-out message was queued");
    }
    msg(traps::msg_receive(buf(), p, Some(0)))?;
    msg(send_simple(p, PING, b"three", Some(0)))?;
    let n = msg(traps::msg_receive(buf(), p, Some(0)))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if m.items().next() != Some(Item::Inline(b"three")) {
        return Err("wrong message after the queue drained");
    }
    kern(traps::port_deallocate(p))
}

/// A buffer too small gets RCV_TOO_LARGE: with RCV_LARGE the message stays
/// queued and the header says the size needed; without it the message is
/// destroyed (Mach 3 semantics, docs/mach-ipc.md §3).
fn too_small() -> R {
    let p = port_with_send()?;
    let body = [0x5au8; 512];
    msg(send_simple(p, PING, &body, Some(0)))?;
    let mut small = [0u8; 64];
    // SAFETY: receive only.
    let r = unsafe {
        traps::mach_msg(
            &mut small,
            abi::RCV_MSG | abi::RCV_LARGE | abi::RCV_TIMEOUT,
            0,
            p,
            0,
        )
    };
    expect_err(r, abi::RCV_TOO_LARGE, "RCV_LARGE into a short buffer")?;
    let needed = abi::Header::from_bytes(&small).map_or(0, |h| h.size as usize);
    if needed <= small.len() || needed > buf().len() {
        return Err("RCV_TOO_LARGE did not report the size needed");
    }
    let n = msg(traps::msg_receive(buf(), p, Some(0)))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if n != needed || m.items().next() != Some(Item::Inline(&body)) {
        return Err("the message kept was not the one sent");
    }
    msg(send_simple(p, PING, &body, Some(0)))?;
    expect_err(
        traps::msg_receive(&mut small, p, Some(0)),
        abi::RCV_TOO_LARGE,
        "a short buffer did not get RCV_TOO_LARGE",
    )?;
    if kern(traps::port_status(p))?.num_msgs != 0 {
        return Err("without RCV_LARGE the message was not destroyed");
    }
    kern(traps::port_deallocate(p))
}

/// Messages that lie or name what the sender does not hold are refused,
/// and IPC still works afterwards.
fn malicious() -> R {
    // A name that was never allocated.
    expect_err(
        send_simple(0x0077_7700, PING, b"x", Some(0)),
        abi::SEND_INVALID_DEST,
        "send to a bogus name",
    )?;
    let p = port_with_send()?;
    let q = kern(traps::port_allocate())?;
    kern(traps::port_deallocate(q))?;
    // Moving a receive right we no longer hold.
    let b = buf();
    let n = Builder::new(b)
        .dest(p, abi::COPY_SEND)
        .id(PING)
        .ports(&[q], abi::MOVE_RECEIVE)
        .finish()
        .map_err(|e| e.name())?;
    if traps::msg_send(&b[..n], Some(0)).is_ok() {
        return Err("moved a receive right it does not hold");
    }
    // A header whose size runs past what was handed to the kernel.
    let n = Builder::new(b)
        .dest(p, abi::COPY_SEND)
        .id(PING)
        .inline(&[1; 64])
        .finish()
        .map_err(|e| e.name())?;
    b[4..8].copy_from_slice(&((n + 512) as u32).to_le_bytes());
    // SAFETY: no out-of-line items.
    if unsafe { traps::mach_msg(b, abi::SEND_MSG | abi::SEND_TIMEOUT, n, 0, 0) }.is_ok() {
        return Err("a header size past the message was accepted");
    }
    // An item whose length runs past the message end.
    let n = Builder::new(b)
        .dest(p, abi::COPY_SEND)
        .id(PING)
        .inline(&[2; 16])
        .finish()
        .map_err(|e| e.name())?;
    let item_len_at = abi::HEADER_SIZE + 4;
    b[item_len_at..item_len_at + 4].copy_from_slice(&4000u32.to_le_bytes());
    // SAFETY: no out-of-line items.
    if unsafe { traps::mach_msg(b, abi::SEND_MSG | abi::SEND_TIMEOUT, n, 0, 0) }.is_ok() {
        return Err("an item past the message end was accepted");
    }
    // An item of a kind that does not exist.
    let n = Builder::new(b)
        .dest(p, abi::COPY_SEND)
        .id(PING)
        .inline(&[3; 8])
        .finish()
        .map_err(|e| e.name())?;
    b[abi::HEADER_SIZE] = 0x7f;
    // SAFETY: no out-of-line items.
    if unsafe { traps::mach_msg(b, abi::SEND_MSG | abi::SEND_TIMEOUT, n, 0, 0) }.is_ok() {
        return Err("an item of an unknown kind was accepted");
    }
    if kern(traps::port_status(p))?.num_msgs != 0 {
        return Err("a refused message was queued");
    }
    // And the port still works.
    msg(send_simple(p, PING, b"ok", Some(0)))?;
    msg(traps::msg_receive(buf(), p, Some(0)))?;
    kern(traps::port_deallocate(p))
}

/// Starts `ipctest ROLE` with our rendezvous port as its bootstrap port and
/// waits for its hello carrying a send right to its port.
fn start_child(role: &[u8]) -> Result<(Name, Name), &'static str> {
    let rendezvous = port_with_send()?;
    let me = kern(traps::task_self())?;
    kern(traps::task_set_bootstrap_port(me, rendezvous))?;
    let task = kern(traps::task_create(b"ipctest", role))?;
    let n = msg(traps::msg_receive(buf(), rendezvous, T))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if m.id() != HELLO {
        return Err("child's first message is not hello");
    }
    let port = first_port(&m).ok_or("hello without a port")?;
    kern(traps::port_deallocate(rendezvous))?;
    Ok((task, port))
}

/// When the task holding a receive right dies, a sender that asked is
/// told (dead-name notification) and its send right is a dead name.
fn dead_name() -> R {
    let (_task, port) = start_child(b"child-exit")?;
    let notify = kern(traps::port_allocate())?;
    kern(traps::port_request_dead_name(port, notify))?;
    msg(send_simple(port, DIE, b"", T))?;
    let n = msg(traps::msg_receive(buf(), notify, T))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if m.id() != abi::NOTIFY_DEAD_NAME {
        return Err("the notification is not NOTIFY_DEAD_NAME");
    }
    if send_simple(port, PING, b"", Some(0)).is_ok() {
        return Err("a send to a dead name succeeded");
    }
    let _ = traps::port_deallocate(port);
    kern(traps::port_deallocate(notify))
}

/// A task blocked in receive is terminated by another; its port dies
/// (seen by dead-name notification) and the killer carries on.
fn kill_blocked() -> R {
    let (task, port) = start_child(b"child-block")?;
    let notify = kern(traps::port_allocate())?;
    kern(traps::port_request_dead_name(port, notify))?;
    kern(traps::task_terminate(task))?;
    let n = msg(traps::msg_receive(buf(), notify, T))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if m.id() != abi::NOTIFY_DEAD_NAME {
        return Err("no dead-name notification for the killed task's port");
    }
    let _ = traps::port_deallocate(port);
    let _ = traps::port_deallocate(task);
    kern(traps::port_deallocate(notify))
}

static SHARED: AtomicU64 = AtomicU64::new(0);
static mut STACK: [u64; 2048] = [0; 2048];

extern "C" fn writer(arg: u64) -> ! {
    SHARED.store(arg, Ordering::SeqCst);
    if let Ok(me) = traps::thread_self() {
        let _ = traps::thread_terminate(me);
    }
    rt::exit(3)
}

/// A thread created in our task shares its memory: it writes, we read.
fn thread_shares_memory() -> R {
    let me = kern(traps::task_self())?;
    let top = (&raw mut STACK) as u64 + core::mem::size_of::<[u64; 2048]>() as u64 - 8;
    // SAFETY: `writer` runs on STACK, which nothing else uses.
    let t = kern(unsafe { traps::thread_create(me, writer as *const () as u64, top, 0xfeed) })?;
    let idle = kern(traps::port_allocate())?;
    for _ in 0..500 {
        if SHARED.load(Ordering::SeqCst) == 0xfeed {
            let _ = traps::port_deallocate(t);
            return kern(traps::port_deallocate(idle));
        }
        // Sleep 2 ms: lets the other thread run.
        let _ = traps::msg_receive(buf(), idle, Some(2));
    }
    Err("the new thread's write was never seen")
}

static mut STACK2: [u64; 2048] = [0; 2048];
static FIXED: AtomicU64 = AtomicU64::new(0);

extern "C" fn faulter(_: u64) -> ! {
    // SAFETY: a deliberate #UD for the handler to step over (ud2 is 2 bytes).
    unsafe { core::arch::asm!("ud2") };
    FIXED.store(1, Ordering::SeqCst);
    if let Ok(me) = traps::thread_self() {
        let _ = traps::thread_terminate(me);
    }
    rt::exit(4)
}

/// A thread's fault arrives as an exception message; the handler moves its
/// RIP past the bad instruction, replies, and the thread carries on.
fn exception_handler() -> R {
    let me = kern(traps::task_self())?;
    let exc = port_with_send()?;
    let top = (&raw mut STACK2) as u64 + core::mem::size_of::<[u64; 2048]>() as u64 - 8;
    // SAFETY: `faulter` runs on STACK2, which nothing else uses.
    // The task's port, set before the thread exists: it may run (and
    // fault) before thread_create returns to us.
    kern(traps::task_set_exception_port(me, exc))?;
    let t = kern(unsafe { traps::thread_create(me, faulter as *const () as u64, top, 0) })?;
    let n = msg(traps::msg_receive(buf(), exc, T))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if m.id() != abi::EXCEPTION_RAISE {
        return Err("not an EXCEPTION_RAISE message");
    }
    let thread = first_port(&m).ok_or("no thread port in the exception")?;
    let info = m
        .items()
        .find_map(|i| match i {
            Item::Inline(d) if d.len() == core::mem::size_of::<ExceptionInfo>() => Some(d),
            _ => None,
        })
        .ok_or("no ExceptionInfo")?;
    let vector = u64::from_le_bytes(info[..8].try_into().map_err(|_| "short info")?);
    if vector != 6 {
        return Err("exception vector is not #UD");
    }
    let reply = m.header().remote;
    let mut st = kern(traps::thread_get_state(thread))?;
    st.rip += 2;
    // SAFETY: RIP moves to the instruction after ud2 in `faulter`.
    kern(unsafe { traps::thread_set_state(thread, &st) })?;
    let b = buf();
    let n = Builder::new(b)
        .dest(reply, abi::MOVE_SEND_ONCE)
        .id(abi::EXCEPTION_REPLY)
        .inline(&0i32.to_le_bytes())
        .finish()
        .map_err(|e| e.name())?;
    msg(traps::msg_send(&b[..n], T))?;
    kern(traps::task_set_exception_port(me, abi::PORT_NULL))?;
    let idle = kern(traps::port_allocate())?;
    for _ in 0..500 {
        if FIXED.load(Ordering::SeqCst) == 1 {
            let _ = traps::port_deallocate(thread);
            let _ = traps::port_deallocate(t);
            return kern(traps::port_deallocate(idle));
        }
        let _ = traps::msg_receive(buf(), idle, Some(2));
    }
    Err("the resumed thread did not continue past the fault")
}

const MAX_THREADS: usize = 80;
static mut NAMES: [Name; 4096] = [0; 4096];
static mut STACKS: [[u64; 256]; MAX_THREADS] = [[0; 256]; MAX_THREADS];

extern "C" fn blocker(port: u64) -> ! {
    // Blocks until terminated: nobody sends to this port.
    let mut b = [0u8; 64];
    let _ = traps::msg_receive(&mut b, port as Name, None);
    rt::exit(5)
}

/// Each kernel resource a task can make the kernel allocate runs out with
/// an error (never a kill or a panic), and works again once released.
fn exhaustion() -> R {
    // Port names.
    // SAFETY: only this function uses NAMES.
    #[allow(clippy::deref_addrof)] // as in `buf`
    let names = unsafe { &mut *(&raw mut NAMES) };
    let mut ports = 0usize;
    let last = loop {
        if ports == names.len() {
            return Err("port_allocate never refused");
        }
        match traps::port_allocate() {
            Ok(p) => {
                names[ports] = p;
                ports += 1;
            }
            Err(e) => break e,
        }
    };
    if last.0 != abi::KERN_NO_SPACE && last.0 != abi::KERN_RESOURCE_SHORTAGE {
        return Err("port exhaustion gave an unexpected error");
    }
    for n in &names[..ports] {
        kern(traps::port_deallocate(*n))?;
    }
    let p = port_with_send().map_err(|_| "no port after releasing them")?;

    // Queued messages: five ports of backlog 64 hold more than a task may
    // have queued, so the per-task bound is what refuses.
    let mut qs = [0 as Name; 5];
    for q in qs.iter_mut() {
        *q = port_with_send()?;
        kern(traps::port_set_backlog(*q, 64))?;
    }
    let mut queued = 0u32;
    let err = loop {
        match send_simple(qs[queued as usize % qs.len()], PING, b"fill", Some(0)) {
            Ok(()) => {
                queued += 1;
                if queued > 320 {
                    return Err("the queues never filled");
                }
            }
            Err(e) => break e,
        }
    };
    if err.0 != abi::SEND_NO_BUFFER {
        return Err("queueing past the per-task bound was not SEND_NO_BUFFER");
    }
    for i in 0..queued {
        msg(traps::msg_receive(
            buf(),
            qs[i as usize % qs.len()],
            Some(0),
        ))?;
    }
    msg(send_simple(p, PING, b"after", Some(0))).map_err(|_| "no send after draining")?;
    msg(traps::msg_receive(buf(), p, Some(0)))?;
    for q in qs {
        kern(traps::port_deallocate(q))?;
    }

    // Threads.
    let me = kern(traps::task_self())?;
    let mut threads = [0 as Name; MAX_THREADS];
    let mut made = 0;
    let err = loop {
        if made == MAX_THREADS {
            return Err("thread_create never refused");
        }
        let top = (&raw mut STACKS) as u64 + ((made + 1) * 256 * 8) as u64 - 8;
        // SAFETY: each thread has its own slice of STACKS.
        match unsafe { traps::thread_create(me, blocker as *const () as u64, top, u64::from(p)) } {
            Ok(t) => {
                threads[made] = t;
                made += 1;
            }
            Err(e) => break e,
        }
    };
    if err.0 != abi::KERN_RESOURCE_SHORTAGE && err.0 != abi::KERN_NO_SPACE {
        return Err("thread exhaustion gave an unexpected error");
    }
    for t in &threads[..made] {
        kern(traps::thread_terminate(*t))?;
        let _ = traps::port_deallocate(*t);
    }
    let thread_count = made;

    // Tasks: children that block in their hello (backlog 1 on a port we
    // never read) until we kill them.
    let rendezvous = port_with_send()?;
    kern(traps::port_set_backlog(rendezvous, 1))?;
    kern(traps::task_set_bootstrap_port(me, rendezvous))?;
    let mut tasks = [0 as Name; 128];
    let mut made = 0;
    let err = loop {
        if made == tasks.len() {
            return Err("task_create never refused");
        }
        match traps::task_create(b"ipctest", b"child-block") {
            Ok(t) => {
                tasks[made] = t;
                made += 1;
            }
            Err(e) => break e,
        }
    };
    if err.0 != abi::KERN_RESOURCE_SHORTAGE && err.0 != abi::KERN_NO_SPACE {
        return Err("task exhaustion gave an unexpected error");
    }
    for t in &tasks[..made] {
        kern(traps::task_terminate(*t))?;
        let _ = traps::port_deallocate(*t);
    }
    kern(traps::port_deallocate(rendezvous))?;
    kern(traps::port_deallocate(p))?;
    println!(
        "ipctest: exhaustion: {ports} ports, {queued} messages, {thread_count} threads, {made} tasks before refusal"
    );
    // A normal two-task exchange works afterwards.
    let (task, port) = start_child(b"child-exit")?;
    msg(send_simple(port, DIE, b"", T))?;
    let _ = traps::port_deallocate(port);
    let _ = traps::port_deallocate(task);
    Ok(())
}

fn rpc<T>(r: Result<T, libmach::rpc::RpcError>) -> Result<T, &'static str> {
    r.map_err(|e| e.name())
}

/// Sleeps `ms` (a receive that times out on a port nobody sends to).
fn sleep(idle: Name, ms: u32) {
    let mut b = [0u8; 64];
    let _ = traps::msg_receive(&mut b, idle, Some(ms));
}

/// Looks `name` up, retrying while it is not checked in yet.
fn look_up_retry(
    ns: &mut name_server::Client<libmach::rpc::Kernel>,
    idle: Name,
    name: &[u8],
) -> Result<Name, &'static str> {
    for _ in 0..1000 {
        match ns.look_up(name) {
            Ok(p) => return Ok(p),
            Err(libmach::rpc::RpcError::Kern(e)) if e.0 == abi::KERN_INVALID_NAME => sleep(idle, 5),
            Err(e) => return Err(e.name()),
        }
    }
    Err("never checked in")
}

/// The name server in use: it starts an echo server and three clients;
/// the server checks its port in, each client looks it up, makes round
/// trips through it and checks in its own task port as "ok-N". We find
/// the name server through its task's bootstrap port (it sets that to
/// itself), see every "ok-N" and kill what it started.
fn name_server_in_use() -> R {
    let me = kern(traps::task_self())?;
    let idle = kern(traps::port_allocate())?;
    let ns_task = kern(traps::task_create(
        b"nameserver",
        b"ipctest:ns-server ipctest:ns-client1 ipctest:ns-client2 ipctest:ns-client3",
    ))?;
    let mine = traps::task_get_bootstrap_port(me).unwrap_or(abi::PORT_NULL);
    let mut port = abi::PORT_NULL;
    for _ in 0..1000 {
        match traps::task_get_bootstrap_port(ns_task) {
            Ok(p) if p != abi::PORT_NULL && p != mine => {
                port = p;
                break;
            }
            _ => sleep(idle, 5),
        }
    }
    if port == abi::PORT_NULL {
        return Err("the name server never published its port");
    }
    let mut ns = name_server::Client::new(port, libmach::rpc::Kernel::new());
    let mut tasks = [abi::PORT_NULL; 4];
    for (i, name) in [&b"ok-1"[..], b"ok-2", b"ok-3", b"echo-task"]
        .iter()
        .enumerate()
    {
        tasks[i] = look_up_retry(&mut ns, idle, name)?;
    }
    // And we can use the service too.
    let echo = look_up_retry(&mut ns, idle, b"echo")?;
    echo_round_trips(echo, 3)?;
    for t in tasks {
        kern(traps::task_terminate(t))?;
    }
    kern(traps::task_terminate(ns_task))?;
    let _ = traps::port_deallocate(idle);
    Ok(())
}

/// `n` msg_rpc round trips to an echo service; each reply must echo.
fn echo_round_trips(echo: Name, n: u32) -> R {
    let reply = kern(traps::port_allocate())?;
    for i in 0..n {
        let body = i.to_le_bytes();
        let b = buf();
        let len = Builder::new(b)
            .dest(echo, abi::COPY_SEND)
            .reply(reply, abi::MAKE_SEND_ONCE)
            .id(PING)
            .inline(&body)
            .finish()
            .map_err(|e| e.name())?;
        let got = msg(traps::msg_rpc(b, len, reply, T))?;
        let m = Message::parse(&b[..got]).map_err(|e| e.name())?;
        if m.id() != PING + 1 || m.items().next() != Some(Item::Inline(&body)) {
            return Err("the echo did not echo");
        }
    }
    kern(traps::port_deallocate(reply))
}

/// Under the name server: check in an echo service and serve it.
fn ns_server() -> R {
    let mut ns = rpc(libmach::name_server::bootstrap().map_err(libmach::rpc::RpcError::Kern))?;
    let me = kern(traps::task_self())?;
    let p = port_with_send()?;
    rpc(ns.check_in(b"echo", p))?;
    rpc(ns.check_in(b"echo-task", me))?;
    loop {
        let b = buf();
        let n = msg(traps::msg_receive(b, p, None))?;
        let (reply, body) = {
            let m = Message::parse(&b[..n]).map_err(|e| e.name())?;
            let mut body = [0u8; 64];
            let len = match m.items().next() {
                Some(Item::Inline(d)) if d.len() <= body.len() => {
                    body[..d.len()].copy_from_slice(d);
                    d.len()
                }
                _ => 0,
            };
            (m.header().remote, (body, len))
        };
        let len = Builder::new(b)
            .dest(reply, abi::MOVE_SEND_ONCE)
            .id(PING + 1)
            .inline(&body.0[..body.1])
            .finish()
            .map_err(|e| e.name())?;
        let _ = traps::msg_send(&b[..len], Some(0));
    }
}

/// Under the name server: find the echo service, use it, report.
fn ns_client(role: &[u8]) -> R {
    let mut ns = rpc(libmach::name_server::bootstrap().map_err(libmach::rpc::RpcError::Kern))?;
    let idle = kern(traps::port_allocate())?;
    let echo = look_up_retry(&mut ns, idle, b"echo")?;
    echo_round_trips(echo, 10)?;
    let mut name = *b"ok-0";
    name[3] = *role.last().unwrap_or(&b'0');
    rpc(ns.check_in(&name, kern(traps::task_self())?))?;
    // Stay alive (our task port is what we checked in) until killed.
    let _ = traps::msg_receive(buf(), idle, None);
    Ok(())
}

/// Rights move between tasks: we move a receive right to a child and give
/// it a send-once right to our reply port. Messages we then send with our
/// send right arrive at the child; its answer comes back through the
/// send-once right, which a second use cannot reach again.
fn rights_move() -> R {
    let (task, child_port) = start_child(b"child-rights")?;
    let p = port_with_send()?;
    let q = kern(traps::port_allocate())?;
    let b = buf();
    let n = Builder::new(b)
        .dest(child_port, abi::COPY_SEND)
        .reply(q, abi::MAKE_SEND_ONCE)
        .id(PING)
        .ports(&[p], abi::MOVE_RECEIVE)
        .finish()
        .map_err(|e| e.name())?;
    msg(traps::msg_send(&b[..n], T))?;
    if kern(traps::port_status(p)).is_ok_and(|s| s.receiver != 0) {
        return Err("we still hold the receive right we moved");
    }
    msg(send_simple(p, PING + 2, b"to the new holder", T))?;
    let n = msg(traps::msg_receive(buf(), q, T))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if m.id() != PING + 3 || m.items().next() != Some(Item::Inline(b"to the new holder")) {
        return Err("the moved receive right did not get our message");
    }
    expect_err(
        traps::msg_receive(buf(), q, Some(50)),
        abi::RCV_TIMED_OUT,
        "a send-once right was used twice",
    )?;
    kern(traps::task_terminate(task))?;
    for name in [p, q, child_port, task] {
        let _ = traps::port_deallocate(name);
    }
    Ok(())
}

/// `child-rights`: receives a receive right and a send-once right, waits
/// for a message on the moved right, answers it through the send-once
/// right, then tries that right again.
fn child_rights(mine: Name) -> R {
    let n = msg(traps::msg_receive(buf(), mine, T))?;
    let (moved, once) = {
        let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
        (
            first_port(&m).ok_or("no right in the message")?,
            m.header().remote,
        )
    };
    let n = msg(traps::msg_receive(buf(), moved, T))?;
    let mut body = [0u8; 64];
    let len = {
        let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
        match m.items().next() {
            Some(Item::Inline(d)) if d.len() <= body.len() => {
                body[..d.len()].copy_from_slice(d);
                d.len()
            }
            _ => return Err("no body"),
        }
    };
    for _ in 0..2 {
        let b = buf();
        let n = Builder::new(b)
            .dest(once, abi::MOVE_SEND_ONCE)
            .id(PING + 3)
            .inline(&body[..len])
            .finish()
            .map_err(|e| e.name())?;
        // The second send must fail: the right was consumed.
        let _ = traps::msg_send(&b[..n], Some(0));
    }
    let _ = traps::msg_receive(buf(), moved, None);
    Ok(())
}

/// The child roles: say hello with a fresh port, then wait (`child-exit`
/// exits on DIE; `child-block` blocks until it is killed).
fn child(role: &[u8]) -> i32 {
    let run = || -> R {
        let me = kern(traps::task_self())?;
        let boot = kern(traps::task_get_bootstrap_port(me))?;
        let p = kern(traps::port_allocate())?;
        let b = buf();
        let n = Builder::new(b)
            .dest(boot, abi::COPY_SEND)
            .id(HELLO)
            .ports(&[p], abi::MAKE_SEND)
            .finish()
            .map_err(|e| e.name())?;
        msg(traps::msg_send(&b[..n], T))?;
        if role == b"child-rights" {
            return child_rights(p);
        }
        let timeout = if role == b"child-block" { None } else { T };
        msg(traps::msg_receive(buf(), p, timeout)).map(|_| ())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            println!("ipctest child: {e}");
            1
        }
    }
}

type Test = (&'static str, fn() -> R);

const TESTS: &[Test] = &[
    ("receive-timeout", receive_timeout),
    ("backlog", backlog),
    ("too-small", too_small),
    ("malicious", malicious),
    ("dead-name", dead_name),
    ("kill-blocked", kill_blocked),
    ("thread", thread_shares_memory),
    ("exception", exception_handler),
    ("rights", rights_move),
    ("name-server", name_server_in_use),
    ("exhaustion", exhaustion),
];

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args).peekable();
    if let Some(role) = words.peek().copied() {
        let r = if role.starts_with(b"child-") {
            return child(role);
        } else if role == b"ns-server" {
            Some(ns_server())
        } else if role.starts_with(b"ns-client") {
            Some(ns_client(role))
        } else {
            None
        };
        if let Some(r) = r {
            if let Err(e) = r {
                println!("ipctest {}: {e}", rt::str(role));
                return 1;
            }
            return 0;
        }
    }
    let wanted: [&[u8]; 16] = {
        let mut w: [&[u8]; 16] = [b""; 16];
        for (slot, word) in w.iter_mut().zip(words) {
            *slot = word;
        }
        w
    };
    let all = wanted[0].is_empty() || wanted[0] == b"all";
    let mut failed = 0;
    for (name, test) in TESTS {
        if !all && !wanted.contains(&name.as_bytes()) {
            continue;
        }
        match test() {
            Ok(()) => println!("ipctest: {name} ok"),
            Err(why) => {
                println!("ipctest: {name} FAILED: {why}");
                failed += 1;
            }
        }
    }
    println!("ipctest: {failed} failed");
    failed
}
