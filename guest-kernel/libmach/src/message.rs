//! Building and parsing messages (docs/mach-ipc.md §3) in caller-provided
//! buffers: no allocation, and the parser never trusts what it reads.

use crate::abi::{self, HEADER_SIZE, Header, ITEM_HEADER_SIZE, ItemHeader, Name};

/// An 8-byte aligned message buffer, as the ABI requires.
#[repr(C, align(8))]
#[derive(Clone)]
pub struct MsgBuf<const N: usize>(pub [u8; N]);

impl<const N: usize> MsgBuf<N> {
    pub const fn new() -> Self {
        MsgBuf([0; N])
    }
}

impl<const N: usize> Default for MsgBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a message could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// The buffer is not 8-byte aligned.
    Misaligned,
    /// The items do not fit the buffer (or `MSG_SIZE_MAX`).
    NoRoom,
    /// Not one of the dispositions of §3.3.
    BadDisposition,
    /// A count does not fit 32 bits.
    TooLong,
}

impl BuildError {
    pub fn name(self) -> &'static str {
        match self {
            BuildError::Misaligned => "misaligned buffer",
            BuildError::NoRoom => "no room",
            BuildError::BadDisposition => "bad disposition",
            BuildError::TooLong => "item too long",
        }
    }
}

fn valid_disposition(d: u8) -> bool {
    (abi::MOVE_RECEIVE..=abi::MAKE_SEND_ONCE).contains(&d)
}

const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// Bytes an item with `payload` payload bytes takes.
pub const fn item_size(payload: usize) -> usize {
    ITEM_HEADER_SIZE + pad8(payload)
}

/// Writes a message into a buffer. Errors are sticky: the first one is
/// returned by `finish`, so calls chain without `?` at every step.
pub struct Builder<'a> {
    buf: &'a mut [u8],
    header: Header,
    len: usize,
    err: Option<BuildError>,
}

