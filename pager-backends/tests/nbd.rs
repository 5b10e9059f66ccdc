//! NBD backend against a real qemu-nbd, plus fault injection with
//! deliberately broken servers.

mod common;

use common::tls::{QemuNbd, QemuNbdUnix};
use common::*;
use pager_backends::{Access, KernelId, ObjectOffset, OpenOptions, Pager, PagerError};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

const K: KernelId = KernelId(3);

fn init(p: &dyn Pager) {
    p.init(K, Arc::new(Recorder::default())).unwrap();
}

#[test]
fn reads_writes_and_flushes_against_qemu_nbd() {
    let Some(q) = need_qemu_nbd("reads_writes_and_flushes_against_qemu_nbd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(1 << 20);
    let path = write_file(dir.path(), "disk.img", &data);
    let srv = QemuNbd::start(&q, &path, "disk", None);
    let p = pager_backends::open(&srv.uri("disk"), &OpenOptions::default()).unwrap();
    let info = p.init(K, Arc::new(Recorder::default())).unwrap();
    assert_eq!(info.size, 1 << 20);
    assert!(!info.read_only);
    assert!(p.describe().contains("nbd://127.0.0.1"));

    // Scatter read across two buffers.
    check_scatter_read(&*p, K, &data);

    let mut page = vec![0x42u8; 8192];
    p.data_write(K, ObjectOffset(4096), 8192, &[slice(&mut page)])
        .unwrap();
    p.sync().unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[4096..12288].iter().all(|&b| b == 0x42));
    assert_eq!(&on_disk[12288..], &data[12288..]);
    p.terminate(K).unwrap();
}

#[test]
fn nbd_over_a_unix_socket_against_qemu_nbd() {
    let Some(q) = need_qemu_nbd("nbd_over_a_unix_socket_against_qemu_nbd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(256 << 10);
    let path = write_file(dir.path(), "disk.img", &data);
    let sock = dir.path().join("nbd.sock");
    let _srv = QemuNbdUnix::start(&q, &path, "disk", &sock, None);
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    let p = pager_backends::open(&uri, &OpenOptions::default()).unwrap();
    let info = p.init(K, Arc::new(Recorder::default())).unwrap();
    assert_eq!(info.size, 256 << 10);
    assert!(p.describe().contains(&uri), "{}", p.describe());
    let mut buf = vec![0u8; 8192];
    p.data_request(
        K,
        ObjectOffset(65536),
        8192,
        Access::READ,
        &[slice(&mut buf)],
    )
    .unwrap();
    assert_eq!(buf, &data[65536..65536 + 8192]);
    let mut page = vec![0x24u8; 4096];
    p.data_write(K, ObjectOffset(0), 4096, &[slice(&mut page)])
        .unwrap();
    p.terminate(K).unwrap();
    assert!(
        std::fs::read(&path).unwrap()[..4096]
            .iter()
            .all(|&b| b == 0x24)
    );
    // A wrong export name on the right socket is the server's refusal.
    let err = pager_backends::open(
        &format!("nbd+unix:///nope?socket={}", sock.display()),
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("export not found"), "{err}");
}

#[test]
fn no_server_on_the_unix_socket_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("absent.sock");
    let err = pager_backends::open(
        &format!("nbd+unix:///x?socket={}", sock.display()),
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("absent.sock"), "{err}");
}

/// A server whose handshake reports an export of `size` bytes.
fn server_reporting_size(size: u64) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"NBDMAGICIHAVEOPT").unwrap();
        s.write_all(&3u16.to_be_bytes()).unwrap();
        let mut head = [0u8; 4 + 16];
        s.read_exact(&mut head).unwrap();
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).unwrap();
        let mut info = 0u16.to_be_bytes().to_vec();
        info.extend_from_slice(&size.to_be_bytes());
        info.extend_from_slice(&1u16.to_be_bytes());
        for (ty, data) in [(3u32, &info[..]), (1, &[][..])] {
            let mut m = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
            m.extend_from_slice(&7u32.to_be_bytes());
            m.extend_from_slice(&ty.to_be_bytes());
            m.extend_from_slice(&(data.len() as u32).to_be_bytes());
            m.extend_from_slice(data);
            s.write_all(&m).unwrap();
        }
        // Wait for the client to hang up.
        let _ = s.read(&mut [0u8; 1]);
    });
    (port, h)
}

#[test]
fn export_size_near_2_64_is_refused() {
    for size in [u64::MAX, u64::MAX - 100, 1 << 63] {
        let (port, h) = server_reporting_size(size);
        let err = pager_backends::open(
            &format!("nbd://127.0.0.1:{port}/x"),
            &OpenOptions::default(),
        )
        .err()
        .unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("reports an object of {size} bytes")),
            "{msg}"
        );
        h.join().unwrap();
    }
    // The largest allowed size still opens.
    let (port, h) = server_reporting_size(pager_backends::MAX_OBJECT_SIZE);
    let p = pager_backends::open(
        &format!("nbd://127.0.0.1:{port}/x"),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(
        p.init(K, Arc::new(Recorder::default())).unwrap().size,
        pager_backends::MAX_OBJECT_SIZE
    );
    drop(p);
    h.join().unwrap();
}

