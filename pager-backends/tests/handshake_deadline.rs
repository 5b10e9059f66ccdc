//! Opening a remote pager or NBD server has one deadline (the connect
//! timeout) for the connect and the whole handshake. Peers here trickle
//! a valid handshake a byte at a time, each byte long before any per-read
//! timeout, or never accept the connection: the open must fail with an
//! error naming the peer and where it was stuck, not hang.

mod common;

use common::tls::{TestCa, client_dir};
use pager_backends::unix::proto as p;
use pager_backends::{HandshakePhase, OpenOptions, PagerError};
use socket2::{Domain, SockAddr, Socket, Type};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The whole open's budget in these tests.
const DEADLINE: Duration = Duration::from_millis(500);
/// Between two trickled bytes: a tenth of the deadline, so no single read
/// waits anywhere near a timeout of the deadline's length.
const DRIP: Duration = Duration::from_millis(50);
/// Not a speed target: an open still running after this has hung.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// Opens `uri` with the short deadline and returns why it failed.
fn open_fails(uri: &str) -> PagerError {
    let (tx, rx) = mpsc::channel();
    let u = uri.to_string();
    std::thread::spawn(move || {
        let opts = OpenOptions {
            connect_timeout: DEADLINE,
            ..OpenOptions::default()
        };
        let _ = tx.send(pager_backends::open(&u, &opts).err());
    });
    match rx.recv_timeout(HANG_GUARD) {
        Ok(Some(e)) => e,
        Ok(None) => panic!("{uri}: opened, though its peer is slower than the deadline"),
        Err(_) => panic!("{uri}: the open hung for {HANG_GUARD:?}"),
    }
}

/// Checks `err` is the deadline's, stuck in `phase`; returns its message.
fn assert_stuck(err: PagerError, phase: HandshakePhase) -> String {
    match &err {
        PagerError::HandshakeTimeout {
            phase: got, within, ..
        } => {
            assert_eq!(*got, phase, "{err}");
            assert_eq!(*within, DEADLINE, "{err}");
        }
        other => panic!("not the handshake deadline: {other:?}"),
    }
    err.to_string()
}

/// Sends `bytes` one at a time, DRIP apart, until done or the client has
/// gone.
fn trickle(s: &mut impl Write, bytes: &[u8]) {
    for b in bytes {
        std::thread::sleep(DRIP);
        if s.write_all(&[*b]).is_err() {
            return;
        }
    }
}

/// Where a fake NBD server slows down.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stall {
    Greeting,
    /// The replies to NBD_OPT_GO.
    Options,
    /// The ACK to NBD_OPT_STARTTLS.
    StartTls,
    /// The TLS handshake: the start of a record that never completes.
    Tls,
}

/// An option reply: (option, reply type, data).
fn opt_reply(opt: u32, ty: u32, data: &[u8]) -> Vec<u8> {
    let mut m = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&ty.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    m
}

/// A fake NBD server, correct but slow at `stall`, for one client.
fn nbd_server(stall: Stall) -> (u16, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // Fixed newstyle, no zeroes.
        let greeting = b"NBDMAGICIHAVEOPT\0\x03";
        if stall == Stall::Greeting {
            return trickle(&mut s, greeting);
        }
        s.write_all(greeting).unwrap();
        // Our flags, then the first option's header and data.
        let mut head = [0u8; 4 + 16];
        s.read_exact(&mut head).unwrap();
        let opt = u32::from_be_bytes(head[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
        s.read_exact(&mut vec![0u8; len as usize]).unwrap();
        match stall {
            Stall::Greeting => unreachable!(),
            Stall::Options => {
                assert_eq!(opt, 7, "NBD_OPT_GO");
                let mut info = 0u16.to_be_bytes().to_vec();
                info.extend_from_slice(&(1u64 << 20).to_be_bytes());
                info.extend_from_slice(&1u16.to_be_bytes());
                let mut replies = opt_reply(7, 3, &info);
                replies.extend_from_slice(&opt_reply(7, 1, &[]));
                trickle(&mut s, &replies);
            }
            Stall::StartTls => {
                assert_eq!(opt, 5, "NBD_OPT_STARTTLS");
                trickle(&mut s, &opt_reply(5, 1, &[]));
            }
            Stall::Tls => {
                assert_eq!(opt, 5, "NBD_OPT_STARTTLS");
                s.write_all(&opt_reply(5, 1, &[])).unwrap();
                // A handshake record of 16 KiB, sent a byte at a time.
                let mut record = vec![0x16, 3, 3, 0x40, 0];
                record.resize(64, 0);
                trickle(&mut s, &record);
            }
        }
    });
    (port, h)
}

