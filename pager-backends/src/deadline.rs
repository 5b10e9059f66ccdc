//! One deadline for opening a connection to a remote pager or NBD server:
//! the connect and the whole handshake (NBD negotiation, STARTTLS, TLS, the
//! external pager's hello). A timeout on each read alone bounds nothing: a
//! peer that sends one byte just before each read would time out holds the
//! handshake open as long as it likes. Here every blocking call waits at
//! most until the deadline, so the whole is bounded by it.

use crate::error::PagerError;
use socket2::SockRef;
use socket2::{Domain, SockAddr, Socket, Type};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where a handshake was when its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakePhase {
    /// Resolving the server's host name (the system resolver).
    Resolve,
    /// Connecting the socket: a TCP connect, or a Unix socket whose
    /// listener's backlog is full because it accepts nothing.
    Connect,
    /// NBD: the server's greeting and our flags.
    Greeting,
    /// NBD: asking the server to start TLS (NBD_OPT_STARTTLS).
    StartTls,
    /// NBD: the TLS handshake.
    Tls,
    /// NBD: the options that pick the export (NBD_OPT_GO and its replies).
    Options,
    /// External pager: HELLO and HELLO_REPLY.
    Hello,
}

impl std::fmt::Display for HandshakePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HandshakePhase::Resolve => "resolving the host name",
            HandshakePhase::Connect => "connect",
            HandshakePhase::Greeting => "the greeting",
            HandshakePhase::StartTls => "STARTTLS",
            HandshakePhase::Tls => "the TLS handshake",
            HandshakePhase::Options => "option negotiation",
            HandshakePhase::Hello => "the hello exchange",
        })
    }
}

/// The deadline of one connection's opening, and what the error names.
pub(crate) struct Deadline {
    /// The protocol ("NBD", "external pager") and the peer, for the error.
    protocol: &'static str,
    peer: String,
    budget: Duration,
    /// None: so far away that `Instant` cannot hold it.
    end: Option<Instant>,
    /// A wait was cut short by the deadline: set, the error that ends a
    /// phase is the deadline's, whatever the code that saw it made of it.
    passed: Cell<bool>,
}

impl Deadline {
    /// Starts the clock: `budget` from now.
    pub(crate) fn start(protocol: &'static str, peer: &str, budget: Duration) -> Deadline {
        Deadline {
            protocol,
            peer: peer.to_string(),
            budget,
            end: Instant::now().checked_add(budget),
            passed: Cell::new(false),
        }
    }

    /// The time left, at least a microsecond (a socket timeout that rounds
    /// to zero would mean no timeout at all); once none is left, an error,
    /// and the deadline counts as what stopped the caller.
    pub(crate) fn left(&self) -> io::Result<Duration> {
        let Some(end) = self.end else {
            return Ok(Duration::MAX);
        };
        match end.checked_duration_since(Instant::now()) {
            Some(d) if !d.is_zero() => Ok(d.max(Duration::from_micros(1))),
            _ => {
                self.passed.set(true);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("handshake deadline of {:?} passed", self.budget),
                ))
            }
        }
    }

    /// `e`, from a wait given `left()` as its limit. If it timed out with no
    /// time left, the deadline is what stopped it.
    pub(crate) fn blame(&self, e: io::Error) -> io::Error {
        if timed_out(&e) {
            let _ = self.left();
        }
        e
    }

    /// The error for a handshake whose deadline passed in `phase`.
    pub(crate) fn error(&self, phase: HandshakePhase) -> PagerError {
        PagerError::HandshakeTimeout {
            protocol: self.protocol,
            peer: self.peer.clone(),
            within: self.budget,
            phase,
        }
    }

    /// `r`, unless the deadline is what ended `phase`: then its error.
    pub(crate) fn during<T>(&self, phase: HandshakePhase, r: crate::Result<T>) -> crate::Result<T> {
        match r {
            // An inner phase already named itself.
            Err(e @ PagerError::HandshakeTimeout { .. }) => Err(e),
            Err(_) if self.passed.get() => Err(self.error(phase)),
            r => r,
        }
    }

    /// `lookup`'s answer if it comes before the deadline, else the deadline's
    /// error. The system resolver (getaddrinfo) takes no timeout of its own
    /// and may wait on slow name servers far longer than the deadline, so it
    /// runs on a thread of its own; one that answers late is left to finish
    /// and its answer dropped. Opens happen before the threads confine
    /// themselves (seccomp), where starting a thread is still allowed.
    pub(crate) fn resolve<T: Send + 'static>(
        &self,
        lookup: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("resolver".into())
            .spawn(move || {
                // The receiver is gone once the deadline passed: nothing to tell.
                let _ = tx.send(lookup());
            })?;
        match rx.recv_timeout(self.left()?) {
            Ok(answer) => answer,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                self.passed.set(true);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the host name was not resolved in time",
                ))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::other(
                "the resolver thread ended without an answer",
            )),
        }
    }

    /// `sock` with every read and write bounded by this deadline.
    pub(crate) fn bound<'a, S: AsFd>(&'a self, sock: &'a S) -> Bounded<'a, S> {
        Bounded {
            sock,
            deadline: self,
        }
    }
}

