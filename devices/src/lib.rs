//! Duality's devices: the virtio-mmio transport, the memory-object device
//! (virtio-pager) and the platform's legacy devices (console, exit port).

/// Fuzz entry point for the device behind its transport (feature
/// `test-utils`, like the test doubles it uses).
#[cfg(any(test, feature = "test-utils"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod legacy;
pub mod pager;
pub mod rate_limiter;
/// Test doubles for this crate's tests, benchmark and fuzz target (feature
/// `test-utils`); the VMM never sees them.
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod virtio;
