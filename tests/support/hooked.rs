//! `Hooked`: a test pager that wraps any pager and forwards every call to
//! it, except the calls its `Hooks` take over. A test that needs a pager
//! which misbehaves in one way (speaks first, answers late, never answers,
//! locks what it provides) writes only that one hook.

use pager_backends::{
    Access, DataReply, KernelControl, KernelId, ObjectInfo, ObjectOffset, Pager, Result,
    UnlockReply,
};
use std::sync::{Arc, Mutex};
use vm_memory::VolatileSlice;

/// What a test pager does differently from the pager it wraps. Every
/// method gets the wrapped pager as `inner`; the defaults forward to it.
///
/// There is no hook for `try_data_request`: a `Hooked` pager always says
/// "would block", so every request reaches `data_request` and its hook
/// (the inner pager's fast path would otherwise go round it).
pub trait Hooks: Send + Sync {
    /// Where to keep the `KernelControl` each `init` brings (before the
    /// `init` hook runs), for a pager that speaks first later on.
    fn control(&self) -> Option<&Control> {
        None
    }
    fn init(
        &self,
        inner: &dyn Pager,
        kernel: KernelId,
        control: Arc<dyn KernelControl>,
    ) -> Result<ObjectInfo> {
        inner.init(kernel, control)
    }
    fn data_request(
        &self,
        inner: &dyn Pager,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<DataReply> {
        inner.data_request(kernel, offset, len, desired, bufs)
    }
    fn data_write(
        &self,
        inner: &dyn Pager,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<()> {
        inner.data_write(kernel, offset, len, bufs)
    }
    fn data_unlock(
        &self,
        inner: &dyn Pager,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
    ) -> Result<UnlockReply> {
        inner.data_unlock(kernel, offset, len, desired)
    }
    fn extent(&self, inner: &dyn Pager) -> Result<u64> {
        inner.extent()
    }
    fn sync(&self, inner: &dyn Pager) -> Result<()> {
        inner.sync()
    }
    fn lock_completed(
        &self,
        inner: &dyn Pager,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        cookie: u64,
    ) -> Result<()> {
        inner.lock_completed(kernel, offset, len, cookie)
    }
    fn terminate(&self, inner: &dyn Pager, kernel: KernelId) -> Result<()> {
        inner.terminate(kernel)
    }
    fn describe(&self, inner: &dyn Pager) -> String {
        inner.describe()
    }
}

/// `inner` with `hooks` in front of it.
pub struct Hooked<H> {
    inner: Box<dyn Pager>,
    hooks: H,
}

impl<H: Hooks> Hooked<H> {
    pub fn new(inner: impl Pager + 'static, hooks: H) -> Hooked<H> {
        Hooked {
            inner: Box::new(inner),
            hooks,
        }
    }

    /// The hooks' state, for the test to check what the pager saw.
    pub fn hooks(&self) -> &H {
        &self.hooks
    }
}

impl<H: Hooks> Pager for Hooked<H> {
    fn init(&self, kernel: KernelId, control: Arc<dyn KernelControl>) -> Result<ObjectInfo> {
        if let Some(slot) = self.hooks.control() {
            slot.keep(&control);
        }
        self.hooks.init(&*self.inner, kernel, control)
    }
    fn data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<DataReply> {
        self.hooks
            .data_request(&*self.inner, kernel, offset, len, desired, bufs)
    }
    fn data_write(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<()> {
        self.hooks
            .data_write(&*self.inner, kernel, offset, len, bufs)
    }
    fn data_unlock(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
    ) -> Result<UnlockReply> {
        self.hooks
            .data_unlock(&*self.inner, kernel, offset, len, desired)
    }
    fn extent(&self) -> Result<u64> {
        self.hooks.extent(&*self.inner)
    }
    fn sync(&self) -> Result<()> {
        self.hooks.sync(&*self.inner)
    }
    fn lock_completed(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        cookie: u64,
    ) -> Result<()> {
        self.hooks
            .lock_completed(&*self.inner, kernel, offset, len, cookie)
    }
    fn terminate(&self, kernel: KernelId) -> Result<()> {
        self.hooks.terminate(&*self.inner, kernel)
    }
    fn describe(&self) -> String {
        self.hooks.describe(&*self.inner)
    }
}

/// The `KernelControl` a pager keeps from `init` (see `Hooks::control`).
#[derive(Default)]
pub struct Control(Mutex<Option<Arc<dyn KernelControl>>>);

impl Control {
    pub fn keep(&self, control: &Arc<dyn KernelControl>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(control.clone());
        }
    }

    /// The control kept at `init`, if there was one.
    pub fn get(&self) -> Option<Arc<dyn KernelControl>> {
        self.0.lock().ok().and_then(|c| c.clone())
    }
}
