//! The MMIO bus the vCPU thread dispatches MMIO exits to: which virtio-mmio
//! window claims an address. Unclaimed accesses are the caller's business.

use devices::virtio::MmioTransport;

struct Window {
    base: u64,
    size: u64,
    transport: MmioTransport,
}

#[derive(Default)]
pub struct MmioBus {
    windows: Vec<Window>,
}

#[derive(Debug, thiserror::Error)]
#[error("MMIO window {base:#x}+{size:#x} overlaps another device's")]
pub struct Overlap {
    pub base: u64,
    pub size: u64,
}

impl MmioBus {
    pub fn insert(
        &mut self,
        base: u64,
        size: u64,
        transport: MmioTransport,
    ) -> Result<(), Overlap> {
        let end = base.checked_add(size).ok_or(Overlap { base, size })?;
        if size == 0
            || self
                .windows
                .iter()
                .any(|w| base < w.base + w.size && w.base < end)
        {
            return Err(Overlap { base, size });
        }
        self.windows.push(Window {
            base,
            size,
            transport,
        });
        Ok(())
    }

    /// The window holding the whole access `[addr, addr + len)`, and the
    /// offset in it. An access straddling a window's edge belongs to none
    /// (no real device decodes half an access).
    fn find(&mut self, addr: u64, len: usize) -> Option<(&mut MmioTransport, u64)> {
        let end = addr.checked_add(len as u64)?;
        self.windows
            .iter_mut()
            .find(|w| addr >= w.base && end <= w.base + w.size)
            .map(|w| (&mut w.transport, addr - w.base))
    }

    /// Returns false when no device claims the access.
    pub fn read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((t, off)) => {
                t.read(off, data);
                true
            }
            None => false,
        }
    }

    /// Returns false when no device claims the access.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((t, off)) => {
                t.write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::pager::PagerDevice;
    use devices::virtio::mmio::MMIO_MAGIC;
    use pager_backends::KernelId;
    use std::sync::{Arc, Mutex};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    // Register offsets (virtio 1.2 §4.2.2); the transport keeps its own private.
    const MAGIC: u64 = 0x000;
    const DEVICE_ID: u64 = 0x008;
    const STATUS: u64 = 0x070;

    fn transport() -> MmioTransport {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dev = PagerDevice::new(KernelId(1), Vec::new(), 1).unwrap();
        MmioTransport::new(mem, Arc::new(Mutex::new(dev))).unwrap()
    }

    #[test]
    fn dispatches_inside_the_window_only() {
        let base = 0xd000_0000;
        let mut bus = MmioBus::default();
        bus.insert(base, 0x1000, transport()).unwrap();
        let mut b = [0u8; 4];
        assert!(bus.read(base + MAGIC, &mut b));
        assert_eq!(u32::from_le_bytes(b), MMIO_MAGIC);
        assert!(bus.read(base + DEVICE_ID, &mut b));
        assert_eq!(u32::from_le_bytes(b), devices::pager::VIRTIO_ID_PAGER);
        assert!(!bus.read(base - 4, &mut b));
        assert!(!bus.read(base + 0x1000, &mut b));
        assert!(!bus.read(base + 0xffe, &mut b), "straddles the end");
        assert!(!bus.read(u64::MAX - 1, &mut b));
        assert!(bus.write(base + STATUS, &0u32.to_le_bytes()));
        assert!(!bus.write(base + 0x2000, &[0]));
        assert!(bus.insert(base + 0x800, 0x1000, transport()).is_err());
        assert!(bus.insert(base - 0x1000, 0x1000, transport()).is_ok());
        assert!(bus.insert(u64::MAX, 2, transport()).is_err());
    }
}
