//! `vmtest [NAME...]`: in-guest tests of the Mach VM calls (Table 3-3), run
//! by tests/boot.rs (`mach_vm_in_the_guest`). Each sub-test prints
//! `vmtest: NAME ok` or `vmtest: NAME FAILED: why`; the exit status is the
//! number that failed. No names: all of them.
//!
//! Faults a test expects are caught as exception messages: a helper thread
//! makes the access, our main thread receives the exception and ends that
//! thread.
#![no_std]
#![no_main]

#[path = "computed_pager.rs"]
mod computed_pager;
mod rt;

use core::sync::atomic::{AtomicU64, Ordering};
use libmach::abi::{self, Name, VM_INHERIT_COPY, VM_INHERIT_NONE, VM_INHERIT_SHARE};
use libmach::message::{Builder, Item, Message, MsgBuf};
use libmach::traps::{self, KernError};
use libmach::vm;

const PAGE: u64 = 4096;
const T: Option<u32> = Some(5_000);

type R = Result<(), &'static str>;

fn kern<T>(r: Result<T, KernError>) -> Result<T, &'static str> {
    r.map_err(|e| e.name())
}

fn expect(r: Result<(), KernError>, want: u32, what: &'static str) -> R {
    match r {
        Err(KernError(c)) if c == want => Ok(()),
        Err(e) => {
            println!("vmtest: {what}: got {}", e.name());
            Err(what)
        }
        Ok(()) => Err(what),
    }
}

fn me() -> Result<Name, &'static str> {
    kern(traps::task_self())
}

fn allocate(size: u64) -> Result<u64, &'static str> {
    let mut at = 0;
    kern(vm::vm_allocate(me()?, &mut at, size, true))?;
    Ok(at)
}

/// Reads and writes go through volatile accesses: the compiler must not
/// assume what the kernel maps there.
fn peek(at: u64) -> u64 {
    // SAFETY: the callers only pass addresses they allocated.
    unsafe { core::ptr::read_volatile(at as *const u64) }
}
fn poke(at: u64, v: u64) {
    // SAFETY: as for peek.
    unsafe { core::ptr::write_volatile(at as *mut u64, v) }
}

/// A word per page, different for every page and `seed`.
fn fill(at: u64, pages: u64, seed: u64) {
    for p in 0..pages {
        poke(at + p * PAGE + 8 * (p % 512), seed ^ (p * 0x9e37_79b9));
    }
}
fn check(at: u64, pages: u64, seed: u64) -> bool {
    (0..pages).all(|p| peek(at + p * PAGE + 8 * (p % 512)) == seed ^ (p * 0x9e37_79b9))
}

static mut BUF: MsgBuf<512> = MsgBuf([0; 512]);

#[allow(clippy::deref_addrof)]
fn buf() -> &'static mut [u8] {
    // SAFETY: only the main thread uses it, never reentrantly.
    unsafe { &mut (*(&raw mut BUF)).0 }
}

// ---- expected faults ----

const STACK_WORDS: usize = 512;
static mut STACK: [u64; STACK_WORDS] = [0; STACK_WORDS];
/// The address the toucher thread accesses, and whether it writes.
static TOUCH_AT: AtomicU64 = AtomicU64::new(0);
static TOUCH_WRITE: AtomicU64 = AtomicU64::new(0);

extern "C" fn toucher(_: u64) -> ! {
    let at = TOUCH_AT.load(Ordering::SeqCst);
    if TOUCH_WRITE.load(Ordering::SeqCst) != 0 {
        poke(at, 1);
    } else {
        let _ = peek(at);
    }
    // Not expected to get here: the access faults.
    if let Ok(t) = traps::thread_self() {
        let _ = traps::thread_terminate(t);
    }
    rt::exit(90)
}

/// Where a thread on a stack of `words` at `base` starts: as just after a
/// call (rsp + 8 16-byte aligned), which the compiler's aligned SSE
/// accesses to the stack rely on.
fn stack_top(base: u64, words: usize) -> u64 {
    ((base + words as u64 * 8) & !15) - 8
}

/// A port with a send right under the same name (made by a message to
/// ourselves).
fn port_with_send() -> Result<Name, &'static str> {
    kern(traps::port_allocate_with_send())
}

/// Accesses `at` from a second thread and returns the page fault's error
/// code if it faulted there (Err if it did not fault as a #PF at `at`).
fn fault_of(at: u64, write: bool) -> Result<u64, &'static str> {
    let me = me()?;
    let exc = port_with_send()?;
    kern(traps::task_set_exception_port(me, exc))?;
    TOUCH_AT.store(at, Ordering::SeqCst);
    TOUCH_WRITE.store(u64::from(write), Ordering::SeqCst);
    let top = stack_top((&raw mut STACK) as u64, STACK_WORDS);
    // SAFETY: `toucher` runs on STACK, which nothing else uses.
    let t = kern(unsafe { traps::thread_create(me, toucher as *const () as u64, top, 0) })?;
    let got = traps::msg_receive(buf(), exc, T).map_err(|e| e.name());
    let _ = traps::task_set_exception_port(me, abi::PORT_NULL);
    let _ = traps::thread_terminate(t);
    let _ = traps::port_deallocate(t);
    let n = got?;
    let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
    let info = m
        .items()
        .find_map(|i| match i {
            Item::Inline(d) if d.len() == 32 => Some(d),
            _ => None,
        })
        .ok_or("no exception info")?;
    let word = |i: usize| u64::from_le_bytes(info[8 * i..8 * i + 8].try_into().unwrap_or([0; 8]));
    let reply = m.header().remote;
    for it in m.items() {
        if let Item::Ports { names, .. } = it {
            for i in 0..names.len() {
                if let Some(n) = names.get(i) {
                    let _ = traps::port_deallocate(n);
                }
            }
        }
    }
    let _ = traps::port_deallocate(reply);
    let _ = traps::port_deallocate(exc);
    if word(0) != 14 || word(3) != at {
        println!(
            "vmtest: fault at {:#x}: vector {} cr2 {:#x}",
            at,
            word(0),
            word(3)
        );
        return Err("the access did not page-fault at its address");
    }
    Ok(word(1))
}

