mod common;

use common::*;
use pager_backends::file::FilePager;
use pager_backends::{
    Access, DataReply, KernelId, ObjectOffset, OpenOptions, PAGE_SIZE, Pager, PagerError,
};
use std::sync::Arc;

const K: KernelId = KernelId(1);

fn open_file(data: &[u8], ro: bool) -> (tempfile::TempDir, std::path::PathBuf, FilePager) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "obj", data);
    let p = FilePager::open(&path, ro, &OpenOptions::default()).unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    (dir, path, p)
}

#[test]
fn reads_pages_through_a_scatter_list() {
    let data = pattern(64 * 1024);
    let (_d, _p, f) = open_file(&data, true);
    // Odd segment sizes: one page spread over three buffers.
    let (mut a, mut b, mut c) = (vec![0u8; 1000], vec![0u8; 3000], vec![0u8; 96 + 4096]);
    let bufs = [slice(&mut a), slice(&mut b), slice(&mut c)];
    let r = f
        .data_request(K, ObjectOffset(8192), 8192, Access::READ, &bufs)
        .unwrap();
    assert_eq!(
        r,
        DataReply::Provided {
            bytes: 8192,
            lock: Access::NONE
        }
    );
    let got: Vec<u8> = [a, b, c].concat();
    assert_eq!(&got[..8192], &data[8192..16384]);
}

#[test]
fn last_partial_page_is_zero_filled() {
    let data = pattern(5000);
    let (_d, _p, f) = open_file(&data, true);
    assert_eq!(f.extent().unwrap(), 5000);
    let mut buf = vec![0xaau8; 4096];
    let r = f
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
            bytes: 4096,
            lock: Access::NONE
        }
    );
    assert_eq!(&buf[..904], &data[4096..]);
    assert!(buf[904..].iter().all(|&b| b == 0));
}

#[test]
fn missing_file_names_the_path() {
    let err = FilePager::open(
        std::path::Path::new("/nonexistent/duality/obj"),
        true,
        &OpenOptions::default(),
    )
    .err()
    .unwrap();
    match &err {
        PagerError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().contains("/nonexistent/duality/obj"),
        "{err}"
    );
}

#[test]
fn unreadable_paths_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A directory cannot back an object.
    let err = FilePager::open(dir.path(), true, &OpenOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("directory"), "{err}");
    // A path through a regular file (ENOTDIR) — works even as root, where
    // permission bits would not stop us.
    let f = write_file(dir.path(), "plain", b"x");
    let err = FilePager::open(&f.join("sub"), true, &OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, PagerError::Io(_)), "{err:?}");
    assert!(err.to_string().contains("plain/sub"), "{err}");
}

/// Runs `f` on another thread and fails the test if it has not returned
/// within a few seconds: what is tested is that it does not block.
fn without_blocking<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} blocked"))
}

fn open_err(path: &std::path::Path, ro: bool) -> String {
    let path = path.to_path_buf();
    let what = format!("opening {}", path.display());
    without_blocking(&what, move || {
        match FilePager::open(&path, ro, &OpenOptions::default()) {
            Ok(p) => panic!("{} opened: {}", path.display(), p.describe()),
            Err(e) => e.to_string(),
        }
    })
}

#[test]
fn only_regular_files_and_block_devices_are_objects() {
    let dir = tempfile::tempdir().unwrap();
    // A FIFO with no writer: a plain open(2) would wait for one forever.
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for ro in [true, false] {
        let msg = open_err(&fifo, ro);
        assert!(msg.contains("is a FIFO"), "{msg}");
        assert!(msg.contains("regular file or a block device"), "{msg}");
        assert!(msg.contains("fifo"), "names the path: {msg}");
    }
    // /dev/zero reads forever and has no size: not an empty object.
    let msg = open_err(std::path::Path::new("/dev/zero"), true);
    assert!(msg.contains("is a character device"), "{msg}");
    let sock = dir.path().join("sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let msg = open_err(&sock, true);
    assert!(msg.contains("is a socket"), "{msg}");
    // A symlink to a FIFO is the FIFO.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    assert!(open_err(&link, true).contains("is a FIFO"));
}

/// A loop device over a file, detached when dropped (needs root and
/// losetup; None otherwise).
struct LoopDevice(std::path::PathBuf);

impl LoopDevice {
    fn attach(file: &std::path::Path) -> Option<LoopDevice> {
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(file)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let dev = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && dev.starts_with("/dev/")).then(|| LoopDevice(dev.trim().into()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.0)
            .status();
    }
}

/// A block device is a real object (a disk, a partition, a loop or rbd
/// device): its size is the device's, not the inode's 0, and its pages are
/// the device's data.
#[test]
fn block_device_is_an_object_of_the_devices_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(256 << 10);
    let file = write_file(dir.path(), "backing", &data);
    let Some(dev) = LoopDevice::attach(&file) else {
        eprintln!(
            "SKIPPED block_device_is_an_object_of_the_devices_size: cannot attach a loop device (needs root and losetup)"
        );
        return;
    };
    let p = FilePager::open(&dev.0, true, &OpenOptions::default()).unwrap();
    let info = p.init(K, Arc::new(Recorder::default())).unwrap();
    assert_eq!(info.size, data.len() as u64, "{}", dev.0.display());
    assert!(p.describe().starts_with("block device"), "{}", p.describe());
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
    p.terminate(K).unwrap();
}

