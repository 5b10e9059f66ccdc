//! The default first task: says hello from user mode and exits with the
//! status given as its first argument (0 if none).
#![no_std]
#![no_main]

mod rt;

fn main(args: &[u8]) -> i32 {
    println!("init: hello from user mode (args: \"{}\")", rt::str(args));
    let status = rt::words(args)
        .next()
        .and_then(|w| rt::str(w).parse::<i32>().ok())
        .unwrap_or(0);
    println!("init: exiting with status {status}");
    status
}
