//! Host-side pager backends for Duality's Mach memory objects.
//!
//! `Pager` (pager.rs) is the interface — the paper's data manager (Mach
//! 1987, section 3.4, Tables 3-5/3-6). Each backend module implements it:
//!
//! | URI | backend |
//! | --- | --- |
//! | `file:PATH[?ro]` | [`file::FilePager`]: a host file, zero-copy preadv/pwritev |
//! | `zero[?size=N]`, `anon[?size=N]` | [`anon::AnonPager`]: zero-fill memory, sparse swap file |
//! | `nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH` | [`nbd::NbdPager`]: remote storage over NBD (TCP or a Unix socket); `nbds://`, `nbds+unix://` over TLS |
//! | `unix:PATH` | [`unix::UnixPager`]: an external pager process ([`unix::serve`] is the SDK) |
//!
//! [`open`] picks the backend from a URI and wraps it in
//! [`stats::Instrumented`] for per-object statistics.
//!
//! # Threads, not async
//!
//! Callers are vCPU / device threads that block on a page fault anyway, and
//! data goes to and from borrowed guest memory (`VolatileSlice<'_>`): a
//! blocking call that borrows the buffers for its duration is the natural,
//! zero-copy fit, while an async runtime would need those borrows to be
//! `'static` or copied. Each object owns its own resources (fd, socket,
//! reader thread), and nothing is shared between objects, so a slow or dead
//! backend only blocks callers of that object — and they only until the
//! request timeout, after which the connection is declared dead. Remote
//! backends keep many requests in flight on one socket, matched by id, so
//! requests for different pages of one object also proceed in parallel.

pub mod anon;
pub(crate) mod check;
pub(crate) mod deadline;
pub mod error;
pub mod file;
pub(crate) mod inflight;
pub(crate) mod kernels;
pub mod nbd;
pub mod options;
pub mod pager;
pub mod poison;
pub mod pool;
pub mod procedural;
pub(crate) mod readahead;
pub(crate) mod sg;
pub mod size;
pub mod stats;
pub mod thread_hook;
pub mod timeout;
pub mod types;
pub mod unix;
pub mod uri;

pub use check::{MAX_OBJECT_SIZE, MAX_REQUEST};
pub use deadline::HandshakePhase;
pub use error::{PagerError, Result};
pub use options::OpenOptions;
pub use pager::{DataReply, KernelControl, LockRequest, ObjectInfo, Pager, UnlockReply};
pub use stats::{Instrumented, LatencySummary, StatsSnapshot};
pub use thread_hook::{ThreadHook, spawn_hooked};
pub use timeout::{OnTimeout, TimeoutPolicy};
pub use types::{Access, KernelId, ObjectOffset, PAGE_SIZE};
pub use uri::{NbdTls, PagerUri, UriError};

use std::sync::Arc;

/// Opens the backend a parsed URI names, without instrumentation.
pub fn open_backend(uri: &PagerUri, opts: &OpenOptions) -> Result<Arc<dyn Pager>> {
    Ok(match uri {
        PagerUri::File { path, read_only } => {
            Arc::new(file::FilePager::open(path, *read_only, opts)?)
        }
        PagerUri::Anon { size } => {
            Arc::new(anon::AnonPager::new(size.unwrap_or(opts.anon_size), opts)?)
        }
        PagerUri::Nbd {
            host,
            port,
            export,
            tls,
        } => Arc::new(nbd::NbdPager::connect(
            &nbd::NbdAddr::Tcp {
                host: host.clone(),
                port: *port,
            },
            export,
            tls.as_ref(),
            opts,
        )?),
        PagerUri::NbdUnix {
            socket,
            export,
            tls,
        } => Arc::new(nbd::NbdPager::connect(
            &nbd::NbdAddr::Unix(socket.clone()),
            export,
            tls.as_ref(),
            opts,
        )?),
        PagerUri::Unix { path } => Arc::new(unix::UnixPager::connect(path, opts)?),
    })
}

/// Opens the backend `uri` names, with per-object statistics
/// (`Instrumented::stats`).
pub fn open_instrumented(uri: &str, opts: &OpenOptions) -> Result<Arc<Instrumented>> {
    let parsed = PagerUri::parse(uri)?;
    Ok(Arc::new(Instrumented::new(open_backend(&parsed, opts)?)))
}

/// Opens the backend `uri` names. See the crate docs for the URI forms.
pub fn open(uri: &str, opts: &OpenOptions) -> Result<Arc<dyn Pager>> {
    Ok(open_instrumented(uri, opts)?)
}
