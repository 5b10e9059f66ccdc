//! `objsum NAME [CHUNK]`: reads a memory object through the virtio-pager
//! device in CHUNK-sized requests (default and at most 1 MiB, whole pages)
//! straight into this task's pages, and prints its size and SHA-256 (the
//! hashing runs here in ring 3), for comparison with `sha256sum` on the
//! host.
#![no_std]
#![no_main]

mod rt;
#[path = "../sha256.rs"]
mod sha256;

use rt::abi;
use rt::object::{self, IoBuf};

static mut BUF: IoBuf = IoBuf([0; abi::OBJECT_IO_MAX as usize]);

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args);
    let Some(name) = words.next() else {
        println!("usage: objsum NAME [CHUNK]");
        return 2;
    };
    let chunk = match words.next().map(rt::parse_size) {
        None => abi::OBJECT_IO_MAX,
        Some(Some(c)) if c > 0 && c % 4096 == 0 && c <= abi::OBJECT_IO_MAX => c,
        Some(_) => {
            println!("objsum: CHUNK must be whole pages, at most 1M");
            return 2;
        }
    } as usize;
    let name_s = rt::str(name);
    let fail = |what: &str, e: i64| {
        println!("objsum: {name_s}: {what}: {}", abi::error_name(e));
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
    let buf = unsafe { &mut (&mut (*(&raw mut BUF)).0)[..chunk] };
    let mut h = sha256::Sha256::new();
    let mut offset = 0u64;
    let mut requests = 0u64;
    // Benchmarks measure between these two marks (vmm bench objread).
    rt::milestone(1);
    while offset < size {
        // Whole pages, none past the object's last one.
        let want = (size - offset).div_ceil(4096).min(chunk as u64 / 4096) * 4096;
        if let Err(e) = object::read(id, offset, &mut buf[..want as usize]) {
            println!("objsum: {name_s}: read at {offset}: {}", abi::error_name(e));
            return 1;
        }
        requests += 1;
        let n = (size - offset).min(chunk as u64) as usize;
        h.update(&buf[..n]);
        offset += chunk as u64;
    }
    rt::milestone(2);
    let hex = sha256::hex(&h.finish());
    println!(
        "objsum: {name_s} size={size} sha256={} requests={requests}",
        rt::str(&hex)
    );
    0
}
