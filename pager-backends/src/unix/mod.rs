//! `unix:PATH`: external pager processes over a Unix stream socket.
//!
//! The protocol is specified in docs/pager-protocol.md; proto.rs is its
//! wire format, client.rs the kernel side (a `Pager` backend), server.rs the
//! SDK for writing pagers in Rust (`serve(listener, pager)`).

mod client;
pub mod proto;
mod server;

pub use client::UnixPager;
#[doc(hidden)]
pub use client::fuzz::{UnixOutcome, fuzz_client};
pub use server::{ServeOptions, serve, serve_connection, serve_with};
