//! Typed RPC in the spirit of MIG: `mach_interface!` turns one interface
//! definition into message ids, client stubs and a server dispatcher
//! (docs/libmach.md has the syntax).
//!
//! Wire format. Request: header (destination `COPY_SEND`, reply port
//! `MAKE_SEND_ONCE`, id = base + routine index), then one item per
//! argument, in order. Reply: to the request's reply right, id = request
//! id + 100, an `INLINE` i32 return code, then (on success) one item per
//! out value.

use crate::abi::{self, Name};
use crate::message::{Builder, Item, Message, item_size};
use crate::traps::{self, KernError, MsgError};

// The MIG codes and the reply id offset are the ABI's (the kernel's own
// servers use them too).
pub use crate::abi::{
    MIG_BAD_ARGUMENTS, MIG_BAD_ID, MIG_REPLY_MISMATCH, MIG_TYPE_ERROR, REPLY_ID_OFFSET,
};
/// Bytes of the return-code item in every reply.
pub const RETURN_CODE_SIZE: usize = item_size(4);

/// What an RPC can fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcError {
    /// The `mach_msg` call itself failed.
    Msg(MsgError),
    /// The server's return code, or a MIG code for a bad reply/argument.
    Kern(KernError),
}

impl RpcError {
    pub fn name(self) -> &'static str {
        match self {
            RpcError::Msg(e) => e.name(),
            RpcError::Kern(e) => e.name(),
        }
    }
}

impl From<MsgError> for RpcError {
    fn from(e: MsgError) -> Self {
        RpcError::Msg(e)
    }
}

impl From<KernError> for RpcError {
    fn from(e: KernError) -> Self {
        RpcError::Kern(e)
    }
}

/// How one argument kind travels: one item per argument.
pub trait Arg {
    /// What the sender passes.
    type In<'a>;
    /// What the receiver gets, borrowed from the message.
    type View<'a>;
    /// What a client stub returns for an out value (outlives the buffer).
    type Owned;
    /// The item's largest size in bytes (sizes the stubs' stack buffers).
    const MAX_SIZE: usize;
    fn put(b: &mut Builder<'_>, v: Self::In<'_>) -> bool;
    fn view<'a>(item: Item<'a>) -> Option<Self::View<'a>>;
    fn own(v: Self::View<'_>) -> Self::Owned;
    fn as_in(v: &Self::Owned) -> Self::In<'_>;
}

/// Readable spellings for the generated signatures.
pub type In<'a, A> = <A as Arg>::In<'a>;
pub type View<'a, A> = <A as Arg>::View<'a>;
pub type Owned<A> = <A as Arg>::Owned;

macro_rules! plain {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            type In<'a> = $t;
            type View<'a> = $t;
            type Owned = $t;
            const MAX_SIZE: usize = item_size(core::mem::size_of::<$t>());
            fn put(b: &mut Builder<'_>, v: $t) -> bool {
                b.inline(&v.to_le_bytes());
                true
            }
            fn view(item: Item<'_>) -> Option<$t> {
                match item {
                    Item::Inline(d) => Some(<$t>::from_le_bytes(d.try_into().ok()?)),
                    _ => None,
                }
            }
            fn own(v: $t) -> $t { v }
            fn as_in(v: &$t) -> $t { *v }
        }
    )*};
}
plain!(u8, u16, u32, u64, i32, i64);

/// A fixed-size byte array, inline.
impl<const N: usize> Arg for [u8; N] {
    type In<'a> = [u8; N];
    type View<'a> = [u8; N];
    type Owned = [u8; N];
    const MAX_SIZE: usize = item_size(N);
    fn put(b: &mut Builder<'_>, v: [u8; N]) -> bool {
        b.inline(&v);
        true
    }
    fn view(item: Item<'_>) -> Option<[u8; N]> {
        match item {
            Item::Inline(d) => d.try_into().ok(),
            _ => None,
        }
    }
    fn own(v: [u8; N]) -> [u8; N] {
        v
    }
    fn as_in(v: &[u8; N]) -> [u8; N] {
        *v
    }
}

/// A thread's registers, one `INLINE` item of `ThreadState::SIZE` bytes
/// (the layout of the `thread_get_state` trap's memory).
impl Arg for abi::ThreadState {
    type In<'a> = &'a abi::ThreadState;
    type View<'a> = abi::ThreadState;
    type Owned = abi::ThreadState;
    const MAX_SIZE: usize = item_size(abi::ThreadState::SIZE);
    fn put(b: &mut Builder<'_>, v: &abi::ThreadState) -> bool {
        b.inline(&v.to_bytes());
        true
    }
    fn view(item: Item<'_>) -> Option<abi::ThreadState> {
        match item {
            Item::Inline(d) => abi::ThreadState::from_bytes(d),
            _ => None,
        }
    }
    fn own(v: abi::ThreadState) -> abi::ThreadState {
        v
    }
    fn as_in(v: &abi::ThreadState) -> &abi::ThreadState {
        v
    }
}

