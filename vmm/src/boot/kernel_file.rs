//! Reading `--kernel`: a regular file of at most `KERNEL_FILE_MAX` bytes.
//! The file is opened non-blocking and its type checked on that fd, so a
//! FIFO is refused without waiting for a writer and a device such as
//! /dev/zero is refused before a byte is read; the read itself is bounded
//! too, in case the file grows between the check and the read.

use crate::error::{Result, VmmError};
use std::fs::{File, FileType, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest kernel file accepted. The built-in kernel is under 1 MiB; a
/// kernel with full debug information is a few MiB.
pub const KERNEL_FILE_MAX: u64 = 64 << 20;

fn kind(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

pub fn read(path: &Path) -> Result<Vec<u8>> {
    let shown = || path.display().to_string();
    let io = |source| VmmError::KernelRead {
        path: shown(),
        source,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer. It changes nothing for the regular file we go on to read.
    let file: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(VmmError::KernelNotRegular {
            path: shown(),
            kind: kind(meta.file_type()),
        });
    }
    let too_large = |size| VmmError::KernelTooLarge {
        path: shown(),
        size,
        max: KERNEL_FILE_MAX,
    };
    if meta.len() > KERNEL_FILE_MAX {
        return Err(too_large(meta.len()));
    }
    // Capacity from fstat, itself under the cap.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(KERNEL_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > KERNEL_FILE_MAX {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("duality-kfile-{name}-{}", std::process::id()))
    }

    #[test]
    fn reads_a_regular_file() {
        let p = temp("ok");
        std::fs::write(&p, b"\x7fELF....").unwrap();
        assert_eq!(read(&p).unwrap(), b"\x7fELF....");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn refuses_devices_directories_and_fifos_without_blocking() {
        let e = read(Path::new("/dev/zero")).unwrap_err().to_string();
        assert_eq!(
            e,
            "kernel /dev/zero is a character device, not a regular file"
        );
        let e = read(Path::new("/")).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let p = temp("fifo");
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer exists: a blocking open would never return.
        let e = read(&p).unwrap_err().to_string();
        assert!(e.ends_with("is a FIFO, not a regular file"), "{e}");
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn refuses_a_file_over_the_cap_without_reading_it() {
        let p = temp("big");
        let f = File::create(&p).unwrap();
        // Sparse: no disk space, and the read must not happen anyway.
        f.set_len(KERNEL_FILE_MAX + 1).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(
            e.ends_with("is 67108865 bytes, over the 64 MiB (67108864-byte) kernel file limit"),
            "{e}"
        );
        f.set_len(KERNEL_FILE_MAX).unwrap();
        assert_eq!(read(&p).unwrap().len() as u64, KERNEL_FILE_MAX);
        let _ = std::fs::remove_file(&p);
    }
}
