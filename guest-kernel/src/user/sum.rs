//! `sum NAME`: maps the host object published as NAME and hashes it
//! through page faults (the hashing runs here, in ring 3), printing its
//! size and SHA-256 for comparison with `sha256sum` on the host.
#![no_std]
#![no_main]

mod mapped;
mod rt;
#[path = "../sha256.rs"]
mod sha256;

use mapped::Mapped;

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args);
    let (Some(name), None) = (words.next(), words.next()) else {
        println!("usage: sum NAME");
        return 2;
    };
    let name_s = rt::str(name);
    let m = match Mapped::open(name, false) {
        Ok(m) => m,
        Err(e) => {
            println!("sum: {name_s}: {}", mapped::explain(e));
            return 1;
        }
    };
    // Said before the (possibly long) hash: the object is published,
    // mapped and its pager reached.
    println!("sum: {name_s}: {} bytes mapped", m.size);
    // Benchmarks measure between these two marks.
    rt::milestone(1);
    let mut h = sha256::Sha256::new();
    h.update(m.bytes());
    rt::milestone(2);
    let size = m.size;
    println!(
        "sum: {name_s} size={size} sha256={}",
        rt::str(&sha256::hex(&h.finish()))
    );
    match m.close() {
        Ok(()) => 0,
        Err(e) => {
            println!("sum: {name_s}: unmap: {}", e.name());
            1
        }
    }
}
