//! Backend URIs: `file:PATH[?ro]`, `zero[?size=N]` / `anon[?size=N]`,
//! `nbd://HOST[:PORT]/EXPORT`, `unix:PATH`.

use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// Default NBD port (IANA).
pub const NBD_DEFAULT_PORT: u16 = 10809;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UriError {
    #[error("empty URI")]
    Empty,
    #[error(
        "unknown scheme in {0:?} (expected file:PATH, zero, anon, nbd://HOST:PORT/EXPORT or unix:PATH)"
    )]
    UnknownScheme(String),
    #[error("{0}: missing path")]
    MissingPath(&'static str),
    #[error("{scheme}: unknown option {option:?}")]
    UnknownOption {
        scheme: &'static str,
        option: String,
    },
    #[error(
        "bad size {0:?} (expected a byte count like 4096, 64K, 16M or 2G, a whole number of pages)"
    )]
    BadSize(String),
    #[error("nbd: missing host in {0:?}")]
    MissingHost(String),
    #[error("nbd: bad port {0:?}")]
    BadPort(String),
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
    Nbd {
        host: String,
        port: u16,
        export: String,
    },
    Unix {
        path: PathBuf,
    },
}

fn parse_size(s: &str) -> Result<u64, UriError> {
    let bad = || UriError::BadSize(s.to_string());
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        Some(b't' | b'T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let n = n.checked_mul(mult).ok_or_else(bad)?;
    if n == 0 || n % crate::PAGE_SIZE != 0 {
        return Err(bad());
    }
    Ok(n)
}

impl PagerUri {
    pub fn parse(s: &str) -> Result<PagerUri, UriError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(UriError::Empty);
        }
        if let Some(rest) = s.strip_prefix("file:") {
            // `file://` with an absolute path is accepted too.
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let (path, query) = match rest.rsplit_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (rest, None),
            };
            if path.is_empty() {
                return Err(UriError::MissingPath("file"));
            }
            let read_only = match query {
                None | Some("rw") => false,
                Some("ro") => true,
                Some(o) => {
                    return Err(UriError::UnknownOption {
                        scheme: "file",
                        option: o.to_string(),
                    });
                }
            };
            return Ok(PagerUri::File {
                path: PathBuf::from(path),
                read_only,
            });
        }
        for scheme in ["zero", "anon"] {
            if let Some(rest) = s.strip_prefix(scheme) {
                let scheme_name: &'static str = if scheme == "zero" { "zero" } else { "anon" };
                if rest.is_empty() || rest == ":" {
                    return Ok(PagerUri::Anon { size: None });
                }
                if let Some(q) = rest.strip_prefix('?') {
                    return match q.strip_prefix("size=") {
                        Some(v) => Ok(PagerUri::Anon {
                            size: Some(parse_size(v)?),
                        }),
                        None => Err(UriError::UnknownOption {
                            scheme: scheme_name,
                            option: q.to_string(),
                        }),
                    };
                }
                // e.g. "zeros": not this scheme.
                break;
            }
        }
        if let Some(rest) = s.strip_prefix("nbd://") {
            let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
            let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| UriError::MissingHost(s.to_string()))?;
                (h, after.strip_prefix(':'))
            } else {
                match authority.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (authority, None),
                }
            };
            if host.is_empty() {
                return Err(UriError::MissingHost(s.to_string()));
            }
            let port = match port {
                None => NBD_DEFAULT_PORT,
                Some(p) => match p.parse::<u16>() {
                    Ok(n) if n != 0 => n,
                    _ => return Err(UriError::BadPort(p.to_string())),
                },
            };
            return Ok(PagerUri::Nbd {
                host: host.to_string(),
                port,
                export: export.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            if rest.is_empty() {
                return Err(UriError::MissingPath("unix"));
            }
            return Ok(PagerUri::Unix {
                path: PathBuf::from(rest),
            });
        }
        Err(UriError::UnknownScheme(s.to_string()))
    }
}

impl std::str::FromStr for PagerUri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, UriError> {
        PagerUri::parse(s)
    }
}

impl fmt::Display for PagerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PagerUri::File { path, read_only } => {
                write!(
                    f,
                    "file:{}{}",
                    path.display(),
                    if *read_only { "?ro" } else { "" }
                )
            }
            PagerUri::Anon { size: None } => write!(f, "zero"),
            PagerUri::Anon { size: Some(n) } => write!(f, "zero?size={n}"),
            PagerUri::Nbd { host, port, export } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{export}")
            }
            PagerUri::Nbd { host, port, export } => write!(f, "nbd://{host}:{port}/{export}"),
            PagerUri::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            PagerUri::Nbd {
                host: "127.0.0.1".into(),
                port: 10900,
                export: "disk".into()
            }
        );
        assert_eq!(
            PagerUri::parse("nbd://[::1]/e").unwrap(),
            PagerUri::Nbd {
                host: "::1".into(),
                port: NBD_DEFAULT_PORT,
                export: "e".into()
            }
        );
        assert_eq!(
            PagerUri::parse("unix:/run/p.sock").unwrap(),
            PagerUri::Unix {
                path: "/run/p.sock".into()
            }
        );
    }

    #[test]
    fn round_trips_through_display() {
        for s in [
            "file:/a/b?ro",
            "zero?size=8192",
            "nbd://localhost:1234/x",
            "unix:/s",
        ] {
            assert_eq!(PagerUri::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_input_clearly() {
        assert_eq!(PagerUri::parse(""), Err(UriError::Empty));
        assert_eq!(PagerUri::parse("file:"), Err(UriError::MissingPath("file")));
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
            PagerUri::parse("zero?sz=1M"),
            Err(UriError::UnknownOption { .. })
        ));
        assert!(matches!(
            PagerUri::parse("nbd://:80/x"),
            Err(UriError::MissingHost(_))
        ));
        assert!(matches!(
            PagerUri::parse("nbd://h:0/x"),
            Err(UriError::BadPort(_))
        ));
        assert!(matches!(
            PagerUri::parse("nbd://h:http/x"),
            Err(UriError::BadPort(_))
        ));
        assert!(matches!(
            PagerUri::parse("zeros"),
            Err(UriError::UnknownScheme(_))
        ));
        assert!(matches!(
            PagerUri::parse("http://x"),
            Err(UriError::UnknownScheme(_))
        ));
        let msg = PagerUri::parse("ftp://x").unwrap_err().to_string();
        assert!(msg.contains("expected file:PATH"), "{msg}");
    }
}
