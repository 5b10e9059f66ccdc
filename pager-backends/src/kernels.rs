//! The set of kernels that have `init`ed an object, with the control handle
//! each gave (the paper's pager request port, one per kernel: section 4.2).

use crate::error::{PagerError, Result};
use crate::pager::{KernelControl, UnlockReply};
use crate::poison;
use crate::types::{Access, KernelId};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Default)]
pub(crate) struct Kernels {
    // RwLock: every data request checks membership; init/terminate are rare.
    map: RwLock<HashMap<KernelId, Arc<dyn KernelControl>>>,
}

impl Kernels {
    pub(crate) fn add(&self, id: KernelId, ctl: Arc<dyn KernelControl>) -> Result<()> {
        let mut m = poison::write(&self.map);
        if m.contains_key(&id) {
            return Err(PagerError::Protocol(format!(
                "kernel {} initialised twice",
                id.0
            )));
        }
        m.insert(id, ctl);
        Ok(())
    }

    pub(crate) fn check(&self, id: KernelId) -> Result<()> {
        let m = poison::read(&self.map);
        if m.contains_key(&id) {
            Ok(())
        } else {
            Err(PagerError::UnknownKernel(id.0))
        }
    }

    /// `data_unlock` for pagers that never restrict access: any known
    /// kernel gets everything it asks for.
    pub(crate) fn unlock_unrestricted(&self, id: KernelId) -> Result<UnlockReply> {
        self.check(id)?;
        Ok(UnlockReply { lock: Access::NONE })
    }

    pub(crate) fn get(&self, id: KernelId) -> Option<Arc<dyn KernelControl>> {
        poison::read(&self.map).get(&id).cloned()
    }

    /// Removes `id`; returns whether it was the last kernel.
    pub(crate) fn remove(&self, id: KernelId) -> Result<bool> {
        let mut m = poison::write(&self.map);
        if m.remove(&id).is_none() {
            return Err(PagerError::UnknownKernel(id.0));
        }
        Ok(m.is_empty())
    }
}
