//! The name server's interface (guest-kernel/src/user/nameserver.rs serves
//! it), here so that its clients and the server share one definition.

use crate::abi::Name;
use crate::rpc::{Bytes, Kernel, SendRight};
use crate::traps::{self, KernError};

/// Longest name a server checks in (host objects' names, up to 47 bytes,
/// fit).
pub const NAME_MAX: usize = 48;

crate::mach_interface! {
    /// Names to send rights. `check_in` fails with `KERN_NAME_EXISTS` for a
    /// taken name, `KERN_NO_SPACE` when the table is full,
    /// `KERN_INVALID_ARGUMENT` for an empty name; `look_up` with
    /// `KERN_INVALID_NAME` for an unknown one. A checked-in port that dies
    /// is dropped from the table.
    pub interface name_server = 4000 {
        /// Publishes `port` (a copy of the caller's send right) as `name`.
        fn check_in(name: Bytes<NAME_MAX>, port: SendRight) -> ();
        /// A send right to the port checked in as `name`.
        fn look_up(name: Bytes<NAME_MAX>) -> (port: SendRight);
    }
}

/// A client of this task's bootstrap port (the name server that started
/// it), with its own reply port: one per thread.
pub fn bootstrap() -> Result<name_server::Client<Kernel>, KernError> {
    let port: Name = traps::task_get_bootstrap_port(traps::task_self()?)?;
    Ok(name_server::Client::new(port, Kernel::new()))
}
