//! Kernel messages: validation of the user's bytes, the kernel form
//! (the body bytes in one `Vec`, the rights as `PortId`s beside them, the
//! out-of-line regions: copied bytes or copy-on-write snapshots), and
//! translation back into a receiver's buffer.
//!
//! The body is kept exactly as sent (header stripped), with each `PORTS`
//! item's `disp` rewritten to the right type the receiver will get; the
//! name slots are rewritten at copyout from `rights`, in order.

use alloc::vec::Vec;

use super::{Effects, Ipc, Name, OolSink, PortId, Snapshot, SpaceId};
use libmach::abi::*;

/// A right carried by a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KRight {
    /// `PORT_NULL` was sent, or the right was taken or dropped.
    Null,
    /// `PORT_DEAD` was sent.
    Dead,
    /// A right (`PORT_RECEIVE`, `PORT_SEND` or `PORT_SEND_ONCE`) to `port`.
    Port { port: PortId, ty: u8 },
}

/// One out-of-line region of a message in transit.
#[derive(Debug)]
pub(super) enum OolData {
    /// Copied at send time (kernel heap).
    Bytes(Vec<u8>),
    /// A copy-on-write snapshot the kernel holds (`OolSource::snapshot`);
    /// released with the message unless a sink placed it.
    Snapshot(Snapshot),
    /// Placed in the receiver: nothing left to release.
    Placed,
}

/// A message in kernel form. It owns rights and kernel memory: give every
/// `Kmsg` back to the `Ipc` (`copyout` or `kmsg_destroy`), never drop it.
#[must_use]
#[derive(Debug)]
pub struct Kmsg {
    pub(super) complex: bool,
    pub(super) dest: PortId,
    /// The destination right's type; 0 once consumed (at dequeue).
    pub(super) dest_ty: u8,
    pub(super) reply: KRight,
    pub(super) id: i32,
    pub(super) seqno: u32,
    pub(super) rcv_name: Name,
    pub(super) body: Vec<u8>,
    pub(super) rights: Vec<KRight>,
    pub(super) ool: Vec<OolData>,
    pub(super) sender: Option<SpaceId>,
    /// Arrival order, for the default group.
    pub(super) stamp: u64,
    pub(super) charge: usize,
    /// Out-of-line bytes in flight: copied bytes plus snapshots' sizes.
    pub(super) ool_bytes: u64,
    /// The copied part of them (kernel heap).
    pub(super) ool_copied: u64,
    /// Still counted in the sender's queued messages / OOL bytes.
    pub(super) charged_sender: bool,
}

impl Kmsg {
    /// It carries out-of-line regions (the receiver's memory is needed to
    /// place them).
    pub fn has_ool(&self) -> bool {
        !self.ool.is_empty()
    }
    pub fn id(&self) -> i32 {
        self.id
    }
    pub fn seqno(&self) -> u32 {
        self.seqno
    }
    pub fn dest(&self) -> PortId {
        self.dest
    }
    /// Bytes it takes in a receive buffer (header included).
    pub fn size(&self) -> usize {
        HEADER_SIZE + self.body.len()
    }
    /// The items, as sent (port name slots are not meaningful here).
    pub fn body(&self) -> &[u8] {
        &self.body
    }
    /// The data of the first `INLINE` item.
    pub fn inline(&self) -> Option<&[u8]> {
        let mut off = 0;
        while let Ok(Some((h, payload, next))) = item_at(&self.body, off) {
            if h.kind == ITEM_INLINE {
                return self.body.get(payload..payload + h.count as usize);
            }
            off = next;
        }
        None
    }
    /// The rights of the `PORTS` items, in order.
    pub fn ports(&self) -> &[KRight] {
        &self.rights
    }
    /// Takes right `i` out of the message: the kernel now owns it and
    /// gives it back with `Ipc::release_right`.
    pub fn take_right(&mut self, i: usize) -> KRight {
        self.rights
            .get_mut(i)
            .map_or(KRight::Null, |r| core::mem::replace(r, KRight::Null))
    }
    /// The reply port (the message holds a right to it until destroyed).
    pub fn reply_port(&self) -> Option<PortId> {
        match self.reply {
            KRight::Port { port, .. } => Some(port),
            _ => None,
        }
    }
    /// Takes the reply right out (the kernel then owns it).
    pub fn take_reply(&mut self) -> KRight {
        core::mem::replace(&mut self.reply, KRight::Null)
    }
}

/// The right type a disposition delivers.
pub(super) fn received_type(disp: u8) -> Option<u8> {
    match disp {
        MOVE_RECEIVE => Some(PORT_RECEIVE),
        MOVE_SEND | COPY_SEND | MAKE_SEND => Some(PORT_SEND),
        MOVE_SEND_ONCE | MAKE_SEND_ONCE => Some(PORT_SEND_ONCE),
        _ => None,
    }
}

/// The item at `off`: its header, where its payload starts, where the next
/// item starts. Checks it lies inside `body`; `Ok(None)` at the end.
pub(super) fn item_at(body: &[u8], off: usize) -> Result<Option<(ItemHeader, usize, usize)>, u32> {
    if off >= body.len() {
        return Ok(None);
    }
    let h = body
        .get(off..)
        .and_then(ItemHeader::from_bytes)
        .ok_or(SEND_INVALID_TYPE)?;
    let payload = off + ITEM_HEADER_SIZE;
    let next = h
        .payload_len()
        .and_then(|n| payload.checked_add(n))
        .filter(|&n| n <= body.len())
        .ok_or(SEND_INVALID_TYPE)?;
    Ok(Some((h, payload, next)))
}

