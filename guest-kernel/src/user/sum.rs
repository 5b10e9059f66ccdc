//! `sum NAME...`: maps each host object published as NAME and hashes it
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
    let mut names = rt::words(args).peekable();
    if names.peek().is_none() {
        println!("usage: sum NAME...");
        return 2;
    }
    // Each object in turn, mapped, hashed and unmapped before the next (a
    // name given twice shows what the VM kept of it between the two).
    let mut status = 0;
    for (i, name) in names.enumerate() {
        if let Err(()) = sum(name, i == 0) {
            status = 1;
        }
    }
    status
}

/// Maps, hashes and unmaps the object published as `name`, printing the
/// result or why not; `marked`: between benchmark marks 1 and 2.
fn sum(name: &[u8], marked: bool) -> Result<(), ()> {
    let name_s = rt::str(name);
    let m = match Mapped::open(name, false) {
        Ok(m) => m,
        Err(e) => {
            println!("sum: {name_s}: {}", mapped::explain(e));
            return Err(());
        }
    };
    // Said before the (possibly long) hash: the object is published,
    // mapped and its pager reached.
    println!("sum: {name_s}: {} bytes mapped", m.size);
    // Benchmarks measure between these two marks.
    if marked {
        rt::milestone(1);
    }
    let mut h = sha256::Sha256::new();
    h.update(m.bytes());
    if marked {
        rt::milestone(2);
    }
    let size = m.size;
    println!(
        "sum: {name_s} size={size} sha256={}",
        rt::str(&sha256::hex(&h.finish()))
    );
    m.close()
        .map_err(|e| println!("sum: {name_s}: unmap: {}", e.name()))
}
