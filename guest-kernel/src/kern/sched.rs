//! The run queue: round-robin over runnable threads. Policy only; the kernel
//! does the switching.

use alloc::collections::VecDeque;

/// Task identifiers are small integers handed out in order, never reused
/// while the task can still be waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub u32);

/// Thread identifiers: handed out in order, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ThreadId(pub u32);

/// Runnable threads, round robin.
#[derive(Default)]
pub struct RunQueue {
    queue: VecDeque<ThreadId>,
}

impl RunQueue {
    pub const fn new() -> RunQueue {
        RunQueue {
            queue: VecDeque::new(),
        }
    }
    /// Makes `t` runnable (at the back). Idempotent.
    pub fn push(&mut self, t: ThreadId) {
        if !self.queue.contains(&t) {
            self.queue.push_back(t);
        }
    }
    /// The next task to run, removed from the queue.
    pub fn pop(&mut self) -> Option<ThreadId> {
        self.queue.pop_front()
    }
    pub fn remove(&mut self, t: ThreadId) {
        self.queue.retain(|&x| x != t);
    }
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin() {
        let mut q = RunQueue::new();
        q.push(ThreadId(1));
        q.push(ThreadId(2));
        q.push(ThreadId(1));
        assert_eq!(q.len(), 2);
        let a = q.pop().unwrap();
        q.push(a);
        assert_eq!(q.pop(), Some(ThreadId(2)));
        assert_eq!(q.pop(), Some(ThreadId(1)));
        assert!(q.pop().is_none());
        q.push(ThreadId(3));
        q.remove(ThreadId(3));
        assert!(q.is_empty());
    }
}
