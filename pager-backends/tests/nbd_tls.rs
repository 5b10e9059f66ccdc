//! NBD over TLS: against a real qemu-nbd with certificates made here, and
//! against hand-written servers that refuse or fake TLS. Whatever goes
//! wrong, the connection fails with a reason and never carries on in
//! plaintext.

mod common;

use common::tls::{QemuNbd, QemuNbdUnix, QemuTls, Role, TestCa, client_dir, server_dir};
use common::*;
use pager_backends::{Access, KernelId, ObjectOffset, OpenOptions, Pager, PagerError};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

const K: KernelId = KernelId(5);

fn open(uri: &str) -> pager_backends::Result<Arc<dyn Pager>> {
    // qemu-nbd answers once it has started, which a loaded machine slows
    // down: the handshake may wait for that longer than the default allows.
    let opts = OpenOptions {
        connect_timeout: std::time::Duration::from_secs(30),
        ..OpenOptions::default()
    };
    pager_backends::open(uri, &opts)
}

/// The TLS error `uri` fails with.
fn tls_refusal(uri: &str) -> String {
    match open(uri) {
        Err(PagerError::Tls(why)) => why,
        Err(other) => panic!("{uri}: not a TLS error: {other:?}"),
        Ok(p) => panic!("{uri}: connected: {}", p.describe()),
    }
}

/// A CA, a server certificate for `names` in a qemu-nbd credentials
/// directory, and a client directory trusting that CA.
struct Pki {
    ca: TestCa,
    server: std::path::PathBuf,
    client: std::path::PathBuf,
}

fn pki(dir: &Path, names: &[&str]) -> Pki {
    let ca = TestCa::new("Duality test CA");
    let cert = ca.issue(names, Role::Server);
    let server = server_dir(&dir.join("server"), &ca, &cert);
    let client = client_dir(&dir.join("client"), &ca, None);
    Pki { ca, server, client }
}

fn no_verify(creds: &Path) -> QemuTls<'_> {
    QemuTls {
        creds,
        verify_clients: false,
    }
}

fn read_page(p: &dyn Pager, offset: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    p.data_request(
        K,
        ObjectOffset(offset),
        4096,
        Access::READ,
        &[slice(&mut buf)],
    )
    .unwrap();
    buf
}

#[test]
fn reads_and_writes_over_tls_against_qemu_nbd() {
    let Some(q) = need_qemu_nbd("reads_and_writes_over_tls_against_qemu_nbd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(1 << 20);
    let path = write_file(dir.path(), "disk.img", &data);
    let pki = pki(dir.path(), &["127.0.0.1", "localhost"]);
    let srv = QemuNbd::start(&q, &path, "disk", Some(&no_verify(&pki.server)));
    let uri = format!(
        "nbds://127.0.0.1:{}/disk?tls-certificates={}",
        srv.port,
        pki.client.display()
    );
    let p = open(&uri).unwrap();
    let info = p.init(K, Arc::new(Recorder::default())).unwrap();
    assert_eq!(info.size, 1 << 20);
    assert!(!info.read_only);
    assert!(p.describe().contains(&uri), "{}", p.describe());

    // A scattered read across two buffers, then writes and a flush.
    check_scatter_read(&*p, K, &data);
    let mut page = vec![0x5au8; 8192];
    p.data_write(K, ObjectOffset(4096), 8192, &[slice(&mut page)])
        .unwrap();
    // Larger than a TLS record and than rustls's send buffer.
    let mut big: Vec<u8> = (0..256 << 10).map(|i| (i % 253) as u8).collect();
    p.data_write(K, ObjectOffset(512 << 10), 256 << 10, &[slice(&mut big)])
        .unwrap();
    p.sync().unwrap();
    let mut back = vec![0u8; 256 << 10];
    p.data_request(
        K,
        ObjectOffset(512 << 10),
        256 << 10,
        Access::READ,
        &[slice(&mut back)],
    )
    .unwrap();
    assert!(back == big);
    p.terminate(K).unwrap();
    drop(p);
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[4096..12288].iter().all(|&b| b == 0x5a));
    assert!(on_disk[512 << 10..768 << 10] == big[..]);
    assert_eq!(&on_disk[12288..512 << 10], &data[12288..512 << 10]);

    // The same server by DNS name, and with nbd://...?tls=require.
    for uri in [
        format!(
            "nbds://localhost:{}/disk?tls-certificates={}",
            srv.port,
            pki.client.display()
        ),
        format!(
            "nbd://127.0.0.1:{}/disk?tls=require&tls-certificates={}",
            srv.port,
            pki.client.display()
        ),
    ] {
        let p = open(&uri).unwrap();
        p.init(K, Arc::new(Recorder::default())).unwrap();
        assert!(read_page(&*p, 4096).iter().all(|&b| b == 0x5a), "{uri}");
        assert!(p.describe().contains("nbds://"), "{}", p.describe());
    }
}

