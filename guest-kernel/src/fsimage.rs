//! The image format of `fs-demo` (src/user/fs_demo.rs), the paper's §4.1
//! filesystem: a host file (`vmm run --object NAME=file:IMG`) that the
//! file server maps whole. Shared by the server, which checks an image
//! before serving it, and by the host tests, which build one.
//!
//! Layout (integers little-endian, `PAGE` = 4096):
//!
//! ```text
//! [0, PAGE)  header page
//!    0    8  magic "DUALFS01"
//!    8    4  count: files in the table, at most MAX_FILES (64)
//!   12    4  zero
//!   16       the table: `count` entries of 48 bytes
//!        0  32  name: 1..=32 bytes of '!'..='~' (no spaces), padded with zeros
//!       32   8  offset: where the file's data starts, a multiple of PAGE, >= PAGE
//!       40   8  length: the file's size in bytes
//! [PAGE, ..) file data
//! ```
//!
//! Files lie wholly inside the image, do not overlap and have distinct
//! names; the rest of the image belongs to no file. A file's size never
//! changes: writes go within `[0, length)`. Since data starts on a page,
//! no two files share a page, so a reader given whole pages of one file
//! (a copy-on-write mapping) sees no other file's bytes; the tail of a
//! file's last page is visible to it, so an image keeps it zero.

pub const PAGE: u64 = 4096;
pub const MAGIC: [u8; 8] = *b"DUALFS01";
pub const MAX_FILES: usize = 64;
pub const NAME_MAX: usize = 32;
pub const TABLE_OFFSET: usize = 16;
pub const ENTRY_SIZE: usize = 48;
// The table fits in the header page.
const _: () = assert!(TABLE_OFFSET + MAX_FILES * ENTRY_SIZE <= PAGE as usize);

/// One file of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct File {
    name: [u8; NAME_MAX],
    name_len: usize,
    /// Where its data starts in the image.
    pub offset: u64,
    /// Its size in bytes.
    pub length: u64,
}

impl File {
    const EMPTY: File = File {
        name: [0; NAME_MAX],
        name_len: 0,
        offset: 0,
        length: 0,
    };

    pub fn name(&self) -> &[u8] {
        self.name.get(..self.name_len).unwrap_or(&[])
    }

    /// Whether `[offset, offset + len)` is a non-empty range of the file.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        len > 0
            && offset
                .checked_add(len)
                .is_some_and(|end| end <= self.length)
    }
}

/// Why an image is refused; the entry's index where one is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    TooSmall,
    BadMagic,
    TooManyFiles,
    NonZeroReserved,
    BadName(usize),
    DuplicateName(usize),
    Misaligned(usize),
    OutsideImage(usize),
    Overlap(usize, usize),
}

impl core::fmt::Display for ImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ImageError::TooSmall => write!(f, "smaller than its header page"),
            ImageError::BadMagic => write!(f, "no DUALFS01 magic"),
            ImageError::TooManyFiles => write!(f, "more than {MAX_FILES} files"),
            ImageError::NonZeroReserved => write!(f, "reserved header bytes not zero"),
            ImageError::BadName(i) => write!(f, "file {i}: bad name"),
            ImageError::DuplicateName(i) => write!(f, "file {i}: name used twice"),
            ImageError::Misaligned(i) => write!(f, "file {i}: data not on a page after the header"),
            ImageError::OutsideImage(i) => write!(f, "file {i}: data past the image's end"),
            ImageError::Overlap(i, j) => write!(f, "files {i} and {j} overlap"),
        }
    }
}

