//! Server SDK: serve any `Pager` over the external pager protocol.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn demo(my_pager: Arc<dyn pager_backends::Pager>) -> std::io::Result<()> {
//! let listener = std::os::unix::net::UnixListener::bind("/run/my-pager.sock")?;
//! pager_backends::unix::serve(listener, my_pager)
//! # }
//! ```
//!
//! Each connection (one kernel side, i.e. one VMM) gets a reader thread and
//! a few worker threads, so requests for different pages run in parallel and
//! replies go out as they complete. Kernel ids are remapped per connection
//! so two VMMs that both call themselves kernel 0 stay distinct.

use super::proto::{self as p, Header, Rd, Wr};
use crate::error::{PagerError, Result};
use crate::pager::{DataReply, KernelControl, LockRequest, Pager};
use crate::poison;
use crate::pool::{PoolOptions, WorkPool};
use crate::sg::{self, Cursor};
use crate::types::{Access, KernelId, ObjectOffset, PAGE_SIZE};
use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::VolatileSlice;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Worker threads per connection (requests handled in parallel).
    pub workers: usize,
    /// Largest payload accepted from the kernel side.
    pub max_payload: u32,
    /// How long the kernel side has to say hello.
    pub hello_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            workers: 4,
            max_payload: p::DEFAULT_MAX_PAYLOAD,
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// Kernel ids handed to the pager: unique across all connections.
static NEXT_KERNEL: AtomicU64 = AtomicU64::new(1);

/// Accepts connections forever, serving each on its own threads.
pub fn serve(listener: UnixListener, pager: Arc<dyn Pager>) -> io::Result<()> {
    serve_with(listener, pager, ServeOptions::default())
}

pub fn serve_with(
    listener: UnixListener,
    pager: Arc<dyn Pager>,
    opts: ServeOptions,
) -> io::Result<()> {
    loop {
        let (stream, _) = listener.accept()?;
        let pager = pager.clone();
        let opts = opts.clone();
        std::thread::Builder::new()
            .name("pager-conn".into())
            .spawn(move || {
                // A broken client only ends its own connection.
                let _ = serve_connection(stream, pager, &opts);
            })?;
    }
}

/// The sending half, shared by workers and `KernelControl` handles.
struct Writer {
    stream: UnixStream,
    lock: Mutex<()>,
    /// Largest payload the kernel side accepts.
    peer_max: u32,
    next_id: AtomicU64,
    /// The protocol version chosen in the hello exchange.
    version: u16,
}

