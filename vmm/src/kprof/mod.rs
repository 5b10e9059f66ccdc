//! `vmm run --kernel-profile MARK[:FILE]`: where the guest kernel's
//! instructions go between two benchmark marks. From the guest's mark MARK
//! to the next mark the vCPU runs single-stepped (KVM_SET_GUEST_DEBUG), so
//! KVM_RUN comes back after every guest ring-0 instruction with its address;
//! the profiler counts them per address (this file), the kernel's symbol
//! table names them (symbols.rs), and report.rs prints the result per
//! function.
//!
//! On software KVM (kvm_pvm) only ring 0 is stepped, which is exactly what
//! `insn_emulation` counts; on hardware KVM user instructions come back too
//! and are counted apart.

mod report;
mod symbols;

pub use report::{Report, Units};
pub use symbols::Symbols;

use guest_kernel::abi::MILESTONE_USER_BASE;
use kvm_bindings::{KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, kvm_guest_debug};
use kvm_ioctls::VcpuFd;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the kernel half of the guest's address space starts: the direct
/// map and the kernel image live above it, user tasks below.
pub const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;

/// The highest benchmark mark: the kernel writes the mark's low 8 bits.
pub const MAX_MARK: u32 = 0xff;

/// `--kernel-profile MARK[:FILE]` as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileSpec {
    /// The user mark (0-255) where stepping starts.
    pub mark: u32,
    /// Where the report goes (stderr without it); the raw histogram goes
    /// next to it, in `FILE.raw`.
    pub file: Option<PathBuf>,
}

/// Parses `MARK[:FILE]`.
pub fn parse_spec(s: &str) -> Result<ProfileSpec, String> {
    let (mark, file) = match s.split_once(':') {
        Some((m, "")) => return Err(format!("{m}: no FILE after the ':'")),
        Some((m, f)) => (m, Some(PathBuf::from(f))),
        None => (s, None),
    };
    let mark = mark
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&m| m <= MAX_MARK)
        .ok_or_else(|| {
            format!("MARK must be a benchmark mark number, 0 to {MAX_MARK}, not {mark:?}")
        })?;
    Ok(ProfileSpec { mark, file })
}

/// The path of the raw histogram written next to report file `file`.
pub fn raw_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".raw");
    PathBuf::from(p)
}

/// Where the report and the histogram go, opened before the run: once the
/// VMM's threads are confined, no file can be opened.
pub struct Output {
    /// (report, raw histogram); None: the report goes to stderr.
    files: Option<(File, File)>,
}

impl Output {
    pub fn open(spec: &ProfileSpec) -> std::io::Result<Output> {
        let Some(path) = &spec.file else {
            return Ok(Output { files: None });
        };
        let create = |p: &Path| {
            File::create(p).map_err(|e| {
                std::io::Error::new(e.kind(), format!("--kernel-profile {}: {e}", p.display()))
            })
        };
        Ok(Output {
            files: Some((create(path)?, create(&raw_path(path))?)),
        })
    }

    /// Writes the report (to its file, or to stderr with each line marked
    /// as the VMM's) and, with a file, the raw histogram.
    pub fn write(&mut self, report: &[String], profile: &Profile) -> std::io::Result<()> {
        match &mut self.files {
            None => {
                let mut err = std::io::stderr().lock();
                for l in report {
                    writeln!(err, "vmm: {l}")?;
                }
            }
            Some((text, raw)) => {
                for l in report {
                    writeln!(text, "{l}")?;
                }
                raw.write_all(profile.raw_text().as_bytes())?;
            }
        }
        Ok(())
    }
}

/// Asks KVM to single-step the vCPU (`on`) or to stop.
fn single_step(vcpu: &VcpuFd, on: bool) -> Result<(), kvm_ioctls::Error> {
    let mut dbg = kvm_guest_debug::default();
    if on {
        dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
    }
    vcpu.set_guest_debug(&dbg)
}

/// The counting side, on the vCPU thread.
#[derive(Debug)]
pub struct Profiler {
    /// The milestone id of the mark where stepping starts.
    start: u32,
    stepping: bool,
    spans: u32,
    counts: HashMap<u64, u64>,
    user_steps: u64,
}

