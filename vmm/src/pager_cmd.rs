//! `vmm pager read|stat URI`: look at a pager backend from the command line,
//! exactly as the VMM would open it, without booting anything.

use pager_backends::{
    Access, DataReply, Instrumented, KernelControl, KernelId, ObjectOffset, OpenOptions, PAGE_SIZE,
    Pager, PagerError, PagerUri,
};
use std::io::{self, Write};
use std::sync::Arc;

#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum PagerCommand {
    /// Write a byte range of the memory object to stdout.
    Read {
        /// Backend URI: file:PATH[?ro], zero[?size=N], nbd://HOST[:PORT]/EXPORT,
        /// nbd+unix:///EXPORT?socket=PATH (nbds://, nbds+unix:// over TLS),
        /// unix:PATH
        uri: String,
        /// First byte to write (need not be page aligned).
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to write; default: to the end of the object.
        #[arg(long)]
        len: Option<u64>,
    },
    /// Print the object's size and backend details.
    Stat {
        /// Backend URI, as for `read`.
        uri: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PagerCmdError {
    #[error("{0}")]
    Pager(#[from] PagerError),
    #[error("range {offset}+{len} is outside the object ({size} bytes)")]
    Range { offset: u64, len: u64, size: u64 },
    #[error(
        "the pager reports an object of {0} bytes; a memory object has at most {max} bytes",
        max = pager_backends::MAX_OBJECT_SIZE
    )]
    Size(u64),
    #[error("writing to stdout: {0}")]
    Stdout(io::Error),
}

/// This command is one kernel; what the pager tells it unprompted is shown
/// on stderr (there is no cache here to lock or flush).
struct CliKernel;

impl KernelControl for CliKernel {
    fn lock_request(
        &self,
        offset: ObjectOffset,
        len: u64,
        lock: Access,
        clean: bool,
        flush: bool,
    ) -> pager_backends::Result<()> {
        eprintln!(
            "pager: lock {offset}+{len} lock={:#x} clean={clean} flush={flush}",
            lock.bits()
        );
        Ok(())
    }
    fn offer(
        &self,
        offset: ObjectOffset,
        data: &[u8],
        _lock: Access,
    ) -> pager_backends::Result<()> {
        eprintln!("pager: offered {} bytes at {offset}", data.len());
        Ok(())
    }
    fn set_cache(&self, may_cache: bool) -> pager_backends::Result<()> {
        eprintln!("pager: may_cache={may_cache}");
        Ok(())
    }
    fn destroy(&self, reason: &str) -> pager_backends::Result<()> {
        eprintln!("pager: object destroyed: {reason}");
        Ok(())
    }
}

const ME: KernelId = KernelId(0);
/// Bytes per data request: large enough to stream, within MAX_REQUEST.
const CHUNK: u64 = 1 << 20;

/// Opens `uri` for inspection: files read-only, so looking at an image
/// never needs (or risks) write access.
fn open_for_inspection(uri: &str, opts: &OpenOptions) -> Result<Instrumented, PagerCmdError> {
    let mut parsed = PagerUri::parse(uri).map_err(PagerError::from)?;
    if let PagerUri::File { read_only, .. } = &mut parsed {
        *read_only = true;
    }
    Ok(Instrumented::new(pager_backends::open_backend(
        &parsed, opts,
    )?))
}

/// Initialises the object for this command. Backends bound the sizes
/// their peers report; checked here too, as the page arithmetic below
/// relies on it for any Pager.
fn init(pager: &Instrumented) -> Result<pager_backends::ObjectInfo, PagerCmdError> {
    let info = pager.init(ME, Arc::new(CliKernel))?;
    if info.size > pager_backends::MAX_OBJECT_SIZE {
        let _ = pager.terminate(ME);
        return Err(PagerCmdError::Size(info.size));
    }
    Ok(info)
}

pub fn run(cmd: PagerCommand) -> Result<(), PagerCmdError> {
    let opts = OpenOptions::default();
    match cmd {
        PagerCommand::Stat { uri } => {
            let pager = open_for_inspection(&uri, &opts)?;
            let info = init(&pager)?;
            let text = format!(
                "uri:       {uri}\nbackend:   {}\nsize:      {} bytes ({} pages)\nread-only: {}\nmay cache: {}\n",
                pager.describe(),
                info.size,
                info.size.div_ceil(PAGE_SIZE),
                info.read_only,
                info.may_cache
            );
            let written = io::stdout().lock().write_all(text.as_bytes());
            pager.terminate(ME)?;
            match written {
                // `vmm pager stat ... | head -1` is not an error.
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(PagerCmdError::Stdout(e)),
                _ => Ok(()),
            }
        }
        PagerCommand::Read { uri, offset, len } => {
            let pager = open_for_inspection(&uri, &opts)?;
            let info = init(&pager)?;
            let r = read_range(&pager, info.size, offset, len);
            // Terminate even after a failed read, but report the read's error.
            let t = pager.terminate(ME);
            r?;
            t?;
            Ok(())
        }
    }
}

fn read_range(
    pager: &dyn Pager,
    size: u64,
    offset: u64,
    len: Option<u64>,
) -> Result<(), PagerCmdError> {
    let len = len.unwrap_or(size.saturating_sub(offset));
    let end = match offset.checked_add(len) {
        Some(e) if offset <= size && e <= size => e,
        _ => return Err(PagerCmdError::Range { offset, len, size }),
    };
    let mut buf = vec![0u8; CHUNK as usize];
    let stdout = io::stdout();
    let mut out = stdout.lock();
    // Requests are whole pages; the user's range need not be.
    let mut page = offset / PAGE_SIZE * PAGE_SIZE;
    while page < end {
        let want = (end.div_ceil(PAGE_SIZE) * PAGE_SIZE - page).min(CHUNK);
        let reply = {
            let s = vm_memory::VolatileSlice::from(&mut buf[..want as usize]);
            pager.data_request(ME, ObjectOffset(page), want, Access::READ, &[s])?
        };
        if let DataReply::Unavailable { .. } = reply {
            buf[..want as usize].fill(0);
        }
        let from = offset.max(page) - page;
        let to = end.min(page + want) - page;
        match out.write_all(&buf[from as usize..to as usize]) {
            Ok(()) => {}
            // `vmm pager read ... | head` is not an error.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(PagerCmdError::Stdout(e)),
        }
        page += want;
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(PagerCmdError::Stdout(e)),
        _ => Ok(()),
    }
}
