//! Locking that outlives a panic: the one place the host crates decide what
//! a poisoned lock means.
//!
//! Every lock in these crates guards state that each critical section
//! leaves consistent at every step (counters, queues, maps changed by one
//! call), so what a panicking thread left behind is still usable. Taking it
//! anyway keeps one failed thread from turning every later caller into a
//! panic too: a pager's bug must not take the VMM's event loop down with
//! it. (Release builds abort on panic, so there poisoning cannot happen at
//! all; this matters for tests and debug builds.)

use std::sync::{
    Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    WaitTimeoutResult,
};
use std::time::Duration;

/// `m.lock()`, poisoned or not.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `l.read()`, poisoned or not.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// `l.write()`, poisoned or not.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// `cv.wait(guard)`, poisoned or not.
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(PoisonError::into_inner)
}

/// `cv.wait_timeout(guard, d)`, poisoned or not.
pub fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    d: Duration,
) -> (MutexGuard<'a, T>, WaitTimeoutResult) {
    cv.wait_timeout(guard, d)
        .unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Runs `hold` on another thread, which panics inside it: `hold` panics
    /// while it holds its guard, and that poisons the lock.
    fn panic_in<T: Send + Sync + 'static>(l: Arc<T>, hold: impl FnOnce(&T) + Send + 'static) {
        let r = std::thread::spawn(move || hold(&l)).join();
        assert!(r.is_err());
    }

    #[test]
    fn a_poisoned_mutex_is_still_usable() {
        let m = Arc::new(Mutex::new(1));
        panic_in(m.clone(), |m| {
            let mut g = lock(m);
            *g = 2;
            panic!("poisoning on purpose while holding the lock");
        });
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 2);
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 3);
    }

    #[test]
    fn a_poisoned_rwlock_is_still_usable() {
        let l = Arc::new(RwLock::new(vec![1]));
        panic_in(l.clone(), |l| {
            let mut g = write(l);
            g.push(2);
            panic!("poisoning on purpose while holding the lock");
        });
        assert!(l.is_poisoned());
        assert_eq!(*read(&l), [1, 2]);
        write(&l).push(3);
        assert_eq!(*read(&l), [1, 2, 3]);
    }

    #[test]
    fn waits_on_a_poisoned_mutex_return_the_guard() {
        let m = Arc::new(Mutex::new(0));
        panic_in(m.clone(), |m| {
            let mut g = lock(m);
            *g = 5;
            panic!("poisoning on purpose while holding the lock");
        });
        assert!(m.is_poisoned());
        let cv = Condvar::new();
        let (g, r) = wait_timeout(&cv, lock(&m), Duration::from_millis(1));
        assert!(r.timed_out());
        assert_eq!(*g, 5);
    }
}
