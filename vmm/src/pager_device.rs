//! Builds the one virtio-pager device for `vmm run --object` and wires it
//! into KVM: queue notifications as ioeventfds (the vCPU never exits to us
//! for them), the interrupt as an irqfd, the registers on the MMIO bus.

use crate::boot::layout::{PAGER_GSI, PAGER_MMIO_BASE};
use crate::bus::MmioBus;
use crate::error::{Result, VmmError, kvm};
use crate::objects::{OpenObject, kernel_id};
use crate::vm::Vm;
use devices::pager::{DEFAULT_WORKERS, PagerDevice};
use devices::virtio::MmioTransport;
use devices::virtio::mmio::{MMIO_WINDOW_SIZE, QUEUE_NOTIFY};
use kvm_ioctls::IoEventAddress;
use pager_backends::ThreadHook;
use std::sync::{Arc, Mutex};

/// The kernel command-line word that tells the guest where the device is,
/// in Linux's `virtio_mmio.device=<size>@<base>:<irq>` format.
pub fn cmdline_word(base: u64, size: u64, irq: u32) -> String {
    let size = if size.is_multiple_of(1024) {
        format!("{}K", size / 1024)
    } else {
        size.to_string()
    };
    format!("virtio_mmio.device={size}@{base:#x}:{irq}")
}

/// The word for our device at its fixed place.
pub fn our_cmdline_word() -> String {
    cmdline_word(PAGER_MMIO_BASE, MMIO_WINDOW_SIZE, PAGER_GSI)
}

/// Creates the device over `objects` (in order: object id = index), puts its
/// transport on `bus` and registers its eventfds with KVM. The caller adds
/// the returned device to the event loop. Each worker runs `worker_hook`
/// first (its seccomp filter).
pub fn attach(
    vm: &Vm,
    objects: &[OpenObject],
    bus: &mut MmioBus,
    worker_hook: &ThreadHook,
) -> Result<Arc<Mutex<PagerDevice>>> {
    let table = objects.iter().map(OpenObject::device_object).collect();
    let dev = Arc::new(Mutex::new(PagerDevice::with_worker_hook(
        kernel_id(),
        table,
        DEFAULT_WORKERS,
        Some(worker_hook),
    )?));
    let transport = MmioTransport::new(vm.mem.clone(), dev.clone())?;
    for (i, evt) in transport.queue_evts().iter().enumerate() {
        // The driver writes the queue index to QueueNotify (4 bytes); the
        // datamatch lets each queue have its own eventfd.
        vm.fd
            .register_ioevent(
                evt,
                &IoEventAddress::Mmio(PAGER_MMIO_BASE + QUEUE_NOTIFY),
                i as u32,
            )
            .map_err(kvm("register virtio-pager queue ioeventfd"))?;
    }
    vm.fd
        .register_irqfd(transport.interrupt_evt(), PAGER_GSI)
        .map_err(kvm("register virtio-pager irqfd"))?;
    bus.insert(PAGER_MMIO_BASE, MMIO_WINDOW_SIZE, transport)
        .map_err(|e| VmmError::Boot(e.to_string()))?;
    Ok(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_is_linux_format() {
        assert_eq!(our_cmdline_word(), "virtio_mmio.device=4K@0xd0000000:5");
        assert_eq!(
            cmdline_word(0x1000_0000, 512, 9),
            "virtio_mmio.device=512@0x10000000:9"
        );
    }
}
