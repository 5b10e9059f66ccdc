//! `vmm bench objread`: a guest task reads a host file object through the
//! virtio-pager device (objsum, in 4 KiB and 64 KiB requests) next to a
//! host `pread` loop over the same file, in the same run. Per request it
//! reports the guest kernel instructions, VM exits and interrupts between
//! objsum's two benchmark marks, which carry over to hardware KVM; the
//! wall-clock rates do not (ring 0 is emulated on software KVM).

use crate::bench::STATS_TAG;
use crate::error::{Result, VmmError};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

const PAGE: u64 = 4096;

struct Mark {
    ns: u64,
    insn: u64,
    exits: u64,
    irqs: u64,
}

fn marks(out: &str) -> Vec<(u64, Mark)> {
    out.lines()
        .filter(|l| l.starts_with(STATS_TAG) && l.contains(" mark="))
        .filter_map(|l| {
            let get = |k: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok())
            };
            Some((
                get("mark")?,
                Mark {
                    ns: get("ns")?,
                    insn: get("insn")?,
                    exits: get("exits")?,
                    irqs: get("irqs")?,
                },
            ))
        })
        .collect()
}

struct GuestRun {
    requests: u64,
    ns: u64,
    insn: u64,
    exits: u64,
    irqs: u64,
}

fn guest(path: &Path, chunk: u64) -> Result<GuestRun> {
    let object = format!("data=file:{}?ro", path.display());
    let chunk_arg = format!("{}K", chunk / 1024);
    let out = crate::bench::vmm_command(&[
        "run", "--stats", "--object", &object, "--init", "objsum", "data", &chunk_arg,
    ])?
    .stdin(Stdio::null())
    .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let fail = |why: &str| VmmError::Guest(format!("objread bench: {why}: {text}"));
    if !out.status.success() {
        return Err(fail("the guest run failed"));
    }
    let requests = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("requests=")?.parse::<u64>().ok())
        .ok_or_else(|| fail("no request count"))?;
    let m = marks(&text);
    let (Some((_, a)), Some((_, b))) = (
        m.iter().find(|(id, _)| *id == 1),
        m.iter().find(|(id, _)| *id == 2),
    ) else {
        return Err(fail("no benchmark marks"));
    };
    Ok(GuestRun {
        requests: requests.max(1),
        ns: b.ns.saturating_sub(a.ns),
        insn: b.insn.saturating_sub(a.insn),
        exits: b.exits.saturating_sub(a.exits),
        irqs: b.irqs.saturating_sub(a.irqs),
    })
}

/// The peer: the same bytes with pread into one buffer, best of 3 passes.
fn host_pread(path: &Path, size: u64, chunk: u64) -> Result<u64> {
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; chunk as usize];
    let mut best = u64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let mut off = 0;
        while off < size {
            let n = f.read_at(&mut buf, off)?;
            if n == 0 {
                break;
            }
            off += n as u64;
        }
        best = best.min(start.elapsed().as_nanos() as u64);
    }
    Ok(best)
}

fn make_file(size: u64) -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("duality-objread-{}", std::process::id()));
    let mut f = std::fs::File::create(&path)?;
    let mut block = vec![0u8; 1 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = size;
    while left > 0 {
        for w in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(path)
}

/// `--size`: a size as `pager_backends::size` reads it (`4096`, `64K`,
/// `64M`, `1G`), a whole number of pages, at least one.
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = |why: String| VmmError::BadSize {
        option: "--size",
        given: s.to_string(),
        why,
    };
    let n = pager_backends::size::parse_size(s).map_err(|e| bad(e.to_string()))?;
    if n < PAGE || n % PAGE != 0 {
        return Err(bad(
            "expected whole pages (4 KiB each), at least one, like 64M".into(),
        ));
    }
    Ok(n)
}

pub fn objread(size: u64) -> Result<()> {
    let size = size.max(PAGE) / PAGE * PAGE;
    let path = make_file(size)?;
    let result = report(&path, size);
    let _ = std::fs::remove_file(&path);
    result
}

fn report(path: &Path, size: u64) -> Result<()> {
    let pages = size / PAGE;
    println!(
        "objread benchmark: {} MiB host file object read by a guest task (objsum) vs host pread",
        size >> 20
    );
    println!(
        "{:>8} {:>14} {:>14} {:>9} {:>10} {:>10} {:>9} {:>9} {:>11}",
        "request",
        "guest pages/s",
        "pread pages/s",
        "ratio",
        "µs/req",
        "insn/req",
        "exits/req",
        "irqs/req",
        "insn/page"
    );
    for chunk in [4096u64, 65536] {
        let g = guest(path, chunk)?;
        let h = host_pread(path, size, chunk)?;
        let guest_rate = pages as f64 / (g.ns.max(1) as f64 / 1e9);
        let host_rate = pages as f64 / (h.max(1) as f64 / 1e9);
        let n = g.requests as f64;
        println!(
            "{:>6}K {:>14.0} {:>14.0} {:>8.1}x {:>10.1} {:>10.0} {:>9.2} {:>9.2} {:>11.0}",
            chunk / 1024,
            guest_rate,
            host_rate,
            host_rate / guest_rate.max(1e-9),
            g.ns as f64 / n / 1e3,
            g.insn as f64 / n,
            g.exits as f64 / n,
            g.irqs as f64 / n,
            g.insn as f64 / pages as f64,
        );
    }
    println!("(ratio = pread rate / guest rate; per-request counts from the vCPU's KVM statistics");
    println!(
        " between objsum's marks, including its system call and the SHA-256 work's timer ticks;"
    );
    println!(" goals: <= 800 kernel instructions, <= 1 exit and <= 1 interrupt per request)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_whole_pages() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("4096").unwrap(), PAGE);
        assert_eq!(parse_size("8KiB").unwrap(), 2 * PAGE);
        for bad in ["0", "100", "4097", "1.5G", "lots", "99999999T"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--size {bad:?}: ")), "{e}");
        }
    }
}