// ---- the tests ----

/// Zero fill, writes that stick, fixed placement, rounding and the
/// argument checks.
fn allocate_and_deallocate() -> R {
    let me = me()?;
    let a = allocate(16 * PAGE)?;
    if !(abi_window(a) && a.is_multiple_of(PAGE)) {
        return Err("vm_allocate placed memory outside the VM window or unaligned");
    }
    if (0..16).any(|p| peek(a + p * PAGE + 64) != 0) {
        return Err("new memory is not zero");
    }
    fill(a, 16, 0xa11c);
    if !check(a, 16, 0xa11c) {
        return Err("written memory does not read back");
    }
    // Fixed: just past it, then over it (refused).
    let mut at = a + 16 * PAGE;
    kern(vm::vm_allocate(me, &mut at, 3 * PAGE, false))?;
    if at != a + 16 * PAGE {
        return Err("a fixed vm_allocate moved");
    }
    let mut over = a + 4 * PAGE;
    expect(
        vm::vm_allocate(me, &mut over, PAGE, false),
        abi::KERN_NO_SPACE,
        "a fixed vm_allocate over allocated memory",
    )?;
    let mut zero = 0;
    expect(
        vm::vm_allocate(me, &mut zero, 0, true),
        abi::KERN_INVALID_ARGUMENT,
        "a zero-sized vm_allocate",
    )?;
    let mut low = 0x40_0000;
    expect(
        vm::vm_allocate(me, &mut low, PAGE, false),
        abi::KERN_INVALID_ARGUMENT,
        "a vm_allocate over the program image",
    )?;
    let mut huge = 0;
    expect(
        vm::vm_allocate(me, &mut huge, 1 << 62, true),
        abi::KERN_NO_SPACE,
        "a vm_allocate larger than the address space",
    )?;
    // An unaligned size rounds up to whole pages.
    let b = allocate(PAGE + 1)?;
    poke(b + PAGE + 8, 7);
    kern(vm::vm_deallocate(me, b, PAGE + 1))?;
    // Deallocated memory faults; the neighbours stay.
    kern(vm::vm_deallocate(me, a + 2 * PAGE, PAGE))?;
    fault_of(a + 2 * PAGE, false)?;
    if !check(a, 2, 0xa11c) || peek(a + 3 * PAGE + 24) != 0xa11c ^ (3 * 0x9e37_79b9) {
        return Err("deallocating one page disturbed its neighbours");
    }
    kern(vm::vm_deallocate(me, a, 19 * PAGE))?;
    fault_of(a + 5 * PAGE, true)?;
    Ok(())
}

fn abi_window(a: u64) -> bool {
    (rt::abi::VM_MIN_ADDRESS..rt::abi::VM_MAX_ADDRESS).contains(&a)
}

/// Current and maximum protection, and violations as exceptions.
fn protect() -> R {
    let me = me()?;
    let a = allocate(4 * PAGE)?;
    fill(a, 4, 0x9807);
    kern(vm::vm_protect(me, a, 2 * PAGE, false, abi::VM_PROT_READ))?;
    if !check(a, 4, 0x9807) {
        return Err("read-only memory does not read");
    }
    let err = fault_of(a + PAGE, true)?;
    if err & 0b11 != 0b11 {
        return Err("the write to read-only memory is not a protection fault on a write");
    }
    poke(a + 2 * PAGE + 8, 5);
    kern(vm::vm_protect(me, a, 2 * PAGE, false, abi::VM_PROT_DEFAULT))?;
    poke(a + PAGE, 6);
    // No access at all: even reads fault.
    kern(vm::vm_protect(
        me,
        a + 3 * PAGE,
        PAGE,
        false,
        abi::VM_PROT_NONE,
    ))?;
    fault_of(a + 3 * PAGE, false)?;
    // Maximum read-only: raising the current protection is refused.
    kern(vm::vm_protect(me, a, PAGE, true, abi::VM_PROT_READ))?;
    expect(
        vm::vm_protect(me, a, PAGE, false, abi::VM_PROT_DEFAULT),
        abi::KERN_PROTECTION_FAILURE,
        "raising protection above the maximum",
    )?;
    expect(
        vm::vm_protect(me, a, PAGE, false, 8),
        abi::KERN_INVALID_ARGUMENT,
        "an unknown protection bit",
    )?;
    expect(
        vm::vm_protect(me, a + 8 * PAGE, PAGE, false, abi::VM_PROT_READ),
        abi::KERN_INVALID_ADDRESS,
        "protecting unallocated memory",
    )?;
    kern(vm::vm_deallocate(me, a, 4 * PAGE))
}

