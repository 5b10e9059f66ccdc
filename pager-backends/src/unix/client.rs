//! `unix:PATH`: the kernel side of the external pager protocol, as a
//! `Pager`. Requests are pipelined on one socket and matched by id; a
//! reader thread reads provided data straight into the caller's buffers and
//! forwards the pager's unprompted messages to the right `KernelControl`.

use super::proto::{self as p, Header, Rd, Wr};
use crate::check::{check_object_size, check_range, offered};
use crate::deadline::{self, Deadline, HandshakePhase};
use crate::error::{PagerError, Result};
use crate::inflight::{Claim, Inflight};
use crate::options::OpenOptions;
use crate::pager::{DataReply, KernelControl, LockRequest, ObjectInfo, Pager, UnlockReply};
use crate::poison;
use crate::sg::{self, Cursor};
use crate::types::{Access, KernelId, ObjectOffset, PAGE_SIZE};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;
use vm_memory::VolatileSlice;

/// Fuzz entry point for the reader (pager-backends/fuzz `unix_client`).
#[doc(hidden)]
pub mod fuzz;

/// A decoded reply.
enum Reply {
    Ok,
    Info(ObjectInfo),
    Provided {
        bytes: u64,
        lock: Access,
    },
    Unavailable {
        bytes: u64,
    },
    Unlock(Access),
    Extent(u64),
    Describe(String),
    /// T_ERROR: (code, errno, message) payload, turned into a PagerError by
    /// the caller, which knows the request's context.
    Error(Vec<u8>),
}

type Controls = RwLock<HashMap<u64, Arc<dyn KernelControl>>>;

struct Shared {
    inflight: Inflight<Reply>,
    controls: Controls,
    /// Largest payload the pager accepts from us.
    peer_max: u32,
    /// The protocol version the pager chose.
    version: u16,
}

pub struct UnixPager {
    stream: UnixStream,
    path: PathBuf,
    send_lock: Mutex<()>,
    shared: Arc<Shared>,
    size: AtomicU64,
    timeout: Duration,
    /// Requests that may be left waiting for a late answer (inflight.rs).
    max_abandoned: usize,
    reader: Option<JoinHandle<()>>,
}

fn dead_ctx(path: &Path, e: std::io::Error) -> PagerError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => PagerError::Dead(format!(
            "external pager {} closed the connection",
            path.display()
        )),
        std::io::ErrorKind::TimedOut => PagerError::Dead(format!(
            "external pager {} did not answer in time",
            path.display()
        )),
        _ => PagerError::io_context(format!("external pager {}", path.display()), e),
    }
}

/// The hello exchange on a fresh connection: sends our version range and
/// limit, checks the pager's reply. Returns the largest payload the pager
/// accepts from us and the version it chose.
fn hello<S: Read + Write>(s: &mut S, path: &Path) -> Result<(u32, u16)> {
    let ctx = |e| dead_ctx(path, e);
    // Hello: our version range and what we accept.
    let hello = Wr::default()
        .bytes(&p::MAGIC)
        .u16(p::MIN_VERSION)
        .u16(p::VERSION)
        .u32(p::DEFAULT_MAX_PAYLOAD)
        .0;
    let head = Header {
        len: hello.len() as u32,
        kind: p::T_HELLO,
        flags: 0,
        id: 0,
    }
    .encode();
    s.write_all(&[&head[..], &hello[..]].concat())
        .map_err(ctx)?;
    let mut h = [0u8; p::HEADER_LEN];
    s.read_exact(&mut h).map_err(ctx)?;
    let hd = Header::decode(&h, 1024)?;
    if hd.kind == p::T_ERROR {
        let mut body = vec![0u8; hd.len as usize];
        s.read_exact(&mut body).map_err(ctx)?;
        let msg = if body.len() >= 8 {
            Rd(&body).text(8).unwrap_or_default()
        } else {
            String::new()
        };
        return Err(PagerError::Protocol(format!(
            "external pager refused the connection: {msg}"
        )));
    }
    if hd.kind != p::T_HELLO_REPLY || hd.id != 0 {
        return Err(PagerError::Protocol(format!(
            "expected a hello reply, got message type {:#x}",
            hd.kind
        )));
    }
    p::check_len(hd.kind, hd.len)?;
    let mut body = [0u8; 16];
    s.read_exact(&mut body).map_err(ctx)?;
    let r = Rd(&body);
    if body[..8] != p::MAGIC {
        return Err(PagerError::Protocol("hello reply has a bad magic".into()));
    }
    let version = r.u16(8);
    if !(p::MIN_VERSION..=p::VERSION).contains(&version) {
        return Err(PagerError::Protocol(format!(
            "pager chose protocol version {version}, we offered {}..={}",
            p::MIN_VERSION,
            p::VERSION
        )));
    }
    let peer_max = r.u32(12);
    if peer_max < p::MIN_MAX_PAYLOAD {
        return Err(PagerError::Protocol(format!(
            "pager's payload limit {peer_max} is below the minimum"
        )));
    }
    Ok((peer_max, version))
}

