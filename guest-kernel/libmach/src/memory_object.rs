//! The external memory management interface (paper Tables 3-5, 3-6) as
//! messages, for pagers written as guest tasks. The kernel sends the
//! Table 3-5 calls to the memory object's port, each with a send right to
//! the object's control (request) port; the pager answers with the Table
//! 3-6 calls sent to that control port. Every message is one-way.
//!
//! Wire format (docs/pager-interface in docs/vm.md): a `PORTS` item with the
//! control port (kernel to pager only), then one `INLINE` item: a 24-byte
//! header `[a: u64][b: u64][c: u32][0: u32]` whose fields each message
//! names below, followed by page data for data_provided and data_write.

use crate::abi::Name;
use crate::message::{Builder, Item, Message};

// Kernel → pager (to the memory object port).
/// a: page size.
pub const MEMORY_OBJECT_INIT: i32 = 2200;
/// a: offset, b: length, c: desired access (VM_PROT_*).
pub const MEMORY_OBJECT_DATA_REQUEST: i32 = 2201;
/// a: offset, b: length; then the data.
pub const MEMORY_OBJECT_DATA_WRITE: i32 = 2202;
/// a: offset, b: length, c: desired access.
pub const MEMORY_OBJECT_DATA_UNLOCK: i32 = 2203;
/// The object is gone; the control port dies with it.
pub const MEMORY_OBJECT_TERMINATE: i32 = 2204;
/// A MEMORY_OBJECT_LOCK_REQUEST is done: its lock is in force and every
/// data_write it waited for was sent before this, on this port. a: offset,
/// b: length (the request's); then the request's cookie, a le64.
pub const MEMORY_OBJECT_LOCK_COMPLETED: i32 = 2205;

// Pager → kernel (to the control port).
/// a: offset, c: lock (access the pages may not be used for); then the
/// data, whole pages.
pub const MEMORY_OBJECT_DATA_PROVIDED: i32 = 2250;
/// a: offset, b: size: no data; the pages are zero-filled.
pub const MEMORY_OBJECT_DATA_UNAVAILABLE: i32 = 2251;
/// a: offset, b: size: the pager cannot supply them (faults fail).
pub const MEMORY_OBJECT_DATA_ERROR: i32 = 2252;
/// a: offset, b: size, c: lock.
pub const MEMORY_OBJECT_DATA_LOCK: i32 = 2253;
/// a: offset, b: size: write back modified pages and drop them.
pub const MEMORY_OBJECT_FLUSH_REQUEST: i32 = 2254;
/// a: offset, b: size: write back modified pages and keep them.
pub const MEMORY_OBJECT_CLEAN_REQUEST: i32 = 2255;
/// c: nonzero if the kernel may keep the object cached when unused.
pub const MEMORY_OBJECT_CACHE: i32 = 2256;
/// data_lock, clean and flush in one call, answered by
/// MEMORY_OBJECT_LOCK_COMPLETED when done (GNU Mach's
/// memory_object_lock_request with a reply): a: offset, b: size, c: the
/// `LOCK_*` bits below; then a le64 cookie the completion carries back.
pub const MEMORY_OBJECT_LOCK_REQUEST: i32 = 2257;
/// MEMORY_OBJECT_LOCK_REQUEST's `c`: the lock value (VM_PROT_* bits) in
/// the low byte, applied only with LOCK_SET.
pub const LOCK_VALUE: u32 = 0xff;
/// Apply the lock value (else the locks stay as they are).
pub const LOCK_SET: u32 = 1 << 8;
/// Write modified pages back.
pub const LOCK_CLEAN: u32 = 1 << 9;
/// Write modified pages back and drop the range's pages.
pub const LOCK_FLUSH: u32 = 1 << 10;

/// Bytes of the fixed header in the inline item.
pub const FIELDS: usize = 24;

/// The header fields and what follows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fields<'a> {
    pub a: u64,
    pub b: u64,
    pub c: u32,
    pub data: &'a [u8],
}

impl<'a> Fields<'a> {
    /// From a message's inline payload (None if shorter than the header).
    pub fn decode(inline: &'a [u8]) -> Option<Fields<'a>> {
        let (head, data) = inline.split_at_checked(FIELDS)?;
        let word = |i: usize| {
            head.get(i..i + 8)
                .and_then(|w| w.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let c = head
            .get(16..20)
            .and_then(|w| w.try_into().ok())
            .map(u32::from_le_bytes)?;
        Some(Fields {
            a: word(0)?,
            b: word(8)?,
            c,
            data,
        })
    }

    pub fn encode_head(a: u64, b: u64, c: u32) -> [u8; FIELDS] {
        let mut h = [0u8; FIELDS];
        h[..8].copy_from_slice(&a.to_le_bytes());
        h[8..16].copy_from_slice(&b.to_le_bytes());
        h[16..20].copy_from_slice(&c.to_le_bytes());
        h
    }
}

/// A kernel → pager message as the pager receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagerCall<'a> {
    pub id: i32,
    /// The control port to answer on (a send right in the pager's space).
    pub control: Name,
    pub fields: Fields<'a>,
}

impl<'a> PagerCall<'a> {
    pub fn parse(m: &Message<'a>) -> Option<PagerCall<'a>> {
        let mut control = None;
        let mut inline = None;
        for it in m.items() {
            match it {
                Item::Ports { names, .. } => control = names.get(0),
                Item::Inline(d) => inline = Some(d),
                _ => {}
            }
        }
        Some(PagerCall {
            id: m.id(),
            control: control?,
            fields: Fields::decode(inline?)?,
        })
    }
}

/// Builds a pager → kernel call to `control` in `buf`: the header fields,
/// then `data` (data_provided's pages); its length.
pub fn build_reply(
    buf: &mut [u8],
    control: Name,
    id: i32,
    a: u64,
    b: u64,
    c: u32,
    data: &[u8],
) -> Result<usize, crate::message::BuildError> {
    Builder::new(buf)
        .dest(control, crate::abi::COPY_SEND)
        .id(id)
        .inline_parts(&[&Fields::encode_head(a, b, c), data])
        .finish()
}