/// vm_region walks the regions in address order with their attributes.
fn regions() -> R {
    let me = me()?;
    let a = allocate(8 * PAGE)?;
    kern(vm::vm_protect(
        me,
        a + 2 * PAGE,
        3 * PAGE,
        false,
        abi::VM_PROT_READ,
    ))?;
    kern(vm::vm_inherit(me, a + 5 * PAGE, 3 * PAGE, VM_INHERIT_SHARE))?;
    let want = [
        (a, 2, abi::VM_PROT_DEFAULT, VM_INHERIT_COPY),
        (a + 2 * PAGE, 3, abi::VM_PROT_READ, VM_INHERIT_COPY),
        (a + 5 * PAGE, 3, abi::VM_PROT_DEFAULT, VM_INHERIT_SHARE),
    ];
    let mut at = a;
    for (start, pages, prot, inh) in want {
        let r = kern(vm::vm_region(me, at))?;
        if r.start != start || r.size != pages * PAGE || r.prot != prot || r.inheritance != inh {
            println!(
                "vmtest: region at {:#x}: start {:#x} size {:#x} prot {} inheritance {}",
                at, r.start, r.size, r.prot, r.inheritance
            );
            return Err("vm_region does not describe the regions made");
        }
        at = r.start + r.size;
    }
    kern(vm::vm_deallocate(me, a, 8 * PAGE))?;
    match vm::vm_region(me, a) {
        Ok(r) if r.start < a + 8 * PAGE => Err("a deallocated region is still reported"),
        _ => Ok(()),
    }
}

/// vm_read, vm_write and vm_copy move data copy-on-write: later writes to
/// either side are not seen by the other.
fn read_write_copy() -> R {
    let me = me()?;
    let pages = 8;
    let src = allocate(pages * PAGE)?;
    fill(src, pages, 0x5eed);
    let copy = kern(vm::vm_read(me, src, pages * PAGE))?;
    if copy == src || !check(copy, pages, 0x5eed) {
        return Err("vm_read's copy does not hold the data");
    }
    fill(src, pages, 0x0dd);
    if !check(copy, pages, 0x5eed) {
        return Err("a write to the source shows through vm_read's copy");
    }
    fill(copy, pages, 0xc0b1);
    if !check(src, pages, 0x0dd) {
        return Err("a write to vm_read's copy shows through the source");
    }
    let dst = allocate(pages * PAGE)?;
    kern(vm::vm_protect(
        me,
        dst + PAGE,
        PAGE,
        true,
        abi::VM_PROT_DEFAULT,
    ))?;
    kern(vm::vm_copy(me, src, pages * PAGE, dst))?;
    if !check(dst, pages, 0x0dd) {
        return Err("vm_copy's destination does not hold the data");
    }
    poke(dst + PAGE + 8, 1);
    if !check(src, pages, 0x0dd) {
        return Err("a write to vm_copy's destination shows through the source");
    }
    let r = kern(vm::vm_region(me, dst + PAGE))?;
    if r.max_prot != abi::VM_PROT_DEFAULT || r.start != dst + PAGE || r.size != PAGE {
        return Err("vm_copy did not keep the destination's own maximum protection");
    }
    kern(vm::vm_write(me, dst, copy, pages * PAGE))?;
    if !check(dst, pages, 0xc0b1) {
        return Err("vm_write's destination does not hold the data");
    }
    expect(
        vm::vm_write(me, dst + 64 * PAGE, copy, PAGE),
        abi::KERN_INVALID_ADDRESS,
        "vm_write to unallocated memory",
    )?;
    kern(vm::vm_protect(me, dst, PAGE, false, abi::VM_PROT_READ))?;
    expect(
        vm::vm_copy(me, src, PAGE, dst),
        abi::KERN_PROTECTION_FAILURE,
        "vm_copy over read-only memory",
    )?;
    if peek(dst) != 0xc0b1 {
        return Err("a refused vm_copy changed its destination");
    }
    for a in [src, copy, dst] {
        kern(vm::vm_deallocate(me, a, pages * PAGE))?;
    }
    Ok(())
}

/// task_create's inheritance: a child started by us sees copy regions as
/// they were (and its writes stay its own), share regions as one memory
/// with us, and nothing where the region is inherit-none.
fn inherit() -> R {
    let me = me()?;
    let (c, s, n) = (
        allocate(4 * PAGE)?,
        allocate(4 * PAGE)?,
        allocate(4 * PAGE)?,
    );
    fill(c, 4, 0xc0);
    fill(s, 4, 0x50);
    fill(n, 4, 0x40);
    kern(vm::vm_inherit(me, s, 4 * PAGE, VM_INHERIT_SHARE))?;
    kern(vm::vm_inherit(me, n, 4 * PAGE, VM_INHERIT_NONE))?;
    let mut args = rt::Line::new();
    let _ = core::fmt::write(&mut args, format_args!("child-inherit {c:x} {s:x} {n:x}"));
    let child = rt::spawn(b"vmtest", args.bytes());
    if child < 0 {
        return Err("could not start the child");
    }
    let status = rt::wait(child);
    if status != 0 {
        println!("vmtest: inherit: child status {status}");
        return Err("the child saw the wrong memory (its status says which)");
    }
    if !check(c, 4, 0xc0) {
        return Err("the child's write to a copy region reached the parent");
    }
    if !check(s, 4, 0x51) {
        return Err("the child's write to a share region is not seen by the parent");
    }
    for a in [c, s, n] {
        kern(vm::vm_deallocate(me, a, 4 * PAGE))?;
    }
    Ok(())
}