impl UnixPager {
    pub fn connect(path: &Path, opts: &OpenOptions) -> Result<UnixPager> {
        let ctx = |e| dead_ctx(path, e);
        // One deadline for the connect and the hello: each read and write
        // waits only for what is left of it, so a pager that trickles
        // bytes cannot hold the open for longer.
        let deadline = Deadline::start(
            "external pager",
            &path.display().to_string(),
            opts.connect_timeout,
        );
        let stream = deadline.during(
            HandshakePhase::Connect,
            deadline::connect_unix(path, &deadline).map_err(|e| {
                PagerError::io_context(format!("external pager {}", path.display()), e)
            }),
        )?;
        let (peer_max, version) = deadline.during(
            HandshakePhase::Hello,
            hello(&mut deadline.bound(&stream), path),
        )?;
        stream.set_read_timeout(None).map_err(ctx)?;
        stream
            .set_write_timeout(Some(opts.request_timeout))
            .map_err(ctx)?;
        let shared = Arc::new(Shared {
            inflight: Inflight::new(opts.max_in_flight),
            controls: RwLock::default(),
            peer_max,
            version,
        });
        let rstream = stream.try_clone().map_err(ctx)?;
        let rshared = shared.clone();
        let reader = crate::spawn_hooked(
            "unix-pager-reader".into(),
            opts.reader_hook.as_ref(),
            move || reader_loop(rstream, rshared),
        )
        .map_err(ctx)?;
        let pager = UnixPager {
            stream,
            path: path.to_path_buf(),
            send_lock: Mutex::new(()),
            shared,
            size: AtomicU64::new(0),
            timeout: opts.request_timeout,
            max_abandoned: (opts.max_in_flight / 4).max(1),
            reader: Some(reader),
        };
        let size = pager.extent()?;
        pager.size.store(size, Ordering::Relaxed);
        Ok(pager)
    }