#[test]
fn nbd_server_trickling_its_option_replies_is_cut_off_at_the_deadline() {
    let (port, h) = nbd_server(Stall::Options);
    let msg = assert_stuck(
        open_fails(&format!("nbd://127.0.0.1:{port}/x")),
        HandshakePhase::Options,
    );
    assert_eq!(
        msg,
        format!(
            "NBD handshake with 127.0.0.1:{port} did not finish within 500ms (stuck in option negotiation)"
        )
    );
    h.join().unwrap();
}

#[test]
fn nbd_server_trickling_its_greeting_is_cut_off_at_the_deadline() {
    let (port, h) = nbd_server(Stall::Greeting);
    let msg = assert_stuck(
        open_fails(&format!("nbd://127.0.0.1:{port}/x")),
        HandshakePhase::Greeting,
    );
    assert!(msg.contains("(stuck in the greeting)"), "{msg}");
    h.join().unwrap();
}

#[test]
fn nbds_server_trickling_starttls_or_tls_is_cut_off_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Duality test CA");
    let certs = client_dir(dir.path(), &ca, None);
    for (stall, phase, words) in [
        (Stall::StartTls, HandshakePhase::StartTls, "STARTTLS"),
        (Stall::Tls, HandshakePhase::Tls, "the TLS handshake"),
    ] {
        let (port, h) = nbd_server(stall);
        let msg = assert_stuck(
            open_fails(&format!(
                "nbds://127.0.0.1:{port}/x?tls-certificates={}",
                certs.display()
            )),
            phase,
        );
        assert!(msg.contains(&format!("(stuck in {words})")), "{msg}");
        h.join().unwrap();
    }
}

/// A fake external pager that trickles its hello reply, then answers the
/// EXTENT the client asks at connect (if the client is still there).
fn unix_pager_trickling_hello(sock: &std::path::Path) -> JoinHandle<()> {
    let l = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.read_exact(&mut [0u8; 32]).unwrap();
        let head = p::Header {
            len: 16,
            kind: p::T_HELLO_REPLY,
            flags: 0,
            id: 0,
        };
        let mut reply = head.encode().to_vec();
        reply.extend_from_slice(&p::MAGIC);
        reply.extend_from_slice(&p::VERSION.to_le_bytes());
        reply.extend_from_slice(&0u16.to_le_bytes());
        reply.extend_from_slice(&p::DEFAULT_MAX_PAYLOAD.to_le_bytes());
        trickle(&mut s, &reply);
        let mut h = [0u8; p::HEADER_LEN];
        if s.read_exact(&mut h).is_err() {
            return;
        }
        let Ok(hd) = p::Header::decode(&h, p::DEFAULT_MAX_PAYLOAD) else {
            return;
        };
        let mut extent = p::Header {
            len: 8,
            kind: p::T_EXTENT_REPLY,
            flags: 0,
            id: hd.id,
        }
        .encode()
        .to_vec();
        extent.extend_from_slice(&(1u64 << 20).to_le_bytes());
        let _ = s.write_all(&extent);
    })
}

#[test]
fn external_pager_trickling_its_hello_is_cut_off_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("slow.sock");
    let h = unix_pager_trickling_hello(&sock);
    let msg = assert_stuck(
        open_fails(&format!("unix:{}", sock.display())),
        HandshakePhase::Hello,
    );
    assert_eq!(
        msg,
        format!(
            "external pager handshake with {} did not finish within 500ms (stuck in the hello exchange)",
            sock.display()
        )
    );
    h.join().unwrap();
}

/// A listening socket with room for one connection that nobody accepts,
/// and that one connection: the next connect waits for room.
fn full_listener(domain: Domain, addr: &SockAddr) -> (Socket, Socket) {
    let l = Socket::new(domain, Type::STREAM, None).unwrap();
    l.bind(addr).unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap();
    let filler = Socket::new(domain, Type::STREAM, None).unwrap();
    filler.connect(&addr).unwrap();
    (l, filler)
}

#[test]
fn a_unix_socket_that_never_accepts_is_cut_off_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("full.sock");
    let _full = full_listener(Domain::UNIX, &SockAddr::unix(&sock).unwrap());
    for uri in [
        format!("unix:{}", sock.display()),
        format!("nbd+unix:///x?socket={}", sock.display()),
    ] {
        let msg = assert_stuck(open_fails(&uri), HandshakePhase::Connect);
        assert!(msg.contains("(stuck in connect)"), "{msg}");
    }
}

#[test]
fn a_tcp_server_that_never_accepts_is_cut_off_at_the_deadline() {
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (l, _filler) = full_listener(Domain::IPV4, &any.into());
    let port = l.local_addr().unwrap().as_socket().unwrap().port();
    let msg = assert_stuck(
        open_fails(&format!("nbd://127.0.0.1:{port}/x")),
        HandshakePhase::Connect,
    );
    assert_eq!(
        msg,
        format!(
            "NBD handshake with 127.0.0.1:{port} did not finish within 500ms (stuck in connect)"
        )
    );
}