/// task_create without inherit_memory: the child's window is empty even
/// though ours is not. The child reports on the bootstrap port it inherits
/// (set to a port of ours for the while).
fn no_inherit() -> R {
    let me = me()?;
    let a = allocate(PAGE)?;
    poke(a, 1);
    let p = port_with_send()?;
    // init has none (PORT_NULL); put back whatever it was.
    let old = traps::task_get_bootstrap_port(me).unwrap_or(abi::PORT_NULL);
    kern(traps::task_set_bootstrap_port(me, p))?;
    let child = traps::task_create(b"vmtest", b"child-empty", false);
    kern(traps::task_set_bootstrap_port(me, old))?;
    let child = kern(child)?;
    let n = traps::msg_receive(buf(), p, T).map_err(|e| e.name())?;
    let id = Message::parse(&buf()[..n]).map_err(|e| e.name())?.id();
    let _ = traps::port_deallocate(child);
    kern(traps::port_deallocate(p))?;
    kern(traps::port_deallocate(p))?;
    kern(vm::vm_deallocate(me, a, PAGE))?;
    match id {
        0 => Ok(()),
        _ => Err("a child created without inherit_memory has regions"),
    }
}

/// The child side of `no_inherit`: says 0 if its window is empty.
fn child_empty() -> i32 {
    let (Ok(me), Ok(boot)) = (
        me(),
        traps::task_self().and_then(traps::task_get_bootstrap_port),
    ) else {
        return 9;
    };
    let found = vm::vm_region(me, rt::abi::VM_MIN_ADDRESS).is_ok();
    let b = buf();
    let Ok(n) = Builder::new(b)
        .dest(boot, abi::COPY_SEND)
        .id(i32::from(found))
        .finish()
    else {
        return 8;
    };
    i32::from(traps::msg_send(&b[..n], T).is_err())
}

/// The child side of `inherit`: exit status 0, or which check failed.
fn child_inherit(c: u64, s: u64, n: u64) -> i32 {
    let Ok(me) = me() else { return 9 };
    if !check(c, 4, 0xc0) {
        return 2;
    }
    if !check(s, 4, 0x50) {
        return 3;
    }
    match vm::vm_region(me, n) {
        Ok(r) if r.start <= n && n < r.start + r.size => return 4,
        _ => {}
    }
    fill(c, 4, 0xcc);
    fill(s, 4, 0x51);
    if !check(c, 4, 0xcc) {
        return 5;
    }
    0
}

/// The kernel copies into and out of memory not yet touched (trap
/// arguments, message bodies) by faulting it in, as a copyin fault would.
fn kernel_copies_fault_in() -> R {
    let me = me()?;
    let a = allocate(4 * PAGE)?;
    let p = kern(traps::port_allocate())?;
    // A message sent from, and received into, untouched memory.
    let out = a + PAGE;
    // SAFETY: [out, out + 64) is ours, 8-aligned, and not yet touched.
    let body = unsafe { core::slice::from_raw_parts_mut(out as *mut u8, 64) };
    let n = Builder::new(body)
        .dest(p, abi::MAKE_SEND_ONCE)
        .id(77)
        .finish()
        .map_err(|e| e.name())?;
    traps::msg_send(&body[..n], Some(0)).map_err(|e| e.name())?;
    // SAFETY: the last page of the region, ours and untouched.
    let inb = unsafe { core::slice::from_raw_parts_mut((a + 3 * PAGE) as *mut u8, 256) };
    traps::msg_receive(inb, p, Some(0)).map_err(|e| e.name())?;
    let m = Message::parse(inb).map_err(|e| e.name())?;
    if m.id() != 77 {
        return Err("the message received into untouched memory is wrong");
    }
    let _ = traps::port_deallocate(p);
    kern(vm::vm_deallocate(me, a, 4 * PAGE))
}

/// Memory objects alive (vm_statistics), for leak checks.
fn objects() -> Result<u64, &'static str> {
    Ok(kern(vm::vm_statistics(me()?))?.objects)
}

