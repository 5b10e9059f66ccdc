//! The `nbd_tls_client` fuzz target (pager-backends/fuzz), shared by path
//! with its corpus replay test (pager-backends/tests/fuzz_corpus.rs): a
//! hostile NBD server that does STARTTLS and a proper TLS handshake
//! (rustls, a test certificate made once per process), then sends the
//! fuzzer's bytes as the plaintext inside TLS, cut into records where the
//! fuzzer says, while the real client (`NbdPager::connect`: its handshake,
//! its shared TLS stream and reader thread) opens the export and makes a
//! few calls with short timeouts.
//!
//! Input: byte 0 holds settings (bit 0: TLS 1.2 instead of 1.3; bit 1: hang
//! up at the end without close_notify), then the server's script, one
//! operation after another, each a tag byte (its low two bits) and its
//! operands:
//!
//! - `0, len: u16 BE, bytes`: plaintext in one write: one record, or a few
//!   if longer than 16 KiB;
//! - `1`: a KeyUpdate that asks the client for one back (TLS 1.3; nothing
//!   on 1.2);
//! - `2`: wait for the client's next message, an option or a request; after
//!   NBD_CMD_DISC, or if the client hangs up, the script stops;
//! - `3, len: u8, bytes`: plaintext in one short record.
//!
//! Operands cut short by the end of the input are taken as far as they go.
//! After the script the server sends close_notify (unless bit 1 says not
//! to), hangs up its side and reads whatever the client still sends.
//!
//! The client's calls, each after the one before returned: a 2-page read
//! at 0 scattered over two buffers, a 1-page write at page 1, a 1-page read
//! at page 2, a sync (NBD_CMD_FLUSH if the export has SEND_FLUSH) and a
//! 4-page read at 0. The NBD requests they send (more if the server's
//! block size splits a read) have cookies `(k + 1) << 32` for the `k`-th,
//! as long as none was abandoned; an abandoned request keeps its slot, and
//! the next ones take slot 1 (`(k + 1) << 32 | 1`). Up to one request may
//! be abandoned; the second timeout kills the connection.
//!
//! Checked: no panic, no hang (every wait is bounded by the client's
//! timeouts); no byte written outside the buffers a call was given, none
//! into a call's buffers after it returned, none into a write's buffers at
//! all; a read that succeeded past the export's end left zeroes there.

use pager_backends::nbd::{NbdAddr, NbdPager};
use pager_backends::{
    Access, KernelControl, KernelId, NbdTls, ObjectOffset, OpenOptions, PAGE_SIZE, Pager,
    PagerError,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection};
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use vm_memory::VolatileSlice;

/// The name the server's certificate is for; the client's tls-hostname.
const HOSTNAME: &str = "nbd.fuzz.invalid";

/// Bounds the server's socket waits. Never reached while the client keeps
/// to its own timeouts (it hangs up within them); a client that does not is
/// a hang libFuzzer reports (scripts/fuzz.sh: -timeout=60).
const BACKSTOP: Duration = Duration::from_secs(30);

const REQUEST_MAGIC: u32 = 0x2560_9513;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;

const PAGE: u64 = PAGE_SIZE;
const K: KernelId = KernelId(1);

/// How long the client waits: for the whole open (connect, STARTTLS, TLS,
/// options) and for each request.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    pub handshake: Duration,
    pub request: Duration,
}

/// The test certificate and the server settings, made once per process.
pub struct Fixture {
    /// The client's tls-certificates directory: `ca-cert.pem`.
    certs: tempfile::TempDir,
    tls13: Arc<ServerConfig>,
    tls12: Arc<ServerConfig>,
}