/// A byte string of at most `N` bytes, inline. Passed as `&[u8]`; the
/// owned form (client out values) is this type itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes<const N: usize> {
    len: usize,
    data: [u8; N],
}

impl<const N: usize> Bytes<N> {
    /// None if `s` is longer than `N`.
    pub fn new(s: &[u8]) -> Option<Self> {
        let mut data = [0; N];
        data.get_mut(..s.len())?.copy_from_slice(s);
        Some(Bytes { len: s.len(), data })
    }
    pub fn as_slice(&self) -> &[u8] {
        self.data.get(..self.len).unwrap_or(&[])
    }
}

impl<const N: usize> Arg for Bytes<N> {
    type In<'a> = &'a [u8];
    type View<'a> = &'a [u8];
    type Owned = Bytes<N>;
    const MAX_SIZE: usize = item_size(N);
    fn put(b: &mut Builder<'_>, v: &[u8]) -> bool {
        b.inline(v);
        v.len() <= N
    }
    fn view(item: Item<'_>) -> Option<&[u8]> {
        match item {
            Item::Inline(d) if d.len() <= N => Some(d),
            _ => None,
        }
    }
    fn own(v: &[u8]) -> Bytes<N> {
        // `view` bounded the length.
        Bytes::new(v).unwrap_or(Bytes {
            len: 0,
            data: [0; N],
        })
    }
    fn as_in(v: &Bytes<N>) -> &[u8] {
        v.as_slice()
    }
}

macro_rules! right {
    ($(#[$m:meta])* $name:ident, $disp:expr, $received:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name;
        impl Arg for $name {
            type In<'a> = Name;
            type View<'a> = Name;
            type Owned = Name;
            const MAX_SIZE: usize = item_size(4);
            fn put(b: &mut Builder<'_>, v: Name) -> bool {
                b.ports(&[v], $disp);
                true
            }
            fn view(item: Item<'_>) -> Option<Name> {
                match item {
                    Item::Ports { disp, names } if disp == $received && names.len() == 1 => names.get(0),
                    _ => None,
                }
            }
            fn own(v: Name) -> Name { v }
            fn as_in(v: &Name) -> Name { *v }
        }
    };
}
right!(
    /// A send right; the sender keeps its own (`COPY_SEND`), the receiver gets `PORT_SEND`.
    SendRight, abi::COPY_SEND, abi::PORT_SEND
);
right!(
    /// A send right that leaves the sender (`MOVE_SEND`).
    MoveSend, abi::MOVE_SEND, abi::PORT_SEND
);
right!(
    /// A send-once right that leaves the sender (`MOVE_SEND_ONCE`).
    SendOnce, abi::MOVE_SEND_ONCE, abi::PORT_SEND_ONCE
);
right!(
    /// A send-once right made from the sender's receive right (`MAKE_SEND_ONCE`).
    MakeSendOnce, abi::MAKE_SEND_ONCE, abi::PORT_SEND_ONCE
);

/// Out-of-line memory, one `OOL` item: the sender names a range of its
/// memory, the receiver gets it mapped copy-on-write (copied, for memory
/// outside the VM window) at an address the kernel picks, and owns it
/// (vm_deallocate it when done). The bytes never pass through the
/// message buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ool {
    addr: u64,
    len: u32,
    deallocate: bool,
}

impl Ool {
    /// `region`, which stays the sender's. None if it is longer than an
    /// item can say (u32).
    pub fn of(region: &[u8]) -> Option<Ool> {
        Some(Ool {
            addr: region.as_ptr() as u64,
            len: u32::try_from(region.len()).ok()?,
            deallocate: false,
        })
    }

    /// `[addr, addr + len)`, which leaves the sender when the message is
    /// sent (`OOL_DEALLOCATE`: its pages are unmapped, rounded out).
    ///
    /// # Safety
    /// Once the message carrying it is sent, nothing in the sender may
    /// refer to those pages.
    pub unsafe fn moving(addr: u64, len: u32) -> Ool {
        Ool {
            addr,
            len,
            deallocate: true,
        }
    }

