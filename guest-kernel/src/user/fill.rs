//! `fill NAME SEED [keep]`: maps the host object published as NAME
//! writable and writes the deterministic pattern of objfill_pattern.rs
//! (seeded by SEED) over all of it through the mapping, then unmaps it: the
//! modified pages go back to the host's pager (data_write), on pageout
//! already if the object is larger than the guest's memory. With `keep`
//! the task exits with the mapping in place, and its end does that.
#![no_std]
#![no_main]

mod mapped;
#[path = "../objfill_pattern.rs"]
mod pattern;
mod rt;

use mapped::Mapped;

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args);
    let (name, seed, keep) = (words.next(), words.next(), words.next());
    let (Some(name), Some(seed), None) = (name, seed, words.next()) else {
        println!("usage: fill NAME SEED [keep]");
        return 2;
    };
    let keep = match keep {
        None => false,
        Some(b"keep") => true,
        Some(_) => {
            println!("usage: fill NAME SEED [keep]");
            return 2;
        }
    };
    let Ok(seed) = rt::str(seed).parse::<u64>() else {
        println!("fill: SEED must be a number");
        return 2;
    };
    let name_s = rt::str(name);
    let mut m = match Mapped::open(name, true) {
        Ok(m) => m,
        Err(e) => {
            println!("fill: {name_s}: {}", mapped::explain(e));
            return 1;
        }
    };
    rt::milestone(1);
    pattern::fill(seed, 0, m.bytes_mut());
    rt::milestone(2);
    let size = m.size;
    if keep {
        println!("fill: {name_s} seed={seed} wrote {size} bytes (mapping kept)");
        return 0;
    }
    match m.close() {
        Ok(()) => {
            println!("fill: {name_s} seed={seed} wrote {size} bytes");
            0
        }
        Err(e) => {
            println!("fill: {name_s}: unmap: {}", e.name());
            1
        }
    }
}
