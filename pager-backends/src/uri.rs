//! Backend URIs: `file:PATH[?ro]`, `zero[?size=N]` / `anon[?size=N]`,
//! `nbd://HOST[:PORT][/EXPORT]`, `nbd+unix:///[EXPORT]?socket=PATH`, their
//! TLS forms `nbds://` and `nbds+unix://`, and `unix:PATH`.
//!
//! # Queries
//!
//! Options follow a `?` as `key=value` or bare `key`, separated by `&`;
//! values are percent-decoded (`%26` is a literal `&`). An unknown key is
//! an error naming it.
//!
//! Where the query starts ([`split_query`]):
//! - NBD URIs are RFC 3986 URIs, as the NBD URI standard says: the query
//!   starts at the *first* `?`, and an export name writes `?` as `%3F`.
//! - `file:`, `unix:`, `zero` and `anon` name host paths, which may contain
//!   `?` and `%` and are taken literally: their query starts at the *last*
//!   `?`. A path that contains `?` is therefore followed by a `?` of its own,
//!   with or without options: `file:/tmp/what?.txt?` or
//!   `file:/tmp/what?.txt?ro`.

use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, percent_encode};
use std::ffi::OsString;
use std::fmt;
use std::net::Ipv6Addr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Default NBD port (IANA).
pub const NBD_DEFAULT_PORT: u16 = 10809;

/// Longest export name the NBD protocol allows.
pub const NBD_MAX_EXPORT_NAME: usize = 4096;

const FORMS: &str = "file:PATH, zero, anon, nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH (nbds:// and nbds+unix:// for TLS) or unix:PATH";

/// What a path that contains `?` must do; shown with unknown options of
/// the path schemes, where a stray `?` is the likely mistake.
const PATH_HINT: &str =
    "; a path that contains '?' ends with a '?' of its own, as in file:/tmp/what?.txt?";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UriError {
    #[error("empty URI")]
    Empty,
    #[error("unknown scheme in {0:?} (expected {FORMS})")]
    UnknownScheme(String),
    #[error("{0}: missing path")]
    MissingPath(&'static str),
    #[error("{scheme}: unknown option {option:?} (known: {known}){hint}")]
    UnknownOption {
        scheme: &'static str,
        option: String,
        known: String,
        hint: &'static str,
    },
    #[error("{scheme}: option {option:?} {why}")]
    BadOption {
        scheme: &'static str,
        option: String,
        why: &'static str,
    },
    #[error(
        "bad size {0:?} (expected a byte count like 4096, 64K, 16M, 2G or 1T, a whole number of pages)"
    )]
    BadSize(String),
    #[error("nbd: missing host in {0:?} (expected nbd://HOST[:PORT]/EXPORT)")]
    MissingHost(String),
    #[error("nbd: bad port {0:?} (expected 1-65535)")]
    BadPort(String),
    /// A TLS option this client knows but does not offer (PSK, turning
    /// verification off), or one given where TLS is not used.
    #[error("{scheme}: {option}: {why}")]
    Tls {
        scheme: &'static str,
        option: String,
        why: String,
    },
    #[error("nbd: {why} in {uri:?}")]
    BadNbd { uri: String, why: String },
}

/// A parsed backend URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PagerUri {
    File {
        path: PathBuf,
        read_only: bool,
    },
    /// Anonymous (zero-fill) memory; `size` None means the OpenOptions default.
    Anon {
        size: Option<u64>,
    },
    /// NBD over TCP (`nbd://`; `nbds://` with `tls`).
    Nbd {
        host: String,
        port: u16,
        export: String,
        tls: Option<NbdTls>,
    },
    /// NBD over a Unix domain socket (`nbd+unix://`; `nbds+unix://` with
    /// `tls`). A socket name that starts with a NUL byte is in Linux's
    /// abstract namespace.
    NbdUnix {
        socket: PathBuf,
        export: String,
        tls: Option<NbdTls>,
    },
    Unix {
        path: PathBuf,
    },
}

/// NBD over TLS (X.509): the connection starts TLS during negotiation or
/// fails; it never falls back to plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NbdTls {
    /// `tls-certificates=DIR`, laid out as libnbd and QEMU lay it out:
    /// `ca-cert.pem` (the CA the server's certificate must chain to),
    /// optionally `ca-crl.pem` (certificates it revoked) and
    /// `client-cert.pem` with `client-key.pem` (our identity, for servers
    /// that check clients). None: the system's CA certificates.
    pub certificates: Option<PathBuf>,
    /// `tls-hostname=NAME`: the name (or IP address) the server's
    /// certificate must be valid for, instead of the URI's host. Needed
    /// over a Unix socket, whose URI names no host.
    pub hostname: Option<String>,
}