#[test]
fn many_requests_in_flight_over_one_tls_session() {
    let Some(q) = need_qemu_nbd("many_requests_in_flight_over_one_tls_session") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let size = 4usize << 20;
    let data = Arc::new(pattern(size));
    let path = write_file(dir.path(), "disk.img", &data);
    let pki = pki(dir.path(), &["127.0.0.1"]);
    let srv = QemuNbd::start(&q, &path, "e", Some(&no_verify(&pki.server)));
    let p = open(&format!(
        "nbds://127.0.0.1:{}/e?tls-certificates={}",
        srv.port,
        pki.client.display()
    ))
    .unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    // Each thread owns a 512 KiB region: it reads the original, writes its
    // own pattern in pieces of up to 192 KiB (several records each, while
    // other threads' replies stream in), and reads it back.
    let region = 512u64 << 10;
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (p, data) = (p.clone(), data.clone());
            std::thread::spawn(move || {
                let base = t * region;
                for i in 0..16u64 {
                    let off = base + (i * 4096 * 5) % region;
                    let len = (4096 * (1 + i % 3)).min(base + region - off);
                    let mut buf = vec![0u8; len as usize];
                    p.data_request(K, ObjectOffset(off), len, Access::READ, &[slice(&mut buf)])
                        .unwrap();
                    assert_eq!(&buf[..], &data[off as usize..(off + len) as usize]);
                }
                let mine: Vec<u8> = (0..region).map(|i| (i as u8) ^ (t as u8 * 31)).collect();
                let mut done = 0;
                while done < region {
                    let len = (4096 * (1 + done / 4096 % 48)).min(region - done);
                    let mut chunk = mine[done as usize..(done + len) as usize].to_vec();
                    p.data_write(K, ObjectOffset(base + done), len, &[slice(&mut chunk)])
                        .unwrap();
                    done += len;
                }
                let mut back = vec![0u8; region as usize];
                p.data_request(
                    K,
                    ObjectOffset(base),
                    region,
                    Access::READ,
                    &[slice(&mut back)],
                )
                .unwrap();
                assert!(back == mine, "thread {t} read back something else");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn nbds_over_a_unix_socket_checks_tls_hostname() {
    let Some(q) = need_qemu_nbd("nbds_over_a_unix_socket_checks_tls_hostname") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(64 << 10);
    let path = write_file(dir.path(), "disk.img", &data);
    let pki = pki(dir.path(), &["storage.example"]);
    let sock = dir.path().join("nbd.sock");
    let _srv = QemuNbdUnix::start(&q, &path, "disk", &sock, Some(&no_verify(&pki.server)));
    let uri = |name: &str| {
        format!(
            "nbds+unix:///disk?socket={}&tls-certificates={}&tls-hostname={name}",
            sock.display(),
            pki.client.display()
        )
    };
    let p = open(&uri("storage.example")).unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    assert_eq!(read_page(&*p, 8192), &data[8192..12288]);
    let why = tls_refusal(&uri("other.example"));
    assert!(
        why.contains("not valid for \"other.example\"") && why.contains("storage.example"),
        "{why}"
    );
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let Some(q) = need_qemu_nbd("certificate_from_another_ca_is_refused") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "disk.img", &pattern(65536));
    let pki = pki(dir.path(), &["127.0.0.1"]);
    let srv = QemuNbd::start(&q, &path, "disk", Some(&no_verify(&pki.server)));
    let other = TestCa::new("Some other CA");
    let trusts_other = client_dir(&dir.path().join("other"), &other, None);
    let why = tls_refusal(&format!(
        "nbds://127.0.0.1:{}/disk?tls-certificates={}",
        srv.port,
        trusts_other.display()
    ));
    assert!(
        why.starts_with(&format!("nbd server 127.0.0.1:{}: ", srv.port))
            && why.matches("nbd server").count() == 1
            && why.contains("not signed by the CA in")
            && why.contains(&trusts_other.join("ca-cert.pem").display().to_string()),
        "{why}"
    );
    // Without tls-certificates only the system's CAs are trusted: this
    // test CA is not one of them.
    let why = tls_refusal(&format!("nbds://127.0.0.1:{}/disk", srv.port));
    assert!(
        why.contains("not signed by the system's CA certificates")
            || why.contains("no system CA certificates"),
        "{why}"
    );
}

#[test]
fn certificate_for_another_name_is_refused() {
    let Some(q) = need_qemu_nbd("certificate_for_another_name_is_refused") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(65536);
    let path = write_file(dir.path(), "disk.img", &data);
    let pki = pki(dir.path(), &["storage.example"]);
    let srv = QemuNbd::start(&q, &path, "disk", Some(&no_verify(&pki.server)));
    let base = format!(
        "nbds://127.0.0.1:{}/disk?tls-certificates={}",
        srv.port,
        pki.client.display()
    );
    let why = tls_refusal(&base);
    assert!(
        why.contains("not valid for \"127.0.0.1\"") && why.contains("it names storage.example"),
        "{why}"
    );
    // The name the certificate was issued for, while connecting by address.
    let p = open(&format!("{base}&tls-hostname=storage.example")).unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    assert_eq!(read_page(&*p, 0), &data[..4096]);
}

#[test]
fn revoked_certificate_is_refused() {
    let Some(q) = need_qemu_nbd("revoked_certificate_is_refused") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "disk.img", &pattern(65536));
    let ca = TestCa::new("Duality test CA");
    let cert = ca.issue(&["127.0.0.1"], Role::Server);
    let server = server_dir(&dir.path().join("server"), &ca, &cert);
    let srv = QemuNbd::start(&q, &path, "disk", Some(&no_verify(&server)));
    let client = client_dir(&dir.path().join("client"), &ca, None);
    let uri = format!(
        "nbds://127.0.0.1:{}/disk?tls-certificates={}",
        srv.port,
        client.display()
    );
    // A list that revokes something else changes nothing.
    let unrelated = ca.issue(&["old.example"], Role::Server);
    std::fs::write(client.join("ca-crl.pem"), ca.crl(&[&unrelated.serial])).unwrap();
    open(&uri).unwrap();
    std::fs::write(client.join("ca-crl.pem"), ca.crl(&[&cert.serial])).unwrap();
    let why = tls_refusal(&uri);
    assert!(why.contains("revoked"), "{why}");
}

#[test]
fn client_certificates_for_a_server_that_checks_them() {
    let Some(q) = need_qemu_nbd("client_certificates_for_a_server_that_checks_them") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(65536);
    let path = write_file(dir.path(), "disk.img", &data);
    let pki = pki(dir.path(), &["127.0.0.1"]);
    let tls = QemuTls {
        creds: &pki.server,
        verify_clients: true,
    };
    let srv = QemuNbd::start(&q, &path, "disk", Some(&tls));
    let uri = |d: &Path| {
        format!(
            "nbds://127.0.0.1:{}/disk?tls-certificates={}",
            srv.port,
            d.display()
        )
    };
    // Without a certificate: the server hangs up, and the error says why.
    let why = tls_refusal(&uri(&pki.client));
    assert!(
        why.contains("asked for a client certificate and none was given")
            && why.contains("client-cert.pem"),
        "{why}"
    );
    // With one from the server's CA.
    let me = pki.ca.issue(&["vmm.example"], Role::Client);
    let with_cert = client_dir(&dir.path().join("with-cert"), &pki.ca, Some(&me));
    let p = open(&uri(&with_cert)).unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    assert_eq!(read_page(&*p, 4096), &data[4096..8192]);
    // With one from a CA the server does not trust.
    let stranger = TestCa::new("Stranger CA").issue(&["vmm.example"], Role::Client);
    let wrong = client_dir(&dir.path().join("wrong"), &pki.ca, Some(&stranger));
    match open(&uri(&wrong)) {
        Err(PagerError::Tls(_) | PagerError::Dead(_)) => {}
        Err(other) => panic!("a client certificate from a stranger CA: {other:?}"),
        Ok(p) => panic!("a client certificate from a stranger CA: {}", p.describe()),
    }
}

#[test]
fn plaintext_only_server_is_refused_when_tls_is_required() {
    let Some(q) = need_qemu_nbd("plaintext_only_server_is_refused_when_tls_is_required") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "disk.img", &pattern(65536));
    let pki = pki(dir.path(), &["127.0.0.1"]);
    let plain = QemuNbd::start(&q, &path, "disk", None);
    for uri in [
        format!("nbds://127.0.0.1:{}/disk", plain.port),
        format!(
            "nbd://127.0.0.1:{}/disk?tls=require&tls-certificates={}",
            plain.port,
            pki.client.display()
        ),
    ] {
        let why = tls_refusal(&uri);
        assert!(
            why.contains("refused to start TLS") && why.contains("no plaintext fallback"),
            "{uri}: {why}"
        );
    }
    // And the other way round: a plaintext client is told to use TLS.
    let tls = QemuNbd::start(&q, &path, "disk", Some(&no_verify(&pki.server)));
    let err = open(&format!("nbd://127.0.0.1:{}/disk", tls.port))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("requires TLS: use nbds://"),
        "{err}"
    );
}