impl<'a> Builder<'a> {
    pub fn new(buf: &'a mut [u8]) -> Builder<'a> {
        let err = if !(buf.as_ptr() as usize).is_multiple_of(8) {
            Some(BuildError::Misaligned)
        } else if buf.len() < HEADER_SIZE {
            Some(BuildError::NoRoom)
        } else {
            None
        };
        Builder {
            buf,
            header: Header::default(),
            len: HEADER_SIZE,
            err,
        }
    }

    fn fail(&mut self, e: BuildError) {
        self.err.get_or_insert(e);
    }

    /// The destination and how its right is used (`COPY_SEND`, ...).
    pub fn dest(&mut self, name: Name, disp: u8) -> &mut Self {
        if !valid_disposition(disp) {
            self.fail(BuildError::BadDisposition);
        }
        self.header.remote = name;
        self.header.bits = (self.header.bits & !abi::BITS_REMOTE_MASK) | u32::from(disp);
        self
    }

    /// The reply port (`MAKE_SEND_ONCE` usually); `PORT_NULL` for none.
    pub fn reply(&mut self, name: Name, disp: u8) -> &mut Self {
        let disp = if name == abi::PORT_NULL { 0 } else { disp };
        if name != abi::PORT_NULL && !valid_disposition(disp) {
            self.fail(BuildError::BadDisposition);
        }
        self.header.local = name;
        self.header.bits = (self.header.bits & !(0xff << abi::BITS_LOCAL_SHIFT))
            | (u32::from(disp) << abi::BITS_LOCAL_SHIFT);
        self
    }

    pub fn id(&mut self, id: i32) -> &mut Self {
        self.header.id = id;
        self
    }

    /// Reserves an item; its payload slice (zeroed, padded), or None.
    fn item(&mut self, h: ItemHeader, payload: usize) -> Option<&mut [u8]> {
        if self.err.is_some() {
            return None;
        }
        let end = self
            .len
            .checked_add(ITEM_HEADER_SIZE)
            .and_then(|n| n.checked_add(payload.checked_add(7)? & !7))
            .filter(|&end| end <= self.buf.len() && end <= abi::MSG_SIZE_MAX as usize);
        let Some(end) = end else {
            self.fail(BuildError::NoRoom);
            return None;
        };
        let start = self.len;
        let (hdr, rest) = self.buf.get_mut(start..end)?.split_at_mut(ITEM_HEADER_SIZE);
        hdr.copy_from_slice(&h.to_bytes());
        rest.fill(0);
        self.len = end;
        rest.get_mut(..payload)
    }

    /// An `INLINE` item carrying `data`.
    pub fn inline(&mut self, data: &[u8]) -> &mut Self {
        let Ok(count) = u32::try_from(data.len()) else {
            self.fail(BuildError::TooLong);
            return self;
        };
        let h = ItemHeader {
            kind: abi::ITEM_INLINE,
            count,
            ..Default::default()
        };
        if let Some(p) = self.item(h, data.len()) {
            p.copy_from_slice(data);
        }
        self
    }

    /// One `INLINE` item carrying `parts` one after another (a fixed
    /// header and page data, say) without staging them in one buffer.
    pub fn inline_parts(&mut self, parts: &[&[u8]]) -> &mut Self {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let Ok(count) = u32::try_from(total) else {
            self.fail(BuildError::TooLong);
            return self;
        };
        let h = ItemHeader {
            kind: abi::ITEM_INLINE,
            count,
            ..Default::default()
        };
        if let Some(mut p) = self.item(h, total) {
            for part in parts {
                let (now, rest) = p.split_at_mut(part.len());
                now.copy_from_slice(part);
                p = rest;
            }
        }
        self
    }

    /// A `PORTS` item: every name in `names` sent with `disp`.
    pub fn ports(&mut self, names: &[Name], disp: u8) -> &mut Self {
        if !valid_disposition(disp) {
            self.fail(BuildError::BadDisposition);
        }
        let Ok(count) = u32::try_from(names.len()) else {
            self.fail(BuildError::TooLong);
            return self;
        };
        let h = ItemHeader {
            kind: abi::ITEM_PORTS,
            disp,
            count,
            ..Default::default()
        };
        if let Some(p) = self.item(h, names.len() * 4) {
            for (dst, n) in p.chunks_exact_mut(4).zip(names) {
                dst.copy_from_slice(&n.to_le_bytes());
            }
        }
        self.header.bits |= abi::BITS_COMPLEX;
        self
    }

    /// An `OOL` item: `region` goes by copy-on-write mapping (memory in the
    /// VM window) or is copied at send time (elsewhere); it stays ours.
    pub fn ool(&mut self, region: &[u8]) -> &mut Self {
        // SAFETY: without the deallocate flag the region is only read.
        unsafe { self.ool_raw(region.as_ptr() as u64, region.len(), false) }
    }

    /// An `OOL` item the kernel copies at send time wherever it lies
    /// (`OOL_PHYSICAL_COPY`); it stays ours.
    pub fn ool_physical(&mut self, region: &[u8]) -> &mut Self {
        self.ool_item(region.as_ptr() as u64, region.len(), abi::OOL_PHYSICAL_COPY)
    }

    /// An `OOL` item for any range.
    ///
    /// # Safety
    /// With `deallocate`, sending unmaps the range from this task: nothing
    /// may refer to it once the message is sent.
    pub unsafe fn ool_raw(&mut self, addr: u64, len: usize, deallocate: bool) -> &mut Self {
        let disp = if deallocate { abi::OOL_DEALLOCATE } else { 0 };
        self.ool_item(addr, len, disp)
    }

    fn ool_item(&mut self, addr: u64, len: usize, disp: u8) -> &mut Self {
        let Ok(count) = u32::try_from(len) else {
            self.fail(BuildError::TooLong);
            return self;
        };
        let h = ItemHeader {
            kind: abi::ITEM_OOL,
            disp,
            count,
            addr,
            ..Default::default()
        };
        self.item(h, 0);
        self.header.bits |= abi::BITS_COMPLEX;
        self
    }

    /// Writes the header; the message's size (send `&buf[..size]`).
    pub fn finish(&mut self) -> Result<usize, BuildError> {
        if let Some(e) = self.err {
            return Err(e);
        }
        self.header.size = self.len as u32; // ≤ MSG_SIZE_MAX, checked per item
        let h = self.header.to_bytes();
        self.buf
            .get_mut(..HEADER_SIZE)
            .ok_or(BuildError::NoRoom)?
            .copy_from_slice(&h);
        Ok(self.len)
    }
}

/// Why a received buffer is not a well-formed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a header, or `size` past the buffer / not a multiple of 8.
    BadSize,
    /// Header bits 16-30 set.
    ReservedBits,
    /// An item's descriptor or payload runs past the message.
    Truncated,
    /// An unknown kind, a bad disposition, non-zero reserved fields.
    BadItem,
    /// Port or OOL items in a message without `COMPLEX`.
    NotComplex,
}

impl ParseError {
    pub fn name(self) -> &'static str {
        match self {
            ParseError::BadSize => "bad size",
            ParseError::ReservedBits => "reserved header bits",
            ParseError::Truncated => "truncated item",
            ParseError::BadItem => "bad item",
            ParseError::NotComplex => "rights without COMPLEX",
        }
    }
}

