//! The kernel-object server (GNU Mach's `ipc_kobject_server`): a message
//! to a task or thread port is served at send time, in the sender's own
//! trap. The library's `kobject::decode` turns it into a `Request`; the
//! dispatch here, by object kind and request, runs it — `tasks::perform`,
//! the code the traps use, or for `EXCEPTION_REPLY` on a thread port the
//! exception handler's answer — and sends the return code (and the out
//! value) to the request's reply port with id + 100 (docs/mach-ipc.md
//! §5.1). A request without a reply port is served with no reply.

use super::{exception, tasks};
use crate::kern::scheduler::Kernel;
use guest_kernel::ipc::kobject::{self, Request};
use guest_kernel::ipc::{Effects, KItem, KObject, Kmsg};
use guest_kernel::kern::sched::ThreadId;
use libmach::abi::*;
use tasks::Out;

/// Serves `km`, sent to a kernel object's port; the send's result.
pub fn serve(k: &mut Kernel, mut km: Kmsg, fx: &mut Effects) -> u32 {
    let Some(obj) = k.ipc.kobject(km.dest()) else {
        k.ipc.kmsg_destroy(km, fx);
        return SEND_INVALID_DEST;
    };
    if let KObject::MemoryControl(object) = obj {
        return crate::vm::user_pager::serve(k, object, km, fx);
    }
    let result = match (obj, kobject::decode(&km)) {
        (KObject::Thread(t), Ok(Request::ExceptionReply(rc))) => {
            // The reply to EXCEPTION_RAISE is itself a reply: none back.
            exception::reply(k, ThreadId(t), rc);
            k.ipc.kmsg_destroy(km, fx);
            return MSG_SUCCESS;
        }
        (_, Ok(req)) => tasks::perform(k, obj, req),
        (_, Err(e)) => Err(e),
    };
    let id = kobject::reply_id(km.id());
    let reply = km.take_reply();
    k.ipc.kmsg_destroy(km, fx);
    let state;
    let port;
    let (code, out) = match result {
        Ok(Out::None) => (KERN_SUCCESS, None),
        Ok(Out::State(st)) => {
            state = st.to_bytes();
            (KERN_SUCCESS, Some(KItem::Inline(&state)))
        }
        Ok(Out::Port(p)) => {
            port = [(p, PORT_SEND)];
            (KERN_SUCCESS, Some(KItem::Ports(&port)))
        }
        Err(e) => (e, None),
    };
    // A lost reply (full or dead reply port) is the client's to notice.
    k.ipc.kernel_reply(reply, id, code, out, fx);
    MSG_SUCCESS
}
