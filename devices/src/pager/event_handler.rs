//! Event-loop side of the device: which fds it watches and what each one
//! means. Runs on the VMM's event-manager thread, never a vCPU thread.

use super::device::PagerDevice;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

const ACTIVATE: u32 = 0;
const COMPLETION: u32 = 1;
const BACKLOG: u32 = 2;
const REQUEST_Q: u32 = 3;
const EVENT_Q: u32 = 4;
const RATE_TIMER: u32 = 5;

impl PagerDevice {
    /// Bring epoll registrations in line with the current activation.
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        for fd in self.stale_fds.drain(..) {
            // Removing an fd that was never added is harmless here.
            let _ = ops.remove(Events::empty(&fd));
        }
        if self.queues_registered {
            return;
        }
        let Some(a) = &self.active else { return };
        let r1 = ops.add(Events::with_data(&a.req_evt, REQUEST_Q, EventSet::IN));
        let r2 = ops.add(Events::with_data(&a.ev_evt, EVENT_Q, EventSet::IN));
        if let (Err(e), _) | (_, Err(e)) = (&r1, &r2) {
            tracing::error!(?e, "virtio-pager: cannot watch queue eventfds");
        }
        self.queues_registered = true;
        // Kicks that arrived before registration are still pending in the
        // (level-triggered) eventfds, so nothing is lost.
    }
}

impl PagerDevice {
    /// An ioeventfd's counter is the number of guest writes since it was
    /// last read.
    fn count_doorbells(&self, read: std::io::Result<u64>) {
        if let Ok(n) = read {
            self.doorbells
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl MutEventSubscriber for PagerDevice {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            Events::with_data(&self.activate_evt, ACTIVATE, EventSet::IN),
            Events::with_data(self.completions.evt(), COMPLETION, EventSet::IN),
            Events::with_data(self.backlog.kick_evt(), BACKLOG, EventSet::IN),
            Events::with_data(&self.rate_timer, RATE_TIMER, EventSet::IN),
        ];
        for ev in fds {
            if let Err(e) = ops.add(ev) {
                tracing::error!(?e, "virtio-pager: cannot watch device eventfd");
            }
        }
        self.sync_registrations(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => {
                let _ = self.activate_evt.read();
                self.sync_registrations(ops);
            }
            COMPLETION => self.process_completions(),
            BACKLOG => self.deliver_events(),
            REQUEST_Q => {
                if let Some(a) = &self.active {
                    self.count_doorbells(a.req_evt.read());
                }
                self.process_request_queue();
            }
            EVENT_Q => {
                if let Some(a) = &self.active {
                    self.count_doorbells(a.ev_evt.read());
                }
                self.process_event_queue();
            }
            RATE_TIMER => self.process_rate_timer(),
            other => tracing::warn!(other, "virtio-pager: unexpected event"),
        }
    }
}