/// The names of a `PORTS` item (little-endian u32s in the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Names<'a>(&'a [u8]);

impl<'a> Names<'a> {
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn get(&self, i: usize) -> Option<Name> {
        let b = self
            .0
            .get(i.checked_mul(4)?..i.checked_mul(4)?.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }
    pub fn iter(&self) -> impl Iterator<Item = Name> + 'a {
        self.0
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// One typed item of a parsed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item<'a> {
    Inline(&'a [u8]),
    /// `disp`: the received right type (or the disposition, in a message
    /// that did not go through the kernel).
    Ports {
        disp: u8,
        names: Names<'a>,
    },
    Ool {
        addr: u64,
        len: u32,
        deallocate: bool,
    },
}

/// Decodes the item at `body[off..]`: the item and the next offset.
fn item_at(body: &[u8], off: usize) -> Result<(Item<'_>, usize), ParseError> {
    let rest = body.get(off..).ok_or(ParseError::Truncated)?;
    let h = ItemHeader::from_bytes(rest).ok_or(ParseError::Truncated)?;
    if h.reserved != 0 {
        return Err(ParseError::BadItem);
    }
    let pay = h.payload_len().ok_or(ParseError::Truncated)?;
    let end = ITEM_HEADER_SIZE
        .checked_add(pay)
        .ok_or(ParseError::Truncated)?;
    let payload = rest
        .get(ITEM_HEADER_SIZE..end)
        .ok_or(ParseError::Truncated)?;
    let item = match h.kind {
        abi::ITEM_INLINE if h.disp == 0 && h.addr == 0 => Item::Inline(
            payload
                .get(..h.count as usize)
                .ok_or(ParseError::Truncated)?,
        ),
        abi::ITEM_PORTS if valid_disposition(h.disp) && h.addr == 0 => {
            let n = (h.count as usize)
                .checked_mul(4)
                .ok_or(ParseError::Truncated)?;
            Item::Ports {
                disp: h.disp,
                names: Names(payload.get(..n).ok_or(ParseError::Truncated)?),
            }
        }
        abi::ITEM_OOL if h.disp & !abi::OOL_FLAGS == 0 => Item::Ool {
            addr: h.addr,
            len: h.count,
            deallocate: h.disp & abi::OOL_DEALLOCATE != 0,
        },
        _ => return Err(ParseError::BadItem),
    };
    Ok((item, off + end))
}

/// A validated message: header and items, borrowed from the buffer.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    header: Header,
    body: &'a [u8],
}

impl<'a> Message<'a> {
    /// Validates the whole message (header and every item) up front, so
    /// `items` cannot meet anything malformed.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let header = Header::from_bytes(buf).ok_or(ParseError::BadSize)?;
        let size = header.size as usize;
        if size < HEADER_SIZE || !size.is_multiple_of(8) || size > abi::MSG_SIZE_MAX as usize {
            return Err(ParseError::BadSize);
        }
        let body = buf.get(HEADER_SIZE..size).ok_or(ParseError::BadSize)?;
        if header.bits & !(abi::BITS_COMPLEX | 0xffff) != 0 {
            return Err(ParseError::ReservedBits);
        }
        let mut off = 0;
        while off < body.len() {
            let (item, next) = item_at(body, off)?;
            if !matches!(item, Item::Inline(_)) && header.bits & abi::BITS_COMPLEX == 0 {
                return Err(ParseError::NotComplex);
            }
            off = next;
        }
        Ok(Message { header, body })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn id(&self) -> i32 {
        self.header.id
    }
    pub fn items(&self) -> Items<'a> {
        Items {
            body: self.body,
            off: 0,
        }
    }
}

/// The items of a `Message`, in order.
#[derive(Clone, Debug)]
pub struct Items<'a> {
    body: &'a [u8],
    off: usize,
}

