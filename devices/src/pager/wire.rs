//! virtio-pager wire format: message layouts and request parsing.
//!
//! Pure: no guest memory, no backend. Everything is little-endian with
//! explicit padding; docs/virtio-pager.md is the normative description and
//! the constants below must match it. The parser is the fuzz target.

use crate::virtio::Segment;
use pager_backends::{Access, ObjectOffset, PAGE_SIZE};
use thiserror::Error;
use vm_memory::{ByteValued, GuestAddress, Le16, Le32, Le64};

/// Virtio device ID. OASIS assigns IDs from 1 upwards (< 64 as of 1.3); we
/// use a number far above them, in the upper half of the 16-bit space.
pub const VIRTIO_ID_PAGER: u32 = 0xD0A1;
/// VendorID register: "DUAL" as little-endian ASCII.
pub const VIRTIO_PAGER_VENDOR: u32 = u32::from_le_bytes(*b"DUAL");

/// Feature: the device may fill frames beyond `length` (read-ahead).
pub const VIRTIO_PAGER_F_READAHEAD: u32 = 0;
/// Feature: DATA_UNLOCK requests are understood.
pub const VIRTIO_PAGER_F_UNLOCK: u32 = 1;
/// Feature: manager → kernel events are delivered on the event queue.
pub const VIRTIO_PAGER_F_EVENTS: u32 = 2;
/// Feature: a LOCK_REQUEST event may ask for a reply (F_REPLY), which the
/// driver sends as a LOCK_COMPLETED request once the request is done.
pub const VIRTIO_PAGER_F_LOCK_COMPLETED: u32 = 3;

pub const REQUEST_QUEUE: usize = 0;
pub const EVENT_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 256;

pub const REQ_HDR_SIZE: usize = 32;
pub const RESP_SIZE: usize = 24;
pub const EVENT_SIZE: usize = 32;
pub const CONFIG_HDR_SIZE: usize = 16;
pub const OBJECT_ENTRY_SIZE: usize = 64;
pub const OBJECT_NAME_LEN: usize = 48;

/// At most this many frame descriptors in one request chain.
pub const MAX_FRAME_SEGMENTS: usize = 256;
/// At most this many bytes of frames in one request (256 pages).
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// Whole chain: header + frames + status.
pub const MAX_CHAIN_LEN: usize = MAX_FRAME_SEGMENTS + 2;

/// Object table flag: the object refuses DATA_WRITE.
pub const OBJ_F_READ_ONLY: u32 = 1;

/// Request types (guest → host, request queue).
pub mod req {
    pub const INIT: u16 = 1;
    pub const DATA_REQUEST: u16 = 2;
    pub const DATA_WRITE: u16 = 3;
    pub const DATA_UNLOCK: u16 = 4;
    pub const TERMINATE: u16 = 5;
    pub const SYNC: u16 = 6;
    /// A LOCK_REQUEST with F_REPLY is done (GNU Mach lock_completed).
    pub const LOCK_COMPLETED: u16 = 7;
}

/// Response kinds: what a successful DATA_REQUEST produced.
pub mod kind {
    pub const NONE: u32 = 0;
    pub const DATA_PROVIDED: u32 = 1;
    pub const DATA_UNAVAILABLE: u32 = 2;
}

/// INIT response flags.
pub const INIT_F_READ_ONLY: u8 = 1;
pub const INIT_F_MAY_CACHE: u8 = 2;

/// Status codes in the response.
pub mod status {
    pub const OK: u32 = 0;
    /// Malformed chain or header (shape, direction, overlap, padding, flags).
    pub const BAD_REQUEST: u32 = 1;
    /// Unknown request type, or one whose feature was not negotiated.
    pub const UNSUPPORTED: u32 = 2;
    pub const NO_OBJECT: u32 = 3;
    /// Offset/length not page aligned, zero, too large, or frames mis-sized.
    pub const BAD_RANGE: u32 = 4;
    pub const PAST_END: u32 = 5;
    pub const READ_ONLY: u32 = 6;
    /// Object not initialised (or INIT twice).
    pub const BAD_STATE: u32 = 7;
    /// The backing store failed.
    pub const IO_ERROR: u32 = 8;
    /// The pager broke protocol, or is gone.
    pub const PAGER_FAILED: u32 = 9;
    /// The pager did not answer within the object's timeout (it may still
    /// be alive: the object is not dead).
    pub const TIMED_OUT: u32 = 10;
}

