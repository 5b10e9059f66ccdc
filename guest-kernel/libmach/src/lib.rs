//! libmach: what a Duality guest program needs to speak Mach IPC. `abi`
//! holds the numbers of docs/mach-ipc.md and is shared with the kernel,
//! so the two cannot drift apart.
#![cfg_attr(not(test), no_std)]

pub mod abi;