/// A blocking socket whose every read and write waits at most until the
/// deadline: each sets the socket's timeout to the time left first.
pub(crate) struct Bounded<'a, S> {
    sock: &'a S,
    deadline: &'a Deadline,
}

/// A socket timeout (SO_RCVTIMEO/SO_SNDTIMEO) shows as either kind.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl<S: AsFd> Read for Bounded<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let sock = SockRef::from(self.sock);
        loop {
            sock.set_read_timeout(Some(self.deadline.left()?))?;
            match (&*sock).read(buf) {
                // The kernel's timer may fire a little early: ask again,
                // and `left` says when the deadline has really passed.
                Err(e) if timed_out(&e) => continue,
                r => return r,
            }
        }
    }
}

impl<S: AsFd> Write for Bounded<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let sock = SockRef::from(self.sock);
        loop {
            sock.set_write_timeout(Some(self.deadline.left()?))?;
            // MSG_NOSIGNAL: a peer that hung up gives EPIPE, not SIGPIPE.
            match sock.send_with_flags(buf, libc::MSG_NOSIGNAL) {
                Err(e) if timed_out(&e) => continue,
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects to the Unix socket `path` (a leading NUL: Linux's abstract
/// namespace) by the deadline. A Unix connect can wait: when the
/// listener's backlog is full (a peer that accepts nothing) it sleeps until
/// there is room, for as long as SO_SNDTIMEO allows, by default forever.
pub(crate) fn connect_unix(path: &Path, deadline: &Deadline) -> io::Result<UnixStream> {
    // The kernel would stop at a NUL and connect to a shorter path.
    if path.as_os_str().as_bytes().iter().skip(1).any(|&b| b == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path contains a NUL byte",
        ));
    }
    let addr = SockAddr::unix(path)?;
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    loop {
        sock.set_write_timeout(Some(deadline.left()?))?;
        match sock.connect(&addr) {
            // EAGAIN: the backlog stayed full until the timeout; the next
            // `left` says whether the deadline has really passed.
            Err(e) if timed_out(&e) || e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(()) => return Ok(UnixStream::from(OwnedFd::from(sock))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_silent_peer_is_cut_off_at_the_deadline_and_named() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let d = Deadline::start("NBD", "there", Duration::from_millis(50));
        let mut b = d.bound(&ours);
        let e = b.read_exact(&mut [0u8; 4]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let r: crate::Result<()> = Err(PagerError::Dead("read failed".into()));
        let e = d.during(HandshakePhase::Options, r).unwrap_err();
        assert_eq!(
            e.to_string(),
            "NBD handshake with there did not finish within 50ms (stuck in option negotiation)"
        );
    }

    #[test]
    fn errors_before_the_deadline_are_left_alone() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let d = Deadline::start("NBD", "there", Duration::from_secs(600));
        (&theirs).write_all(b"hi").unwrap();
        drop(theirs);
        let mut b = d.bound(&ours);
        let mut got = [0u8; 2];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        assert_eq!(b.read(&mut got).unwrap(), 0, "end of stream");
        let r: crate::Result<()> = Err(PagerError::Protocol("bad magic".into()));
        let e = d.during(HandshakePhase::Greeting, r).unwrap_err();
        assert!(matches!(e, PagerError::Protocol(_)), "{e:?}");
    }

    #[test]
    fn a_resolver_that_hangs_is_cut_off_and_the_phase_named() {
        // A lookup that answers only when the test lets it (never, here):
        // what a resolver stuck on a silent name server looks like.
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let d = Deadline::start("NBD", "slow.example", Duration::from_millis(50));
        let e = d
            .resolve(move || {
                let _ = stuck.recv();
                Ok(())
            })
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let r: crate::Result<()> = Err(PagerError::io_context("nbd slow.example", e));
        let e = d.during(HandshakePhase::Resolve, r).unwrap_err();
        // An outer phase keeps the inner one's name.
        let e = d
            .during(HandshakePhase::Connect, Err::<(), _>(e))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "NBD handshake with slow.example did not finish within 50ms (stuck in resolving the host name)"
        );
        drop(release);
    }

    #[test]
    fn a_resolver_answer_in_time_is_taken() {
        let d = Deadline::start("NBD", "there", Duration::from_secs(600));
        assert_eq!(d.resolve(|| Ok(7)).unwrap(), 7);
        let e = d
            .resolve(|| Err::<(), _>(io::Error::other("no such host")))
            .unwrap_err();
        assert_eq!(e.to_string(), "no such host");
        assert!(!d.passed.get());
    }

    #[test]
    fn a_deadline_too_far_for_the_clock_never_passes() {
        let d = Deadline::start("NBD", "there", Duration::MAX);
        assert_eq!(d.left().unwrap(), Duration::MAX);
    }
}