/// `size=`: a size as crate::size reads it, more than zero and whole pages.
fn parse_size(s: &str) -> Result<u64, UriError> {
    crate::size::parse_size(s)
        .ok()
        .filter(|&n| n != 0 && n.is_multiple_of(crate::PAGE_SIZE))
        .ok_or_else(|| UriError::BadSize(s.to_string()))
}

/// The URI's scheme in lower case, if it has one (RFC 3986: a letter, then
/// letters, digits, `+`, `-` or `.`, then `:`).
fn scheme_of(s: &str) -> Option<String> {
    let (scheme, _) = s.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then(|| scheme.to_ascii_lowercase())
}

fn is_nbd_scheme(scheme: &str) -> bool {
    scheme == "nbd" || scheme == "nbds" || scheme.starts_with("nbd+") || scheme.starts_with("nbds+")
}

/// Splits `uri` into the part before its query and the query (without its
/// `?`), by the rule in the module docs: the first `?` for NBD URIs, the
/// last one for the forms that name host paths.
pub fn split_query(uri: &str) -> (&str, Option<&str>) {
    let split = if scheme_of(uri).is_some_and(|s| is_nbd_scheme(&s)) {
        uri.split_once('?')
    } else {
        uri.rsplit_once('?')
    };
    match split {
        Some((base, q)) => (base, Some(q)),
        None => (uri, None),
    }
}

/// One `key[=value]` of a query; the value percent-decoded, as bytes (a
/// socket path need not be UTF-8).
struct QueryOpt<'a> {
    key: &'a str,
    value: Option<Vec<u8>>,
}

/// Parses `q` as `key[=value]&...`, accepting only `known` keys, each once.
fn parse_query<'a>(
    scheme: &'static str,
    q: Option<&'a str>,
    known: &'static [&'static str],
    hint: &'static str,
) -> Result<Vec<QueryOpt<'a>>, UriError> {
    let mut opts: Vec<QueryOpt<'a>> = Vec::new();
    for item in q.unwrap_or("").split('&').filter(|i| !i.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(percent_decode_str(v).collect::<Vec<u8>>())),
            None => (item, None),
        };
        if !known.contains(&key) {
            return Err(UriError::UnknownOption {
                scheme,
                option: key.to_string(),
                known: if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                },
                hint,
            });
        }
        if opts.iter().any(|o| o.key == key) {
            return Err(UriError::BadOption {
                scheme,
                option: key.to_string(),
                why: "is given twice",
            });
        }
        opts.push(QueryOpt { key, value });
    }
    Ok(opts)
}

fn flag(scheme: &'static str, o: &QueryOpt<'_>) -> Result<(), UriError> {
    match o.value {
        None => Ok(()),
        Some(_) => Err(UriError::BadOption {
            scheme,
            option: o.key.to_string(),
            why: "takes no value",
        }),
    }
}

fn value<'v>(scheme: &'static str, o: &'v QueryOpt<'_>) -> Result<&'v [u8], UriError> {
    match &o.value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(UriError::BadOption {
            scheme,
            option: o.key.to_string(),
            why: "needs a value (key=value)",
        }),
    }
}

impl PagerUri {
    pub fn parse(s: &str) -> Result<PagerUri, UriError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(UriError::Empty);
        }
        let scheme = scheme_of(s);
        if let Some(scheme) = scheme.as_deref().filter(|sc| is_nbd_scheme(sc)) {
            return parse_nbd(s, scheme);
        }
        let (base, query) = split_query(s);
        if let Some(rest) = base.strip_prefix("file:") {
            // `file://` with an absolute path is accepted too.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(UriError::MissingPath("file"));
            }
            let mut read_only = None;
            for o in parse_query("file", query, &["ro", "rw"], PATH_HINT)? {
                flag("file", &o)?;
                let ro = o.key == "ro";
                if read_only.is_some_and(|r| r != ro) {
                    return Err(UriError::BadOption {
                        scheme: "file",
                        option: o.key.to_string(),
                        why: "contradicts the other (ro or rw, not both)",
                    });
                }
                read_only = Some(ro);
            }
            return Ok(PagerUri::File {
                path: PathBuf::from(path),
                read_only: read_only.unwrap_or(false),
            });
        }
        for scheme in ["zero", "anon"] {
            let scheme: &'static str = if scheme == "zero" { "zero" } else { "anon" };
            if base == scheme || base.strip_prefix(scheme) == Some(":") {
                let mut size = None;
                for o in parse_query(scheme, query, &["size"], "")? {
                    let v = value(scheme, &o)?;
                    let v = std::str::from_utf8(v)
                        .map_err(|_| UriError::BadSize(String::from_utf8_lossy(v).into_owned()))?;
                    size = Some(parse_size(v)?);
                }
                return Ok(PagerUri::Anon { size });
            }
        }
        if let Some(rest) = base.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(UriError::MissingPath("unix"));
            }
            parse_query("unix", query, &[], PATH_HINT)?;
            return Ok(PagerUri::Unix {
                path: PathBuf::from(path),
            });
        }
        Err(UriError::UnknownScheme(s.to_string()))
    }
}

