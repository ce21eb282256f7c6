//! The hub: who is subscribed to what, and getting each update to them.
//!
//! Nothing here knows HTTP. The HTTP layer turns a request into a
//! [`Subscription`] and a [`SubscriberStream`] back into a response body.
//!
//! Data flow: `publish` hands the update to the committer, one thread that
//! takes every update waiting at that moment as one batch, appends the batch
//! to history (one durable write for all of them: group commit), then, under
//! the order lock, offers each update's shared frame to every matching
//! subscriber's bounded queue with `try_push`, and only then answers each
//! publisher. One thread doing both keeps delivery in sequence order, and a
//! publisher is never told "done" before its update is in history.
//!
//! A queue that is full means that subscriber cannot keep up: it is cut off
//! (its stream ends after what is already queued) and it resumes from
//! history by `Last-Event-ID`. A slow client therefore never slows the
//! others and never grows memory without bound.

mod queue;
mod registry;
mod stream;
mod update;

pub use registry::SubscriptionInfo;
pub use stream::SubscriberStream;
pub use update::Update;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::sync::mpsc as std_mpsc;
use tokio::sync::oneshot;

use crate::history::{HistoryError, HistoryStore, ResumeFrom};
use crate::topic::TopicSelector;
use queue::PushError;
use registry::Registry;

/// What a subscriber asked for and what it may see.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The subscriber's IRI, `urn:uuid:…`, used by the subscriptions API.
    pub subscriber_id: String,
    /// Topics it wants.
    pub selectors: Vec<TopicSelector>,
    /// Topics whose private updates its token lets it read.
    pub private_access: Vec<TopicSelector>,
    /// `mercure.payload` from its token, exposed by the subscriptions API.
    pub payload: Option<serde_json::Value>,
}

impl Subscription {
    /// Should this update reach this subscriber? It must have asked for one
    /// of the update's topics and, if the update is private, be allowed to
    /// read one of them.
    pub fn wants(&self, update: &Update) -> bool {
        let topics = crate::topic::prepare(&update.topics);
        crate::topic::any_matches_prepared(&self.selectors, &topics)
            && self.may_read(update, &topics)
    }

    /// The second half of [`Subscription::wants`], for a subscriber whose
    /// selectors are already known to match: a public update, or a private
    /// one its token lets it read (a grant matches one of the topics).
    pub fn may_read(&self, update: &Update, topics: &[crate::topic::PreparedTopic<'_>]) -> bool {
        !update.private || crate::topic::any_matches_prepared(&self.private_access, topics)
    }
}

/// Tunables of the core.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Events a subscriber may have queued before it is cut off.
    pub queue_capacity: usize,
    /// Publish an update on `/.well-known/mercure/subscriptions/…` when a
    /// subscriber connects or disconnects.
    pub subscription_events: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            queue_capacity: 1024,
            subscription_events: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("the hub is shutting down")]
    ShuttingDown,
}

/// Counters exposed on `/metrics`.
#[derive(Debug, Default)]
pub struct HubStats {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub cut_off_slow: AtomicU64,
}

pub struct Hub {
    config: HubConfig,
    registry: RwLock<Registry>,
    /// The newest update offered to subscribers. Held while fanning out
    /// and while registering a subscriber, so a resuming subscriber is
    /// handed from replay to live delivery at an exact sequence number.
    order: Mutex<Head>,
    history: Arc<dyn HistoryStore>,
    /// Where publishes queue for the committer thread.
    commits: Mutex<Option<std_mpsc::Sender<CommitRequest>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    next_key: AtomicU64,
    closed: AtomicBool,
    pub stats: HubStats,
}

/// Sequence number and id of the newest update delivered live.
#[derive(Debug, Default)]
struct Head {
    seq: u64,
    id: Option<String>,
}

/// Where the committer answers a publisher.
type Reply = oneshot::Sender<Result<(), HubError>>;

