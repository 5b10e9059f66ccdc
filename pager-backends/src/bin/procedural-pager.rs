//! Example external pager: serves procedurally generated pages (see
//! `pager_backends::procedural`) over the unix-socket pager protocol.
//!
//! Usage: procedural-pager --socket PATH [--size BYTES] [--seed N]
//! (`--size` as `pager_backends::size` reads it: 4096, 64M, 1T).
//! Prints "ready PATH" on stdout once it accepts connections.

use pager_backends::procedural::ProceduralPager;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "usage: procedural-pager --socket PATH [--size BYTES] [--seed N]";

/// A seed is a plain number (decimal, or hex after `0x`), not a size.
fn parse_seed(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn main() -> ExitCode {
    let mut socket = None;
    let mut size = 1u64 << 30;
    let mut seed = 0x5eedu64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        let bad = match (a.as_str(), v) {
            ("--socket", Some(v)) => {
                socket = Some(v);
                None
            }
            ("--size", Some(v)) => match pager_backends::size::parse_size(&v) {
                Ok(n) => {
                    size = n;
                    None
                }
                Err(e) => Some(format!("--size {v:?}: {e}")),
            },
            ("--seed", Some(v)) => match parse_seed(&v) {
                Some(n) => {
                    seed = n;
                    None
                }
                None => Some(format!(
                    "--seed {v:?}: expected a number (decimal, or hex after 0x)"
                )),
            },
            _ => Some(USAGE.to_string()),
        };
        if let Some(why) = bad {
            if why != USAGE {
                eprintln!("procedural-pager: {why}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    let Some(socket) = socket else {
        eprintln!("{USAGE}");
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