#[test]
fn killed_server_fails_tls_requests_without_hanging() {
    let Some(q) = need_qemu_nbd("killed_server_fails_tls_requests_without_hanging") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "disk.img", &pattern(65536));
    let pki = pki(dir.path(), &["127.0.0.1"]);
    let srv = QemuNbd::start(&q, &path, "disk", Some(&no_verify(&pki.server)));
    let p = open(&format!(
        "nbds://127.0.0.1:{}/disk?tls-certificates={}",
        srv.port,
        pki.client.display()
    ))
    .unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    read_page(&*p, 0);
    drop(srv);
    let mut buf = vec![0u8; 4096];
    let err = p
        .data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)])
        .unwrap_err();
    assert!(matches!(err, PagerError::Dead(_)), "{err:?}");
    assert!(p.describe().contains("DEAD"), "{}", p.describe());
}

/// A server that greets, then answers NBD_OPT_STARTTLS with `reply` (an
/// option reply type) and, after an ACK, sends `after` instead of a TLS
/// handshake. Returns the port and the option the client sent next.
fn fake_starttls_server(reply: u32, after: &'static [u8]) -> (u16, std::thread::JoinHandle<u32>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"NBDMAGICIHAVEOPT\0\x03").unwrap();
        let mut head = [0u8; 4 + 16];
        s.read_exact(&mut head).unwrap();
        let opt = u32::from_be_bytes(head[12..16].try_into().unwrap());
        assert_eq!(opt, 5, "the first option is NBD_OPT_STARTTLS");
        let msg: &[u8] = if reply == 1 {
            b""
        } else {
            b"TLS not configured"
        };
        let mut m = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
        m.extend_from_slice(&5u32.to_be_bytes());
        m.extend_from_slice(&reply.to_be_bytes());
        m.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        m.extend_from_slice(msg);
        s.write_all(&m).unwrap();
        s.write_all(after).unwrap();
        // What the client does next: an option (16-byte header), or hang up.
        let mut next = [0u8; 16];
        match s.read_exact(&mut next) {
            Ok(()) if next[..8] == *b"IHAVEOPT" => {
                u32::from_be_bytes(next[8..12].try_into().unwrap())
            }
            _ => 0,
        }
    });
    (port, h)
}

