//! Host-side pager backends for Duality's Mach memory objects.
//!
//! `Pager` (pager.rs) is the interface; each backend module implements it.

pub mod error;
pub mod pager;
pub mod types;

pub use error::{PagerError, Result};
pub use pager::{DataReply, KernelControl, ObjectInfo, Pager, UnlockReply};
pub use types::{Access, KernelId, ObjectOffset, PAGE_SIZE};
