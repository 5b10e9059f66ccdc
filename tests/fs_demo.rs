//! Issue 10 item 4: `fs-demo`, the paper's §4.1 filesystem, end to end.
//! The host makes the image, the guest's client reads, changes, writes part
//! back; after the VM's shutdown the host file must hold exactly the
//! written-back change and nothing of the client's private one.

mod support;
use guest_kernel::fsimage::{self, demo};
use std::path::PathBuf;
use std::process::Command;
use support::{kvm_available, vmm};

/// A temporary file, removed when dropped.
struct Temp(PathBuf);

impl Temp {
    fn new(what: &str) -> Temp {
        let p = std::env::temp_dir().join(format!("duality-fs-demo-{what}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        Temp(p)
    }
    fn show(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn hello() -> Vec<u8> {
    (0..demo::HELLO_LEN).map(demo::hello_byte).collect()
}

fn image_of(files: &[(&[u8], &[u8])]) -> Vec<u8> {
    let lengths: Vec<u64> = files.iter().map(|f| f.1.len() as u64).collect();
    let mut offsets = vec![0; files.len()];
    let mut img = vec![0; fsimage::layout(&lengths, &mut offsets) as usize];
    fsimage::write_image(files, &mut img).expect("a valid image");
    img
}

/// The demo's image, and where hello.txt's data starts in it.
fn demo_image() -> (Vec<u8>, usize) {
    let h = hello();
    let img = image_of(&[(demo::HELLO, &h), (demo::NOTES, demo::NOTES_TEXT)]);
    (img, fsimage::PAGE as usize)
}

const LINES: &[&str] = &[
    "fs-demo: server: 2 files in fs, served as fs.fs",
    "fs-demo: list: hello.txt notes.txt",
    "fs-demo: read notes.txt 75 bytes ok",
    "fs-demo: read hello.txt 10000 bytes ok",
    "fs-demo: read hello.txt 4000..4200 ok",
    "fs-demo: changed the copy at 10 and 8202",
    "fs-demo: re-read hello.txt: the server's data is unchanged ok",
    "fs-demo: wrote hello.txt 0..5000 back ok",
    "fs-demo: re-read hello.txt: the written range changed, the private change is absent ok",
    "fs-demo: bad requests refused ok",
    "fs-demo: client exited with status 0",
    "fs-demo: server: stopped, mapping released",
    "fs-demo: server exited with status 0",
    "fs-demo: done",
];

#[test]
fn fs_demo_reads_copy_on_write_and_writes_back_only_what_was_written() {
    if !kvm_available("fs_demo_reads_copy_on_write_and_writes_back_only_what_was_written") {
        return;
    }
    let (before, hello_at) = demo_image();
    let f = Temp::new("rw");
    std::fs::write(&f.0, &before).expect("write the image");
    let obj = format!("fs=file:{}", f.show());
    let out = vmm(&["run", "--object", &obj, "--init", "fs-demo", "fs"], &[]);
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    // Every line, in order (the server's first line may come before or
    // after the client's first ones only up to its check-in, which the
    // client waits for).
    let mut from = 0;
    let lines: Vec<&str> = out.stdout.lines().collect();
    for want in LINES {
        let at = lines[from..]
            .iter()
            .position(|l| l == want)
            .unwrap_or_else(|| panic!("no line {want:?} in order in:\n{}", out.stdout));
        from += at + 1;
    }
    assert!(!out.stdout.contains("FAILED"), "{}", out.stdout);

    let after = std::fs::read(&f.0).expect("read the image back");
    let mut want = before.clone();
    let w = hello_at + demo::WRITTEN_AT;
    want[w..w + demo::WRITTEN.len()].copy_from_slice(demo::WRITTEN);
    assert_eq!(after.len(), want.len(), "the image's length changed");
    let first_diff = after.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "the image differs from what was written back"
    );
    let private = demo::PRIVATE;
    assert!(
        !after.windows(private.len()).any(|x| x == private),
        "the client's private change reached the host file"
    );
}

/// A read-only object: reads work, the write is refused (the server must
/// not fault on its read-only mapping), the file is unchanged, and the
/// demo fails cleanly.
#[test]
fn fs_demo_on_a_read_only_object_refuses_the_write() {
    if !kvm_available("fs_demo_on_a_read_only_object_refuses_the_write") {
        return;
    }
    let (before, _) = demo_image();
    let f = Temp::new("ro");
    std::fs::write(&f.0, &before).expect("write the image");
    let obj = format!("fs=file:{}?ro", f.show());
    let out = vmm(&["run", "--object", &obj, "--init", "fs-demo", "fs"], &[]);
    assert_eq!(out.status, Some(1), "{}{}", out.stdout, out.stderr);
    for want in [
        "fs-demo: re-read hello.txt: the server's data is unchanged ok",
        "fs-demo: write of hello.txt refused: KERN_PROTECTION_FAILURE",
        "fs-demo: server exited with status 0",
    ] {
        assert!(out.line(want).is_some(), "no {want:?} in:\n{}", out.stdout);
    }
    assert!(out.line("fs-demo: done").is_none(), "{}", out.stdout);
    assert!(std::fs::read(&f.0).expect("read back") == before);
}

/// An image with a bad table is refused by the server, which exits; the
/// client finds no server and the VM ends without a hang or a fault.
#[test]
fn fs_demo_refuses_a_bad_image() {
    if !kvm_available("fs_demo_refuses_a_bad_image") {
        return;
    }
    let (mut img, _) = demo_image();
    // hello.txt's data would start inside the header page.
    let e = fsimage::TABLE_OFFSET + 32;
    img[e..e + 8].copy_from_slice(&100u64.to_le_bytes());
    let f = Temp::new("bad");
    std::fs::write(&f.0, &img).expect("write the image");
    let obj = format!("fs=file:{}", f.show());
    let out = vmm(&["run", "--object", &obj, "--init", "fs-demo", "fs"], &[]);
    assert_eq!(out.status, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.line("fs-demo: server: fs: not an image: file 0: data not on a page after the header")
            .is_some(),
        "{}",
        out.stdout
    );
    assert!(out.line("killed").is_none(), "{}", out.stdout);
    assert!(std::fs::read(&f.0).expect("read back") == img);
}

/// scripts/fs-demo-image.sh, what a user runs, makes the same image.
#[test]
fn the_image_script_agrees_with_the_builder() {
    let f = Temp::new("script");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/fs-demo-image.sh");
    let st = Command::new("sh")
        .arg(script)
        .arg(&f.0)
        .status()
        .expect("run sh");
    assert!(st.success());
    let got = std::fs::read(&f.0).expect("the script's image");
    assert!(got == demo_image().0, "the script's image differs");
}
