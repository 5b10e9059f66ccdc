//! Kernel-generated messages: dead-name notifications, the kernel's own
//! sends (exception messages) and its replies to requests it served. They are bounded by the kernel message
//! memory bound but not by the destination's backlog: the kernel cannot
//! block, and they are bounded by their causes (one per dead-name request,
//! one per faulting thread).

use alloc::vec::Vec;

use super::kmsg::{KRight, Kmsg};
use super::limits::KMSG_OVERHEAD;
use super::{Effects, Ipc, Name, PortId};
use libmach::abi::*;

/// An item of a message the kernel builds.
#[derive(Clone, Copy, Debug)]
pub enum KItem<'a> {
    Inline(&'a [u8]),
    /// Rights the kernel makes, each `PORT_SEND` or `PORT_SEND_ONCE` (the
    /// item's `disp` is the first one's).
    Ports(&'a [(PortId, u8)]),
}

impl Ipc {
    /// Builds a kernel message whose body is `items` in order (empty ones
    /// left out), as docs §5 lays them out. The destination right
    /// (`dest_ty`) and `reply` must already exist; the `Ports` rights are
    /// made here.
    pub(super) fn kmsg_kernel(
        &mut self,
        dest: PortId,
        dest_ty: u8,
        id: i32,
        items: &[KItem<'_>],
        reply: KRight,
    ) -> Result<Kmsg, u32> {
        let pad = |n: usize| (n + 7) & !7;
        let (mut len, mut nports) = (0usize, 0usize);
        for it in items {
            match *it {
                KItem::Inline(d) if !d.is_empty() => len += ITEM_HEADER_SIZE + pad(d.len()),
                KItem::Ports(p) if !p.is_empty() => {
                    if p.iter()
                        .any(|&(_, ty)| ty != PORT_SEND && ty != PORT_SEND_ONCE)
                    {
                        return Err(KERN_INVALID_ARGUMENT);
                    }
                    len += ITEM_HEADER_SIZE + pad(p.len().saturating_mul(4));
                    nports += p.len();
                }
                _ => {}
            }
        }
        // Within MSG_SIZE_MAX every count fits its u32.
        if HEADER_SIZE.saturating_add(len) > MSG_SIZE_MAX as usize {
            return Err(KERN_INVALID_ARGUMENT);
        }
        let charge = len + KMSG_OVERHEAD + nports * 16;
        if self.kmsg_bytes + charge > self.limits.kmsg_bytes_total {
            return Err(KERN_RESOURCE_SHORTAGE);
        }
        let mut body = Vec::new();
        body.try_reserve_exact(len)
            .map_err(|_| KERN_RESOURCE_SHORTAGE)?;
        let mut rights = Vec::new();
        rights
            .try_reserve_exact(nports)
            .map_err(|_| KERN_RESOURCE_SHORTAGE)?;
        for it in items {
            let (kind, disp, count) = match *it {
                KItem::Inline(d) if !d.is_empty() => (ITEM_INLINE, 0, d.len()),
                KItem::Ports(p) if !p.is_empty() => (ITEM_PORTS, p[0].1, p.len()),
                _ => continue,
            };
            let h = ItemHeader {
                kind,
                disp,
                reserved: 0,
                count: count as u32,
                addr: 0,
            };
            body.extend_from_slice(&h.to_bytes());
            match *it {
                KItem::Inline(d) => body.extend_from_slice(d),
                KItem::Ports(ports) => {
                    body.resize(body.len() + ports.len() * 4, 0);
                    for &(p, ty) in ports {
                        // The kernel makes these rights.
                        rights.push(match self.port_mut(p) {
                            Some(port) => {
                                if ty == PORT_SEND {
                                    port.srights += 1;
                                } else {
                                    port.sorights += 1;
                                }
                                KRight::Port { port: p, ty }
                            }
                            None => KRight::Dead,
                        });
                    }
                }
            }
            body.resize(pad(body.len()), 0);
        }
        self.kmsg_bytes += charge;
        self.kmsgs_live += 1;
        Ok(Kmsg {
            complex: nports > 0,
            dest,
            dest_ty,
            reply,
            id,
            seqno: 0,
            rcv_name: PORT_NULL,
            body,
            rights,
            ool: Vec::new(),
            sender: None,
            stamp: 0,
            charge,
            ool_bytes: 0,
            ool_copied: 0,
            charged_sender: false,
        })
    }

    /// Queues `k` on its destination and wakes one receiver; a dead
    /// destination or no queue room destroys it.
    pub(super) fn deliver(&mut self, mut k: Kmsg, fx: &mut Effects) -> Result<(), u32> {
        let dest = k.dest;
        let ok = self.port_mut(dest).is_some_and(|p| p.queue.reserve_one());
        if !ok {
            self.kmsg_destroy(k, fx);
            return Err(SEND_INVALID_DEST);
        }
        self.stamp += 1;
        k.stamp = self.stamp;
        if let Some(p) = self.port_mut(dest) {
            p.queue.push(k);
        }
        self.wake_receiver(dest, fx);
        Ok(())
    }

    /// Sends NOTIFY_DEAD_NAME for `name` to `notify`, consuming the
    /// send-once right the request held.
    pub(super) fn notify_dead_name(&mut self, notify: PortId, name: Name, fx: &mut Effects) {
        if self.port(notify).is_none() {
            return;
        }
        match self.kmsg_kernel(
            notify,
            PORT_SEND_ONCE,
            NOTIFY_DEAD_NAME,
            &[KItem::Inline(&name.to_le_bytes())],
            KRight::Null,
        ) {
            Ok(k) => {
                let _ = self.deliver(k, fx);
            }
            // Out of kernel memory: the notification is lost, the right not.
            Err(_) => self.release_send_once(notify),
        }
    }
}