impl Fixture {
    pub fn new() -> Fixture {
        // The server writes to clients that may have hung up: that must be
        // EPIPE, not the end of the process. A libFuzzer binary's main is
        // not Rust's, which would have ignored SIGPIPE already.
        // SAFETY: setting a signal's disposition to "ignore".
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "nbd_tls_client fuzz CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().expect("server key");
        let leaf = CertificateParams::new(vec![HOSTNAME.to_string()])
            .expect("server parameters")
            .signed_by(&leaf_key, &issuer)
            .expect("server certificate");
        let certs = tempfile::tempdir().expect("certificate directory");
        std::fs::write(certs.path().join("ca-cert.pem"), ca_cert.pem()).expect("ca-cert.pem");

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = |version: &'static rustls::SupportedProtocolVersion| {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
            let config = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[version])
                .expect("protocol version")
                .with_no_client_auth()
                .with_single_cert(vec![leaf.der().clone()], key)
                .expect("server certificate and key");
            Arc::new(config)
        };
        Fixture {
            tls13: config(&rustls::version::TLS13),
            tls12: config(&rustls::version::TLS12),
            certs,
        }
    }

    /// The directory the certificate is in, for the fuzz target to remove
    /// at exit (its fixture is a static, never dropped; the replay test's
    /// is dropped, and this goes unused there).
    #[allow(dead_code)]
    pub fn certs_dir(&self) -> &Path {
        self.certs.path()
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

/// What one input did, for the replay test to hold named seeds to.
#[derive(Debug, Default)]
pub struct TlsOutcome {
    /// Why the open failed, if it did.
    pub refused: Option<PagerError>,
    /// The export: its size and whether it is read-only.
    pub export: Option<(u64, bool)>,
    /// Each call's result, in order.
    pub calls: Vec<Result<(), PagerError>>,
    /// What each read call left in its buffers, in order of the reads.
    pub reads: Vec<Vec<u8>>,
    /// The pager's description after the calls (says DEAD and why).
    pub described: String,
}

/// Runs one input. Panics if the client broke one of the checks above.
pub fn run(fx: &Fixture, data: &[u8], patience: Patience) -> TlsOutcome {
    let mut out = TlsOutcome::default();
    let Some((&settings, script)) = data.split_first() else {
        return out;
    };
    // A socket of our own per input: nothing left over from the last one
    // can reach this one. Abstract, so there is no file to remove.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "duality-nbd-tls-fuzz-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let listener = SocketAddr::from_abstract_name(name.as_bytes())
        .and_then(|a| UnixListener::bind_addr(&a))
        .expect("listening on an abstract unix socket");
    let server = Server {
        config: if settings & 1 != 0 {
            fx.tls12.clone()
        } else {
            fx.tls13.clone()
        },
        script,
        close_notify: settings & 2 == 0,
    };
    std::thread::scope(|s| {
        s.spawn(|| server.serve(&listener, patience.handshake * 2));
        client(fx, &name, patience, &mut out);
    });
    out
}

/// The hostile server.
struct Server<'a> {
    config: Arc<ServerConfig>,
    script: &'a [u8],
    close_notify: bool,
}

impl Server<'_> {
    fn serve(&self, listener: &UnixListener, accept_within: Duration) {
        let Some(mut sock) = accept(listener, accept_within) else {
            return;
        };
        if sock.set_read_timeout(Some(BACKSTOP)).is_err()
            || sock.set_write_timeout(Some(BACKSTOP)).is_err()
            || starttls(&mut sock).is_err()
        {
            return;
        }
        let Ok(mut conn) = ServerConnection::new(self.config.clone()) else {
            return;
        };
        while conn.is_handshaking() {
            if conn.complete_io(&mut sock).is_err() {
                return;
            }
        }
        if flush(&mut conn, &mut sock).is_err() {
            return;
        }
        self.play(&mut conn, &mut sock);
        if self.close_notify {
            conn.send_close_notify();
            let _ = flush(&mut conn, &mut sock);
        }
        // Half-closed, and drained: the client sees the end of the stream
        // (not a reset) and its requests still go somewhere, until it hangs
        // up itself.
        let _ = sock.shutdown(Shutdown::Write);
        let _ = io::copy(&mut sock, &mut io::sink());
    }

    /// Plays the script until it ends or the client is gone.
    fn play(&self, conn: &mut ServerConnection, sock: &mut UnixStream) {
        let mut rest = self.script;
        while let Some((&tag, tail)) = rest.split_first() {
            rest = tail;
            let going = match tag & 3 {
                0 => {
                    let (len, tail) = take(rest, 2);
                    let len = len.iter().fold(0usize, |n, &b| n << 8 | usize::from(b));
                    let (bytes, tail) = take(tail, len);
                    rest = tail;
                    send(conn, sock, bytes)
                }
                // Refused on TLS 1.2, which has no KeyUpdate: nothing sent.
                1 => conn.refresh_traffic_keys().is_err() || flush(conn, sock).is_ok(),
                2 => next_message(conn, sock),
                _ => {
                    let (len, tail) = take(rest, 1);
                    let (bytes, tail) = take(tail, len.first().map_or(0, |&n| usize::from(n)));
                    rest = tail;
                    send(conn, sock, bytes)
                }
            };
            if !going {
                return;
            }
        }
    }
}

