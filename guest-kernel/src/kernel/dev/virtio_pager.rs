//! The virtio-pager driver's machine half: where the device is (from the
//! `virtio_mmio.device=` command-line entry), its registers through the
//! direct map, its interrupt through the I/O APIC, and the driver instance
//! behind its own lock (not the big kernel lock: nothing here needs the
//! task table except the wake-ups the caller does in the callbacks).
//!
//! Lock order: KERNEL, then DRIVER.

use crate::arch::ioapic;
use crate::arch::mm::{self, alloc_zeroed, phys_to_virt};
use crate::kern::console::{Dec, Hex};
use crate::kprint;
use core::ptr::{read_volatile, write_volatile};
use guest_kernel::addr::PhysAddr;
use guest_kernel::cmdline;
use guest_kernel::dev::virtio::pager::{
    Completion, Event, Frames, ObjState, Op, PagerDriver, StartError, status,
};
use guest_kernel::dev::virtio::{Dma, MmioDevice, Regs, parse_mmio_device};
use guest_kernel::vm::frame::FrameAllocator;
use spin::{Mutex, MutexGuard};

/// The vector device interrupts arrive on.
pub const VIRTIO_VECTOR: u8 = 33;

pub struct MmioRegs(*mut u8);
// SAFETY: the register window is a fixed mapping; access is serialised by
// the DRIVER lock.
unsafe impl Send for MmioRegs {}
impl Regs for MmioRegs {
    fn read32(&self, offset: u64) -> u32 {
        // SAFETY: inside the device's window, mapped uncached at boot.
        unsafe { read_volatile(self.0.add(offset as usize) as *const u32) }
    }
    fn write32(&self, offset: u64, value: u32) {
        // SAFETY: as in read32.
        unsafe { write_volatile(self.0.add(offset as usize) as *mut u32, value) }
    }
}

pub struct DirectDma;
impl Dma for DirectDma {
    fn ptr(&self, pa: PhysAddr) -> *mut u8 {
        phys_to_virt(pa)
    }
}

pub type Driver = PagerDriver<MmioRegs, DirectDma>;

static DRIVER: Mutex<Option<Driver>> = Mutex::new(None);

pub fn lock() -> MutexGuard<'static, Option<Driver>> {
    DRIVER.lock()
}

/// Events that arrive where the VM cannot act on them (the boot self
/// test, the polled power-off sync) are dropped; everywhere else they go
/// to kernel/vm/pager_events.rs.
pub fn drop_event(_: &Event) -> Option<PhysAddr> {
    None
}

/// Finds the device on the command line, maps it, starts the driver and
/// routes its interrupt. No entry: no device, and that is fine.
pub fn init(cmd: &[u8], frames: &mut FrameAllocator, root: PhysAddr) {
    let Some(dev) = cmdline::options(cmd)
        .filter_map(|w| w.strip_prefix(b"virtio_mmio.device="))
        .find_map(parse_mmio_device)
    else {
        return;
    };
    if let Err(why) = start(dev, frames, root) {
        kprint!(
            "virtio-pager: not started at ",
            Hex(dev.base.0),
            ": ",
            why,
            "\n"
        );
        return;
    }
    if cmdline::value(cmd, b"selftest") == Some(b"hostile") {
        selftest(alloc_zeroed(frames));
    }
}

fn start(dev: MmioDevice, frames: &mut FrameAllocator, root: PhysAddr) -> Result<(), &'static str> {
    if dev.size < 0x200 {
        return Err("register window too small");
    }
    if !mm::map_mmio(frames, root, dev.base) || !mm::map_mmio(frames, root, ioapic::IOAPIC_BASE) {
        return Err("cannot map the registers");
    }
    let regs = MmioRegs(phys_to_virt(dev.base));
    let d = Driver::start(regs, DirectDma, &mut || alloc_zeroed(frames)).map_err(|e| match e {
        StartError::NoMemory => "out of memory",
        StartError::BadConfig => "unexpected config space",
        StartError::Transport(_) => "device did not accept the driver",
    })?;
    ioapic::mask_legacy_pic();
    if !ioapic::route(dev.irq, VIRTIO_VECTOR) {
        return Err("no such interrupt line");
    }
    kprint!(
        "virtio-pager: ",
        Dec(d.objects().len() as u64),
        " objects at ",
        Hex(dev.base.0),
        " irq ",
        Dec(dev.irq as u64),
        "\n"
    );
    for (i, o) in d.objects().iter().enumerate() {
        kprint!(
            "virtio-pager:   ",
            Dec(i as u64),
            " ",
            o.name(),
            " (",
            Dec(o.table_size),
            " bytes)\n"
        );
    }
    *DRIVER.lock() = Some(d);
    Ok(())
}

