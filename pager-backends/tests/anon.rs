mod common;

use common::*;
use pager_backends::anon::AnonPager;
use pager_backends::{Access, DataReply, KernelId, ObjectOffset, OpenOptions, Pager, PagerError};
use std::sync::Arc;

const K: KernelId = KernelId(7);

fn anon(size: u64) -> AnonPager {
    let p = AnonPager::new(size, &OpenOptions::default()).unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    p
}

#[test]
fn never_written_pages_are_unavailable_and_buffers_untouched() {
    let p = anon(1 << 20);
    let mut buf = vec![0xabu8; 8192];
    let r = p
        .data_request(
            K,
            ObjectOffset(4096),
            8192,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap();
    assert_eq!(r, DataReply::Unavailable { bytes: 8192 });
    assert!(buf.iter().all(|&b| b == 0xab));
}

#[test]
fn written_pages_come_back_and_holes_read_as_zero() {
    let p = anon(1 << 20);
    let mut page = pattern(4096);
    p.data_write(K, ObjectOffset(8192), 4096, &[slice(&mut page)])
        .unwrap();
    assert_eq!(p.resident_pages(), 1);
    let mut buf = vec![0xffu8; 12288];
    let r = p
        .data_request(
            K,
            ObjectOffset(4096),
            12288,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap();
    assert_eq!(
        r,
        DataReply::Provided {
            bytes: 12288,
            lock: Access::NONE
        }
    );
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert_eq!(&buf[4096..8192], &page[..]);
    assert!(buf[8192..].iter().all(|&b| b == 0));
}

#[test]
fn last_terminate_discards_the_memory() {
    let p = anon(1 << 20);
    let mut page = pattern(4096);
    p.data_write(K, ObjectOffset(0), 4096, &[slice(&mut page)])
        .unwrap();
    p.terminate(K).unwrap();
    p.init(K, Arc::new(Recorder::default())).unwrap();
    let mut buf = vec![0u8; 4096];
    let r = p
        .data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)])
        .unwrap();
    assert_eq!(r, DataReply::Unavailable { bytes: 4096 });
}

#[test]
fn bounds_are_checked() {
    let p = anon(64 * 1024);
    let mut buf = vec![0u8; 8192];
    assert!(matches!(
        p.data_request(
            K,
            ObjectOffset(64 * 1024),
            4096,
            Access::READ,
            &[slice(&mut buf)]
        ),
        Err(PagerError::PastEnd { .. })
    ));
    assert!(matches!(
        p.data_write(K, ObjectOffset(60 * 1024), 8192, &[slice(&mut buf)]),
        Err(PagerError::BadRange { .. })
    ));
    assert!(matches!(
        AnonPager::new(1000, &OpenOptions::default()),
        Err(PagerError::BadRange { .. })
    ));
}

#[test]
fn open_by_uri_with_size() {
    let p = pager_backends::open("zero?size=128K", &OpenOptions::default()).unwrap();
    assert_eq!(p.extent().unwrap(), 128 * 1024);
    assert!(p.describe().contains("anonymous"));
    let p = pager_backends::open(
        "anon",
        &OpenOptions {
            anon_size: 1 << 16,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(p.extent().unwrap(), 1 << 16);
}

#[test]
fn huge_objects_are_sparse_and_beyond_the_bound_refused() {
    // 1000 TiB: over the bound, refused before anything is allocated.
    let err = AnonPager::new(1000 << 40, &OpenOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("at most 256 TiB"), "{err}");
    let err = AnonPager::new(!4095, &OpenOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("too large"), "{err}");
    // 4 TiB would be a 128 MiB bitmap if it were allocated eagerly; sparse,
    // only the 2 GiB around the written page has bits.
    let size = 4u64 << 40;
    let p = anon(size);
    let last = size - 4096;
    let mut page = vec![0x5au8; 4096];
    p.data_write(K, ObjectOffset(last), 4096, &[slice(&mut page)])
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let r = p
        .data_request(
            K,
            ObjectOffset(last - 4096),
            8192,
            Access::READ,
            &[slice(&mut buf)],
        )
        .unwrap();
    assert_eq!(
        r,
        DataReply::Provided {
            bytes: 8192,
            lock: Access::NONE
        }
    );
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert!(buf[4096..].iter().all(|&b| b == 0x5a));
    assert_eq!(p.resident_pages(), 1);
    let r = p
        .data_request(K, ObjectOffset(0), 4096, Access::READ, &[slice(&mut buf)])
        .unwrap();
    assert_eq!(r, DataReply::Unavailable { bytes: 4096 });
    p.terminate(K).unwrap();
    assert_eq!(p.resident_pages(), 0);
}