/// The NBD schemes' query keys. `tls-type`, `tls-hostname` and
/// `tls-verify-peer` are the NBD URI standard's, `tls-certificates` and
/// `tls-psk-file` libnbd's; `tls=require` asks an `nbd://` URI for TLS as
/// `nbds://` does.
const NBD_TCP_KEYS: &[&str] = &[
    "tls",
    "tls-certificates",
    "tls-hostname",
    "tls-type",
    "tls-verify-peer",
    "tls-psk-file",
];
const NBD_UNIX_KEYS: &[&str] = &[
    "socket",
    "tls",
    "tls-certificates",
    "tls-hostname",
    "tls-type",
    "tls-verify-peer",
    "tls-psk-file",
];

/// What an NBD URI's query says: the socket (Unix forms) and TLS.
struct NbdQuery {
    socket: Option<PathBuf>,
    tls: Option<NbdTls>,
}

fn parse_nbd_query(
    scheme: &'static str,
    unix: bool,
    tls_scheme: bool,
    query: Option<&str>,
) -> Result<NbdQuery, UriError> {
    let refuse = |key: &str, why: &str| UriError::Tls {
        scheme,
        option: key.to_string(),
        why: why.to_string(),
    };
    let keys = if unix { NBD_UNIX_KEYS } else { NBD_TCP_KEYS };
    let mut socket = None;
    let mut want_tls = tls_scheme;
    let mut tls = NbdTls::default();
    // TLS settings given, refused below if the connection is plaintext:
    // silently ignoring them would look like TLS where there is none.
    let mut tls_settings = Vec::new();
    for o in parse_query(scheme, query, keys, "")? {
        let v = value(scheme, &o)?;
        match o.key {
            "socket" => socket = Some(PathBuf::from(OsString::from_vec(v.to_vec()))),
            "tls" if v == b"require" => want_tls = true,
            "tls" => {
                return Err(refuse(
                    "tls",
                    "expected tls=require (what nbds:// says); without it nbd:// is plaintext",
                ));
            }
            "tls-certificates" => {
                tls.certificates = Some(PathBuf::from(OsString::from_vec(v.to_vec())));
                tls_settings.push(o.key);
            }
            "tls-hostname" => {
                let name = std::str::from_utf8(v)
                    .ok()
                    .filter(|n| rustls::pki_types::ServerName::try_from(*n).is_ok())
                    .ok_or_else(|| {
                        refuse(
                            "tls-hostname",
                            &format!(
                                "{:?} is not a DNS name or an IP address",
                                String::from_utf8_lossy(v)
                            ),
                        )
                    })?;
                tls.hostname = Some(name.to_string());
                tls_settings.push(o.key);
            }
            "tls-type" if v == b"x509" => tls_settings.push(o.key),
            "tls-type" => {
                return Err(refuse(
                    "tls-type",
                    "only x509 (certificates) is supported, not psk or anon",
                ));
            }
            "tls-verify-peer" if v == b"1" || v == b"true" => tls_settings.push(o.key),
            "tls-verify-peer" if v == b"0" || v == b"false" => {
                return Err(refuse(
                    "tls-verify-peer",
                    "the server's certificate is always verified; give the CA that signed it as tls-certificates=DIR (DIR/ca-cert.pem)",
                ));
            }
            "tls-verify-peer" => return Err(refuse("tls-verify-peer", "expected 0 or 1")),
            key => {
                // tls-psk-file: known, so that the refusal says why.
                return Err(refuse(
                    key,
                    "TLS-PSK is not supported; use X.509 certificates (tls-certificates=DIR)",
                ));
            }
        }
    }
    if !want_tls && let Some(key) = tls_settings.first() {
        return Err(refuse(
            key,
            "applies only to TLS: use nbds:// (or add tls=require)",
        ));
    }
    Ok(NbdQuery {
        socket,
        tls: want_tls.then_some(tls),
    })
}

