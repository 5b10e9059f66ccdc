//! libmach: what a Duality guest program needs to speak Mach IPC. `abi`
//! holds the numbers of docs/mach-ipc.md and is shared with the kernel,
//! so the two cannot drift apart; `traps` wraps the traps, `message`
//! builds and parses messages, `rpc` generates typed interfaces, and
//! `kernel_msgs` is the client of the kernel's task and thread ports.
#![cfg_attr(not(test), no_std)]

pub mod abi;
pub mod kernel_msgs;
pub mod memory_object;
pub mod message;
pub mod name_server;
pub mod rpc;
pub mod traps;
pub mod vm;

pub use abi::Name;
pub use traps::{KernError, MsgError};
