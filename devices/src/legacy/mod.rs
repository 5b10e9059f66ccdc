//! Platform devices the VMM serves on I/O ports: the doorbell console, the
//! exit port, and a 16550 UART (COM1) for guests that expect one.

pub mod console;
pub mod serial;

pub use console::{ConsoleError, DoorbellConsole};
pub use serial::Com1;
