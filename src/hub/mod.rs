//! The hub: who is subscribed to what, and getting each update to them.
//!
//! Nothing here knows HTTP or Redis. The HTTP layer turns a request into a
//! [`Subscription`] and a [`SubscriberStream`] back into a response body;
//! the log ([`crate::log`]) orders and keeps updates, whichever engine runs.
//!
//! Data flow: `publish` appends the update to the log. What the log has
//! committed reaches the committer ([`committer`]), one thread that takes
//! every update waiting at that moment as one batch, stores the batch in
//! history (on one node, one durable write for all of them: group commit;
//! in a cluster, the node's replica), then, under the order lock, offers
//! each update's shared frame to every matching subscriber's bounded queue
//! ([`fanout`]). One thread doing both keeps delivery in sequence order,
//! and a publisher is never told "done" before its update is in the log.
//!
//! A queue that is full means that subscriber cannot keep up: it is cut off
//! at the first update it cannot take (its stream ends after what is already
//! queued, and nothing later is ever queued for it), and it resumes from
//! history by `Last-Event-ID` ([`subscribe`]). A slow client therefore
//! never slows the others, never grows memory without bound, and never
//! skips an update without knowing.
//!
//! Faults are visible: a history write that fails answers its publishers
//! 503 and marks the hub not ready ([`Hub::readiness`]) until a write
//! succeeds again (the committer probes once a second); a panic while
//! committing fails that batch's publishers and is reported the same way,
//! and the committer carries on with the next batch.
//!
//! The rooms: [`committer`] (the thread: batch, store, deliver, answer),
//! [`fanout`] (offering an update to its subscribers; where live delivery
//! stands), [`subscribe`] (registering, replay then live), [`events`]
//! (subscription events), `registry` (the matching index), `queue` (a
//! subscriber's bounded queue), `stream` (replay pages, then the queue),
//! `status` (the status page's snapshot and events).

mod committer;
mod events;
mod fanout;
mod queue;
mod registry;
mod status;
mod stream;
mod subscribe;
#[cfg(test)]
mod tests;

pub use crate::log::LogError as HubError;
pub use crate::subscription::{Subscription, SubscriptionInfo, RESERVED_PREFIX};
pub use crate::update::Update;
pub use status::{HistoryStatus, HubStatus, STATUS_EVENT_TYPE, STATUS_TOPIC};
pub use stream::SubscriberStream;
pub use subscribe::Subscribed;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::history::HistoryStore;
use crate::log::{Applier, ApplyRequest, EmbeddedLog, Log};
use fanout::Head;
use registry::Registry;

/// Tunables of the core.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Events a subscriber may have queued before it is cut off.
    pub queue_capacity: usize,
    /// Bytes of events a subscriber may have queued before it is cut off.
    pub queue_bytes: usize,
    /// Publish an update on `/.well-known/mercure/subscriptions/…` when a
    /// subscriber connects or disconnects.
    pub subscription_events: bool,
    /// Most subscribers at once (0: no limit); the status page's own
    /// stream does not count.
    pub max_subscribers: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            queue_capacity: 1024,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            subscription_events: false,
            max_subscribers: 0,
        }
    }
}

/// `--queue-bytes`: 4 MiB, room for thousands of typical events, and for
/// four of the largest a publish may carry (`--max-body`, 1 MiB).
pub const DEFAULT_QUEUE_BYTES: usize = 4 << 20;

/// Counters exposed on `/metrics`.
#[derive(Debug, Default)]
pub struct HubStats {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub cut_off_slow: AtomicU64,
    pub storage_errors: AtomicU64,
    pub committer_panics: AtomicU64,
}

pub struct Hub {
    config: HubConfig,
    registry: RwLock<Registry>,
    /// The newest update offered to subscribers. Held while fanning out
    /// and while registering a subscriber, so a resuming subscriber is
    /// handed from replay to live delivery at an exact sequence number.
    order: Mutex<Head>,
    /// This node's history: the log itself on one node, a replica of it
    /// in a cluster. Written only by the committer.
    history: Arc<dyn HistoryStore>,
    /// Where updates are published; it hands what it committed back
    /// through `applier`.
    log: Arc<dyn Log>,
    /// The committer's inbox.
    applier: Applier,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Why the hub cannot store updates right now, if it cannot.
    fault: Mutex<Option<String>>,
    /// Bounds replay pages read at once (see `stream`).
    replay_reads: Arc<tokio::sync::Semaphore>,
    next_key: AtomicU64,
    pub stats: HubStats,
}

/// Who chose an update's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdOrigin {
    /// The hub ([`Hub::generate_id`]).
    Generated,
    /// The publisher: it may clash with one in history.
    Chosen,
}

impl Hub {
    /// A hub on the embedded log: `history` is the log.
    pub fn new(config: HubConfig, history: Arc<dyn HistoryStore>) -> Arc<Hub> {
        Hub::with_log(config, history, |applier| {
            Arc::new(EmbeddedLog::new(applier)) as Arc<dyn Log>
        })
    }

