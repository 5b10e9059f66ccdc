//! virtio (OASIS virtio 1.2) for the guest: the virtio-mmio transport, the
//! split virtqueue, and the virtio-pager driver (docs/virtio-pager.md).
//!
//! The kernel supplies the two machine-dependent pieces: register access
//! (`Regs`, volatile MMIO in the kernel) and a view of guest-physical memory
//! (`Dma`, the direct map in the kernel).

pub mod mmio;
pub mod pager;
pub mod virtqueue;

use crate::addr::PhysAddr;

/// 32-bit device registers of one virtio-mmio window.
pub trait Regs {
    fn read32(&self, offset: u64) -> u32;
    fn write32(&self, offset: u64, value: u32);
}

/// Where the driver can reach guest-physical memory it shares with the
/// device (rings, headers, frames).
pub trait Dma {
    fn ptr(&self, pa: PhysAddr) -> *mut u8;
}

/// A `virtio_mmio.device=<size>@<base>:<irq>` command-line entry (Linux's
/// format, which the VMM uses to tell the guest where its devices are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    pub base: PhysAddr,
    pub size: u64,
    pub irq: u32,
}

/// Parses the value part: `4K@0xd0000000:5`. Size takes an optional K/M/G
/// suffix; base is hex with 0x or decimal; irq is decimal.
pub fn parse_mmio_device(v: &[u8]) -> Option<MmioDevice> {
    let at = v.iter().position(|&c| c == b'@')?;
    let colon = v.iter().rposition(|&c| c == b':')?;
    if colon < at {
        return None;
    }
    let size = parse_size(&v[..at])?;
    let base = parse_num(&v[at + 1..colon])?;
    let irq = u32::try_from(crate::cmdline::parse_u64(&v[colon + 1..])?).ok()?;
    if size == 0 || base.checked_add(size).is_none() {
        return None;
    }
    Some(MmioDevice {
        base: PhysAddr(base),
        size,
        irq,
    })
}

fn parse_size(s: &[u8]) -> Option<u64> {
    let (digits, mult) = match s.last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    parse_num(digits)?.checked_mul(mult)
}

fn parse_num(s: &[u8]) -> Option<u64> {
    match s {
        [b'0', b'x' | b'X', hex @ ..] if !hex.is_empty() => hex.iter().try_fold(0u64, |acc, &c| {
            let d = (c as char).to_digit(16)?;
            acc.checked_mul(16)?.checked_add(d as u64)
        }),
        _ => crate::cmdline::parse_u64(s),
    }
}

/// Full barrier between publishing to a ring and reading the other side's
/// event index (virtio 1.2 §2.7.7.2). `lock or` rather than `mfence`, so
/// the kernel stays free of SSE-family instructions.
#[inline]
pub fn full_barrier() {
    // SAFETY: a locked no-op on the stack; orders all earlier loads/stores.
    unsafe {
        core::arch::asm!(
            "lock or dword ptr [rsp], 0",
            options(nostack, preserves_flags)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_device_entries() {
        assert_eq!(
            parse_mmio_device(b"4K@0xd0000000:5"),
            Some(MmioDevice {
                base: PhysAddr(0xd000_0000),
                size: 4096,
                irq: 5
            })
        );
        assert_eq!(
            parse_mmio_device(b"512@4096:12").map(|d| (d.base, d.size, d.irq)),
            Some((PhysAddr(4096), 512, 12))
        );
        for bad in [
            &b""[..],
            b"4K",
            b"4K@",
            b"4K@0xd0000000",
            b"@0x1000:5",
            b"0@0x1000:5",
            b"4K@0xzz:5",
            b"4K@0x1000:",
            b"4K@0x1000:99999999999",
            b"4K@0xffffffffffffffff:5",
            b"4Q@0x1000:5",
        ] {
            assert_eq!(
                parse_mmio_device(bad),
                None,
                "{:?}",
                core::str::from_utf8(bad)
            );
        }
    }
}