/// Out-of-line data of several MiB from vm_allocate'd memory travels as a
/// copy-on-write snapshot: it arrives as a region of the receiver's map
/// that vm_deallocate frees, later writes on either side are not seen by
/// the other, the deallocate flag takes the sender's region away, an
/// unaligned region keeps its offset in its page, `OOL_PHYSICAL_COPY`
/// copies instead, and messages destroyed unreceived (their port
/// destroyed, a receive buffer too small) release their snapshots: the
/// object count returns to where it started.
fn out_of_line() -> R {
    let me = me()?;
    let start_objects = objects()?;
    let pages = 3 * 256 + 5; // 3 MiB and a bit
    let size = pages * PAGE;
    let src = allocate(size)?;
    fill(src, pages, 0x0011);
    let p = kern(traps::port_allocate())?;
    let send_to = |port: Name, at: u64, len: u64, flags: u8| -> R {
        let b = buf();
        let mut m = Builder::new(b);
        m.dest(port, abi::MAKE_SEND_ONCE).id(5);
        if flags & abi::OOL_PHYSICAL_COPY != 0 {
            // SAFETY: [at, at + len) is ours and mapped.
            let region = unsafe { core::slice::from_raw_parts(at as *const u8, len as usize) };
            m.ool_physical(region);
        } else {
            // SAFETY: [at, at + len) is ours; with the deallocate flag
            // nothing refers to it after the send.
            unsafe { m.ool_raw(at, len as usize, flags & abi::OOL_DEALLOCATE != 0) };
        }
        let n = m.finish().map_err(|e| e.name())?;
        traps::msg_send(&b[..n], Some(0)).map_err(|e| e.name())
    };
    let send = |flags: u8| send_to(p, src, size, flags);
    let receive = |len: u64| -> Result<u64, &'static str> {
        let n = traps::msg_receive(buf(), p, Some(0)).map_err(|e| e.name())?;
        let m = Message::parse(&buf()[..n]).map_err(|e| e.name())?;
        m.items()
            .find_map(|i| match i {
                Item::Ool { addr, len: l, .. } if u64::from(l) == len => Some(addr),
                _ => None,
            })
            .ok_or("no out-of-line region of the size sent")
    };
    // Sent, then both sides write: each keeps its own data.
    send(0)?;
    fill(src, pages, 0x0022);
    let got = receive(size)?;
    if got == src || !abi_window(got) || !check(got, pages, 0x0011) {
        return Err("the out-of-line region does not hold the data as sent");
    }
    fill(got, pages, 0x0033);
    if !check(src, pages, 0x0022) {
        return Err("the receiver's write to the region reached the sender");
    }
    fill(src, pages, 0x0044);
    if !check(got, pages, 0x0033) {
        return Err("the sender's later write reached the received region");
    }
    let r = kern(vm::vm_region(me, got))?;
    if r.start != got || r.size != size {
        return Err("the out-of-line region is not a region of its own");
    }
    kern(vm::vm_deallocate(me, got, size))?;
    if matches!(vm::vm_region(me, got), Ok(r) if r.start == got) {
        return Err("vm_deallocate left the received region");
    }
    // Unaligned: the data keeps its offset in its first page.
    let (off, len) = (0x123, 2 * PAGE + 5);
    send_to(p, src + off, len, 0)?;
    let got = receive(len)?;
    // SAFETY: both ranges are mapped: ours, and what the kernel mapped.
    let same = unsafe {
        core::slice::from_raw_parts((src + off) as *const u8, len as usize)
            == core::slice::from_raw_parts(got as *const u8, len as usize)
    };
    if got % PAGE != off || !same {
        return Err("an unaligned region did not arrive at its offset with its data");
    }
    kern(vm::vm_deallocate(me, got, len))?;
    // Physical copy of VM memory: the same data, by copy.
    let mib = 256 * PAGE;
    send_to(p, src, mib, abi::OOL_PHYSICAL_COPY)?;
    let got = receive(mib)?;
    if !check(got, 256, 0x0044) {
        return Err("a physical copy does not hold the data");
    }
    kern(vm::vm_deallocate(me, got, mib))?;
    // Never received: the port dies with two snapshots queued; a receive
    // into a buffer too small destroys the message. The region they hold
    // is gone from our map by then, so only they keep its object alive.
    let held = objects()?;
    let t = allocate(8 * PAGE)?;
    fill(t, 8, 0x0055);
    let q = kern(traps::port_allocate())?;
    send_to(q, t, 8 * PAGE, 0)?;
    send_to(q, t + PAGE, PAGE, 0)?;
    send_to(p, t, 8 * PAGE, 0)?;
    kern(vm::vm_deallocate(me, t, 8 * PAGE))?;
    if objects()? == held {
        return Err("queued snapshots hold no memory object");
    }
    kern(traps::port_deallocate(q))?;
    match traps::msg_receive(&mut buf()[..32], p, Some(0)) {
        Err(e) if e.0 == abi::RCV_TOO_LARGE => {}
        _ => return Err("a short receive buffer did not get RCV_TOO_LARGE"),
    }
    let after = objects()?;
    if after != held {
        println!("vmtest: objects {held} before the unreceived messages, {after} after");
        return Err("messages destroyed unreceived left memory objects behind");
    }
    // Deallocate flag: the region leaves the sender at the send.
    send(abi::OOL_DEALLOCATE)?;
    if matches!(vm::vm_region(me, src), Ok(r) if r.start <= src && src < r.start + r.size) {
        return Err("the deallocate flag left the sender's region mapped");
    }
    let got = receive(size)?;
    if !check(got, pages, 0x0044) {
        return Err("data sent with the deallocate flag did not arrive");
    }
    kern(vm::vm_deallocate(me, got, size))?;
    kern(traps::port_deallocate(p))?;
    let end_objects = objects()?;
    if end_objects != start_objects {
        println!("vmtest: objects {start_objects} at the start, {end_objects} at the end");
        return Err("out-of-line messages left memory objects behind");
    }
    Ok(())
}

// ---- a pager in this task (a second thread serves the memory object) ----

/// Polls `cond` while other threads work (up to about 5 s): waiting for
/// an event, not timing one.
fn wait_until(cond: impl Fn() -> bool) -> bool {
    let Ok(idle) = traps::port_allocate() else {
        return false;
    };
    let mut b = [0u64; 8];
    // SAFETY: u64s viewed as bytes.
    let bb = unsafe { core::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut u8, 64) };
    let mut ok = cond();
    for _ in 0..2_500 {
        if ok {
            break;
        }
        let _ = traps::msg_receive(bb, idle, Some(2));
        ok = cond();
    }
    let _ = traps::port_deallocate(idle);
    ok
}