enum CommitRequest {
    /// Store and deliver; answer on `reply` (none for the hub's own
    /// subscription events).
    Publish {
        update: Arc<Update>,
        reply: Option<Reply>,
    },
    /// Enforce the age limit of history, then flush relaxed writes.
    Maintain,
    /// Commit what came before, flush, and end the thread.
    Stop,
}

/// Most updates committed in one batch.
const MAX_BATCH: usize = 1024;

/// The prefix of the reserved topic namespace.
pub const RESERVED_PREFIX: &str = "/.well-known/mercure";

impl Hub {
    pub fn new(config: HubConfig, history: Arc<dyn HistoryStore>) -> Arc<Hub> {
        let (seq, id) = history.head();
        let (tx, rx) = std_mpsc::channel();
        let hub = Arc::new(Hub {
            config,
            registry: RwLock::new(Registry::default()),
            order: Mutex::new(Head { seq, id }),
            history,
            commits: Mutex::new(Some(tx)),
            committer: Mutex::new(None),
            next_key: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            stats: HubStats::default(),
        });
        // The thread holds only a weak reference: dropping the last `Arc`
        // drops the sender, which ends the thread.
        let weak = Arc::downgrade(&hub);
        let handle = std::thread::Builder::new()
            .name("herald-commit".into())
            .spawn(move || run_committer(weak, rx))
            .expect("spawn the committer thread");
        *hub.committer.lock() = Some(handle);
        hub
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    pub fn history(&self) -> &Arc<dyn HistoryStore> {
        &self.history
    }

    fn enqueue(&self, request: CommitRequest) -> Result<(), HubError> {
        match &*self.commits.lock() {
            Some(tx) => tx.send(request).map_err(|_| HubError::ShuttingDown),
            None => Err(HubError::ShuttingDown),
        }
    }

    /// Store and deliver an update. Returns once it is in history (durably,
    /// as the store promises) and offered to every matching subscriber's
    /// queue.
    pub async fn publish(&self, update: Update) -> Result<Arc<Update>, HubError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(HubError::ShuttingDown);
        }
        let update = Arc::new(update);
        let (reply, answer) = oneshot::channel();
        self.enqueue(CommitRequest::Publish {
            update: update.clone(),
            reply: Some(reply),
        })?;
        // A dropped reply means the committer stopped before this update.
        answer.await.map_err(|_| HubError::ShuttingDown)??;
        Ok(update)
    }

    /// Ask the committer to enforce history's age limit (called
    /// periodically by the server).
    pub fn maintain(&self) {
        let _ = self.enqueue(CommitRequest::Maintain);
    }

    /// Commit one batch, deliver it in order, answer its publishers.
    fn commit(&self, batch: Vec<(Arc<Update>, Option<Reply>)>) {
        let updates: Vec<Arc<Update>> = batch.iter().map(|(u, _)| u.clone()).collect();
        let results = match self.history.append_batch(&updates) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "history append failed; {} publishes refused", batch.len());
                let msg = e.to_string();
                for (_, reply) in batch {
                    if let Some(reply) = reply {
                        let _ =
                            reply.send(Err(HubError::History(HistoryError::Storage(msg.clone()))));
                    }
                }
                return;
            }
        };
        let mut cut_off = Vec::new();
        let mut published = 0;
        {
            let mut head = self.order.lock();
            for (update, result) in updates.iter().zip(&results) {
                if let Ok(seq) = result {
                    self.fan_out(update, &mut cut_off);
                    head.seq = *seq;
                    head.id = Some(update.id.clone());
                    published += 1;
                }
            }
        }
        self.stats.published.fetch_add(published, Ordering::Relaxed);
        self.remove_many(&cut_off);
        for ((_, reply), result) in batch.into_iter().zip(results) {
            if let Some(reply) = reply {
                let _ = reply.send(result.map(|_| ()).map_err(HubError::from));
            }
        }
    }

    /// Offer the update to every matching subscriber; collects the keys of
    /// those whose queue was full or whose connection is gone.
    fn fan_out(&self, update: &Update, cut_off: &mut Vec<u64>) {
        let registry = self.registry.read();
        let mut delivered = 0u64;
        // Each topic is prepared (its URL parsed) once for every pattern.
        let topics = crate::topic::prepare(&update.topics);
        registry.for_each_matching(&topics, |key, entry| {
            if !entry.subscription.may_read(update, &topics) {
                return;
            }
            match entry.tx.try_push(update.frame.clone()) {
                Ok(()) => delivered += 1,
                Err(PushError::Full) => {
                    self.stats.cut_off_slow.fetch_add(1, Ordering::Relaxed);
                    cut_off.push(key);
                }
                Err(PushError::Closed) => cut_off.push(key),
            }
        });
        self.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
    }

    /// Register a subscriber. With `resume`, the returned stream first
    /// replays what it missed, then continues live; both halves are split at
    /// one sequence number taken under the order lock, so nothing is missed
    /// or repeated. Also returns the id of the newest update in history at
    /// that point (`None` when history is empty), and whether the requested
    /// resume point was found in history.
    pub fn subscribe(
        self: &Arc<Self>,
        subscription: Subscription,
        resume: Option<ResumeFrom>,
    ) -> Result<(SubscriberStream, Option<String>, bool), HubError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(HubError::ShuttingDown);
        }
        let (tx, rx) = queue::queue(self.config.queue_capacity);
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let subscription = Arc::new(subscription);
        let (cursor, head_id) = {
            let head = self.order.lock();
            self.registry.write().insert(key, subscription.clone(), tx);
            (head.seq, head.id.clone())
        };
        // The id of the newest update still in history, for the legacy
        // response header.
        let head_id = head_id.filter(|_| !self.history.is_empty());
        let mut found = false;
        let backlog = match resume {
            Some(from) => match self.history.replay(&from, cursor) {
                Ok(replay) => {
                    found = replay.found;
                    replay
                        .updates
                        .into_iter()
                        .filter(|u| subscription.wants(u))
                        .map(|u| u.frame.clone())
                        .collect()
                }
                Err(e) => {
                    self.remove_many(&[key]);
                    return Err(e.into());
                }
            },
            None => Vec::new(),
        };
        if self.config.subscription_events {
            self.publish_subscription_events(&subscription, true);
        }
        Ok((
            SubscriberStream::new(self.clone(), key, backlog, rx),
            head_id,
            found,
        ))
    }

    /// Called when a subscriber's stream is dropped (client gone).
    pub(crate) fn unsubscribe(&self, key: u64) {
        self.remove_many(&[key]);
    }

    fn remove_many(&self, keys: &[u64]) {
        if keys.is_empty() {
            return;
        }
        let removed: Vec<_> = {
            let mut registry = self.registry.write();
            keys.iter().filter_map(|k| registry.remove(*k)).collect()
        };
        if self.config.subscription_events && !self.closed.load(Ordering::Acquire) {
            for sub in removed {
                self.publish_subscription_events(&sub, false);
            }
        }
    }

    fn publish_subscription_events(&self, sub: &Subscription, active: bool) {
        for selector in &sub.selectors {
            let info = SubscriptionInfo::new(sub, selector, active);
            let update = Update::new(
                Update::generate_id(),
                vec![info.id.clone(), info.legacy_id.clone()],
                true,
                Some("mercure".to_string()),
                None,
                info.to_json_ld(None).to_string(),
            );
            if let Err(e) = self.enqueue(CommitRequest::Publish {
                update: Arc::new(update),
                reply: None,
            }) {
                tracing::warn!(error = %e, "could not publish subscription event");
            }
        }
    }

    /// Active subscriptions, one per (subscriber, selector).
    pub fn subscriptions(&self) -> Vec<SubscriptionInfo> {
        self.registry.read().subscriptions()
    }

    pub fn subscriber_count(&self) -> usize {
        self.registry.read().len()
    }

    /// Send a keep-alive comment to every subscriber. A full queue is left
    /// alone: that subscriber has data coming anyway.
    pub fn heartbeat(&self) {
        static KEEP_ALIVE: Bytes = Bytes::from_static(crate::sse::KEEP_ALIVE);
        let dead: Vec<u64> = {
            let registry = self.registry.read();
            registry
                .iter()
                .filter_map(|(key, entry)| match entry.tx.try_push(KEEP_ALIVE.clone()) {
                    Err(PushError::Closed) => Some(key),
                    _ => None,
                })
                .collect()
        };
        self.remove_many(&dead);
    }

    /// Stop: refuse new subscribers and publishes, and end every stream
    /// (each ends after flushing what is already queued).
    /// Blocks until the committer has stored and delivered every update
    /// accepted before (so each publisher already told "done" is durable).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.enqueue(CommitRequest::Stop);
        self.commits.lock().take();
        if let Some(handle) = self.committer.lock().take() {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
        let _order = self.order.lock();
        self.registry.write().clear();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// The committer thread: batch whatever is waiting, commit, deliver, repeat.
fn run_committer(hub: Weak<Hub>, rx: std_mpsc::Receiver<CommitRequest>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut maintain = false;
        let mut stop = false;
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                CommitRequest::Publish { update, reply } => batch.push((update, reply)),
                CommitRequest::Maintain => maintain = true,
                CommitRequest::Stop => {
                    stop = true;
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let Some(hub) = hub.upgrade() else { return };
        if !batch.is_empty() {
            hub.commit(batch);
        }
        if maintain || stop {
            // Age retention in bounded steps; publishes that arrive
            // meanwhile wait at most one step.
            match hub.history.trim() {
                Ok(true) => hub.maintain(),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "history trim failed"),
            }
            if let Err(e) = hub.history.flush() {
                tracing::error!(error = %e, "history flush failed");
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::MemoryHistory;
    use futures_util::StreamExt;

    fn hub(capacity: usize) -> Arc<Hub> {
        Hub::new(
            HubConfig {
                queue_capacity: capacity,
                subscription_events: false,
            },
            Arc::new(MemoryHistory::new(100)),
        )
    }

    fn sub(selectors: &[&str], private: &[&str]) -> Subscription {
        Subscription {
            subscriber_id: Update::generate_id(),
            selectors: selectors
                .iter()
                .map(|s| TopicSelector::uri_template(s).unwrap())
                .collect(),
            private_access: private
                .iter()
                .map(|s| TopicSelector::uri_template(s).unwrap())
                .collect(),
            payload: None,
        }
    }

    fn update(id: &str, topics: &[&str], private: bool) -> Update {
        Update::new(
            id.into(),
            topics.iter().map(|s| s.to_string()).collect(),
            private,
            None,
            None,
            id.into(),
        )
    }

    async fn next_chunk(s: &mut SubscriberStream) -> String {
        let chunk = s.next().await.expect("stream open").expect("infallible");
        String::from_utf8(chunk.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn delivers_once_even_when_several_topics_match() {
        let hub = hub(8);
        let (mut s, _, _) = hub
            .subscribe(sub(&["a", "b", "https://x/{id}"], &[]), None)
            .unwrap();
        hub.publish(update("1", &["a", "b", "https://x/1"], false))
            .await
            .unwrap();
        hub.publish(update("2", &["c"], false)).await.unwrap();
        hub.publish(update("3", &["b"], false)).await.unwrap();
        let got = next_chunk(&mut s).await;
        assert_eq!(got, "id: 1\ndata: 1\n\nid: 3\ndata: 3\n\n");
    }

    #[tokio::test]
    async fn private_updates_need_access() {
        let hub = hub(8);
        let (mut anon, _, _) = hub.subscribe(sub(&["u/{id}"], &[]), None).unwrap();
        let (mut other, _, _) = hub.subscribe(sub(&["u/{id}"], &["u/2"]), None).unwrap();
        let (mut owner, _, _) = hub.subscribe(sub(&["u/{id}"], &["u/1"]), None).unwrap();
        hub.publish(update("p", &["u/1"], true)).await.unwrap();
        hub.publish(update("q", &["u/1"], false)).await.unwrap();
        assert_eq!(
            next_chunk(&mut owner).await,
            "id: p\ndata: p\n\nid: q\ndata: q\n\n"
        );
        assert_eq!(next_chunk(&mut anon).await, "id: q\ndata: q\n\n");
        assert_eq!(next_chunk(&mut other).await, "id: q\ndata: q\n\n");
    }

    #[tokio::test]
    async fn slow_subscriber_is_cut_off_without_losing_queued_events() {
        let hub = hub(2);
        let (mut slow, _, _) = hub.subscribe(sub(&["t"], &[]), None).unwrap();
        let (mut fast, _, _) = hub.subscribe(sub(&["t"], &[]), None).unwrap();
        hub.publish(update("1", &["t"], false)).await.unwrap();
        hub.publish(update("2", &["t"], false)).await.unwrap();
        assert_eq!(
            next_chunk(&mut fast).await,
            "id: 1\ndata: 1\n\nid: 2\ndata: 2\n\n"
        );
        hub.publish(update("3", &["t"], false)).await.unwrap();
        assert_eq!(hub.subscriber_count(), 1);
        assert_eq!(hub.stats.cut_off_slow.load(Ordering::Relaxed), 1);
        assert_eq!(
            next_chunk(&mut slow).await,
            "id: 1\ndata: 1\n\nid: 2\ndata: 2\n\n"
        );
        assert!(slow.next().await.is_none(), "cut-off stream ends");
        assert_eq!(next_chunk(&mut fast).await, "id: 3\ndata: 3\n\n");
    }

    #[tokio::test]
    async fn resume_replays_then_goes_live() {
        let hub = hub(8);
        for id in ["1", "2", "3"] {
            hub.publish(update(id, &["t"], false)).await.unwrap();
        }
        let (mut s, head, found) = hub
            .subscribe(sub(&["t"], &[]), Some(ResumeFrom::After("1".into())))
            .unwrap();
        assert_eq!(head.as_deref(), Some("3"));
        assert!(found);
        hub.publish(update("4", &["t"], false)).await.unwrap();
        assert_eq!(
            next_chunk(&mut s).await,
            "id: 2\ndata: 2\n\nid: 3\ndata: 3\n\n"
        );
        assert_eq!(next_chunk(&mut s).await, "id: 4\ndata: 4\n\n");
    }

    #[tokio::test]
    async fn dropping_the_stream_unregisters() {
        let hub = hub(8);
        let (s, _, _) = hub.subscribe(sub(&["t"], &[]), None).unwrap();
        assert_eq!(hub.subscriber_count(), 1);
        drop(s);
        assert_eq!(hub.subscriber_count(), 0);
        assert!(hub.subscriptions().is_empty());
    }

    #[tokio::test]
    async fn close_ends_streams_and_refuses_new_ones() {
        let hub = hub(8);
        let (mut s, _, _) = hub.subscribe(sub(&["t"], &[]), None).unwrap();
        hub.close();
        assert!(s.next().await.is_none());
        assert!(matches!(
            hub.subscribe(sub(&["t"], &[]), None),
            Err(HubError::ShuttingDown)
        ));
        assert!(matches!(
            hub.publish(update("x", &["t"], false)).await,
            Err(HubError::ShuttingDown)
        ));
    }

    #[tokio::test]
    async fn subscription_events_are_private_updates() {
        let hub = Hub::new(
            HubConfig {
                queue_capacity: 8,
                subscription_events: true,
            },
            Arc::new(MemoryHistory::new(100)),
        );
        let (mut watcher, _, _) = hub
            .subscribe(
                sub(
                    &["/.well-known/mercure/subscriptions{/topic}{/subscriber}"],
                    &["*"],
                ),
                None,
            )
            .unwrap();
        let (_first, _, _) = hub
            .subscribe(sub(&["https://ex.net/a"], &[]), None)
            .unwrap();
        let chunk = next_chunk(&mut watcher).await;
        // The watcher sees its own connection event and the other one's.
        assert!(chunk.contains("https%3A%2F%2Fex.net%2Fa"), "{chunk}");
        assert!(
            chunk.contains("\\\"active\\\":true") || chunk.contains("\"active\":true"),
            "{chunk}"
        );
    }
}
