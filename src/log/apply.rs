//! The committer's inbox: how updates reach the one thread that stores and
//! delivers them in order (`hub::committer`).
//!
//! Defined here, below the hub, so that a log engine can hand the hub what
//! it committed without importing it: the embedded engine sends each
//! publish here to be written and delivered; the Redis engine's merger
//! sends what it read from the log, in log order, to be stored in the
//! replica and delivered. The hub sends its own live-only events (status,
//! and on one node subscription events) and its maintenance ticks.
//!
//! The inbox is a plain `std` channel: the committer is a thread that
//! blocks on it, and a send never waits. Closing it (shutdown) is shared by
//! every holder: after [`Applier::close`] every send fails with
//! [`LogError::ShuttingDown`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::LogError;
use crate::update::Update;

/// Where the committer answers a request.
pub type Reply = oneshot::Sender<Result<(), LogError>>;

/// One update waiting for the committer.
pub struct Pending {
    pub update: Arc<Update>,
    /// None for live-only events and for all but the last update of a
    /// request (the request's answer rides on its last update).
    pub reply: Option<Reply>,
    /// Stored in history (published updates) or delivered live only
    /// (subscription and status events: connection churn must never evict
    /// published updates from history, nor be replayed).
    pub durable: bool,
    /// Part of an all-or-nothing batch publish: the same number for every
    /// update of one request.
    pub group: Option<u64>,
    /// The publisher chose the id, so it may already be in history: a
    /// batch group looks it up before anything is written. An id the hub
    /// generated (122 random bits) needs no look-up.
    pub chosen_id: bool,
}

/// What the committer is asked to do.
pub enum ApplyRequest {
    Publish(Pending),
    /// Several updates, in order, as one request (a batch publish, or a
    /// run of log entries).
    PublishAll(Vec<Pending>),
    /// Enforce the age limit of history, flush relaxed writes, and probe a
    /// faulty store.
    Maintain,
    /// Commit what came before, flush, and end the thread.
    Stop,
}

/// A handle on the committer's inbox; clones share it.
#[derive(Clone)]
pub struct Applier {
    door: Arc<Door>,
}

struct Door {
    /// Taken at shutdown: every send then fails.
    tx: Mutex<Option<std_mpsc::Sender<ApplyRequest>>>,
    closed: AtomicBool,
}

impl Applier {
    /// A new inbox: the handle to send to, and the receiving end for the
    /// committer thread.
    pub fn new() -> (Applier, std_mpsc::Receiver<ApplyRequest>) {
        let (tx, rx) = std_mpsc::channel();
        let door = Door {
            tx: Mutex::new(Some(tx)),
            closed: AtomicBool::new(false),
        };
        (
            Applier {
                door: Arc::new(door),
            },
            rx,
        )
    }

    /// Queue a request; fails once the hub is shutting down or the
    /// committer is gone.
    pub fn send(&self, request: ApplyRequest) -> Result<(), LogError> {
        match &*self.door.tx.lock() {
            Some(tx) => tx.send(request).map_err(|_| self.stopped_error()),
            None => Err(LogError::ShuttingDown),
        }
    }

    /// Hand updates to the committer as one request, in order, and wait
    /// for its answer, which rides on the last of them. `(update,
    /// chosen_id)` pairs; `group` makes them all-or-nothing.
    pub async fn commit(
        &self,
        updates: impl ExactSizeIterator<Item = (Arc<Update>, bool)>,
        durable: bool,
        group: Option<u64>,
    ) -> Result<(), LogError> {
        let Some(last) = updates.len().checked_sub(1) else {
            return Ok(());
        };
        let (reply, answer) = oneshot::channel();
        let mut reply = Some(reply);
        let pending = updates
            .enumerate()
            .map(|(i, (update, chosen_id))| Pending {
                update,
                reply: if i == last { reply.take() } else { None },
                durable,
                group,
                chosen_id,
            })
            .collect();
        self.send(ApplyRequest::PublishAll(pending))?;
        // A dropped reply means the committer stopped (or panicked) before
        // these updates were stored.
        answer.await.map_err(|_| self.stopped_error())?
    }

    /// Hand one update to the committer to be stored and delivered, and
    /// wait for its answer.
    pub async fn commit_one(&self, update: Arc<Update>, chosen_id: bool) -> Result<(), LogError> {
        let (reply, answer) = oneshot::channel();
        self.send(ApplyRequest::Publish(Pending {
            update,
            reply: Some(reply),
            durable: true,
            group: None,
            chosen_id,
        }))?;
        // A dropped reply means the committer stopped (or panicked) before
        // this update was stored.
        answer.await.map_err(|_| self.stopped_error())?
    }

    /// Store (unless `durable` is false: live-only events) and deliver
    /// entries a log engine has committed, in the order given; resolves
    /// once they are. An engine calls this for each run it applies and
    /// waits for it, so runs never overtake each other.
    pub async fn apply(&self, updates: Vec<Arc<Update>>, durable: bool) -> Result<(), LogError> {
        let updates = updates.into_iter().map(|u| (u, false));
        self.commit(updates, durable, None).await
    }

    /// Deliver a live-only event (never stored), in order with what the
    /// committer delivers; does not wait.
    pub fn deliver_live(&self, update: Arc<Update>) -> Result<(), LogError> {
        self.send(ApplyRequest::Publish(Pending {
            update,
            reply: None,
            durable: false,
            group: None,
            chosen_id: false,
        }))
    }

    /// Shut the inbox: mark it closed, ask the committer to finish what is
    /// queued and stop, and refuse every later send.
    pub fn close(&self) {
        self.door.closed.store(true, Ordering::Release);
        let _ = self.send(ApplyRequest::Stop);
        self.door.tx.lock().take();
    }

    /// Shut the inbox without a stop request (its owner is gone): the
    /// committer ends once it has drained what is queued.
    pub(crate) fn abandon(&self) {
        self.door.closed.store(true, Ordering::Release);
        self.door.tx.lock().take();
    }

    pub fn is_closed(&self) -> bool {
        self.door.closed.load(Ordering::Acquire)
    }

    /// Why a request got no answer from the committer.
    fn stopped_error(&self) -> LogError {
        if self.is_closed() {
            LogError::ShuttingDown
        } else {
            LogError::Unavailable(
                "the update was not stored: the hub's committer failed while handling it (see /readyz and the log); it is safe to retry".into(),
            )
        }
    }
}