impl<'a> Iterator for Items<'a> {
    type Item = Item<'a>;
    fn next(&mut self) -> Option<Item<'a>> {
        if self.off >= self.body.len() {
            return None;
        }
        // Validated by `parse`; an error here just ends the iteration.
        let (item, next) = item_at(self.body, self.off).ok()?;
        self.off = next;
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn build_and_parse() {
        let mut buf = MsgBuf::<256>::new();
        let region = [7u8; 100];
        let n = Builder::new(&mut buf.0)
            .dest(0x105, abi::COPY_SEND)
            .reply(0x201, abi::MAKE_SEND_ONCE)
            .id(42)
            .inline(b"hello")
            .ports(&[0x301, 0x402], abi::MOVE_SEND)
            .ool(&region)
            .finish()
            .unwrap();
        assert_eq!(n, 24 + (16 + 8) + (16 + 8) + 16);
        let m = Message::parse(&buf.0).unwrap();
        let h = m.header();
        assert_eq!(
            (h.size as usize, h.remote, h.local, h.id),
            (n, 0x105, 0x201, 42)
        );
        assert_eq!(h.remote_disposition(), abi::COPY_SEND);
        assert_eq!(h.local_disposition(), abi::MAKE_SEND_ONCE);
        assert_ne!(h.bits & abi::BITS_COMPLEX, 0);
        let items: Vec<_> = m.items().collect();
        assert_eq!(items[0], Item::Inline(b"hello"));
        let Item::Ports { disp, names } = items[1] else {
            panic!()
        };
        assert_eq!(disp, abi::MOVE_SEND);
        assert_eq!(names.iter().collect::<Vec<_>>(), [0x301, 0x402]);
        assert_eq!(names.get(2), None);
        assert_eq!(
            items[2],
            Item::Ool {
                addr: region.as_ptr() as u64,
                len: 100,
                deallocate: false
            }
        );
        assert_eq!(items.len(), 3);
    }

    #[test]
    fn physical_copy_ool_items_build_and_parse() {
        let mut buf = MsgBuf::<64>::new();
        let region = [7u8; 10];
        let n = Builder::new(&mut buf.0)
            .dest(1, abi::MAKE_SEND)
            .ool_physical(&region)
            .finish()
            .unwrap();
        let h = ItemHeader::from_bytes(&buf.0[HEADER_SIZE..]).unwrap();
        assert_eq!(h.disp, abi::OOL_PHYSICAL_COPY);
        let m = Message::parse(&buf.0[..n]).unwrap();
        assert_eq!(
            m.items().collect::<Vec<_>>(),
            [Item::Ool {
                addr: region.as_ptr() as u64,
                len: 10,
                deallocate: false
            }]
        );
    }

    #[test]
    fn inline_only_is_not_complex() {
        let mut buf = MsgBuf::<64>::new();
        let n = Builder::new(&mut buf.0)
            .dest(1, abi::MAKE_SEND)
            .inline(&[1, 2, 3])
            .finish()
            .unwrap();
        let m = Message::parse(&buf.0[..n]).unwrap();
        assert_eq!(m.header().bits & abi::BITS_COMPLEX, 0);
    }

    #[test]
    fn builder_errors() {
        let mut buf = MsgBuf::<48>::new();
        assert_eq!(
            Builder::new(&mut buf.0[1..]).finish(),
            Err(BuildError::Misaligned)
        );
        assert_eq!(
            Builder::new(&mut buf.0[..16]).finish(),
            Err(BuildError::NoRoom)
        );
        assert_eq!(
            Builder::new(&mut buf.0).inline(&[0; 9]).finish(),
            Err(BuildError::NoRoom)
        );
        assert_eq!(Builder::new(&mut buf.0).inline(&[0; 8]).finish(), Ok(48));
        assert_eq!(
            Builder::new(&mut buf.0).dest(1, 3).finish(),
            Err(BuildError::BadDisposition)
        );
        assert_eq!(
            Builder::new(&mut buf.0).ports(&[1], 0).finish(),
            Err(BuildError::BadDisposition)
        );
        // The first error sticks.
        assert_eq!(
            Builder::new(&mut buf.0)
                .inline(&[0; 100])
                .dest(1, 3)
                .finish(),
            Err(BuildError::NoRoom)
        );
    }

    fn valid() -> (MsgBuf<128>, usize) {
        let mut buf = MsgBuf::<128>::new();
        let n = Builder::new(&mut buf.0)
            .dest(1, abi::COPY_SEND)
            .inline(b"abc")
            .ports(&[5], abi::COPY_SEND)
            .finish()
            .unwrap();
        (buf, n)
    }

