//! COM1: a 16550 UART (vm-superio) at the legacy ports 0x3f8-0x3ff, for
//! guests that print through a UART. It costs one VM exit per byte, which
//! is why Duality's kernel uses the doorbell console instead; output goes
//! to the same stream.

use std::io::{self, Write};
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_LEN: u16 = 8;

/// Raises the UART's interrupt line through an eventfd (an irqfd for the
/// VMM to register on IRQ 4).
pub struct IrqTrigger(pub EventFd);
impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

pub struct Com1 {
    uart: Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl Com1 {
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Com1 {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    pub fn owns(port: u16) -> bool {
        (COM1_BASE..COM1_BASE + COM1_LEN).contains(&port)
    }

    pub fn read(&mut self, port: u16) -> u8 {
        self.uart.read((port - COM1_BASE) as u8)
    }

    /// Register writes from the guest; errors are the output's (logged by
    /// the caller), never the guest's fault.
    pub fn write(&mut self, port: u16, value: u8) -> io::Result<()> {
        self.uart
            .write((port - COM1_BASE) as u8, value)
            .map_err(|e| io::Error::other(format!("{e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmit_register_reaches_output() {
        let sink = Sink::default();
        let mut com = Com1::new(EventFd::new(0).unwrap(), Box::new(sink.clone()));
        for b in b"ok" {
            com.write(COM1_BASE, *b).unwrap();
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"ok");
        assert!(Com1::owns(0x3fd) && !Com1::owns(0x400));
        // line status: transmitter empty
        assert_ne!(com.read(COM1_BASE + 5) & 0x20, 0);
    }
}