fn valid_name(n: &[u8]) -> bool {
    (1..=NAME_MAX).contains(&n.len()) && n.iter().all(|c| (b'!'..=b'~').contains(c))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

/// The checked table of an image.
#[derive(Clone, Debug)]
pub struct Table {
    files: [File; MAX_FILES],
    count: usize,
}

impl Table {
    /// Reads and checks the table from `header` (the image's first page, or
    /// all of it if shorter) for an image of `image_size` bytes. Everything
    /// a server later relies on is checked here, so nothing in the image can
    /// make it touch memory outside the image.
    pub fn parse(header: &[u8], image_size: u64) -> Result<Table, ImageError> {
        let header = header.get(..PAGE as usize).ok_or(ImageError::TooSmall)?;
        if image_size < PAGE {
            return Err(ImageError::TooSmall);
        }
        if header.get(..8) != Some(&MAGIC[..]) {
            return Err(ImageError::BadMagic);
        }
        let count = u64_at(header, 8) & 0xffff_ffff;
        if header.get(12..16) != Some(&[0u8; 4][..]) {
            return Err(ImageError::NonZeroReserved);
        }
        if count > MAX_FILES as u64 {
            return Err(ImageError::TooManyFiles);
        }
        let count = count as usize;
        let mut t = Table {
            files: [File::EMPTY; MAX_FILES],
            count,
        };
        for i in 0..count {
            let e = header
                .get(TABLE_OFFSET + i * ENTRY_SIZE..TABLE_OFFSET + (i + 1) * ENTRY_SIZE)
                .ok_or(ImageError::TooSmall)?;
            let raw = e.get(..NAME_MAX).ok_or(ImageError::BadName(i))?;
            let len = raw.iter().position(|&c| c == 0).unwrap_or(NAME_MAX);
            let (name, pad) = raw.split_at(len);
            if !valid_name(name) || pad.iter().any(|&c| c != 0) {
                return Err(ImageError::BadName(i));
            }
            let (offset, length) = (u64_at(e, 32), u64_at(e, 40));
            if offset < PAGE || !offset.is_multiple_of(PAGE) {
                return Err(ImageError::Misaligned(i));
            }
            if offset
                .checked_add(length)
                .is_none_or(|end| end > image_size)
            {
                return Err(ImageError::OutsideImage(i));
            }
            for (j, other) in t.files.iter().take(i).enumerate() {
                if other.name() == name {
                    return Err(ImageError::DuplicateName(i));
                }
                let apart =
                    offset + length <= other.offset || other.offset + other.length <= offset;
                if !apart {
                    return Err(ImageError::Overlap(j, i));
                }
            }
            let f = t.files.get_mut(i).ok_or(ImageError::TooManyFiles)?;
            f.name
                .get_mut(..len)
                .ok_or(ImageError::BadName(i))?
                .copy_from_slice(name);
            f.name_len = len;
            f.offset = offset;
            f.length = length;
        }
        Ok(t)
    }

    pub fn files(&self) -> &[File] {
        self.files.get(..self.count).unwrap_or(&[])
    }

    pub fn get(&self, index: u32) -> Option<&File> {
        self.files().get(index as usize)
    }

    /// The index of the file called `name`.
    pub fn find(&self, name: &[u8]) -> Option<u32> {
        self.files()
            .iter()
            .position(|f| f.name() == name)
            .map(|i| i as u32)
    }
}

/// Where `write_image` puts each file: one after the other from the second
/// page, each on a page boundary. Returns the image size (whole pages).
pub fn layout(lengths: &[u64], offsets: &mut [u64]) -> u64 {
    let mut at = PAGE;
    for (len, off) in lengths.iter().zip(offsets.iter_mut()) {
        *off = at;
        at = (at + len).next_multiple_of(PAGE);
    }
    at
}

/// Writes an image of `files` (name, data) into `out`, which must be
/// exactly as large as `layout` says and zeroed. For the host side (tests,
/// tools); the guest only reads images.
pub fn write_image(files: &[(&[u8], &[u8])], out: &mut [u8]) -> Result<(), ImageError> {
    if files.len() > MAX_FILES {
        return Err(ImageError::TooManyFiles);
    }
    let mut lengths = [0u64; MAX_FILES];
    let mut offsets = [0u64; MAX_FILES];
    for (l, (_, data)) in lengths.iter_mut().zip(files) {
        *l = data.len() as u64;
    }
    let size = layout(&lengths[..files.len()], &mut offsets[..files.len()]);
    if out.len() as u64 != size {
        return Err(ImageError::TooSmall);
    }
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&(files.len() as u32).to_le_bytes());
    for (i, (name, data)) in files.iter().enumerate() {
        if !valid_name(name) {
            return Err(ImageError::BadName(i));
        }
        let e = TABLE_OFFSET + i * ENTRY_SIZE;
        out[e..e + name.len()].copy_from_slice(name);
        out[e + 32..e + 40].copy_from_slice(&offsets[i].to_le_bytes());
        out[e + 40..e + 48].copy_from_slice(&lengths[i].to_le_bytes());
        let at = offsets[i] as usize;
        out[at..at + data.len()].copy_from_slice(data);
    }
    Ok(())
}

/// What the demo's client expects of the image and does to it; the host
/// test builds the image and checks the file afterwards from these.
pub mod demo {
    /// The file the client reads, changes and partly writes back.
    pub const HELLO: &[u8] = b"hello.txt";
    /// Its size: two pages and a part, so a read maps three pages.
    pub const HELLO_LEN: usize = 10_000;
    /// Its text, repeated to `HELLO_LEN` bytes.
    pub const HELLO_LINE: &[u8] =
        b"Hello from the host: a file served through a Mach memory object.\n";
    /// A second file, listed and left alone.
    pub const NOTES: &[u8] = b"notes.txt";
    pub const NOTES_TEXT: &[u8] =
        b"fs-demo (Young et al. 1987, section 4.1): reads are copy-on-write regions.\n";

    /// The client's change inside the range it writes back.
    pub const WRITTEN_AT: usize = 10;
    pub const WRITTEN: &[u8] = b"<changed by the client and written back>";
    /// The client's change outside that range: it must never reach the file.
    pub const PRIVATE_AT: usize = 2 * 4096 + 10;
    pub const PRIVATE: &[u8] = b"<changed by the client, kept private>";
    /// The client writes back the first half of its copy, as the paper's
    /// example does (`fs_write_file(name, data, size/2)`).
    pub const WRITE_BACK_LEN: usize = HELLO_LEN / 2;

    const _: () = assert!(WRITTEN_AT + WRITTEN.len() <= WRITE_BACK_LEN);
    const _: () = assert!(PRIVATE_AT >= WRITE_BACK_LEN && PRIVATE_AT + PRIVATE.len() <= HELLO_LEN);

