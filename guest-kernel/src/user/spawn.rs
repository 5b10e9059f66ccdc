//! Starts every program named in its arguments (`name` or `name:arg`),
//! then waits for each and reports its exit status. Exits with the number
//! of programs that failed to start or exited non-zero.
#![no_std]
#![no_main]

mod rt;

fn main(args: &[u8]) -> i32 {
    let mut ids = [0i64; 16];
    let mut failed = 0;
    let mut n = 0;
    for word in rt::words(args).take(ids.len()) {
        let (name, arg) = match word.iter().position(|&c| c == b':') {
            Some(i) => (&word[..i], &word[i + 1..]),
            None => (word, &b""[..]),
        };
        let id = rt::spawn(name, arg);
        if id < 0 {
            println!("spawn: cannot start {}: error {id}", rt::str(name));
            failed += 1;
        } else {
            println!("spawn: started {} as task {id}", rt::str(word));
        }
        ids[n] = id;
        n += 1;
    }
    for &id in &ids[..n] {
        if id < 0 {
            continue;
        }
        let status = rt::wait(id);
        println!("spawn: task {id} exited with status {status}");
        if status != 0 {
            failed += 1;
        }
    }
    failed
}
