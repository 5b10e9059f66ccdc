//! `ipctest [NAME...]`: in-guest tests of Mach IPC, run by tests/boot.rs
//! (`mach_ipc_semantics_in_the_guest`).
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
    kern(traps::port_allocate_with_send())
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

/// A receive on an empty port with a timeout ends in RCV_TIMED_OUT (short
/// and long timeouts, and a poll) instead of blocking. How long it waited
/// is not asserted: timing belongs in benchmarks, not in tests.
fn receive_timeout() -> R {
    let p = kern(traps::port_allocate())?;
    for ms in [10, 100, 0] {
        expect_err(
            traps::msg_receive(buf(), p, Some(ms)),
            abi::RCV_TIMED_OUT,
            "receive on an empty port did not time out",
        )?;
    }
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

/// The raw mach_msg trap, for buffers and sizes libmach would not pass.
///
/// # Safety
/// The kernel reads and writes `buf` as for any mach_msg: it must be
/// memory nothing else uses, or unmapped.
unsafe fn raw_mach_msg(buf: u64, option: u32, send: u64, rcv: u64, name: Name) -> u32 {
    let r: u64;
    // SAFETY: the caller's promise about `buf`; no other memory is named.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") abi::TRAP_MACH_MSG => r, in("rdi") buf,
            in("rsi") u64::from(option), in("rdx") send, in("r10") rcv, in("r8") u64::from(name),
            in("r9") 0u64, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r as u32
}

/// An address no task has mapped (the `fault` program dies writing it).
const UNMAPPED: u64 = 0xdead_0000;

/// The result code of sending `b[..n]` (no waiting).
fn send_code(n: usize) -> u32 {
    // SAFETY: the tests' messages carry no deallocating out-of-line items.
    match unsafe { traps::mach_msg(buf(), abi::SEND_MSG | abi::SEND_TIMEOUT, n, 0, 0) } {
        Ok(()) => abi::MSG_SUCCESS,
        Err(MsgError(c)) => c,
    }
}

/// `got` is the documented `want`; otherwise says which case and fails.
fn refused(what: &str, got: u32, want: u32) -> R {
    if got == want {
        return Ok(());
    }
    println!("ipctest: malicious: {what}: got {got:#x}, want {want:#x}");
    Err("a malicious message was not refused with the documented error")
}

/// Builds a message to `dest` with `f`, applies `patch` to the bytes and
/// sends `size(n)` of them; checks the send fails with `want`.
fn lie(
    what: &str,
    want: u32,
    f: impl FnOnce(&mut Builder<'_>),
    patch: impl FnOnce(&mut [u8], usize) -> usize,
) -> R {
    let b = buf();
    let mut builder = Builder::new(b);
    f(&mut builder);
    let n = builder.finish().map_err(|e| e.name())?;
    let n = patch(buf(), n);
    refused(what, send_code(n), want)
}

fn as_is(_: &mut [u8], n: usize) -> usize {
    n
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Messages that lie, or name what the sender does not hold, are refused
/// with the error docs/mach-ipc.md §4 gives for each; nothing is queued, a
/// failed send leaves the sender's rights as they were, and IPC still
/// works afterwards.
fn malicious() -> R {
    let p = port_with_send()?;
    let recv_only = kern(traps::port_allocate())?;
    let gone = kern(traps::port_allocate())?;
    kern(traps::port_deallocate(gone))?;
    let bogus: Name = 0x0077_7700;
    let body = |b: &mut Builder<'_>| {
        b.dest(p, abi::COPY_SEND).id(PING).inline(&[7; 16]);
    };
    let item = abi::HEADER_SIZE;

    // Destinations and reply ports.
    lie(
        "bogus destination",
        abi::SEND_INVALID_DEST,
        |b| {
            b.dest(bogus, abi::COPY_SEND).id(PING);
        },
        as_is,
    )?;
    lie(
        "destination held as a receive right only",
        abi::SEND_INVALID_DEST,
        |b| {
            b.dest(recv_only, abi::COPY_SEND).id(PING);
        },
        as_is,
    )?;
    lie(
        "deallocated destination",
        abi::SEND_INVALID_DEST,
        |b| {
            b.dest(gone, abi::COPY_SEND).id(PING);
        },
        as_is,
    )?;
    lie(
        "bogus reply port",
        abi::SEND_INVALID_REPLY,
        |b| {
            b.dest(p, abi::COPY_SEND)
                .reply(bogus, abi::MAKE_SEND_ONCE)
                .id(PING);
        },
        as_is,
    )?;

    // Rights the sender does not hold.
    lie(
        "moving a receive right no longer held",
        abi::SEND_INVALID_RIGHT,
        |b| {
            b.dest(p, abi::COPY_SEND)
                .id(PING)
                .ports(&[gone], abi::MOVE_RECEIVE);
        },
        as_is,
    )?;
    lie(
        "copying a send right never held",
        abi::SEND_INVALID_RIGHT,
        |b| {
            b.dest(p, abi::COPY_SEND)
                .id(PING)
                .ports(&[recv_only], abi::COPY_SEND);
        },
        as_is,
    )?;
    lie(
        "a bogus name in a ports item",
        abi::SEND_INVALID_RIGHT,
        |b| {
            b.dest(p, abi::COPY_SEND)
                .id(PING)
                .ports(&[bogus], abi::COPY_SEND);
        },
        as_is,
    )?;
    lie(
        "a ports item with a bad disposition",
        abi::SEND_INVALID_RIGHT,
        |b| {
            b.dest(p, abi::COPY_SEND)
                .id(PING)
                .ports(&[p], abi::COPY_SEND);
        },
        |m, n| {
            m[item + 1] = 99;
            n
        },
    )?;
    // A send right moved in one item, then a bad name in the next: the
    // send fails and the right is back where it was.
    let s = port_with_send()?;
    lie(
        "a good move then a bad name",
        abi::SEND_INVALID_RIGHT,
        |b| {
            b.dest(p, abi::COPY_SEND)
                .id(PING)
                .ports(&[s], abi::MOVE_SEND)
                .ports(&[bogus], abi::COPY_SEND);
        },
        as_is,
    )?;
    if kern(traps::port_status(s))?.send_refs != 1 {
        return Err("a failed send did not give back the send right it moved");
    }
    kern(traps::port_deallocate(s))?;

    // Sizes that lie.
    lie(
        "header size past the message",
        abi::SEND_MSG_TOO_SMALL,
        body,
        |m, n| {
            put32(m, 4, (n + 512) as u32);
            n
        },
    )?;
    lie(
        "header size short of the message",
        abi::SEND_MSG_TOO_SMALL,
        body,
        |m, n| {
            put32(m, 4, (n - 8) as u32);
            n
        },
    )?;
    lie(
        "a size not a multiple of 8",
        abi::SEND_MSG_TOO_SMALL,
        body,
        |m, n| {
            put32(m, 4, (n + 4) as u32);
            n + 4
        },
    )?;
    lie(
        "shorter than a header",
        abi::SEND_MSG_TOO_SMALL,
        body,
        |m, _| {
            put32(m, 4, 16);
            16
        },
    )?;
    lie(
        "an item past the message end",
        abi::SEND_INVALID_TYPE,
        body,
        |m, n| {
            put32(m, item + 4, 4000);
            n
        },
    )?;
    lie(
        "an item length that overflows",
        abi::SEND_INVALID_TYPE,
        body,
        |m, n| {
            put32(m, item + 4, u32::MAX);
            n
        },
    )?;
    lie(
        "a ports count past the message end",
        abi::SEND_INVALID_TYPE,
        |b| {
            b.dest(p, abi::COPY_SEND)
                .id(PING)
                .ports(&[p], abi::COPY_SEND);
        },
        |m, n| {
            put32(m, item + 4, 1000);
            n
        },
    )?;
    // SAFETY (both raw calls): the kernel refuses before touching memory.
    let big = unsafe { raw_mach_msg(buf().as_ptr() as u64, abi::SEND_MSG, 65536 + 8, 0, 0) };
    refused("more than MSG_SIZE_MAX", big, abi::SEND_TOO_LARGE)?;

    // Bad item types and reserved bits.
    lie(
        "an item of an unknown kind",
        abi::SEND_INVALID_TYPE,
        body,
        |m, n| {
            m[item] = 0x7f;
            n
        },
    )?;
    lie(
        "an item's reserved bytes set",
        abi::SEND_INVALID_TYPE,
        body,
        |m, n| {
            m[item + 2] = 1;
            n
        },
    )?;
    lie(
        "a ports item in a message not marked complex",
        abi::SEND_INVALID_TYPE,
        |b| {
            b.dest(p, abi::COPY_SEND)
                .id(PING)
                .ports(&[p], abi::COPY_SEND);
        },
        |m, n| {
            m[3] &= 0x7f;
            n
        },
    )?;
    lie(
        "header bits 16-30 set",
        abi::SEND_INVALID_TYPE,
        body,
        |m, n| {
            m[2] = 0x40;
            n
        },
    )?;

    // Memory the sender cannot read, or the receiver write.
    lie(
        "an out-of-line region not mapped",
        abi::SEND_INVALID_DATA,
        |b| {
            b.dest(p, abi::COPY_SEND).id(PING);
            // SAFETY: without deallocate the region is only read (and it is
            // not mapped, which is the point).
            unsafe { b.ool_raw(UNMAPPED, 4096, false) };
        },
        as_is,
    )?;
    // SAFETY: an unmapped buffer; the kernel must refuse it.
    let r = unsafe { raw_mach_msg(UNMAPPED, abi::SEND_MSG, 64, 0, 0) };
    refused("a message buffer not mapped", r, abi::SEND_INVALID_DATA)?;
    if kern(traps::port_status(p))?.num_msgs != 0 {
        return Err("a refused message was queued");
    }
    expect_err(
        traps::msg_receive(buf(), bogus, Some(0)),
        abi::RCV_INVALID_NAME,
        "a receive on a bogus name was not RCV_INVALID_NAME",
    )?;
    let task = kern(traps::task_self())?;
    expect_err(
        traps::msg_receive(buf(), task, Some(0)),
        abi::RCV_INVALID_NAME,
        "a receive on a send right was not RCV_INVALID_NAME",
    )?;
    msg(send_simple(p, PING, b"to a bad buffer", Some(0)))?;
    // SAFETY: an unmapped buffer; the kernel must refuse to write it.
    let r = unsafe { raw_mach_msg(UNMAPPED, abi::RCV_MSG | abi::RCV_TIMEOUT, 0, 256, p) };
    refused("a receive buffer not mapped", r, abi::RCV_INVALID_DATA)?;
    // The message was dequeued and is lost (docs §4, as in Mach 3).
    expect_err(
        traps::msg_receive(buf(), p, Some(0)),
        abi::RCV_TIMED_OUT,
        "a message that could not be written out stayed queued",
    )?;

    // And the port still works.
    msg(send_simple(p, PING, b"ok", Some(0)))?;
    let n = msg(traps::msg_receive(buf(), p, Some(0)))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if m.items().next() != Some(Item::Inline(b"ok")) {
        return Err("the port did not work after the malicious messages");
    }
    kern(traps::port_deallocate(recv_only))?;
    kern(traps::port_deallocate(p))
}

/// Starts `ipctest ROLE` with our rendezvous port as its bootstrap port and
/// waits for its hello carrying a send right to its port.
fn start_child(role: &[u8]) -> Result<(Name, Name), &'static str> {
    let rendezvous = port_with_send()?;
    let me = kern(traps::task_self())?;
    kern(traps::task_set_bootstrap_port(me, rendezvous))?;
    let task = kern(traps::task_create(b"ipctest", role, false))?;
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
/// told (dead-name notification naming the right), its send right is a
/// dead name (`port_status` finds the name but no port), a send to it
/// fails with SEND_INVALID_DEST, and deallocating it frees the name.
fn dead_name() -> R {
    let (task, port) = start_child(b"child-exit")?;
    let notify = kern(traps::port_allocate())?;
    kern(traps::port_request_dead_name(port, notify))?;
    if kern(traps::port_status(port))?.send_refs == 0 {
        return Err("no send right to the child's port before it died");
    }
    msg(send_simple(port, DIE, b"", T))?;
    let n = msg(traps::msg_receive(buf(), notify, T))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if m.id() != abi::NOTIFY_DEAD_NAME {
        return Err("the notification is not NOTIFY_DEAD_NAME");
    }
    let named = match m.items().next() {
        Some(Item::Inline(d)) if d.len() == 4 => u32::from_le_bytes([d[0], d[1], d[2], d[3]]),
        _ => return Err("the notification does not carry the dead name"),
    };
    if named != port {
        return Err("the notification names another right");
    }
    match traps::port_status(port) {
        Err(e) if e.0 == abi::KERN_INVALID_RIGHT => {}
        _ => return Err("the send right did not become a dead name"),
    }
    expect_err(
        send_simple(port, PING, b"", Some(0)),
        abi::SEND_INVALID_DEST,
        "a send to a dead name was not SEND_INVALID_DEST",
    )?;
    // Deallocate the dead name until the name is gone (the notification
    // may hold a reference of its own, as in Mach).
    for _ in 0..4 {
        if traps::port_deallocate(port).is_err() {
            break;
        }
    }
    match traps::port_status(port) {
        Err(e) if e.0 == abi::KERN_INVALID_NAME => {}
        _ => return Err("deallocating the dead name did not free the name"),
    }
    let _ = traps::port_deallocate(task);
    kern(traps::port_deallocate(notify))
}

/// A task blocked in receive is terminated by another; its port dies
/// (seen by dead-name notification) and the killer carries on.
fn kill_blocked() -> R {
    let (task, port) = start_child(b"child-block")?;
    let notify = kern(traps::port_allocate())?;
    kern(traps::port_request_dead_name(port, notify))?;
    // It sent its hello and blocked in the same trap (see `child`).
    kern(traps::task_terminate(task))?;
    let n = msg(traps::msg_receive(buf(), notify, T))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if m.id() != abi::NOTIFY_DEAD_NAME {
        return Err("no dead-name notification for the killed task's port");
    }
    if traps::task_terminate(task).is_ok() {
        return Err("a second task_terminate of the dead task succeeded");
    }
    let _ = traps::port_deallocate(port);
    let _ = traps::port_deallocate(task);
    kern(traps::port_deallocate(notify))?;
    // The killer goes on, and so does the kernel: a new child starts,
    // says hello and takes a message.
    let (task, port) = start_child(b"child-exit")?;
    msg(send_simple(port, DIE, b"", T))?;
    let _ = traps::port_deallocate(port);
    kern(traps::port_deallocate(task))
}

static SHARED: AtomicU64 = AtomicU64::new(0);
/// Sizes of the statics below are kept small: the image has no .bss (it is
/// all .data) and task_create copies it in the kernel, once per child.
const STACK_WORDS: usize = 1024;
static mut STACK: [u64; STACK_WORDS] = [0; STACK_WORDS];

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
    let top = (&raw mut STACK) as u64 + core::mem::size_of::<[u64; STACK_WORDS]>() as u64 - 8;
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

static mut STACK2: [u64; STACK_WORDS] = [0; STACK_WORDS];
static FIXED: AtomicU64 = AtomicU64::new(0);
/// Where the handler points the faulting store.
static TARGET: AtomicU64 = AtomicU64::new(0);
const STORED: u64 = 0x5eed_0ffa_1700;

extern "C" fn faulter(_: u64) -> ! {
    // SAFETY: a deliberate #UD for the handler to step over (ud2 is 2 bytes).
    unsafe { core::arch::asm!("ud2") };
    // A store through an unmapped address: the handler points rdi at
    // TARGET and the store is retried there.
    let mut at = UNMAPPED;
    // SAFETY: a deliberate #PF; the handler redirects rdi before resuming.
    unsafe {
        core::arch::asm!("mov qword ptr [rdi], rsi", inout("rdi") at, in("rsi") STORED,
            options(nostack))
    };
    if at == TARGET.as_ptr() as u64 && TARGET.load(Ordering::SeqCst) == STORED {
        FIXED.store(1, Ordering::SeqCst);
    } else {
        FIXED.store(2, Ordering::SeqCst);
    }
    if let Ok(me) = traps::thread_self() {
        let _ = traps::thread_terminate(me);
    }
    rt::exit(4)
}

/// Receives one exception on `exc`: its thread port, its info and the
/// reply right.
fn catch(exc: Name) -> Result<(Name, ExceptionInfo, Name), &'static str> {
    let n = msg(traps::msg_receive(buf(), exc, T))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if m.id() != abi::EXCEPTION_RAISE {
        return Err("not an EXCEPTION_RAISE message");
    }
    let thread = first_port(&m).ok_or("no thread port in the exception")?;
    let d = m
        .items()
        .find_map(|i| match i {
            Item::Inline(d) if d.len() == core::mem::size_of::<ExceptionInfo>() => Some(d),
            _ => None,
        })
        .ok_or("no ExceptionInfo")?;
    let word = |i: usize| u64::from_le_bytes(d[8 * i..8 * i + 8].try_into().unwrap_or([0; 8]));
    let info = ExceptionInfo {
        vector: word(0),
        error: word(1),
        rip: word(2),
        cr2: word(3),
    };
    Ok((thread, info, m.header().remote))
}

/// Answers an exception: 0 resumes the thread.
fn resume(reply: Name) -> R {
    let b = buf();
    let n = Builder::new(b)
        .dest(reply, abi::MOVE_SEND_ONCE)
        .id(abi::EXCEPTION_REPLY)
        .inline(&0i32.to_le_bytes())
        .finish()
        .map_err(|e| e.name())?;
    msg(traps::msg_send(&b[..n], T))
}

/// A thread's faults arrive as exception messages at its task's
/// exception port; the handler (our main thread) reads the thread's
/// registers, fixes them and replies, and the thread carries on: first a
/// ud2 (RIP moved past it), then a store through an unmapped address
/// (the address register pointed at valid memory, the store retried).
fn exception_handler() -> R {
    let me = kern(traps::task_self())?;
    let exc = port_with_send()?;
    let top = (&raw mut STACK2) as u64 + core::mem::size_of::<[u64; STACK_WORDS]>() as u64 - 8;
    // The task's port, set before the thread exists: it may run (and
    // fault) before thread_create returns to us.
    kern(traps::task_set_exception_port(me, exc))?;
    // SAFETY: `faulter` runs on STACK2, which nothing else uses.
    let t = kern(unsafe { traps::thread_create(me, faulter as *const () as u64, top, 0) })?;

    let (thread, info, reply) = catch(exc)?;
    if info.vector != 6 {
        return Err("the first exception is not #UD");
    }
    let mut st = kern(traps::thread_get_state(thread))?;
    if st.rip != info.rip {
        return Err("thread_get_state's RIP is not the faulting one");
    }
    st.rip += 2;
    // SAFETY: RIP moves to the instruction after ud2 in `faulter`.
    kern(unsafe { traps::thread_set_state(thread, &st) })?;
    resume(reply)?;
    let _ = traps::port_deallocate(thread);

    let (thread, info, reply) = catch(exc)?;
    if info.vector != 14 || info.cr2 != UNMAPPED {
        println!(
            "ipctest: exception: vector {} cr2 {:#x} error {:#x}",
            info.vector, info.cr2, info.error
        );
        return Err("the second exception is not a #PF at the unmapped address");
    }
    let mut st = kern(traps::thread_get_state(thread))?;
    if st.rdi != UNMAPPED || st.rsi != STORED {
        return Err("thread_get_state does not show the faulting store's registers");
    }
    st.rdi = TARGET.as_ptr() as u64;
    // SAFETY: the store is retried into TARGET, which is ours to write.
    kern(unsafe { traps::thread_set_state(thread, &st) })?;
    resume(reply)?;
    kern(traps::task_set_exception_port(me, abi::PORT_NULL))?;

    let idle = kern(traps::port_allocate())?;
    for _ in 0..500 {
        match FIXED.load(Ordering::SeqCst) {
            0 => sleep(idle, 2),
            1 => {
                let _ = traps::port_deallocate(thread);
                let _ = traps::port_deallocate(t);
                return kern(traps::port_deallocate(idle));
            }
            _ => return Err("the resumed store did not land where the handler pointed it"),
        }
    }
    Err("the resumed thread did not continue past the faults")
}

/// Past the documented bounds (64 threads, 1,024 names per task).
const MAX_THREADS: usize = 72;
const BLOCKER_WORDS: usize = 128;
static mut NAMES: [Name; 2048] = [0; 2048];
static mut STACKS: [[u64; BLOCKER_WORDS]; MAX_THREADS] = [[0; BLOCKER_WORDS]; MAX_THREADS];

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
        let top = (&raw mut STACKS) as u64 + ((made + 1) * BLOCKER_WORDS * 8) as u64 - 8;
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

    // Tasks: name servers with nothing to start, which block in receive
    // until we kill them (a small program: each task_create copies its
    // image in the kernel, and ipctest's is large).
    let mut tasks = [0 as Name; 128];
    let mut made = 0;
    let err = loop {
        if made == tasks.len() {
            return Err("task_create never refused");
        }
        match traps::task_create(b"nameserver", b"", false) {
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
        false,
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

/// Rights move between tasks: we move a receive right and a send right
/// to a child and give it a send-once right to our reply port. Messages
/// we then send with our send right arrive at the child; its answer comes
/// back through the send-once right; the child's second use of that right
/// fails with SEND_INVALID_DEST (it was consumed), which the child reports
/// through the send right we moved to it.
fn rights_move() -> R {
    let (task, child_port) = start_child(b"child-rights")?;
    let p = port_with_send()?;
    let q = kern(traps::port_allocate())?;
    let status = port_with_send()?;
    let b = buf();
    let n = Builder::new(b)
        .dest(child_port, abi::COPY_SEND)
        .reply(q, abi::MAKE_SEND_ONCE)
        .id(PING)
        .ports(&[p], abi::MOVE_RECEIVE)
        .ports(&[status], abi::MOVE_SEND)
        .finish()
        .map_err(|e| e.name())?;
    msg(traps::msg_send(&b[..n], T))?;
    if kern(traps::port_status(p)).is_ok_and(|s| s.receiver != 0) {
        return Err("we still hold the receive right we moved");
    }
    if kern(traps::port_status(status))?.send_refs != 0 {
        return Err("we still hold the send right we moved");
    }
    msg(send_simple(p, PING + 2, b"to the new holder", T))?;
    let n = msg(traps::msg_receive(buf(), q, T))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if m.id() != PING + 3 || m.items().next() != Some(Item::Inline(b"to the new holder")) {
        return Err("the moved receive right did not get our message");
    }
    let n = msg(traps::msg_receive(buf(), status, T))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    let second = match m.items().next() {
        Some(Item::Inline(d)) if m.id() == PING + 4 && d.len() == 4 => {
            u32::from_le_bytes([d[0], d[1], d[2], d[3]])
        }
        _ => return Err("no report through the moved send right"),
    };
    if second != abi::SEND_INVALID_DEST {
        println!("ipctest: rights: the second send-once use returned {second:#x}");
        return Err("a used send-once right was not refused with SEND_INVALID_DEST");
    }
    expect_err(
        traps::msg_receive(buf(), q, Some(20)),
        abi::RCV_TIMED_OUT,
        "a send-once right delivered twice",
    )?;
    kern(traps::task_terminate(task))?;
    for name in [p, q, status, child_port, task] {
        let _ = traps::port_deallocate(name);
    }
    Ok(())
}

/// `child-rights`: receives a receive right, a send right and a send-once
/// right, waits for a message on the moved receive right, answers it
/// through the send-once right, tries that right again and reports the
/// result through the send right.
fn child_rights(mine: Name) -> R {
    let n = msg(traps::msg_receive(buf(), mine, T))?;
    let (moved, status, once) = {
        let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
        let mut it = m.items().filter_map(|i| match i {
            Item::Ports { names, .. } => names.get(0),
            _ => None,
        });
        let moved = it.next().ok_or("no receive right in the message")?;
        let status = it.next().ok_or("no send right in the message")?;
        (moved, status, m.header().remote)
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
    let mut second = abi::MSG_SUCCESS;
    for i in 0..2 {
        let b = buf();
        let n = Builder::new(b)
            .dest(once, abi::MOVE_SEND_ONCE)
            .id(PING + 3)
            .inline(&body[..len])
            .finish()
            .map_err(|e| e.name())?;
        let r = traps::msg_send(&b[..n], Some(0));
        if i == 0 {
            msg(r)?;
        } else if let Err(MsgError(c)) = r {
            second = c;
        }
    }
    msg(send_simple(status, PING + 4, &second.to_le_bytes(), T))?;
    let _ = traps::msg_receive(buf(), moved, None);
    Ok(())
}

const CLIENTS: usize = 3;
const CALLS: u32 = 10;
const DONE: i32 = 102;

/// What the server answers to call `i` of client `c`.
fn answer(c: u32, i: u32) -> u64 {
    (u64::from(c) << 32) | u64::from(i * 7 + 1)
}

fn two_u32(m: &Message<'_>) -> Option<(u32, u32)> {
    match m.items().next() {
        Some(Item::Inline(d)) if d.len() == 8 => Some((
            u32::from_le_bytes([d[0], d[1], d[2], d[3]]),
            u32::from_le_bytes([d[4], d[5], d[6], d[7]]),
        )),
        _ => None,
    }
}

/// Many clients on one server: three tasks each make CALLS msg_rpc calls
/// to our one receive right, each with its own reply port; we check every
/// client's calls arrive once and in order, answer each with a value only
/// that call has, and each client reports how many answers were right.
fn many_clients() -> R {
    let srv = port_with_send()?;
    kern(traps::port_set_backlog(srv, abi::BACKLOG_MAX))?;
    let me = kern(traps::task_self())?;
    kern(traps::task_set_bootstrap_port(me, srv))?;
    let mut tasks = [abi::PORT_NULL; CLIENTS];
    for (c, t) in tasks.iter_mut().enumerate() {
        let mut args = *b"child-client 0";
        args[13] = b'0' + c as u8;
        *t = kern(traps::task_create(b"ipctest", &args, false))?;
    }
    let mut served = [0u32; CLIENTS];
    let mut right = [None; CLIENTS];
    let mut done = 0;
    let mut last = CLIENTS;
    let mut switches = 0;
    while done < CLIENTS {
        let n = msg(traps::msg_receive(buf(), srv, T))?;
        let (id, reply, (c, v)) = {
            let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
            let body = two_u32(&m).ok_or("a request without (client, call)")?;
            (m.id(), m.header().remote, body)
        };
        let ci = c as usize;
        if ci >= CLIENTS {
            return Err("a request from an unknown client");
        }
        match id {
            PING => {
                if v != served[ci] {
                    return Err("a client's calls arrived out of order or twice");
                }
                served[ci] += 1;
                if ci != last {
                    switches += 1;
                    last = ci;
                }
                let b = buf();
                let n = Builder::new(b)
                    .dest(reply, abi::MOVE_SEND_ONCE)
                    .id(PING + 1)
                    .inline(&answer(c, v).to_le_bytes())
                    .finish()
                    .map_err(|e| e.name())?;
                msg(traps::msg_send(&b[..n], T))?;
            }
            DONE if right[ci].is_none() => {
                right[ci] = Some(v);
                done += 1;
            }
            _ => return Err("an unexpected message at the server"),
        }
    }
    for c in 0..CLIENTS {
        if served[c] != CALLS || right[c] != Some(CALLS) {
            println!(
                "ipctest: many-clients: client {c}: {} calls served, {:?} answers right",
                served[c], right[c]
            );
            return Err("a client's calls were not all served and answered right");
        }
    }
    println!(
        "ipctest: many-clients: {CLIENTS} clients x {CALLS} calls, the server switched clients {switches} times"
    );
    for t in tasks {
        let _ = traps::port_deallocate(t);
    }
    kern(traps::port_deallocate(srv))
}

/// `child-client C`: CALLS round trips to the bootstrap port, then a
/// DONE report of how many answers were right.
fn client(c: u32) -> R {
    let me = kern(traps::task_self())?;
    let srv = kern(traps::task_get_bootstrap_port(me))?;
    let reply = kern(traps::port_allocate())?;
    let mut right = 0u32;
    for i in 0..CALLS {
        let b = buf();
        let mut body = [0u8; 8];
        body[..4].copy_from_slice(&c.to_le_bytes());
        body[4..].copy_from_slice(&i.to_le_bytes());
        let n = Builder::new(b)
            .dest(srv, abi::COPY_SEND)
            .reply(reply, abi::MAKE_SEND_ONCE)
            .id(PING)
            .inline(&body)
            .finish()
            .map_err(|e| e.name())?;
        let got = msg(traps::msg_rpc(b, n, reply, T))?;
        let m = Message::parse(&b[..got]).map_err(|e| e.name())?;
        if m.id() == PING + 1 && m.items().next() == Some(Item::Inline(&answer(c, i).to_le_bytes()))
        {
            right += 1;
        }
    }
    let mut body = [0u8; 8];
    body[..4].copy_from_slice(&c.to_le_bytes());
    body[4..].copy_from_slice(&right.to_le_bytes());
    msg(send_simple(srv, DONE, &body, T))
}

/// The child roles: say hello with a fresh port, then wait (`child-exit`
/// exits on DIE; `child-block` blocks until it is killed).
fn child(role: &[u8]) -> i32 {
    let run = || -> R {
        let me = kern(traps::task_self())?;
        let boot = kern(traps::task_get_bootstrap_port(me))?;
        if role == b"child-spin" {
            return child_spin(boot);
        }
        let p = kern(traps::port_allocate())?;
        let b = buf();
        let n = Builder::new(b)
            .dest(boot, abi::COPY_SEND)
            .id(HELLO)
            .ports(&[p], abi::MAKE_SEND)
            .finish()
            .map_err(|e| e.name())?;
        if role == b"child-block" {
            // Hello and receive in one trap: once the parent has the hello,
            // this task is certainly blocked in the receive.
            // SAFETY: no out-of-line items.
            return msg(unsafe { traps::mach_msg(b, abi::SEND_MSG | abi::RCV_MSG, n, p, 0) });
        }
        msg(traps::msg_send(&b[..n], T))?;
        if role == b"child-rights" {
            return child_rights(p);
        }
        msg(traps::msg_receive(buf(), p, T)).map(|_| ())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            println!("ipctest child: {e}");
            1
        }
    }
}

/// Where the spinning threads of `kobject-msgs` start counting.
const MARK: u64 = 1 << 40;
const MARK2: u64 = 2 << 40;
const MARK3: u64 = 3 << 40;

/// Counts in r12 from `start`, forever, never entering the kernel: its
/// progress is visible only in its registers (thread_get_state).
extern "C" fn counter(start: u64) -> ! {
    // SAFETY: a register loop; touches no memory.
    unsafe { core::arch::asm!("2: inc r12", "jmp 2b", in("r12") start, options(noreturn)) }
}

/// Faults (#UD) first, then counts in r12 as `counter` does.
extern "C" fn faulting_counter(start: u64) -> ! {
    // SAFETY: a deliberate #UD (2 bytes) the handler steps over, then a
    // register loop.
    unsafe { core::arch::asm!("ud2", "2: inc r12", "jmp 2b", in("r12") start, options(noreturn)) }
}

/// `child-spin`: says hello with a send right to its thread's port, then
/// counts forever (`counter`) until it is terminated.
fn child_spin(boot: Name) -> R {
    let me = kern(traps::thread_self())?;
    let b = buf();
    let n = Builder::new(b)
        .dest(boot, abi::COPY_SEND)
        .id(HELLO)
        .ports(&[me], abi::COPY_SEND)
        .finish()
        .map_err(|e| e.name())?;
    msg(traps::msg_send(&b[..n], T))?;
    counter(MARK)
}

/// `r` failed with the kernel's (or MIG's) return code `want`.
fn expect_code<T>(r: Result<T, libmach::rpc::RpcError>, want: u32, what: &'static str) -> R {
    match r {
        Err(libmach::rpc::RpcError::Kern(e)) if e.0 == want => Ok(()),
        Err(e) => {
            println!("ipctest: kobject-msgs: {what}: got {}", e.name());
            Err(what)
        }
        Ok(_) => Err(what),
    }
}

/// `r`'s value, or `what` failed (the error printed).
fn ctx<T>(r: Result<T, libmach::rpc::RpcError>, what: &'static str) -> Result<T, &'static str> {
    r.map_err(|e| {
        println!("ipctest: kobject-msgs: {what}: {}", e.name());
        what
    })
}

/// A hand-built request to `dest` (`with` adds its items) and the reply
/// the kernel sends back: (reply id, return code).
fn raw_request(
    dest: Name,
    reply: Name,
    id: i32,
    with: impl FnOnce(&mut Builder<'_>),
) -> Result<(i32, u32), &'static str> {
    let b = buf();
    let mut builder = Builder::new(b);
    builder
        .dest(dest, abi::COPY_SEND)
        .reply(reply, abi::MAKE_SEND_ONCE)
        .id(id);
    with(&mut builder);
    let n = builder.finish().map_err(|e| e.name())?;
    let got = msg(traps::msg_rpc(b, n, reply, Some(0)))?;
    let m = Message::parse(&b[..got]).map_err(|e| e.name())?;
    match m.items().next() {
        Some(Item::Inline(d)) if d.len() == 4 => {
            Ok((m.id(), u32::from_le_bytes([d[0], d[1], d[2], d[3]])))
        }
        _ => Err("a kernel reply without its return code"),
    }
}

/// The thread's r12, read by message while it is briefly suspended.
fn peek_counter(
    th: &mut libmach::kernel_msgs::Client<libmach::rpc::Kernel>,
) -> Result<u64, &'static str> {
    rpc(th.thread_suspend())?;
    let st = rpc(th.thread_get_state());
    rpc(th.thread_resume())?;
    Ok(st?.r12)
}

/// Lets the other task run until `th`'s counter passes `above`.
fn wait_for_count(
    th: &mut libmach::kernel_msgs::Client<libmach::rpc::Kernel>,
    idle: Name,
    above: u64,
) -> Result<u64, &'static str> {
    for _ in 0..500 {
        let c = peek_counter(th)?;
        if c > above {
            return Ok(c);
        }
        sleep(idle, 2);
    }
    Err("a running counter never moved")
}

/// Tasks and threads operated on by messages to their ports, served by
/// the kernel (docs/mach-ipc.md §5.1) — nothing here uses the task traps
/// on the child. A counting child task is suspended by a message (its
/// counter, read by thread_get_state messages, stops) and resumed (it
/// counts again); a thread created in it by message faults into the
/// exception port we set by message, is fixed by get/set_state messages
/// and counts from where set_state put it; unknown ids, bad bodies and
/// operations on the wrong kind of port get their error replies; requests
/// without a reply port are served silently; and a terminate message ends
/// the child, seen by the dead-name notification of its task port.
fn kobject_msgs() -> R {
    use libmach::kernel_msgs::{self as km, Client};
    use libmach::rpc::{Kernel, RpcError};
    let (task, thread) = start_child(b"child-spin")?;
    let reply = kern(traps::port_allocate())?;
    let idle = kern(traps::port_allocate())?;
    let notify = kern(traps::port_allocate())?;
    kern(traps::port_request_dead_name(task, notify))?;
    // The kernel answers within the call: a zero timeout is enough.
    let client = |port: Name| {
        let mut t = Kernel::with_reply_port(reply);
        t.timeout = Some(0);
        Client::new(port, t)
    };
    let (mut t, mut th) = (client(task), client(thread));

    // Suspend and resume by message.
    expect_code(
        th.thread_get_state(),
        abi::KERN_FAILURE,
        "get_state of a running thread",
    )?;
    let c0 = wait_for_count(&mut th, idle, MARK)?;
    ctx(t.task_suspend(), "task_suspend by message")?;
    let c1 = ctx(
        th.thread_get_state(),
        "get_state of the task suspended by message",
    )?
    .r12;
    for _ in 0..5 {
        sleep(idle, 2);
    }
    if c1 < c0 || rpc(th.thread_get_state())?.r12 != c1 {
        return Err("a task suspended by message went on counting");
    }
    ctx(t.task_resume(), "task_resume by message")?;
    wait_for_count(&mut th, idle, c1)?;
    expect_code(
        th.thread_resume(),
        abi::KERN_FAILURE,
        "resume of a thread not suspended",
    )?;

    // A new thread, made by message, faults into the exception port set
    // by message; get_state and set_state by message fix it.
    let exc = port_with_send()?;
    ctx(
        t.task_set_exception_port(exc),
        "task_set_exception_port by message",
    )?;
    // The child runs this same program: our addresses are its addresses,
    // and nothing in it uses STACK2.
    let top = (&raw mut STACK2) as u64 + core::mem::size_of::<[u64; STACK_WORDS]>() as u64 - 8;
    // SAFETY: the thread runs in the child, on its (unused) STACK2.
    let new = ctx(
        unsafe { t.thread_create(faulting_counter as *const () as u64, top, MARK2) },
        "thread_create by message",
    )?;
    let (excepted, info, exc_reply) = catch(exc)?;
    if excepted != new || info.vector != 6 {
        return Err("the new thread's #UD did not reach the exception port set by message");
    }
    let mut nt = client(new);
    let mut st = ctx(nt.thread_get_state(), "get_state of the excepted thread")?;
    if st.rip != info.rip || st.r12 != MARK2 {
        return Err("get_state by message does not show the faulting thread");
    }
    let mut bad = st;
    bad.rip = 0xffff_8000_0000_0000;
    // SAFETY: refused: a kernel address.
    expect_code(
        unsafe { nt.thread_set_state(&bad) },
        abi::KERN_INVALID_VALUE,
        "set_state to a kernel address",
    )?;
    st.rip += 2;
    st.r12 = MARK3;
    // SAFETY: past the ud2 into the loop, in the child's thread.
    ctx(unsafe { nt.thread_set_state(&st) }, "set_state by message")?;
    resume(exc_reply)?;
    let c = wait_for_count(&mut nt, idle, MARK3)?;
    if !(MARK3..MARK3 + (1 << 39)).contains(&c) {
        return Err("the thread did not count from where set_state put it");
    }
    rpc(t.task_set_exception_port(abi::PORT_NULL))?;
    // One-shot calls (a reply port each); a terminated thread's port dies.
    km::thread_terminate(new).map_err(|e| e.name())?;
    match km::thread_suspend(new) {
        Err(RpcError::Msg(MsgError(abi::SEND_INVALID_DEST))) => {}
        _ => return Err("a message to a terminated thread's port was not SEND_INVALID_DEST"),
    }

    // Error replies.
    let want = |got: (i32, u32), id: i32, code: u32, what: &'static str| -> R {
        if got == (id + abi::REPLY_ID_OFFSET, code) {
            return Ok(());
        }
        println!(
            "ipctest: kobject-msgs: {what}: reply {} code {:#x}",
            got.0, got.1
        );
        Err("a bad request did not get its error reply")
    };
    want(
        raw_request(task, reply, 1999, |_| {})?,
        1999,
        abi::MIG_BAD_ID,
        "bogus id",
    )?;
    want(
        raw_request(task, reply, abi::MSG_THREAD_CREATE, |b| {
            b.inline(&1u64.to_le_bytes()).inline(&2u64.to_le_bytes());
        })?,
        abi::MSG_THREAD_CREATE,
        abi::MIG_BAD_ARGUMENTS,
        "thread_create missing an argument",
    )?;
    want(
        raw_request(thread, reply, abi::MSG_THREAD_SET_STATE, |b| {
            b.inline(&[0u8; 100]);
        })?,
        abi::MSG_THREAD_SET_STATE,
        abi::MIG_BAD_ARGUMENTS,
        "set_state with a truncated state",
    )?;
    want(
        raw_request(task, reply, abi::MSG_TASK_SUSPEND, |b| {
            b.inline(b"extra");
        })?,
        abi::MSG_TASK_SUSPEND,
        abi::MIG_BAD_ARGUMENTS,
        "task_suspend with an argument",
    )?;
    expect_code(
        t.thread_suspend(),
        abi::KERN_INVALID_ARGUMENT,
        "a thread operation on a task port",
    )?;
    expect_code(
        th.task_suspend(),
        abi::KERN_INVALID_ARGUMENT,
        "a task operation on a thread port",
    )?;

    // No reply port: served, and nothing comes back.
    let no_reply = |dest: Name, id: i32| -> R {
        let b = buf();
        let n = Builder::new(b)
            .dest(dest, abi::COPY_SEND)
            .id(id)
            .finish()
            .map_err(|e| e.name())?;
        msg(traps::msg_send(&b[..n], Some(0)))
    };
    no_reply(task, abi::MSG_TASK_SUSPEND)?;
    ctx(
        th.thread_get_state(),
        "task_suspend without a reply port was not served",
    )?;
    no_reply(task, 1999)?;
    no_reply(task, abi::MSG_TASK_RESUME)?;
    expect_code(
        th.thread_get_state(),
        abi::KERN_FAILURE,
        "task_resume without a reply port was not served",
    )?;
    expect_err(
        traps::msg_receive(buf(), reply, Some(0)),
        abi::RCV_TIMED_OUT,
        "a request without a reply port was answered",
    )?;

    // The bootstrap port by message, on our own task.
    let me = kern(traps::task_self())?;
    let old = traps::task_get_bootstrap_port(me).ok();
    let mut mine = client(me);
    rpc(mine.task_set_bootstrap_port(exc))?;
    if rpc(mine.task_get_bootstrap_port())? != exc {
        return Err("task_get_bootstrap_port by message is not what was set");
    }
    rpc(mine.task_set_bootstrap_port(old.unwrap_or(abi::PORT_NULL)))?;

    // Terminate by message: the task port dies, and we are told.
    ctx(t.task_terminate(), "task_terminate by message")?;
    let n = msg(traps::msg_receive(buf(), notify, T))?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    if m.id() != abi::NOTIFY_DEAD_NAME
        || m.items().next() != Some(Item::Inline(&task.to_le_bytes()))
    {
        return Err("no dead-name notification for the task terminated by message");
    }
    match t.task_resume() {
        Err(RpcError::Msg(MsgError(abi::SEND_INVALID_DEST))) => {}
        _ => return Err("a message to a terminated task's port was not SEND_INVALID_DEST"),
    }
    for name in [task, thread, new, exc, reply, idle, notify] {
        while traps::port_deallocate(name).is_ok() {}
    }
    Ok(())
}

const TESTS: &[rt::Test] = &[
    ("many-clients", many_clients),
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
    ("kobject-msgs", kobject_msgs),
];

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args).peekable();
    if let Some(role) = words.peek().copied() {
        let r = if role == b"child-client" {
            let c = words
                .nth(1)
                .and_then(|w| w.first())
                .map_or(0, |d| d.wrapping_sub(b'0'));
            Some(client(u32::from(c)))
        } else if role.starts_with(b"child-") {
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
    rt::run_tests("ipctest", TESTS, words)
}