/// Up to `n` bytes off the front of `b`, and the rest.
fn take(b: &[u8], n: usize) -> (&[u8], &[u8]) {
    b.split_at(n.min(b.len()))
}

/// The client's connection, if it comes within `within`.
fn accept(listener: &UnixListener, within: Duration) -> Option<UnixStream> {
    let mut p = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(within.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut p, 1, ms) } != 1 {
        return None;
    }
    listener.accept().ok().map(|(s, _)| s)
}

/// The plaintext part: the greeting (fixed newstyle, no zeroes), the
/// client's flags, its NBD_OPT_STARTTLS and our ACK.
fn starttls(sock: &mut UnixStream) -> io::Result<()> {
    sock.write_all(b"NBDMAGICIHAVEOPT\x00\x03")?;
    let mut flags_and_option = [0u8; 4 + 16];
    sock.read_exact(&mut flags_and_option)?;
    let option = &flags_and_option[4..];
    if &option[..8] != b"IHAVEOPT" || option[8..12] != 5u32.to_be_bytes() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not STARTTLS"));
    }
    let mut ack = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
    ack.extend_from_slice(&5u32.to_be_bytes());
    ack.extend_from_slice(&1u32.to_be_bytes());
    ack.extend_from_slice(&0u32.to_be_bytes());
    sock.write_all(&ack)
}

/// Puts everything rustls has queued on the socket.
fn flush(conn: &mut ServerConnection, sock: &mut UnixStream) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(sock)?;
    }
    Ok(())
}

/// `bytes` as plaintext, in as few records as rustls makes of one write.
fn send(conn: &mut ServerConnection, sock: &mut UnixStream, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match conn.writer().write(bytes) {
            // Nothing taken: rustls's buffer is full, and the flush below
            // empties it.
            Ok(n) => bytes = &bytes[n..],
            Err(_) => return false,
        }
        if flush(conn, sock).is_err() {
            return false;
        }
    }
    true
}

/// Reads the client's next message: an option (`IHAVEOPT`, its number,
/// its length, its data) or a request (28 bytes, then a write's data).
/// False when there is none to come.
fn next_message(conn: &mut ServerConnection, sock: &mut UnixStream) -> bool {
    let mut s = rustls::Stream::new(conn, sock);
    let mut magic = [0u8; 4];
    if s.read_exact(&mut magic).is_err() {
        return false;
    }
    let mut head = [0u8; 24];
    let (cmd, len) = if &magic == b"IHAV" {
        if s.read_exact(&mut head[..12]).is_err() {
            return false;
        }
        (
            None,
            u32::from_be_bytes([head[8], head[9], head[10], head[11]]),
        )
    } else if u32::from_be_bytes(magic) == REQUEST_MAGIC {
        if s.read_exact(&mut head).is_err() {
            return false;
        }
        let cmd = u16::from_be_bytes([head[2], head[3]]);
        let len = u32::from_be_bytes([head[20], head[21], head[22], head[23]]);
        (Some(cmd), if cmd == CMD_WRITE { len } else { 0 })
    } else {
        // Our own client sent something that is neither.
        return false;
    };
    let len = u64::from(len);
    let skipped = io::copy(&mut Read::by_ref(&mut s).take(len), &mut io::sink());
    skipped.is_ok_and(|n| n == len) && cmd != Some(CMD_DISC)
}

/// The client never hears from the kernel side here.
struct NoKernel;

impl KernelControl for NoKernel {
    fn lock_request(
        &self,
        _: ObjectOffset,
        _: u64,
        _: Access,
        _: bool,
        _: bool,
    ) -> pager_backends::Result<()> {
        Ok(())
    }
    fn offer(&self, _: ObjectOffset, _: &[u8], _: Access) -> pager_backends::Result<()> {
        Ok(())
    }
    fn set_cache(&self, _: bool) -> pager_backends::Result<()> {
        Ok(())
    }
    fn destroy(&self, _: &str) -> pager_backends::Result<()> {
        Ok(())
    }
}

/// A caller's buffer with guard bytes either side, to see writes that
/// miss it.
struct Guarded(Vec<u8>);

const GUARD: usize = 64;
const GUARD_BYTE: u8 = 0xa5;

