//! NBD over TLS (X.509, rustls): the client session a URI's TLS settings
//! ask for, its handshake, and what a failure means in words.
//!
//! Trust comes from `tls-certificates=DIR` (libnbd's and QEMU's layout:
//! `ca-cert.pem`, optionally `ca-crl.pem`, `client-cert.pem` and
//! `client-key.pem`) or else the system's CA certificates. The server's
//! certificate must chain to that trust and be valid for the URI's host (or
//! `tls-hostname`); an IP address is checked against the certificate's IP
//! addresses. Verification cannot be turned off.

use super::client::NbdAddr;
use crate::error::{PagerError, Result};
use crate::uri::NbdTls;
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{AlertDescription, CertificateError, ClientConfig, ClientConnection, RootCertStore};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The files of a `tls-certificates` directory, named as libnbd and QEMU
/// name them.
const CA_CERT: &str = "ca-cert.pem";
const CA_CRL: &str = "ca-crl.pem";
const CLIENT_CERT: &str = "client-cert.pem";
const CLIENT_KEY: &str = "client-key.pem";

/// The rustls error an I/O error carries, if it carries one.
pub(crate) fn error_in(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

fn tls_err(msg: impl Into<String>) -> PagerError {
    PagerError::Tls(msg.into())
}

/// Our client certificate, if we have one, and whether the server asked
/// for one: a server that requires client certificates and gets none
/// usually just hangs up, and this is how the error can say why.
#[derive(Debug)]
struct ClientIdentity {
    key: Option<Arc<CertifiedKey>>,
    asked: AtomicBool,
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}

/// A TLS session for one NBD connection, from its settings to the end of
/// the handshake.
pub(crate) struct TlsClient {
    session: ClientConnection,
    identity: Arc<ClientIdentity>,
    /// Where trust comes from, for messages.
    trust: String,
    /// The `tls-certificates` directory, for messages about client
    /// certificates.
    dir: Option<PathBuf>,
    /// The NBD server, for messages.
    target: String,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e: &dyn std::fmt::Display| tls_err(format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in it"));
    }
    Ok(certs)
}

/// The CAs the server's certificate must chain to, and where they are from.
fn roots(dir: Option<&Path>) -> Result<(RootCertStore, String)> {
    let mut store = RootCertStore::empty();
    match dir {
        Some(dir) => {
            let path = dir.join(CA_CERT);
            for cert in read_certs(&path)? {
                store.add(cert).map_err(|e| {
                    tls_err(format!(
                        "{}: not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
            }
            Ok((store, format!("the CA in {}", path.display())))
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _unparsable) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = match found.errors.first() {
                    Some(e) => format!(" ({e})"),
                    None => String::new(),
                };
                return Err(tls_err(format!(
                    "no system CA certificates could be loaded{why}; give the CA that signed the server's certificate as tls-certificates=DIR (DIR/{CA_CERT})"
                )));
            }
            Ok((store, "the system's CA certificates".into()))
        }
    }
}

/// Revocation lists in `dir`, if it has `ca-crl.pem`.
fn crls(dir: Option<&Path>) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let Some(path) = dir.map(|d| d.join(CA_CRL)).filter(|p| p.exists()) else {
        return Ok(Vec::new());
    };
    let bad = |e: &dyn std::fmt::Display| tls_err(format!("{}: {e}", path.display()));
    let crls = CertificateRevocationListDer::pem_file_iter(&path)
        .map_err(|e| bad(&e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if crls.is_empty() {
        return Err(bad(&"no PEM revocation list in it"));
    }
    Ok(crls)
}

/// Our certificate and key from `dir`: both files or neither.
fn identity(
    dir: Option<&Path>,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Option<Arc<CertifiedKey>>> {
    let Some(dir) = dir else { return Ok(None) };
    let (cert, key) = (dir.join(CLIENT_CERT), dir.join(CLIENT_KEY));
    match (cert.exists(), key.exists()) {
        (false, false) => return Ok(None),
        (true, false) | (false, true) => {
            return Err(tls_err(format!(
                "{} has one of {CLIENT_CERT} and {CLIENT_KEY} without the other; a client certificate needs both",
                dir.display()
            )));
        }
        (true, true) => {}
    }
    let chain = read_certs(&cert)?;
    let key_der = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| tls_err(format!("{}: {e}", key.display())))?;
    let certified = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| {
        tls_err(format!(
            "{} and {}: not a usable certificate and key: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(Some(Arc::new(certified)))
}

/// A name from a certificate as rustls-webpki shows it (`DnsName("x")`,
/// `IpAddress(1.2.3.4)`), without the wrapping.
fn plain_name(shown: &str) -> &str {
    shown
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            shown
                .strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(shown)
}

/// The name the server's certificate must be valid for.
fn server_name(tls: &NbdTls, addr: &NbdAddr) -> Result<ServerName<'static>> {
    let name = match (&tls.hostname, addr) {
        (Some(name), _) => name.clone(),
        (None, NbdAddr::Tcp { host, .. }) => host.clone(),
        (None, NbdAddr::Unix(_)) => {
            return Err(tls_err(
                "over a Unix socket the server's certificate is checked against tls-hostname=NAME, and none was given",
            ));
        }
    };
    ServerName::try_from(name.clone())
        .map_err(|_| tls_err(format!("{name:?} is not a DNS name or an IP address")))
}

impl TlsClient {
    /// Reads the certificate files and sets up the session: everything that
    /// can be wrong locally is found before a byte goes to the server.
    pub(crate) fn new(tls: &NbdTls, addr: &NbdAddr) -> Result<TlsClient> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let dir = tls.certificates.as_deref();
        let (roots, trust) = roots(dir)?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls(dir)?)
                // As GnuTLS does for libnbd and QEMU: the lists given revoke
                // what they name; a certificate no list covers is not refused.
                .allow_unknown_revocation_status()
                .build()
                .map_err(|e| tls_err(format!("setting up certificate checks: {e}")))?;
        let identity = Arc::new(ClientIdentity {
            key: identity(dir, &provider)?,
            asked: AtomicBool::new(false),
        });
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(format!("setting up TLS: {e}")))?
            .with_webpki_verifier(verifier)
            .with_client_cert_resolver(identity.clone());
        let session = ClientConnection::new(Arc::new(config), server_name(tls, addr)?)
            .map_err(|e| tls_err(format!("starting a TLS session: {e}")))?;
        Ok(TlsClient {
            session,
            identity,
            trust,
            dir: tls.certificates.clone(),
            target: addr.to_string(),
        })
    }

    /// Runs the TLS handshake on `sock`, blocking within its timeouts.
    pub(crate) fn handshake<S: Read + Write>(&mut self, sock: &mut S) -> Result<()> {
        while self.session.is_handshaking() {
            if let Err(e) = self.session.complete_io(sock) {
                let err = match error_in(&e) {
                    Some(rustls::Error::AlertReceived(alert)) if self.unanswered() => {
                        self.no_client_certificate(&format!("alert: {alert:?}"))
                    }
                    Some(tls) => tls_err(format!(
                        "nbd server {}: {}",
                        self.target,
                        self.describe(tls)
                    )),
                    None if e.kind() == io::ErrorKind::UnexpectedEof && self.unanswered() => {
                        self.no_client_certificate("it hung up")
                    }
                    None => match e.kind() {
                        io::ErrorKind::UnexpectedEof => PagerError::Dead(format!(
                            "nbd server {} closed the connection during the TLS handshake",
                            self.target
                        )),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                            PagerError::Dead(format!(
                                "nbd server {} did not finish the TLS handshake in time",
                                self.target
                            ))
                        }
                        _ => PagerError::io_context(
                            format!("TLS handshake with nbd server {}", self.target),
                            e,
                        ),
                    },
                };
                return Err(err);
            }
        }
        Ok(())
    }

    /// The session, for the NBD options that follow the handshake.
    pub(crate) fn session(&mut self) -> &mut ClientConnection {
        &mut self.session
    }

    pub(crate) fn into_session(self) -> ClientConnection {
        self.session
    }

    /// Whether the server asked for a client certificate we do not have.
    fn unanswered(&self) -> bool {
        self.identity.asked.load(Ordering::Relaxed) && self.identity.key.is_none()
    }

    fn no_client_certificate(&self, then: &str) -> PagerError {
        let put = match &self.dir {
            Some(d) => format!("put {CLIENT_CERT} and {CLIENT_KEY} in {}", d.display()),
            None => format!("give tls-certificates=DIR with {CLIENT_CERT} and {CLIENT_KEY} in DIR"),
        };
        tls_err(format!(
            "nbd server {} asked for a client certificate and none was given ({put}); then {then}",
            self.target
        ))
    }

    /// Puts the server's name on a failure of STARTTLS or of the options
    /// after the TLS handshake, and the likely reason when a server that
    /// asked for a client certificate got none and then hung up or sent an
    /// alert (servers check clients after their side of the handshake).
    pub(crate) fn explain(&self, e: PagerError) -> PagerError {
        match e {
            PagerError::Tls(_) | PagerError::Dead(_) | PagerError::Io(_) if self.unanswered() => {
                self.no_client_certificate(&format!("the session ended: {e}"))
            }
            PagerError::Tls(m) => tls_err(format!("nbd server {}: {m}", self.target)),
            e => e,
        }
    }

    /// A handshake failure in words.
    fn describe(&self, e: &rustls::Error) -> String {
        let trust = &self.trust;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => {
                    format!("the server's certificate is not signed by {trust} (unknown issuer)")
                }
                CertificateError::NotValidForNameContext {
                    expected,
                    presented,
                } => format!(
                    "the server's certificate is not valid for {:?}: it names {} (connect by a name it names, or give one as tls-hostname=NAME)",
                    expected.to_str(),
                    if presented.is_empty() {
                        "no host".to_string()
                    } else {
                        presented
                            .iter()
                            .map(|n| plain_name(n))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                ),
                CertificateError::NotValidForName => {
                    "the server's certificate is not valid for the name connected to".into()
                }
                CertificateError::Revoked => {
                    "the server's certificate is revoked (ca-crl.pem)".into()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    format!("the server's certificate has expired: {c}")
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    format!("the server's certificate is not valid yet: {c}")
                }
                other => format!("the server's certificate is not acceptable: {other}"),
            },
            rustls::Error::AlertReceived(alert) => match alert {
                AlertDescription::CertificateRequired
                | AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::AccessDenied
                    if self.identity.key.is_some() =>
                {
                    format!("the server rejected our client certificate (alert: {alert:?})")
                }
                other => format!("the server ended the TLS handshake (alert: {other:?})"),
            },
            other => format!("TLS handshake failed: {other}"),
        }
    }
}
