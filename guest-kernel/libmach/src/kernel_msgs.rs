//! Task and thread operations as messages to their ports, which the kernel
//! serves (docs/mach-ipc.md §5.1): the same operations as the traps of
//! `traps` (the kernel's fast path), reachable by anyone holding a send
//! right to the port — a debugger, a name server, a proxy forwarding the
//! messages — the way Mach's MIG-generated kernel servers are.
//!
//! `Client` keeps its reply port for repeated calls; the free functions
//! make one per call (two more traps: `port_allocate`, `port_deallocate`).
//! The kernel answers within the `msg_rpc` trap, so the calls never wait:
//! a reply that cannot be queued shows up as `RCV_TIMED_OUT`, not a hang.

use crate::abi::{Name, ThreadState};
use crate::rpc::{Kernel, RpcError, SendRight, Transport};
use crate::traps;

crate::mach_interface! {
    /// The wire format: ids are the trap numbers + `abi::KOBJECT_ID_BASE`
    /// (checked against the `abi::MSG_*` constants by the tests), so the
    /// routines are in trap order.
    interface kobject = 1044 {
        fn task_terminate() -> ();
        fn task_suspend() -> ();
        fn task_resume() -> ();
        fn thread_create(entry: u64, stack: u64, arg: u64) -> (thread: SendRight);
        fn thread_terminate() -> ();
        fn thread_suspend() -> ();
        fn thread_resume() -> ();
        fn thread_get_state() -> (state: ThreadState);
        fn thread_set_state(state: ThreadState) -> ();
        fn task_set_exception_port(port: SendRight) -> ();
        fn thread_set_exception_port(port: SendRight) -> ();
        fn task_set_bootstrap_port(port: SendRight) -> ();
        fn task_get_bootstrap_port() -> (port: SendRight);
    }
}

/// Messages to one task or thread port (`port`), through `T`.
pub struct Client<T: Transport = Kernel>(kobject::Client<T>);

impl<T: Transport> Client<T> {
    /// `port`: a send right to the task or thread port the calls act on.
    pub fn new(port: Name, transport: T) -> Self {
        Client(kobject::Client::new(port, transport))
    }
    pub fn port(&self) -> Name {
        self.0.port
    }
    pub fn transport(&mut self) -> &mut T {
        &mut self.0.transport
    }

    /// A new thread in the task, starting at `entry` on `stack` with
    /// `arg` in rdi; a send right to its port.
    ///
    /// # Safety
    /// As `traps::thread_create`: in our own task, the thread runs our
    /// code on `stack`, which nothing else may use.
    pub unsafe fn thread_create(
        &mut self,
        entry: u64,
        stack: u64,
        arg: u64,
    ) -> Result<Name, RpcError> {
        self.0.thread_create(entry, stack, arg)
    }

    /// Sets the registers of a stopped thread.
    ///
    /// # Safety
    /// As `traps::thread_set_state`: the thread resumes wherever `state`
    /// says, with those registers.
    pub unsafe fn thread_set_state(&mut self, state: &ThreadState) -> Result<(), RpcError> {
        self.0.thread_set_state(state)
    }
}

/// A call with a reply port of its own, deallocated afterwards.
fn once<R>(
    port: Name,
    f: impl FnOnce(&mut Client<Kernel>) -> Result<R, RpcError>,
) -> Result<R, RpcError> {
    let reply = traps::port_allocate()?;
    let mut t = Kernel::with_reply_port(reply);
    t.timeout = Some(0);
    let r = f(&mut Client::new(port, t));
    let _ = traps::port_deallocate(reply);
    r
}

