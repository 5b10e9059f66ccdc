//! External pager protocol: a real pager process (the procedural-pager
//! binary), the in-process SDK, and deliberately broken peers.

mod common;

use common::*;
use pager_backends::procedural::generate_page;
use pager_backends::unix::proto as p;
use pager_backends::{
    Access, DataReply, KernelControl, KernelId, LockRequest, ObjectInfo, ObjectOffset, OpenOptions,
    Pager, PagerError, UnlockReply,
};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::VolatileSlice;

const K: KernelId = KernelId(0);
const SEED: u64 = 0xfeed;

fn expected(off: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for o in (off..off + len).step_by(4096) {
        let mut page = [0u8; 4096];
        generate_page(SEED, o, &mut page);
        out.extend_from_slice(&page);
    }
    out
}

#[test]
fn real_pager_process_serves_generated_data_and_keeps_writes() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p.sock");
    let _child = start_procedural(&sock, 1 << 40, SEED);
    let p =
        pager_backends::open(&format!("unix:{}", sock.display()), &OpenOptions::default()).unwrap();
    let info = p.init(K, Arc::new(Recorder::default())).unwrap();
    assert_eq!(info.size, 1 << 40, "a terabyte no file has to hold");
    assert!(p.describe().contains("procedural data"));
    // Far into the object, in two scattered buffers.
    let off = 700u64 << 30;
    let (mut a, mut b) = (vec![0u8; 6000], vec![0u8; 2192]);
    let r = p
        .data_request(
            K,
            ObjectOffset(off),
            8192,
            Access::READ,
            &[slice(&mut a), slice(&mut b)],
        )
        .unwrap();
    assert_eq!(
        r,
        DataReply::Provided {
            bytes: 8192,
            lock: Access::NONE
        }
    );
    assert_eq!([a, b].concat(), expected(off, 8192));
    // Dirty page goes back and is what we read next time.
    let mut page = vec![0x77u8; 4096];
    p.data_write(K, ObjectOffset(off), 4096, &[slice(&mut page)])
        .unwrap();
    let mut buf = vec![0u8; 8192];
    p.data_request(K, ObjectOffset(off), 8192, Access::READ, &[slice(&mut buf)])
        .unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0x77));
    assert_eq!(&buf[4096..], &expected(off + 4096, 4096)[..]);
    assert_eq!(
        p.data_unlock(K, ObjectOffset(0), 4096, Access::WRITE)
            .unwrap(),
        UnlockReply { lock: Access::NONE }
    );
    p.sync().unwrap();
    assert_eq!(p.extent().unwrap(), 1 << 40);
    p.terminate(K).unwrap();
    // Terminated kernels are refused locally and by the pager.
    assert!(matches!(p.terminate(K), Err(PagerError::UnknownKernel(0))));
    let err = p
        .data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)])
        .unwrap_err();
    assert!(matches!(err, PagerError::UnknownKernel(0)), "{err:?}");
}

#[test]
fn parallel_requests_to_a_real_pager() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p.sock");
    let _child = start_procedural(&sock, 1 << 30, SEED);
    let p =
        pager_backends::open(&format!("unix:{}", sock.display()), &OpenOptions::default()).unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..40u64 {
                    let off = (t * 1000 + i * 17) * 4096;
                    let len = 4096 * (1 + i % 16);
                    let mut buf = vec![0u8; len as usize];
                    p.data_request(K, ObjectOffset(off), len, Access::READ, &[slice(&mut buf)])
                        .unwrap();
                    assert_eq!(buf, expected(off, len));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn pager_process_dying_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("p.sock");
    let mut child = start_procedural(&sock, 1 << 20, SEED);
    let p =
        pager_backends::open(&format!("unix:{}", sock.display()), &OpenOptions::default()).unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let mut buf = vec![0u8; 4096];
    let err = p
        .data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)])
        .unwrap_err();
    assert!(matches!(err, PagerError::Dead(_)), "{err:?}");
    assert!(err.to_string().contains("external pager"), "{err}");
    assert!(p.describe().contains("unreachable"));
    // Nobody listening any more.
    std::fs::remove_file(&sock).unwrap();
    let err = pager_backends::open(&format!("unix:{}", sock.display()), &OpenOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("p.sock"), "{err}");
}

