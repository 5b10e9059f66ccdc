//! `objfill NAME SEED`: overwrites a whole memory object with the pattern
//! of objfill_pattern.rs through the virtio-pager device (the device reads
//! this task's pages), then syncs it, so the host can check the file.
#![no_std]
#![no_main]

#[path = "../objfill_pattern.rs"]
mod pattern;
mod rt;

use rt::abi;
use rt::object::{self, IoBuf};

static mut BUF: IoBuf = IoBuf([0; abi::OBJECT_IO_MAX as usize]);

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args);
    let (Some(name), Some(seed)) = (words.next(), words.next().and_then(rt::parse_size)) else {
        println!("usage: objfill NAME SEED");
        return 2;
    };
    let name_s = rt::str(name);
    let fail = |what: &str, e: i64| {
        println!("objfill: {name_s}: {what}: {}", abi::error_name(e));
        1
    };
    let id = match object::lookup(name) {
        Ok(id) => id,
        Err(e) => return fail("lookup", e),
    };
    let size = match object::stat(id) {
        Ok(st) => st.size,
        Err(e) => return fail("stat", e),
    };
    // SAFETY: the only reference to the buffer in this single-threaded task.
    // `&raw mut` then a deref: a reference to a `static mut` is refused.
    #[allow(clippy::deref_addrof)]
    let buf = unsafe { &mut (*(&raw mut BUF)).0 };
    let mut offset = 0u64;
    while offset < size {
        // Whole pages; the pager keeps only what lies inside the object.
        let n = ((size - offset).min(buf.len() as u64)).div_ceil(4096) * 4096;
        let chunk = &mut buf[..n as usize];
        pattern::fill(seed, offset, chunk);
        if let Err(e) = object::write(id, offset, chunk) {
            println!(
                "objfill: {name_s}: write at {offset}: {}",
                abi::error_name(e)
            );
            return 1;
        }
        offset += n;
    }
    if let Err(e) = object::sync(id) {
        return fail("sync", e);
    }
    println!("objfill: {name_s} size={size} seed={seed} written");
    0
}