#[test]
fn many_requests_in_flight_from_many_threads() {
    let Some(q) = need_qemu_nbd("many_requests_in_flight_from_many_threads") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = Arc::new(pattern(2 << 20));
    let path = write_file(dir.path(), "disk.img", &data);
    let srv = QemuNbd::start(&q, &path, "e", None);
    let p = pager_backends::open(&srv.uri("e"), &OpenOptions::default()).unwrap();
    init(&*p);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (p, data) = (p.clone(), data.clone());
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let off = ((i * 8 + t) * 4096 * 3) % (2 << 20);
                    let len = 4096 * (1 + (i % 4));
                    let len = len.min((2 << 20) - off);
                    let mut buf = vec![0u8; len as usize];
                    p.data_request(K, ObjectOffset(off), len, Access::READ, &[slice(&mut buf)])
                        .unwrap();
                    assert_eq!(
                        &buf[..],
                        &data[off as usize..(off + len) as usize],
                        "thread {t} req {i}"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn read_only_export_refuses_writes() {
    let Some(q) = need_qemu_nbd("read_only_export_refuses_writes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "ro.img", &pattern(65536));
    let srv = QemuNbd::read_only(&q, &path, "ro");
    let p = pager_backends::open(&srv.uri("ro"), &OpenOptions::default()).unwrap();
    let info = p.init(K, Arc::new(Recorder::default())).unwrap();
    assert!(info.read_only);
    let mut page = vec![0u8; 4096];
    assert!(matches!(
        p.data_write(K, ObjectOffset(0), 4096, &[slice(&mut page)]),
        Err(PagerError::ReadOnly)
    ));
}

#[test]
fn server_refusing_the_export_is_a_clear_error() {
    let Some(q) = need_qemu_nbd("server_refusing_the_export_is_a_clear_error") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "d.img", &pattern(65536));
    let srv = QemuNbd::start(&q, &path, "right", None);
    let err = pager_backends::open(&srv.uri("wrong"), &OpenOptions::default())
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(msg.contains("refused export \"wrong\""), "{msg}");
}

#[test]
fn server_not_listening_is_a_clear_error() {
    // A port that was just free and now has nobody listening.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = pager_backends::open(
        &format!("nbd://127.0.0.1:{port}/x"),
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    match &err {
        PagerError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn killed_server_fails_requests_without_hanging() {
    let Some(q) = need_qemu_nbd("killed_server_fails_requests_without_hanging") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(65536);
    let path = write_file(dir.path(), "d.img", &data);
    let mut srv = QemuNbd::start(&q, &path, "e", None);
    let p = pager_backends::open(&srv.uri("e"), &OpenOptions::default()).unwrap();
    init(&*p);
    let mut buf = vec![0u8; 4096];
    p.data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)])
        .unwrap();
    srv.kill();
    let err = p
        .data_request(
            K,
            ObjectOffset(4096),
            4096,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap_err();
    assert!(matches!(err, PagerError::Dead(_)), "{err:?}");
    // And it stays dead, clearly.
    let err = p
        .data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)])
        .unwrap_err();
    assert!(
        err.to_string().contains("nbd connection lost") || err.to_string().contains("nbd"),
        "{err}"
    );
    assert!(p.describe().contains("DEAD"));
}

/// How a fake server misbehaves after a correct handshake.
#[derive(Clone, Copy)]
enum Fault {
    /// Sends the reply header and half the data, then hangs up.
    DieMidReply,
    /// Never answers requests (keeps the socket open until the test ends).
    Silent,
    /// Answers with a garbage magic.
    BadMagic,
    /// Answers a cookie that was never sent.
    WrongCookie,
    /// Answers the first read late (with 9s: once the test says so), then
    /// the next one at once (with 5s).
    Late,
}