/// A pager that speaks first: on a request for page 0 it locks, offers,
/// changes cache permission and finally destroys, before replying.
#[derive(Default)]
struct Chatty {
    ctl: Mutex<Option<Arc<dyn KernelControl>>>,
}

impl Pager for Chatty {
    fn init(
        &self,
        _k: KernelId,
        control: Arc<dyn KernelControl>,
    ) -> pager_backends::Result<ObjectInfo> {
        *self.ctl.lock().unwrap() = Some(control);
        Ok(ObjectInfo {
            size: 1 << 20,
            read_only: false,
            may_cache: true,
        })
    }
    fn data_request(
        &self,
        _k: KernelId,
        offset: ObjectOffset,
        len: u64,
        _d: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<DataReply> {
        let ctl = self.ctl.lock().unwrap().clone().unwrap();
        ctl.lock_request(offset, len, Access::WRITE, true, false)?;
        ctl.offer(ObjectOffset(65536), &[9u8; 8192], Access::NONE)?;
        ctl.set_cache(false)?;
        ctl.destroy("going away")?;
        // Unavailable for even pages, read-ahead of 2 pages for odd ones.
        if (offset.raw() / 4096).is_multiple_of(2) {
            Ok(DataReply::Unavailable { bytes: len })
        } else {
            bufs[0].subslice(0, 8192).unwrap().copy_from(&[5u8; 8192]);
            Ok(DataReply::Provided {
                bytes: 8192,
                lock: Access::WRITE,
            })
        }
    }
    fn data_write(
        &self,
        _k: KernelId,
        _o: ObjectOffset,
        _l: u64,
        _b: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<()> {
        Err(PagerError::ReadOnly)
    }
    fn data_unlock(
        &self,
        _k: KernelId,
        _o: ObjectOffset,
        _l: u64,
        _d: Access,
    ) -> pager_backends::Result<UnlockReply> {
        Ok(UnlockReply { lock: Access::NONE })
    }
    fn extent(&self) -> pager_backends::Result<u64> {
        Ok(1 << 20)
    }
    fn sync(&self) -> pager_backends::Result<()> {
        Ok(())
    }
    fn terminate(&self, _k: KernelId) -> pager_backends::Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "chatty".into()
    }
}

/// Answers every request with pages of `offset / 4096` bytes, but sleeps
/// `late` first on its first data request: a pager that is slow once.
struct Late {
    first: std::sync::atomic::AtomicBool,
    /// The first request waits for `release`, then says on `answered` that
    /// its (late) answer is on its way.
    release: Mutex<std::sync::mpsc::Receiver<()>>,
    answered: Mutex<std::sync::mpsc::Sender<()>>,
}

impl Pager for Late {
    fn init(&self, _k: KernelId, _c: Arc<dyn KernelControl>) -> pager_backends::Result<ObjectInfo> {
        Ok(ObjectInfo {
            size: 1 << 20,
            read_only: false,
            may_cache: false,
        })
    }
    fn data_request(
        &self,
        _k: KernelId,
        offset: ObjectOffset,
        len: u64,
        _d: Access,
        bufs: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<DataReply> {
        let late = self.first.swap(false, std::sync::atomic::Ordering::SeqCst);
        if late {
            let _ = self.release.lock().unwrap().recv();
        }
        let fill = vec![(offset.raw() / 4096) as u8; len as usize];
        bufs[0].subslice(0, len as usize).unwrap().copy_from(&fill);
        if late {
            let _ = self.answered.lock().unwrap().send(());
        }
        Ok(DataReply::Provided {
            bytes: len,
            lock: Access::NONE,
        })
    }
    fn data_write(
        &self,
        _k: KernelId,
        _o: ObjectOffset,
        _l: u64,
        _b: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<()> {
        Ok(())
    }
    fn data_unlock(
        &self,
        _k: KernelId,
        _o: ObjectOffset,
        _l: u64,
        _d: Access,
    ) -> pager_backends::Result<UnlockReply> {
        Ok(UnlockReply { lock: Access::NONE })
    }
    fn extent(&self) -> pager_backends::Result<u64> {
        Ok(1 << 20)
    }
    fn sync(&self) -> pager_backends::Result<()> {
        Ok(())
    }
    fn terminate(&self, _k: KernelId) -> pager_backends::Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "late".into()
    }
}

#[test]
fn a_pager_late_once_times_out_that_request_and_keeps_serving() {
    let (release, release_rx) = std::sync::mpsc::channel();
    let (answered_tx, answered) = std::sync::mpsc::channel();
    let (_d, uri) = serve_in_process(Arc::new(Late {
        first: true.into(),
        release: Mutex::new(release_rx),
        answered: Mutex::new(answered_tx),
    }));
    let opts = OpenOptions {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let p = pager_backends::open(&uri, &opts).unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    let mut first = vec![0xeeu8; 4096];
    let err = p
        .data_request(
            K,
            ObjectOffset(3 * 4096),
            4096,
            Access::READ,
            &[slice(&mut first)],
        )
        .unwrap_err();
    assert!(matches!(err, PagerError::Timeout(_)), "{err:?}");
    // The connection is still good while the first is unanswered...
    let read = |round: &str| {
        let mut buf = vec![0u8; 8192];
        let r = p
            .data_request(
                K,
                ObjectOffset(5 * 4096),
                8192,
                Access::READ,
                &[slice(&mut buf)],
            )
            .unwrap_or_else(|e| panic!("{round}: {e:?}"));
        assert_eq!(
            r,
            DataReply::Provided {
                bytes: 8192,
                lock: Access::NONE
            },
            "{round}"
        );
        assert!(buf.iter().all(|&b| b == 5), "{round}");
    };
    read("before the late answer");
    // ...and after its late answer was sent (and dropped by the client).
    release.send(()).unwrap();
    answered.recv().unwrap();
    for round in ["after the late answer", "again"] {
        read(round);
    }
    // The late answer went nowhere near the buffer given up on.
    assert!(first.iter().all(|&b| b == 0xee));
}

fn serve_in_process(pager: Arc<dyn Pager>) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let l = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || pager_backends::unix::serve(l, pager));
    (dir, format!("unix:{}", sock.display()))
}

#[test]
fn pager_speaks_first_and_errors_travel() {
    let (_d, uri) = serve_in_process(Arc::new(Chatty::default()));
    let p = pager_backends::open(&uri, &OpenOptions::default()).unwrap();
    let rec = Arc::new(Recorder::default());
    p.init(K, rec.clone()).unwrap();
    let mut buf = vec![0u8; 16384];
    // The unprompted messages precede the reply on the socket, so they have
    // been delivered by the time the request returns.
    let r = p
        .data_request(
            K,
            ObjectOffset(4096),
            4096,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap();
    assert_eq!(
        r,
        DataReply::Provided {
            bytes: 8192,
            lock: Access::WRITE
        }
    );
    assert!(buf[..8192].iter().all(|&b| b == 5));
    assert_eq!(
        *rec.events.lock().unwrap(),
        vec![
            "lock 0x1000 4096 2 true false",
            "offer 0x10000 8192 0 first=9",
            "cache false",
            "destroy going away"
        ]
    );
    let r = p
        .data_request(
            K,
            ObjectOffset(8192),
            4096,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap();
    assert_eq!(r, DataReply::Unavailable { bytes: 4096 });
    // A pager's error arrives as the same error.
    let err = p
        .data_write(K, ObjectOffset(0), 4096, &[slice(&mut buf)])
        .unwrap_err();
    assert!(matches!(err, PagerError::ReadOnly), "{err:?}");
    assert!(p.describe().ends_with("chatty"));
}

/// A pager that asks for lock completion: a data request for a page
/// makes it clean-and-lock that page with a reply (cookie = the page
/// number + 100), and it records the completions it is told of.
#[derive(Default)]
struct Replier {
    ctl: Mutex<Option<Arc<dyn KernelControl>>>,
    kernel: Mutex<Option<KernelId>>,
    completed: Mutex<Vec<(KernelId, ObjectOffset, u64, u64)>>,
}

impl Pager for Replier {
    fn init(
        &self,
        k: KernelId,
        control: Arc<dyn KernelControl>,
    ) -> pager_backends::Result<ObjectInfo> {
        *self.ctl.lock().unwrap() = Some(control);
        *self.kernel.lock().unwrap() = Some(k);
        Ok(ObjectInfo {
            size: 1 << 20,
            read_only: false,
            may_cache: false,
        })
    }
    fn data_request(
        &self,
        _k: KernelId,
        offset: ObjectOffset,
        len: u64,
        _d: Access,
        _bufs: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<DataReply> {
        let ctl = self.ctl.lock().unwrap().clone().unwrap();
        let req = LockRequest {
            lock: Access::WRITE,
            clean: true,
            flush: false,
        };
        ctl.lock_request_with_reply(offset, len, req, offset.raw() / 4096 + 100)?;
        Ok(DataReply::Unavailable { bytes: len })
    }
    fn data_write(
        &self,
        _k: KernelId,
        _o: ObjectOffset,
        _l: u64,
        _b: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<()> {
        Ok(())
    }
    fn data_unlock(
        &self,
        _k: KernelId,
        _o: ObjectOffset,
        _l: u64,
        _d: Access,
    ) -> pager_backends::Result<UnlockReply> {
        Ok(UnlockReply { lock: Access::NONE })
    }
    fn extent(&self) -> pager_backends::Result<u64> {
        Ok(1 << 20)
    }
    fn sync(&self) -> pager_backends::Result<()> {
        Ok(())
    }
    fn lock_completed(
        &self,
        k: KernelId,
        offset: ObjectOffset,
        len: u64,
        cookie: u64,
    ) -> pager_backends::Result<()> {
        if cookie == 666 {
            return Err(PagerError::BadRange {
                offset,
                len,
                why: "no such request",
            });
        }
        self.completed
            .lock()
            .unwrap()
            .push((k, offset, len, cookie));
        Ok(())
    }
    fn terminate(&self, _k: KernelId) -> pager_backends::Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "replier".into()
    }
}

#[test]
fn lock_request_with_reply_and_its_completion_travel_both_ways() {
    let pager = Arc::new(Replier::default());
    let (_d, uri) = serve_in_process(pager.clone());
    let p = pager_backends::open(&uri, &OpenOptions::default()).unwrap();
    let rec = Arc::new(Recorder::default());
    p.init(K, rec.clone()).unwrap();
    let mut buf = vec![0u8; 4096];
    p.data_request(
        K,
        ObjectOffset(8192),
        4096,
        Access::READ,
        &[slice(&mut buf)],
    )
    .unwrap();
    // The pager's request, with its cookie, reached the kernel side's
    // control (before the reply, as every unprompted message does).
    assert_eq!(
        *rec.events.lock().unwrap(),
        vec!["lock 0x2000 4096 2 true false reply 102"]
    );
    assert!(pager.completed.lock().unwrap().is_empty());
    // The kernel's completion reaches the pager with the same range and
    // cookie, for the kernel id the pager knows.
    p.lock_completed(K, ObjectOffset(8192), 4096, 102).unwrap();
    let k = pager.kernel.lock().unwrap().unwrap();
    assert_eq!(
        *pager.completed.lock().unwrap(),
        vec![(k, ObjectOffset(8192), 4096, 102)]
    );
    // The pager's error travels back; the connection stays up.
    let err = p.lock_completed(K, ObjectOffset(0), 4096, 666).unwrap_err();
    assert!(matches!(err, PagerError::BadRange { .. }), "{err:?}");
    // A kernel the pager does not know is refused.
    let err = p
        .lock_completed(KernelId(9), ObjectOffset(0), 4096, 1)
        .unwrap_err();
    assert!(matches!(err, PagerError::UnknownKernel(9)), "{err:?}");
    assert!(p.describe().ends_with("replier"));
}

#[test]
fn a_version_1_kernel_side_cannot_be_asked_for_completion() {
    let pager = Arc::new(Replier::default());
    let (_d, uri) = serve_in_process(pager.clone());
    let path = uri.strip_prefix("unix:").unwrap();
    let mut s = UnixStream::connect(path).unwrap();
    // An old kernel side: version 1 only.
    let mut body = p::MAGIC.to_vec();
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&(1u32 << 20).to_le_bytes());
    s.write_all(&frame(p::T_HELLO, 0, &body)).unwrap();
    let mut reply = [0u8; 32];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(
        u16::from_le_bytes([reply[24], reply[25]]),
        1,
        "version 1 chosen"
    );
    s.write_all(&frame(p::T_INIT, 1, &0u64.to_le_bytes()))
        .unwrap();
    s.read_exact(&mut reply).unwrap(); // INFO
    // The pager's lock request with reply is refused on its side: the
    // data request it makes it in fails, and nothing but that error comes.
    let mut req = Vec::new();
    for v in [0u64, 4096, 4096, 4096] {
        req.extend_from_slice(&v.to_le_bytes());
    }
    req.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
    s.write_all(&frame(p::T_DATA_REQUEST, 2, &req)).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let hd = p::Header::decode(&h, 1 << 20).unwrap();
    assert_eq!((hd.kind, hd.id), (p::T_ERROR, 2));
    let mut rest = vec![0u8; hd.len as usize];
    s.read_exact(&mut rest).unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("version 1"));
    // And LOCK_COMPLETED is not a version 1 message.
    let mut lc = Vec::new();
    for v in [0u64, 4096, 4096, 100] {
        lc.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&frame(p::T_LOCK_COMPLETED, 3, &lc)).unwrap();
    s.read_exact(&mut h).unwrap();
    assert_eq!(p::Header::decode(&h, 1 << 20).unwrap().kind, p::T_ERROR);
    assert!(pager.completed.lock().unwrap().is_empty());
}

/// A hand-written "pager" that completes the hello and then does `act`
/// with the first request it reads (header + payload).
fn evil_pager(
    act: impl FnOnce(&mut UnixStream, p::Header) + Send + 'static,
) -> (tempfile::TempDir, String, std::thread::JoinHandle<()>) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("evil.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut hello = [0u8; 32];
        s.read_exact(&mut hello).unwrap();
        let mut body = p::MAGIC.to_vec();
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&(16u32 << 20).to_le_bytes());
        let head = p::Header {
            len: 16,
            kind: p::T_HELLO_REPLY,
            flags: 0,
            id: 0,
        }
        .encode();
        s.write_all(&head).unwrap();
        s.write_all(&body).unwrap();
        // The client's first request is EXTENT (at connect).
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        let hd = p::Header::decode(&h, u32::MAX).unwrap();
        let mut payload = vec![0u8; hd.len as usize];
        s.read_exact(&mut payload).unwrap();
        act(&mut s, hd);
    });
    (dir, format!("unix:{}", sock.display()), h)
}