impl Writer {
    fn send(
        &self,
        kind: u16,
        id: u64,
        fixed: &[u8],
        data: Option<(&[VolatileSlice<'_>], u64)>,
    ) -> Result<()> {
        let len = fixed.len() as u64 + data.map_or(0, |d| d.1);
        if len > u64::from(self.peer_max) {
            return Err(PagerError::Protocol(format!(
                "message of {len} bytes exceeds the kernel side's limit"
            )));
        }
        let head = Header {
            len: len as u32,
            kind,
            flags: 0,
            id,
        }
        .encode();
        let mut msg = Vec::with_capacity(p::HEADER_LEN + fixed.len());
        msg.extend_from_slice(&head);
        msg.extend_from_slice(fixed);
        let _g = poison::lock(&self.lock);
        let r = match data {
            Some((b, n)) => {
                sg::write_all_with(self.stream.as_raw_fd(), &msg, &mut Cursor::new(b, 0, n))
            }
            None => sg::write_all_fd(self.stream.as_raw_fd(), &msg),
        };
        r.map_err(|e| PagerError::Dead(format!("kernel side connection: {e}")))
    }

    fn unprompted(&self, kind: u16, payload: &[u8]) -> Result<()> {
        let id = p::PAGER_ID_BIT | self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(kind, id, payload, None)
    }
}

/// The pager's handle on one remote kernel: sends unprompted messages.
struct RemoteControl {
    w: Arc<Writer>,
    /// The kernel id as the kernel side knows it.
    wire_kernel: u64,
}

impl RemoteControl {
    /// LOCK_REQUEST's fixed fields (LOCK_REQUEST_REPLY appends a cookie).
    fn lock_fields(&self, offset: ObjectOffset, len: u64, req: LockRequest) -> Wr {
        let mut flags = 0;
        if req.clean {
            flags |= p::LOCK_F_CLEAN;
        }
        if req.flush {
            flags |= p::LOCK_F_FLUSH;
        }
        Wr::default()
            .u64(self.wire_kernel)
            .u64(offset.raw())
            .u64(len)
            .u8(req.lock.bits())
            .u8(flags)
            .pad(6)
    }
}

impl KernelControl for RemoteControl {
    fn lock_request(
        &self,
        offset: ObjectOffset,
        len: u64,
        lock: Access,
        clean: bool,
        flush: bool,
    ) -> Result<()> {
        let req = LockRequest { lock, clean, flush };
        let m = self.lock_fields(offset, len, req).0;
        self.w.unprompted(p::T_LOCK_REQUEST, &m)
    }
    fn lock_request_with_reply(
        &self,
        offset: ObjectOffset,
        len: u64,
        req: LockRequest,
        cookie: u64,
    ) -> Result<()> {
        if self.w.version < p::V_LOCK_COMPLETED {
            return Err(PagerError::Unsupported(
                "the kernel side speaks pager protocol version 1 (no lock completion)",
            ));
        }
        let m = self.lock_fields(offset, len, req).u64(cookie).0;
        self.w.unprompted(p::T_LOCK_REQUEST_REPLY, &m)
    }
    fn offer(&self, offset: ObjectOffset, data: &[u8], lock: Access) -> Result<()> {
        if !offset.is_page_aligned()
            || data.is_empty()
            || !(data.len() as u64).is_multiple_of(PAGE_SIZE)
        {
            return Err(PagerError::BadRange {
                offset,
                len: data.len() as u64,
                why: "offers are whole pages",
            });
        }
        let m = Wr::default()
            .u64(self.wire_kernel)
            .u64(offset.raw())
            .u8(lock.bits())
            .pad(7)
            .bytes(data)
            .0;
        self.w.unprompted(p::T_OFFER, &m)
    }
    fn set_cache(&self, may_cache: bool) -> Result<()> {
        let m = Wr::default()
            .u64(self.wire_kernel)
            .u8(u8::from(may_cache))
            .pad(7)
            .0;
        self.w.unprompted(p::T_SET_CACHE, &m)
    }
    fn destroy(&self, reason: &str) -> Result<()> {
        let m = Wr::default().u64(self.wire_kernel).text(reason).0;
        self.w.unprompted(p::T_DESTROY, &m)
    }
}

struct Job {
    hd: Header,
    body: Vec<u8>,
}

struct Conn {
    pager: Arc<dyn Pager>,
    w: Arc<Writer>,
    /// Wire kernel id -> the id the pager knows.
    kernels: Mutex<HashMap<u64, KernelId>>,
    /// Reusable message buffers (request bodies, reply data): no allocation
    /// per request once warmed up.
    pool: Mutex<Vec<Vec<u8>>>,
}

impl Conn {
    fn buf(&self) -> Vec<u8> {
        poison::lock(&self.pool).pop().unwrap_or_default()
    }
    fn give_back(&self, b: Vec<u8>) {
        poison::lock(&self.pool).push(b);
    }
    fn kernel(&self, wire: u64) -> Result<KernelId> {
        poison::lock(&self.kernels)
            .get(&wire)
            .copied()
            .ok_or(PagerError::UnknownKernel(wire))
    }

    /// A data write: the page data goes to the pager straight from the
    /// pooled message buffer it was received into.
    fn write(&self, job: &mut Job) -> Result<()> {
        let r = Rd(&job.body);
        let (wire, offset, len) = (r.u64(0), r.offset(8), r.u64(16));
        let k = self.kernel(wire)?;
        if len != job.body.len() as u64 - 24 {
            return Err(PagerError::BadRange {
                offset,
                len,
                why: "length does not match the data sent",
            });
        }
        let slice = VolatileSlice::from(&mut job.body[24..]);
        self.pager.data_write(k, offset, len, &[slice])?;
        self.w.send(p::T_OK, job.hd.id, &[], None)
    }

    /// Runs one request and sends its reply.
    fn handle(&self, job: &mut Job) -> Result<()> {
        let id = job.hd.id;
        if job.hd.kind == p::T_DATA_WRITE {
            return match self.write(job) {
                Err(PagerError::Dead(why)) => Err(PagerError::Dead(why)),
                Err(e) => self.w.send(p::T_ERROR, id, &p::error_payload(&e), None),
                Ok(()) => Ok(()),
            };
        }
        let r = Rd(&job.body);
        let res: Result<()> = (|| match job.hd.kind {
            p::T_INIT => {
                let wire = r.u64(0);
                if poison::lock(&self.kernels).contains_key(&wire) {
                    return Err(PagerError::Protocol(format!(
                        "kernel {wire} initialised twice"
                    )));
                }
                let k = KernelId(NEXT_KERNEL.fetch_add(1, Ordering::Relaxed));
                let ctl = Arc::new(RemoteControl {
                    w: self.w.clone(),
                    wire_kernel: wire,
                });
                let info = self.pager.init(k, ctl)?;
                poison::lock(&self.kernels).insert(wire, k);
                let flags = u8::from(info.read_only) | (u8::from(info.may_cache) << 1);
                self.w.send(
                    p::T_INFO,
                    id,
                    &Wr::default().u64(info.size).u8(flags).pad(7).0,
                    None,
                )
            }
            p::T_DATA_REQUEST => {
                let k = self.kernel(r.u64(0))?;
                let (offset, len, cap) = (r.offset(8), r.u64(16), r.u64(24));
                let desired = r.access(32)?;
                // The reply must fit the peer's limit with its 16 fixed bytes.
                let limit = (u64::from(self.w.peer_max).saturating_sub(16)) / PAGE_SIZE * PAGE_SIZE;
                let cap = cap.min(limit).min(crate::check::MAX_REQUEST);
                if cap < len {
                    return Err(PagerError::BadRange {
                        offset,
                        len,
                        why: "offered buffer is shorter than the length",
                    });
                }
                let mut data = self.buf();
                if data.len() < cap as usize {
                    data.resize(cap as usize, 0);
                }
                let res = {
                    let slice = VolatileSlice::from(&mut data[..cap as usize]);
                    match self.pager.data_request(k, offset, len, desired, &[slice]) {
                        Ok(DataReply::Provided { bytes, lock })
                            if bytes >= len && bytes <= cap && bytes % PAGE_SIZE == 0 =>
                        {
                            let fixed = Wr::default().u64(bytes).u8(lock.bits()).pad(7).0;
                            self.w
                                .send(p::T_DATA_PROVIDED, id, &fixed, Some((&[slice], bytes)))
                        }
                        Ok(DataReply::Provided { bytes, .. }) => {
                            Err(PagerError::Protocol(format!(
                                "pager provided {bytes} bytes for a {len}-byte request with {cap} bytes of buffer"
                            )))
                        }
                        Ok(DataReply::Unavailable { bytes }) => self.w.send(
                            p::T_DATA_UNAVAILABLE,
                            id,
                            &Wr::default().u64(bytes.max(len).min(cap)).0,
                            None,
                        ),
                        Err(e) => Err(e),
                    }
                };
                self.give_back(data);
                res
            }
            p::T_DATA_UNLOCK => {
                let k = self.kernel(r.u64(0))?;
                let u = self
                    .pager
                    .data_unlock(k, r.offset(8), r.u64(16), r.access(24)?)?;
                self.w.send(
                    p::T_UNLOCK_REPLY,
                    id,
                    &Wr::default().u8(u.lock.bits()).pad(7).0,
                    None,
                )
            }
            p::T_EXTENT => {
                let n = self.pager.extent()?;
                self.w
                    .send(p::T_EXTENT_REPLY, id, &Wr::default().u64(n).0, None)
            }
            p::T_SYNC => {
                self.pager.sync()?;
                self.w.send(p::T_OK, id, &[], None)
            }
            p::T_LOCK_COMPLETED if self.w.version >= p::V_LOCK_COMPLETED => {
                let k = self.kernel(r.u64(0))?;
                self.pager
                    .lock_completed(k, r.offset(8), r.u64(16), r.u64(24))?;
                self.w.send(p::T_OK, id, &[], None)
            }
            p::T_TERMINATE => {
                let wire = r.u64(0);
                let k = self.kernel(wire)?;
                poison::lock(&self.kernels).remove(&wire);
                self.pager.terminate(k)?;
                self.w.send(p::T_OK, id, &[], None)
            }
            p::T_DESCRIBE => self.w.send(
                p::T_DESCRIBE_REPLY,
                id,
                &Wr::default().text(&self.pager.describe()).0,
                None,
            ),
            other => Err(PagerError::Protocol(format!(
                "unknown request type {other:#x}"
            ))),
        })();
        match res {
            Err(PagerError::Dead(why)) => Err(PagerError::Dead(why)),
            Err(e) => self.w.send(p::T_ERROR, id, &p::error_payload(&e), None),
            Ok(()) => Ok(()),
        }
    }
}

fn send_error(stream: &UnixStream, msg: &str) {
    let body = p::error_payload(&PagerError::Protocol(msg.to_string()));
    let head = Header {
        len: body.len() as u32,
        kind: p::T_ERROR,
        flags: 0,
        id: 0,
    }
    .encode();
    let _ = sg::write_all_fd(stream.as_raw_fd(), &[&head[..], &body[..]].concat());
}

/// Serves one connection until the kernel side hangs up or misbehaves.
/// When it ends, every kernel it initialised is terminated.
pub fn serve_connection(
    stream: UnixStream,
    pager: Arc<dyn Pager>,
    opts: &ServeOptions,
) -> Result<()> {
    let fd = stream.as_raw_fd();
    let ctx = |e: io::Error| PagerError::Dead(format!("kernel side connection: {e}"));
    stream
        .set_read_timeout(Some(opts.hello_timeout))
        .map_err(ctx)?;
    let mut h = [0u8; p::HEADER_LEN];
    sg::read_exact_fd(fd, &mut h).map_err(ctx)?;
    let hd = Header::decode(&h, 1024)?;
    if hd.kind != p::T_HELLO || hd.len != 16 {
        send_error(&stream, "expected hello");
        return Err(PagerError::Protocol("expected hello".into()));
    }
    let mut body = [0u8; 16];
    sg::read_exact_fd(fd, &mut body).map_err(ctx)?;
    let r = Rd(&body);
    let (min_v, max_v, peer_max) = (r.u16(8), r.u16(10), r.u32(12));
    // The newest version both sides speak.
    let version = max_v.min(p::VERSION);
    if body[..8] != p::MAGIC || version < min_v.max(p::MIN_VERSION) || peer_max < p::MIN_MAX_PAYLOAD
    {
        let msg = format!(
            "unsupported hello (versions {min_v}..={max_v}, limit {peer_max}); this pager speaks versions {}..={}",
            p::MIN_VERSION,
            p::VERSION
        );
        send_error(&stream, &msg);
        return Err(PagerError::Protocol(msg));
    }
    let reply = Wr::default()
        .bytes(&p::MAGIC)
        .u16(version)
        .u16(0)
        .u32(opts.max_payload)
        .0;
    let head = Header {
        len: 16,
        kind: p::T_HELLO_REPLY,
        flags: 0,
        id: 0,
    }
    .encode();
    sg::write_all_fd(fd, &[&head[..], &reply[..]].concat()).map_err(ctx)?;
    stream.set_read_timeout(None).map_err(ctx)?;

    let w = Arc::new(Writer {
        stream: stream.try_clone().map_err(ctx)?,
        lock: Mutex::new(()),
        peer_max,
        next_id: AtomicU64::new(1),
        version,
    });
    let conn = Arc::new(Conn {
        pager,
        w,
        kernels: Mutex::new(HashMap::new()),
        pool: Mutex::new(Vec::new()),
    });
    let reply_stream = stream.try_clone().map_err(ctx)?;
    let worker_conn = conn.clone();
    let workers = WorkPool::new(
        PoolOptions {
            name: "pager-serve".into(),
            threads: opts.workers,
            // The reader waits when the workers are this far behind, so
            // one kernel side cannot queue without bound.
            capacity: Some(opts.workers.max(1) * 4),
            spin: Duration::ZERO,
            hook: None,
        },
        move |mut job: Job| {
            if worker_conn.handle(&mut job).is_err() {
                // Cannot even reply: end the connection.
                let _ = reply_stream.shutdown(Shutdown::Both);
            }
            worker_conn.give_back(job.body);
        },
    )
    .map_err(ctx)?;

    let result = loop {
        let mut h = [0u8; p::HEADER_LEN];
        match sg::read_exact_fd(fd, &mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(ctx(e)),
        }
        let hd = match Header::decode(&h, opts.max_payload).and_then(|hd| {
            let last = if version >= p::V_LOCK_COMPLETED {
                p::T_LOCK_COMPLETED
            } else {
                p::T_DESCRIBE
            };
            if !(p::T_INIT..=last).contains(&hd.kind) {
                return Err(PagerError::Protocol(format!(
                    "unknown request type {:#x}",
                    hd.kind
                )));
            }
            if hd.id == 0 || hd.id & p::PAGER_ID_BIT != 0 {
                return Err(PagerError::Protocol(format!(
                    "request id {:#x} is reserved",
                    hd.id
                )));
            }
            p::check_len(hd.kind, hd.len)?;
            Ok(hd)
        }) {
            Ok(hd) => hd,
            Err(e) => {
                send_error(&stream, &e.to_string());
                break Err(e);
            }
        };
        let mut body = conn.buf();
        body.resize(hd.len as usize, 0);
        if let Err(e) = sg::read_exact_fd(fd, &mut body) {
            break Err(ctx(e));
        }
        if workers.submit(Job { hd, body }).is_err() {
            break Ok(());
        }
    };
    // Queued requests are still served (their replies fail once the
    // stream is shut down) before the kernels are terminated below.
    workers.close();
    let _ = stream.shutdown(Shutdown::Both);
    workers.join();
    // The kernel side is gone: whatever it had mapped is released.
    let left: Vec<KernelId> = poison::lock(&conn.kernels)
        .drain()
        .map(|(_, k)| k)
        .collect();
    for k in left {
        let _ = conn.pager.terminate(k);
    }
    result
}
