//! An NBD client connection: one TCP or Unix socket, many requests in
//! flight.
//!
//! Senders write request headers (and write payloads, gathered straight from
//! the caller's buffers) under a send lock; one reader thread per connection
//! reads replies, matches them by cookie and reads read payloads straight
//! into the waiting caller's buffers.

use super::proto::{self, Export};
use crate::check::check_object_size;
use crate::error::{PagerError, Result};
use crate::inflight::Inflight;
use crate::options::OpenOptions;
use crate::sg::{self, Cursor};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use vm_memory::VolatileSlice;

/// Fuzz entry point for the handshake and the reader (pager-backends/fuzz
/// `nbd_client`).
#[doc(hidden)]
pub mod fuzz;

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    Tcp {
        host: String,
        port: u16,
    },
    /// A Unix socket path; a leading NUL names Linux's abstract namespace.
    Unix(PathBuf),
}

impl std::fmt::Display for NbdAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            NbdAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            NbdAddr::Unix(p) => match p.as_os_str().as_bytes().strip_prefix(b"\0") {
                Some(name) => write!(f, "unix socket @{}", String::from_utf8_lossy(name)),
                None => write!(f, "unix socket {}", p.display()),
            },
        }
    }
}

/// The connection, whichever transport carries it: the protocol is the
/// same bytes over either.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
        }
    }
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

fn connect_tcp(host: &str, port: u16, opts: &OpenOptions, target: &str) -> Result<TcpStream> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| PagerError::io_context(format!("nbd {target}"), e))?;
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, opts.connect_timeout) {
            Ok(s) => {
                s.set_nodelay(true)
                    .map_err(|e| PagerError::io_context(format!("nbd server {target}"), e))?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(PagerError::io_context(
        format!("nbd server {target}"),
        last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "host has no addresses")
        }),
    ))
}

/// Connects to a Unix socket. A local connect does not wait on a network:
/// it succeeds, or fails at once (no listener, backlog full).
fn connect_unix(path: &std::path::Path, target: &str) -> Result<UnixStream> {
    let ctx = |e| PagerError::io_context(format!("nbd server {target}"), e);
    match path.as_os_str().as_bytes().strip_prefix(b"\0") {
        Some(name) => {
            let addr = SocketAddr::from_abstract_name(name).map_err(ctx)?;
            UnixStream::connect_addr(&addr).map_err(ctx)
        }
        None => UnixStream::connect(path).map_err(ctx),
    }
}

pub struct NbdClient {
    stream: Stream,
    send_lock: Mutex<()>,
    inflight: Arc<Inflight<()>>,
    export: Export,
    timeout: Duration,
    reader: Option<JoinHandle<()>>,
}

impl NbdClient {
    pub fn connect(addr: &NbdAddr, export: &str, opts: &OpenOptions) -> Result<NbdClient> {
        let target = addr.to_string();
        let mut stream = match addr {
            NbdAddr::Tcp { host, port } => Stream::Tcp(connect_tcp(host, *port, opts, &target)?),
            NbdAddr::Unix(path) => Stream::Unix(connect_unix(path, &target)?),
        };
        let ctx = |e| PagerError::io_context(format!("nbd server {target}"), e);
        stream
            .set_timeouts(Some(opts.connect_timeout), Some(opts.connect_timeout))
            .map_err(ctx)?;
        let export = proto::handshake(&mut stream, export)?;
        check_object_size(export.size, format_args!("nbd server {target}"))?;
        // From here the reader waits as long as it must; per-request
        // deadlines are enforced by the waiters (they shut the socket down).
        stream
            .set_timeouts(None, Some(opts.request_timeout))
            .map_err(ctx)?;
        let inflight = Arc::new(Inflight::new(opts.max_in_flight));
        let rstream = stream.try_clone().map_err(ctx)?;
        let rinflight = inflight.clone();
        let reader = std::thread::Builder::new()
            // Not the target: a socket name may hold bytes a thread name cannot.
            .name("nbd-reader".into())
            .spawn(move || reader_loop(rstream, rinflight))
            .map_err(ctx)?;
        Ok(NbdClient {
            stream,
            send_lock: Mutex::new(()),
            inflight,
            export,
            timeout: opts.request_timeout,
            reader: Some(reader),
        })
    }

