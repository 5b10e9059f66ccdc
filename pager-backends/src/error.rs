//! Errors a pager reports to its caller.

use crate::types::ObjectOffset;
use std::io;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PagerError {
    /// The range is not page aligned, is empty, or is larger than allowed.
    #[error("bad request range: offset {offset}, length {len}: {why}")]
    BadRange {
        offset: ObjectOffset,
        len: u64,
        why: &'static str,
    },
    /// The range starts at or beyond the end of the object.
    #[error("offset {offset} is past the end of the object ({size} bytes)")]
    PastEnd { offset: ObjectOffset, size: u64 },
    /// A write to an object that was opened read-only.
    #[error("object is read-only")]
    ReadOnly,
    /// The kernel id was never initialised, or was terminated.
    #[error("unknown kernel id {0}")]
    UnknownKernel(u64),
    /// The backing store failed (I/O error, remote error reply).
    #[error("backing store: {0}")]
    Io(#[from] io::Error),
    /// The peer (NBD server, external pager) broke its protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// TLS with the peer could not be set up or was refused: its
    /// certificate is not trusted or not for that name, it would not start
    /// TLS, it rejected ours, or our own certificate files are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The peer did not answer in time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Connecting to the peer and the handshake with it did not finish
    /// within their one deadline (`OpenOptions::connect_timeout`).
    #[error("{protocol} handshake with {peer} did not finish within {within:?} (stuck in {phase})")]
    HandshakeTimeout {
        /// "NBD", "external pager".
        protocol: &'static str,
        peer: String,
        within: std::time::Duration,
        phase: crate::deadline::HandshakePhase,
    },
    /// The other side does not offer this call (an older peer, a feature
    /// not negotiated).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The peer is gone (connection closed, process exited).
    #[error("pager is dead: {0}")]
    Dead(String),
    /// The backend URI could not be parsed.
    #[error("bad pager URI: {0}")]
    Uri(#[from] crate::uri::UriError),
}

impl PagerError {
    /// An I/O error that names what it was about (a path, a peer address):
    /// bare `io::Error`s like "No such file or directory" don't say which file.
    pub fn io_context(what: impl std::fmt::Display, e: io::Error) -> PagerError {
        PagerError::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

pub type Result<T> = std::result::Result<T, PagerError>;
