//! The doorbell console: the guest writes the physical address of a
//! `{u64 addr, u32 len, u32 pad}` record to a port, and the bytes it names
//! go to the output in one VM exit, instead of one exit per byte as with a
//! UART. Everything the record says is checked: a bad record is an error
//! for the caller to log, never a crash.

use std::io::Write;
use thiserror::Error;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory, Le32, Le64};

/// Longest write accepted in one doorbell.
pub const MAX_WRITE: u32 = 1 << 20;

/// The record the doorbell names (guest_kernel::abi::ConsoleWrite).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Record {
    addr: Le64,
    len: Le32,
    _pad: Le32,
}
// SAFETY: repr(C) of integers (any bit pattern is valid) whose sizes add
// up to 16, so there is no implicit padding.
unsafe impl ByteValued for Record {}
const _: () = assert!(size_of::<Record>() == 16);

#[derive(Debug, Error)]
pub enum ConsoleError {
    #[error("console record at {0:#x} is outside guest memory")]
    BadRecord(u64),
    #[error("console write of {len} bytes at {addr:#x} is outside guest memory")]
    BadRange { addr: u64, len: u32 },
    #[error("console write of {0} bytes is larger than {MAX_WRITE}")]
    TooLong(u32),
    #[error("console output: {0}")]
    Output(#[from] std::io::Error),
}

pub struct DoorbellConsole {
    out: Box<dyn Write + Send>,
    buf: Vec<u8>,
}

impl DoorbellConsole {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        DoorbellConsole {
            out,
            buf: Vec::new(),
        }
    }

    /// Handles one doorbell: `record` is the guest-physical address written
    /// to the port.
    pub fn doorbell<M: GuestMemory>(
        &mut self,
        mem: &M,
        record: GuestAddress,
    ) -> Result<(), ConsoleError> {
        let rec: Record = mem
            .read_obj(record)
            .map_err(|_| ConsoleError::BadRecord(record.0))?;
        let (addr, len) = (u64::from(rec.addr), u32::from(rec.len));
        if len > MAX_WRITE {
            return Err(ConsoleError::TooLong(len));
        }
        self.buf.resize(len as usize, 0);
        mem.read_slice(&mut self.buf, GuestAddress(addr))
            .map_err(|_| ConsoleError::BadRange { addr, len })?;
        self.out.write_all(&self.buf)?;
        self.out.flush()?;
        Ok(())
    }

    /// Bytes from elsewhere (the UART) into the same output stream.
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ConsoleError> {
        self.out.write_all(bytes)?;
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vm_memory::GuestMemoryMmap;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn setup() -> (GuestMemoryMmap, DoorbellConsole, Sink) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let sink = Sink::default();
        (mem, DoorbellConsole::new(Box::new(sink.clone())), sink)
    }

    fn record(mem: &GuestMemoryMmap, at: u64, addr: u64, len: u32) {
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
    }

    #[test]
    fn writes_the_named_bytes() {
        let (mem, mut c, sink) = setup();
        mem.write_slice(b"hello\n", GuestAddress(0x2000)).unwrap();
        record(&mem, 0x1000, 0x2000, 6);
        c.doorbell(&mem, GuestAddress(0x1000)).unwrap();
        assert_eq!(&*sink.0.lock().unwrap(), b"hello\n");
    }

    #[test]
    fn rejects_bad_records_without_output() {
        let (mem, mut c, sink) = setup();
        assert!(matches!(
            c.doorbell(&mem, GuestAddress(0xfffff)),
            Err(ConsoleError::BadRecord(_))
        ));
        record(&mem, 0x1000, 0xfff0, 0x100);
        assert!(matches!(
            c.doorbell(&mem, GuestAddress(0x1000)),
            Err(ConsoleError::BadRange { .. })
        ));
        record(&mem, 0x1000, u64::MAX - 2, 16);
        assert!(c.doorbell(&mem, GuestAddress(0x1000)).is_err());
        record(&mem, 0x1000, 0, u32::MAX);
        assert!(matches!(
            c.doorbell(&mem, GuestAddress(0x1000)),
            Err(ConsoleError::TooLong(_))
        ));
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