/// Event types (host → guest, event queue).
pub mod event {
    /// data_lock / flush_request / clean_request.
    pub const LOCK_REQUEST: u16 = 1;
    /// pager_cache.
    pub const CACHE: u16 = 2;
    /// Unsolicited data_provided; page data follows in the chain's frames.
    pub const DATA_PROVIDED: u16 = 3;
    /// The object is destroyed.
    pub const DESTROY: u16 = 4;

    pub const F_CLEAN: u16 = 1;
    pub const F_FLUSH: u16 = 2;
    /// LOCK_REQUEST: answer with LOCK_COMPLETED carrying the event's `tag`.
    pub const F_REPLY: u16 = 4;
    pub const F_MAY_CACHE: u16 = 1;
}

/// Index into the object table (config space).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub u32);

/// Request header, 32 bytes, device-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestHeader {
    pub req_type: u16,
    pub flags: u16,
    pub object_id: u32,
    pub offset: u64,
    pub length: u64,
    pub access: u8,
    pub padding: [u8; 3],
    pub reserved: u32,
}

/// How a request header lies in guest memory: little-endian fields at
/// fixed offsets, declared once (RequestHeader is the decoded value).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RequestHeaderLayout {
    req_type: Le16,
    flags: Le16,
    object_id: Le32,
    offset: Le64,
    length: Le64,
    access: u8,
    padding: [u8; 3],
    reserved: Le32,
}
// SAFETY: repr(C) of integers (any bit pattern is valid) with no implicit
// padding: the fields add up to the size, asserted below.
unsafe impl ByteValued for RequestHeaderLayout {}
const _: () = assert!(size_of::<RequestHeaderLayout>() == REQ_HDR_SIZE);

impl RequestHeader {
    pub fn from_bytes(b: &[u8; REQ_HDR_SIZE]) -> Self {
        let w: RequestHeaderLayout = from_wire(b);
        RequestHeader {
            req_type: w.req_type.into(),
            flags: w.flags.into(),
            object_id: w.object_id.into(),
            offset: w.offset.into(),
            length: w.length.into(),
            access: w.access,
            padding: w.padding,
            reserved: w.reserved.into(),
        }
    }

    pub fn to_bytes(&self) -> [u8; REQ_HDR_SIZE] {
        to_wire(&RequestHeaderLayout {
            req_type: self.req_type.into(),
            flags: self.flags.into(),
            object_id: self.object_id.into(),
            offset: self.offset.into(),
            length: self.length.into(),
            access: self.access,
            padding: self.padding,
            reserved: self.reserved.into(),
        })
    }
}

/// Copies a wire layout out of its bytes (guest buffers need not be
/// aligned for it, so no cast in place).
fn from_wire<T: ByteValued + Default, const N: usize>(b: &[u8; N]) -> T {
    // A layout of another size does not compile, so the copy cannot panic.
    const { assert!(size_of::<T>() == N) };
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(b);
    v
}

fn to_wire<T: ByteValued, const N: usize>(v: &T) -> [u8; N] {
    const { assert!(size_of::<T>() == N) };
    let mut b = [0u8; N];
    b.copy_from_slice(v.as_slice());
    b
}

/// Response, 24 bytes, the last (device-writable) descriptor of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Response {
    pub status: u32,
    pub kind: u32,
    /// DATA_PROVIDED: bytes filled; DATA_UNAVAILABLE: bytes to zero-fill;
    /// INIT: object size.
    pub bytes: u64,
    /// Lock value (accesses prevented): DATA_PROVIDED and DATA_UNLOCK.
    pub lock: u8,
    /// INIT_F_* for INIT.
    pub flags: u8,
}

impl Response {
    pub fn error(status: u32) -> Self {
        Response {
            status,
            ..Default::default()
        }
    }

    pub fn to_bytes(&self) -> [u8; RESP_SIZE] {
        to_wire(&ResponseLayout {
            status: self.status.into(),
            kind: self.kind.into(),
            bytes: self.bytes.into(),
            lock: self.lock,
            flags: self.flags,
            reserved: [0; 6],
        })
    }