    /// Byte `i` of hello.txt as the host made it.
    pub fn hello_byte(i: usize) -> u8 {
        HELLO_LINE[i % HELLO_LINE.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(files: &[(&[u8], &[u8])]) -> Vec<u8> {
        let lens: Vec<u64> = files.iter().map(|f| f.1.len() as u64).collect();
        let mut offs = vec![0; files.len()];
        let mut out = vec![0; layout(&lens, &mut offs) as usize];
        write_image(files, &mut out).unwrap();
        out
    }

    fn put_entry(img: &mut [u8], i: usize, name: &[u8], off: u64, len: u64) {
        let e = TABLE_OFFSET + i * ENTRY_SIZE;
        img[e..e + 32].fill(0);
        img[e..e + name.len()].copy_from_slice(name);
        img[e + 32..e + 40].copy_from_slice(&off.to_le_bytes());
        img[e + 40..e + 48].copy_from_slice(&len.to_le_bytes());
    }

    #[test]
    fn written_images_parse_back() {
        let img = image(&[(b"a", b"xyz"), (b"empty", b""), (b"big", &[7; 9000])]);
        assert_eq!(img.len(), 5 * PAGE as usize);
        let t = Table::parse(&img, img.len() as u64).unwrap();
        let f: Vec<_> = t
            .files()
            .iter()
            .map(|f| (f.name(), f.offset, f.length))
            .collect();
        assert_eq!(
            f,
            [
                (&b"a"[..], 4096, 3),
                (b"empty", 8192, 0),
                (b"big", 8192, 9000)
            ]
        );
        assert_eq!(&img[4096..4099], b"xyz");
        assert_eq!(t.find(b"big"), Some(2));
        assert_eq!(t.find(b"nope"), None);
        assert!(t.get(3).is_none());
    }

    #[test]
    fn ranges_are_checked_without_overflow() {
        let img = image(&[(b"f", &[1; 100])]);
        let f = *Table::parse(&img, img.len() as u64)
            .unwrap()
            .get(0)
            .unwrap();
        assert!(f.contains(0, 100) && f.contains(99, 1));
        assert!(!f.contains(0, 0) && !f.contains(0, 101) && !f.contains(100, 1));
        assert!(!f.contains(u64::MAX, 2) && !f.contains(1, u64::MAX));
    }

    #[test]
    fn bad_images_are_refused() {
        let good = image(&[(b"a", b"1"), (b"b", b"2")]);
        let size = good.len() as u64;
        assert_eq!(
            Table::parse(&good[..100], size).unwrap_err(),
            ImageError::TooSmall
        );
        assert_eq!(Table::parse(&good, 100).unwrap_err(), ImageError::TooSmall);
        type Spoil<'a> = &'a dyn Fn(&mut Vec<u8>);
        let cases: [(Spoil, ImageError); 9] = [
            (&|i| i[0] = b'X', ImageError::BadMagic),
            (&|i| i[8] = 65, ImageError::TooManyFiles),
            (&|i| i[13] = 1, ImageError::NonZeroReserved),
            (
                &|i| put_entry(i, 1, b"has space", 8192, 1),
                ImageError::BadName(1),
            ),
            (&|i| put_entry(i, 1, b"", 8192, 1), ImageError::BadName(1)),
            (
                &|i| put_entry(i, 1, b"a", 8192, 1),
                ImageError::DuplicateName(1),
            ),
            (
                &|i| put_entry(i, 1, b"b", 8193, 1),
                ImageError::Misaligned(1),
            ),
            (
                &|i| put_entry(i, 1, b"b", 8192, u64::MAX),
                ImageError::OutsideImage(1),
            ),
            (
                &|i| put_entry(i, 1, b"b", 4096, 1),
                ImageError::Overlap(0, 1),
            ),
        ];
        for (spoil, want) in cases {
            let mut img = good.clone();
            spoil(&mut img);
            assert_eq!(Table::parse(&img, size).unwrap_err(), want);
        }
        let mut img = good.clone();
        put_entry(&mut img, 1, b"b", 0, 1);
        assert_eq!(
            Table::parse(&img, size).unwrap_err(),
            ImageError::Misaligned(1)
        );
        // Junk after the name's end is refused too.
        let mut img = good.clone();
        img[TABLE_OFFSET + ENTRY_SIZE + 5] = b'z';
        assert_eq!(
            Table::parse(&img, size).unwrap_err(),
            ImageError::BadName(1)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_never_panic_and_stay_inside(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 4096),
            size in 0u64..1 << 20,
            count in 0u32..=MAX_FILES as u32,
        ) {
            // A well-formed start, so the entries themselves get tried.
            let mut h = bytes;
            h[..8].copy_from_slice(&MAGIC);
            h[8..12].copy_from_slice(&count.to_le_bytes());
            h[12..16].fill(0);
            if let Ok(t) = Table::parse(&h, size) {
                for f in t.files() {
                    proptest::prop_assert!(f.offset >= PAGE && f.offset + f.length <= size);
                }
            }
        }
    }
}
