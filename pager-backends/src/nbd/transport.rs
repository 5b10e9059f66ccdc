//! What an NBD connection runs on: a TCP or Unix socket, carrying the
//! protocol in plaintext or inside TLS. Senders write requests through it
//! (taking turns under the client's send lock) while the one reader thread
//! reads replies.

use super::client::NbdAddr;
use super::tls_stream::TlsStream;
use crate::deadline::{self, Deadline, HandshakePhase};
use crate::error::{PagerError, Result};
use crate::sg::{self, Cursor};
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

/// The socket, whichever kind: the protocol is the same bytes over either.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    pub(crate) fn set_timeouts(
        &self,
        read: Option<Duration>,
        write: Option<Duration>,
    ) -> std::io::Result<()> {
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
    pub(crate) fn set_nonblocking(&self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(true),
            Stream::Unix(s) => s.set_nonblocking(true),
        }
    }
    pub(crate) fn shutdown(&self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
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

/// `host`'s addresses: an address literal as it is, a name by the system
/// resolver within the deadline.
fn resolve(host: &str, port: u16, deadline: &Deadline) -> std::io::Result<Vec<SocketAddr>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let name = host.to_string();
    deadline.resolve(move || {
        (name.as_str(), port)
            .to_socket_addrs()
            .map(Iterator::collect)
    })
}

/// Connects over TCP to the first of `host`'s addresses that answers, all
/// of them, and resolving the name, together within the deadline.
fn connect_tcp(host: &str, port: u16, deadline: &Deadline, target: &str) -> Result<TcpStream> {
    let addrs = deadline.during(
        HandshakePhase::Resolve,
        resolve(host, port, deadline)
            .map_err(|e| PagerError::io_context(format!("nbd {target}"), e)),
    )?;
    let mut last = None;
    for a in addrs {
        let left = match deadline.left() {
            Ok(t) => t,
            Err(e) => {
                last = Some(e);
                break;
            }
        };
        match TcpStream::connect_timeout(&a, left) {
            Ok(s) => {
                s.set_nodelay(true)
                    .map_err(|e| PagerError::io_context(format!("nbd server {target}"), e))?;
                return Ok(s);
            }
            Err(e) => last = Some(deadline.blame(e)),
        }
    }
    Err(PagerError::io_context(
        format!("nbd server {target}"),
        last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "host has no addresses")
        }),
    ))
}

/// Connects to the server `addr` names, by the deadline; `target` names it
/// in errors.
pub(crate) fn connect(addr: &NbdAddr, deadline: &Deadline, target: &str) -> Result<Stream> {
    Ok(match addr {
        NbdAddr::Tcp { host, port } => Stream::Tcp(connect_tcp(host, *port, deadline, target)?),
        NbdAddr::Unix(path) => Stream::Unix(
            deadline::connect_unix(path, deadline)
                .map_err(|e| PagerError::io_context(format!("nbd server {target}"), e))?,
        ),
    })
}

/// The connection after the handshake, shared by the senders and the
/// reader thread.
#[derive(Clone)]
pub(crate) enum Transport {
    /// Blocking socket; each side makes its own system calls on it.
    Plain(Arc<Stream>),
    /// One TLS session for both sides (tls_stream.rs says how).
    Tls(Arc<TlsStream>),
}

impl Transport {
    /// Writes `head` and then the cursor's range, all of it or an error.
    pub(crate) fn send(&self, head: &[u8], c: &mut Cursor<'_, '_>) -> std::io::Result<()> {
        match self {
            Transport::Plain(s) => sg::write_all_with(s.as_raw_fd(), head, c),
            Transport::Tls(t) => t.write_all_with(head, c),
        }
    }

    /// Fills `buf` (the reader thread).
    pub(crate) fn recv(&self, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Transport::Plain(s) => sg::read_exact_fd(s.as_raw_fd(), buf),
            Transport::Tls(t) => t.read_exact(buf),
        }
    }

    /// Fills the cursor's range (the reader thread).
    pub(crate) fn recv_into(&self, c: &mut Cursor<'_, '_>) -> std::io::Result<()> {
        match self {
            Transport::Plain(s) => sg::read_exact_into(s.as_raw_fd(), c),
            Transport::Tls(t) => t.read_exact_into(c),
        }
    }

    /// Says goodbye at the transport level, where there is a way to: TLS's
    /// close_notify.
    pub(crate) fn close(&self) {
        if let Transport::Tls(t) = self {
            t.close();
        }
    }

    /// Shuts the socket down: every wait on it ends with an error.
    pub(crate) fn shutdown(&self) {
        let _ = match self {
            Transport::Plain(s) => s.shutdown(),
            Transport::Tls(t) => t.shutdown(),
        };
    }
}
