//! Kernel console: bytes gather in a buffer and go to the VMM in one port
//! write per line (the `PORT_CONSOLE` doorbell names a physical range), not
//! one VM exit per byte.

use crate::arch::cpu::outl;
use crate::arch::mm::kernel_virt_to_phys;
use guest_kernel::abi::{ConsoleWrite, PORT_CONSOLE};
use guest_kernel::addr::PhysAddr;
use guest_kernel::numfmt;
use spin::{Mutex, MutexGuard};

const BUF: usize = 2048;

pub struct Console {
    buf: [u8; BUF],
    len: usize,
    saw_newline: bool,
    record: ConsoleWrite,
}

static CONSOLE: Mutex<Console> = Mutex::new(Console {
    buf: [0; BUF],
    len: 0,
    saw_newline: false,
    record: ConsoleWrite {
        addr: 0,
        len: 0,
        _pad: 0,
    },
});

pub fn lock() -> MutexGuard<'static, Console> {
    CONSOLE.lock()
}

/// For the panic and fatal-fault paths: the lock may be held by the code
/// that failed, and there is only one CPU, so take the console anyway.
pub fn force_lock() -> MutexGuard<'static, Console> {
    if CONSOLE.is_locked() {
        // SAFETY: one CPU, interrupts off; the holder never runs again.
        unsafe { CONSOLE.force_unlock() };
    }
    let mut c = CONSOLE.lock();
    // The failure may have left the buffer inconsistent: what is pending
    // is dropped rather than trusted.
    if c.len > BUF {
        c.len = 0;
        c.saw_newline = false;
    }
    c
}

impl Console {
    pub fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = bytes.len().min(BUF - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.saw_newline |= bytes[..n].contains(&b'\n');
            self.len += n;
            bytes = &bytes[n..];
            if self.len == BUF {
                self.flush();
            }
        }
    }

    /// Ends one print call: complete lines go out now.
    pub fn end_call(&mut self) {
        if self.saw_newline {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.len > 0 {
            let addr = kernel_virt_to_phys(self.buf.as_ptr() as u64);
            self.doorbell(addr, self.len as u32);
        }
        self.len = 0;
        self.saw_newline = false;
    }

    /// Sends `len` bytes at physical `addr` (a user buffer) after whatever
    /// the kernel has pending, so output stays in order.
    pub fn write_phys(&mut self, addr: PhysAddr, len: u32) {
        self.flush();
        self.doorbell(addr, len);
    }

    fn doorbell(&mut self, addr: PhysAddr, len: u32) {
        self.record = ConsoleWrite {
            addr: addr.0,
            len,
            _pad: 0,
        };
        let rec = kernel_virt_to_phys(&self.record as *const ConsoleWrite as u64);
        // The kernel image sits below 4 GiB, so the record's address fits.
        outl(PORT_CONSOLE, rec.0 as u32);
    }
}

/// Something the `kprint!` macro can print.
pub trait Piece {
    fn emit(&self, c: &mut Console);
}
impl Piece for &str {
    fn emit(&self, c: &mut Console) {
        c.write(self.as_bytes());
    }
}
impl Piece for &[u8] {
    fn emit(&self, c: &mut Console) {
        c.write(self);
    }
}
/// Unsigned decimal.
pub struct Dec(pub u64);
/// Signed decimal.
pub struct IDec(pub i64);
/// 0x-prefixed hex.
pub struct Hex(pub u64);
impl Piece for Dec {
    fn emit(&self, c: &mut Console) {
        c.write(numfmt::dec(self.0, &mut [0; 20]));
    }
}
impl Piece for IDec {
    fn emit(&self, c: &mut Console) {
        c.write(numfmt::idec(self.0, &mut [0; 21]));
    }
}
impl Piece for Hex {
    fn emit(&self, c: &mut Console) {
        c.write(numfmt::hex(self.0, &mut [0; 18]));
    }
}

/// `kprint!("text ", Dec(n), " more\n")`: integer formatting without
/// `core::fmt` (whose integer code is built with SSE).
#[macro_export]
macro_rules! kprint {
    ($($p:expr),* $(,)?) => {{
        let mut c = $crate::kern::console::lock();
        $( $crate::kern::console::Piece::emit(&$p, &mut c); )*
        c.end_call();
    }};
}
