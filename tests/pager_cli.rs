//! `vmm pager read|stat`: a user checks a backend before any guest boots.

mod support;
use std::time::{Duration, Instant};
use support::vmm;

#[test]
fn read_returns_the_files_bytes_and_stat_its_size() {
    let path = std::env::temp_dir().join(format!("duality-pager-cli-{}", std::process::id()));
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let uri = format!("file:{}", path.display());

    let out = vmm(
        &["pager", "read", &uri, "--offset", "4096", "--len", "100"],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    // stdout was read as UTF-8 lossily; compare through the same lens.
    assert_eq!(out.stdout, String::from_utf8_lossy(&data[4096..4196]));

    let out = vmm(&["pager", "stat", &uri], &[]);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("10000 bytes"), "{}", out.stdout);
    let _ = std::fs::remove_file(&path);
}

/// `vmm pager stat|read ... | head`: a reader that went away is not an
/// error, and nothing panics.
#[test]
fn a_closed_stdout_is_not_an_error() {
    for args in [
        &["pager", "stat", "zero?size=1M"][..],
        &["pager", "read", "zero?size=1M"][..],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmm"))
            .args(args)
            .stdout(writer)
            .output()
            .expect("run vmm");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn bad_uris_and_missing_files_are_clear_errors() {
    let out = vmm(&["pager", "read", "file:/nonexistent/object"], &[]);
    assert_eq!(out.status, Some(1));
    assert!(out.stderr.contains("/nonexistent/object"), "{}", out.stderr);
    let out = vmm(&["pager", "stat", "gopher://x"], &[]);
    assert_eq!(out.status, Some(1));
    assert!(out.stderr.contains("unknown scheme"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"));
}

/// A scratch directory for one test, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("duality-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn nbd_over_a_unix_socket_through_stat_and_read() {
    let Some(q) = support::need_qemu_nbd("nbd_over_a_unix_socket_through_stat_and_read") else {
        return;
    };
    let dir = Scratch::new("nbd-unix");
    // Printable, so stdout compares exactly through the lossy lens; a
    // whole number of sectors, as qemu-nbd rounds raw images up to one.
    let data: Vec<u8> = (0..3 * 4096 + 512u32)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let file = dir.0.join("disk.img");
    std::fs::write(&file, &data).unwrap();
    let sock = dir.0.join("nbd.sock");
    let _srv = Killed(
        std::process::Command::new(&q)
            .args(["-f", "raw", "-x", "disk", "--persistent", "-k"])
            .arg(&sock)
            .arg(&file)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "qemu-nbd did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());

    let out = vmm(&["pager", "stat", &uri], &[]);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("12800 bytes (4 pages)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(&format!("nbd {uri}")), "{}", out.stdout);

    let out = vmm(
        &["pager", "read", &uri, "--offset", "4000", "--len", "300"],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.as_bytes(), &data[4000..4300]);
    let out = vmm(&["pager", "read", &uri], &[]);
    assert_eq!(out.stdout.as_bytes(), &data[..], "the whole export");

    // The default export of a server with one named export is not there.
    let out = vmm(
        &[
            "pager",
            "stat",
            &format!("nbd+unix:///?socket={}", sock.display()),
        ],
        &[],
    );
    assert_eq!(out.status, Some(1));
    assert!(out.stderr.contains("export not found"), "{}", out.stderr);
}

#[test]
fn file_objects_must_be_regular_files_or_block_devices() {
    let dir = Scratch::new("fifo");
    let fifo = dir.0.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (uri, why) in [
        (format!("file:{}", fifo.display()), "is a FIFO"),
        ("file:/dev/zero".to_string(), "is a character device"),
    ] {
        for cmd in ["stat", "read"] {
            let start = Instant::now();
            let out = vmm(&["pager", cmd, &uri], &[]);
            assert!(start.elapsed() < Duration::from_secs(30), "{uri} blocked");
            assert_eq!(out.status, Some(1), "{uri}: {}", out.stdout);
            assert!(out.stderr.contains(why), "{uri}: {}", out.stderr);
            assert!(
                out.stderr.contains("regular file or a block device"),
                "{}",
                out.stderr
            );
        }
    }
}

#[test]
fn tls_huge_objects_and_unknown_options_are_clear_errors() {
    for (uri, why) in [
        (
            "nbds+unix:///disk?socket=/run/n.sock",
            "tls-hostname: missing",
        ),
        ("nbd://h/e?tls-certificates=/c", "applies only to TLS"),
        ("nbds://h/e?tls-verify-peer=0", "always verified"),
        ("nbd://h/e?foo=1", "unknown option \"foo\""),
        ("nbd+unix:///e", "missing socket"),
        ("nbd://[::1/e", "closing ']'"),
        ("zero?size=1000T", "at most 256 TiB"),
        ("file:/tmp/what?.txt", "ends with a '?'"),
    ] {
        let out = vmm(&["pager", "stat", uri], &[]);
        assert_eq!(out.status, Some(1), "{uri}: {}", out.stdout);
        assert!(out.stderr.contains(why), "{uri}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    // Large anonymous objects are sparse: 8 TiB opens at once.
    let out = vmm(&["pager", "stat", "zero?size=8T"], &[]);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("8796093022208 bytes"), "{}", out.stdout);
}

/// `vmm pager stat|read nbds://...` against qemu-nbd over TLS, and a
/// certificate from a CA the URI does not trust refused by name.
#[test]
fn nbds_through_stat_and_read() {
    let Some(q) = support::need_qemu_nbd("nbds_through_stat_and_read") else {
        return;
    };
    use support::tls::{QemuNbd, QemuTls, Role, TestCa, client_dir, server_dir};
    let dir = Scratch::new("nbds-cli");
    let data: Vec<u8> = (0..2 * 4096u32).map(|i| b'A' + (i % 26) as u8).collect();
    let file = dir.0.join("disk.img");
    std::fs::write(&file, &data).unwrap();
    let ca = TestCa::new("Duality test CA");
    let server = server_dir(
        &dir.0.join("server"),
        &ca,
        &ca.issue(&["127.0.0.1"], Role::Server),
    );
    let client = client_dir(&dir.0.join("client"), &ca, None);
    let tls = QemuTls {
        creds: &server,
        verify_clients: false,
    };
    let srv = QemuNbd::start(&q, &file, "disk", Some(&tls));
    let uri = format!(
        "nbds://127.0.0.1:{}/disk?tls-certificates={}",
        srv.port,
        client.display()
    );
    let out = vmm(&["pager", "stat", &uri], &[]);
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("8192 bytes (2 pages)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(&format!("nbd {uri}")), "{}", out.stdout);
    let out = vmm(
        &["pager", "read", &uri, "--offset", "4000", "--len", "300"],
        &[],
    );
    assert_eq!(out.status, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.as_bytes(), &data[4000..4300]);

    let other = client_dir(&dir.0.join("other"), &TestCa::new("Other CA"), None);
    let out = vmm(
        &[
            "pager",
            "stat",
            &format!(
                "nbds://127.0.0.1:{}/disk?tls-certificates={}",
                srv.port,
                other.display()
            ),
        ],
        &[],
    );
    assert_eq!(out.status, Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("TLS: nbd server 127.0.0.1:")
            && out.stderr.contains("is not signed by the CA in"),
        "{}",
        out.stderr
    );
}

/// An NBD server whose handshake reports an export of `size` bytes, for
/// one client.
fn nbd_server_reporting(size: u64) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let mut head = [0u8; 20];
        let go = s
            .write_all(b"NBDMAGICIHAVEOPT\0\x03")
            .and_then(|()| s.read_exact(&mut head));
        if go.is_err() {
            return;
        }
        let len = u32::from_be_bytes([head[16], head[17], head[18], head[19]]);
        let mut body = vec![0u8; len as usize];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let mut info = vec![0u8, 0];
        info.extend_from_slice(&size.to_be_bytes());
        info.extend_from_slice(&1u16.to_be_bytes());
        for (ty, data) in [(3u32, &info[..]), (1, &[][..])] {
            let mut m = 0x0003_e889_0455_65a9u64.to_be_bytes().to_vec();
            m.extend_from_slice(&7u32.to_be_bytes());
            m.extend_from_slice(&ty.to_be_bytes());
            m.extend_from_slice(&(data.len() as u32).to_be_bytes());
            m.extend_from_slice(data);
            if s.write_all(&m).is_err() {
                return;
            }
        }
        let _ = s.read(&mut [0u8; 1]);
    });
    (port, h)
}

#[test]
fn object_size_near_2_64_from_an_nbd_server_is_refused() {
    for cmd in ["stat", "read"] {
        let (port, h) = nbd_server_reporting(u64::MAX - 7);
        let out = vmm(&["pager", cmd, &format!("nbd://127.0.0.1:{port}/x")], &[]);
        assert_eq!(out.status, Some(1), "{}", out.stdout);
        assert!(
            out.stderr
                .contains("reports an object of 18446744073709551608 bytes"),
            "{}",
            out.stderr
        );
        h.join().unwrap();
    }
}