fn control_call(id: i32, offset: u64, size: u64) -> R {
    control_call_with(id, offset, size, 0, &[])
}

/// A Table 3-6 call with `c` and data after the header.
fn control_call_with(id: i32, offset: u64, size: u64, c: u32, data: &[u8]) -> R {
    let control = computed_pager::CONTROL.load(Ordering::SeqCst) as Name;
    let mut out = [0u64; 64];
    // SAFETY: u64s viewed as bytes.
    let ob = unsafe { core::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, 512) };
    let n = libmach::memory_object::build_reply(ob, control, id, offset, size, c, data)
        .map_err(|e| e.name())?;
    traps::msg_send(&ob[..n], T).map_err(|e| e.name())
}

/// A memory object served by a pager of our own (a second thread): faults
/// become data_request messages it answers with computed pages; a write to
/// a page it locked asks for (and gets) an unlock; clean_request brings the
/// modified page back as data_write (which the pager keeps), and a lock
/// request asking for its completion gets it after that write; flush_request
/// drops the pages, so the next read asks again and gets the kept data; vm_deallocate ends the object (pager_terminate),
/// after writing back the page a message was received into;
/// and an object whose pager died faults with an exception.
fn user_pager() -> R {
    use libmach::memory_object as mo;
    let me = me()?;
    let pages = 8;
    let port = port_with_send()?;
    let t = kern(computed_pager::spawn(me, port))?;
    let mut at = 0;
    // One page more than the loops touch: a receive buffer.
    kern(vm::vm_allocate_with_pager(
        me,
        &mut at,
        (pages + 1) * PAGE,
        true,
        port,
        0,
    ))?;
    // Receiving into a page not in yet: the call sleeps for the pager (and
    // its unlock: the page comes write-locked), then runs again.
    let q = port_with_send()?;
    let b = buf();
    let n = Builder::new(b)
        .dest(q, abi::COPY_SEND)
        .id(55)
        .finish()
        .map_err(|e| e.name())?;
    traps::msg_send(&b[..n], T).map_err(|e| e.name())?;
    // SAFETY: the last page of the mapping, ours, 8-aligned.
    let inb = unsafe { core::slice::from_raw_parts_mut((at + pages * PAGE) as *mut u8, 256) };
    let n = traps::msg_receive(inb, q, T).map_err(|e| e.name())?;
    if Message::parse(&inb[..n]).map_err(|e| e.name())?.id() != 55 {
        return Err("a message received into a pager's page is wrong");
    }
    kern(traps::port_deallocate(q))?;
    kern(traps::port_deallocate(q))?;
    for p in 0..pages {
        for w in [0, 8, PAGE - 8] {
            if peek(at + p * PAGE + w) != computed_pager::word(p * PAGE + w) {
                return Err("a page does not hold what the pager computed");
            }
        }
    }
    if computed_pager::REQUESTS.load(Ordering::SeqCst) < pages + 1 {
        return Err("fewer data_requests than pages read");
    }
    poke(at + 16, 0x5a5a);
    if computed_pager::UNLOCKS.load(Ordering::SeqCst) != 2 || peek(at + 16) != 0x5a5a {
        return Err("a write to a locked page did not go through data_unlock");
    }
    control_call(mo::MEMORY_OBJECT_CLEAN_REQUEST, 0, pages * PAGE)?;
    if !wait_until(|| computed_pager::WRITES.load(Ordering::SeqCst) == 1) {
        return Err("clean_request did not write the modified page back");
    }
    if computed_pager::WRITTEN.load(Ordering::SeqCst) != computed_pager::word(0) {
        return Err("data_write did not carry the page's data");
    }
    // The same clean as a lock request that asks for its completion: the
    // completion comes with the cookie, after the data_write it waited for.
    poke(at + 24, 0x6b6b);
    let cookie: u64 = 0xc0ff_ee00_0000_0001;
    control_call_with(
        mo::MEMORY_OBJECT_LOCK_REQUEST,
        0,
        pages * PAGE,
        mo::LOCK_CLEAN,
        &cookie.to_le_bytes(),
    )?;
    if !wait_until(|| computed_pager::COMPLETED.load(Ordering::SeqCst) == cookie) {
        return Err("a lock request asking for its completion never completed");
    }
    if computed_pager::WRITES_AT_COMPLETION.load(Ordering::SeqCst) != 2 {
        return Err("a lock request completed before the data_write it waited for");
    }
    let before = computed_pager::REQUESTS.load(Ordering::SeqCst);
    control_call(mo::MEMORY_OBJECT_FLUSH_REQUEST, 0, pages * PAGE)?;
    if !wait_until(|| {
        // The flush has landed once reading asks the pager again.
        peek(at + PAGE) == computed_pager::word(PAGE)
            && computed_pager::REQUESTS.load(Ordering::SeqCst) > before
    }) {
        return Err("after flush_request a read did not ask the pager again");
    }
    if peek(at + 16) != 0x5a5a {
        return Err("the page written back did not come back from the pager");
    }
    kern(vm::vm_deallocate(me, at, (pages + 1) * PAGE))?;
    if !wait_until(|| computed_pager::TERMINATED.load(Ordering::SeqCst) == 1) {
        return Err("the object's end did not reach its pager");
    }
    // The receive buffer's page was written by the kernel alone: modified
    // all the same, so it went back at the object's end (before it).
    if computed_pager::WRITES.load(Ordering::SeqCst) != 3 {
        return Err("the page a message was received into did not go back to its pager");
    }
    let _ = traps::port_deallocate(t);

    // A pager that is gone: its object's faults end in an exception.
    let dead = port_with_send()?;
    let mut at = 0;
    kern(vm::vm_allocate_with_pager(me, &mut at, PAGE, true, dead, 0))?;
    // The send right, then the receive right: the port dies.
    kern(traps::port_deallocate(dead))?;
    kern(traps::port_deallocate(dead))?;
    fault_of(at, false)?;
    kern(vm::vm_deallocate(me, at, PAGE))?;
    kern(traps::port_deallocate(port))
}

