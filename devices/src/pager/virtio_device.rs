//! `VirtioDevice` for virtio-pager: identification, config space,
//! activation and reset, called by the transport on a vCPU thread. Nothing
//! here waits for a pager.

use super::device::{Active, PagerDevice};
use super::wire::{ObjectId, QUEUE_SIZE, VIRTIO_ID_PAGER, VIRTIO_PAGER_VENDOR};
use crate::virtio::{ActivateError, ActiveQueue, Interrupt, VirtioDevice, features};
use std::collections::VecDeque;
use std::sync::Arc;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

impl VirtioDevice for PagerDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_PAGER
    }

    fn vendor_id(&self) -> u32 {
        VIRTIO_PAGER_VENDOR
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= self.config.len() {
            return;
        }
        let n = data.len().min(self.config.len() - start);
        data[..n].copy_from_slice(&self.config[start..start + n]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::warn!(
            offset,
            len = data.len(),
            "virtio-pager: config space is read-only"
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let got = queues.len();
        let mut it = queues.into_iter();
        let (Some(mut req), Some(mut ev), None) = (it.next(), it.next(), it.next()) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        for (i, q) in [&req, &ev].into_iter().enumerate() {
            if !q.queue.ready() || !q.queue.is_valid(&mem) {
                return Err(ActivateError::BadQueue(i));
            }
        }
        let event_idx = acked_features & (1 << features::VIRTIO_RING_F_EVENT_IDX) != 0;
        req.queue.set_event_idx(event_idx);
        ev.queue.set_event_idx(event_idx);
        self.acked_features = acked_features;
        self.needs_reset = false;
        self.outstanding = 0;
        self.req_throttled = false;
        self.ev_throttled = false;
        self.active = Some(Active {
            mem: Arc::new(mem),
            reqq: req.queue,
            evq: ev.queue,
            req_evt: req.notify,
            ev_evt: ev.notify,
            interrupt,
            event_bufs: VecDeque::new(),
        });
        // Wake the event loop so it registers the queue fds.
        self.activate_evt.write(1)?;
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.generation += 1;
        self.acked_features = 0;
        self.needs_reset = false;
        self.outstanding = 0;
        self.req_throttled = false;
        self.ev_throttled = false;
        // Pending events and every control handle of the old instance die
        // here, atomically with respect to pagers queueing new ones.
        self.backlog.clear();
        // Parked requests belong to the old ring too; a parked TERMINATE
        // had already moved its object to closing, so it is sent to the
        // pager now rather than lost (the object would never close).
        let parked_terminates = self.drop_parked();
        if let Some(a) = self.active.take() {
            self.stale_fds.push(a.req_evt);
            self.stale_fds.push(a.ev_evt);
            self.retired_mem = Some(a.mem);
        }
        // The pagers still count this kernel as a mapper of every
        // initialised object; a fresh driver will INIT again.
        for i in 0..self.objects.len() {
            let must_terminate = self.objects.get_mut(i).is_some_and(|s| s.reset());
            if must_terminate && let Some(mem) = self.retired_mem.clone() {
                self.terminate_internally(ObjectId(i as u32), mem);
            }
        }
        if let Some(mem) = self.retired_mem.clone() {
            for object in parked_terminates {
                self.terminate_internally(object, mem.clone());
            }
        }
        self.queues_registered = false;
        let _ = self.activate_evt.write(1);
    }

    fn reset_pending(&self) -> bool {
        // Until every worker is done with guest memory of the old instance.
        self.completions.in_flight() > 0
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset
    }
}
