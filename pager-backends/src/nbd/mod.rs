//! `nbd://HOST[:PORT]/EXPORT` and `nbd+unix:///EXPORT?socket=PATH`: remote
//! storage over the Network Block Device protocol, as a memory object;
//! `nbds://` and `nbds+unix://` over TLS. The client is in client.rs, the
//! wire format and handshake in proto.rs, the sockets in transport.rs, TLS
//! in tls.rs (settings, handshake) and tls_stream.rs (the shared session).

mod client;
mod proto;
mod tls;
mod tls_stream;
mod transport;

#[doc(hidden)]
pub use client::fuzz::{NbdOutcome, fuzz_client};
pub use client::{NbdAddr, NbdClient};

use crate::check::check_range;
use crate::error::{PagerError, Result};
use crate::kernels::Kernels;
use crate::options::OpenOptions;
use crate::pager::{DataReply, KernelControl, ObjectInfo, Pager, UnlockReply};
use crate::sg::Cursor;
use crate::types::{Access, KernelId, ObjectOffset};
use crate::uri::{NbdTls, PagerUri};
use std::sync::Arc;
use vm_memory::VolatileSlice;

pub struct NbdPager {
    client: NbdClient,
    target: String,
    kernels: Kernels,
}

impl NbdPager {
    /// Connects to `addr` for `export`, over TLS if `tls` says so.
    pub fn connect(
        addr: &NbdAddr,
        export: &str,
        tls: Option<&NbdTls>,
        opts: &OpenOptions,
    ) -> Result<NbdPager> {
        let client = NbdClient::connect(addr, export, tls, opts)?;
        // Described by the URI that names it, so a user can paste it back.
        let uri = match addr {
            NbdAddr::Tcp { host, port } => PagerUri::Nbd {
                host: host.clone(),
                port: *port,
                export: export.to_string(),
                tls: tls.cloned(),
            },
            NbdAddr::Unix(socket) => PagerUri::NbdUnix {
                socket: socket.clone(),
                export: export.to_string(),
                tls: tls.cloned(),
            },
        };
        Ok(NbdPager {
            client,
            target: uri.to_string(),
            kernels: Kernels::default(),
        })
    }

    /// Runs `op(offset, len, skip)` over `len` bytes in server-sized chunks.
    fn chunked(
        &self,
        offset: u64,
        len: u64,
        mut op: impl FnMut(u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        let max = self.client.max_request();
        let mut done = 0;
        while done < len {
            let n = (len - done).min(max);
            op(offset + done, n, done)?;
            done += n;
        }
        Ok(())
    }
}

impl Pager for NbdPager {
    fn init(&self, kernel: KernelId, control: Arc<dyn KernelControl>) -> Result<ObjectInfo> {
        self.kernels.add(kernel, control)?;
        Ok(ObjectInfo {
            size: self.client.size(),
            read_only: self.client.read_only(),
            may_cache: true,
        })
    }

    fn data_request(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        _desired: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<DataReply> {
        self.kernels.check(kernel)?;
        let size = self.client.size();
        check_range(offset, len, size, bufs)?;
        // The server refuses reads past its end: read what exists, zero the
        // rest of the last page.
        let n = len.min(size - offset.raw());
        self.chunked(offset.raw(), n, |o, l, skip| {
            self.client.read(o, l, bufs, skip)
        })?;
        Cursor::new(bufs, n, len - n).zero_rest();
        Ok(DataReply::Provided {
            bytes: len,
            lock: Access::NONE,
        })
    }

    fn data_write(
        &self,
        kernel: KernelId,
        offset: ObjectOffset,
        len: u64,
        bufs: &[VolatileSlice<'_>],
    ) -> Result<()> {
        self.kernels.check(kernel)?;
        if self.client.read_only() {
            return Err(PagerError::ReadOnly);
        }
        let size = self.client.size();
        check_range(offset, len, size, bufs)?;
        let n = len.min(size - offset.raw());
        self.chunked(offset.raw(), n, |o, l, skip| {
            self.client.write(o, l, bufs, skip)
        })
    }

    fn data_unlock(
        &self,
        kernel: KernelId,
        _offset: ObjectOffset,
        _len: u64,
        desired: Access,
    ) -> Result<UnlockReply> {
        self.kernels.check(kernel)?;
        if self.client.read_only() && desired.contains(Access::WRITE) {
            return Err(PagerError::ReadOnly);
        }
        Ok(UnlockReply { lock: Access::NONE })
    }

    fn extent(&self) -> Result<u64> {
        Ok(self.client.size())
    }

    fn sync(&self) -> Result<()> {
        if self.client.read_only() || !self.client.can_flush() {
            // Without SEND_FLUSH the server writes through (protocol spec).
            return Ok(());
        }
        self.client.flush()
    }

    fn terminate(&self, kernel: KernelId) -> Result<()> {
        if self.kernels.remove(kernel)? {
            self.sync()?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "nbd {} ({}, {} bytes{})",
            self.target,
            if self.client.read_only() {
                "read-only"
            } else {
                "read-write"
            },
            self.client.size(),
            match self.client.dead() {
                Some(why) => format!(", DEAD: {why}"),
                None => String::new(),
            }
        )
    }
}
