//! Example external pager: serves procedurally generated pages (see
//! `pager_backends::procedural`) over the unix-socket pager protocol.
//!
//! Usage: procedural-pager --socket PATH [--size BYTES] [--seed N]
//! Prints "ready PATH" on stdout once it accepts connections.

use pager_backends::procedural::ProceduralPager;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::sync::Arc;

fn parse_num(s: &str) -> Option<u64> {
    let (d, m) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        b'G' | b'g' => (&s[..s.len() - 1], 1 << 30),
        b'T' | b't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n = match d.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok()?,
        None => d.parse::<u64>().ok()?,
    };
    n.checked_mul(m)
}

fn main() -> ExitCode {
    let mut socket = None;
    let mut size = 1u64 << 30;
    let mut seed = 0x5eedu64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        let ok = match (a.as_str(), v) {
            ("--socket", Some(v)) => {
                socket = Some(v);
                true
            }
            ("--size", Some(v)) => parse_num(&v).map(|n| size = n).is_some(),
            ("--seed", Some(v)) => parse_num(&v).map(|n| seed = n).is_some(),
            _ => false,
        };
        if !ok {
            eprintln!("usage: procedural-pager --socket PATH [--size BYTES] [--seed N]");
            return ExitCode::from(2);
        }
    }
    let Some(socket) = socket else {
        eprintln!("usage: procedural-pager --socket PATH [--size BYTES] [--seed N]");
        return ExitCode::from(2);
    };
    let pager = match ProceduralPager::checked(seed, size) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("procedural-pager: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("procedural-pager: bind {socket}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("ready {socket}");
    let _ = std::io::stdout().flush();
    match pager_backends::unix::serve(listener, pager) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("procedural-pager: {e}");
            ExitCode::FAILURE
        }
    }
}