    #[test]
    fn parse_rejects_malformed() {
        let (buf, n) = valid();
        let set = |off: usize, v: &[u8]| {
            let mut b = buf.clone();
            b.0[off..off + v.len()].copy_from_slice(v);
            Message::parse(&b.0[..n]).err()
        };
        assert!(Message::parse(&buf.0[..n]).is_ok());
        assert_eq!(
            Message::parse(&buf.0[..n - 8]).err(),
            Some(ParseError::BadSize)
        );
        assert_eq!(
            Message::parse(&buf.0[..20]).err(),
            Some(ParseError::BadSize)
        );
        assert_eq!(set(4, &20u32.to_le_bytes()), Some(ParseError::BadSize)); // < header
        assert_eq!(set(4, &60u32.to_le_bytes()), Some(ParseError::BadSize)); // not ×8
        assert_eq!(set(2, &[1]), Some(ParseError::ReservedBits));
        assert_eq!(set(3, &[0]), Some(ParseError::NotComplex));
        assert_eq!(set(24, &[9]), Some(ParseError::BadItem)); // kind
        assert_eq!(set(26, &[1]), Some(ParseError::BadItem)); // reserved
        assert_eq!(set(25, &[1]), Some(ParseError::BadItem)); // inline disp
        assert_eq!(set(32, &[1]), Some(ParseError::BadItem)); // inline addr
        assert_eq!(set(28, &40u32.to_le_bytes()), Some(ParseError::Truncated)); // count
        assert_eq!(
            set(28, &u32::MAX.to_le_bytes()),
            Some(ParseError::Truncated)
        );
        assert_eq!(set(48 + 1, &[99]), Some(ParseError::BadItem)); // ports disp
        assert_eq!(
            set(48 + 4, &3u32.to_le_bytes()),
            Some(ParseError::Truncated)
        );
        // An item header cut by the message end.
        let mut b = buf.clone();
        b.0[4..8].copy_from_slice(&(n as u32 + 8).to_le_bytes());
        assert_eq!(
            Message::parse(&b.0[..n + 8]).err(),
            Some(ParseError::Truncated)
        );
    }

    #[derive(Clone, Debug)]
    enum Spec {
        Inline(Vec<u8>),
        Ports(u8, Vec<u32>),
        Ool(u64, u32, bool),
    }

    fn spec() -> impl Strategy<Value = Spec> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Spec::Inline),
            (
                abi::MOVE_RECEIVE..=abi::MAKE_SEND_ONCE,
                proptest::collection::vec(any::<u32>(), 0..9)
            )
                .prop_map(|(d, n)| Spec::Ports(d, n)),
            (any::<u64>(), any::<u32>(), any::<bool>()).prop_map(|(a, l, d)| Spec::Ool(a, l, d)),
        ]
    }

    proptest! {
        #[test]
        fn build_parse_round_trip(items in proptest::collection::vec(spec(), 0..12),
                                  id in any::<i32>(), remote in any::<u32>()) {
            let mut buf = MsgBuf::<2048>::new();
            let mut b = Builder::new(&mut buf.0);
            b.dest(remote, abi::COPY_SEND).id(id);
            for it in &items {
                match it {
                    Spec::Inline(d) => { b.inline(d); }
                    Spec::Ports(d, n) => { b.ports(n, *d); }
                    // SAFETY: the message is never sent.
                    Spec::Ool(a, l, d) => unsafe { b.ool_raw(*a, *l as usize, *d); },
                }
            }
            let n = b.finish().unwrap();
            let m = Message::parse(&buf.0[..n]).unwrap();
            prop_assert_eq!(m.id(), id);
            prop_assert_eq!(m.header().remote, remote);
            let complex = items.iter().any(|i| !matches!(i, Spec::Inline(_)));
            prop_assert_eq!(m.header().bits & abi::BITS_COMPLEX != 0, complex);
            let got: Vec<_> = m.items().collect();
            prop_assert_eq!(got.len(), items.len());
            for (g, want) in got.iter().zip(&items) {
                match (g, want) {
                    (Item::Inline(d), Spec::Inline(w)) => prop_assert_eq!(*d, &w[..]),
                    (Item::Ports { disp, names }, Spec::Ports(wd, wn)) => {
                        prop_assert_eq!(disp, wd);
                        prop_assert_eq!(&names.iter().collect::<Vec<_>>(), wn);
                    }
                    (Item::Ool { addr, len, deallocate }, Spec::Ool(a, l, d)) => {
                        prop_assert_eq!((addr, len, deallocate), (a, l, d));
                    }
                    _ => prop_assert!(false, "kind mismatch {:?} {:?}", g, want),
                }
            }
        }

        #[test]
        fn parse_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(m) = Message::parse(&bytes) {
                for it in m.items() {
                    if let Item::Ports { names, .. } = it { let _ = names.iter().count(); }
                }
            }
        }

        #[test]
        fn parse_mutated_messages_never_panics(pos in 0usize..64, val in any::<u8>()) {
            let (mut buf, n) = valid();
            if let Some(b) = buf.0.get_mut(pos) { *b = val; }
            if let Ok(m) = Message::parse(&buf.0[..n]) {
                prop_assert!(m.items().count() <= 2);
            }
        }
    }
}
