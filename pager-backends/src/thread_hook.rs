//! A hook that a thread started by a backend (a connection's reader) or by
//! the device (a worker) runs first, before it reads anything a peer or the
//! guest controls. The VMM confines the thread there (its seccomp filter);
//! this crate only promises to run the hook at that point and not to go on
//! if it fails. Kept here because both the backends and the device start
//! such threads, and the device crate depends on this one.

use std::io;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

/// Runs on the new thread, first thing. An error stops the thread before it
/// does any work, and whoever started it gets the error.
#[derive(Clone)]
pub struct ThreadHook(Arc<dyn Fn() -> io::Result<()> + Send + Sync>);

impl ThreadHook {
    pub fn new(f: impl Fn() -> io::Result<()> + Send + Sync + 'static) -> ThreadHook {
        ThreadHook(Arc::new(f))
    }

    /// Runs the hook on the calling thread.
    pub fn run(&self) -> io::Result<()> {
        (self.0)()
    }
}

impl std::fmt::Debug for ThreadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ThreadHook")
    }
}

/// Starts a thread named `name` that runs `hook` (if any), then `body`.
/// Returns once the hook has run: with its error if it failed, in which case
/// the thread has ended without running `body`. So when this returns `Ok`,
/// the thread is confined before it touches anything.
pub fn spawn_hooked<F>(
    name: String,
    hook: Option<&ThreadHook>,
    body: F,
) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let Some(hook) = hook.cloned() else {
        return std::thread::Builder::new().name(name).spawn(body);
    };
    let (tx, rx) = mpsc::sync_channel(1);
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let ran = hook.run();
        let ok = ran.is_ok();
        // The starter waits for this; if it is gone there is nobody to work for.
        if tx.send(ran).is_ok() && ok {
            body();
        }
    })?;
    let ran = rx.recv().unwrap_or_else(|_| {
        Err(io::Error::other(
            "the new thread ended before reporting its start hook",
        ))
    });
    if let Err(e) = ran {
        let _ = handle.join();
        return Err(e);
    }
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn body_runs_after_a_hook_that_succeeds_on_the_new_thread() {
        let hook_thread = Arc::new(std::sync::Mutex::new(None));
        let seen = hook_thread.clone();
        let hook = ThreadHook::new(move || {
            *seen.lock().unwrap() = std::thread::current().name().map(String::from);
            Ok(())
        });
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        spawn_hooked("hooked-ok".into(), Some(&hook), move || {
            r.store(true, Ordering::SeqCst)
        })
        .unwrap()
        .join()
        .unwrap();
        assert!(ran.load(Ordering::SeqCst));
        assert_eq!(hook_thread.lock().unwrap().as_deref(), Some("hooked-ok"));
    }

    #[test]
    fn a_failing_hook_is_returned_and_the_body_never_runs() {
        let hook = ThreadHook::new(|| Err(io::Error::other("no filter for you")));
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let err = spawn_hooked("hooked-err".into(), Some(&hook), move || {
            r.store(true, Ordering::SeqCst)
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "no filter for you");
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[test]
    fn without_a_hook_it_is_a_plain_named_thread() {
        let name = spawn_hooked("plain".into(), None, || {
            assert_eq!(std::thread::current().name(), Some("plain"));
        })
        .unwrap()
        .join();
        assert!(name.is_ok());
    }
}