#[test]
fn refused_starttls_never_falls_back_to_plaintext() {
    // NBD_REP_ERR_POLICY: the client gives up (NBD_OPT_ABORT), never GO.
    let (port, h) = fake_starttls_server(0x8000_0002, b"");
    let why = tls_refusal(&format!("nbds://127.0.0.1:{port}/e"));
    assert!(
        why.contains("refused to start TLS")
            && why.contains("refused by server policy: TLS not configured"),
        "{why}"
    );
    assert_eq!(h.join().unwrap(), 2, "the client sent NBD_OPT_ABORT");
    // A server that agrees to TLS and then speaks something else fails the
    // handshake.
    let (port, h) = fake_starttls_server(1, b"\x00\x00\x00\x00 not a TLS record at all");
    let why = tls_refusal(&format!("nbds://127.0.0.1:{port}/e"));
    assert!(why.contains("TLS handshake failed"), "{why}");
    assert_eq!(h.join().unwrap(), 0, "no option after a failed handshake");
}

#[test]
fn unusable_certificate_directories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: these fail before connecting.
    let uri = |d: &Path| format!("nbds://127.0.0.1:9/e?tls-certificates={}", d.display());
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let why = tls_refusal(&uri(&empty));
    assert!(why.contains("empty/ca-cert.pem"), "{why}");
    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("ca-cert.pem"), "not PEM").unwrap();
    let why = tls_refusal(&uri(&garbage));
    assert!(why.contains("no PEM certificate"), "{why}");
    let ca = TestCa::new("Duality test CA");
    let me = ca.issue(&["vmm.example"], Role::Client);
    let half = client_dir(&dir.path().join("half"), &ca, Some(&me));
    std::fs::remove_file(half.join("client-key.pem")).unwrap();
    let why = tls_refusal(&uri(&half));
    assert!(why.contains("without the other"), "{why}");
    // A key that is not the certificate's.
    let other = ca.issue(&["other.example"], Role::Client);
    std::fs::write(half.join("client-key.pem"), &other.key).unwrap();
    let why = tls_refusal(&uri(&half));
    assert!(why.contains("not a usable certificate and key"), "{why}");
}

