//! The event queue: buffers the driver posts, and the manager → kernel
//! events (control.rs backlog) copied into them.

use super::device::{EventBuf, PagerDevice};
use super::wire::{EVENT_QUEUE, EVENT_SIZE, MAX_CHAIN_LEN, QUEUE_SIZE, VIRTIO_PAGER_F_EVENTS};
use crate::virtio::{Segment, collect_chain, features};
use pager_backends::PAGE_SIZE;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};

impl PagerDevice {
    /// Event queue notification: the guest posted buffers. Take them (up to
    /// the ring size held at once), then deliver whatever events wait.
    pub fn process_event_queue(&mut self) {
        self.take_event_bufs();
        self.deliver();
    }

    /// Backlog kick: move events into posted buffers; buffers that were
    /// left on the ring for want of room are taken once some are used.
    pub fn deliver_events(&mut self) {
        let _ = self.backlog.kick_evt().read();
        self.deliver();
        if self.ev_throttled {
            self.take_event_bufs();
            self.deliver();
        }
    }

    fn take_event_bufs(&mut self) {
        self.ev_throttled = false;
        if self.needs_reset {
            return;
        }
        let event_idx = self.has(features::VIRTIO_RING_F_EVENT_IDX);
        loop {
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let mem = active.mem.clone();
            // A driver republishing heads must not grow the host's list.
            let room = usize::from(active.evq.size()).saturating_sub(active.event_bufs.len());
            let chains: Vec<DescriptorChain<&GuestMemoryMmap>> = match active.evq.iter(&*mem) {
                Ok(it) => it.take(room).collect(),
                Err(_) => {
                    self.enter_needs_reset("event queue available index out of range");
                    return;
                }
            };
            let full = chains.len() == room;
            let mut used_added = false;
            for chain in chains {
                let head = chain.head_index();
                match collect_chain(chain, QUEUE_SIZE, MAX_CHAIN_LEN)
                    .ok()
                    .and_then(|s| event_buf(head, &s))
                {
                    Some(buf) => {
                        if let Some(a) = self.active.as_mut() {
                            a.event_bufs.push_back(buf);
                        }
                    }
                    None => {
                        // Unusable buffer: give it straight back, unwritten.
                        self.stats.event_bufs_rejected += 1;
                        used_added |= self.add_used(EVENT_QUEUE, head, 0);
                    }
                }
            }
            if used_added {
                self.signal_used(EVENT_QUEUE);
            }
            if full {
                // Taken again once buffers are used (deliver_events).
                self.ev_throttled = true;
                return;
            }
            if !event_idx {
                return;
            }
            // With EVENT_IDX the driver notifies only past avail_event:
            // ask for the next buffer it posts, or it never tells us.
            let Some(active) = self.active.as_mut() else {
                return;
            };
            match active.evq.enable_notification(&*mem) {
                Ok(true) => continue,
                Ok(false) => return,
                Err(_) => {
                    self.enter_needs_reset("event queue unreadable");
                    return;
                }
            }
        }
    }

    /// Moves waiting events into posted buffers.
    pub(super) fn deliver(&mut self) {
        if self.needs_reset || !self.has(VIRTIO_PAGER_F_EVENTS) {
            return;
        }
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = a.mem.clone();
        let mut delivered = false;
        while let Some(buf) = a.event_bufs.pop_front() {
            let Some(ev) = self.backlog.pop() else {
                a.event_bufs.push_front(buf);
                break;
            };
            let mut event = ev.event;
            let mut data_len = 0u64;
            if !ev.data.is_empty() {
                // Unsolicited pages: whatever whole pages fit; the rest is
                // discarded (the paper lets the kernel drop offered data).
                let room: u64 = buf.frames.iter().map(|f| u64::from(f.len)).sum();
                data_len = room.min(ev.data.len() as u64) / PAGE_SIZE * PAGE_SIZE;
                if data_len == 0 {
                    self.stats.offers_dropped += 1;
                    a.event_bufs.push_front(buf);
                    continue;
                }
                let mut copied = 0u64;
                for f in &buf.frames {
                    if copied == data_len {
                        break;
                    }
                    let n = u64::from(f.len).min(data_len - copied);
                    let src = &ev.data[copied as usize..(copied + n) as usize];
                    if mem.write_slice(src, f.addr).is_err() {
                        break;
                    }
                    copied += n;
                }
                data_len = copied;
                event.length = data_len;
            }
            let used = match mem.write_slice(&event.to_bytes(), buf.slot.addr) {
                Ok(()) => EVENT_SIZE as u32 + data_len as u32,
                Err(_) => 0,
            };
            if a.evq.add_used(&*mem, buf.head, used).is_err() {
                self.enter_needs_reset("event used ring write failed");
                return;
            }
            self.stats.events_delivered += 1;
            if let Some(n) = self.object_events.get_mut(event.object_id as usize) {
                n.count(event.ev_type);
            }
            delivered = true;
        }
        if delivered {
            self.signal_used(EVENT_QUEUE);
        }
    }
}

/// An event buffer is [event slot: writable, 32 bytes] [frames: writable,
/// page-aligned whole pages]*, no overlaps.
fn event_buf(head: u16, segs: &[Segment]) -> Option<EventBuf> {
    let (slot, frames) = segs.split_first()?;
    if !slot.writable || slot.len as usize != EVENT_SIZE {
        return None;
    }
    let mut ranges = vec![(slot.addr.0, slot.addr.0.checked_add(u64::from(slot.len))?)];
    for f in frames {
        if !f.writable || f.addr.0 % PAGE_SIZE != 0 || u64::from(f.len) % PAGE_SIZE != 0 {
            return None;
        }
        ranges.push((f.addr.0, f.addr.0.checked_add(u64::from(f.len))?));
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
        return None;
    }
    Some(EventBuf {
        head,
        slot: *slot,
        frames: frames.to_vec(),
    })
}