fn frame(kind: u16, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut m = p::Header {
        len: payload.len() as u32,
        kind,
        flags: 0,
        id,
    }
    .encode()
    .to_vec();
    m.extend_from_slice(payload);
    m
}

fn open_evil(act: impl FnOnce(&mut UnixStream, p::Header) + Send + 'static) -> String {
    let (_d, uri, h) = evil_pager(act);
    let err = pager_backends::open(
        &uri,
        &OpenOptions {
            request_timeout: Duration::from_millis(500),
            ..Default::default()
        },
    )
    .err()
    .expect("a broken pager must not open cleanly");
    h.join().unwrap();
    err.to_string()
}

#[test]
fn malformed_reply_is_a_protocol_error() {
    // EXTENT reply with a 3-byte payload.
    let msg = open_evil(|s, hd| {
        s.write_all(&frame(p::T_EXTENT_REPLY, hd.id, &[1, 2, 3]))
            .unwrap()
    });
    assert!(msg.contains("malformed payload length"), "{msg}");
    // Reserved flags set.
    let msg = open_evil(|s, hd| {
        let mut m = frame(p::T_EXTENT_REPLY, hd.id, &[0; 8]);
        m[6] = 1;
        s.write_all(&m).unwrap();
    });
    assert!(msg.contains("reserved flags"), "{msg}");
    // Wrong reply type for the request.
    let msg = open_evil(|s, hd| s.write_all(&frame(p::T_OK, hd.id, &[])).unwrap());
    assert!(msg.contains("does not answer"), "{msg}");
    // Unknown message type.
    let msg = open_evil(|s, hd| s.write_all(&frame(0x99, hd.id, &[])).unwrap());
    assert!(msg.contains("unknown message type"), "{msg}");
}

