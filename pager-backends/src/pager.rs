//! The `Pager` trait: the host side of a Mach memory object.
//!
//! Shaped on the paper's Tables 3-5/3-6 and what GNU Mach and the Hurd's
//! libpager kept of them. Kernel → manager calls are trait methods; manager
//! → kernel calls (the pager speaking first) go through the `KernelControl`
//! handle the pager receives at `init`, the analogue of the pager request
//! port. Page data always moves through caller-provided buffers
//! (`VolatileSlice`s, typically guest frames) so nothing is copied or
//! allocated per page on the hot path.

use crate::error::{PagerError, Result};
use crate::types::{Access, KernelId, ObjectOffset};
use std::sync::Arc;
use vm_memory::VolatileSlice;

/// What an object is, as told to a kernel at `init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Size in bytes (the extent). Need not be a page multiple; the last
    /// partial page reads as zero beyond the end.
    pub size: u64,
    /// Writes are refused (`data_write` fails, and the kernel should map the
    /// object without write access).
    pub read_only: bool,
    /// The pager permits the kernel to keep pages cached after the last
    /// mapping is gone (`pager_cache`).
    pub may_cache: bool,
}

/// Answer to a data request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataReply {
    /// `pager_data_provided`: the first `bytes` bytes of the buffers hold the
    /// object's data from the requested offset. `bytes` is a whole number of
    /// pages, at least the requested length, and may be more (read-ahead)
    /// when the caller offered more buffer than it asked for. `lock` is the
    /// initial lock value: accesses the kernel must not allow yet.
    Provided { bytes: u64, lock: Access },
    /// `pager_data_unavailable`: no data exists for `bytes` bytes from the
    /// offset; the kernel zero-fills. The buffers were not written.
    Unavailable { bytes: u64 },
}

/// Answer to an unlock request: the lock value now in force for the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnlockReply {
    pub lock: Access,
}

/// What a lock request asks of the kernel: the accesses to prevent, and
/// whether dirty pages are written back (`clean`) and cached pages dropped
/// (`flush`, which writes back first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockRequest {
    pub lock: Access,
    pub clean: bool,
    pub flush: bool,
}

/// Manager → kernel calls (Table 3-6 and later additions). The kernel side
/// (the device, the guest) implements it; a pager calls it whenever it wants,
/// from any thread, so these calls must not block on the pager.
pub trait KernelControl: Send + Sync {
    /// `pager_data_lock`: prevent `lock` accesses to the range; with `clean`
    /// dirty pages are written back, with `flush` cached pages are dropped.
    fn lock_request(
        &self,
        offset: ObjectOffset,
        len: u64,
        lock: Access,
        clean: bool,
        flush: bool,
    ) -> Result<()>;
    /// `lock_request` whose completion the pager wants to hear of (GNU
    /// Mach's `memory_object_lock_request` with a reply port): once the
    /// lock is in force and every write-back the request started has been
    /// answered by the pager, the kernel calls `Pager::lock_completed` with
    /// this range and `cookie`, a value the pager chooses to tell
    /// concurrent requests apart. A kernel that cannot report completion
    /// (an older peer, or its table of waiting requests is full) refuses
    /// the call and applies nothing, so the pager never waits for a reply
    /// that will not come. The default refuses: the kernel side does not
    /// know this call.
    fn lock_request_with_reply(
        &self,
        offset: ObjectOffset,
        len: u64,
        lock: LockRequest,
        cookie: u64,
    ) -> Result<()> {
        let _ = (offset, len, lock, cookie);
        Err(PagerError::Unsupported(
            "this kernel does not report lock completion",
        ))
    }
    /// Offer pages the kernel did not ask for (`data_provided` unprompted).
    fn offer(&self, offset: ObjectOffset, data: &[u8], lock: Access) -> Result<()>;
    /// `pager_cache`: permit or rescind caching after the last unmap.
    fn set_cache(&self, may_cache: bool) -> Result<()>;
    /// The object is destroyed; the kernel drops its pages and mappings.
    fn destroy(&self, reason: &str) -> Result<()>;
}

/// A data manager. One value serves one memory object for any number of
/// kernels. All methods take `&self` and may be called concurrently from
/// several threads: requests for different pages proceed in parallel.
pub trait Pager: Send + Sync {
    /// `pager_init`: a kernel maps the object for the first time. `control`
    /// is how this pager talks to that kernel from now on.
    fn init(&self, kernel: KernelId, control: Arc<dyn KernelControl>) -> Result<ObjectInfo>;

    /// `pager_data_request`: fill `bufs` (a scatter list) with data from
    /// `offset`. The first `len` bytes of the buffers are the request proper;
    /// any buffer space beyond `len` is an offer to take read-ahead.
    fn data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<DataReply>;

    /// `data_request` without waiting: answer only if that needs no I/O, no
    /// remote peer and no lock another caller may hold for long (data in
    /// memory, a page-cache hit, a known hole). `None` means "would block":
    /// the caller then calls `data_request` from a thread that may block.
    /// Callers use it on threads that must stay responsive (the device's
    /// event loop), so an implementation must never sleep. On `None` the
    /// buffers may have been partly written; `data_request` overwrites them.
    /// The default always says "would block".
    fn try_data_request(
        &self,
        _kernel: KernelId,
        _offset: ObjectOffset,
        _len: u64,
        _desired: Access,
        _bufs: &[VolatileSlice<'_>],
    ) -> Option<Result<DataReply>> {
        None
    }

    /// `pager_data_write`: dirty pages come back. The data is in `bufs`,
    /// `len` bytes from `offset`.
    fn data_write(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<()>;

    /// `pager_data_unlock`: the kernel wants more access than the lock value
    /// allows. Returns the lock now in force.
    fn data_unlock(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
    ) -> Result<UnlockReply>;

    /// The object's current size in bytes.
    fn extent(&self) -> Result<u64>;

    /// Make every write accepted so far durable (clean request completed).
    fn sync(&self) -> Result<()>;

    /// `memory_object_lock_completed`: the lock request this pager made
    /// with `KernelControl::lock_request_with_reply(offset, len, _,
    /// cookie)` is done for `kernel`: the lock is in force and every
    /// write-back it started has reached `data_write` (whatever it
    /// answered). Only a pager that asks for replies gets it; the default
    /// ignores it.
    fn lock_completed(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        cookie: u64,
    ) -> Result<()> {
        let _ = (kernel, offset, len, cookie);
        Ok(())
    }

    /// `terminate`: the kernel has released the object; forget its state.
    /// After the last kernel terminates the pager flushes and may shut down.
    fn terminate(&self, kernel: KernelId) -> Result<()>;

    /// A one-line description for `vmm pager stat` (backend kind, path, ...).
    fn describe(&self) -> String;
}