// --- an in-process NBD server over TLS (rustls): runs without qemu-nbd ----

/// What the in-process server does once the client is in transmission.
#[derive(Clone, Copy)]
enum Serve {
    /// Serves requests one at a time, each reply written whole before the
    /// next request is read (so it stops reading while a reply does not
    /// fit the socket), and updates its TLS keys every `key_update_every`
    /// requests.
    Disk { key_update_every: u32 },
    /// Reads one request and never answers.
    Silent,
    /// Sends a read reply's header and half its data, then hangs up.
    DieMidReply,
}

/// A listener on 127.0.0.1 whose connections have small socket buffers
/// (64 KiB asked, as the kernel counts it 128 KiB), so that what is in
/// flight does not fit them and both sides must keep reading.
///
/// The sizes are set before listen(2), as tcp(7) requires: the window a
/// connection offers (and its scale) is fixed from the buffer at the
/// handshake. Shrunk after accept, the buffer can no longer hold the
/// window already offered; the kernel then drops the client's data
/// segments whole (for memory, or as beyond the window while unread data
/// is queued), and with them the acknowledgements they carry. The server
/// never learns its replies arrived, both ends back off retransmitting
/// (seconds apart, doubling), and on a loaded machine a request outlived
/// its 30 s timeout with the client's receive queue empty.
fn small_buffer_listener() -> TcpListener {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.set_send_buffer_size(64 << 10).unwrap();
    s.set_recv_buffer_size(64 << 10).unwrap();
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&SockAddr::from(addr)).unwrap();
    s.listen(1).unwrap();
    s.into()
}

