//! Wire format of the external pager protocol (docs/pager-protocol.md).
//! Little-endian; every message is a 16-byte header and a payload.

use crate::error::{PagerError, Result};
use crate::types::{Access, ObjectOffset};
use vm_memory::{ByteValued, Le16, Le32, Le64};

pub const MAGIC: [u8; 8] = *b"DUALPAGR";
/// The newest version this implementation speaks; it speaks every one from
/// MIN_VERSION. Version 2 adds lock completion (LOCK_REQUEST_REPLY and
/// LOCK_COMPLETED).
pub const VERSION: u16 = 2;
pub const MIN_VERSION: u16 = 1;
/// The first version with lock completion.
pub const V_LOCK_COMPLETED: u16 = 2;
pub const HEADER_LEN: usize = 16;
/// Default (and suggested) largest payload a side accepts: the largest
/// request (`MAX_REQUEST`) plus its fixed fields, with room to spare.
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 << 20;
/// Nobody may announce less: a single page plus fixed fields must fit.
pub const MIN_MAX_PAYLOAD: u32 = 8192;
/// Longest text (describe reply, error message, destroy reason).
pub const MAX_TEXT: usize = 4096;
/// Ids the pager picks for its unprompted messages have this bit set, so
/// they can never be mistaken for replies to the kernel side's requests.
pub const PAGER_ID_BIT: u64 = 1 << 63;

// Handshake.
pub const T_HELLO: u16 = 0x01;
pub const T_HELLO_REPLY: u16 = 0x02;
// Kernel -> manager requests (each gets exactly one reply).
pub const T_INIT: u16 = 0x10;
pub const T_DATA_REQUEST: u16 = 0x11;
pub const T_DATA_WRITE: u16 = 0x12;
pub const T_DATA_UNLOCK: u16 = 0x13;
pub const T_EXTENT: u16 = 0x14;
pub const T_SYNC: u16 = 0x15;
pub const T_TERMINATE: u16 = 0x16;
pub const T_DESCRIBE: u16 = 0x17;
/// Version 2: a LOCK_REQUEST_REPLY is done.
pub const T_LOCK_COMPLETED: u16 = 0x18;
// Manager -> kernel replies.
pub const T_OK: u16 = 0x20;
pub const T_INFO: u16 = 0x21;
pub const T_DATA_PROVIDED: u16 = 0x22;
pub const T_DATA_UNAVAILABLE: u16 = 0x23;
pub const T_UNLOCK_REPLY: u16 = 0x24;
pub const T_EXTENT_REPLY: u16 = 0x25;
pub const T_DESCRIBE_REPLY: u16 = 0x26;
pub const T_ERROR: u16 = 0x2f;
// Manager -> kernel, unprompted (no reply).
pub const T_LOCK_REQUEST: u16 = 0x30;
pub const T_OFFER: u16 = 0x31;
pub const T_SET_CACHE: u16 = 0x32;
pub const T_DESTROY: u16 = 0x33;
/// Version 2: LOCK_REQUEST whose completion the pager wants to hear of.
pub const T_LOCK_REQUEST_REPLY: u16 = 0x34;

// LOCK_REQUEST flags.
pub const LOCK_F_CLEAN: u8 = 1;
pub const LOCK_F_FLUSH: u8 = 2;

// Error codes in T_ERROR.
pub const E_BAD_RANGE: u32 = 1;
pub const E_PAST_END: u32 = 2;
pub const E_READ_ONLY: u32 = 3;
pub const E_UNKNOWN_KERNEL: u32 = 4;
pub const E_IO: u32 = 5;
pub const E_PROTOCOL: u32 = 6;
pub const E_OTHER: u32 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub kind: u16,
    pub flags: u16,
    pub id: u64,
}

/// How a header lies on the wire: little-endian fields at fixed offsets.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct HeaderLayout {
    len: Le32,
    kind: Le16,
    flags: Le16,
    id: Le64,
}
// SAFETY: repr(C) of integers (any bit pattern is valid) whose sizes add
// up to the struct's, so there is no implicit padding (asserted below).
unsafe impl ByteValued for HeaderLayout {}
const _: () = assert!(size_of::<HeaderLayout>() == HEADER_LEN);

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let w = HeaderLayout {
            len: self.len.into(),
            kind: self.kind.into(),
            flags: self.flags.into(),
            id: self.id.into(),
        };
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(w.as_slice());
        h
    }

    /// Decodes and checks what can be checked without context: flags must
    /// be zero (reserved) and the payload must fit the receiver's limit.
    pub fn decode(h: &[u8; HEADER_LEN], max_payload: u32) -> Result<Header> {
        let mut w = HeaderLayout::default();
        w.as_mut_slice().copy_from_slice(h);
        let hd = Header {
            len: w.len.into(),
            kind: w.kind.into(),
            flags: w.flags.into(),
            id: w.id.into(),
        };
        if hd.flags != 0 {
            return Err(PagerError::Protocol(format!(
                "message type {:#x} has reserved flags {:#x} set",
                hd.kind, hd.flags
            )));
        }
        if hd.len > max_payload {
            return Err(PagerError::Protocol(format!(
                "message type {:#x} of {} bytes exceeds the {max_payload}-byte limit",
                hd.kind, hd.len
            )));
        }
        Ok(hd)
    }
}

