//! What a data_request that times out becomes, per object
//! (`--object NAME=URI?on_timeout=error|zero`, paper §6.1). The backend
//! bounds each request (`timeout=`); this decorator decides what the kernel
//! is told: the error, so the faulting threads get a memory exception, or
//! "unavailable", so the kernel zero-fills the page as the default pager
//! would. Either way the first timeout is reported once; the statistics
//! (stats.rs, inside this decorator) count every one.

use crate::pager::{DataReply, KernelControl, ObjectInfo, Pager, UnlockReply};
use crate::{Access, KernelId, ObjectOffset, PagerError, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use vm_memory::VolatileSlice;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnTimeout {
    /// The request fails: the waiting threads get a memory exception.
    #[default]
    Error,
    /// The request is answered "unavailable": the kernel zero-fills.
    Zero,
}

impl OnTimeout {
    pub fn parse(s: &str) -> Option<OnTimeout> {
        match s {
            "error" => Some(OnTimeout::Error),
            "zero" => Some(OnTimeout::Zero),
            _ => None,
        }
    }
}

pub struct TimeoutPolicy {
    inner: Arc<dyn Pager>,
    policy: OnTimeout,
    /// For the one report.
    name: String,
    reported: AtomicBool,
}

impl TimeoutPolicy {
    pub fn new(inner: Arc<dyn Pager>, policy: OnTimeout, name: &str) -> TimeoutPolicy {
        TimeoutPolicy {
            inner,
            policy,
            name: name.to_string(),
            reported: AtomicBool::new(false),
        }
    }

    /// Reports the object's first timeout (of any request the guest waits
    /// for), saying what the guest gets.
    fn report(&self, what: &str, after: std::time::Duration, outcome: &str) {
        if !self.reported.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "object {}: {what} got no answer within {after:?}; {outcome} \
                 (further timeouts are counted in --stats)",
                self.name
            );
        }
    }

    fn apply(&self, r: Result<DataReply>, len: u64) -> Result<DataReply> {
        let Err(PagerError::Timeout(after)) = r else {
            return r;
        };
        let outcome = match self.policy {
            OnTimeout::Error => "the faulting threads get a memory exception",
            OnTimeout::Zero => "the guest gets zero-filled pages",
        };
        self.report("a data_request", after, outcome);
        match self.policy {
            OnTimeout::Error => Err(PagerError::Timeout(after)),
            OnTimeout::Zero => Ok(DataReply::Unavailable { bytes: len }),
        }
    }
}

impl Pager for TimeoutPolicy {
    fn init(&self, kernel: KernelId, control: Arc<dyn KernelControl>) -> Result<ObjectInfo> {
        self.inner.init(kernel, control)
    }

    fn data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<DataReply> {
        let r = self.inner.data_request(kernel, offset, len, desired, bufs);
        self.apply(r, len)
    }

    fn try_data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Option<Result<DataReply>> {
        let r = self
            .inner
            .try_data_request(kernel, offset, len, desired, bufs)?;
        Some(self.apply(r, len))
    }

    fn data_write(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<()> {
        self.inner.data_write(kernel, offset, len, bufs)
    }

    fn data_unlock(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
    ) -> Result<UnlockReply> {
        // Whatever the policy: the page has data, so there is nothing to
        // zero-fill; the waiting threads get the memory exception.
        let r = self.inner.data_unlock(kernel, offset, len, desired);
        if let Err(PagerError::Timeout(after)) = &r {
            self.report(
                "a data_unlock",
                *after,
                "the faulting threads get a memory exception",
            );
        }
        r
    }

    fn extent(&self) -> Result<u64> {
        self.inner.extent()
    }

    fn sync(&self) -> Result<()> {
        self.inner.sync()
    }

    fn lock_completed(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        cookie: u64,
    ) -> Result<()> {
        self.inner.lock_completed(kernel, offset, len, cookie)
    }

    fn terminate(&self, kernel: KernelId) -> Result<()> {
        self.inner.terminate(kernel)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pager::UnlockReply;
    use std::time::Duration;

    /// Times out every data_request.
    struct Silent;
    impl Pager for Silent {
        fn init(&self, _: KernelId, _: Arc<dyn KernelControl>) -> Result<ObjectInfo> {
            Err(PagerError::Timeout(Duration::from_secs(1)))
        }
        fn data_request(
            &self,
            _: KernelId,
            _: ObjectOffset,
            _: u64,
            _: Access,
            _: &[VolatileSlice<'_>],
        ) -> Result<DataReply> {
            Err(PagerError::Timeout(Duration::from_secs(1)))
        }
        fn data_write(
            &self,
            _: KernelId,
            _: ObjectOffset,
            _: u64,
            _: &[VolatileSlice<'_>],
        ) -> Result<()> {
            Err(PagerError::Timeout(Duration::from_secs(1)))
        }
        fn data_unlock(
            &self,
            _: KernelId,
            _: ObjectOffset,
            _: u64,
            _: Access,
        ) -> Result<UnlockReply> {
            Err(PagerError::Timeout(Duration::from_secs(1)))
        }
        fn extent(&self) -> Result<u64> {
            Ok(4096)
        }
        fn sync(&self) -> Result<()> {
            Ok(())
        }
        fn terminate(&self, _: KernelId) -> Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "silent".into()
        }
    }

    fn ask(p: &TimeoutPolicy) -> Result<DataReply> {
        p.data_request(KernelId(1), ObjectOffset(0), 4096, Access::READ, &[])
    }

    #[test]
    fn error_policy_keeps_the_timeout() {
        let p = TimeoutPolicy::new(Arc::new(Silent), OnTimeout::Error, "q");
        assert!(matches!(ask(&p), Err(PagerError::Timeout(_))));
        assert!(matches!(ask(&p), Err(PagerError::Timeout(_))));
    }

    #[test]
    fn zero_policy_answers_unavailable_for_the_whole_request() {
        let p = TimeoutPolicy::new(Arc::new(Silent), OnTimeout::Zero, "q");
        assert!(matches!(
            ask(&p),
            Ok(DataReply::Unavailable { bytes: 4096 })
        ));
    }

    #[test]
    fn only_data_requests_are_turned_into_zeros() {
        let p = TimeoutPolicy::new(Arc::new(Silent), OnTimeout::Zero, "q");
        let w = p.data_write(KernelId(1), ObjectOffset(0), 4096, &[]);
        assert!(
            matches!(w, Err(PagerError::Timeout(_))),
            "a write is not lost silently"
        );
    }

    #[test]
    fn an_unlock_that_times_out_stays_an_error_under_either_policy() {
        for policy in [OnTimeout::Error, OnTimeout::Zero] {
            let p = TimeoutPolicy::new(Arc::new(Silent), policy, "q");
            let u = p.data_unlock(KernelId(1), ObjectOffset(0), 4096, Access::WRITE);
            assert!(matches!(u, Err(PagerError::Timeout(_))));
        }
    }

    #[test]
    fn policies_parse() {
        assert_eq!(OnTimeout::parse("zero"), Some(OnTimeout::Zero));
        assert_eq!(OnTimeout::parse("error"), Some(OnTimeout::Error));
        assert_eq!(OnTimeout::parse("retry"), None);
    }
}