    /// Where the region is (in a received message: in the receiver).
    pub fn addr(&self) -> u64 {
        self.addr
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Arg for Ool {
    type In<'a> = Ool;
    type View<'a> = Ool;
    type Owned = Ool;
    const MAX_SIZE: usize = item_size(0);
    fn put(b: &mut Builder<'_>, v: Ool) -> bool {
        // SAFETY: only `Ool::moving`, whose caller promised not to use the
        // range after the send, sets the deallocate flag.
        unsafe { b.ool_raw(v.addr, v.len as usize, v.deallocate) };
        true
    }
    fn view(item: Item<'_>) -> Option<Ool> {
        match item {
            // Received regions are the receiver's: sending one on keeps it.
            Item::Ool { addr, len, .. } => Some(Ool {
                addr,
                len,
                deallocate: false,
            }),
            _ => None,
        }
    }
    fn own(v: Ool) -> Ool {
        v
    }
    fn as_in(v: &Ool) -> Ool {
        *v
    }
}

/// How a client stub sends a request and gets its reply.
pub trait Transport {
    /// The receive right replies come to.
    fn reply_port(&mut self) -> Result<Name, RpcError>;
    /// Sends `buf[..send_size]` and receives the reply into `buf`; its size.
    fn rpc(&mut self, buf: &mut [u8], send_size: usize, reply: Name) -> Result<usize, RpcError>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    fn reply_port(&mut self) -> Result<Name, RpcError> {
        (**self).reply_port()
    }
    fn rpc(&mut self, buf: &mut [u8], send_size: usize, reply: Name) -> Result<usize, RpcError> {
        (**self).rpc(buf, send_size, reply)
    }
}

/// The real transport: `msg_rpc` through the kernel. It allocates its
/// reply port on first use and keeps it, so make one per thread (replies
/// on a shared port could go to the wrong thread).
#[derive(Debug, Default)]
pub struct Kernel {
    reply: Name,
    /// Bounds both halves of each call (`None`: block).
    pub timeout: Option<u32>,
}

impl Kernel {
    pub const fn new() -> Kernel {
        Kernel {
            reply: abi::PORT_NULL,
            timeout: None,
        }
    }
    /// Uses `reply` (a receive right the caller holds) for replies.
    pub const fn with_reply_port(reply: Name) -> Kernel {
        Kernel {
            reply,
            timeout: None,
        }
    }
}

impl Transport for Kernel {
    fn reply_port(&mut self) -> Result<Name, RpcError> {
        if self.reply == abi::PORT_NULL {
            self.reply = traps::port_allocate()?;
        }
        Ok(self.reply)
    }
    fn rpc(&mut self, buf: &mut [u8], send_size: usize, reply: Name) -> Result<usize, RpcError> {
        Ok(traps::msg_rpc(buf, send_size, reply, self.timeout)?)
    }
}

/// Builds the request header of routine `id` (used by the stubs).
#[doc(hidden)]
pub fn request<'a>(buf: &'a mut [u8], dest: Name, reply: Name, id: i32) -> Builder<'a> {
    let mut b = Builder::new(buf);
    b.dest(dest, abi::COPY_SEND)
        .reply(reply, abi::MAKE_SEND_ONCE)
        .id(id);
    b
}

/// Checks a reply to request `id`: its items after the return code, or
/// the server's code / a MIG error.
#[doc(hidden)]
pub fn check_reply(reply: &[u8], id: i32) -> Result<crate::message::Items<'_>, RpcError> {
    let m = Message::parse(reply).map_err(|_| KernError(MIG_TYPE_ERROR))?;
    if Some(m.id()) != id.checked_add(REPLY_ID_OFFSET) {
        return Err(KernError(MIG_REPLY_MISMATCH).into());
    }
    let mut items = m.items();
    let code = items
        .next()
        .and_then(<i32 as Arg>::view)
        .ok_or(KernError(MIG_TYPE_ERROR))?;
    if code != 0 {
        return Err(KernError(code as u32).into());
    }
    Ok(items)
}

/// Starts the reply to `request` (None: it has no reply right) with
/// return code `code`.
#[doc(hidden)]
pub fn reply<'a>(request: &Message<'_>, buf: &'a mut [u8], code: u32) -> Option<Builder<'a>> {
    let h = request.header();
    // What the kernel gave us for the client's reply port decides how the
    // reply uses it; the right leaves us with the reply either way.
    let disp = match h.remote_disposition() {
        abi::PORT_SEND_ONCE => abi::MOVE_SEND_ONCE,
        abi::PORT_SEND => abi::MOVE_SEND,
        _ => return None,
    };
    if h.remote == abi::PORT_NULL {
        return None;
    }
    let mut b = Builder::new(buf);
    b.dest(h.remote, disp)
        .id(h.id.wrapping_add(REPLY_ID_OFFSET))
        .inline(&(code as i32).to_le_bytes());
    Some(b)
}

/// An error reply (no out values); its size.
#[doc(hidden)]
pub fn error_reply(request: &Message<'_>, buf: &mut [u8], code: u32) -> Option<usize> {
    reply(request, buf, code)?.finish().ok()
}