/// vm_statistics counts the zero-fill faults a task takes.
fn statistics() -> R {
    let me = me()?;
    let before = kern(vm::vm_statistics(me))?;
    let a = allocate(32 * PAGE)?;
    fill(a, 32, 1);
    let after = kern(vm::vm_statistics(me))?;
    if after.page_size != PAGE || after.zero_fill_count < before.zero_fill_count + 32 {
        return Err("vm_statistics did not count the zero-fill faults");
    }
    kern(vm::vm_deallocate(me, a, 32 * PAGE))
}

/// A task cannot make the kernel allocate without bound: map entries end
/// in KERN_RESOURCE_SHORTAGE, and the task carries on.
fn exhaustion() -> R {
    let me = me()?;
    let mut first = 0;
    let mut made = 0u64;
    let mut refused = false;
    for i in 0..5_000u64 {
        let mut at = 0;
        // Alternate protections so neighbours cannot merge into one entry.
        match vm::vm_allocate(me, &mut at, PAGE, true) {
            Ok(()) => {
                if i == 0 {
                    first = at;
                }
                if i % 2 == 1 {
                    kern(vm::vm_protect(me, at, PAGE, false, abi::VM_PROT_READ))?;
                }
                made += 1;
            }
            Err(KernError(abi::KERN_RESOURCE_SHORTAGE)) => {
                refused = true;
                break;
            }
            Err(e) => return Err(e.name()),
        }
    }
    if !refused {
        return Err("5,000 map entries were allowed");
    }
    kern(vm::vm_deallocate(me, first, made * PAGE))?;
    let a = allocate(PAGE)?;
    poke(a, 3);
    kern(vm::vm_deallocate(me, a, PAGE))
}

/// `vmtest swap MIB` (not in `all`: it wants a small guest with swap,
/// `vmm run --mem 32M --swap 256M`): writes a pattern over MIB MiB of
/// vm_allocate'd memory, more than the guest has, and reads it all back,
/// while a child task keeps rewriting and checking pages of its own. The
/// kernel must page both out to swap and back in intact.
fn swap_test(mib: u64) -> i32 {
    match swap_run(mib) {
        Ok(()) => {
            println!("vmtest: swap ok");
            0
        }
        Err(why) => {
            println!("vmtest: swap FAILED: {why}");
            1
        }
    }
}

fn pattern(page: u64, word: u64, seed: u64) -> u64 {
    (page << 16 | word).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed
}

/// Writes every word of `pages` pages at `a`.
fn swap_fill(a: u64, pages: u64, seed: u64) {
    for p in 0..pages {
        for w in 0..PAGE / 8 {
            poke(a + p * PAGE + w * 8, pattern(p, w, seed));
        }
    }
}

/// The first page of `pages` at `a` that lost its pattern, checked from
/// the last page down: the pages written last are read while still in
/// memory, so each page brought back in pushes out one already checked
/// (read in order, every page would be paged out just before its turn).
fn swap_check(a: u64, pages: u64, seed: u64) -> Option<u64> {
    (0..pages)
        .rev()
        .find(|&p| (0..PAGE / 8).any(|w| peek(a + p * PAGE + w * 8) != pattern(p, w, seed)))
}

fn swap_run(mib: u64) -> R {
    let me = me()?;
    let pages = mib.max(1) * (1 << 20) / PAGE;
    let child = rt::spawn(b"vmtest", b"swap-child");
    if child < 0 {
        return Err("could not start the child");
    }
    let a = allocate(pages * PAGE)?;
    swap_fill(a, pages, 0x5eed);
    println!("vmtest: swap: {mib} MiB written");
    if let Some(p) = swap_check(a, pages, 0x5eed) {
        println!("vmtest: swap: page {p} of {pages} is wrong");
        return Err("a page came back from swap with the wrong data");
    }
    println!("vmtest: swap: {mib} MiB read back intact");
    kern(vm::vm_deallocate(me, a, pages * PAGE))?;
    let status = rt::wait(child);
    if status != 0 {
        println!("vmtest: swap: child status {status}");
        return Err("the child's pages did not survive");
    }
    Ok(())
}

