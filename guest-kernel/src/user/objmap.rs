//! `objmap NAME [fill SEED [keep]]`: maps a memory object served by the host into
//! this task with vm_allocate_with_pager and reads it through page faults
//! (each absent page a data_request to the device), printing its size and
//! SHA-256 like objsum does. With `fill SEED` it first writes the pattern of
//! objfill_pattern.rs through the mapping; the dirty pages go back to the
//! host when the mapping goes (vm_deallocate ends the object; with `keep`
//! the task exits with the mapping in place and its end does it).
#![no_std]
#![no_main]

#[path = "../objfill_pattern.rs"]
mod pattern;
mod rt;
#[path = "../sha256.rs"]
mod sha256;

use libmach::{traps, vm};
use rt::abi;
use rt::object;

fn main(args: &[u8]) -> i32 {
    let mut words = rt::words(args);
    let usage = || {
        println!("usage: objmap NAME [fill SEED [keep]]");
        2
    };
    let Some(name) = words.next() else {
        return usage();
    };
    let seed = match (words.next(), words.next()) {
        (None, _) => None,
        (Some(b"fill"), Some(s)) => match rt::str(s).parse::<u64>() {
            Ok(v) => Some(v),
            Err(_) => return usage(),
        },
        _ => return usage(),
    };
    let keep = match words.next() {
        None => false,
        Some(b"keep") if seed.is_some() => true,
        Some(_) => return usage(),
    };
    let name_s = rt::str(name);
    let (id, size) = match object::lookup(name).and_then(|id| Ok((id, object::stat(id)?.size))) {
        Ok(x) => x,
        Err(e) => {
            println!("objmap: {name_s}: {}", abi::error_name(e));
            return 1;
        }
    };
    let run = || -> Result<(), &'static str> {
        let k = |e: traps::KernError| e.name();
        let me = traps::task_self().map_err(k)?;
        let port = vm::host_object_port(id).map_err(k)?;
        let mut at = 0;
        let prot = if seed.is_some() {
            libmach::abi::VM_PROT_DEFAULT
        } else {
            libmach::abi::VM_PROT_READ
        };
        vm::vm_map_pager(me, &mut at, size.max(1), true, prot, port, 0).map_err(k)?;
        // SAFETY: the kernel mapped `size` bytes of the object at `at`.
        let bytes = unsafe { core::slice::from_raw_parts_mut(at as *mut u8, size as usize) };
        if let Some(seed) = seed {
            pattern::fill(seed, 0, bytes);
        }
        // Benchmarks measure between these two marks.
        rt::milestone(1);
        let mut h = sha256::Sha256::new();
        h.update(bytes);
        rt::milestone(2);
        println!(
            "objmap: {name_s} size={size} sha256={}",
            rt::str(&sha256::hex(&h.finish()))
        );
        if keep {
            return Ok(());
        }
        vm::vm_deallocate(me, at, size.max(1)).map_err(k)?;
        traps::port_deallocate(port).map_err(k)
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            println!("objmap: {name_s}: {e}");
            1
        }
    }
}