macro_rules! operations {
    ($( $(#[$m:meta])* fn $op:ident($($a:ident: $t:ty),*) -> $r:ty; )*) => {
        impl<T: Transport> Client<T> {
            $( $(#[$m])* pub fn $op(&mut self $(, $a: $t)*) -> Result<$r, RpcError> {
                self.0.$op($($a),*)
            } )*
        }
        $( $(#[$m])* pub fn $op(port: Name $(, $a: $t)*) -> Result<$r, RpcError> {
            once(port, |c| c.$op($($a),*))
        } )*
    };
}

operations! {
    /// Ends the task and all its threads (as the trap does: status 137).
    fn task_terminate() -> ();
    /// Suspends every thread of the task once.
    fn task_suspend() -> ();
    /// Resumes every thread of the task once.
    fn task_resume() -> ();
    /// Ends the thread (its task with it, if it was the last).
    fn thread_terminate() -> ();
    fn thread_suspend() -> ();
    /// `KERN_FAILURE` if the thread was not suspended.
    fn thread_resume() -> ();
    /// The registers of a stopped (suspended or excepted) thread.
    fn thread_get_state() -> ThreadState;
    /// `port`: a send right (copied), or `PORT_NULL` to clear.
    fn task_set_exception_port(port: Name) -> ();
    fn thread_set_exception_port(port: Name) -> ();
    fn task_set_bootstrap_port(port: Name) -> ();
    fn task_get_bootstrap_port() -> Name;
}

/// See `Client::thread_create`.
///
/// # Safety
/// As `Client::thread_create`.
pub unsafe fn thread_create(
    task: Name,
    entry: u64,
    stack: u64,
    arg: u64,
) -> Result<Name, RpcError> {
    // SAFETY: the caller's promise.
    once(task, |c| unsafe { c.thread_create(entry, stack, arg) })
}

/// See `Client::thread_set_state`.
///
/// # Safety
/// As `Client::thread_set_state`.
pub unsafe fn thread_set_state(thread: Name, state: &ThreadState) -> Result<(), RpcError> {
    // SAFETY: the caller's promise.
    once(thread, |c| unsafe { c.thread_set_state(state) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{self, *};
    use crate::rpc::loopback::Loopback;
    use crate::traps::KernError;

    fn code(e: u32) -> RpcError {
        RpcError::Kern(KernError(e))
    }

    #[test]
    fn ids_are_the_abi_ones() {
        use kobject::ids;
        let pairs = [
            (ids::task_terminate, MSG_TASK_TERMINATE),
            (ids::task_suspend, MSG_TASK_SUSPEND),
            (ids::task_resume, MSG_TASK_RESUME),
            (ids::thread_create, MSG_THREAD_CREATE),
            (ids::thread_terminate, MSG_THREAD_TERMINATE),
            (ids::thread_suspend, MSG_THREAD_SUSPEND),
            (ids::thread_resume, MSG_THREAD_RESUME),
            (ids::thread_get_state, MSG_THREAD_GET_STATE),
            (ids::thread_set_state, MSG_THREAD_SET_STATE),
            (ids::task_set_exception_port, MSG_TASK_SET_EXCEPTION_PORT),
            (
                ids::thread_set_exception_port,
                MSG_THREAD_SET_EXCEPTION_PORT,
            ),
            (ids::task_set_bootstrap_port, MSG_TASK_SET_BOOTSTRAP_PORT),
            (ids::task_get_bootstrap_port, MSG_TASK_GET_BOOTSTRAP_PORT),
        ];
        for (got, want) in pairs {
            assert_eq!(got, want);
        }
    }

    /// A stand-in for the kernel that records what arrived.
    #[derive(Default)]
    struct Fake {
        calls: Vec<&'static str>,
        state: ThreadState,
        port: Name,
    }

    impl kobject::Server for Fake {
        fn task_terminate(&mut self) -> Result<(), KernError> {
            self.calls.push("task_terminate");
            Ok(())
        }
        fn task_suspend(&mut self) -> Result<(), KernError> {
            self.calls.push("task_suspend");
            Ok(())
        }
        fn task_resume(&mut self) -> Result<(), KernError> {
            Err(KernError(KERN_TERMINATED))
        }
        fn thread_create(&mut self, entry: u64, stack: u64, arg: u64) -> Result<Name, KernError> {
            assert_eq!((entry, stack, arg), (0x1000, 0x2000, 7));
            Ok(0x4242)
        }
        fn thread_terminate(&mut self) -> Result<(), KernError> {
            Ok(())
        }
        fn thread_suspend(&mut self) -> Result<(), KernError> {
            Ok(())
        }
        fn thread_resume(&mut self) -> Result<(), KernError> {
            Err(KernError(KERN_FAILURE))
        }
        fn thread_get_state(&mut self) -> Result<ThreadState, KernError> {
            Ok(self.state)
        }
        fn thread_set_state(&mut self, state: ThreadState) -> Result<(), KernError> {
            self.state = state;
            Ok(())
        }
        fn task_set_exception_port(&mut self, port: Name) -> Result<(), KernError> {
            self.port = port;
            Ok(())
        }
        fn thread_set_exception_port(&mut self, port: Name) -> Result<(), KernError> {
            self.port = port;
            Ok(())
        }
        fn task_set_bootstrap_port(&mut self, port: Name) -> Result<(), KernError> {
            self.port = port;
            Ok(())
        }
        fn task_get_bootstrap_port(&mut self) -> Result<Name, KernError> {
            Ok(self.port)
        }
    }

    #[test]
    fn every_operation_round_trips() {
        let mut fake = Fake::default();
        {
            let mut t = Loopback {
                dispatch: |req: &[u8], rep: &mut [u8]| {
                    // The request layout the kernel decodes (docs §5.1).
                    let m = crate::message::Message::parse(req).unwrap();
                    assert_eq!(m.header().remote_disposition(), abi::PORT_SEND_ONCE);
                    kobject::dispatch(&mut fake, req, rep)
                },
                server_port: 0x100,
                reply_port: 0x200,
            };
            let mut c = Client::new(0x100, &mut t);
            assert_eq!(c.task_terminate(), Ok(()));
            assert_eq!(c.task_suspend(), Ok(()));
            assert_eq!(c.task_resume(), Err(code(KERN_TERMINATED)));
            // SAFETY: the fake runs nothing.
            assert_eq!(unsafe { c.thread_create(0x1000, 0x2000, 7) }, Ok(0x4242));
            assert_eq!(c.thread_resume(), Err(code(KERN_FAILURE)));
            let st = ThreadState::from_words(core::array::from_fn(|i| i as u64 * 3));
            // SAFETY: the fake runs nothing.
            assert_eq!(unsafe { c.thread_set_state(&st) }, Ok(()));
            assert_eq!(c.thread_get_state(), Ok(st));
            assert_eq!(c.task_set_exception_port(0x77), Ok(()));
            assert_eq!(c.task_get_bootstrap_port(), Ok(0x77));
            assert_eq!(c.port(), 0x100);
        }
        assert_eq!(fake.calls, ["task_terminate", "task_suspend"]);
    }
}