/// What the profiler counted, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub mark: u32,
    /// How many times the mark came (each one starts a span to the next mark).
    pub spans: u32,
    /// The guest stopped during a span (the last span runs to the end).
    pub unfinished: bool,
    /// Kernel instructions per address, by address.
    pub counts: Vec<(u64, u64)>,
    /// Steps below the kernel half (user mode; hardware KVM only), not in `counts`.
    pub user_steps: u64,
}

impl Profile {
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    /// The raw histogram: `ADDRESS COUNT` per line, the address in hex as
    /// addr2line takes it.
    pub fn raw_text(&self) -> String {
        let mut out = String::new();
        for (addr, n) in &self.counts {
            out.push_str(&format!("{addr:#x} {n}\n"));
        }
        out
    }
}

/// Reads back what `Profile::raw_text` wrote.
pub fn parse_raw(text: &str) -> Result<Vec<(u64, u64)>, String> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let bad = || format!("line {}: expected 0xADDRESS COUNT, got {l:?}", i + 1);
            let (a, n) = l.split_once(' ').ok_or_else(bad)?;
            let a = a.strip_prefix("0x").ok_or_else(bad)?;
            let a = u64::from_str_radix(a, 16).map_err(|_| bad())?;
            Ok((a, n.parse().map_err(|_| bad())?))
        })
        .collect()
}

impl Profiler {
    pub fn new(mark: u32) -> Profiler {
        Profiler {
            start: MILESTONE_USER_BASE | (mark & MAX_MARK),
            stepping: false,
            spans: 0,
            counts: HashMap::new(),
            user_steps: 0,
        }
    }

    /// At every milestone: any mark ends a span, the profiled one starts one.
    pub fn on_milestone(&mut self, vcpu: &VcpuFd, id: u32) -> Result<(), kvm_ioctls::Error> {
        let start = id == self.start;
        if self.stepping && !start {
            single_step(vcpu, false)?;
            self.stepping = false;
        } else if start && !self.stepping {
            single_step(vcpu, true)?;
            self.stepping = true;
        }
        if start {
            self.spans += 1;
        }
        Ok(())
    }

    /// One stepped instruction at `rip`; false when not stepping (then the
    /// debug exit is not ours and the caller treats it as unexpected).
    pub fn step(&mut self, rip: u64) -> bool {
        if !self.stepping {
            return false;
        }
        if rip >= KERNEL_HALF {
            *self.counts.entry(rip).or_default() += 1;
        } else {
            self.user_steps += 1;
        }
        true
    }

    pub fn finish(self) -> Profile {
        let mut counts: Vec<(u64, u64)> = self.counts.into_iter().collect();
        counts.sort_unstable();
        Profile {
            mark: self.start & MAX_MARK,
            spans: self.spans,
            unfinished: self.stepping,
            counts,
            user_steps: self.user_steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            parse_spec("1"),
            Ok(ProfileSpec {
                mark: 1,
                file: None
            })
        );
        assert_eq!(
            parse_spec("255:/tmp/p:x"),
            Ok(ProfileSpec {
                mark: 255,
                file: Some("/tmp/p:x".into())
            })
        );
        for bad in ["", "x", "-1", "256", "1:", ":f", "1.5:f"] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
        assert_eq!(
            raw_path(Path::new("/tmp/p.txt")),
            Path::new("/tmp/p.txt.raw")
        );
    }

    #[test]
    fn counts_kernel_steps_by_address_and_user_steps_apart() {
        let mut p = Profiler::new(3);
        // Not stepping yet: a debug exit is not the profiler's.
        assert!(!p.step(KERNEL_HALF));
        p.stepping = true;
        p.spans = 1;
        for rip in [KERNEL_HALF + 8, KERNEL_HALF, KERNEL_HALF + 8, 0x40_0000] {
            assert!(p.step(rip));
        }
        let prof = p.finish();
        assert_eq!(prof.mark, 3);
        assert_eq!(prof.counts, vec![(KERNEL_HALF, 1), (KERNEL_HALF + 8, 2)]);
        assert_eq!(prof.total(), 3);
        assert_eq!(prof.user_steps, 1);
        // Still stepping when the guest stopped.
        assert!(prof.unfinished);
        assert_eq!(parse_raw(&prof.raw_text()), Ok(prof.counts));
        assert!(parse_raw("0x10 1\nffff 2").is_err());
        assert!(parse_raw("0x10").is_err());
    }
}
