//! A pager whose data is computed, not stored: every page is a
//! deterministic pseudo-random function of (seed, offset). Writes are kept
//! in an in-memory overlay. Served by the `procedural-pager` binary as the
//! example external pager: a terabyte of reproducible test data that no
//! file has to hold.

use crate::check::check_range;
use crate::error::{PagerError, Result};
use crate::kernels::Kernels;
use crate::pager::{DataReply, KernelControl, ObjectInfo, Pager, UnlockReply};
use crate::poison;
use crate::sg::Cursor;
use crate::types::{Access, KernelId, ObjectOffset, PAGE_SIZE};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use vm_memory::VolatileSlice;

/// SplitMix64: cheap, well-mixed, and trivially reimplemented in any
/// language that wants to check the data.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The generated contents of the page at `offset` (page aligned): 8-byte
/// little-endian words, word i = mix(seed ^ (offset / 8 + i)).
pub fn generate_page(seed: u64, offset: u64, page: &mut [u8; PAGE_SIZE as usize]) {
    for (i, w) in page.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&mix(seed ^ (offset / 8 + i as u64)).to_le_bytes());
    }
}

pub struct ProceduralPager {
    seed: u64,
    size: u64,
    overlay: RwLock<HashMap<u64, Box<[u8; PAGE_SIZE as usize]>>>,
    kernels: Kernels,
}

impl ProceduralPager {
    pub fn new(seed: u64, size: u64) -> ProceduralPager {
        ProceduralPager {
            seed,
            size,
            overlay: RwLock::default(),
            kernels: Kernels::default(),
        }
    }

    /// Tells every mapping kernel to write back and drop its cached copy of
    /// `[offset, offset+len)` — the pager speaking first.
    pub fn flush_all(&self, offset: ObjectOffset, len: u64, kernels: &[KernelId]) -> Result<()> {
        for k in kernels {
            if let Some(ctl) = self.kernels.get(*k) {
                ctl.lock_request(offset, len, Access::NONE, true, true)?;
            }
        }
        Ok(())
    }
}

impl Pager for ProceduralPager {
    fn init(&self, kernel: KernelId, control: Arc<dyn KernelControl>) -> Result<ObjectInfo> {
        self.kernels.add(kernel, control)?;
        Ok(ObjectInfo {
            size: self.size,
            read_only: false,
            may_cache: true,
        })
    }

    fn data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        _desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<DataReply> {
        self.kernels.check(kernel)?;
        check_range(offset, len, self.size, bufs)?;
        let mut out = Cursor::new(bufs, 0, len);
        let mut page = [0u8; PAGE_SIZE as usize];
        let overlay = poison::read(&self.overlay);
        for p in (offset.raw()..offset.raw() + len).step_by(PAGE_SIZE as usize) {
            match overlay.get(&p) {
                Some(w) => page.copy_from_slice(&w[..]),
                None => generate_page(self.seed, p, &mut page),
            }
            out.copy_in(&page);
        }
        Ok(DataReply::Provided {
            bytes: len,
            lock: Access::NONE,
        })
    }

    fn data_write(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<()> {
        self.kernels.check(kernel)?;
        check_range(offset, len, self.size, bufs)?;
        let mut src = Cursor::new(bufs, 0, len);
        let mut overlay = poison::write(&self.overlay);
        for p in (offset.raw()..offset.raw() + len).step_by(PAGE_SIZE as usize) {
            let mut page = Box::new([0u8; PAGE_SIZE as usize]);
            src.copy_out(&mut page[..]);
            overlay.insert(p, page);
        }
        Ok(())
    }

    fn data_unlock(
        &self,
        kernel: KernelId,
        _offset: ObjectOffset,
        _len: u64,
        _desired: Access,
    ) -> Result<UnlockReply> {
        self.kernels.unlock_unrestricted(kernel)
    }

    fn extent(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn terminate(&self, kernel: KernelId) -> Result<()> {
        self.kernels.remove(kernel).map(|_| ())
    }

    fn describe(&self) -> String {
        let n = self.overlay.read().map(|o| o.len()).unwrap_or(0);
        format!(
            "procedural data, seed {:#x}, {} bytes, {n} pages overwritten",
            self.seed, self.size
        )
    }
}

impl ProceduralPager {
    /// Fails cleanly for sizes the interface cannot address.
    pub fn checked(seed: u64, size: u64) -> Result<ProceduralPager> {
        if size == 0 {
            return Err(PagerError::BadRange {
                offset: ObjectOffset(0),
                len: 0,
                why: "object size must be non-zero",
            });
        }
        Ok(ProceduralPager::new(seed, size))
    }
}
