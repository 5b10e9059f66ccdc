//! Requests to the kernel's own objects: messages sent to task and thread
//! ports (docs/mach-ipc.md §5.1), decoded the way MIG's server stubs
//! decode theirs. Pure: the kernel performs the `Request` (the same code
//! as the traps, src/kernel/ipc/tasks.rs) and answers with
//! `Ipc::kernel_reply`; libmach's `kernel_msgs` is the client.
//!
//! A request's items must be exactly its routine's: one item per
//! argument, `INLINE` values of their exact size, a right as a `PORTS`
//! item of one send right (`PORT_NULL` allowed). Anything else is
//! `MIG_BAD_ARGUMENTS`; an id the kernel does not serve is `MIG_BAD_ID`.

use super::PortId;
use super::kmsg::{KRight, Kmsg, item_at};
use libmach::abi::*;

/// One task or thread operation, as the message (or the trap) asks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    TaskTerminate,
    TaskSuspend,
    TaskResume,
    ThreadCreate {
        entry: u64,
        stack: u64,
        arg: u64,
    },
    ThreadTerminate,
    ThreadSuspend,
    ThreadResume,
    ThreadGetState,
    ThreadSetState(ThreadState),
    /// `None`: clear it.
    TaskSetExceptionPort(Option<PortId>),
    ThreadSetExceptionPort(Option<PortId>),
    TaskSetBootstrapPort(Option<PortId>),
    TaskGetBootstrapPort,
    /// `EXCEPTION_REPLY` (on a thread port): the handler's return code.
    ExceptionReply(i32),
}

/// The id of the reply to request `id`.
pub fn reply_id(id: i32) -> i32 {
    id.wrapping_add(REPLY_ID_OFFSET)
}

/// Decodes a message the kernel received on a task or thread port.
pub fn decode(k: &Kmsg) -> Result<Request, u32> {
    let mut a = Args { k, off: 0 };
    let r = match k.id() {
        MSG_TASK_TERMINATE => Request::TaskTerminate,
        MSG_TASK_SUSPEND => Request::TaskSuspend,
        MSG_TASK_RESUME => Request::TaskResume,
        MSG_THREAD_CREATE => Request::ThreadCreate {
            entry: a.u64()?,
            stack: a.u64()?,
            arg: a.u64()?,
        },
        MSG_THREAD_TERMINATE => Request::ThreadTerminate,
        MSG_THREAD_SUSPEND => Request::ThreadSuspend,
        MSG_THREAD_RESUME => Request::ThreadResume,
        MSG_THREAD_GET_STATE => Request::ThreadGetState,
        MSG_THREAD_SET_STATE => {
            let d = a.inline(ThreadState::SIZE)?;
            Request::ThreadSetState(ThreadState::from_bytes(d).ok_or(MIG_BAD_ARGUMENTS)?)
        }
        MSG_TASK_SET_EXCEPTION_PORT => Request::TaskSetExceptionPort(a.port()?),
        MSG_THREAD_SET_EXCEPTION_PORT => Request::ThreadSetExceptionPort(a.port()?),
        MSG_TASK_SET_BOOTSTRAP_PORT => Request::TaskSetBootstrapPort(a.port()?),
        MSG_TASK_GET_BOOTSTRAP_PORT => Request::TaskGetBootstrapPort,
        // As the exception handler's reply has always been read: its first
        // four bytes, and anything unreadable is a refusal (ends the task).
        EXCEPTION_REPLY => {
            let rc = k
                .inline()
                .and_then(|b| b.get(..4))
                .map_or(-1, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            return Ok(Request::ExceptionReply(rc));
        }
        _ => return Err(MIG_BAD_ID),
    };
    if a.off < k.body.len() {
        return Err(MIG_BAD_ARGUMENTS);
    }
    Ok(r)
}

/// The arguments of a request, item by item.
struct Args<'a> {
    k: &'a Kmsg,
    off: usize,
}

