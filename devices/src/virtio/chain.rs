//! Turning a guest-written descriptor chain into a bounded list of validated
//! segments. Every value here is guest-controlled, so nothing may panic and
//! every loop is bounded.

use std::ops::Deref;
use thiserror::Error;
use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemoryBackend};

/// One descriptor, after validation: inside guest memory and non-empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
    /// VIRTQ_DESC_F_WRITE: the device may write it (and must not rely on reading it).
    pub writable: bool,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChainError {
    #[error("descriptor chain has more than {0} descriptors")]
    TooLong(usize),
    #[error("descriptor chain loops (more descriptors than the queue has)")]
    Looped,
    #[error("descriptor chain is broken: next index out of range or descriptor unreadable")]
    Broken,
    #[error("descriptor {0} has length 0")]
    ZeroLength(usize),
    #[error("descriptor {index} [{addr:#x}, +{len:#x}) is outside guest memory")]
    OutOfBounds { index: usize, addr: u64, len: u32 },
}

/// Walks `chain`, refusing more than `max` descriptors. `queue_size` lets a
/// loop be told apart from a dangling `next` (virtio-queue stops iterating a
/// chain after queue_size descriptors instead of reporting an error).
pub fn collect_chain<M>(
    chain: DescriptorChain<M>,
    queue_size: u16,
    max: usize,
) -> Result<Vec<Segment>, ChainError>
where
    M: Deref + Clone,
    M::Target: GuestMemoryBackend,
{
    let mut segs = Vec::new();
    collect_chain_into(chain, queue_size, max, &mut segs)?;
    Ok(segs)
}

/// `collect_chain` into a caller's buffer (cleared first), so a device can
/// reuse one allocation for every chain it walks. On error `segs` holds
/// the descriptors walked so far.
pub fn collect_chain_into<M>(
    chain: DescriptorChain<M>,
    queue_size: u16,
    max: usize,
    segs: &mut Vec<Segment>,
) -> Result<(), ChainError>
where
    M: Deref + Clone,
    M::Target: GuestMemoryBackend,
{
    let mem = chain.memory();
    segs.clear();
    let mut last_has_next = false;
    // `chain` is cloned because `memory()` borrows it; descriptors are tiny.
    for desc in chain.clone() {
        let index = segs.len();
        if index >= max {
            return Err(ChainError::TooLong(max));
        }
        if desc.len() == 0 {
            return Err(ChainError::ZeroLength(index));
        }
        // check_range is false for ranges that wrap or leave every region.
        if !mem.check_range(desc.addr(), desc.len() as usize) {
            return Err(ChainError::OutOfBounds {
                index,
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        last_has_next = desc.has_next();
        segs.push(Segment {
            addr: desc.addr(),
            len: desc.len(),
            writable: desc.is_write_only(),
        });
    }
    if segs.is_empty() {
        return Err(ChainError::Broken);
    }
    // The iterator stopped although the last descriptor says "more follows":
    // it either ran out of TTL (a loop) or could not follow `next`.
    if last_has_next {
        return Err(if segs.len() >= usize::from(queue_size) {
            ChainError::Looped
        } else {
            ChainError::Broken
        });
    }
    Ok(())
}
