//! `vmm bench ipc`: Mach IPC between two guest tasks next to the host's own
//! peers measured in the same run: a pipe ping-pong and a Unix-socket
//! ping-pong between two processes. The guest side (the `ipcbench`
//! program) brackets its loops with benchmark marks, so per round trip the
//! kernel instructions, VM exits and interrupts come from the vCPU's KVM
//! statistics; they carry over to hardware KVM, the wall times do not.

use crate::bench::STATS_TAG;
use crate::error::{Result, VmmError};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Instant;

/// One host peer: round trips of `bytes` between this process and a
/// forked child over `a`/`b`, ns per round trip (median of 3 passes).
fn ping_pong<S: Read + Write + Send + 'static>(
    mut ours: S,
    mut theirs: S,
    bytes: usize,
    rounds: u32,
) -> Result<u64> {
    // A thread in another process would need fork+exec plumbing; a child
    // process via fork keeps the peer honest (two address spaces, as the
    // guest's two tasks are).
    // SAFETY: fork in a process whose other threads do not hold locks the
    // child needs: the child only reads and writes its socket, then _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(VmmError::Boot(format!(
            "fork: {}",
            std::io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        drop(ours);
        let mut buf = vec![0u8; bytes.max(1)];
        let mut ok = true;
        for _ in 0..3 * rounds {
            ok &= theirs.read_exact(&mut buf).is_ok() && theirs.write_all(&buf).is_ok();
            if !ok {
                break;
            }
        }
        // SAFETY: end the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    drop(theirs);
    let mut buf = vec![0u8; bytes.max(1)];
    let mut best = u64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        for _ in 0..rounds {
            ours.write_all(&buf)?;
            ours.read_exact(&mut buf)?;
        }
        best = best.min(start.elapsed().as_nanos() as u64 / u64::from(rounds.max(1)));
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(best)
}

/// A pipe pair that reads and writes like a socket.
struct PipeEnd {
    r: std::fs::File,
    w: std::fs::File,
}
impl Read for PipeEnd {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.r.read(b)
    }
}
impl Write for PipeEnd {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.w.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn pipe() -> Result<(std::fs::File, std::fs::File)> {
    let mut fds = [0; 2];
    // SAFETY: a valid out array for two fds.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: fresh fds we own.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

fn host_pipe(bytes: usize, rounds: u32) -> Result<u64> {
    let (r1, w1) = pipe()?;
    let (r2, w2) = pipe()?;
    ping_pong(
        PipeEnd { r: r2, w: w1 },
        PipeEnd { r: r1, w: w2 },
        bytes,
        rounds,
    )
}

fn host_socket(bytes: usize, rounds: u32) -> Result<u64> {
    let (a, b) = UnixStream::pair()?;
    ping_pong(a, b, bytes, rounds)
}

/// (mark id, ns, insn, exits, irqs) from `--stats` output.
/// Runs the guest with `init` (program and arguments) under `--stats`,
/// with `run_args` (objects, say) before it: its output and the benchmark
/// marks in it.
pub(crate) fn guest_marks(
    bench: &str,
    run_args: &[&str],
    init: &[&str],
) -> Result<(String, Vec<[u64; 5]>)> {
    let out = crate::bench::vmm_command(&["run", "--stats"])?
        .args(run_args)
        .arg("--init")
        .args(init)
        .stdin(Stdio::null())
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(VmmError::Guest(format!(
            "{bench} bench: the guest run failed: {text}"
        )));
    }
    let m = marks(&text);
    Ok((text, m))
}

fn marks(out: &str) -> Vec<[u64; 5]> {
    out.lines()
        .filter(|l| l.starts_with(STATS_TAG) && l.contains(" mark="))
        .filter_map(|l| {
            let get = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok())
            };
            Some([
                get("mark")?,
                get("ns")?,
                get("insn")?,
                get("exits")?,
                get("irqs")?,
            ])
        })
        .collect()
}

pub fn ipc(rounds: u32) -> Result<()> {
    let rounds = rounds.max(1);
    let (text, m) = guest_marks("ipc", &[], &["ipcbench", &rounds.to_string()])?;
    // ipcbench marks 2k+1 / 2k+2 around loop k: null, 4 KiB inline, 64 KiB OOL.
    let cases = [
        ("null msg_rpc", 0usize),
        ("4 KiB inline", 4096),
        ("64 KiB out-of-line", 65536),
    ];
    println!("ipc benchmark: {rounds} round trips between two guest tasks vs two host processes");
    println!(
        "{:>20} {:>12} {:>10} {:>10} {:>10} {:>12} {:>12} {:>8}",
        "case",
        "guest µs/rt",
        "insn/rt",
        "exits/rt",
        "irqs/rt",
        "pipe µs/rt",
        "socket µs/rt",
        "ratio"
    );
    for (k, (name, bytes)) in cases.iter().enumerate() {
        let a = m.iter().find(|x| x[0] == 2 * k as u64 + 1);
        let b = m.iter().find(|x| x[0] == 2 * k as u64 + 2);
        let (Some(a), Some(b)) = (a, b) else {
            return Err(VmmError::Guest(format!(
                "ipc bench: no marks for {name}: {text}"
            )));
        };
        // ipcbench makes a tenth as many out-of-line round trips.
        let n = f64::from(if *bytes == 65536 {
            (rounds / 10).max(1)
        } else {
            rounds
        });
        let guest_ns = (b[1] - a[1]) as f64 / n;
        let pipe_ns = host_pipe((*bytes).max(8), rounds)? as f64;
        let sock_ns = host_socket((*bytes).max(8), rounds)? as f64;
        println!(
            "{:>20} {:>12.1} {:>10.0} {:>10.2} {:>10.2} {:>12.2} {:>12.2} {:>7.0}x",
            name,
            guest_ns / 1e3,
            (b[2] - a[2]) as f64 / n,
            (b[3] - a[3]) as f64 / n,
            (b[4] - a[4]) as f64 / n,
            pipe_ns / 1e3,
            sock_ns / 1e3,
            guest_ns / pipe_ns.max(1.0),
        );
    }
    println!(
        "(ratio = guest / pipe wall time; goals: null round trip <= 600 kernel instructions, 0 exits)"
    );
    Ok(())
}