impl<'a> Args<'a> {
    fn next(&mut self, kind: u8, count: u32) -> Result<(ItemHeader, &'a [u8]), u32> {
        let body = &self.k.body;
        let Ok(Some((h, payload, next))) = item_at(body, self.off) else {
            return Err(MIG_BAD_ARGUMENTS);
        };
        if h.kind != kind || h.count != count {
            return Err(MIG_BAD_ARGUMENTS);
        }
        self.off = next;
        Ok((h, body.get(payload..next).unwrap_or(&[])))
    }
    fn inline(&mut self, len: usize) -> Result<&'a [u8], u32> {
        let (_, d) = self.next(ITEM_INLINE, len as u32)?;
        d.get(..len).ok_or(MIG_BAD_ARGUMENTS)
    }
    fn u64(&mut self) -> Result<u64, u32> {
        let d = self.inline(8)?;
        Ok(u64::from_le_bytes(
            d.try_into().map_err(|_| MIG_BAD_ARGUMENTS)?,
        ))
    }
    /// One send right; the only `PORTS` item of a request, so right 0.
    fn port(&mut self) -> Result<Option<PortId>, u32> {
        let (h, _) = self.next(ITEM_PORTS, 1)?;
        if h.disp != PORT_SEND {
            return Err(MIG_BAD_ARGUMENTS);
        }
        match self.k.rights.first() {
            Some(KRight::Null) => Ok(None),
            Some(KRight::Port { port, .. }) => Ok(Some(*port)),
            // PORT_DEAD sent as such: the port it named is gone.
            Some(KRight::Dead) => Err(KERN_TERMINATED),
            None => Err(MIG_BAD_ARGUMENTS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{It, Sink, check_invariants, msg, nomem};
    use super::super::{Effects, Ipc, KItem, KObject, Limits, Recv, Send, SpaceId};
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use libmach::message::Message;
    use libmach::rpc::{RpcError, Transport};
    use libmach::traps::MsgError;

    /// A space holding a send right to a task port and a reply port.
    fn setup() -> (Ipc, SpaceId, Name, Name) {
        let mut ipc = Ipc::new(Limits::default());
        let s = ipc.space_create().unwrap();
        let tp = ipc.kernel_port(KObject::Task(1)).unwrap();
        let task = ipc.insert_send(s, tp).unwrap();
        let reply = ipc.port_allocate(s).unwrap();
        (ipc, s, task, reply)
    }

    /// Sends `m`; decodes what the kernel got, then gives it back.
    fn decoded(ipc: &mut Ipc, s: SpaceId, m: &[u8]) -> Result<Request, u32> {
        let mut fx = Effects::default();
        match ipc.send(s, m, &mut nomem(), &mut fx) {
            Send::ToKernel(k) => {
                let r = decode(&k);
                ipc.kmsg_destroy(k, &mut fx);
                r
            }
            other => panic!("not to the kernel: {other:?}"),
        }
    }

    #[test]
    fn requests_decode_and_bad_ones_are_refused() {
        let (mut ipc, s, task, reply) = setup();
        let exc = ipc.port_allocate(s).unwrap();
        let excp = ipc.rights(s, exc).unwrap().port;
        let st = ThreadState::from_words(core::array::from_fn(|i| i as u64 + 1));
        let m = |id, items: &[It]| msg(task, COPY_SEND, reply, MAKE_SEND_ONCE, id, items);
        let word = |v: u64| It::Inline(v.to_le_bytes().to_vec());
        let good = [
            (m(MSG_TASK_SUSPEND, &[]), Request::TaskSuspend),
            (
                m(MSG_THREAD_CREATE, &[word(1), word(2), word(3)]),
                Request::ThreadCreate {
                    entry: 1,
                    stack: 2,
                    arg: 3,
                },
            ),
            (
                m(MSG_THREAD_SET_STATE, &[It::Inline(st.to_bytes().to_vec())]),
                Request::ThreadSetState(st),
            ),
            (
                m(
                    MSG_TASK_SET_EXCEPTION_PORT,
                    &[It::Ports(MAKE_SEND, vec![exc])],
                ),
                Request::TaskSetExceptionPort(Some(excp)),
            ),
            (
                m(
                    MSG_TASK_SET_BOOTSTRAP_PORT,
                    &[It::Ports(COPY_SEND, vec![PORT_NULL])],
                ),
                Request::TaskSetBootstrapPort(None),
            ),
            (
                m(EXCEPTION_REPLY, &[It::Inline(vec![0, 0, 0, 0])]),
                Request::ExceptionReply(0),
            ),
            (m(EXCEPTION_REPLY, &[]), Request::ExceptionReply(-1)),
        ];
        for (bytes, want) in good {
            assert_eq!(decoded(&mut ipc, s, &bytes), Ok(want));
        }
        let bad: [(Vec<u8>, u32); 10] = [
            (m(MSG_TASK_GET_BOOTSTRAP_PORT + 1, &[]), MIG_BAD_ID),
            (m(MSG_TASK_TERMINATE - 1, &[]), MIG_BAD_ID),
            (m(MSG_TASK_SUSPEND, &[word(0)]), MIG_BAD_ARGUMENTS),
            (m(MSG_THREAD_CREATE, &[word(1), word(2)]), MIG_BAD_ARGUMENTS),
            (
                m(
                    MSG_THREAD_CREATE,
                    &[word(1), word(2), It::Inline(vec![3; 4])],
                ),
                MIG_BAD_ARGUMENTS,
            ),
            (
                m(
                    MSG_THREAD_SET_STATE,
                    &[It::Inline(st.to_bytes()[..143].to_vec())],
                ),
                MIG_BAD_ARGUMENTS,
            ),
            (
                m(
                    MSG_TASK_SET_EXCEPTION_PORT,
                    &[It::Ports(MAKE_SEND_ONCE, vec![exc])],
                ),
                MIG_BAD_ARGUMENTS,
            ),
            (
                m(
                    MSG_TASK_SET_EXCEPTION_PORT,
                    &[It::Ports(MAKE_SEND, vec![exc, exc])],
                ),
                MIG_BAD_ARGUMENTS,
            ),
            (
                m(
                    MSG_TASK_SET_EXCEPTION_PORT,
                    &[It::Ports(COPY_SEND, vec![PORT_DEAD])],
                ),
                KERN_TERMINATED,
            ),
            (
                m(MSG_THREAD_GET_STATE, &[It::Ool(0, 0, 0)]),
                MIG_BAD_ARGUMENTS,
            ),
        ];
        for (bytes, want) in bad {
            assert_eq!(decoded(&mut ipc, s, &bytes), Err(want));
        }
        // Every right the requests carried went back with them.
        let r = ipc.rights(s, exc).unwrap();
        assert_eq!((r.receive, r.send, ipc.live_kmsgs()), (true, 0, 0));
        check_invariants(&ipc);
    }

    #[test]
    fn replies_consume_the_reply_right_and_respect_the_backlog() {
        let (mut ipc, s, task, reply) = setup();
        let mut fx = Effects::default();
        let tp = ipc.resolve_send(s, task).unwrap();
        let mut served = 0;
        for _ in 0..BACKLOG_DEFAULT + 2 {
            let m = msg(
                task,
                COPY_SEND,
                reply,
                MAKE_SEND_ONCE,
                MSG_TASK_GET_BOOTSTRAP_PORT,
                &[],
            );
            let Send::ToKernel(mut k) = ipc.send(s, &m, &mut nomem(), &mut fx) else {
                panic!()
            };
            let port = [(tp, PORT_SEND)];
            if ipc.kernel_reply(
                k.take_reply(),
                reply_id(k.id()),
                0,
                Some(KItem::Ports(&port)),
                &mut fx,
            ) {
                served += 1;
            }
            ipc.kmsg_destroy(k, &mut fx);
        }
        // The backlog holds five; the rest were dropped, their rights too.
        assert_eq!(served, BACKLOG_DEFAULT);
        check_invariants(&ipc);
        let Recv::Message(k) = ipc.receive(s, reply, 4096, false, &mut fx) else {
            panic!()
        };
        let mut buf = vec![0u8; 4096];
        let n = ipc
            .copyout(s, k, &mut buf, &mut Sink::default(), &mut fx)
            .unwrap();
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.id(), reply_id(MSG_TASK_GET_BOOTSTRAP_PORT));
        let mut items = m.items();
        assert_eq!(items.next(), Some(libmach::message::Item::Inline(&[0; 4])));
        let Some(libmach::message::Item::Ports { disp, names }) = items.next() else {
            panic!()
        };
        // The right the reply made lands under the name we hold already.
        assert_eq!((disp, names.get(0)), (PORT_SEND, Some(task)));
        // No reply right, or a reply right to a kernel object: no reply.
        assert!(!ipc.kernel_reply(KRight::Null, 1, 0, None, &mut fx));
        let m = msg(task, COPY_SEND, task, COPY_SEND, MSG_TASK_SUSPEND, &[]);
        let Send::ToKernel(mut k) = ipc.send(s, &m, &mut nomem(), &mut fx) else {
            panic!()
        };
        assert!(!ipc.kernel_reply(k.take_reply(), 1, 0, None, &mut fx));
        ipc.kmsg_destroy(k, &mut fx);
        // Our send references: setup's and the one the received reply
        // brought; the refused reply right went back to nobody.
        assert_eq!(ipc.rights(s, task).unwrap().send, 2);
        check_invariants(&ipc);
    }

    proptest::proptest! {
        /// Whatever body gets past `send` to a task port, decoding it
        /// never panics and every right it carried goes back.
        #[test]
        fn arbitrary_requests_never_panic(
            id in (MSG_TASK_TERMINATE - 2)..(MSG_TASK_GET_BOOTSTRAP_PORT + 3),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let (mut ipc, s, task, reply) = setup();
            let mut m = msg(task, COPY_SEND, reply, MAKE_SEND_ONCE, id, &[]);
            m.extend_from_slice(&body);
            m.resize(m.len().next_multiple_of(8), 0);
            let size = m.len() as u32;
            m[4..8].copy_from_slice(&size.to_le_bytes());
            m[3] |= 0x80; // complex: lets PORTS and OOL items through
            let mut fx = Effects::default();
            if let Send::ToKernel(k) = ipc.send(s, &m, &mut nomem(), &mut fx) {
                let _ = decode(&k);
                ipc.kmsg_destroy(k, &mut fx);
            }
            proptest::prop_assert_eq!(ipc.live_kmsgs(), 0);
            check_invariants(&ipc);
        }
    }

    /// libmach's `kernel_msgs` client against the kernel's decoding and
    /// replies, through a real `Ipc`: a "kernel" that answers every
    /// request with what it decoded.
    struct ThroughIpc {
        ipc: Ipc,
        s: SpaceId,
        reply: Name,
        seen: Vec<Request>,
        /// Returned by get_state.
        state: ThreadState,
    }

    impl Transport for ThroughIpc {
        fn reply_port(&mut self) -> Result<Name, RpcError> {
            Ok(self.reply)
        }
        fn rpc(&mut self, buf: &mut [u8], send: usize, reply: Name) -> Result<usize, RpcError> {
            let mut fx = Effects::default();
            let Send::ToKernel(mut k) = self.ipc.send(self.s, &buf[..send], &mut nomem(), &mut fx)
            else {
                return Err(MsgError(SEND_INVALID_DEST).into());
            };
            let bytes = self.state.to_bytes();
            let (code, out) = match decode(&k) {
                Ok(Request::ThreadGetState) => (0, Some(KItem::Inline(&bytes))),
                Ok(r) => {
                    self.seen.push(r);
                    (KERN_SUCCESS, None)
                }
                Err(e) => (e, None),
            };
            let id = reply_id(k.id());
            self.ipc
                .kernel_reply(k.take_reply(), id, code, out, &mut fx);
            self.ipc.kmsg_destroy(k, &mut fx);
            match self.ipc.receive(self.s, reply, buf.len(), false, &mut fx) {
                Recv::Message(k) => self
                    .ipc
                    .copyout(self.s, k, buf, &mut Sink::default(), &mut fx)
                    .map_err(|e| MsgError(e).into()),
                _ => Err(MsgError(RCV_TIMED_OUT).into()),
            }
        }
    }

    #[test]
    fn libmach_client_against_the_kernel_decoder() {
        use libmach::kernel_msgs::Client;
        let (ipc, s, task, reply) = setup();
        let tp = ipc.resolve_send(s, task).unwrap();
        let mut t = ThroughIpc {
            ipc,
            s,
            reply,
            seen: Vec::new(),
            state: ThreadState::from_words(core::array::from_fn(|i| 100 + i as u64)),
        };
        {
            let mut c = Client::new(task, &mut t);
            c.task_suspend().unwrap();
            c.task_resume().unwrap();
            c.thread_suspend().unwrap();
            assert_eq!(c.thread_get_state().unwrap().rip, 116);
            let st = ThreadState::default();
            // SAFETY: nothing runs; the fake kernel only decodes.
            unsafe { c.thread_set_state(&st).unwrap() };
            // SAFETY: as above.
            unsafe { c.thread_create(1, 2, 3).map(|_| ()).unwrap_err() };
            c.task_set_exception_port(task).unwrap();
            c.task_set_bootstrap_port(PORT_NULL).unwrap();
            c.task_terminate().unwrap();
        }
        use Request::*;
        assert_eq!(
            t.seen,
            [
                TaskSuspend,
                TaskResume,
                ThreadSuspend,
                ThreadSetState(ThreadState::default()),
                // Answered with success but no thread port: the client
                // refuses the reply (MIG_TYPE_ERROR), as it should.
                ThreadCreate {
                    entry: 1,
                    stack: 2,
                    arg: 3
                },
                TaskSetExceptionPort(Some(tp)),
                TaskSetBootstrapPort(None),
                TaskTerminate,
            ]
        );
        check_invariants(&t.ipc);
    }
}
