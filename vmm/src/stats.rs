//! Per-vCPU KVM statistics through the binary stats interface
//! (KVM_GET_STATS_FD): exits by kind and, on software KVM, `insn_emulation`,
//! the count of guest ring-0 instructions emulated. These counts are
//! deterministic per operation and carry over to hardware KVM, where wall
//! clock times measured here do not.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

/// _IO(KVMIO, 0xce)
const KVM_GET_STATS_FD: libc::c_ulong = 0xae_ce;
const HEADER_SIZE: usize = 24;
const DESC_FIXED: usize = 16;

pub struct VcpuStats {
    file: File,
    /// (name, offset in the data block in bytes)
    counters: Vec<(String, u64)>,
    data_offset: u64,
    data_len: usize,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl VcpuStats {
    pub fn open(vcpu: &impl AsRawFd) -> std::io::Result<VcpuStats> {
        // SAFETY: the ioctl takes no argument and returns a new fd or -1.
        let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD as _) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut h = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut h, 0)?;
        let name_size = u32_at(&h, 4) as usize;
        let num_desc = u32_at(&h, 8) as usize;
        let desc_offset = u32_at(&h, 16) as u64;
        let data_offset = u32_at(&h, 20) as u64;
        let desc_size = DESC_FIXED + name_size;
        let mut descs = vec![0u8; desc_size * num_desc];
        file.read_exact_at(&mut descs, desc_offset)?;
        let mut counters = Vec::new();
        let mut data_len = 0;
        for d in descs.chunks_exact(desc_size) {
            let size = u16::from_le_bytes([d[6], d[7]]) as usize;
            let offset = u32_at(d, 8) as u64;
            let name = &d[DESC_FIXED..];
            let name = String::from_utf8_lossy(
                &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())],
            );
            data_len = data_len.max(offset as usize + size * 8);
            if size == 1 {
                counters.push((name.into_owned(), offset));
            }
        }
        Ok(VcpuStats {
            file,
            counters,
            data_offset,
            data_len,
        })
    }

    /// Current value of every scalar statistic.
    pub fn snapshot(&self) -> std::io::Result<Snapshot> {
        let mut data = vec![0u8; self.data_len];
        self.file.read_exact_at(&mut data, self.data_offset)?;
        let values = self
            .counters
            .iter()
            .map(|(n, off)| {
                let o = *off as usize;
                let v = data
                    .get(o..o + 8)
                    .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()));
                (n.clone(), v)
            })
            .collect();
        Ok(Snapshot(values))
    }
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot(pub Vec<(String, u64)>);

impl Snapshot {
    pub fn get(&self, name: &str) -> u64 {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }
    /// The exits KVM counts as such.
    pub fn exits(&self) -> u64 {
        self.get("exits")
    }
    pub fn kernel_instructions(&self) -> u64 {
        self.get("insn_emulation")
    }
}