    /// A hub on the log `engine` makes, given the committer's inbox to hand
    /// committed entries to. `history` is where the committer stores them
    /// (the log itself, or this node's replica of it).
    pub fn with_log(
        config: HubConfig,
        history: Arc<dyn HistoryStore>,
        engine: impl FnOnce(Applier) -> Arc<dyn Log>,
    ) -> Arc<Hub> {
        let head = fanout::initial_head(history.as_ref());
        let (applier, inbox) = Applier::new();
        let log = engine(applier.clone());
        let hub = Arc::new(Hub {
            config,
            registry: RwLock::new(Registry::default()),
            order: Mutex::new(head),
            history,
            log,
            applier,
            committer: Mutex::new(None),
            fault: Mutex::new(None),
            replay_reads: Arc::new(tokio::sync::Semaphore::new(stream::CONCURRENT_REPLAY_READS)),
            next_key: AtomicU64::new(1),
            stats: HubStats::default(),
        });
        // The thread holds only a weak reference: dropping the last `Arc`
        // shuts the inbox, which ends the thread.
        let weak = Arc::downgrade(&hub);
        let handle = std::thread::Builder::new()
            .name("herald-commit".into())
            .spawn(move || committer::run(weak, inbox))
            .expect("spawn the committer thread");
        *hub.committer.lock() = Some(handle);
        hub
    }

    pub fn history(&self) -> &Arc<dyn HistoryStore> {
        &self.history
    }

    /// A fresh id for an update whose first topic is `topic` (the log may
    /// want it kept with the update).
    pub fn generate_id(&self, topic: &str) -> String {
        self.log.generate_id(topic)
    }

    /// Store and deliver an update. Returns once it is in history (durably,
    /// as the store promises) and offered to every matching subscriber's
    /// queue.
    pub async fn publish(&self, update: Update) -> Result<Arc<Update>, HubError> {
        self.publish_as(update, IdOrigin::Chosen).await
    }

    /// [`Hub::publish`], saying whether the publisher chose the id or the
    /// hub generated it (unique by construction: no look-up needed).
    pub async fn publish_as(
        &self,
        update: Update,
        origin: IdOrigin,
    ) -> Result<Arc<Update>, HubError> {
        if self.is_closed() {
            return Err(HubError::ShuttingDown);
        }
        let update = Arc::new(update);
        let chosen = origin == IdOrigin::Chosen;
        self.log
            .append(std::slice::from_ref(&update), &[chosen])
            .await?;
        Ok(update)
    }

    /// Store and deliver several updates as one: all of them, in order, in
    /// one durable commit, or none (an id already in history, or repeated
    /// within them, refuses the whole request). Returns once every one is
    /// in history and offered to its subscribers.
    pub async fn publish_batch(
        &self,
        updates: Vec<(Update, IdOrigin)>,
    ) -> Result<Vec<Arc<Update>>, HubError> {
        if self.is_closed() {
            return Err(HubError::ShuttingDown);
        }
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let chosen: Vec<bool> = updates
            .iter()
            .map(|(_, origin)| *origin == IdOrigin::Chosen)
            .collect();
        let updates: Vec<Arc<Update>> = updates.into_iter().map(|(u, _)| Arc::new(u)).collect();
        self.log.append(&updates, &chosen).await?;
        Ok(updates)
    }

    /// Ask the committer to enforce history's age limit (called
    /// periodically by the server).
    pub fn maintain(&self) {
        let _ = self.applier.send(ApplyRequest::Maintain);
    }

    /// Is the hub able to take publishes? `Err` says why not, for
    /// `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_closed() {
            return Err("shutting down".into());
        }
        self.log.readiness()?;
        if self
            .committer
            .lock()
            .as_ref()
            .is_none_or(|h| h.is_finished())
        {
            return Err(
                "the committer thread has stopped: publishes cannot be stored; restart herald"
                    .into(),
            );
        }
        match &*self.fault.lock() {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    /// Send a keep-alive comment to every subscriber. A full queue is left
    /// alone: that subscriber has data coming anyway.
    pub fn heartbeat(&self) {
        static KEEP_ALIVE: bytes::Bytes = bytes::Bytes::from_static(crate::sse::KEEP_ALIVE);
        let dead: Vec<u64> = {
            let registry = self.registry.read();
            registry
                .iter()
                .filter_map(
                    |(key, entry)| match entry.tx.offer_keep_alive(KEEP_ALIVE.clone()) {
                        Err(queue::PushError::Closed) => Some(key),
                        _ => None,
                    },
                )
                .collect()
        };
        self.remove_many(&dead);
    }

    /// Stop: refuse new subscribers and publishes, and end every stream
    /// (each ends after flushing what is already queued).
    /// Blocks until the committer has stored and delivered every update
    /// accepted before (so each publisher already told "done" is durable).
    pub fn close(&self) {
        self.applier.close();
        if let Some(handle) = self.committer.lock().take() {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        let _order = self.order.lock();
        self.registry.write().clear();
    }

    pub fn is_closed(&self) -> bool {
        self.applier.is_closed()
    }

    fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }
}

impl Drop for Hub {
    /// A log engine's tasks hold the inbox too: shut it, so they stop and
    /// the committer thread ends.
    fn drop(&mut self) {
        self.applier.abandon();
    }
}