#[test]
fn file_shorter_than_the_object_is_an_error_not_zeros() {
    let data = pattern(16384);
    let (_d, path, f) = open_file(&data, true);
    // Someone truncates the file behind the pager's back.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let err = f
        .data_request(
            K,
            ObjectOffset(8192),
            4096,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap_err();
    assert!(err.to_string().contains("shorter than the object"), "{err}");
    // What is still there still reads.
    f.data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)])
        .unwrap();
    assert_eq!(&buf[..], &data[..4096]);
}

#[test]
fn requests_past_the_extent_fail() {
    let (_d, _p, f) = open_file(&pattern(5000), true);
    let mut buf = vec![0u8; 16384];
    let err = f
        .data_request(
            K,
            ObjectOffset(8192),
            4096,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap_err();
    assert!(
        matches!(err, PagerError::PastEnd { size: 5000, .. }),
        "{err:?}"
    );
    let err = f
        .data_request(
            K,
            ObjectOffset(4096),
            8192,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap_err();
    assert!(
        matches!(err, PagerError::BadRange { why, .. } if why.contains("past the end")),
        "{err:?}"
    );
    let err = f
        .data_request(
            K,
            ObjectOffset(u64::MAX - 4095),
            4096,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap_err();
    assert!(matches!(err, PagerError::PastEnd { .. }), "{err:?}");
}

#[test]
fn misaligned_and_oversized_requests_fail() {
    let (_d, _p, f) = open_file(&pattern(1 << 20), false);
    let mut buf = vec![0u8; 16384];
    let cases: [(u64, u64, &str); 4] = [
        (100, 4096, "not page aligned"),
        (0, 100, "whole number of pages"),
        (0, 0, "zero"),
        (0, 12288 + 4096 * 4, "shorter"),
    ];
    for (off, len, why_part) in cases {
        let err = f
            .data_request(K, ObjectOffset(off), len, Access::READ, &[slice(&mut buf)])
            .unwrap_err();
        assert!(
            matches!(&err, PagerError::BadRange { why, .. } if why.contains(why_part)),
            "{off} {len}: {err:?}"
        );
        let err = f
            .data_write(K, ObjectOffset(off), len, &[slice(&mut buf)])
            .unwrap_err();
        assert!(matches!(&err, PagerError::BadRange { .. }), "{err:?}");
    }
    let mut big = vec![0u8; (pager_backends::MAX_REQUEST + PAGE_SIZE) as usize];
    let err = f
        .data_request(
            K,
            ObjectOffset(0),
            pager_backends::MAX_REQUEST + PAGE_SIZE,
            Access::READ,
            &[slice(&mut big)],
        )
        .unwrap_err();
    assert!(
        matches!(&err, PagerError::BadRange { why, .. } if why.contains("maximum")),
        "{err:?}"
    );
}

#[test]
fn unknown_kernel_is_refused() {
    let (_d, _p, f) = open_file(&pattern(8192), true);
    let mut buf = vec![0u8; 4096];
    let err = f
        .data_request(
            KernelId(99),
            ObjectOffset(0),
            4096,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap_err();
    assert!(matches!(err, PagerError::UnknownKernel(99)));
    f.terminate(K).unwrap();
    assert!(matches!(
        f.data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)]),
        Err(PagerError::UnknownKernel(1))
    ));
}

#[test]
fn writes_are_durable_and_do_not_grow_the_file() {
    let data = pattern(6000);
    let (_d, path, f) = open_file(&data, false);
    let mut page = vec![0x5au8; 4096];
    f.data_write(K, ObjectOffset(4096), 4096, &[slice(&mut page)])
        .unwrap();
    f.sync().unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len(), 6000, "object must not grow");
    assert_eq!(&on_disk[..4096], &data[..4096]);
    assert!(on_disk[4096..].iter().all(|&b| b == 0x5a));
    f.terminate(K).unwrap();
}

#[test]
fn read_only_objects_refuse_writes() {
    let (_d, _p, f) = open_file(&pattern(8192), true);
    let mut page = vec![0u8; 4096];
    assert!(matches!(
        f.data_write(K, ObjectOffset(0), 4096, &[slice(&mut page)]),
        Err(PagerError::ReadOnly)
    ));
    assert!(matches!(
        f.data_unlock(K, ObjectOffset(0), 4096, Access::WRITE),
        Err(PagerError::ReadOnly)
    ));
}