    fn kill(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Sends a request (fixed fields, then optionally page data gathered
    /// from `data`) and waits for its reply.
    fn call(
        &self,
        kind: u16,
        fixed: &[u8],
        data: Option<(&[VolatileSlice<'_>], u64)>,
        into: Option<(&[VolatileSlice<'_>], u64)>,
    ) -> Result<Reply> {
        let data_len = data.map_or(0, |d| d.1);
        let len = fixed.len() as u64 + data_len;
        if len > u64::from(self.shared.peer_max) {
            return Err(PagerError::BadRange {
                offset: ObjectOffset(0),
                len: data_len,
                why: "request exceeds the external pager's message size limit",
            });
        }
        let (bufs, cap) = match into {
            Some((b, c)) => (Some(b), c),
            None => (None, 0),
        };
        let t = self
            .shared
            .inflight
            .start(kind, cap, 0, bufs, self.timeout)?;
        let mut msg = [0u8; p::HEADER_LEN + 48];
        msg[..p::HEADER_LEN].copy_from_slice(
            &Header {
                len: len as u32,
                kind,
                flags: 0,
                id: t.id(),
            }
            .encode(),
        );
        msg[p::HEADER_LEN..p::HEADER_LEN + fixed.len()].copy_from_slice(fixed);
        let head = &msg[..p::HEADER_LEN + fixed.len()];
        let sent = {
            let _g = poison::lock(&self.send_lock);
            match data {
                Some((b, n)) => {
                    sg::write_all_with(self.stream.as_raw_fd(), head, &mut Cursor::new(b, 0, n))
                }
                None => sg::write_all_fd(self.stream.as_raw_fd(), head),
            }
        };
        if let Err(e) = sent {
            self.shared.inflight.cancel(t);
            self.kill();
            return Err(PagerError::Dead(format!(
                "external pager {}: send failed: {e}",
                self.path.display()
            )));
        }
        // A request left unanswered past the timeout is abandoned, not the
        // connection: the pager's late answer is recognised by its id and
        // dropped. Only a pager that leaves a quarter of the slots
        // unanswered is given up on.
        self.shared
            .inflight
            .wait_or_abandon(t, self.timeout, self.max_abandoned, || self.kill())
    }

    fn unexpected(&self, what: &str) -> PagerError {
        PagerError::Protocol(format!(
            "external pager answered {what} with the wrong message type"
        ))
    }
}

impl Drop for UnixPager {
    fn drop(&mut self) {
        self.kill();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn fixed_krange(kernel: KernelId, offset: ObjectOffset, len: u64) -> Wr {
    Wr::default().u64(kernel.0).u64(offset.raw()).u64(len)
}

impl Pager for UnixPager {
    fn init(&self, kernel: KernelId, control: Arc<dyn KernelControl>) -> Result<ObjectInfo> {
        // Registered first so messages the pager sends from inside its init
        // already find their kernel.
        {
            let mut c = poison::write(&self.shared.controls);
            if c.contains_key(&kernel.0) {
                return Err(PagerError::Protocol(format!(
                    "kernel {} initialised twice",
                    kernel.0
                )));
            }
            c.insert(kernel.0, control);
        }
        let r = self.call(p::T_INIT, &Wr::default().u64(kernel.0).0, None, None);
        let r = match r {
            Ok(Reply::Info(info)) => {
                self.size.store(info.size, Ordering::Relaxed);
                Ok(info)
            }
            Ok(Reply::Error(e)) => Err(p::decode_error(&e, ObjectOffset(0), 0, 0, kernel.0)?),
            Ok(_) => Err(self.unexpected("init")),
            Err(e) => Err(e),
        };
        if r.is_err() {
            poison::write(&self.shared.controls).remove(&kernel.0);
        }
        r
    }

    fn data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<DataReply> {
        let size = self.size.load(Ordering::Relaxed);
        check_range(offset, len, size, bufs)?;
        // Offer the pager all the buffer we have (for read-ahead), within
        // what its replies may carry.
        let cap = offered(bufs)
            .min((u64::from(p::DEFAULT_MAX_PAYLOAD) - 16) / PAGE_SIZE * PAGE_SIZE)
            .max(len);
        let fixed = fixed_krange(kernel, offset, len)
            .u64(cap)
            .u8(desired.bits())
            .pad(7)
            .0;
        match self.call(p::T_DATA_REQUEST, &fixed, None, Some((bufs, cap)))? {
            Reply::Provided { bytes, lock } => {
                if bytes < len {
                    return Err(PagerError::Protocol(format!(
                        "external pager provided {bytes} bytes for a {len}-byte request"
                    )));
                }
                Ok(DataReply::Provided { bytes, lock })
            }
            Reply::Unavailable { bytes } => {
                if bytes < len || bytes > cap || bytes % PAGE_SIZE != 0 {
                    return Err(PagerError::Protocol(format!(
                        "external pager marked {bytes} bytes unavailable for a {len}-byte request"
                    )));
                }
                Ok(DataReply::Unavailable { bytes })
            }
            Reply::Error(e) => Err(p::decode_error(&e, offset, len, size, kernel.0)?),
            _ => Err(self.unexpected("a data request")),
        }
    }

    fn data_write(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<()> {
        let size = self.size.load(Ordering::Relaxed);
        check_range(offset, len, size, bufs)?;
        let fixed = fixed_krange(kernel, offset, len).0;
        match self.call(p::T_DATA_WRITE, &fixed, Some((bufs, len)), None)? {
            Reply::Ok => Ok(()),
            Reply::Error(e) => Err(p::decode_error(&e, offset, len, size, kernel.0)?),
            _ => Err(self.unexpected("a data write")),
        }
    }

    fn data_unlock(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        desired: Access,
    ) -> Result<UnlockReply> {
        let fixed = fixed_krange(kernel, offset, len)
            .u8(desired.bits())
            .pad(7)
            .0;
        match self.call(p::T_DATA_UNLOCK, &fixed, None, None)? {
            Reply::Unlock(lock) => Ok(UnlockReply { lock }),
            Reply::Error(e) => Err(p::decode_error(
                &e,
                offset,
                len,
                self.size.load(Ordering::Relaxed),
                kernel.0,
            )?),
            _ => Err(self.unexpected("an unlock")),
        }
    }

    fn extent(&self) -> Result<u64> {
        match self.call(p::T_EXTENT, &[], None, None)? {
            Reply::Extent(n) => Ok(n),
            Reply::Error(e) => Err(p::decode_error(&e, ObjectOffset(0), 0, 0, 0)?),
            _ => Err(self.unexpected("an extent request")),
        }
    }

    fn sync(&self) -> Result<()> {
        match self.call(p::T_SYNC, &[], None, None)? {
            Reply::Ok => Ok(()),
            Reply::Error(e) => Err(p::decode_error(&e, ObjectOffset(0), 0, 0, 0)?),
            _ => Err(self.unexpected("a sync")),
        }
    }

    fn lock_completed(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        cookie: u64,
    ) -> Result<()> {
        // A version 1 pager cannot have asked (its LOCK_REQUEST_REPLY would
        // have been a protocol error): nothing to tell it.
        if self.shared.version < p::V_LOCK_COMPLETED {
            return Ok(());
        }
        let fixed = fixed_krange(kernel, offset, len).u64(cookie).0;
        match self.call(p::T_LOCK_COMPLETED, &fixed, None, None)? {
            Reply::Ok => Ok(()),
            Reply::Error(e) => Err(p::decode_error(
                &e,
                offset,
                len,
                self.size.load(Ordering::Relaxed),
                kernel.0,
            )?),
            _ => Err(self.unexpected("a lock completion")),
        }
    }

    fn terminate(&self, kernel: KernelId) -> Result<()> {
        let known = poison::write(&self.shared.controls)
            .remove(&kernel.0)
            .is_some();
        if !known {
            return Err(PagerError::UnknownKernel(kernel.0));
        }
        match self.call(p::T_TERMINATE, &Wr::default().u64(kernel.0).0, None, None)? {
            Reply::Ok => Ok(()),
            Reply::Error(e) => Err(p::decode_error(&e, ObjectOffset(0), 0, 0, kernel.0)?),
            _ => Err(self.unexpected("a terminate")),
        }
    }

    fn describe(&self) -> String {
        let remote = match self.call(p::T_DESCRIBE, &[], None, None) {
            Ok(Reply::Describe(s)) => s,
            Ok(_) => "(bad describe reply)".into(),
            Err(e) => format!("(unreachable: {e})"),
        };
        format!("external pager at {}: {remote}", self.path.display())
    }
}

/// Reads one reply's payload for `claim` (header already read).
fn read_reply(fd: i32, hd: &Header, claim: &Claim, scratch: &mut Vec<u8>) -> Result<Reply> {
    let expected: &[u16] = match claim.expect.kind {
        p::T_INIT => &[p::T_INFO],
        p::T_DATA_REQUEST => &[p::T_DATA_PROVIDED, p::T_DATA_UNAVAILABLE],
        p::T_DATA_WRITE | p::T_SYNC | p::T_TERMINATE | p::T_LOCK_COMPLETED => &[p::T_OK],
        p::T_DATA_UNLOCK => &[p::T_UNLOCK_REPLY],
        p::T_EXTENT => &[p::T_EXTENT_REPLY],
        p::T_DESCRIBE => &[p::T_DESCRIBE_REPLY],
        _ => &[],
    };
    if hd.kind != p::T_ERROR && !expected.contains(&hd.kind) {
        return Err(PagerError::Protocol(format!(
            "reply of type {:#x} does not answer a request of type {:#x}",
            hd.kind, claim.expect.kind
        )));
    }
    p::check_len(hd.kind, hd.len)?;
    let io = |e: std::io::Error| {
        PagerError::Dead(format!("external pager connection lost mid-reply: {e}"))
    };
    if hd.kind == p::T_DATA_PROVIDED {
        let mut fixed = [0u8; 16];
        sg::read_exact_fd(fd, &mut fixed).map_err(io)?;
        let r = Rd(&fixed);
        let bytes = r.u64(0);
        let lock = r.access(8)?;
        if bytes != u64::from(hd.len) - 16
            || bytes % PAGE_SIZE != 0
            || bytes == 0
            || bytes > claim.expect.len
        {
            return Err(PagerError::Protocol(format!(
                "data provided carries {bytes} bytes in a {}-byte message, for {} bytes of buffer",
                hd.len, claim.expect.len
            )));
        }
        if claim.abandoned {
            // A late answer to a request that timed out: its buffers went
            // back to their owner long ago. Read the data and drop it.
            let mut left = bytes as usize;
            scratch.resize(PAGE_SIZE as usize, 0);
            while left > 0 {
                let n = left.min(scratch.len());
                sg::read_exact_fd(fd, &mut scratch[..n]).map_err(io)?;
                left -= n;
            }
            return Ok(Reply::Provided { bytes, lock });
        }
        let raw = claim
            .expect
            .bufs
            .ok_or_else(|| PagerError::Protocol("data for a request without buffers".into()))?;
        // SAFETY: the claim keeps the requester blocked in `wait`.
        let bufs = unsafe { raw.get() };
        sg::read_exact_into(fd, &mut Cursor::new(bufs, 0, bytes)).map_err(io)?;
        return Ok(Reply::Provided { bytes, lock });
    }
    scratch.resize(hd.len as usize, 0);
    sg::read_exact_fd(fd, scratch).map_err(io)?;
    let r = Rd(scratch);
    Ok(match hd.kind {
        p::T_OK => Reply::Ok,
        p::T_INFO => {
            let flags = r.u8(8);
            if flags & !3 != 0 {
                return Err(PagerError::Protocol(format!(
                    "init reply has unknown flags {flags:#x}"
                )));
            }
            Reply::Info(ObjectInfo {
                size: check_object_size(r.u64(0), "external pager")?,
                read_only: flags & 1 != 0,
                may_cache: flags & 2 != 0,
            })
        }
        p::T_DATA_UNAVAILABLE => Reply::Unavailable { bytes: r.u64(0) },
        p::T_UNLOCK_REPLY => Reply::Unlock(r.access(0)?),
        p::T_EXTENT_REPLY => Reply::Extent(check_object_size(r.u64(0), "external pager")?),
        p::T_DESCRIBE_REPLY => Reply::Describe(r.text(0)?),
        p::T_ERROR => {
            r.text(8)?; // validate now, so a bad message fails as a protocol error
            Reply::Error(scratch.clone())
        }
        other => {
            return Err(PagerError::Protocol(format!(
                "unexpected message type {other:#x}"
            )));
        }
    })
}

/// Handles one unprompted message from the pager (`version`: the one it
/// chose; it may send only that version's types).
fn unprompted(hd: &Header, body: &[u8], controls: &Controls, version: u16) -> Result<()> {
    if hd.id & p::PAGER_ID_BIT == 0 {
        return Err(PagerError::Protocol(format!(
            "unprompted message with a kernel-side id {:#x}",
            hd.id
        )));
    }
    if hd.kind == p::T_LOCK_REQUEST_REPLY && version < p::V_LOCK_COMPLETED {
        return Err(PagerError::Protocol(format!(
            "lock request with reply in protocol version {version}"
        )));
    }
    p::check_len(hd.kind, hd.len)?;
    let r = Rd(body);
    let kernel = r.u64(0);
    // A message racing with terminate finds no kernel: harmless, dropped.
    let Some(ctl) = poison::read(controls).get(&kernel).cloned() else {
        return Ok(());
    };
    // The kernel side's own errors (e.g. it is shutting down) are its
    // business: the pager gets no reply to these messages anyway.
    match hd.kind {
        p::T_LOCK_REQUEST | p::T_LOCK_REQUEST_REPLY => {
            let flags = r.u8(25);
            if flags & !(p::LOCK_F_CLEAN | p::LOCK_F_FLUSH) != 0 {
                return Err(PagerError::Protocol(format!(
                    "lock request has unknown flags {flags:#x}"
                )));
            }
            let req = LockRequest {
                lock: r.access(24)?,
                clean: flags & p::LOCK_F_CLEAN != 0,
                flush: flags & p::LOCK_F_FLUSH != 0,
            };
            let (offset, len) = (r.offset(8), r.u64(16));
            if hd.kind == p::T_LOCK_REQUEST {
                let _ = ctl.lock_request(offset, len, req.lock, req.clean, req.flush);
            } else if let Err(e) = ctl.lock_request_with_reply(offset, len, req, r.u64(32)) {
                // The pager gets no answer to this message; it learns
                // from the missing LOCK_COMPLETED (and its own deadline).
                tracing::debug!(%e, "external pager's lock request with reply refused");
            }
        }
        p::T_OFFER => {
            let data = &body[24..];
            if data.is_empty()
                || !(data.len() as u64).is_multiple_of(PAGE_SIZE)
                || !r.offset(8).is_page_aligned()
            {
                return Err(PagerError::Protocol(
                    "offer of a partial page or an unaligned offset".into(),
                ));
            }
            let _ = ctl.offer(r.offset(8), data, r.access(16)?);
        }
        p::T_SET_CACHE => {
            let v = r.u8(8);
            if v > 1 {
                return Err(PagerError::Protocol(format!("set cache value {v}")));
            }
            let _ = ctl.set_cache(v == 1);
        }
        p::T_DESTROY => {
            let _ = ctl.destroy(&r.text(8)?);
        }
        _ => unreachable!("caller dispatches only unprompted types"),
    }
    Ok(())
}

fn reader_loop(stream: UnixStream, shared: Arc<Shared>) {
    let fd = stream.as_raw_fd();
    let mut scratch = Vec::new();
    let why = loop {
        let mut h = [0u8; p::HEADER_LEN];
        if let Err(e) = sg::read_exact_fd(fd, &mut h) {
            break if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "external pager closed the connection".to_string()
            } else {
                format!("external pager connection lost: {e}")
            };
        }
        let hd = match Header::decode(&h, p::DEFAULT_MAX_PAYLOAD) {
            Ok(h) => h,
            Err(e) => break format!("external pager sent a bad message: {e}"),
        };
        match hd.kind {
            p::T_LOCK_REQUEST
            | p::T_LOCK_REQUEST_REPLY
            | p::T_OFFER
            | p::T_SET_CACHE
            | p::T_DESTROY => {
                scratch.resize(hd.len as usize, 0);
                if let Err(e) = sg::read_exact_fd(fd, &mut scratch) {
                    break format!("external pager connection lost: {e}");
                }
                if let Err(e) = unprompted(&hd, &scratch, &shared.controls, shared.version) {
                    break format!("external pager sent a bad message: {e}");
                }
            }
            p::T_OK..=p::T_ERROR => {
                let claim = match shared.inflight.claim(hd.id) {
                    Ok(c) => c,
                    Err(e) => break format!("external pager sent an out-of-order message: {e}"),
                };
                match read_reply(fd, &hd, &claim, &mut scratch) {
                    Ok(r) => shared.inflight.complete(claim, Ok(r)),
                    Err(e) => {
                        let why = format!("external pager sent a bad message: {e}");
                        shared.inflight.set_dead(&why);
                        shared
                            .inflight
                            .complete(claim, Err(PagerError::Protocol(why.clone())));
                        break why;
                    }
                }
            }
            other => {
                break format!(
                    "external pager sent a bad message: unknown message type {other:#x}"
                );
            }
        }
    };
    let _ = stream.shutdown(Shutdown::Both);
    shared.inflight.fail_all(&why);
}
