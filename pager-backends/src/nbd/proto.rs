//! NBD wire format (newstyle fixed handshake, simple replies) and the
//! client side of the handshake: the greeting, NBD_OPT_STARTTLS, and the
//! option haggling that picks the export. Big-endian throughout, as the
//! protocol says.

use crate::error::{PagerError, Result};
use std::io::{Read, Write};

pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub(crate) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub(crate) const FLAG_NO_ZEROES: u16 = 2;

pub(crate) const OPT_EXPORT_NAME: u32 = 1;
pub(crate) const OPT_ABORT: u32 = 2;
pub(crate) const OPT_STARTTLS: u32 = 5;
pub(crate) const OPT_GO: u32 = 7;

pub(crate) const REP_ACK: u32 = 1;
pub(crate) const REP_INFO: u32 = 3;
pub(crate) const REP_ERR_BIT: u32 = 1 << 31;
pub(crate) const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;
pub(crate) const REP_ERR_POLICY: u32 = REP_ERR_BIT | 2;
pub(crate) const REP_ERR_INVALID: u32 = REP_ERR_BIT | 3;
pub(crate) const REP_ERR_TLS_REQD: u32 = REP_ERR_BIT | 5;
pub(crate) const REP_ERR_UNKNOWN: u32 = REP_ERR_BIT | 6;

pub(crate) const INFO_EXPORT: u16 = 0;
pub(crate) const INFO_BLOCK_SIZE: u16 = 3;

pub(crate) const TFLAG_READ_ONLY: u16 = 1 << 1;
pub(crate) const TFLAG_SEND_FLUSH: u16 = 1 << 2;

pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_WRITE: u16 = 1;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_FLUSH: u16 = 3;

/// Largest option reply we accept during the handshake (they are tiny).
const MAX_OPT_REPLY: u32 = 64 * 1024;
/// Most replies we take to NBD_OPT_GO: a server sends a few NBD_REP_INFO
/// and an ACK; one that keeps sending them would hold the handshake open
/// forever, each read well within the timeout.
const MAX_OPT_REPLIES: usize = 64;

/// What the handshake learned about the export.
#[derive(Debug, Clone)]
pub(crate) struct Export {
    pub size: u64,
    pub flags: u16,
    /// Largest request the server accepts (NBD_INFO_BLOCK_SIZE), if told.
    pub max_block: Option<u32>,
}

/// A 28-byte transmission request header.
pub(crate) fn request(cmd: u16, cookie: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut h = [0u8; 28];
    h[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&0u16.to_be_bytes());
    h[6..8].copy_from_slice(&cmd.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..24].copy_from_slice(&offset.to_be_bytes());
    h[24..28].copy_from_slice(&len.to_be_bytes());
    h
}

/// Parses a 16-byte simple reply header into (error, cookie).
pub(crate) fn parse_reply(h: &[u8; 16]) -> Result<(u32, u64)> {
    let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(PagerError::Protocol(format!(
            "nbd: bad reply magic {magic:#x}"
        )));
    }
    let err = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let mut c = [0u8; 8];
    c.copy_from_slice(&h[8..16]);
    Ok((err, u64::from_be_bytes(c)))
}

fn proto(msg: impl Into<String>) -> PagerError {
    PagerError::Protocol(format!("nbd handshake: {}", msg.into()))
}

fn io_ctx(e: std::io::Error) -> PagerError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            PagerError::Dead("nbd server closed the connection during the handshake".into())
        }
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            PagerError::Dead("nbd server did not answer the handshake in time".into())
        }
        _ => match super::tls::error_in(&e) {
            // A TLS failure mid-handshake (an alert from the server, a bad
            // record) says more than the I/O error that carries it.
            Some(tls) => PagerError::Tls(format!("during the NBD handshake: {tls}")),
            None => PagerError::io_context("nbd handshake", e),
        },
    }
}

fn read_u16<S: Read>(s: &mut S) -> Result<u16> {
    let mut b = [0u8; 2];
    s.read_exact(&mut b).map_err(io_ctx)?;
    Ok(u16::from_be_bytes(b))
}
fn read_u32<S: Read>(s: &mut S) -> Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).map_err(io_ctx)?;
    Ok(u32::from_be_bytes(b))
}
fn read_u64<S: Read>(s: &mut S) -> Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b).map_err(io_ctx)?;
    Ok(u64::from_be_bytes(b))
}

fn send_option<S: Write>(s: &mut S, opt: u32, data: &[u8]) -> Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| proto("option too long"))?;
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).map_err(io_ctx)?;
    // A TLS stream holds what it encrypted until flushed.
    s.flush().map_err(io_ctx)
}

/// Reads one option reply to `opt`: (reply type, data).
fn read_option_reply<S: Read>(s: &mut S, opt: u32) -> Result<(u32, Vec<u8>)> {
    if read_u64(s)? != OPT_REPLY_MAGIC {
        return Err(proto("bad option reply magic"));
    }
    let got = read_u32(s)?;
    let rtype = read_u32(s)?;
    let len = read_u32(s)?;
    if got != opt {
        return Err(proto(format!("reply to option {got}, expected {opt}")));
    }
    if len > MAX_OPT_REPLY {
        return Err(proto(format!("option reply of {len} bytes is too large")));
    }
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).map_err(io_ctx)?;
    Ok((rtype, data))
}

/// An error reply's type in words, with the server's message if it sent one.
fn refusal(rtype: u32, data: &[u8]) -> String {
    let what = match rtype {
        REP_ERR_UNSUP => "not supported".to_string(),
        REP_ERR_POLICY => "refused by server policy".to_string(),
        REP_ERR_INVALID => "invalid here".to_string(),
        REP_ERR_UNKNOWN => "export not found".to_string(),
        REP_ERR_TLS_REQD => "the server requires TLS: use nbds:// (or tls=require)".to_string(),
        e => format!("error {e:#x}"),
    };
    let msg = String::from_utf8_lossy(data);
    if msg.is_empty() {
        what
    } else {
        format!("{what}: {msg}")
    }
}