#[test]
fn oversized_message_is_refused_without_reading_it() {
    let msg = open_evil(|s, hd| {
        let head = p::Header {
            len: u32::MAX,
            kind: p::T_EXTENT_REPLY,
            flags: 0,
            id: hd.id,
        }
        .encode();
        s.write_all(&head).unwrap();
    });
    assert!(msg.contains("exceeds"), "{msg}");
}

#[test]
fn out_of_order_reply_is_refused() {
    let msg = open_evil(|s, hd| {
        s.write_all(&frame(p::T_EXTENT_REPLY, hd.id ^ 0x55, &[0; 8]))
            .unwrap()
    });
    assert!(msg.contains("out-of-order"), "{msg}");
}

#[test]
fn pager_closing_the_socket_mid_request() {
    let msg = open_evil(|_s, _hd| { /* drop: close without answering */ });
    assert!(msg.contains("closed the connection"), "{msg}");
}

#[test]
fn silent_pager_times_out() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let msg = {
        let (_d, uri, h) = evil_pager(move |_s, _hd| {
            let _ = rx.recv();
        });
        let opts = OpenOptions {
            request_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let err = pager_backends::open(&uri, &opts).err().unwrap();
        tx.send(()).unwrap();
        h.join().unwrap();
        err
    };
    assert!(matches!(msg, PagerError::Timeout(_)), "{msg:?}");
}