/// An NBD server for one client over TLS with `cert`, serving `disk`.
/// Returns the port and the thread, which hands the disk back at the end.
fn rustls_nbd_server(
    cert: &common::tls::Issued,
    disk: Vec<u8>,
    serve: Serve,
) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_slice(cert.cert.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).unwrap(),
    )
    .unwrap();
    let l = small_buffer_listener();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let mut disk = disk;
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"NBDMAGICIHAVEOPT\0\x03").unwrap();
        let mut head = [0u8; 4 + 16];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head[4..12], b"IHAVEOPT");
        assert_eq!(u32::from_be_bytes(head[12..16].try_into().unwrap()), 5);
        let reply = |opt: u32, ty: u32, data: &[u8]| {
            let mut m = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
            m.extend_from_slice(&opt.to_be_bytes());
            m.extend_from_slice(&ty.to_be_bytes());
            m.extend_from_slice(&(data.len() as u32).to_be_bytes());
            m.extend_from_slice(data);
            m
        };
        s.write_all(&reply(5, 1, &[])).unwrap();
        let session = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        let mut tls = rustls::StreamOwned::new(session, s);
        let mut opt = [0u8; 16];
        tls.read_exact(&mut opt).unwrap();
        assert_eq!(u32::from_be_bytes(opt[8..12].try_into().unwrap()), 7, "GO");
        let mut body = vec![0u8; u32::from_be_bytes(opt[12..16].try_into().unwrap()) as usize];
        tls.read_exact(&mut body).unwrap();
        let mut info = 0u16.to_be_bytes().to_vec();
        info.extend_from_slice(&(disk.len() as u64).to_be_bytes());
        info.extend_from_slice(&(1u16 | 4).to_be_bytes());
        tls.write_all(&reply(7, 3, &info)).unwrap();
        tls.write_all(&reply(7, 1, &[])).unwrap();
        tls.flush().unwrap();
        let mut served = 0u32;
        loop {
            let mut req = [0u8; 28];
            if tls.read_exact(&mut req).is_err() {
                break;
            }
            let cmd = u16::from_be_bytes([req[6], req[7]]);
            let off = u64::from_be_bytes(req[16..24].try_into().unwrap()) as usize;
            let len = u32::from_be_bytes(req[24..28].try_into().unwrap()) as usize;
            let mut head = 0x6744_6698u32.to_be_bytes().to_vec();
            head.extend_from_slice(&0u32.to_be_bytes());
            head.extend_from_slice(&req[8..16]);
            match (serve, cmd) {
                (_, 2) => break,
                (Serve::Silent, _) => {
                    // Keep the connection open until the client hangs up.
                    let _ = tls.read(&mut [0u8; 1]);
                    break;
                }
                (Serve::DieMidReply, _) => {
                    tls.write_all(&head).unwrap();
                    tls.write_all(&disk[off..off + len / 2]).unwrap();
                    tls.flush().unwrap();
                    break;
                }
                (Serve::Disk { key_update_every }, _) => {
                    match cmd {
                        0 => {
                            tls.write_all(&head).unwrap();
                            tls.write_all(&disk[off..off + len]).unwrap();
                        }
                        1 => {
                            tls.read_exact(&mut disk[off..off + len]).unwrap();
                            tls.write_all(&head).unwrap();
                        }
                        _ => tls.write_all(&head).unwrap(),
                    }
                    served += 1;
                    if served.is_multiple_of(key_update_every) {
                        tls.conn.refresh_traffic_keys().unwrap();
                    }
                    tls.flush().unwrap();
                }
            }
        }
        disk
    });
    (port, h)
}

