//! Backend latency and throughput, each next to the raw operation it wraps,
//! measured in the same run on the same data and interleaved op by op so
//! machine noise hits both alike.
//!
//! file: pread on the same file | zero/anon: pread on a plain file with the
//! same data | nbd: a hand-rolled NBD read on its own socket to the same
//! qemu-nbd | unix: a hand-rolled protocol request on its own socket to the
//! same in-process pager server.
//!
//! Run: scripts/bench-pagers.sh  (or cargo bench -p pager-backends)

use pager_backends::stats::LatencyHistogram;
use pager_backends::unix::proto as p;
use pager_backends::{Access, KernelControl, KernelId, ObjectOffset, OpenOptions, Pager};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::VolatileSlice;

const OBJ: u64 = 64 << 20;
const K: KernelId = KernelId(0);

struct Nop;
impl KernelControl for Nop {
    fn lock_request(
        &self,
        _: ObjectOffset,
        _: u64,
        _: Access,
        _: bool,
        _: bool,
    ) -> pager_backends::Result<()> {
        Ok(())
    }
    fn offer(&self, _: ObjectOffset, _: &[u8], _: Access) -> pager_backends::Result<()> {
        Ok(())
    }
    fn set_cache(&self, _: bool) -> pager_backends::Result<()> {
        Ok(())
    }
    fn destroy(&self, _: &str) -> pager_backends::Result<()> {
        Ok(())
    }
}

/// The raw operation a backend is compared with.
trait Raw {
    fn read(&mut self, off: u64, buf: &mut [u8]);
}

struct RawFile(File);
impl Raw for RawFile {
    fn read(&mut self, off: u64, buf: &mut [u8]) {
        self.0.read_exact_at(buf, off).expect("pread");
    }
}

struct RawNbd(TcpStream, u64);
impl Raw for RawNbd {
    fn read(&mut self, off: u64, buf: &mut [u8]) {
        self.1 += 1;
        let mut h = [0u8; 28];
        h[0..4].copy_from_slice(&0x2560_9513u32.to_be_bytes());
        h[8..16].copy_from_slice(&self.1.to_be_bytes());
        h[16..24].copy_from_slice(&off.to_be_bytes());
        h[24..28].copy_from_slice(&(buf.len() as u32).to_be_bytes());
        self.0.write_all(&h).expect("nbd send");
        let mut r = [0u8; 16];
        self.0.read_exact(&mut r).expect("nbd reply");
        assert_eq!(&r[4..8], &[0, 0, 0, 0], "nbd error");
        self.0.read_exact(buf).expect("nbd data");
    }
}

impl RawNbd {
    fn connect(port: u16, export: &str) -> RawNbd {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).ok();
        let mut greet = [0u8; 18];
        s.read_exact(&mut greet).expect("greeting");
        s.write_all(&3u32.to_be_bytes()).expect("flags");
        let mut opt = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
        opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
        opt.extend_from_slice(&(export.len() as u32).to_be_bytes());
        opt.extend_from_slice(export.as_bytes());
        s.write_all(&opt).expect("option");
        let mut info = [0u8; 10]; // size + flags; NO_ZEROES was negotiated
        s.read_exact(&mut info).expect("export info");
        RawNbd(s, 0)
    }
}

struct RawUnix(UnixStream, u64);
impl Raw for RawUnix {
    fn read(&mut self, off: u64, buf: &mut [u8]) {
        self.1 += 1;
        let mut m = p::Header {
            len: 40,
            kind: p::T_DATA_REQUEST,
            flags: 0,
            id: self.1,
        }
        .encode()
        .to_vec();
        for v in [0u64, off, buf.len() as u64, buf.len() as u64] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&[Access::READ.bits(), 0, 0, 0, 0, 0, 0, 0]);
        self.0.write_all(&m).expect("send");
        let mut h = [0u8; 32];
        self.0.read_exact(&mut h).expect("reply");
        self.0.read_exact(buf).expect("data");
    }
}

