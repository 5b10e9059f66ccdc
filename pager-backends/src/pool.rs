//! A pool of named worker threads that run one handler over queued items:
//! the virtio-pager device's workers (guest requests, in batches) and the
//! unix pager server's (one connection's requests) are both this.
//!
//! - **Queue.** Unbounded, for a caller that bounds what it admits (the
//!   device: requests in flight never exceed the virtqueue), or bounded, so
//!   a producer that outruns the workers waits in `submit` (the server's
//!   socket reader: a flood from one kernel side cannot grow memory).
//! - **Idle workers** may spin for a short while before sleeping, at most
//!   one at a time, so an item arriving within that window starts without
//!   a wake-up's latency while the other workers keep their CPUs.
//! - **Shutdown.** `close` stops new items; workers finish what is queued
//!   and exit. `join` waits for them; dropping the pool does not, so a
//!   handler stuck in a hung backend cannot hang its owner's shutdown.

use crate::poison;
use crate::thread_hook::{ThreadHook, spawn_hooked};
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Thread names are `NAME-0`, `NAME-1`, ...
    pub name: String,
    /// Worker threads; at least one is started.
    pub threads: usize,
    /// Items queued at most before `submit` waits; `None`: no bound.
    pub capacity: Option<usize>,
    /// How long an idle worker looks for work before it sleeps; zero: it
    /// sleeps at once.
    pub spin: Duration,
    /// Runs first on each worker, before it takes an item (the VMM confines
    /// its device workers there); a worker whose hook fails fails `new`.
    pub hook: Option<ThreadHook>,
}

struct Queue<T> {
    items: VecDeque<T>,
    open: bool,
}

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    /// Workers wait here for items.
    ready: Condvar,
    /// Producers of a full bounded queue wait here for room.
    room: Condvar,
    capacity: Option<usize>,
    spin: Duration,
    /// A worker is spinning for work: a submit need not wake anyone.
    spinning: AtomicBool,
    /// Items queued: what a spinning worker watches (not the lock).
    queued: AtomicUsize,
}

impl<T> Shared<T> {
    /// Takes an item off a locked queue, making room for a waiting producer.
    fn take(&self, q: &mut Queue<T>) -> Option<T> {
        let item = q.items.pop_front()?;
        self.queued.fetch_sub(1, Ordering::SeqCst);
        if self.capacity.is_some() {
            self.room.notify_one();
        }
        Some(item)
    }

    fn try_take(&self) -> Option<T> {
        self.take(&mut poison::lock(&self.queue))
    }

    fn close(&self) {
        poison::lock(&self.queue).open = false;
        self.ready.notify_all();
        self.room.notify_all();
    }

    /// The next item: spin briefly (if no other worker does) before
    /// sleeping. `None` when the pool is closed and empty.
    fn next(&self) -> Option<T> {
        if let Some(item) = self.try_take() {
            return Some(item);
        }
        if !self.spin.is_zero() && !self.spinning.swap(true, Ordering::SeqCst) {
            let start = Instant::now();
            while start.elapsed() < self.spin {
                if self.queued.load(Ordering::SeqCst) > 0
                    && let Some(item) = self.try_take()
                {
                    self.spinning.store(false, Ordering::SeqCst);
                    // A submit that saw us spinning woke no one; if its item
                    // is still queued, a sleeping worker must take it (we
                    // are about to be busy, perhaps blocked for long).
                    if self.queued.load(Ordering::SeqCst) > 0 {
                        self.ready.notify_one();
                    }
                    return Some(item);
                }
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            }
            self.spinning.store(false, Ordering::SeqCst);
        }
        let mut q = poison::lock(&self.queue);
        loop {
            if let Some(item) = self.take(&mut q) {
                return Some(item);
            }
            if !q.open {
                return None;
            }
            q = poison::wait(&self.ready, q);
        }
    }
}

pub struct WorkPool<T> {
    shared: Arc<Shared<T>>,
    threads: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> WorkPool<T> {
    /// Starts the workers; each runs `handler` on the items it takes.
    pub fn new(opts: PoolOptions, handler: impl Fn(T) + Send + Sync + 'static) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                open: true,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
            capacity: opts.capacity.map(|c| c.max(1)),
            spin: opts.spin,
            spinning: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
        });
        let handler = Arc::new(handler);
        let mut threads = Vec::with_capacity(opts.threads.max(1));
        for i in 0..opts.threads.max(1) {
            let (sh, handler) = (shared.clone(), handler.clone());
            let spawned = spawn_hooked(
                format!("{}-{i}", opts.name),
                opts.hook.as_ref(),
                move || {
                    while let Some(item) = sh.next() {
                        handler(item);
                    }
                },
            );
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The ones already started must not wait forever.
                    shared.close();
                    return Err(e);
                }
            }
        }
        Ok(WorkPool { shared, threads })
    }

    /// Queues `item` for a worker, waiting while a bounded queue is full.
    /// Gives it back if the pool is closed.
    pub fn submit(&self, item: T) -> Result<(), T> {
        let sh = &self.shared;
        {
            let mut q = poison::lock(&sh.queue);
            while let Some(cap) = sh.capacity
                && q.open
                && q.items.len() >= cap
            {
                q = poison::wait(&sh.room, q);
            }
            if !q.open {
                return Err(item);
            }
            q.items.push_back(item);
            sh.queued.fetch_add(1, Ordering::SeqCst);
        }
        // A spinning worker re-checks the queue under the lock after it
        // stops spinning, so skipping the wake-up here loses nothing.
        if !sh.spinning.load(Ordering::SeqCst) {
            sh.ready.notify_one();
        }
        Ok(())
    }
}

