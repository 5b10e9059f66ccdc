//! A pager written as a guest thread, for the VM tests and benchmarks
//! (included by path): it serves a memory object whose pages it computes,
//! keeps the one page written back to it, and counts what it was asked.
//! A real pager (a file server, a network pager) is this loop with storage
//! behind it.

use core::sync::atomic::{AtomicU64, Ordering};
use libmach::abi::{Name, VM_PROT_WRITE};
use libmach::message::{Message, MsgBuf};
use libmach::traps::{self, KernError};

const PAGE: u64 = 4096;
const T: Option<u32> = Some(5_000);

const PAGER_WORDS: usize = 4096;
static mut PAGER_STACK: [u64; PAGER_WORDS] = [0; PAGER_WORDS];
static mut PAGER_BUF: MsgBuf<{ 3 * PAGE as usize }> = MsgBuf([0; 3 * PAGE as usize]);
/// What the pager thread saw and did, for the main thread to check.
pub static CONTROL: AtomicU64 = AtomicU64::new(0);
pub static REQUESTS: AtomicU64 = AtomicU64::new(0);
pub static UNLOCKS: AtomicU64 = AtomicU64::new(0);
pub static WRITES: AtomicU64 = AtomicU64::new(0);
pub static WRITTEN: AtomicU64 = AtomicU64::new(0);
pub static TERMINATED: AtomicU64 = AtomicU64::new(0);
/// The cookie of the last lock request completed, and WRITES when its
/// completion came (the data_writes it waited for come before it).
pub static COMPLETED: AtomicU64 = AtomicU64::new(0);
pub static WRITES_AT_COMPLETION: AtomicU64 = AtomicU64::new(u64::MAX);
const PAGER_SEED: u64 = 0x7a9e_0000;

/// Whether pages are provided locked against writing (a write then asks
/// for data_unlock, which is granted).
pub static LOCK_WRITES: AtomicU64 = AtomicU64::new(1);

/// The word the pager computes for byte offset `off` of its object.
pub fn word(off: u64) -> u64 {
    off ^ PAGER_SEED
}

/// Serves the memory object `port`: pages are computed (or, once written
/// back, kept), provided locked against writing if LOCK_WRITES, unlocks
/// granted. Ends at pager_terminate.
extern "C" fn pager_thread(port: u64) -> ! {
    use libmach::memory_object::{self as mo, PagerCall};
    #[allow(clippy::deref_addrof)]
    // SAFETY: only this thread uses PAGER_BUF.
    let b = unsafe { &mut (*(&raw mut PAGER_BUF)).0 };
    let mut page = [0u8; PAGE as usize];
    // The one page written back, kept as the pager's backing store.
    let mut stored: Option<(u64, [u8; PAGE as usize])> = None;
    while let Ok(n) = traps::msg_receive(b, port as Name, T) {
        let Ok(m) = Message::parse(&b[..n]) else {
            continue;
        };
        let Some(c) = PagerCall::parse(&m) else {
            continue;
        };
        let (id, control, f) = (c.id, c.control, c.fields);
        CONTROL.store(u64::from(control), Ordering::SeqCst);
        let (reply_id, a, len, lock, data): (i32, u64, u64, u32, &[u8]) = match id {
            mo::MEMORY_OBJECT_INIT => continue,
            mo::MEMORY_OBJECT_DATA_REQUEST => {
                REQUESTS.fetch_add(1, Ordering::SeqCst);
                match &stored {
                    Some((off, data)) if *off == f.a => page.copy_from_slice(data),
                    _ => {
                        for (i, w) in page.chunks_exact_mut(8).enumerate() {
                            w.copy_from_slice(&word(f.a + 8 * i as u64).to_le_bytes());
                        }
                    }
                }
                (
                    mo::MEMORY_OBJECT_DATA_PROVIDED,
                    f.a,
                    0,
                    if LOCK_WRITES.load(Ordering::SeqCst) != 0 {
                        VM_PROT_WRITE
                    } else {
                        0
                    },
                    &page[..],
                )
            }
            mo::MEMORY_OBJECT_DATA_UNLOCK => {
                UNLOCKS.fetch_add(1, Ordering::SeqCst);
                (mo::MEMORY_OBJECT_DATA_LOCK, f.a, f.b, 0, &[][..])
            }
            mo::MEMORY_OBJECT_DATA_WRITE => {
                let w = f
                    .data
                    .get(..8)
                    .and_then(|w| w.try_into().ok())
                    .map_or(0, u64::from_le_bytes);
                WRITTEN.store(w, Ordering::SeqCst);
                if let Ok(d) = <[u8; PAGE as usize]>::try_from(f.data) {
                    stored = Some((f.a, d));
                }
                WRITES.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            mo::MEMORY_OBJECT_LOCK_COMPLETED => {
                WRITES_AT_COMPLETION.store(WRITES.load(Ordering::SeqCst), Ordering::SeqCst);
                let cookie = f
                    .data
                    .get(..8)
                    .and_then(|w| w.try_into().ok())
                    .map_or(0, u64::from_le_bytes);
                COMPLETED.store(cookie, Ordering::SeqCst);
                continue;
            }
            mo::MEMORY_OBJECT_TERMINATE => {
                TERMINATED.store(1, Ordering::SeqCst);
                break;
            }
            _ => continue,
        };
        // The reply is built after the request's buffer is no longer read.
        let mut out = [0u64; (2 * PAGE as usize) / 8];
        // SAFETY: u64s viewed as bytes (8-aligned for the builder).
        let ob = unsafe {
            core::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, 2 * PAGE as usize)
        };
        if let Ok(n) = mo::build_reply(ob, control, reply_id, a, len, lock, data) {
            let _ = traps::msg_send(&ob[..n], T);
        }
    }
    if let Ok(t) = traps::thread_self() {
        let _ = traps::thread_terminate(t);
    }
    crate::rt::exit(91)
}

/// Starts the pager thread in `task` (ours) serving `port`; its thread port.
pub fn spawn(task: Name, port: Name) -> Result<Name, KernError> {
    // Starts as just after a call: rsp + 8 is 16-byte aligned.
    let top = (((&raw mut PAGER_STACK) as u64 + PAGER_WORDS as u64 * 8) & !15) - 8;
    // SAFETY: the pager thread runs on PAGER_STACK, which nothing else uses.
    unsafe { traps::thread_create(task, pager_thread as *const () as u64, top, u64::from(port)) }
}
