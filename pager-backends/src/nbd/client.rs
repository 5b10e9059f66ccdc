//! An NBD client connection: one TCP or Unix socket, plain or TLS, many
//! requests in flight.
//!
//! Senders write request headers (and write payloads, gathered straight from
//! the caller's buffers, or through TLS) under a send lock; one reader
//! thread per connection reads replies, matches them by cookie and reads
//! read payloads into the waiting caller's buffers.

use super::proto::{self, Export};
use super::tls::TlsClient;
use super::tls_stream::TlsStream;
use super::transport::{self, Transport};
use crate::check::check_object_size;
use crate::deadline::{Deadline, HandshakePhase};
use crate::error::{PagerError, Result};
use crate::inflight::Inflight;
use crate::options::OpenOptions;
use crate::sg::Cursor;
use crate::uri::NbdTls;
use std::os::unix::ffi::OsStrExt;
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

pub struct NbdClient {
    transport: Transport,
    send_lock: Mutex<()>,
    inflight: Arc<Inflight<()>>,
    export: Export,
    timeout: Duration,
    /// Requests that may be left waiting for a late reply (inflight.rs).
    max_abandoned: usize,
    reader: Option<JoinHandle<()>>,
}

impl NbdClient {
    /// Connects to `addr` and negotiates `export`; with `tls`, the rest of
    /// the negotiation and all requests go over TLS, or nothing does.
    pub fn connect(
        addr: &NbdAddr,
        export: &str,
        tls: Option<&NbdTls>,
        opts: &OpenOptions,
    ) -> Result<NbdClient> {
        let target = addr.to_string();
        let ctx = |e| PagerError::io_context(format!("nbd server {target}"), e);
        // Certificate files are read before connecting: a local mistake is
        // reported as such, not as something the server did.
        let tls = tls.map(|t| TlsClient::new(t, addr)).transpose()?;
        // One deadline for everything from here to the export: each read
        // and write waits only for what is left of it, so a server that
        // trickles bytes cannot hold the open for longer.
        let deadline = Deadline::start("NBD", &target, opts.connect_timeout);
        let stream = deadline.during(
            HandshakePhase::Connect,
            transport::connect(addr, &deadline, &target),
        )?;
        let mut sock = deadline.bound(&stream);
        let greeting = deadline.during(HandshakePhase::Greeting, proto::greet(&mut sock))?;
        let (transport, export) = match tls {
            None => {
                let export = deadline.during(
                    HandshakePhase::Options,
                    proto::negotiate(&mut sock, export, greeting),
                )?;
                // From here the reader waits as long as it must; per-request
                // deadlines are enforced by the waiters (they shut the
                // socket down).
                stream
                    .set_timeouts(None, Some(opts.request_timeout))
                    .map_err(ctx)?;
                (Transport::Plain(Arc::new(stream)), export)
            }
            Some(mut tls) => {
                deadline.during(
                    HandshakePhase::StartTls,
                    proto::starttls(&mut sock).map_err(|e| tls.explain(e)),
                )?;
                deadline.during(HandshakePhase::Tls, tls.handshake(&mut sock))?;
                let export = deadline.during(
                    HandshakePhase::Options,
                    proto::negotiate(
                        &mut rustls::Stream::new(tls.session(), &mut sock),
                        export,
                        greeting,
                    )
                    .map_err(|e| tls.explain(e)),
                )?;
                let tls = TlsStream::new(tls.into_session(), stream, opts.request_timeout)
                    .map_err(ctx)?;
                (Transport::Tls(Arc::new(tls)), export)
            }
        };
        check_object_size(export.size, format_args!("nbd server {target}"))?;
        let inflight = Arc::new(Inflight::new(opts.max_in_flight));
        let (rtransport, rinflight) = (transport.clone(), inflight.clone());
        // Not the target: a socket name may hold bytes a thread name cannot.
        let reader =
            crate::spawn_hooked("nbd-reader".into(), opts.reader_hook.as_ref(), move || {
                reader_loop(rtransport, rinflight)
            })
            .map_err(ctx)?;
        Ok(NbdClient {
            transport,
            send_lock: Mutex::new(()),
            inflight,
            export,
            timeout: opts.request_timeout,
            max_abandoned: (opts.max_in_flight / 4).max(1),
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
        self.transport.shutdown();
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
                Some((b, s)) => self.transport.send(&head, &mut Cursor::new(b, s, len)),
                None => self.transport.send(&head, &mut Cursor::new(&[], 0, 0)),
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
        // A request left unanswered past the timeout is abandoned, not the
        // connection: the server's late reply is recognised by its cookie
        // and dropped. Only a server that leaves a quarter of the slots
        // unanswered is given up on.
        self.inflight
            .wait_or_abandon(t, self.timeout, self.max_abandoned, || self.kill())
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
            let _ = self.transport.send(&head, &mut Cursor::new(&[], 0, 0));
            self.transport.close();
        }
        self.kill();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn reader_loop(transport: Transport, inflight: Arc<Inflight<()>>) {
    let why = loop {
        let mut h = [0u8; 16];
        if let Err(e) = transport.recv(&mut h) {
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
        if claim.expect.kind == proto::CMD_READ && claim.abandoned {
            // A late answer to a read that timed out: its buffers went back
            // to their owner. Read the data and drop it.
            let mut sink = [0u8; 4096];
            let mut left = claim.expect.len;
            let mut lost = None;
            while left > 0 && lost.is_none() {
                let n = left.min(sink.len() as u64) as usize;
                lost = transport.recv(&mut sink[..n]).err();
                left -= n as u64;
            }
            if let Some(e) = lost {
                let why = format!("nbd connection lost mid-reply: {e}");
                inflight.set_dead(&why);
                inflight.complete(claim, Err(PagerError::Dead(why.clone())));
                break why;
            }
        } else if claim.expect.kind == proto::CMD_READ
            && let Some(raw) = claim.expect.bufs
        {
            // SAFETY: the claim keeps the requester blocked in `wait`.
            let bufs = unsafe { raw.get() };
            let mut c = Cursor::new(bufs, claim.expect.skip, claim.expect.len);
            if let Err(e) = transport.recv_into(&mut c) {
                let why = format!("nbd connection lost mid-reply: {e}");
                inflight.set_dead(&why);
                inflight.complete(claim, Err(PagerError::Dead(why.clone())));
                break why;
            }
        }
        inflight.complete(claim, Ok(()));
    };
    transport.shutdown();
    inflight.fail_all(&why);
}