    pub fn size(&self) -> u64 {
        self.export.size
    }
    pub fn read_only(&self) -> bool {
        self.export.flags & proto::TFLAG_READ_ONLY != 0
    }
    pub fn can_flush(&self) -> bool {
        self.export.flags & proto::TFLAG_SEND_FLUSH != 0
    }
    /// Largest single NBD request; larger ones are split.
    pub fn max_request(&self) -> u64 {
        u64::from(self.export.max_block.unwrap_or(32 << 20)).clamp(crate::PAGE_SIZE, 32 << 20)
    }

    fn kill(&self) {
        let _ = self.stream.shutdown();
    }

    /// Sends one request and waits for its reply. `data` is the write
    /// payload: (bufs, skip, len).
    fn roundtrip(
        &self,
        cmd: u16,
        offset: u64,
        len: u64,
        read_into: Option<(&[VolatileSlice<'_>], u64)>,
        write_from: Option<(&[VolatileSlice<'_>], u64)>,
    ) -> Result<()> {
        let wire_len =
            u32::try_from(len).map_err(|_| PagerError::Protocol("nbd request too long".into()))?;
        let (bufs, skip) = match read_into {
            Some((b, s)) => (Some(b), s),
            None => (None, 0),
        };
        let t = self.inflight.start(cmd, len, skip, bufs, self.timeout)?;
        let head = proto::request(cmd, t.id(), offset, wire_len);
        let sent = {
            let _g = self
                .send_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match write_from {
                Some((b, s)) => {
                    sg::write_all_with(self.stream.as_raw_fd(), &head, &mut Cursor::new(b, s, len))
                }
                None => sg::write_all_fd(self.stream.as_raw_fd(), &head),
            }
        };
        if let Err(e) = sent {
            // A half-sent request leaves the stream unframed: the connection
            // is unusable for everyone.
            // Mark it dead here rather than leave it to the reader thread,
            // which may not have seen the hang-up yet: callers and
            // `describe` must agree the moment this error is returned.
            let why = format!("nbd: sending request failed: {e}");
            self.inflight.cancel(t);
            self.inflight.fail_all(&why);
            self.kill();
            return Err(PagerError::Dead(why));
        }
        self.inflight.wait(t, self.timeout, || self.kill())
    }

    pub fn read(&self, offset: u64, len: u64, bufs: &[VolatileSlice<'_>], skip: u64) -> Result<()> {
        self.roundtrip(proto::CMD_READ, offset, len, Some((bufs, skip)), None)
    }

    pub fn write(
        &self,
        offset: u64,
        len: u64,
        bufs: &[VolatileSlice<'_>],
        skip: u64,
    ) -> Result<()> {
        self.roundtrip(proto::CMD_WRITE, offset, len, None, Some((bufs, skip)))
    }

    pub fn flush(&self) -> Result<()> {
        self.roundtrip(proto::CMD_FLUSH, 0, 0, None, None)
    }

    pub fn dead(&self) -> Option<String> {
        self.inflight.dead()
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        if self.inflight.dead().is_none() {
            let head = proto::request(proto::CMD_DISC, 0, 0, 0);
            let _g = self
                .send_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let _ = sg::write_all_fd(self.stream.as_raw_fd(), &head);
        }
        self.kill();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn reader_loop(stream: Stream, inflight: Arc<Inflight<()>>) {
    let fd = stream.as_raw_fd();
    let why = loop {
        let mut h = [0u8; 16];
        if let Err(e) = sg::read_exact_fd(fd, &mut h) {
            break format!("nbd connection lost: {e}");
        }
        let (err, cookie) = match proto::parse_reply(&h) {
            Ok(x) => x,
            Err(e) => break e.to_string(),
        };
        let claim = match inflight.claim(cookie) {
            Ok(c) => c,
            Err(e) => break format!("nbd: {e}"),
        };
        if err != 0 {
            // Simple replies carry no payload on error.
            let e = std::io::Error::from_raw_os_error(err as i32);
            inflight.complete(claim, Err(PagerError::io_context("nbd server", e)));
            continue;
        }
        if claim.expect.kind == proto::CMD_READ
            && let Some(raw) = claim.expect.bufs
        {
            // SAFETY: the claim keeps the requester blocked in `wait`.
            let bufs = unsafe { raw.get() };
            let mut c = Cursor::new(bufs, claim.expect.skip, claim.expect.len);
            if let Err(e) = sg::read_exact_into(fd, &mut c) {
                let why = format!("nbd connection lost mid-reply: {e}");
                inflight.complete(claim, Err(PagerError::Dead(why.clone())));
                break why;
            }
        }
        inflight.complete(claim, Ok(()));
    };
    let _ = stream.shutdown();
    inflight.fail_all(&why);
}