/// A minimal hand-written NBD server: enough handshake to get a client to
/// transmission phase, then a fault. Returns the port and the server thread.
fn fake_server(
    fault: Fault,
) -> (
    u16,
    std::thread::JoinHandle<()>,
    std::sync::mpsc::Sender<()>,
) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"NBDMAGICIHAVEOPT").unwrap();
        s.write_all(&3u16.to_be_bytes()).unwrap();
        let mut cflags = [0u8; 4];
        s.read_exact(&mut cflags).unwrap();
        let mut opt = [0u8; 16];
        s.read_exact(&mut opt).unwrap();
        let len = u32::from_be_bytes(opt[12..16].try_into().unwrap());
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).unwrap();
        let rep = |s: &mut TcpStream, ty: u32, data: &[u8]| {
            let mut m = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
            m.extend_from_slice(&7u32.to_be_bytes());
            m.extend_from_slice(&ty.to_be_bytes());
            m.extend_from_slice(&(data.len() as u32).to_be_bytes());
            m.extend_from_slice(data);
            s.write_all(&m).unwrap();
        };
        let mut info = 0u16.to_be_bytes().to_vec();
        info.extend_from_slice(&(1u64 << 20).to_be_bytes());
        info.extend_from_slice(&(1u16 | 4).to_be_bytes());
        rep(&mut s, 3, &info);
        rep(&mut s, 1, &[]);
        let mut req = [0u8; 28];
        if s.read_exact(&mut req).is_err() {
            return;
        }
        let cookie: [u8; 8] = req[8..16].try_into().unwrap();
        let mut reply = 0x6744_6698u32.to_be_bytes().to_vec();
        reply.extend_from_slice(&0u32.to_be_bytes());
        match fault {
            Fault::DieMidReply => {
                reply.extend_from_slice(&cookie);
                reply.extend_from_slice(&[9u8; 2048]);
                s.write_all(&reply).unwrap();
                // dropping `s` closes the connection mid-payload
            }
            Fault::Silent => {
                let _ = rx.recv();
            }
            Fault::BadMagic => {
                s.write_all(&[0xde; 16]).unwrap();
                let _ = rx.recv();
            }
            Fault::WrongCookie => {
                reply.extend_from_slice(&0xdead_beefu64.to_be_bytes());
                s.write_all(&reply).unwrap();
                let _ = rx.recv();
            }
            Fault::Late => {
                // Late: only once the test has seen the read time out.
                let _ = rx.recv();
                let mut late = reply.clone();
                late.extend_from_slice(&cookie);
                late.extend_from_slice(&[9u8; 4096]);
                s.write_all(&late).unwrap();
                if s.read_exact(&mut req).is_ok() {
                    reply.extend_from_slice(&req[8..16]);
                    reply.extend_from_slice(&[5u8; 4096]);
                    s.write_all(&reply).unwrap();
                }
                let _ = rx.recv();
            }
        }
    });
    (port, h, tx)
}

fn fault_case(fault: Fault, opts: &OpenOptions) -> PagerError {
    let (port, h, tx) = fake_server(fault);
    let p = pager_backends::open(&format!("nbd://127.0.0.1:{port}/x"), opts).unwrap();
    init(&*p);
    let mut buf = vec![0x11u8; 4096];
    let err = p
        .data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)])
        .unwrap_err();
    // Whatever state the connection is in, later requests fail too: fast,
    // or (a silent server, not yet given up on) after their own timeout.
    let again = p
        .data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)])
        .unwrap_err();
    match fault {
        Fault::Silent => assert!(matches!(again, PagerError::Timeout(_)), "{again:?}"),
        _ => assert!(matches!(again, PagerError::Dead(_)), "{again:?}"),
    }
    let _ = tx.send(());
    h.join().unwrap();
    err
}

#[test]
fn server_dying_mid_reply_fails_the_request() {
    let err = fault_case(Fault::DieMidReply, &OpenOptions::default());
    assert!(
        matches!(&err, PagerError::Dead(m) if m.contains("mid-reply")),
        "{err:?}"
    );
}

#[test]
fn silent_server_times_out() {
    let opts = OpenOptions {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let err = fault_case(Fault::Silent, &opts);
    assert!(matches!(err, PagerError::Timeout(_)), "{err:?}");
}

#[test]
fn a_server_late_once_times_out_that_read_and_keeps_serving() {
    let opts = OpenOptions {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let (port, h, tx) = fake_server(Fault::Late);
    let p = pager_backends::open(&format!("nbd://127.0.0.1:{port}/x"), &opts).unwrap();
    init(&*p);
    let mut first = vec![0x11u8; 4096];
    let err = p
        .data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut first)])
        .unwrap_err();
    assert!(matches!(err, PagerError::Timeout(_)), "{err:?}");
    tx.send(()).unwrap();
    // The server sends the late reply before it reads the next request, so
    // the client's reader meets (and drops) it first; the connection goes on.
    let mut buf = vec![0u8; 4096];
    p.data_request(
        K,
        ObjectOffset(4096),
        4096,
        Access::READ,
        &[slice(&mut buf)],
    )
    .expect("served after a late reply");
    assert!(buf.iter().all(|&b| b == 5));
    assert!(
        first.iter().all(|&b| b == 0x11),
        "the late data reached a buffer given up on"
    );
    let _ = tx.send(());
    h.join().unwrap();
}

#[test]
fn garbage_replies_are_protocol_errors() {
    let err = fault_case(Fault::BadMagic, &OpenOptions::default());
    assert!(err.to_string().contains("bad reply magic"), "{err}");
    let err = fault_case(Fault::WrongCookie, &OpenOptions::default());
    assert!(
        err.to_string().contains("unknown or finished request"),
        "{err}"
    );
}

#[test]
fn not_an_nbd_server() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
    });
    let err = pager_backends::open(
        &format!("nbd://127.0.0.1:{port}/x"),
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("not an NBD server"), "{err}");
    h.join().unwrap();
}