/// `nbd[s]://` and `nbd[s]+unix://`, by the NBD URI standard (RFC 3986
/// syntax).
fn parse_nbd(s: &str, scheme: &str) -> Result<PagerUri, UriError> {
    let bad = |why: &str| UriError::BadNbd {
        uri: s.to_string(),
        why: why.to_string(),
    };
    let (name, unix, tls_scheme): (&'static str, bool, bool) = match scheme {
        "nbd" => ("nbd", false, false),
        "nbds" => ("nbds", false, true),
        "nbd+unix" => ("nbd+unix", true, false),
        "nbds+unix" => ("nbds+unix", true, true),
        _ => return Err(UriError::UnknownScheme(s.to_string())),
    };
    // The scheme is ASCII and case-insensitive: skip it by length.
    let after_scheme = &s[scheme.len() + 1..];
    let Some(rest) = after_scheme.strip_prefix("//") else {
        return Err(bad(&if unix {
            format!("expected {name}:///EXPORT?socket=PATH")
        } else {
            format!("expected {name}://HOST[:PORT]/EXPORT")
        }));
    };
    if rest.contains('#') {
        return Err(bad(
            "a URI fragment ('#') has no meaning here; write '#' in an export name as %23",
        ));
    }
    let (hier, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match hier.find('/') {
        Some(i) => (&hier[..i], &hier[i + 1..]),
        None => (hier, ""),
    };
    let export = percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| bad("the export name is not UTF-8"))?
        .into_owned();
    if export.contains('\0') {
        return Err(bad("the export name contains NUL"));
    }
    if export.len() > NBD_MAX_EXPORT_NAME {
        return Err(bad("the export name is longer than 4096 bytes"));
    }
    if authority.contains('@') {
        return Err(bad(
            "a user name (user@) is only used for TLS-PSK authentication, which is not supported",
        ));
    }
    if unix {
        if !authority.is_empty() {
            return Err(bad(&format!(
                "{name} takes no host: the server is named by socket=, as in {name}:///EXPORT?socket=/run/nbd.sock"
            )));
        }
        let q = parse_nbd_query(name, true, tls_scheme, query)?;
        let socket = q.socket.ok_or_else(|| {
            bad(&format!(
                "missing socket=PATH (expected {name}:///EXPORT?socket=PATH)"
            ))
        })?;
        if q.tls.as_ref().is_some_and(|t| t.hostname.is_none()) {
            return Err(UriError::Tls {
                scheme: name,
                option: "tls-hostname".into(),
                why: format!(
                    "missing: a Unix socket names no host to check the server's certificate against; give the name it was issued for, as in {name}:///EXPORT?socket=PATH&tls-hostname=storage.example"
                ),
            });
        }
        return Ok(PagerUri::NbdUnix {
            socket,
            export,
            tls: q.tls,
        });
    }
    let q = parse_nbd_query(name, false, tls_scheme, query)?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address lacks its closing ']'"))?;
        if h.parse::<Ipv6Addr>().is_err() {
            return Err(bad(&format!("{h:?} is not an IPv6 address")));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("expected ':PORT' after ']'"))?,
            ),
        };
        (h, port)
    } else {
        let (h, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err(bad(&format!(
                "an IPv6 address goes in brackets, as in {name}://[::1]:10809/export"
            )));
        }
        if let Some(c) = h
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')))
        {
            return Err(bad(&format!("the host name contains {c:?}")));
        }
        (h, port)
    };
    if host.is_empty() {
        return Err(UriError::MissingHost(s.to_string()));
    }
    let port = match port {
        // RFC 3986: an empty port is the scheme's default.
        None | Some("") => NBD_DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(UriError::BadPort(p.to_string())),
        },
    };
    Ok(PagerUri::Nbd {
        host: host.to_string(),
        port,
        export,
        tls: q.tls,
    })
}

impl std::str::FromStr for PagerUri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        PagerUri::parse(s)
    }
}

/// What an export name percent-encodes in a URI path: everything that
/// would end or change the path (`?`, `#`, `%`), controls and spaces.
/// `/` stays: `nbd://h//disk` is the export `/disk`. Non-ASCII bytes are
/// always encoded.
const EXPORT_ENCODE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// What a query value percent-encodes: as an export name, plus the query's
/// own separators.
const QUERY_VALUE_ENCODE: &AsciiSet = &EXPORT_ENCODE.add(b'&').add(b'=');