impl<T> WorkPool<T> {
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Takes no more items; the workers finish the queued ones and exit.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Closes the pool and waits until every worker has exited.
    pub fn join(mut self) {
        self.close();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl<T> Drop for WorkPool<T> {
    fn drop(&mut self) {
        // No join: a worker stuck in a hung backend must not hang us.
        self.shared.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    fn opts(threads: usize, capacity: Option<usize>, spin: Duration) -> PoolOptions {
        PoolOptions {
            name: "pool-test".into(),
            threads,
            capacity,
            spin,
            hook: None,
        }
    }

    #[test]
    fn every_item_runs_once_on_a_named_worker() {
        for spin in [Duration::ZERO, Duration::from_micros(50)] {
            let (tx, rx) = mpsc::channel();
            let tx = Mutex::new(tx);
            let pool = WorkPool::new(opts(3, None, spin), move |i: u32| {
                let name = thread::current().name().map(str::to_owned);
                let _ = poison::lock(&tx).send((i, name));
            })
            .unwrap();
            assert_eq!(pool.threads(), 3);
            for i in 0..200 {
                pool.submit(i).unwrap();
            }
            pool.join();
            let mut seen: Vec<_> = rx.iter().collect();
            seen.sort();
            assert_eq!(seen.len(), 200);
            for (n, (i, name)) in seen.into_iter().enumerate() {
                assert_eq!(i, n as u32);
                let name = name.expect("named thread");
                assert!(name.starts_with("pool-test-"), "{name}");
            }
        }
    }

    #[test]
    fn at_least_one_worker() {
        let pool = WorkPool::new(opts(0, None, Duration::ZERO), |_: ()| {}).unwrap();
        assert_eq!(pool.threads(), 1);
    }

    /// A bounded queue holds at most `capacity` items: the producer waits
    /// for room, and gets its item back once the pool is closed.
    #[test]
    fn a_full_bounded_queue_makes_submit_wait() {
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate = Mutex::new(gate_rx);
        let (started_tx, started_rx) = mpsc::channel();
        let started_tx = Mutex::new(started_tx);
        let pool = Arc::new(
            WorkPool::new(opts(1, Some(2), Duration::ZERO), move |i: u32| {
                let _ = poison::lock(&started_tx).send(i);
                // The one worker holds each item until the test lets go.
                let _ = poison::lock(&gate).recv();
            })
            .unwrap(),
        );
        pool.submit(0).unwrap();
        assert_eq!(started_rx.recv().unwrap(), 0); // taken: queue empty
        pool.submit(1).unwrap();
        pool.submit(2).unwrap(); // queue full now
        let (done_tx, done_rx) = mpsc::channel();
        let p = pool.clone();
        let producer = thread::spawn(move || {
            let r = p.submit(3);
            let _ = done_tx.send(());
            r
        });
        // The producer is blocked until the worker takes another item.
        assert!(done_rx.try_recv().is_err());
        gate_tx.send(()).unwrap(); // item 0 done; worker takes 1
        assert_eq!(started_rx.recv().unwrap(), 1);
        done_rx.recv().unwrap();
        assert_eq!(producer.join().unwrap(), Ok(()));
        // Closing hands back what can no longer be queued.
        pool.close();
        assert_eq!(pool.submit(4), Err(4));
        drop(gate_tx); // let the worker drain 1, 2 and 3
        for want in [2, 3] {
            assert_eq!(started_rx.recv().unwrap(), want);
        }
    }

    /// A producer waiting for room is released when the pool closes.
    #[test]
    fn close_releases_a_waiting_producer() {
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate = Mutex::new(gate_rx);
        let pool = Arc::new(
            WorkPool::new(opts(1, Some(1), Duration::ZERO), move |_: u32| {
                let _ = poison::lock(&gate).recv();
            })
            .unwrap(),
        );
        // One item held by the worker, one queued: the next waits.
        pool.submit(0).unwrap();
        let p = pool.clone();
        let producer = thread::spawn(move || while p.submit(1).is_ok() {});
        // Whether the producer is waiting yet or not, closing ends it.
        pool.close();
        producer.join().unwrap();
        drop(gate_tx);
    }

    /// Dropping the pool does not wait for a worker that is stuck.
    #[test]
    fn drop_does_not_wait_for_a_stuck_worker() {
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate = Mutex::new(gate_rx);
        let (started_tx, started_rx) = mpsc::channel();
        let started_tx = Mutex::new(started_tx);
        let pool = WorkPool::new(opts(1, None, Duration::ZERO), move |_: ()| {
            let _ = poison::lock(&started_tx).send(());
            let _ = poison::lock(&gate).recv();
        })
        .unwrap();
        pool.submit(()).unwrap();
        started_rx.recv().unwrap();
        drop(pool); // returns although the worker is still inside its item
        drop(gate_tx);
    }
}
