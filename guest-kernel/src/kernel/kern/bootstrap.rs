//! The bootstrap name server. When the VMM exports host objects
//! (`vmm run --object NAME=URI`), the kernel starts `nameserver` before
//! init, with a port it makes itself: the server holds its receive right,
//! and that port is init's bootstrap port (so every task's, by
//! inheritance). The server publishes each object's memory object under
//! the object's name before it serves, so a task finds an object the
//! Mach way — look the name up, map the port it gets with
//! vm_allocate_with_pager — and a lookup sent early just waits in the
//! port's queue. The default pager's `swap` is never published.

use super::scheduler::Kernel;
use crate::dev::virtio_pager;
use crate::kprint;
use alloc::vec::Vec;
use guest_kernel::ipc::PortId;

const PROGRAM: &[u8] = b"nameserver";
/// What the server is told: publish these names, then serve.
const MODE: &[u8] = b"--objects";

/// Starts the name server if there is anything to publish; its port, for
/// init's bootstrap port. Failure is reported and leaves init without a
/// name server (objects stay reachable by the object calls).
pub fn start(k: &mut Kernel) -> Option<PortId> {
    let args = published_names(k)?;
    let started = (|| {
        let ns = k.spawn(PROGRAM, &args, None, false).ok()?;
        let space = k.task(ns)?.space?;
        let (_, port) = k.ipc.port_allocate_id(space).ok()?;
        k.task_mut(ns)?.bootstrap = Some(port);
        Some(port)
    })();
    if started.is_none() {
        kprint!("bootstrap: cannot start the name server; objects are not published\n");
    }
    started
}

/// `--objects NAME...` for every user-visible device object, or None if
/// there is none (or no device). Names are printable without whitespace
/// (the VMM checks), so they travel as words.
fn published_names(k: &Kernel) -> Option<Vec<u8>> {
    let guard = virtio_pager::lock();
    let d = guard.as_ref()?;
    let mut args = Vec::new();
    args.extend_from_slice(MODE);
    let mut any = false;
    for (id, o) in d.objects().iter().enumerate() {
        let visible = u32::try_from(id).is_ok_and(|id| crate::vm::object_io::user_visible(k, id));
        if !visible || o.name().is_empty() {
            continue;
        }
        args.push(b' ');
        args.extend_from_slice(o.name());
        any = true;
    }
    any.then_some(args)
}