    pub fn from_bytes(b: &[u8; RESP_SIZE]) -> Self {
        let w: ResponseLayout = from_wire(b);
        Response {
            status: w.status.into(),
            kind: w.kind.into(),
            bytes: w.bytes.into(),
            lock: w.lock,
            flags: w.flags,
        }
    }
}

/// How a response lies in guest memory.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ResponseLayout {
    status: Le32,
    kind: Le32,
    bytes: Le64,
    lock: u8,
    flags: u8,
    reserved: [u8; 6],
}
// SAFETY: as for RequestHeaderLayout.
unsafe impl ByteValued for ResponseLayout {}
const _: () = assert!(size_of::<ResponseLayout>() == RESP_SIZE);

/// Event, 32 bytes, at the start of an event-queue buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Event {
    pub ev_type: u16,
    pub flags: u16,
    pub object_id: u32,
    pub offset: u64,
    pub length: u64,
    pub lock: u8,
    /// LOCK_REQUEST with F_REPLY: what LOCK_COMPLETED echoes; else 0.
    pub tag: u32,
}

/// How an event lies in an event-queue buffer.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct EventLayout {
    ev_type: Le16,
    flags: Le16,
    object_id: Le32,
    offset: Le64,
    length: Le64,
    lock: u8,
    reserved: [u8; 3],
    tag: Le32,
}
// SAFETY: as for RequestHeaderLayout.
unsafe impl ByteValued for EventLayout {}
const _: () = assert!(size_of::<EventLayout>() == EVENT_SIZE);

impl Event {
    pub fn to_bytes(&self) -> [u8; EVENT_SIZE] {
        to_wire(&EventLayout {
            ev_type: self.ev_type.into(),
            flags: self.flags.into(),
            object_id: self.object_id.into(),
            offset: self.offset.into(),
            length: self.length.into(),
            lock: self.lock,
            reserved: [0; 3],
            tag: self.tag.into(),
        })
    }