/// A host path as the path schemes write it: literally, with a `?` after
/// it if it contains one and no options follow.
fn write_path(f: &mut fmt::Formatter<'_>, scheme: &str, path: &Path, query: &str) -> fmt::Result {
    let p = path.display().to_string();
    // `file://x` would lose its `//`: write such paths after `file://`.
    let slashes = if p.starts_with("//") { "//" } else { "" };
    let q = if query.is_empty() && p.contains('?') {
        "?"
    } else {
        query
    };
    write!(f, "{scheme}:{slashes}{p}{q}")
}

/// An NBD URI's TLS settings as query keys, the first after `sep`.
fn write_tls_query(f: &mut fmt::Formatter<'_>, tls: Option<&NbdTls>, sep: char) -> fmt::Result {
    let Some(tls) = tls else { return Ok(()) };
    let mut sep = sep;
    if let Some(dir) = &tls.certificates {
        let dir = percent_encode(dir.as_os_str().as_bytes(), QUERY_VALUE_ENCODE);
        write!(f, "{sep}tls-certificates={dir}")?;
        sep = '&';
    }
    if let Some(name) = &tls.hostname {
        let name = percent_encode(name.as_bytes(), QUERY_VALUE_ENCODE);
        write!(f, "{sep}tls-hostname={name}")?;
    }
    Ok(())
}

