//! One TLS session shared by a connection's senders and its reader thread.
//!
//! On a plain socket, senders write requests (under the client's send lock)
//! while the reader thread reads replies, each with its own system calls. A
//! rustls session is one state machine for both directions, so here it sits
//! behind a mutex, and the socket is non-blocking: the lock is held only to
//! move bytes between the session and the socket or to take plaintext out,
//! never across a wait. A thread that has to wait (nothing to read yet, the
//! send buffer full) lets go of the lock and polls the socket. Holding it
//! while blocked would deadlock against a server that stops reading
//! requests until its replies are read: the sender would sleep on a full
//! socket with the lock held, and the reader could not take the lock to
//! read those replies.
//!
//! The alternative, one I/O thread owning the session, would copy each
//! write payload into a queue and cost two thread hand-offs per request,
//! and would need its own request matching beside the reader-thread design
//! plain connections use. Here senders encrypt on their own threads and the
//! reader decrypts on its own; only the short session updates take turns.
//!
//! Page data goes through a bounce buffer on the stack: rustls reads and
//! writes byte slices, and guest memory is only touched by copies.

use super::transport::Stream;
use crate::poison::lock;
use crate::sg::Cursor;
use rustls::ClientConnection;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

/// Bytes per copy to or from the session: one full TLS record.
const CHUNK: usize = 16 * 1024;

pub(crate) struct TlsStream {
    session: Mutex<ClientConnection>,
    sock: Stream,
    /// How long a write may wait for room on the socket before the
    /// connection is given up (as SO_SNDTIMEO does for plain sockets).
    write_timeout: Duration,
}

/// The socket as rustls sees it: raw reads, and sends that cannot raise
/// SIGPIPE.
struct Fd(RawFd);

impl Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reading into our own buffer.
        let r = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

impl Write for Fd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: sending from our own buffer. MSG_NOSIGNAL: a dead peer
        // gives EPIPE instead of killing the VMM.
        let r = unsafe { libc::send(self.0, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Waits until `fd` is ready for `events`, or `timeout` passes (false).
/// A socket that was shut down or failed counts as ready: the next read or
/// write reports it.
fn wait_for(fd: RawFd, events: libc::c_short, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = match timeout {
        None => -1,
        Some(t) => i32::try_from(t.as_millis().max(1)).unwrap_or(i32::MAX),
    };
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r >= 0 {
            return Ok(r > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes what the session has queued until done or the socket is full
/// (false). The caller holds the session lock.
fn send_queued(session: &mut ClientConnection, fd: RawFd) -> io::Result<bool> {
    while session.wants_write() {
        match session.write_tls(&mut Fd(fd)) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "socket accepted nothing",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl TlsStream {
    /// Takes over a session whose handshake is done, and its socket.
    pub(crate) fn new(
        session: ClientConnection,
        sock: Stream,
        write_timeout: Duration,
    ) -> io::Result<TlsStream> {
        sock.set_nonblocking()?;
        Ok(TlsStream {
            session: Mutex::new(session),
            sock,
            write_timeout,
        })
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Reads some plaintext into `buf`, waiting as long as it takes (the
    /// reader thread; a shutdown of the socket ends the wait).
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut s = lock(&self.session);
                match s.reader().read(buf) {
                    Ok(0) if !buf.is_empty() => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the TLS session",
                        ));
                    }
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                match s.read_tls(&mut Fd(self.fd())) {
                    // Ok(0) is the end of the stream: rustls notes it and the
                    // next read above reports it.
                    Ok(_) => {
                        let processed = s.process_new_packets();
                        // Whatever the session must answer (a key update, an
                        // alert) goes out now if the socket has room, else
                        // with the next request.
                        let _ = send_queued(&mut s, self.fd());
                        processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            wait_for(self.fd(), libc::POLLIN, None)?;
        }
    }

    /// Fills `buf` with plaintext.
    pub(crate) fn read_exact(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            done += self.read(&mut buf[done..])?;
        }
        Ok(())
    }

    /// Fills the cursor's range with plaintext.
    pub(crate) fn read_exact_into(&self, c: &mut Cursor<'_, '_>) -> io::Result<()> {
        let mut bounce = [0u8; CHUNK];
        while c.remaining() > 0 {
            let want = (c.remaining() as usize).min(CHUNK);
            let n = self.read(&mut bounce[..want])?;
            let before = c.remaining();
            c.copy_in(&bounce[..n]);
            if c.remaining() + n as u64 != before {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "reply buffers shorter than the request",
                ));
            }
        }
        Ok(())
    }

    /// Waits until everything the session has queued is on the socket. A
    /// socket that takes nothing for `write_timeout` fails the write.
    fn flush(&self) -> io::Result<()> {
        loop {
            if send_queued(&mut lock(&self.session), self.fd())? {
                return Ok(());
            }
            if !wait_for(self.fd(), libc::POLLOUT, Some(self.write_timeout))? {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "socket timed out"));
            }
        }
    }

    /// Encrypts `data`; when rustls's outgoing buffer is full, flushes.
    fn push(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = lock(&self.session).writer().write(data)?;
            data = &data[n..];
            if n == 0 {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Writes `head` and then the cursor's range, and waits until all of it
    /// is on the socket. Senders take turns (the client's send lock), so
    /// requests are not interleaved; a small request is one record.
    pub(crate) fn write_all_with(&self, head: &[u8], c: &mut Cursor<'_, '_>) -> io::Result<()> {
        let mut bounce = [0u8; CHUNK];
        let mut head = head;
        loop {
            let h = head.len().min(CHUNK);
            bounce[..h].copy_from_slice(&head[..h]);
            head = &head[h..];
            let take = (c.remaining() as usize).min(CHUNK - h);
            let before = c.remaining();
            c.copy_out(&mut bounce[h..h + take]);
            if c.remaining() + take as u64 != before {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "request buffers shorter than the request",
                ));
            }
            if h + take == 0 {
                break;
            }
            self.push(&bounce[..h + take])?;
        }
        self.flush()
    }

    /// Ends the session politely (close_notify), if the socket has room.
    pub(crate) fn close(&self) {
        let mut s = lock(&self.session);
        s.send_close_notify();
        let _ = send_queued(&mut s, self.fd());
    }

    /// Shuts the socket down: every wait on it ends and reports an error.
    pub(crate) fn shutdown(&self) -> io::Result<()> {
        self.sock.shutdown()
    }
}
