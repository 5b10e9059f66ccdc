//! `vmm pager read|stat`: a user checks a backend before any guest boots.

mod support;
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