    pub fn from_bytes(b: &[u8; EVENT_SIZE]) -> Self {
        let w: EventLayout = from_wire(b);
        Event {
            ev_type: w.ev_type.into(),
            flags: w.flags.into(),
            object_id: w.object_id.into(),
            offset: w.offset.into(),
            length: w.length.into(),
            lock: w.lock,
            tag: w.tag.into(),
        }
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Init,
    DataRequest {
        offset: ObjectOffset,
        len: u64,
        desired: Access,
        /// Device-writable guest frames; their total may exceed `len`
        /// (an offer to take read-ahead).
        frames: Vec<Segment>,
    },
    DataWrite {
        offset: ObjectOffset,
        len: u64,
        /// Device-readable guest frames holding exactly `len` bytes.
        frames: Vec<Segment>,
    },
    DataUnlock {
        offset: ObjectOffset,
        len: u64,
        desired: Access,
    },
    Terminate,
    Sync,
    /// The lock request whose event carried `tag` is done. `cookie` is
    /// the pager's, looked up by the device (the parser leaves it 0).
    LockCompleted {
        offset: ObjectOffset,
        len: u64,
        tag: u32,
        cookie: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRequest {
    pub object: ObjectId,
    pub request: Request,
    /// Where the 24-byte response goes.
    pub status: GuestAddress,
}

/// What the parser needs to know about the device and the negotiation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub num_objects: u32,
    pub max_frames: usize,
    pub max_request_bytes: u64,
    pub readahead: bool,
    pub unlock: bool,
    pub lock_completed: bool,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    #[error("chain has {0} descriptors; need header + status at least")]
    TooShort(usize),
    #[error("first descriptor must be device-readable and exactly {REQ_HDR_SIZE} bytes")]
    BadHeaderDescriptor,
    #[error("last descriptor must be device-writable and exactly {RESP_SIZE} bytes")]
    BadStatusDescriptor,
    #[error("descriptors overlap or wrap the address space")]
    Overlap,
    #[error("header could not be read from guest memory")]
    Unreadable,
    #[error("nonzero flags, padding or reserved bytes")]
    NonzeroReserved,
    #[error("unknown request type {0}")]
    UnknownType(u16),
    #[error("request type {0} needs a feature the driver did not accept")]
    NotNegotiated(u16),
    #[error("object id {0} is not in the table")]
    NoObject(u32),
    #[error("bad access bits {0:#x}")]
    BadAccess(u8),
    #[error("range: {0}")]
    BadRange(&'static str),
    #[error("frames: {0}")]
    BadFrames(&'static str),
    /// A frame descriptor the device would have to write is device-readable,
    /// or one it must read is device-writable: a malformed chain (§4.5
    /// BAD_REQUEST), not a range problem.
    #[error("frame descriptor has the wrong direction")]
    WrongDirection,
}

impl ParseError {
    /// The status code the guest sees for this error.
    pub fn status(&self) -> u32 {
        match self {
            ParseError::UnknownType(_) | ParseError::NotNegotiated(_) => status::UNSUPPORTED,
            ParseError::NoObject(_) => status::NO_OBJECT,
            ParseError::BadRange(_) | ParseError::BadFrames(_) => status::BAD_RANGE,
            _ => status::BAD_REQUEST,
        }
    }
}

/// Where an error response can go, if the chain has a usable status slot.
pub fn status_slot(segs: &[Segment]) -> Option<GuestAddress> {
    match segs {
        [_, .., last] if last.writable && last.len as usize == RESP_SIZE => Some(last.addr),
        _ => None,
    }
}

/// Validates one request chain. `segs` is the whole chain (from
/// `collect_chain`, so every segment is inside guest memory and non-empty);
/// `read_header` fetches the 32 header bytes from guest memory.
pub fn parse_request(
    segs: &[Segment],
    limits: &Limits,
    read_header: impl FnOnce(GuestAddress) -> Option<[u8; REQ_HDR_SIZE]>,
) -> Result<ParsedRequest, ParseError> {
    let (hdr_seg, status_seg, middle) = match segs {
        [h, mid @ .., s] => (h, s, mid),
        _ => return Err(ParseError::TooShort(segs.len())),
    };
    if hdr_seg.writable || hdr_seg.len as usize != REQ_HDR_SIZE {
        return Err(ParseError::BadHeaderDescriptor);
    }
    if !status_seg.writable || status_seg.len as usize != RESP_SIZE {
        return Err(ParseError::BadStatusDescriptor);
    }
    check_no_overlap(segs)?;

    let hdr = RequestHeader::from_bytes(&read_header(hdr_seg.addr).ok_or(ParseError::Unreadable)?);
    // LOCK_COMPLETED carries its tag where other requests are reserved.
    let reserved = if hdr.req_type == req::LOCK_COMPLETED {
        0
    } else {
        hdr.reserved
    };
    if hdr.flags != 0 || hdr.padding != [0; 3] || reserved != 0 {
        return Err(ParseError::NonzeroReserved);
    }
    if !(req::INIT..=req::LOCK_COMPLETED).contains(&hdr.req_type) {
        return Err(ParseError::UnknownType(hdr.req_type));
    }
    if hdr.object_id >= limits.num_objects {
        return Err(ParseError::NoObject(hdr.object_id));
    }
    let offset = ObjectOffset(hdr.offset);
    let request = match hdr.req_type {
        req::INIT | req::TERMINATE | req::SYNC => {
            if !middle.is_empty() {
                return Err(ParseError::BadFrames("this request carries no frames"));
            }
            if hdr.offset != 0 || hdr.length != 0 || hdr.access != 0 {
                return Err(ParseError::NonzeroReserved);
            }
            match hdr.req_type {
                req::INIT => Request::Init,
                req::TERMINATE => Request::Terminate,
                _ => Request::Sync,
            }
        }
        req::DATA_REQUEST => {
            let desired = nonempty_access(hdr.access)?;
            check_range(offset, hdr.length, limits)?;
            let total = check_frames(middle, true, limits)?;
            if total < hdr.length {
                return Err(ParseError::BadFrames("frames smaller than length"));
            }
            if total > hdr.length && !limits.readahead {
                return Err(ParseError::BadFrames("extra frames without READAHEAD"));
            }
            if offset.checked_add(total).is_none() {
                return Err(ParseError::BadRange("offset + frames overflows"));
            }
            Request::DataRequest {
                offset,
                len: hdr.length,
                desired,
                frames: middle.to_vec(),
            }
        }
        req::DATA_WRITE => {
            if hdr.access != 0 {
                return Err(ParseError::BadAccess(hdr.access));
            }
            check_range(offset, hdr.length, limits)?;
            let total = check_frames(middle, false, limits)?;
            if total != hdr.length {
                return Err(ParseError::BadFrames("frames differ from length"));
            }
            Request::DataWrite {
                offset,
                len: hdr.length,
                frames: middle.to_vec(),
            }
        }
        req::LOCK_COMPLETED => {
            if !limits.lock_completed {
                return Err(ParseError::NotNegotiated(hdr.req_type));
            }
            if !middle.is_empty() {
                return Err(ParseError::BadFrames("this request carries no frames"));
            }
            if hdr.access != 0 {
                return Err(ParseError::BadAccess(hdr.access));
            }
            // The lock request's range: any number of pages (a flush may
            // cover a whole object), so not held to the transfer limit.
            check_lock_range(offset, hdr.length)?;
            Request::LockCompleted {
                offset,
                len: hdr.length,
                tag: hdr.reserved,
                cookie: 0,
            }
        }
        // Only DATA_UNLOCK is left after the range check above.
        _ => {
            if !limits.unlock {
                return Err(ParseError::NotNegotiated(hdr.req_type));
            }
            if !middle.is_empty() {
                return Err(ParseError::BadFrames("this request carries no frames"));
            }
            let desired = nonempty_access(hdr.access)?;
            check_range(offset, hdr.length, limits)?;
            Request::DataUnlock {
                offset,
                len: hdr.length,
                desired,
            }
        }
    };
    Ok(ParsedRequest {
        object: ObjectId(hdr.object_id),
        request,
        status: status_seg.addr,
    })
}

fn nonempty_access(bits: u8) -> Result<Access, ParseError> {
    match Access::from_bits(bits) {
        Some(a) if a != Access::NONE => Ok(a),
        _ => Err(ParseError::BadAccess(bits)),
    }
}

fn check_range(offset: ObjectOffset, len: u64, limits: &Limits) -> Result<(), ParseError> {
    check_lock_range(offset, len)?;
    if len > limits.max_request_bytes {
        return Err(ParseError::BadRange("longer than the request limit"));
    }
    Ok(())
}

/// Whole pages, at least one, not past the end of the offset space.
fn check_lock_range(offset: ObjectOffset, len: u64) -> Result<(), ParseError> {
    if len == 0 {
        return Err(ParseError::BadRange("zero length"));
    }
    if !offset.is_page_aligned() || !len.is_multiple_of(PAGE_SIZE) {
        return Err(ParseError::BadRange("not page aligned"));
    }
    if offset.checked_add(len).is_none() {
        return Err(ParseError::BadRange("offset + length overflows"));
    }
    Ok(())
}

/// Frames must all have the expected direction, be whole, page-aligned
/// pages, and stay within the limits. Returns their total size.
fn check_frames(frames: &[Segment], writable: bool, limits: &Limits) -> Result<u64, ParseError> {
    if frames.is_empty() {
        return Err(ParseError::BadFrames("no frames"));
    }
    if frames.len() > limits.max_frames {
        return Err(ParseError::BadFrames("too many frame descriptors"));
    }
    let mut total: u64 = 0;
    for f in frames {
        if f.writable != writable {
            return Err(ParseError::WrongDirection);
        }
        if f.addr.0 % PAGE_SIZE != 0 || u64::from(f.len) % PAGE_SIZE != 0 {
            return Err(ParseError::BadFrames("frame not page aligned"));
        }
        total = total.saturating_add(u64::from(f.len));
        if total > limits.max_request_bytes {
            return Err(ParseError::BadFrames("frames exceed the request limit"));
        }
    }
    Ok(total)
}

/// No two descriptors may share a byte: the device would otherwise write a
/// status over page data (or pages over each other) in an order the driver
/// cannot predict.
fn check_no_overlap(segs: &[Segment]) -> Result<(), ParseError> {
    // Typical chains (header, a frame or a few, response) are checked pair
    // by pair without allocating; long ones are sorted.
    const PAIRWISE: usize = 8;
    if segs.len() <= PAIRWISE {
        let mut ends = [0u64; PAIRWISE];
        for (i, s) in segs.iter().enumerate() {
            ends[i] = s
                .addr
                .0
                .checked_add(u64::from(s.len))
                .ok_or(ParseError::Overlap)?;
        }
        for i in 0..segs.len() {
            for j in i + 1..segs.len() {
                if segs[i].addr.0 < ends[j] && segs[j].addr.0 < ends[i] {
                    return Err(ParseError::Overlap);
                }
            }
        }
        return Ok(());
    }
    let mut ranges = Vec::with_capacity(segs.len());
    for s in segs {
        let end = s
            .addr
            .0
            .checked_add(u64::from(s.len))
            .ok_or(ParseError::Overlap)?;
        ranges.push((s.addr.0, end));
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(ParseError::Overlap);
    }
    Ok(())
}

/// The object table in config space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    pub size: u64,
    pub id: ObjectId,
    pub flags: u32,
    pub name: String,
}

/// Config space header, then one ObjectEntryLayout per object.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ConfigHeaderLayout {
    num_objects: Le32,
    max_segments: Le32,
    max_request_bytes: Le32,
    page_size: Le32,
}
// SAFETY: as for RequestHeaderLayout.
unsafe impl ByteValued for ConfigHeaderLayout {}
const _: () = assert!(size_of::<ConfigHeaderLayout>() == CONFIG_HDR_SIZE);

#[repr(C)]
#[derive(Clone, Copy)]
struct ObjectEntryLayout {
    size: Le64,
    id: Le32,
    flags: Le32,
    /// UTF-8, NUL-terminated (so at most OBJECT_NAME_LEN - 1 bytes).
    name: [u8; OBJECT_NAME_LEN],
}
// SAFETY: as for RequestHeaderLayout.
unsafe impl ByteValued for ObjectEntryLayout {}
const _: () = assert!(size_of::<ObjectEntryLayout>() == OBJECT_ENTRY_SIZE);

/// Config space layout: 16-byte header, then one 64-byte entry per object.
pub fn encode_config(entries: &[ObjectEntry]) -> Vec<u8> {
    let mut b = Vec::with_capacity(CONFIG_HDR_SIZE + entries.len() * OBJECT_ENTRY_SIZE);
    let header = ConfigHeaderLayout {
        num_objects: u32::try_from(entries.len()).unwrap_or(u32::MAX).into(),
        max_segments: (MAX_FRAME_SEGMENTS as u32).into(),
        max_request_bytes: (MAX_REQUEST_BYTES as u32).into(),
        page_size: (PAGE_SIZE as u32).into(),
    };
    b.extend_from_slice(header.as_slice());
    for e in entries {
        let mut entry = ObjectEntryLayout {
            size: e.size.into(),
            id: e.id.0.into(),
            flags: e.flags.into(),
            name: [0; OBJECT_NAME_LEN],
        };
        // Truncated to 47 bytes so the name is always NUL-terminated.
        let raw = e.name.as_bytes();
        let n = raw.len().min(OBJECT_NAME_LEN - 1);
        entry.name[..n].copy_from_slice(&raw[..n]);
        b.extend_from_slice(entry.as_slice());
    }
    b
}

/// Why `fuzz_parse` refused an input: the descriptor walk (`collect_chain`)
/// or the request parser.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FuzzReject {
    #[error("chain: {0}")]
    Chain(#[from] crate::virtio::ChainError),
    #[error("request: {0}")]
    Parse(#[from] ParseError),
}

/// Fuzz entry point (cargo-fuzz target `parse_request` and the corpus
/// regression test). It runs what the device runs for one available chain:
/// a real descriptor table in guest memory is walked by virtio-queue and
/// `collect_chain` (loops, dangling `next`, indirect tables, zero-length and
/// out-of-memory descriptors), then `parse_request`.
///
/// Input: bytes 0..32 are the header; byte 32 the negotiated feature bits
/// (bit 0 READAHEAD, bit 1 UNLOCK, bit 2 LOCK_COMPLETED; missing:
/// the first two); then descriptors, at
/// most `QUEUE_SIZE`, stored at table indices 0, 1, ...; the chain's head
/// is index 0. With feature bit 7 clear, a descriptor is 14 bytes (le64
/// addr, le32 len, le16 flags; flag bit 1 = device-writable) and they are
/// linked in order (NEXT on all but the last). With bit 7 set, a descriptor
/// is 16 raw virtq bytes (le64 addr, le32 len, le16 flags, le16 next), so
/// the input chooses the links and INDIRECT itself (an indirect table may
/// point back into the descriptor table at guest address 0). Guest memory is
/// 16 MiB: descriptor table at 0, avail ring at 0x1000, used ring at 0x2000.
/// Returns the parse result so tests can check accepted and refused inputs.
pub fn fuzz_parse(data: &[u8]) -> Result<ParsedRequest, FuzzReject> {
    use virtio_queue::{Queue, QueueOwnedT, QueueT};
    use vm_memory::{Bytes, GuestMemoryMmap};
    const MEM: usize = 16 << 20;
    const DESC: u64 = 0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;
    thread_local! {
        static GUEST: Option<GuestMemoryMmap> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).ok();
    }
    let mut hdr = [0u8; REQ_HDR_SIZE];
    let n = data.len().min(REQ_HDR_SIZE);
    hdr[..n].copy_from_slice(&data[..n]);
    let feat = data.get(REQ_HDR_SIZE).copied().unwrap_or(0x03);
    let raw = feat & 0x80 != 0;
    let descs = data.get(REQ_HDR_SIZE + 1..).unwrap_or(&[]);
    // The descriptor table as the driver would have written it.
    let mut table = vec![0u8; 16 * usize::from(QUEUE_SIZE)];
    if raw {
        for (i, c) in descs
            .chunks_exact(16)
            .take(usize::from(QUEUE_SIZE))
            .enumerate()
        {
            table[16 * i..16 * i + 16].copy_from_slice(c);
        }
    } else {
        let chunks: Vec<&[u8]> = descs
            .chunks_exact(14)
            .take(usize::from(QUEUE_SIZE))
            .collect();
        for (i, c) in chunks.iter().enumerate() {
            let d = &mut table[16 * i..16 * i + 16];
            d[..12].copy_from_slice(&c[..12]);
            let mut flags = u16::from(c[12] & 2);
            if i + 1 < chunks.len() {
                flags |= 1;
            }
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
        }
    }
    let segs = GUEST.with(|g| {
        let Some(mem) = g else {
            // No guest memory (mmap failed): nothing to walk.
            return Err(FuzzReject::Chain(crate::virtio::ChainError::Broken));
        };
        let ring_ok = mem.write_slice(&table, GuestAddress(DESC)).is_ok()
            // avail: flags 0, idx 1, ring[0] = head 0.
            && mem.write_slice(&[0, 0, 1, 0, 0, 0], GuestAddress(AVAIL)).is_ok()
            && mem.write_slice(&[0u8; 4], GuestAddress(USED)).is_ok();
        let mut q = Queue::new(QUEUE_SIZE).map_err(|_| crate::virtio::ChainError::Broken)?;
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        let chain = q.iter(mem).ok().and_then(|mut it| it.next());
        match chain {
            Some(c) if ring_ok => Ok(crate::virtio::collect_chain(c, QUEUE_SIZE, MAX_CHAIN_LEN)?),
            _ => Err(FuzzReject::Chain(crate::virtio::ChainError::Broken)),
        }
    })?;
    // What collect_chain guarantees the parser.
    assert!(!segs.is_empty() && segs.len() <= MAX_CHAIN_LEN);
    for sg in &segs {
        assert!(sg.len > 0);
        assert!(
            sg.addr
                .0
                .checked_add(u64::from(sg.len))
                .is_some_and(|e| e <= MEM as u64)
        );
    }
    let limits = Limits {
        num_objects: 4,
        max_frames: MAX_FRAME_SEGMENTS,
        max_request_bytes: MAX_REQUEST_BYTES,
        readahead: feat & 1 != 0,
        unlock: feat & 2 != 0,
        lock_completed: feat & 4 != 0,
    };
    let r = parse_request(&segs, &limits, |_| Some(hdr)).map_err(FuzzReject::from);
    if let Ok(p) = &r {
        // Invariants every accepted request must satisfy.
        assert!(p.object.0 < limits.num_objects);
        match &p.request {
            Request::DataRequest {
                offset,
                len,
                frames,
                ..
            }
            | Request::DataWrite {
                offset,
                len,
                frames,
            } => {
                let total: u64 = frames.iter().map(|f| u64::from(f.len)).sum();
                assert!(*len > 0 && len % PAGE_SIZE == 0 && offset.is_page_aligned());
                assert!(total >= *len && total <= MAX_REQUEST_BYTES);
            }
            _ => {}
        }
    }
    r
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    /// Every field at its documented offset, little-endian, padding zero:
    /// what docs/virtio-pager.md says and the guest driver writes.
    #[test]
    fn messages_are_byte_exact() {
        let h = RequestHeader {
            req_type: 0x0102,
            flags: 0x0304,
            object_id: 0x0506_0708,
            offset: 0x1112_1314_1516_1718,
            length: 0x2122_2324_2526_2728,
            access: 0x31,
            padding: [0x32, 0x33, 0x34],
            reserved: 0x4142_4344,
        };
        let want: [u8; REQ_HDR_SIZE] = [
            0x02, 0x01, 0x04, 0x03, 0x08, 0x07, 0x06, 0x05, 0x18, 0x17, 0x16, 0x15, 0x14, 0x13,
            0x12, 0x11, 0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21, 0x31, 0x32, 0x33, 0x34,
            0x44, 0x43, 0x42, 0x41,
        ];
        assert_eq!(h.to_bytes(), want);
        assert_eq!(RequestHeader::from_bytes(&want), h);

        let r = Response {
            status: 0x0102_0304,
            kind: 0x0506_0708,
            bytes: 0x1112_1314_1516_1718,
            lock: 0x21,
            flags: 0x22,
        };
        let want: [u8; RESP_SIZE] = [
            0x04, 0x03, 0x02, 0x01, 0x08, 0x07, 0x06, 0x05, 0x18, 0x17, 0x16, 0x15, 0x14, 0x13,
            0x12, 0x11, 0x21, 0x22, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(r.to_bytes(), want);
        assert_eq!(Response::from_bytes(&want), r);

        let e = Event {
            ev_type: 0x0102,
            flags: 0x0304,
            object_id: 0x0506_0708,
            offset: 0x1112_1314_1516_1718,
            length: 0x2122_2324_2526_2728,
            lock: 0x31,
            tag: 0x4142_4344,
        };
        let want: [u8; EVENT_SIZE] = [
            0x02, 0x01, 0x04, 0x03, 0x08, 0x07, 0x06, 0x05, 0x18, 0x17, 0x16, 0x15, 0x14, 0x13,
            0x12, 0x11, 0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21, 0x31, 0, 0, 0, 0x44, 0x43,
            0x42, 0x41,
        ];
        assert_eq!(e.to_bytes(), want);
        assert_eq!(Event::from_bytes(&want), e);
    }

    #[test]
    fn config_is_byte_exact() {
        let c = encode_config(&[ObjectEntry {
            size: 0x1_0000_2000,
            id: ObjectId(1),
            flags: OBJ_F_READ_ONLY,
            name: "ab".into(),
        }]);
        let mut want = vec![
            1, 0, 0, 0, // objects
            0, 1, 0, 0, // 256 segments
            0, 0, 0x10, 0, // 1 MiB per request
            0, 0x10, 0, 0, // 4 KiB pages
            0, 0x20, 0, 0, 1, 0, 0, 0, // size
            1, 0, 0, 0, // id
            1, 0, 0, 0, // flags
            b'a', b'b',
        ];
        want.resize(CONFIG_HDR_SIZE + OBJECT_ENTRY_SIZE, 0);
        assert_eq!(c, want);
        // A name too long for the field keeps its terminating NUL.
        let c = encode_config(&[ObjectEntry {
            size: 0,
            id: ObjectId(0),
            flags: 0,
            name: "n".repeat(OBJECT_NAME_LEN + 5),
        }]);
        assert_eq!(c.len(), CONFIG_HDR_SIZE + OBJECT_ENTRY_SIZE);
        assert_eq!(c[c.len() - 1], 0);
        assert_eq!(c[c.len() - 2], b'n');
    }
}