/// Zero-fills a request's frames (the pager said DATA_UNAVAILABLE).
pub fn zero_frames(frames: &Frames, bytes: u64) {
    let mut left = bytes;
    for i in 0..frames.len() {
        let Some(s) = frames.get(i) else { break };
        let n = u64::from(s.len).min(left);
        // SAFETY: frames the request owned; the device is done with them.
        unsafe { core::ptr::write_bytes(phys_to_virt(s.addr), 0, n as usize) };
        left -= n;
    }
}

/// Polls, interrupts off, until `pending` reports nothing outstanding or
/// the bound runs out. For boot, the self test and power-off, where no
/// task can sleep; the device answers in microseconds unless a pager is
/// stuck, and then the host's pager timeout ends the request.
pub fn wait_polled(
    d: &mut Driver,
    done: &mut dyn FnMut(&Completion, &Frames),
    mut pending: impl FnMut() -> bool,
) -> bool {
    for _ in 0..50_000_000u64 {
        if !pending() {
            return true;
        }
        d.poll(done, &mut drop_event);
        if d.is_resetting() {
            let _ = d.finish_reset(1, done);
        }
        core::hint::spin_loop();
    }
    !pending()
}

/// Clean shutdown: SYNC every initialised object so the pagers have made
/// every write durable before the VM powers off.
pub fn shutdown() {
    let Some(mut guard) = DRIVER.try_lock() else {
        return;
    };
    let Some(d) = guard.as_mut() else { return };
    const SYNC_TOKEN: u64 = 1 << 62;
    let mut outstanding = 0u32;
    for id in 0..d.objects().len() as u32 {
        if matches!(d.object(id).map(|o| o.state), Some(ObjState::Ready { .. }))
            && d.submit(id, Op::Sync, SYNC_TOKEN | u64::from(id), [])
                .is_ok()
        {
            outstanding += 1;
        }
    }
    if outstanding == 0 {
        return;
    }
    d.kick();
    let left = core::cell::Cell::new(outstanding);
    let mut done = |c: &Completion, _: &Frames| {
        if c.token & SYNC_TOKEN == 0 {
            return;
        }
        left.set(left.get() - 1);
        if c.status != status::OK {
            kprint!(
                "virtio-pager: sync of object ",
                Dec(c.object as u64),
                " failed (status ",
                Dec(c.status as u64),
                ")\n"
            );
        }
    };
    if !wait_polled(d, &mut done, || left.get() > 0) {
        kprint!("virtio-pager: sync at power-off did not finish\n");
    }
}

/// `selftest=hostile`: see vpager_selftest.rs. Runs at boot, before any
/// task, with a kernel page as the requests' frame.
fn selftest(frame: Option<PhysAddr>) {
    let mut guard = DRIVER.lock();
    let (Some(d), Some(frame)) = (guard.as_mut(), frame) else {
        kprint!("selftest: hostile: FAILED: no device or no memory\n");
        return;
    };
    match crate::dev::virtio_selftest::hostile(d, frame) {
        Ok(report) => kprint!(
            "selftest: hostile: ",
            Dec(report.rejected),
            " malformed chains rejected, ",
            Dec(report.resets),
            " device reset, normal request ok\n"
        ),
        Err(why) => kprint!("selftest: hostile: FAILED: ", why, "\n"),
    }
}
