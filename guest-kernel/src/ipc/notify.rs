//! Kernel-generated messages: dead-name notifications and the kernel's own
//! sends (exception messages). They are bounded by the kernel message
//! memory bound but not by the destination's backlog: the kernel cannot
//! block, and they are bounded by their causes (one per dead-name request,
//! one per faulting thread).

use alloc::vec::Vec;

use super::kmsg::{KRight, Kmsg};
use super::limits::KMSG_OVERHEAD;
use super::{Effects, Ipc, Name, PortId};
use libmach::abi::*;

impl Ipc {
    /// Builds a kernel message whose body is a `PORTS` item (if `ports`)
    /// then an `INLINE` item (if `inline`), as docs §5 lays them out.
    /// The destination right (`dest_ty`) and `reply` must already exist.
    pub(super) fn kmsg_kernel(
        &mut self,
        dest: PortId,
        dest_ty: u8,
        id: i32,
        ports: &[(PortId, u8)],
        inline: &[u8],
        reply: KRight,
    ) -> Result<Kmsg, u32> {
        let pad = |n: usize| (n + 7) & !7;
        let mut len = 0;
        if !ports.is_empty() {
            len += ITEM_HEADER_SIZE + pad(ports.len() * 4);
        }
        if !inline.is_empty() {
            len += ITEM_HEADER_SIZE + pad(inline.len());
        }
        let charge = len + KMSG_OVERHEAD + ports.len() * 16;
        if HEADER_SIZE + len > MSG_SIZE_MAX as usize
            || u32::try_from(ports.len()).is_err()
            || ports
                .iter()
                .any(|&(_, ty)| ty != PORT_SEND && ty != PORT_SEND_ONCE)
        {
            return Err(KERN_INVALID_ARGUMENT);
        }
        if self.kmsg_bytes + charge > self.limits.kmsg_bytes_total {
            return Err(KERN_RESOURCE_SHORTAGE);
        }
        let mut body = Vec::new();
        body.try_reserve_exact(len)
            .map_err(|_| KERN_RESOURCE_SHORTAGE)?;
        let mut rights = Vec::new();
        rights
            .try_reserve_exact(ports.len())
            .map_err(|_| KERN_RESOURCE_SHORTAGE)?;
        if !ports.is_empty() {
            let h = ItemHeader {
                kind: ITEM_PORTS,
                disp: ports.first().map_or(PORT_SEND, |p| p.1),
                reserved: 0,
                count: ports.len() as u32,
                addr: 0,
            };
            body.extend_from_slice(&h.to_bytes());
            body.resize(body.len() + pad(ports.len() * 4), 0);
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
        if !inline.is_empty() {
            let h = ItemHeader {
                kind: ITEM_INLINE,
                disp: 0,
                reserved: 0,
                count: inline.len() as u32,
                addr: 0,
            };
            body.extend_from_slice(&h.to_bytes());
            body.extend_from_slice(inline);
            body.resize(len, 0);
        }
        self.kmsg_bytes += charge;
        self.kmsgs_live += 1;
        Ok(Kmsg {
            complex: !ports.is_empty(),
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
            ool_total: 0,
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
            &[],
            &name.to_le_bytes(),
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