impl Guarded {
    fn new(len: usize, fill: u8) -> Guarded {
        let mut v = vec![GUARD_BYTE; len + 2 * GUARD];
        v[GUARD..GUARD + len].fill(fill);
        Guarded(v)
    }
    fn body(&self) -> &[u8] {
        &self.0[GUARD..self.0.len() - GUARD]
    }
    fn slice(&mut self) -> VolatileSlice<'_> {
        let end = self.0.len() - GUARD;
        VolatileSlice::from(&mut self.0[GUARD..end])
    }
    fn guards_intact(&self) -> bool {
        let (head, tail) = (&self.0[..GUARD], &self.0[self.0.len() - GUARD..]);
        head.iter().chain(tail).all(|&b| b == GUARD_BYTE)
    }
}

/// One of the client's calls.
enum Call {
    /// Reads at the offset into buffers of these many pages.
    Read(u64, &'static [u64]),
    /// Writes this many pages at the offset.
    Write(u64, u64),
    Sync,
}

const CALLS: [Call; 5] = [
    Call::Read(0, &[1, 1]),
    Call::Write(PAGE, 1),
    Call::Read(2 * PAGE, &[1]),
    Call::Sync,
    Call::Read(0, &[4]),
];

/// A call's buffers as it returned.
struct Returned {
    call: usize,
    bufs: Vec<Guarded>,
    at_return: Vec<u8>,
}

fn client(fx: &Fixture, name: &str, patience: Patience, out: &mut TlsOutcome) {
    let opts = OpenOptions {
        connect_timeout: patience.handshake,
        request_timeout: patience.request,
        max_in_flight: 4,
        ..OpenOptions::default()
    };
    let tls = NbdTls {
        certificates: Some(fx.certs.path().to_path_buf()),
        hostname: Some(HOSTNAME.into()),
    };
    let mut path = vec![0u8];
    path.extend_from_slice(name.as_bytes());
    let addr = NbdAddr::Unix(PathBuf::from(OsString::from_vec(path)));
    let pager = match NbdPager::connect(&addr, "fuzz", Some(&tls), &opts) {
        Ok(p) => p,
        Err(e) => {
            out.refused = Some(e);
            return;
        }
    };
    let info = pager
        .init(K, Arc::new(NoKernel))
        .expect("init asks nothing of the server");
    out.export = Some((info.size, info.read_only));

    let mut returned = Vec::new();
    for (i, call) in CALLS.iter().enumerate() {
        let (mut bufs, offset) = match call {
            Call::Read(offset, pages) => (
                pages
                    .iter()
                    .map(|&n| Guarded::new((n * PAGE) as usize, 0xee))
                    .collect::<Vec<_>>(),
                *offset,
            ),
            Call::Write(offset, pages) => {
                (vec![Guarded::new((pages * PAGE) as usize, 0x5a)], *offset)
            }
            Call::Sync => (Vec::new(), 0),
        };
        let len = bufs.iter().map(|b| b.body().len() as u64).sum::<u64>();
        let result = {
            let slices: Vec<_> = bufs.iter_mut().map(Guarded::slice).collect();
            match call {
                Call::Read(..) => pager
                    .data_request(K, ObjectOffset(offset), len, Access::READ, &slices)
                    .map(|_| ()),
                Call::Write(..) => pager.data_write(K, ObjectOffset(offset), len, &slices),
                Call::Sync => pager.sync(),
            }
        };
        let at_return: Vec<u8> = bufs.iter().flat_map(|b| b.body().to_vec()).collect();
        match call {
            Call::Read(..) => {
                // Past the export's end a read is zeroes, not the server's
                // data or what the buffer held before.
                let past_end = info.size.saturating_sub(offset).min(len) as usize;
                assert!(
                    result.is_err() || at_return[past_end..].iter().all(|&b| b == 0),
                    "call {i}: a read past the export's end left something other than zeroes"
                );
                out.reads.push(at_return.clone());
            }
            Call::Write(..) => assert!(
                at_return.iter().all(|&b| b == 0x5a),
                "call {i}: a write changed its caller's data"
            ),
            Call::Sync => {}
        }
        out.calls.push(result);
        returned.push(Returned {
            call: i,
            bufs,
            at_return,
        });
    }
    out.described = pager.describe();
    // Joins the reader thread: anything it was going to write, it has.
    drop(pager);
    for r in &returned {
        let now: Vec<u8> = r.bufs.iter().flat_map(|b| b.body().to_vec()).collect();
        assert!(
            now == r.at_return,
            "call {}: its buffers changed after it returned",
            r.call
        );
        assert!(
            r.bufs.iter().all(Guarded::guards_intact),
            "call {}: bytes written outside its buffers",
            r.call
        );
    }
}