impl RawUnix {
    fn connect(path: &Path) -> RawUnix {
        let mut s = UnixStream::connect(path).expect("connect");
        let mut body = p::MAGIC.to_vec();
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&p::DEFAULT_MAX_PAYLOAD.to_le_bytes());
        let mut m = p::Header {
            len: 16,
            kind: p::T_HELLO,
            flags: 0,
            id: 0,
        }
        .encode()
        .to_vec();
        m.extend_from_slice(&body);
        s.write_all(&m).expect("hello");
        let mut r = [0u8; 32];
        s.read_exact(&mut r).expect("hello reply");
        let mut m = p::Header {
            len: 8,
            kind: p::T_INIT,
            flags: 0,
            id: 1,
        }
        .encode()
        .to_vec();
        m.extend_from_slice(&0u64.to_le_bytes());
        s.write_all(&m).expect("init");
        let mut r = [0u8; 32];
        s.read_exact(&mut r).expect("init reply");
        RawUnix(s, 1)
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Pseudo-random page-aligned offsets (xorshift), identical for both sides.
fn offsets(n: usize, len: u64) -> Vec<u64> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % ((OBJ - len) / 4096)) * 4096
        })
        .collect()
}

fn bench(name: &str, pager: &dyn Pager, raw: &mut dyn Raw) {
    let mut buf = vec![0u8; 64 * 1024];
    for (len, iters) in [(4096u64, 4000usize), (65536, 1500)] {
        // The quantiles the VMM's --stats reports, computed the same way.
        let (tp, tr) = (LatencyHistogram::default(), LatencyHistogram::default());
        let offs = offsets(iters + 100, len);
        for (i, &off) in offs.iter().enumerate() {
            // Alternate which goes first: the second would find the data
            // hot in CPU caches.
            let mut time_raw = |buf: &mut [u8]| {
                let t = Instant::now();
                raw.read(off, &mut buf[..len as usize]);
                t.elapsed()
            };
            let time_pager = |buf: &mut [u8]| {
                let t = Instant::now();
                let s = VolatileSlice::from(&mut buf[..len as usize]);
                pager
                    .data_request(K, ObjectOffset(off), len, Access::READ, &[s])
                    .expect("pager read");
                t.elapsed()
            };
            let (dr, dp) = if i % 2 == 0 {
                let dr = time_raw(&mut buf);
                (dr, time_pager(&mut buf))
            } else {
                let dp = time_pager(&mut buf);
                (time_raw(&mut buf), dp)
            };
            if i >= 100 {
                // first 100: warm-up
                tr.record(dr);
                tp.record(dp);
            }
        }
        let (raw_q, pager_q) = (tr.snapshot(), tp.snapshot());
        let (rp50, pp50) = (raw_q.p50, pager_q.p50);
        let (rp99, pp99) = (raw_q.p99, pager_q.p99);
        println!(
            "{name:<6} {:>4}K  p50 raw {:>8.1}us pager {:>8.1}us x{:<5.2}  p99 raw {:>8.1}us pager {:>8.1}us x{:<5.2}",
            len / 1024,
            us(rp50),
            us(pp50),
            us(pp50) / us(rp50),
            us(rp99),
            us(pp99),
            us(pp99) / us(rp99)
        );
    }
    // Sequential 64 KiB reads over the whole object, alternating passes.
    let len = 65536u64;
    let (mut traw, mut tpag) = (Duration::ZERO, Duration::ZERO);
    for _pass in 0..2 {
        let t = Instant::now();
        for off in (0..OBJ).step_by(len as usize) {
            raw.read(off, &mut buf[..len as usize]);
        }
        traw += t.elapsed();
        let t = Instant::now();
        for off in (0..OBJ).step_by(len as usize) {
            let s = VolatileSlice::from(&mut buf[..len as usize]);
            pager
                .data_request(K, ObjectOffset(off), len, Access::READ, &[s])
                .expect("pager read");
        }
        tpag += t.elapsed();
    }
    let mb = (2 * OBJ) as f64 / (1 << 20) as f64;
    let (r, pg) = (mb / traw.as_secs_f64(), mb / tpag.as_secs_f64());
    println!(
        "{name:<6} seq64K  raw {r:>8.0} MiB/s  pager {pg:>8.0} MiB/s  pager/raw throughput x{:.2}",
        pg / r
    );
}