#[test]
fn sequential_reads_grow_read_ahead_within_the_offered_buffer() {
    let data = pattern(4 << 20);
    let (_d, _p, f) = open_file(&data, true);
    let mut off = 0u64;
    let mut biggest = 0;
    for _ in 0..8 {
        // Ask for one page, offer 64.
        let mut buf = vec![0xeeu8; 64 * 4096];
        let r = f
            .data_request(K, ObjectOffset(off), 4096, Access::READ, &[slice(&mut buf)])
            .unwrap();
        let DataReply::Provided { bytes, .. } = r else {
            panic!("{r:?}")
        };
        assert!((4096..=64 * 4096).contains(&bytes) && bytes % 4096 == 0);
        assert_eq!(
            &buf[..bytes as usize],
            &data[off as usize..(off + bytes) as usize]
        );
        // Space beyond what was provided is untouched.
        assert!(buf[bytes as usize..].iter().all(|&b| b == 0xee));
        biggest = biggest.max(bytes);
        off += bytes;
    }
    assert!(biggest > 4096, "sequential access must trigger read-ahead");
    // A random access gets exactly what it asked for.
    let mut buf = vec![0u8; 64 * 4096];
    let r = f
        .data_request(
            K,
            ObjectOffset(3 << 20),
            4096,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap();
    assert_eq!(
        r,
        DataReply::Provided {
            bytes: 4096,
            lock: Access::NONE
        }
    );
}

#[test]
fn parallel_readers_see_their_own_pages() {
    let data = Arc::new(pattern(1 << 20));
    let (_d, _p, f) = open_file(&data, true);
    let f = Arc::new(f);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (f, data) = (f.clone(), data.clone());
            std::thread::spawn(move || {
                for i in 0..64u64 {
                    let off = ((i * 4 + t) % 256) * 4096;
                    let mut buf = vec![0u8; 4096];
                    f.data_request(K, ObjectOffset(off), 4096, Access::READ, &[slice(&mut buf)])
                        .unwrap();
                    assert_eq!(&buf[..], &data[off as usize..off as usize + 4096]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn try_data_request_serves_cached_pages_and_zero_fills_the_tail() {
    let data = pattern(3 * 4096 + 1000);
    let (_d, _p, f) = open_file(&data, true);
    // Just written: the file is in the page cache, so RWF_NOWAIT succeeds.
    let mut buf = vec![0xaau8; 8192];
    let r = f
        .try_data_request(
            K,
            ObjectOffset(8192),
            8192,
            Access::READ,
            &[slice(&mut buf)],
        )
        .expect("cached pages are served without blocking")
        .unwrap();
    assert_eq!(
        r,
        DataReply::Provided {
            bytes: 8192,
            lock: Access::NONE
        }
    );
    assert_eq!(&buf[..4096 + 1000], &data[8192..]);
    assert!(buf[4096 + 1000..].iter().all(|&b| b == 0));
    // Scatter list, no read-ahead even when room is offered.
    let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 8192]);
    let r = f
        .try_data_request(
            K,
            ObjectOffset(0),
            4096,
            Access::READ,
            &[slice(&mut a), slice(&mut b)],
        )
        .expect("cached")
        .unwrap();
    assert_eq!(
        r,
        DataReply::Provided {
            bytes: 4096,
            lock: Access::NONE
        }
    );
    assert_eq!(&a[..], &data[..4096]);
}

#[test]
fn try_data_request_reports_errors_without_blocking() {
    let (_d, _p, f) = open_file(&pattern(5000), true);
    let mut buf = vec![0u8; 4096];
    let past = f.try_data_request(
        K,
        ObjectOffset(8192),
        4096,
        Access::READ,
        &[slice(&mut buf)],
    );
    assert!(
        matches!(past, Some(Err(PagerError::PastEnd { .. }))),
        "{past:?}"
    );
    let unknown = f.try_data_request(
        KernelId(99),
        ObjectOffset(0),
        4096,
        Access::READ,
        &[slice(&mut buf)],
    );
    assert!(matches!(unknown, Some(Err(_))), "{unknown:?}");
}

#[test]
fn try_data_request_on_a_truncated_file_defers_to_the_blocking_path() {
    let data = pattern(16384);
    let (_d, path, f) = open_file(&data, true);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let mut buf = vec![0u8; 4096];
    // Short read that is not the object's end: "would block", and the
    // blocking call then reports the truncation.
    assert!(
        f.try_data_request(
            K,
            ObjectOffset(8192),
            4096,
            Access::READ,
            &[slice(&mut buf)]
        )
        .is_none()
    );
}