/// Little-endian field reader over a payload already length-checked.
pub struct Rd<'a>(pub &'a [u8]);
impl Rd<'_> {
    pub fn u8(&self, at: usize) -> u8 {
        self.0[at]
    }
    pub fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }
    pub fn u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(b)
    }
    pub fn u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(b)
    }
    pub fn access(&self, at: usize) -> Result<Access> {
        Access::from_bits(self.0[at])
            .ok_or_else(|| PagerError::Protocol(format!("bad access bits {:#x}", self.0[at])))
    }
    pub fn offset(&self, at: usize) -> ObjectOffset {
        ObjectOffset(self.u64(at))
    }
    pub fn text(&self, at: usize) -> Result<String> {
        let t = &self.0[at..];
        if t.len() > MAX_TEXT {
            return Err(PagerError::Protocol(format!(
                "text field of {} bytes is too long",
                t.len()
            )));
        }
        String::from_utf8(t.to_vec())
            .map_err(|_| PagerError::Protocol("text field is not UTF-8".into()))
    }
}

/// Little-endian payload builder for fixed fields.
#[derive(Default)]
pub struct Wr(pub Vec<u8>);
impl Wr {
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn pad(mut self, n: usize) -> Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// Text truncated to MAX_TEXT on a char boundary.
    pub fn text(self, s: &str) -> Self {
        let mut end = s.len().min(MAX_TEXT);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.bytes(&s.as_bytes()[..end])
    }
}

/// Fixed payload length of each message type (`None`: variable, with the
/// minimum given separately by `min_len`).
pub fn fixed_len(kind: u16) -> Option<usize> {
    Some(match kind {
        T_HELLO | T_HELLO_REPLY => 16,
        T_INIT | T_TERMINATE => 8,
        T_DATA_REQUEST => 40,
        T_DATA_UNLOCK => 32,
        T_EXTENT | T_SYNC | T_DESCRIBE | T_OK => 0,
        T_INFO => 16,
        T_DATA_UNAVAILABLE | T_UNLOCK_REPLY | T_EXTENT_REPLY => 8,
        T_LOCK_REQUEST => 32,
        T_LOCK_REQUEST_REPLY => 40,
        T_LOCK_COMPLETED => 32,
        T_SET_CACHE => 16,
        _ => return None,
    })
}

pub fn min_len(kind: u16) -> usize {
    match kind {
        T_DATA_WRITE | T_OFFER => 24,
        T_DATA_PROVIDED => 16,
        T_ERROR | T_DESTROY => 8,
        _ => 0,
    }
}

/// Checks a payload length against the message type.
pub fn check_len(kind: u16, len: u32) -> Result<()> {
    let len = len as usize;
    let ok = match fixed_len(kind) {
        Some(n) => len == n,
        None => len >= min_len(kind),
    };
    if ok {
        Ok(())
    } else {
        Err(PagerError::Protocol(format!(
            "message type {kind:#x} has a malformed payload length {len}"
        )))
    }
}

/// Encodes a PagerError for T_ERROR: (code, errno, message).
pub fn error_payload(e: &PagerError) -> Vec<u8> {
    let (code, errno) = match e {
        PagerError::BadRange { .. } => (E_BAD_RANGE, 0),
        PagerError::PastEnd { .. } => (E_PAST_END, 0),
        PagerError::ReadOnly => (E_READ_ONLY, 0),
        PagerError::UnknownKernel(_) => (E_UNKNOWN_KERNEL, 0),
        PagerError::Io(io) => (E_IO, io.raw_os_error().unwrap_or(0) as u32),
        PagerError::Protocol(_) => (E_PROTOCOL, 0),
        _ => (E_OTHER, 0),
    };
    Wr::default().u32(code).u32(errno).text(&e.to_string()).0
}

/// Decodes a T_ERROR payload back into a PagerError, in the context of the
/// request it answers.
pub fn decode_error(
    p: &[u8],
    offset: ObjectOffset,
    len: u64,
    size: u64,
    kernel: u64,
) -> Result<PagerError> {
    let r = Rd(p);
    let code = r.u32(0);
    let errno = r.u32(4);
    let msg = r.text(8)?;
    Ok(match code {
        E_BAD_RANGE => PagerError::BadRange {
            offset,
            len,
            why: "refused by the external pager",
        },
        E_PAST_END => PagerError::PastEnd { offset, size },
        E_READ_ONLY => PagerError::ReadOnly,
        E_UNKNOWN_KERNEL => PagerError::UnknownKernel(kernel),
        E_IO => {
            let base = if errno != 0 {
                std::io::Error::from_raw_os_error(errno as i32)
            } else {
                std::io::Error::other("error")
            };
            PagerError::io_context(format!("external pager: {msg}"), base)
        }
        _ => PagerError::Protocol(format!("external pager error {code}: {msg}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/pager-protocol.md's header: len, type, flags, id, little-endian.
    #[test]
    fn header_is_byte_exact() {
        let h = Header {
            len: 0x0102_0304,
            kind: T_DATA_REQUEST,
            flags: 0,
            id: 0x1112_1314_1516_1718,
        };
        let want = [
            0x04, 0x03, 0x02, 0x01, 0x11, 0x00, 0x00, 0x00, 0x18, 0x17, 0x16, 0x15, 0x14, 0x13,
            0x12, 0x11,
        ];
        assert_eq!(h.encode(), want);
        assert_eq!(Header::decode(&want, u32::MAX).unwrap(), h);
        let mut flagged = want;
        flagged[6] = 1;
        assert!(Header::decode(&flagged, u32::MAX).is_err());
        assert!(Header::decode(&want, 0x0102_0303).is_err());
    }
}
