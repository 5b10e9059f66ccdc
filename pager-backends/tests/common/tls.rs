//! NBD over TLS in tests: certificate authorities made on the spot (rcgen),
//! certificate directories laid out as QEMU and libnbd read them, and a
//! real qemu-nbd serving over TLS. Used by pager-backends' tests and, by
//! path, by the workspace's tests/.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use std::cell::Cell;
use std::ffi::OsString;
use std::net::{IpAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A certificate authority for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its own certificate, PEM.
    pub pem: String,
    serial: Cell<u64>,
}

/// A certificate the CA issued, its key, and its serial number (for
/// revoking it).
pub struct Issued {
    pub cert: String,
    pub key: String,
    pub serial: SerialNumber,
}

/// What an issued certificate is for.
#[derive(Clone, Copy)]
pub enum Role {
    Server,
    Client,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
            serial: Cell::new(1),
        }
    }

    /// A certificate for `names`: DNS names or IP addresses.
    pub fn issue(&self, names: &[&str], role: Role) -> Issued {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        for n in names {
            p.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().unwrap()),
            });
        }
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        // What QEMU's sanity checks of its own and its clients'
        // certificates look for.
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![match role {
            Role::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Role::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        p.use_authority_key_identifier_extension = true;
        let serial = SerialNumber::from(self.serial.get());
        self.serial.set(self.serial.get() + 1);
        p.serial_number = Some(serial.clone());
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
            serial,
        }
    }

    /// A revocation list naming `revoked`.
    pub fn crl(&self, revoked: &[&SerialNumber]) -> String {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: (*s).clone(),
                    revocation_time: date_time_ymd(2021, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

fn write(dir: &Path, name: &str, pem: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), pem).unwrap();
}

/// A directory for one test's certificates, removed when dropped (for
/// tests without the tempfile crate).
pub struct CertDir(pub PathBuf);

impl CertDir {
    pub fn new(test: &str) -> CertDir {
        let p = std::env::temp_dir().join(format!("duality-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        CertDir(p)
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server's credentials directory as qemu-nbd's tls-creds-x509 (and
/// nbdkit) read it: `ca-cert.pem` (the CA its clients' certificates must
/// chain to), `server-cert.pem`, `server-key.pem`.
pub fn server_dir(dir: &Path, ca: &TestCa, server: &Issued) -> PathBuf {
    write(dir, "ca-cert.pem", &ca.pem);
    write(dir, "server-cert.pem", &server.cert);
    write(dir, "server-key.pem", &server.key);
    dir.to_path_buf()
}

/// A client's `tls-certificates` directory: `ca-cert.pem` (whom it
/// trusts) and, if given, its own certificate and key.
pub fn client_dir(dir: &Path, trusted: &TestCa, client: Option<&Issued>) -> PathBuf {
    write(dir, "ca-cert.pem", &trusted.pem);
    if let Some(c) = client {
        write(dir, "client-cert.pem", &c.cert);
        write(dir, "client-key.pem", &c.key);
    }
    dir.to_path_buf()
}

/// How qemu-nbd is to use TLS.
pub struct QemuTls<'a> {
    /// server_dir()'s directory.
    pub creds: &'a Path,
    /// Whether clients must present a certificate signed by the CA in
    /// `creds` (tls-creds-x509's verify-peer).
    pub verify_clients: bool,
}

/// qemu-nbd's arguments to serve with `tls`.
pub fn qemu_tls_args(tls: &QemuTls<'_>) -> Vec<OsString> {
    let mut object = OsString::from("tls-creds-x509,id=tls0,endpoint=server,dir=");
    object.push(tls.creds);
    object.push(if tls.verify_clients {
        ",verify-peer=on"
    } else {
        ",verify-peer=off"
    });
    vec![
        "--object".into(),
        object,
        "--tls-creds".into(),
        "tls0".into(),
    ]
}

/// A real qemu-nbd serving `file` as `export` on 127.0.0.1, over TLS when
/// `tls` says so. The listening socket is bound here (port 0: no race for
/// a free port) and handed over by systemd-style socket activation, so
/// clients can connect at once. Killed when dropped.
pub struct QemuNbd {
    pub port: u16,
    child: Child,
    _listener: TcpListener,
}

impl QemuNbd {
    pub fn start(qemu_nbd: &Path, file: &Path, export: &str, tls: Option<&QemuTls<'_>>) -> QemuNbd {
        Self::start_with(qemu_nbd, file, export, false, tls)
    }

    /// A plaintext server refusing writes (`--read-only`).
    pub fn read_only(qemu_nbd: &Path, file: &Path, export: &str) -> QemuNbd {
        Self::start_with(qemu_nbd, file, export, true, None)
    }

    fn start_with(
        qemu_nbd: &Path,
        file: &Path,
        export: &str,
        read_only: bool,
        tls: Option<&QemuTls<'_>>,
    ) -> QemuNbd {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        // The shell only sets LISTEN_PID to the pid qemu-nbd will have;
        // the arguments pass through as they are.
        cmd.arg("-c")
            .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
            .arg(qemu_nbd)
            .args(["-f", "raw", "-x", export, "--persistent", "--shared=16"])
            .args(tls.map(qemu_tls_args).unwrap_or_default())
            .args(read_only.then_some("--read-only"))
            .arg(file)
            .stdin(Stdio::null());
        // SAFETY: dup2/fcntl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        QemuNbd {
            port,
            child: cmd.spawn().unwrap(),
            _listener: listener,
        }
    }
}

impl QemuNbd {
    /// The plaintext URI of `export`.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    /// Ends the server now (a server that dies under its client).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real qemu-nbd serving `file` as `export` on the Unix socket `socket`
/// (`qemu-nbd -k`), over TLS when `tls` says so. Returns once the socket
/// accepts connections.
pub struct QemuNbdUnix(Child);

impl QemuNbdUnix {
    pub fn start(
        qemu_nbd: &Path,
        file: &Path,
        export: &str,
        socket: &Path,
        tls: Option<&QemuTls<'_>>,
    ) -> QemuNbdUnix {
        let child = Command::new(qemu_nbd)
            .args([
                "-f",
                "raw",
                "-x",
                export,
                "--persistent",
                "--shared=16",
                "-k",
            ])
            .arg(socket)
            .args(tls.map(qemu_tls_args).unwrap_or_default())
            .arg(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let guard = QemuNbdUnix(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "qemu-nbd did not listen on {} within 20 s",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        guard
    }
}

impl Drop for QemuNbdUnix {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