fn start_qemu_nbd(file: &Path) -> Option<(u16, std::process::Child, TcpListener)> {
    let q = Path::new("/usr/bin/qemu-nbd");
    if !q.exists() {
        return None;
    }
    let l = TcpListener::bind("127.0.0.1:0").ok()?;
    let port = l.local_addr().ok()?.port();
    let fd = l.as_raw_fd();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c").arg(format!(
        "LISTEN_PID=$$ LISTEN_FDS=1 exec {} -f raw -x bench --persistent --shared=8 --cache=writeback {}",
        q.display(),
        file.display()
    ));
    // SAFETY: dup2/fcntl are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
    }
    let child = cmd.spawn().ok()?;
    Some((port, child, l))
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let dir = std::env::temp_dir().join(format!("duality-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("obj.img");
    let data: Vec<u8> = (0..OBJ).map(|i| (i * 31 + i / 4096) as u8).collect();
    std::fs::write(&path, &data).expect("write object");
    drop(data);
    let opts = OpenOptions::default();
    println!(
        "object {} MiB; latency per request (random offsets), ratio = pager/raw (target <= 1.2)",
        OBJ >> 20
    );

    // file
    let pager =
        pager_backends::open(&format!("file:{}?ro", path.display()), &opts).expect("open file");
    pager.init(K, Arc::new(Nop)).expect("init");
    bench(
        "file",
        &*pager,
        &mut RawFile(File::open(&path).expect("open")),
    );

    // zero/anon: fill the swap through data_write, compare with pread of the same data.
    let anon = pager_backends::open(&format!("zero?size={OBJ}"), &opts).expect("open anon");
    anon.init(K, Arc::new(Nop)).expect("init");
    let mut chunk = vec![0u8; 1 << 20];
    let f = File::open(&path).expect("open");
    for off in (0..OBJ).step_by(1 << 20) {
        f.read_exact_at(&mut chunk, off).expect("read");
        let s = VolatileSlice::from(&mut chunk[..]);
        anon.data_write(K, ObjectOffset(off), 1 << 20, &[s])
            .expect("anon write");
    }
    bench("anon", &*anon, &mut RawFile(f));

    // nbd
    match start_qemu_nbd(&path) {
        Some((port, mut child, _l)) => {
            let nbd = pager_backends::open(&format!("nbd://127.0.0.1:{port}/bench"), &opts)
                .expect("open nbd");
            nbd.init(K, Arc::new(Nop)).expect("init");
            bench("nbd", &*nbd, &mut RawNbd::connect(port, "bench"));
            drop(nbd);
            let _ = child.kill();
            let _ = child.wait();
        }
        None => println!("nbd    SKIPPED: /usr/bin/qemu-nbd not installed"),
    }

    // unix: an in-process pager server serving the same file.
    let sock = dir.join("pager.sock");
    let l = UnixListener::bind(&sock).expect("bind");
    let served: Arc<dyn Pager> = Arc::new(
        pager_backends::file::FilePager::open(
            &path,
            true,
            &OpenOptions {
                max_readahead: 0,
                ..opts.clone()
            },
        )
        .expect("file"),
    );
    std::thread::spawn(move || pager_backends::unix::serve(l, served));
    let unix = pager_backends::open(&format!("unix:{}", sock.display()), &opts).expect("open unix");
    unix.init(K, Arc::new(Nop)).expect("init");
    bench("unix", &*unix, &mut RawUnix::connect(&sock));
    drop(unix);
    let _ = std::io::stdout().flush();
    let _ = std::fs::remove_dir_all(&dir);
}