#[test]
fn bad_hello_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("v.sock");
    let l = UnixListener::bind(&sock).unwrap();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut hello = [0u8; 32];
        s.read_exact(&mut hello).unwrap();
        let mut body = p::MAGIC.to_vec();
        body.extend_from_slice(&9u16.to_le_bytes()); // a version we never offered
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&(16u32 << 20).to_le_bytes());
        s.write_all(&frame(p::T_HELLO_REPLY, 0, &body)).unwrap();
    });
    let err = pager_backends::open(&format!("unix:{}", sock.display()), &OpenOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("version 9"), "{err}");
    h.join().unwrap();
}

#[test]
fn server_rejects_a_misbehaving_kernel_side() {
    let (_d, uri) = serve_in_process(Arc::new(Chatty::default()));
    let path = uri.strip_prefix("unix:").unwrap();
    let mut s = UnixStream::connect(path).unwrap();
    // Wrong version range.
    let mut body = p::MAGIC.to_vec();
    body.extend_from_slice(&5u16.to_le_bytes());
    body.extend_from_slice(&6u16.to_le_bytes());
    body.extend_from_slice(&(1u32 << 20).to_le_bytes());
    s.write_all(&frame(p::T_HELLO, 0, &body)).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(p::Header::decode(&h, 1 << 20).unwrap().kind, p::T_ERROR);
    // A request larger than the server's limit ends the connection with an error.
    let mut s = UnixStream::connect(path).unwrap();
    let mut body = p::MAGIC.to_vec();
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&(1u32 << 20).to_le_bytes());
    s.write_all(&frame(p::T_HELLO, 0, &body)).unwrap();
    let mut reply = [0u8; 32];
    s.read_exact(&mut reply).unwrap();
    s.write_all(
        &p::Header {
            len: u32::MAX,
            kind: p::T_DATA_WRITE,
            flags: 0,
            id: 1,
        }
        .encode(),
    )
    .unwrap();
    s.read_exact(&mut h).unwrap();
    assert_eq!(p::Header::decode(&h, 1 << 20).unwrap().kind, p::T_ERROR);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap(); // then EOF: the server hung up
    assert!(String::from_utf8_lossy(&rest).contains("exceeds"));
}