/// A CA and a client directory trusting it, in `dir`; the server
/// certificate for 127.0.0.1.
fn local_pki(dir: &Path) -> (common::tls::Issued, std::path::PathBuf) {
    let ca = TestCa::new("Duality test CA");
    let cert = ca.issue(&["127.0.0.1"], Role::Server);
    (cert, client_dir(&dir.join("client"), &ca, None))
}

#[test]
fn concurrent_large_requests_against_a_server_that_answers_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, client) = local_pki(dir.path());
    // Each of 8 threads reads its own 4 MiB and writes its own 4 MiB, four
    // times: far more than the sockets buffer, while the server stops
    // reading whenever a reply does not fit. A sender that kept the TLS
    // session locked while waiting for room would stop the reader, and the
    // two sides would wait for each other until the request timeout.
    let (threads, piece) = (8usize, 4usize << 20);
    let size = 2 * threads * piece;
    let (port, server) = rustls_nbd_server(
        &cert,
        pattern(size),
        Serve::Disk {
            key_update_every: 7,
        },
    );
    let p = open(&format!(
        "nbds://127.0.0.1:{port}/e?tls-certificates={}",
        client.display()
    ))
    .unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    let expect = Arc::new(pattern(size));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (p, expect) = (p.clone(), expect.clone());
            std::thread::spawn(move || {
                let (rd, wr) = (2 * t * piece, (2 * t + 1) * piece);
                for round in 0..4u8 {
                    let mut buf = vec![0u8; piece];
                    p.data_request(
                        K,
                        ObjectOffset(rd as u64),
                        piece as u64,
                        Access::READ,
                        &[slice(&mut buf)],
                    )
                    .unwrap();
                    assert!(buf[..] == expect[rd..rd + piece]);
                    let mut mine = vec![round ^ t as u8; piece];
                    p.data_write(
                        K,
                        ObjectOffset(wr as u64),
                        piece as u64,
                        &[slice(&mut mine)],
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    p.terminate(K).unwrap();
    drop(p);
    let disk = server.join().unwrap();
    for t in 0..threads {
        let (rd, wr) = (2 * t * piece, (2 * t + 1) * piece);
        assert!(
            disk[wr..wr + piece].iter().all(|&b| b == 3 ^ t as u8),
            "thread {t}"
        );
        assert!(disk[rd..rd + piece] == expect[rd..rd + piece]);
    }
}

#[test]
fn silent_tls_server_times_out_and_the_connection_is_dead() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, client) = local_pki(dir.path());
    let (port, server) = rustls_nbd_server(&cert, pattern(1 << 20), Serve::Silent);
    let opts = OpenOptions {
        request_timeout: std::time::Duration::from_millis(300),
        ..OpenOptions::default()
    };
    let p = pager_backends::open(
        &format!(
            "nbds://127.0.0.1:{port}/e?tls-certificates={}",
            client.display()
        ),
        &opts,
    )
    .unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = p
        .data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)])
        .unwrap_err();
    assert!(matches!(err, PagerError::Timeout(_)), "{err:?}");
    let again = p
        .data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)])
        .unwrap_err();
    assert!(matches!(again, PagerError::Dead(_)), "{again:?}");
    drop(p);
    server.join().unwrap();
}

#[test]
fn tls_server_dying_mid_reply_fails_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, client) = local_pki(dir.path());
    let (port, server) = rustls_nbd_server(&cert, pattern(1 << 20), Serve::DieMidReply);
    let p = open(&format!(
        "nbds://127.0.0.1:{port}/e?tls-certificates={}",
        client.display()
    ))
    .unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    let mut buf = vec![0u8; 65536];
    let err = p
        .data_request(K, ObjectOffset(0), 65536, Access::READ, &[slice(&mut buf)])
        .unwrap_err();
    assert!(
        matches!(&err, PagerError::Dead(m) if m.contains("mid-reply")),
        "{err:?}"
    );
    server.join().unwrap();
}