impl fmt::Display for PagerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PagerUri::File { path, read_only } => {
                write_path(f, "file", path, if *read_only { "?ro" } else { "" })
            }
            PagerUri::Anon { size: None } => write!(f, "zero"),
            PagerUri::Anon { size: Some(n) } => write!(f, "zero?size={n}"),
            PagerUri::Nbd {
                host,
                port,
                export,
                tls,
            } => {
                let export = percent_encode(export.as_bytes(), EXPORT_ENCODE);
                let scheme = if tls.is_some() { "nbds" } else { "nbd" };
                if host.contains(':') {
                    write!(f, "{scheme}://[{host}]:{port}/{export}")?;
                } else {
                    write!(f, "{scheme}://{host}:{port}/{export}")?;
                }
                write_tls_query(f, tls.as_ref(), '?')
            }
            PagerUri::NbdUnix {
                socket,
                export,
                tls,
            } => {
                write!(
                    f,
                    "{}:///{}?socket={}",
                    if tls.is_some() {
                        "nbds+unix"
                    } else {
                        "nbd+unix"
                    },
                    percent_encode(export.as_bytes(), EXPORT_ENCODE),
                    percent_encode(socket.as_os_str().as_bytes(), QUERY_VALUE_ENCODE)
                )?;
                write_tls_query(f, tls.as_ref(), '&')
            }
            PagerUri::Unix { path } => write_path(f, "unix", path, ""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nbd(host: &str, port: u16, export: &str) -> PagerUri {
        PagerUri::Nbd {
            host: host.into(),
            port,
            export: export.into(),
            tls: None,
        }
    }

    fn why(s: &str) -> String {
        match PagerUri::parse(s) {
            Err(e) => e.to_string(),
            Ok(u) => panic!("{s:?} parsed as {u:?}"),
        }
    }

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            PagerUri::parse("file:/tmp/x?ro").unwrap(),
            PagerUri::File {
                path: "/tmp/x".into(),
                read_only: true
            }
        );
        assert_eq!(
            PagerUri::parse("file:///tmp/x").unwrap(),
            PagerUri::File {
                path: "/tmp/x".into(),
                read_only: false
            }
        );
        assert_eq!(
            PagerUri::parse("zero").unwrap(),
            PagerUri::Anon { size: None }
        );
        assert_eq!(
            PagerUri::parse("anon?size=16M").unwrap(),
            PagerUri::Anon {
                size: Some(16 << 20)
            }
        );
        assert_eq!(
            PagerUri::parse("nbd://127.0.0.1:10900/disk").unwrap(),
            nbd("127.0.0.1", 10900, "disk")
        );
        assert_eq!(
            PagerUri::parse("unix:/run/p.sock").unwrap(),
            PagerUri::Unix {
                path: "/run/p.sock".into()
            }
        );
    }

    #[test]
    fn nbd_uris_as_the_standard_writes_them() {
        // The standard's own table of export names.
        for (uri, export) in [
            ("nbd://example.com/disk", "disk"),
            ("nbd://example.com/", ""),
            ("nbd://example.com", ""),
            ("nbd://example.com//disk", "/disk"),
            ("nbd://example.com/hello%20world", "hello world"),
        ] {
            assert_eq!(
                PagerUri::parse(uri).unwrap(),
                nbd("example.com", NBD_DEFAULT_PORT, export),
                "{uri}"
            );
        }
        assert_eq!(
            PagerUri::parse("nbd://[::1]:10809/x").unwrap(),
            nbd("::1", 10809, "x")
        );
        assert_eq!(
            PagerUri::parse("nbd://[fe80::1]/e").unwrap(),
            nbd("fe80::1", NBD_DEFAULT_PORT, "e")
        );
        // An empty port is the default (RFC 3986); schemes ignore case.
        assert_eq!(
            PagerUri::parse("NBD://h:/e").unwrap(),
            nbd("h", NBD_DEFAULT_PORT, "e")
        );
        // The first '?' starts the query: an export writes it as %3F.
        assert_eq!(
            PagerUri::parse("nbd://h/what%3F").unwrap(),
            nbd("h", NBD_DEFAULT_PORT, "what?")
        );
        assert_eq!(
            PagerUri::parse("nbd+unix:///disk?socket=/run/nbd.sock").unwrap(),
            PagerUri::NbdUnix {
                socket: "/run/nbd.sock".into(),
                export: "disk".into(),
                tls: None,
            }
        );
        assert_eq!(
            PagerUri::parse("nbd+unix:///?socket=/tmp/a%20b%26c?d").unwrap(),
            PagerUri::NbdUnix {
                socket: "/tmp/a b&c?d".into(),
                export: "".into(),
                tls: None,
            }
        );
        // Linux's abstract namespace, as the standard spells it.
        assert_eq!(
            PagerUri::parse("nbd+unix:///?socket=%00/abstract").unwrap(),
            PagerUri::NbdUnix {
                socket: "\0/abstract".into(),
                export: "".into(),
                tls: None,
            }
        );
    }

    #[test]
    fn paths_with_question_marks() {
        let file = |p: &str, ro| PagerUri::File {
            path: p.into(),
            read_only: ro,
        };
        assert_eq!(
            PagerUri::parse("file:/tmp/what?.txt?").unwrap(),
            file("/tmp/what?.txt", false)
        );
        assert_eq!(
            PagerUri::parse("file:/tmp/a?b?ro").unwrap(),
            file("/tmp/a?b", true)
        );
        // Paths are literal: no percent-decoding.
        assert_eq!(
            PagerUri::parse("file:/tmp/100%25").unwrap(),
            file("/tmp/100%25", false)
        );
        assert_eq!(
            PagerUri::parse("unix:/run/p?.sock?").unwrap(),
            PagerUri::Unix {
                path: "/run/p?.sock".into()
            }
        );
        // Without the trailing '?', the rest reads as options, and the
        // error says how to write such a path.
        let msg = why("file:/tmp/what?.txt");
        assert!(msg.contains("unknown option \".txt\""), "{msg}");
        assert!(msg.contains("ends with a '?'"), "{msg}");
    }

    #[test]
    fn round_trips_through_display() {
        for s in [
            "file:/a/b?ro",
            "file:/a?b?",
            "file:/a?b?ro",
            "file:////net/share",
            "zero?size=8192",
            "nbd://localhost:1234/x",
            "nbd://[::1]:10809/x",
            "nbd://h:10809/",
            "nbd://h:10809//abs",
            "nbd://h:10809/hello%20world%3F%23%25",
            "nbd://h:10809/%C3%A9t%C3%A9",
            "nbd+unix:///disk?socket=/run/nbd.sock",
            "nbd+unix:///?socket=/tmp/a%20b%26c",
            "nbd+unix:///?socket=%00/abstract",
            "nbds://h:10809/e",
            "nbds://[::1]:10809/e?tls-certificates=/etc/pki/nbd",
            "nbds://10.0.0.1:10809/e?tls-certificates=/c&tls-hostname=storage.example",
            "nbds+unix:///e?socket=/s&tls-hostname=localhost",
            "nbds+unix:///e?socket=/s&tls-certificates=/a%20b%26c&tls-hostname=::1",
            "unix:/s",
            "unix:/s?x?",
        ] {
            let u = PagerUri::parse(s).unwrap();
            assert_eq!(u.to_string(), s, "{u:?}");
            assert_eq!(PagerUri::parse(&u.to_string()).unwrap(), u);
        }
        // Values survive any bytes.
        let u = PagerUri::NbdUnix {
            socket: "/t/x=1&y?#%+ é".into(),
            export: "a/b ?#%é".into(),
            tls: None,
        };
        assert_eq!(PagerUri::parse(&u.to_string()).unwrap(), u);
        let u = PagerUri::NbdUnix {
            socket: "/t/x=1&y".into(),
            export: "e".into(),
            tls: Some(NbdTls {
                certificates: Some("/c/a b&c=d?#%é".into()),
                hostname: Some("storage.example".into()),
            }),
        };
        assert_eq!(PagerUri::parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn split_query_follows_the_scheme() {
        assert_eq!(split_query("file:/a?b?ro"), ("file:/a?b", Some("ro")));
        assert_eq!(split_query("file:/a"), ("file:/a", None));
        assert_eq!(
            split_query("nbd+unix:///e?socket=/x?y"),
            ("nbd+unix:///e", Some("socket=/x?y"))
        );
        assert_eq!(split_query("zero?size=4K"), ("zero", Some("size=4K")));
    }

    fn tls(certificates: Option<&str>, hostname: Option<&str>) -> Option<NbdTls> {
        Some(NbdTls {
            certificates: certificates.map(PathBuf::from),
            hostname: hostname.map(String::from),
        })
    }

    #[test]
    fn tls_forms_and_their_keys() {
        let tcp = |uri: &str| match PagerUri::parse(uri) {
            Ok(PagerUri::Nbd { tls, .. }) => tls,
            other => panic!("{uri}: {other:?}"),
        };
        assert_eq!(tcp("nbd://h/e"), None);
        assert_eq!(tcp("nbds://h/e"), tls(None, None));
        assert_eq!(tcp("NBDS://h/e"), tls(None, None));
        // tls=require asks nbd:// for what nbds:// says; both is no error.
        assert_eq!(tcp("nbd://h/e?tls=require"), tls(None, None));
        assert_eq!(tcp("nbds://h/e?tls=require"), tls(None, None));
        assert_eq!(
            tcp("nbd://h/e?tls=require&tls-certificates=/etc/pki/a%20b"),
            tls(Some("/etc/pki/a b"), None)
        );
        assert_eq!(
            tcp("nbds://10.0.0.2/e?tls-hostname=storage.example&tls-type=x509&tls-verify-peer=1"),
            tls(None, Some("storage.example"))
        );
        assert_eq!(
            tcp("nbds://[::1]/e?tls-hostname=::1"),
            tls(None, Some("::1"))
        );
        // Written back as nbds://, whichever way TLS was asked for.
        assert_eq!(
            PagerUri::parse("nbd://h/e?tls=require")
                .unwrap()
                .to_string(),
            "nbds://h:10809/e"
        );
        assert_eq!(
            PagerUri::parse("nbds+unix:///e?socket=/s&tls-hostname=localhost&tls-certificates=/c")
                .unwrap(),
            PagerUri::NbdUnix {
                socket: "/s".into(),
                export: "e".into(),
                tls: tls(Some("/c"), Some("localhost")),
            }
        );
        assert_eq!(
            PagerUri::parse("nbd+unix:///e?socket=/s&tls=require&tls-hostname=h")
                .unwrap()
                .to_string(),
            "nbds+unix:///e?socket=/s&tls-hostname=h"
        );
    }

    #[test]
    fn tls_keys_that_cannot_be_honoured_are_refused() {
        // TLS settings without TLS would look like protection that is not there.
        for uri in [
            "nbd://h/e?tls-certificates=/c",
            "nbd://h/e?tls-hostname=h",
            "nbd+unix:///e?socket=/s&tls-certificates=/c",
        ] {
            let msg = why(uri);
            assert!(
                msg.contains("applies only to TLS: use nbds://"),
                "{uri}: {msg}"
            );
        }
        let msg = why("nbd://h/e?tls=on");
        assert!(msg.contains("expected tls=require"), "{msg}");
        assert!(why("nbds://h/e?tls-verify-peer=0").contains("always verified"));
        assert!(why("nbds://h/e?tls-verify-peer=2").contains("expected 0 or 1"));
        assert!(why("nbds://h/e?tls-type=psk").contains("only x509"));
        assert!(why("nbds://h/e?tls-psk-file=/k").contains("TLS-PSK is not supported"));
        assert!(why("nbds://alice@h/e").contains("TLS-PSK"));
        let msg = why("nbds://h/e?tls-hostname=a%20b");
        assert!(msg.contains("not a DNS name or an IP address"), "{msg}");
        assert!(why("nbds://h/e?tls-certificates=").contains("needs a value"));
        // A Unix socket has no host name to check the certificate against.
        let msg = why("nbds+unix:///e?socket=/s");
        assert!(msg.contains("tls-hostname: missing"), "{msg}");
        assert!(why("nbds+unix:///e").contains("expected nbds+unix:///EXPORT?socket=PATH"));
        assert!(why("nbds+unix://h/e?socket=/s").contains("nbds+unix takes no host"));
        assert!(why("nbds:h/e").contains("expected nbds://HOST"));
        assert!(matches!(
            PagerUri::parse("nbds://:1/e"),
            Err(UriError::MissingHost(_))
        ));
    }

    #[test]
    fn unknown_options_are_named() {
        let msg = why("nbds://h/e?tls-priority=NORMAL");
        assert!(msg.contains("unknown option \"tls-priority\""), "{msg}");
        assert!(msg.contains("known: tls, tls-certificates"), "{msg}");
        let msg = why("nbd+unix:///e?socket=/s&timeout=5s");
        assert!(msg.contains("unknown option \"timeout\""), "{msg}");
        assert!(msg.contains("known: socket"), "{msg}");
        let msg = why("zero?sz=1M");
        assert!(msg.contains("unknown option \"sz\""), "{msg}");
        let msg = why("unix:/s?x");
        assert!(msg.contains("unknown option \"x\""), "{msg}");
        assert!(why("file:/x?ro&ro").contains("given twice"));
        assert!(why("file:/x?ro&rw").contains("not both"));
        assert!(why("file:/x?ro=1").contains("takes no value"));
        assert!(why("zero?size").contains("needs a value"));
        assert!(why("nbd+unix:///e?socket=").contains("needs a value"));
    }

    #[test]
    fn rejects_bad_input_clearly() {
        assert_eq!(PagerUri::parse(""), Err(UriError::Empty));
        assert_eq!(PagerUri::parse("file:"), Err(UriError::MissingPath("file")));
        assert_eq!(
            PagerUri::parse("file:?ro"),
            Err(UriError::MissingPath("file"))
        );
        assert!(matches!(
            PagerUri::parse("file:/x?rx"),
            Err(UriError::UnknownOption { .. })
        ));
        assert!(matches!(
            PagerUri::parse("zero?size=12"),
            Err(UriError::BadSize(_))
        ));
        assert!(matches!(
            PagerUri::parse("zero?size=99999999999999999999"),
            Err(UriError::BadSize(_))
        ));
        assert!(matches!(
            PagerUri::parse("nbd://:80/x"),
            Err(UriError::MissingHost(_))
        ));
        assert!(matches!(
            PagerUri::parse("nbd:///x"),
            Err(UriError::MissingHost(_))
        ));
        for port in ["0", "http", "65536", "+80", "-1"] {
            assert!(
                matches!(
                    PagerUri::parse(&format!("nbd://h:{port}/x")),
                    Err(UriError::BadPort(_))
                ),
                "{port}"
            );
        }
        assert!(why("nbd://::1/x").contains("brackets"));
        assert!(why("nbd://[::1/x").contains("closing ']'"));
        assert!(why("nbd://[zz]/x").contains("not an IPv6 address"));
        assert!(why("nbd://[::1]x/e").contains("':PORT'"));
        assert!(why("nbd://h h/e").contains("host name contains"));
        assert!(why("nbd:h/e").contains("expected nbd://HOST"));
        assert!(why("nbd://h/e#frag").contains("fragment"));
        assert!(why("nbd://h/%FF").contains("not UTF-8"));
        assert!(why("nbd://h/a%00b").contains("NUL"));
        assert!(why(&format!("nbd://h/{}", "e".repeat(4097))).contains("4096"));
        assert!(why("nbd+unix:///e").contains("missing socket"));
        assert!(why("nbd+unix://host/e?socket=/s").contains("takes no host"));
        assert!(matches!(
            PagerUri::parse("nbd+vsock:///"),
            Err(UriError::UnknownScheme(_))
        ));
        assert!(matches!(
            PagerUri::parse("zeros"),
            Err(UriError::UnknownScheme(_))
        ));
        assert!(matches!(
            PagerUri::parse("http://x"),
            Err(UriError::UnknownScheme(_))
        ));
        let msg = why("ftp://x");
        assert!(msg.contains("expected file:PATH"), "{msg}");
        assert!(msg.contains("nbd+unix"), "{msg}");
    }
}
