//! `cat NAME [LEN]`: maps the host object published as NAME read-only and
//! writes its first LEN bytes (default: all of it) to the console.
#![no_std]
#![no_main]

mod mapped;
mod rt;

use mapped::Mapped;

/// Console writes are bounded by the kernel; larger objects go in pieces.
const PIECE: usize = 32 * 1024;

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args);
    let name = words.next();
    let len = words.next().map(rt::parse_size);
    let (Some(name), None) = (name, words.next()) else {
        println!("usage: cat NAME [LEN]");
        return 2;
    };
    let len = match len {
        None => u64::MAX,
        Some(Some(n)) => n,
        Some(None) => {
            println!("cat: LEN must be a size (e.g. 100, 4K)");
            return 2;
        }
    };
    let name_s = rt::str(name);
    let m = match Mapped::open(name, false) {
        Ok(m) => m,
        Err(e) => {
            println!("cat: {name_s}: {}", mapped::explain(e));
            return 1;
        }
    };
    let shown = m.bytes().get(..len.min(m.size) as usize).unwrap_or(&[]);
    for piece in shown.chunks(PIECE) {
        rt::write(piece);
    }
    match m.close() {
        Ok(()) => 0,
        Err(e) => {
            println!("cat: {name_s}: unmap: {}", e.name());
            1
        }
    }
}
