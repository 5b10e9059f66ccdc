//! The object table's lifecycle state machine (docs/virtio-pager.md §7).
//!
//! At most one lifecycle call (INIT or TERMINATE) per object is with the
//! pager at any time: an INIT the driver sends while the object's TERMINATE
//! still runs waits here, so the pager sees them in the order sent even
//! with several workers. Pure bookkeeping: no guest memory, no threads.

use super::wire::{Request, status};
use super::worker::{Effect, Job};
use pager_backends::{ObjectInfo, Pager};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Uninit,
    /// INIT is with the pager.
    Initializing,
    Ready(ObjectInfo),
    /// TERMINATE is with the pager, or (`abandoned_init`) an INIT that a
    /// reset orphaned, which must be terminated once it has finished.
    Closing {
        abandoned_init: bool,
        next_init: bool,
    },
}

/// What to do with a validated request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Hand it to the pager now.
    Run,
    /// An INIT that must wait for the object's TERMINATE: park it with
    /// `ObjectSlot::defer`.
    Defer,
    /// Complete it at once with this status.
    Reject(u32),
}

/// What the device must do after a lifecycle call finished.
pub(crate) enum Next {
    Nothing,
    /// Submit the INIT that waited for the TERMINATE.
    Init(Job),
    /// Terminate towards the pager an INIT a reset orphaned.
    Terminate,
}

pub(crate) struct ObjectSlot {
    pub(crate) pager: Arc<dyn Pager>,
    pub(crate) read_only: bool,
    state: State,
    deferred: Option<Job>,
}

impl ObjectSlot {
    pub(crate) fn new(pager: Arc<dyn Pager>, read_only: bool) -> Self {
        ObjectSlot {
            pager,
            read_only,
            state: State::Uninit,
            deferred: None,
        }
    }

    /// The state rules of §7, applied when a request is taken from the ring.
    pub(crate) fn admit(&mut self, req: &Request) -> Admission {
        match (req, &mut self.state) {
            (Request::Init, State::Uninit) => {
                self.state = State::Initializing;
                Admission::Run
            }
            (
                Request::Init,
                State::Closing {
                    next_init: next @ false,
                    ..
                },
            ) => {
                *next = true;
                Admission::Defer
            }
            (Request::Init, _) => Admission::Reject(status::BAD_STATE),
            (_, State::Ready(info)) => {
                if matches!(req, Request::DataWrite { .. }) && (self.read_only || info.read_only) {
                    return Admission::Reject(status::READ_ONLY);
                }
                if matches!(req, Request::Terminate) {
                    // Later requests are refused until a new INIT (the
                    // driver must not have any outstanding, see §7).
                    self.state = State::Closing {
                        abandoned_init: false,
                        next_init: false,
                    };
                }
                Admission::Run
            }
            _ => Admission::Reject(status::BAD_STATE),
        }
    }

    /// Parks the INIT `admit` answered `Defer` for.
    pub(crate) fn defer(&mut self, job: Job) {
        self.deferred = Some(job);
    }

    /// The pager refused an INIT we submitted (pool gone): back to Uninit.
    pub(crate) fn init_not_started(&mut self) {
        if self.state == State::Initializing {
            self.state = State::Uninit;
        }
    }

    /// A lifecycle call finished with `effect`.
    pub(crate) fn finished(&mut self, effect: &Effect) -> Next {
        match (effect, &mut self.state) {
            (Effect::Initialized(info), State::Initializing) => {
                self.state = State::Ready(info.clone());
                Next::Nothing
            }
            (Effect::InitFailed, State::Initializing) => {
                self.state = State::Uninit;
                Next::Nothing
            }
            (
                Effect::Initialized(_),
                State::Closing {
                    abandoned_init: abandoned @ true,
                    ..
                },
            ) => {
                // The pager now counts a kernel instance that is gone.
                *abandoned = false;
                Next::Terminate
            }
            (
                Effect::InitFailed,
                State::Closing {
                    abandoned_init: true,
                    ..
                },
            )
            | (
                Effect::Terminated,
                State::Closing {
                    abandoned_init: false,
                    ..
                },
            ) => match self.deferred.take() {
                Some(job) => {
                    self.state = State::Initializing;
                    Next::Init(job)
                }
                None => {
                    self.state = State::Uninit;
                    Next::Nothing
                }
            },
            _ => Next::Nothing,
        }
    }

    /// Device reset. Returns true if the device must terminate the object
    /// towards its pager now (it was initialised for the old driver).
    pub(crate) fn reset(&mut self) -> bool {
        // A parked INIT belonged to the old ring; nobody waits for it.
        self.deferred = None;
        match &mut self.state {
            State::Uninit => false,
            State::Ready(_) => {
                self.state = State::Closing {
                    abandoned_init: false,
                    next_init: false,
                };
                true
            }
            State::Initializing => {
                self.state = State::Closing {
                    abandoned_init: true,
                    next_init: false,
                };
                false
            }
            State::Closing { next_init, .. } => {
                *next_init = false;
                false
            }
        }
    }
}