/// The second task of `swap`: rewrites and checks 64 pages of its own,
/// round after round, so they are paged out and in under the other's load.
fn swap_child() -> i32 {
    const PAGES: u64 = 64;
    const ROUNDS: u64 = 300;
    let Ok(a) = allocate(PAGES * PAGE) else {
        return 2;
    };
    for round in 0..ROUNDS {
        swap_fill(a, PAGES, round);
        for _ in 0..4 {
            rt::yield_now();
        }
        if swap_check(a, PAGES, round).is_some() {
            println!("vmtest: swap-child: round {round} lost data");
            return 3;
        }
    }
    println!("vmtest: swap-child: {ROUNDS} rounds intact");
    0
}

const TESTS: &[rt::Test] = &[
    ("allocate", allocate_and_deallocate),
    ("protect", protect),
    ("regions", regions),
    ("read-write-copy", read_write_copy),
    ("inherit", inherit),
    ("no-inherit", no_inherit),
    ("copy-fault-in", kernel_copies_fault_in),
    ("out-of-line", out_of_line),
    ("user-pager", user_pager),
    ("statistics", statistics),
    ("exhaustion", exhaustion),
];

fn hex(w: &[u8]) -> u64 {
    w.iter().fold(0, |a, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => 0,
        };
        (a << 4) | u64::from(v)
    })
}

// ---- a thread terminated while its object read is in flight ----

const IO_WORDS: usize = 2048;
static mut IO_STACK: [u64; IO_WORDS] = [0; IO_WORDS];
/// Two pages, page aligned: what the reader lends the device.
#[repr(C, align(4096))]
struct IoPages([u8; 2 * PAGE as usize]);
static mut IO_BUF: IoPages = IoPages([0; 2 * PAGE as usize]);
/// The object the reader reads, and what it saw: 1 once its read returned.
static IO_OBJECT: AtomicU64 = AtomicU64::new(0);
static IO_STARTED: AtomicU64 = AtomicU64::new(0);
static IO_RETURNED: AtomicU64 = AtomicU64::new(0);

extern "C" fn io_reader(_: u64) -> ! {
    #[allow(clippy::deref_addrof)]
    // SAFETY: only this thread uses IO_BUF.
    let buf = unsafe { &mut (*(&raw mut IO_BUF)).0 };
    IO_STARTED.store(1, Ordering::SeqCst);
    let _ = rt::object::read(IO_OBJECT.load(Ordering::SeqCst), 0, buf);
    IO_RETURNED.store(1, Ordering::SeqCst);
    if let Ok(t) = traps::thread_self() {
        let _ = traps::thread_terminate(t);
    }
    rt::exit(92)
}

/// `terminate-io NAME` (NAME served by a pager that answers slowly): a
/// thread terminated while its read is in flight never runs again, cannot
/// be resumed, and its task ends once the read completes and the other
/// thread is gone (before, the read's completion revived it).
fn terminate_io(name: &[u8]) -> i32 {
    match terminate_io_run(name) {
        Ok(()) => {
            println!("vmtest: terminate-io: ok");
            // Ends this thread; the reader is the last and ends at its
            // completion, and the task with it.
            if let Ok(t) = traps::thread_self() {
                let _ = traps::thread_terminate(t);
            }
            1
        }
        Err(e) => {
            println!("vmtest: terminate-io: FAILED: {e}");
            1
        }
    }
}

/// True from the 100th call on: `wait_until` polls every ~2 ms, so this
/// makes it a pause of about 200 ms.
fn pause_done() -> bool {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    CALLS.fetch_add(1, Ordering::SeqCst) >= 100
}

fn terminate_io_run(name: &[u8]) -> R {
    let id = rt::object::lookup(name).map_err(rt::abi::error_name)?;
    IO_OBJECT.store(id, Ordering::SeqCst);
    let me = me()?;
    let top = (((&raw mut IO_STACK) as u64 + IO_WORDS as u64 * 8) & !15) - 8;
    // SAFETY: the reader runs on IO_STACK, which nothing else uses.
    let t = kern(unsafe { traps::thread_create(me, io_reader as *const () as u64, top, 0) })?;
    // The reader is about to read; a moment more and it is in its read
    // (the pager holds it far longer). The host checks the read reached
    // the pager, so a terminate that came first would not pass unseen.
    if !wait_until(|| IO_STARTED.load(Ordering::SeqCst) != 0) {
        return Err("the reader never started");
    }
    let _ = wait_until(|| IO_RETURNED.load(Ordering::SeqCst) != 0 || pause_done());
    kern(traps::thread_terminate(t))?;
    if traps::thread_resume(t).is_ok() {
        return Err("a thread terminated in its read was resumed");
    }
    if IO_RETURNED.load(Ordering::SeqCst) != 0 {
        return Err("the reader returned before its read completed");
    }
    Ok(())
}

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args);
    let first = words.next().unwrap_or(b"");
    if first == b"terminate-io" {
        return terminate_io(words.next().unwrap_or(b""));
    }
    if first == b"swap" {
        let mib = words.next().map_or(128, |w| {
            w.iter()
                .filter(|d| d.is_ascii_digit())
                .fold(0u64, |a, &d| a * 10 + u64::from(d - b'0'))
        });
        return swap_test(mib);
    }
    if first == b"swap-child" {
        return swap_child();
    }
    if first == b"child-empty" {
        return child_empty();
    }
    if first == b"child-inherit" {
        let mut n = || words.next().map_or(0, hex);
        let (c, s, x) = (n(), n(), n());
        return child_inherit(c, s, x);
    }
    rt::run_tests("vmtest", TESTS, core::iter::once(first).chain(words))
}