/// What a valid body carries.
pub(super) struct Scan {
    pub(super) names: usize,
    pub(super) ool_count: usize,
    /// Their bytes as sent (a snapshot counts its pages, so this is the
    /// least the message adds to the bytes in flight).
    pub(super) ool_bytes: u64,
}

/// Checks every item's shape (docs §3.2) without touching any state.
pub(super) fn scan(body: &[u8], complex: bool) -> Result<Scan, u32> {
    let mut s = Scan {
        names: 0,
        ool_count: 0,
        ool_bytes: 0,
    };
    let mut off = 0;
    while let Some((h, _, next)) = item_at(body, off)? {
        if h.reserved != 0 {
            return Err(SEND_INVALID_TYPE);
        }
        match h.kind {
            ITEM_INLINE => {
                if h.disp != 0 || h.addr != 0 {
                    return Err(SEND_INVALID_TYPE);
                }
            }
            ITEM_PORTS => {
                if !complex || h.addr != 0 {
                    return Err(SEND_INVALID_TYPE);
                }
                if received_type(h.disp).is_none() {
                    return Err(SEND_INVALID_RIGHT);
                }
                s.names += h.count as usize;
            }
            ITEM_OOL => {
                if !complex || h.disp & !OOL_FLAGS != 0 {
                    return Err(SEND_INVALID_TYPE);
                }
                // At most 4095 items of < 4 GiB each: no overflow.
                s.ool_count += 1;
                s.ool_bytes += u64::from(h.count);
            }
            _ => return Err(SEND_INVALID_TYPE),
        }
        off = next;
    }
    Ok(s)
}

/// The validated header fields of a send.
pub(super) struct SendHeader {
    pub(super) header: Header,
    pub(super) complex: bool,
}

/// docs §3.1 size rules, and the header bits no disposition uses are 0.
pub(super) fn check_header(msg: &[u8]) -> Result<SendHeader, u32> {
    if msg.len() > MSG_SIZE_MAX as usize {
        return Err(SEND_TOO_LARGE);
    }
    let header = Header::from_bytes(msg).ok_or(SEND_MSG_TOO_SMALL)?;
    if !msg.len().is_multiple_of(8) || header.size as usize != msg.len() {
        return Err(SEND_MSG_TOO_SMALL);
    }
    if header.bits & !(BITS_COMPLEX | 0xffff) != 0 {
        return Err(SEND_INVALID_TYPE);
    }
    Ok(SendHeader {
        complex: header.bits & BITS_COMPLEX != 0,
        header,
    })
}

impl Ipc {
    /// See [`Ipc::copyout`] (docs in mod.rs).
    pub(super) fn copyout_impl(
        &mut self,
        s: SpaceId,
        mut k: Kmsg,
        buf: &mut [u8],
        sink: &mut dyn OolSink,
        fx: &mut Effects,
    ) -> Result<usize, u32> {
        let size = k.size();
        if self.spaces.get(s.0.index, s.0.generation).is_none() {
            self.kmsg_destroy(k, fx);
            return Err(RCV_INVALID_DATA);
        }
        let Some((head, out)) = buf.get_mut(..size).map(|b| b.split_at_mut(HEADER_SIZE)) else {
            self.kmsg_destroy(k, fx);
            return Err(RCV_INVALID_DATA);
        };
        let (remote, reply_ty) = match k.take_reply() {
            KRight::Port { port, ty } => (self.insert_right(s, port, ty, fx), ty),
            _ => (PORT_NULL, 0),
        };
        let header = Header {
            bits: u32::from(if remote == PORT_NULL { 0 } else { reply_ty })
                | if k.complex { BITS_COMPLEX } else { 0 },
            size: size as u32,
            remote,
            local: k.rcv_name,
            seqno: k.seqno,
            id: k.id,
        };
        head.copy_from_slice(&header.to_bytes());
        out.copy_from_slice(&k.body);
        // Simple messages have nothing to translate.
        let mut off = if k.complex { 0 } else { out.len() };
        let (mut right, mut region) = (0usize, 0usize);
        while let Ok(Some((h, payload, next))) = item_at(out, off) {
            match h.kind {
                ITEM_PORTS => {
                    for slot in 0..h.count as usize {
                        let name = match k.take_right(right) {
                            KRight::Null => PORT_NULL,
                            KRight::Dead => PORT_DEAD,
                            KRight::Port { port, ty } => self.insert_right(s, port, ty, fx),
                        };
                        right += 1;
                        let at = payload + slot * 4;
                        if let Some(b) = out.get_mut(at..at + 4) {
                            b.copy_from_slice(&name.to_le_bytes());
                        }
                    }
                }
                ITEM_OOL => {
                    let placed = match k.ool.get_mut(region) {
                        Some(OolData::Bytes(data)) => sink.place(data),
                        Some(o) => match *o {
                            OolData::Snapshot(snap) => {
                                let at = sink.place_snapshot(snap.handle);
                                if at.is_some() {
                                    *o = OolData::Placed;
                                    self.snapshots -= 1;
                                }
                                at
                            }
                            _ => None,
                        },
                        None => None,
                    };
                    region += 1;
                    // A receiver out of memory gets the item with no region
                    // (an unplaced snapshot is released with the message).
                    let (addr, count) = match placed {
                        Some(a) => (a, h.count),
                        None => (0, 0),
                    };
                    let item = ItemHeader { addr, count, ..h };
                    if let Some(b) = out.get_mut(off..off + ITEM_HEADER_SIZE) {
                        b.copy_from_slice(&item.to_bytes());
                    }
                }
                _ => {}
            }
            off = next;
        }
        self.kmsg_destroy(k, fx);
        Ok(size)
    }
}