#[test]
fn a_stalled_pager_does_not_stall_other_objects() {
    // Object A: a pager that never answers data requests (until released).
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (_d, uri, h) = evil_pager(move |s, hd| {
        s.write_all(&frame(
            p::T_EXTENT_REPLY,
            hd.id,
            &(1u64 << 20).to_le_bytes(),
        ))
        .unwrap();
        let mut head = [0u8; 16];
        s.read_exact(&mut head).unwrap(); // INIT
        let hd = p::Header::decode(&head, u32::MAX).unwrap();
        let mut body = vec![0u8; hd.len as usize];
        s.read_exact(&mut body).unwrap();
        let mut info = (1u64 << 20).to_le_bytes().to_vec();
        info.extend_from_slice(&[0; 8]);
        s.write_all(&frame(p::T_INFO, hd.id, &info)).unwrap();
        let _ = release_rx.recv(); // ...and the data request is never answered
    });
    let a = pager_backends::open(&uri, &OpenOptions::default()).unwrap();
    a.init(K, Arc::new(Recorder::default())).unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let a2 = a.clone();
    let stuck = std::thread::spawn(move || {
        started_tx.send(()).unwrap();
        let mut buf = vec![0u8; 4096];
        let r = a2.data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)]);
        done_tx.send(()).unwrap();
        r
    });
    started_rx.recv().unwrap();
    // Object B works normally meanwhile, and A's request is still pending.
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(65536);
    let path = write_file(dir.path(), "b", &data);
    let b = pager_backends::open(
        &format!("file:{}?ro", path.display()),
        &OpenOptions::default(),
    )
    .unwrap();
    b.init(K, Arc::new(Recorder::default())).unwrap();
    for i in 0..16u64 {
        let mut buf = vec![0u8; 4096];
        b.data_request(
            K,
            ObjectOffset(i * 4096),
            4096,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap();
        assert_eq!(
            &buf[..],
            &data[(i * 4096) as usize..((i + 1) * 4096) as usize]
        );
    }
    assert!(
        done_rx.try_recv().is_err(),
        "A cannot have finished: its pager has not answered"
    );
    // Releasing A's pager (it hangs up) fails A's request cleanly.
    release_tx.send(()).unwrap();
    h.join().unwrap();
    let err = stuck.join().unwrap().unwrap_err();
    assert!(matches!(err, PagerError::Dead(_)), "{err:?}");
}

