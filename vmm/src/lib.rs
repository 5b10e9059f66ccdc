//! The VMM's library half: putting a guest in memory (boot) and the errors
//! it reports. The `vmm` binary (main.rs) is built on it, and so are the
//! fuzz targets in vmm/fuzz, which need the kernel loader without a VM.

pub mod boot;
pub mod error;
