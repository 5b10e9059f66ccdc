//! A CPU-bound task that never yields: it prints a progress line per round
//! of work, so two of them interleave only if the kernel preempts. It also
//! keeps a floating-point value live in SSE registers across rounds and
//! checks it at the end, which fails if preemption loses FPU state.
#![no_std]
#![no_main]

mod rt;

const ROUNDS: u32 = 6;
const WORK: u64 = 40_000_000;

fn main(args: &[u8]) -> i32 {
    let tag = rt::str(args);
    let seed = args.first().copied().unwrap_or(b'x') as f64;
    let mut x = seed;
    let mut acc = 0u64;
    for round in 1..=ROUNDS {
        for i in 0..WORK {
            acc = core::hint::black_box(acc.wrapping_add(i ^ (acc >> 3)));
        }
        x = core::hint::black_box(x * 1.5 + 0.25);
        println!("spin {tag}: round {round}");
    }
    let mut expect = seed;
    for _ in 0..ROUNDS {
        expect = expect * 1.5 + 0.25;
    }
    if x != expect {
        println!("spin {tag}: FPU state corrupted ({x} != {expect})");
        return 1;
    }
    println!("spin {tag}: done, FPU state intact");
    0
}