/// An external pager that claims an object of `extent` bytes at connect
/// and `init_size` at init.
struct Boastful {
    extent: u64,
    init_size: u64,
}

impl Pager for Boastful {
    fn init(&self, _k: KernelId, _c: Arc<dyn KernelControl>) -> pager_backends::Result<ObjectInfo> {
        Ok(ObjectInfo {
            size: self.init_size,
            read_only: true,
            may_cache: true,
        })
    }
    fn data_request(
        &self,
        _k: KernelId,
        _o: ObjectOffset,
        len: u64,
        _d: Access,
        _b: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<DataReply> {
        Ok(DataReply::Unavailable { bytes: len })
    }
    fn data_write(
        &self,
        _k: KernelId,
        _o: ObjectOffset,
        _l: u64,
        _b: &[VolatileSlice<'_>],
    ) -> pager_backends::Result<()> {
        Err(PagerError::ReadOnly)
    }
    fn data_unlock(
        &self,
        _k: KernelId,
        _o: ObjectOffset,
        _l: u64,
        _d: Access,
    ) -> pager_backends::Result<UnlockReply> {
        Err(PagerError::ReadOnly)
    }
    fn extent(&self) -> pager_backends::Result<u64> {
        Ok(self.extent)
    }
    fn sync(&self) -> pager_backends::Result<()> {
        Ok(())
    }
    fn terminate(&self, _k: KernelId) -> pager_backends::Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "boastful".into()
    }
}

#[test]
fn object_size_near_2_64_is_refused() {
    let huge = u64::MAX - 1;
    // At connect (the extent)...
    let (_d, uri) = serve_in_process(Arc::new(Boastful {
        extent: huge,
        init_size: 4096,
    }));
    let err = pager_backends::open(&uri, &OpenOptions::default())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains(&format!("reports an object of {huge} bytes")),
        "{err}"
    );
    // ...and at init, where a pager may change its mind.
    let (_d, uri) = serve_in_process(Arc::new(Boastful {
        extent: 4096,
        init_size: huge,
    }));
    let p = pager_backends::open(&uri, &OpenOptions::default()).unwrap();
    let err = p.init(K, Arc::new(Recorder::default())).unwrap_err();
    assert!(err.to_string().contains("reports an object of"), "{err}");
}

/// The procedural pager reads `--size` as every size in the project is read
/// (pager_backends::size), and says what is wrong with one it refuses.
#[test]
fn procedural_pager_refuses_bad_arguments() {
    for (args, says) in [
        (
            &["--size", "1.5G"][..],
            "--size \"1.5G\": fractions are not taken",
        ),
        (&["--size", "64X"][..], "unknown unit \"X\""),
        (&["--size", "99999999T"][..], "more than 16 EiB"),
        (&["--size", "0"][..], "object size must be non-zero"),
        (&["--seed", "1K"][..], "--seed \"1K\": expected a number"),
        (&["--bogus", "1"][..], "usage: procedural-pager"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_procedural-pager"))
            .args(["--socket", "/nonexistent/never-bound.sock"])
            .args(args)
            .output()
            .expect("run procedural-pager");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: expected {says:?} in {err}");
    }
}