/// Serves `port` forever: receives each request into a `N`-byte buffer,
/// hands it to `dispatch` (the interface's, or one that also handles
/// notifications) and sends the reply it built, without waiting for room
/// (a client that does not read its reply cannot stall the server).
pub fn serve<const N: usize>(
    port: Name,
    mut dispatch: impl FnMut(&[u8], &mut [u8]) -> Option<usize>,
) -> MsgError {
    let mut req = crate::message::MsgBuf::<N>::new();
    let mut rep = crate::message::MsgBuf::<N>::new();
    loop {
        let n = match traps::msg_receive(&mut req.0, port, None) {
            Ok(n) => n,
            // Too large for us: the kernel destroyed it; go on.
            Err(MsgError(abi::RCV_TOO_LARGE)) => continue,
            Err(e) => return e,
        };
        let Some(msg) = req.0.get(..n) else { continue };
        if let Some(out) = dispatch(msg, &mut rep.0).and_then(|m| rep.0.get(..m)) {
            let _ = traps::msg_send(out, Some(0));
        }
    }
}

/// Declares an RPC interface; see docs/libmach.md. Generates a module
/// `$name` with `BASE`, `ids::<routine>`, `Client<T: Transport>`, the
/// `Server` trait and `dispatch`.
#[macro_export]
macro_rules! mach_interface {
    (
        $(#[$meta:meta])*
        $vis:vis interface $name:ident = $base:literal {
            $(
                $(#[$fmeta:meta])*
                fn $op:ident ( $( $arg:ident : $aty:ty ),* $(,)? ) -> ( $( $out:ident : $oty:ty ),* $(,)? ) ;
            )*
        }
    ) => {
        $(#[$meta])*
        #[allow(non_snake_case, non_upper_case_globals, non_camel_case_types, unused_parens, unused_mut, dead_code, clippy::unused_unit)]
        $vis mod $name {
            use super::*;
            use $crate::rpc::Transport;

            pub const BASE: i32 = $base;

            // Discriminants count up from BASE: the routine index for free.
            #[repr(i32)]
            enum Routine { $( $op, )* __End }

            /// Request ids (the reply's is + 100).
            pub mod ids {
                $( pub const $op: i32 = super::BASE + super::Routine::$op as i32; )*
            }

            /// The client stubs, over any transport.
            pub struct Client<T: Transport> {
                /// A send right to the server.
                pub port: $crate::abi::Name,
                pub transport: T,
            }

            impl<T: Transport> Client<T> {
                pub fn new(port: $crate::abi::Name, transport: T) -> Self {
                    Client { port, transport }
                }
                $(
                    $(#[$fmeta])*
                    pub fn $op(&mut self $(, $arg: $crate::rpc::In<'_, $aty>)*)
                        -> Result<( $( $crate::rpc::Owned<$oty> ),* ), $crate::rpc::RpcError>
                    {
                        const N: usize = {
                            let req = $crate::abi::HEADER_SIZE $(+ <$aty as $crate::rpc::Arg>::MAX_SIZE)*;
                            let rep = $crate::abi::HEADER_SIZE + $crate::rpc::RETURN_CODE_SIZE
                                $(+ <$oty as $crate::rpc::Arg>::MAX_SIZE)*;
                            if req > rep { req } else { rep }
                        };
                        let mut buf = $crate::message::MsgBuf::<N>::new();
                        let reply = self.transport.reply_port()?;
                        let mut b = $crate::rpc::request(&mut buf.0, self.port, reply, ids::$op);
                        let mut ok = true;
                        $( ok &= <$aty as $crate::rpc::Arg>::put(&mut b, $arg); )*
                        let bad = $crate::rpc::RpcError::Kern($crate::traps::KernError($crate::rpc::MIG_BAD_ARGUMENTS));
                        let size = match b.finish() {
                            Ok(n) if ok => n,
                            _ => return Err(bad),
                        };
                        let got = self.transport.rpc(&mut buf.0, size, reply)?;
                        let mut items = $crate::rpc::check_reply(buf.0.get(..got).unwrap_or(&[]), ids::$op)?;
                        let mismatch = $crate::rpc::RpcError::Kern($crate::traps::KernError($crate::rpc::MIG_TYPE_ERROR));
                        $(
                            let $out = match items.next().and_then(<$oty as $crate::rpc::Arg>::view) {
                                Some(v) => <$oty as $crate::rpc::Arg>::own(v),
                                None => return Err(mismatch),
                            };
                        )*
                        if items.next().is_some() {
                            return Err(mismatch);
                        }
                        Ok(( $( $out ),* ))
                    }
                )*
            }

            /// What a server implements: one method per routine. An `Err`
            /// code goes back to the client as the return code.
            pub trait Server {
                $(
                    $(#[$fmeta])*
                    fn $op(&mut self $(, $arg: $crate::rpc::View<'_, $aty>)*)
                        -> Result<( $( $crate::rpc::Owned<$oty> ),* ), $crate::traps::KernError>;
                )*
            }

            /// Parses `request`, calls the routine, builds the reply into
            /// `reply`; its size, or None if no reply can be sent (no reply
            /// right, unparsable header, `reply` too small).
            pub fn dispatch<S: Server + ?Sized>(server: &mut S, request: &[u8], reply: &mut [u8]) -> Option<usize> {
                use $crate::rpc::{MIG_BAD_ARGUMENTS, MIG_BAD_ID};
                let msg = match $crate::message::Message::parse(request) {
                    Ok(m) => m,
                    Err(_) => {
                        // Answer a bad body if the header still names a reply right.
                        let mut h = $crate::abi::Header::from_bytes(request)?;
                        h.bits &= 0xffff;
                        h.size = $crate::abi::HEADER_SIZE as u32;
                        let hb = h.to_bytes();
                        let m = $crate::message::Message::parse(&hb).ok()?;
                        return $crate::rpc::error_reply(&m, reply, MIG_BAD_ARGUMENTS);
                    }
                };
                let mut items = msg.items();
                match msg.id() {
                    $(
                        ids::$op => {
                            $(
                                let Some($arg) = items.next().and_then(<$aty as $crate::rpc::Arg>::view) else {
                                    return $crate::rpc::error_reply(&msg, reply, MIG_BAD_ARGUMENTS);
                                };
                            )*
                            if items.next().is_some() {
                                return $crate::rpc::error_reply(&msg, reply, MIG_BAD_ARGUMENTS);
                            }
                            match server.$op($($arg),*) {
                                Ok(( $( $out ),* )) => {
                                    let mut b = $crate::rpc::reply(&msg, reply, 0)?;
                                    let mut ok = true;
                                    $( ok &= <$oty as $crate::rpc::Arg>::put(&mut b, <$oty as $crate::rpc::Arg>::as_in(&$out)); )*
                                    match b.finish() {
                                        Ok(n) if ok => Some(n),
                                        _ => $crate::rpc::error_reply(&msg, reply, $crate::abi::KERN_RESOURCE_SHORTAGE),
                                    }
                                }
                                Err(e) => $crate::rpc::error_reply(&msg, reply, e.0),
                            }
                        }
                    )*
                    _ => $crate::rpc::error_reply(&msg, reply, MIG_BAD_ID),
                }
            }
        }
    };
}

/// A transport without a kernel, for host tests: it rewrites dispositions
/// into received right types and the header as the kernel does on
/// delivery (names are kept: one name space), then calls the server.
pub mod loopback {
    use super::*;

    /// Rewrites `buf` (a well-formed message) as delivered to a receiver
    /// on `port`. Returns false if it is malformed.
    pub fn deliver(buf: &mut [u8], port: Name) -> bool {
        let Ok(m) = Message::parse(buf) else {
            return false;
        };
        let h = *m.header();
        let received = |d: u8| match d {
            abi::MOVE_RECEIVE => abi::PORT_RECEIVE,
            abi::MOVE_SEND | abi::COPY_SEND | abi::MAKE_SEND => abi::PORT_SEND,
            _ => abi::PORT_SEND_ONCE,
        };
        // Item descriptors to fix up: offset of each PORTS item's disp.
        let mut offs = [0usize; 64];
        let mut k = 0;
        let mut off = abi::HEADER_SIZE;
        for it in m.items() {
            let pay = match it {
                Item::Inline(d) => d.len(),
                Item::Ports { names, .. } => {
                    if let Some(o) = offs.get_mut(k) {
                        *o = off + 1;
                        k += 1;
                    }
                    names.len() * 4
                }
                Item::Ool { .. } => 0,
            };
            off += item_size(pay);
        }
        for &o in offs.get(..k).unwrap_or(&[]) {
            if let Some(d) = buf.get_mut(o) {
                *d = received(*d);
            }
        }
        let local = if h.local == abi::PORT_NULL {
            0
        } else {
            received(h.local_disposition())
        };
        let out = abi::Header {
            bits: (h.bits & abi::BITS_COMPLEX) | u32::from(local),
            remote: h.local,
            local: port,
            ..h
        };
        if let Some(hb) = buf.get_mut(..abi::HEADER_SIZE) {
            hb.copy_from_slice(&out.to_bytes());
        }
        true
    }

    /// Calls `dispatch` directly: request → server → reply.
    pub struct Loopback<F: FnMut(&[u8], &mut [u8]) -> Option<usize>> {
        pub dispatch: F,
        /// The name the server "receives on".
        pub server_port: Name,
        pub reply_port: Name,
    }

    impl<F: FnMut(&[u8], &mut [u8]) -> Option<usize>> Transport for Loopback<F> {
        fn reply_port(&mut self) -> Result<Name, RpcError> {
            Ok(self.reply_port)
        }
        fn rpc(
            &mut self,
            buf: &mut [u8],
            send_size: usize,
            reply: Name,
        ) -> Result<usize, RpcError> {
            let mut req = crate::message::MsgBuf::<4096>::new();
            let (Some(dst), Some(src)) = (req.0.get_mut(..send_size), buf.get(..send_size)) else {
                return Err(MsgError(abi::SEND_TOO_LARGE).into());
            };
            dst.copy_from_slice(src);
            if !deliver(&mut req.0, self.server_port) {
                return Err(MsgError(abi::SEND_INVALID_TYPE).into());
            }
            let n = (self.dispatch)(req.0.get(..send_size).unwrap_or(&[]), buf)
                .ok_or(MsgError(abi::RCV_TIMED_OUT))?;
            if !deliver(buf, reply) {
                return Err(MsgError(abi::SEND_INVALID_TYPE).into());
            }
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::loopback::{Loopback, deliver};
    use super::*;
    use crate::message::{Builder, MsgBuf};

    crate::mach_interface! {
        /// A small test interface.
        pub interface registry = 4000 {
            fn check_in(name: Bytes<32>, port: SendRight) -> ();
            fn look_up(name: Bytes<32>) -> (port: SendRight);
            fn add(a: u32, b: u64, c: i32) -> (sum: i64, tag: [u8; 4]);
            /// Echoes a string and a send-once right back moved.
            fn echo(s: Bytes<8>, once: MakeSendOnce) -> (s: Bytes<8>, once: SendOnce);
        }
    }

    #[derive(Default)]
    struct Reg {
        entries: Vec<(Vec<u8>, Name)>,
    }

    impl registry::Server for Reg {
        fn check_in(&mut self, name: &[u8], port: Name) -> Result<(), KernError> {
            if self.entries.iter().any(|(n, _)| n == name) {
                return Err(KernError(abi::KERN_NAME_EXISTS));
            }
            self.entries.push((name.to_vec(), port));
            Ok(())
        }
        fn look_up(&mut self, name: &[u8]) -> Result<Name, KernError> {
            self.entries
                .iter()
                .find(|(n, _)| n == name)
                .map(|e| e.1)
                .ok_or(KernError(abi::KERN_INVALID_NAME))
        }
        fn add(&mut self, a: u32, b: u64, c: i32) -> Result<(i64, [u8; 4]), KernError> {
            Ok((i64::from(a) + b as i64 + i64::from(c), *b"sum!"))
        }
        fn echo(&mut self, s: &[u8], once: Name) -> Result<(Bytes<8>, Name), KernError> {
            Ok((
                Bytes::new(s).ok_or(KernError(abi::KERN_INVALID_ARGUMENT))?,
                once,
            ))
        }
    }

    const SERVER: Name = 0x700;
    const REPLY: Name = 0x800;

    fn with_client<R>(f: impl FnOnce(&mut registry::Client<&mut dyn Transport>) -> R) -> R {
        let mut reg = Reg::default();
        let mut t = Loopback {
            dispatch: |req: &[u8], rep: &mut [u8]| registry::dispatch(&mut reg, req, rep),
            server_port: SERVER,
            reply_port: REPLY,
        };
        let mut c = registry::Client::new(SERVER, &mut t as &mut dyn Transport);
        f(&mut c)
    }

    #[test]
    fn ids_count_up_from_base() {
        assert_eq!(registry::ids::check_in, 4000);
        assert_eq!(registry::ids::look_up, 4001);
        assert_eq!(registry::ids::echo, 4003);
    }

    #[test]
    fn client_stub_dispatch_reply() {
        with_client(|c| {
            assert_eq!(c.check_in(b"console", 0x1234), Ok(()));
            assert_eq!(
                c.check_in(b"console", 0x99),
                Err(RpcError::Kern(KernError(abi::KERN_NAME_EXISTS)))
            );
            assert_eq!(c.look_up(b"console"), Ok(0x1234));
            assert_eq!(
                c.look_up(b"nope"),
                Err(RpcError::Kern(KernError(abi::KERN_INVALID_NAME)))
            );
            assert_eq!(c.add(1, 1 << 40, -3), Ok(((1i64 << 40) - 2, *b"sum!")));
            let (s, once) = c.echo(b"hi", 0x55).unwrap();
            assert_eq!((s.as_slice(), once), (&b"hi"[..], 0x55));
        });
    }

    #[test]
    fn client_rejects_too_long_strings_before_sending() {
        with_client(|c| {
            let long = [b'x'; 33];
            assert_eq!(
                c.check_in(&long, 1),
                Err(RpcError::Kern(KernError(MIG_BAD_ARGUMENTS)))
            );
            assert_eq!(
                c.look_up(&long[..32]),
                Err(RpcError::Kern(KernError(abi::KERN_INVALID_NAME)))
            );
        });
    }

    /// A request as the server would receive it.
    fn received(build: impl FnOnce(&mut Builder<'_>)) -> MsgBuf<256> {
        let mut buf = MsgBuf::<256>::new();
        let mut b = Builder::new(&mut buf.0);
        b.dest(SERVER, abi::COPY_SEND)
            .reply(REPLY, abi::MAKE_SEND_ONCE);
        build(&mut b);
        b.finish().unwrap();
        assert!(deliver(&mut buf.0, SERVER));
        buf
    }

    fn code_of(reply: &[u8]) -> i32 {
        let m = Message::parse(reply).unwrap();
        assert_eq!(m.header().remote, REPLY);
        assert_eq!(m.header().remote_disposition(), abi::MOVE_SEND_ONCE);
        <i32 as Arg>::view(m.items().next().unwrap()).unwrap()
    }

    #[test]
    fn dispatch_bad_id_and_bad_arguments() {
        let mut reg = Reg::default();
        let mut rep = MsgBuf::<256>::new();
        let req = received(|b| {
            b.id(3999);
        });
        let n = registry::dispatch(&mut reg, &req.0, &mut rep.0).unwrap();
        assert_eq!(code_of(&rep.0[..n]), MIG_BAD_ID as i32);
        assert_eq!(Message::parse(&rep.0[..n]).unwrap().id(), 4099);

        let bad: [&dyn Fn(&mut Builder<'_>); 5] = [
            &|b| {
                b.id(4000);
            }, // missing arguments
            &|b| {
                b.id(4000).inline(b"n").inline(b"x");
            }, // inline where a right goes
            &|b| {
                b.id(4000).inline(&[0; 33]).ports(&[1], abi::COPY_SEND);
            }, // too long
            &|b| {
                b.id(4000).inline(b"n").ports(&[1, 2], abi::COPY_SEND);
            }, // two names
            &|b| {
                b.id(4001).inline(b"n").inline(b"extra");
            }, // extra item
        ];
        for build in bad {
            let req = received(build);
            let n = registry::dispatch(&mut reg, &req.0, &mut rep.0).unwrap();
            assert_eq!(code_of(&rep.0[..n]), MIG_BAD_ARGUMENTS as i32);
        }
        // A send-once where a send right goes is a bad argument too.
        let req = received(|b| {
            b.id(4000).inline(b"n").ports(&[1], abi::MAKE_SEND_ONCE);
        });
        let n = registry::dispatch(&mut reg, &req.0, &mut rep.0).unwrap();
        assert_eq!(code_of(&rep.0[..n]), MIG_BAD_ARGUMENTS as i32);
        assert!(reg.entries.is_empty());
    }

    #[test]
    fn dispatch_malformed_body_and_no_reply_port() {
        let mut reg = Reg::default();
        let mut rep = MsgBuf::<256>::new();
        let mut req = received(|b| {
            b.id(4001).inline(b"n");
        });
        req.0[24] = 9; // bad kind
        let n = registry::dispatch(&mut reg, &req.0, &mut rep.0).unwrap();
        assert_eq!(code_of(&rep.0[..n]), MIG_BAD_ARGUMENTS as i32);
        // No reply right: nothing to answer.
        let mut buf = MsgBuf::<64>::new();
        Builder::new(&mut buf.0)
            .dest(SERVER, abi::COPY_SEND)
            .id(4001)
            .finish()
            .unwrap();
        assert!(deliver(&mut buf.0, SERVER));
        assert_eq!(registry::dispatch(&mut reg, &buf.0, &mut rep.0), None);
        // Garbage and a reply buffer too small never panic.
        assert_eq!(registry::dispatch(&mut reg, &[1, 2, 3], &mut rep.0), None);
        let req = received(|b| {
            b.id(4001).inline(b"n");
        });
        assert_eq!(registry::dispatch(&mut reg, &req.0, &mut rep.0[..16]), None);
    }

    #[test]
    fn client_rejects_bad_replies() {
        // A server that answers with the wrong id, then with a wrong type.
        let mut mode = 0;
        let mut t = Loopback {
            dispatch: |req: &[u8], rep: &mut [u8]| {
                let m = Message::parse(req).unwrap();
                let mut b = reply(&m, rep, 0).unwrap();
                if mode == 0 {
                    b.id(m.id() + 1);
                } else if mode == 1 {
                    b.inline(b"four"); // not a right
                }
                mode += 1;
                Some(b.finish().unwrap())
            },
            server_port: SERVER,
            reply_port: REPLY,
        };
        let mut c = registry::Client::new(SERVER, &mut t);
        assert_eq!(
            c.look_up(b"a"),
            Err(RpcError::Kern(KernError(MIG_REPLY_MISMATCH)))
        );
        assert_eq!(
            c.look_up(b"a"),
            Err(RpcError::Kern(KernError(MIG_TYPE_ERROR)))
        );
        assert_eq!(c.check_in(b"a", 1), Ok(()));
    }

    // The example of docs/libmach.md: no arguments, several outs, MoveSend.
    crate::mach_interface! {
        interface calc = 5000 {
            fn add(a: u32, b: u64) -> (sum: u64);
            fn hello(name: Bytes<16>, port: MoveSend) -> ();
            fn greeting() -> (text: Bytes<32>, tag: [u8; 4]);
        }
    }

    struct Calc(Name);
    impl calc::Server for Calc {
        fn add(&mut self, a: u32, b: u64) -> Result<u64, KernError> {
            Ok(u64::from(a) + b)
        }
        fn hello(&mut self, _name: &[u8], port: Name) -> Result<(), KernError> {
            self.0 = port;
            Ok(())
        }
        fn greeting(&mut self) -> Result<(Bytes<32>, [u8; 4]), KernError> {
            Ok((
                Bytes::new(b"hello, world").ok_or(KernError(abi::KERN_FAILURE))?,
                *b"tag!",
            ))
        }
    }

    #[test]
    fn doc_example() {
        let mut s = Calc(0);
        let mut t = Loopback {
            dispatch: |req: &[u8], rep: &mut [u8]| calc::dispatch(&mut s, req, rep),
            server_port: SERVER,
            reply_port: REPLY,
        };
        let mut c = calc::Client::new(SERVER, &mut t);
        assert_eq!(c.add(1, 2), Ok(3));
        assert_eq!(c.hello(b"me", 0x42), Ok(()));
        let (text, tag) = c.greeting().unwrap();
        assert_eq!((text.as_slice(), tag), (&b"hello, world"[..], *b"tag!"));
        assert_eq!(s.0, 0x42);
    }

    crate::mach_interface! {
        interface store = 6000 {
            fn fetch(n: u32) -> (data: Ool);
            fn put(at: u64, data: Ool) -> (len: u32);
        }
    }

    struct Store;
    impl store::Server for Store {
        fn fetch(&mut self, n: u32) -> Result<Ool, KernError> {
            // SAFETY: a made-up range: nothing here sends it through a kernel.
            Ok(unsafe { Ool::moving(0x1000 * u64::from(n), n) })
        }
        fn put(&mut self, at: u64, data: Ool) -> Result<u32, KernError> {
            if data.addr() != at {
                return Err(KernError(abi::KERN_INVALID_ADDRESS));
            }
            Ok(data.len())
        }
    }

    #[test]
    fn out_of_line_arguments_and_results() {
        let mut s = Store;
        let mut t = Loopback {
            dispatch: |req: &[u8], rep: &mut [u8]| store::dispatch(&mut s, req, rep),
            server_port: SERVER,
            reply_port: REPLY,
        };
        let mut c = store::Client::new(SERVER, &mut t);
        let got = c.fetch(3).unwrap();
        assert_eq!((got.addr(), got.len()), (0x3000, 3));
        let data = [1u8; 40];
        let o = Ool::of(&data).unwrap();
        assert_eq!(c.put(data.as_ptr() as u64, o), Ok(40));

        // On the wire: one OOL item, the deallocate flag only from `moving`.
        let mut buf = MsgBuf::<256>::new();
        let n = {
            let mut b = Builder::new(&mut buf.0);
            b.dest(SERVER, abi::COPY_SEND).id(6000);
            <Ool as Arg>::put(&mut b, o);
            // SAFETY: the message is only parsed.
            <Ool as Arg>::put(&mut b, unsafe { Ool::moving(0x5000, 8) });
            b.finish().unwrap()
        };
        let m = Message::parse(&buf.0[..n]).unwrap();
        let items: Vec<_> = m.items().collect();
        assert_eq!(
            items,
            [
                Item::Ool {
                    addr: data.as_ptr() as u64,
                    len: 40,
                    deallocate: false
                },
                Item::Ool {
                    addr: 0x5000,
                    len: 8,
                    deallocate: true
                }
            ]
        );
        // A received region viewed and sent on stays the receiver's.
        assert_eq!(
            <Ool as Arg>::view(items[1]),
            Some(Ool {
                addr: 0x5000,
                len: 8,
                deallocate: false
            })
        );
        // Inline data where a region goes is a bad argument.
        let mut rep = MsgBuf::<256>::new();
        let req = received(|b| {
            b.id(6001).inline(&0u64.to_le_bytes()).inline(b"not ool");
        });
        let n = store::dispatch(&mut s, &req.0, &mut rep.0).unwrap();
        assert_eq!(code_of(&rep.0[..n]), MIG_BAD_ARGUMENTS as i32);
    }

    proptest::proptest! {
        #[test]
        fn dispatch_arbitrary_requests_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut reg = Reg::default();
            let mut rep = MsgBuf::<256>::new();
            let _ = registry::dispatch(&mut reg, &bytes, &mut rep.0);
        }
    }
}