/// What the server's greeting settled for the rest of the handshake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Greeting {
    /// Both sides agreed to drop the 124 zero bytes after EXPORT_NAME.
    no_zeroes: bool,
}

/// Reads the server's fixed-newstyle greeting and answers with our flags.
pub(crate) fn greet<S: Read + Write>(s: &mut S) -> Result<Greeting> {
    if read_u64(s)? != NBDMAGIC {
        return Err(proto("not an NBD server (bad magic)"));
    }
    if read_u64(s)? != IHAVEOPT {
        return Err(proto("server speaks oldstyle NBD, which is not supported"));
    }
    let hflags = read_u16(s)?;
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(proto("server does not support fixed newstyle negotiation"));
    }
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let cflags = u32::from(FLAG_FIXED_NEWSTYLE)
        | if no_zeroes {
            u32::from(FLAG_NO_ZEROES)
        } else {
            0
        };
    s.write_all(&cflags.to_be_bytes()).map_err(io_ctx)?;
    Ok(Greeting { no_zeroes })
}

/// The whole plaintext handshake for `export`: the greeting, then the
/// options.
pub(crate) fn handshake<S: Read + Write>(s: &mut S, export: &str) -> Result<Export> {
    let greeting = greet(s)?;
    negotiate(s, export, greeting)
}

/// Asks the server to start TLS (NBD_OPT_STARTTLS). On Ok the next bytes on
/// the socket are the TLS handshake; any refusal is an error, never a
/// reason to go on in plaintext.
pub(crate) fn starttls<S: Read + Write>(s: &mut S) -> Result<()> {
    send_option(s, OPT_STARTTLS, &[])?;
    let (rtype, data) = read_option_reply(s, OPT_STARTTLS)?;
    match rtype {
        REP_ACK => Ok(()),
        e if e & REP_ERR_BIT != 0 => {
            let _ = send_option(s, OPT_ABORT, &[]);
            Err(PagerError::Tls(format!(
                "the nbd server refused to start TLS (NBD_OPT_STARTTLS: {}); TLS was required, so there is no plaintext fallback",
                refusal(e, &data)
            )))
        }
        other => Err(proto(format!(
            "unexpected reply type {other:#x} to NBD_OPT_STARTTLS"
        ))),
    }
}

/// Haggles for `export` (NBD_OPT_GO, falling back to NBD_OPT_EXPORT_NAME
/// for servers that do not know GO), which ends the handshake.
pub(crate) fn negotiate<S: Read + Write>(
    s: &mut S,
    export: &str,
    greeting: Greeting,
) -> Result<Export> {
    let name = export.as_bytes();
    if name.len() > 4096 {
        return Err(proto("export name longer than 4096 bytes"));
    }
    let mut go = Vec::with_capacity(8 + name.len());
    go.extend_from_slice(&(name.len() as u32).to_be_bytes());
    go.extend_from_slice(name);
    go.extend_from_slice(&2u16.to_be_bytes());
    go.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    go.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, OPT_GO, &go)?;

    let mut size_flags: Option<(u64, u16)> = None;
    let mut max_block = None;
    let mut acked = false;
    for _ in 0..MAX_OPT_REPLIES {
        let (rtype, data) = read_option_reply(s, OPT_GO)?;
        match rtype {
            REP_ACK => {
                acked = true;
                break;
            }
            REP_INFO => {
                if data.len() < 2 {
                    return Err(proto("short NBD_REP_INFO"));
                }
                let info = u16::from_be_bytes([data[0], data[1]]);
                match info {
                    INFO_EXPORT if data.len() == 12 => {
                        let mut sz = [0u8; 8];
                        sz.copy_from_slice(&data[2..10]);
                        size_flags = Some((
                            u64::from_be_bytes(sz),
                            u16::from_be_bytes([data[10], data[11]]),
                        ));
                    }
                    INFO_EXPORT => return Err(proto("malformed NBD_INFO_EXPORT")),
                    INFO_BLOCK_SIZE if data.len() == 14 => {
                        max_block =
                            Some(u32::from_be_bytes([data[10], data[11], data[12], data[13]]));
                    }
                    _ => {} // informational, may be ignored per the spec
                }
            }
            REP_ERR_UNSUP => {
                // Old server: the export-name option ends negotiation directly.
                send_option(s, OPT_EXPORT_NAME, name)?;
                let size = read_u64(s)?;
                let flags = read_u16(s)?;
                if !greeting.no_zeroes {
                    let mut z = [0u8; 124];
                    s.read_exact(&mut z).map_err(io_ctx)?;
                }
                return Ok(Export {
                    size,
                    flags,
                    max_block: None,
                });
            }
            e if e & REP_ERR_BIT != 0 => {
                // Tell the server we are leaving instead of just hanging up.
                let _ = send_option(s, OPT_ABORT, &[]);
                return Err(PagerError::Protocol(format!(
                    "nbd server refused export {export:?}: {}",
                    refusal(e, &data)
                )));
            }
            other => return Err(proto(format!("unexpected option reply type {other:#x}"))),
        }
    }
    if !acked {
        return Err(proto(format!(
            "more than {MAX_OPT_REPLIES} replies to NBD_OPT_GO without an ACK"
        )));
    }
    let (size, flags) =
        size_flags.ok_or_else(|| proto("server acknowledged GO without NBD_INFO_EXPORT"))?;
    Ok(Export {
        size,
        flags,
        max_block,
    })
}
