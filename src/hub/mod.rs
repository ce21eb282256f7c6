//! The hub: who is subscribed to what, and getting each update to them.
//!
//! Nothing here knows HTTP. The HTTP layer turns a request into a
//! [`Subscription`] and a [`SubscriberStream`] back into a response body.
//!
//! Data flow: `publish` hands the update to the committer, one thread that
//! takes every update waiting at that moment as one batch, appends the batch
//! to history (one durable write for all of them: group commit), then, under
//! the order lock, offers each update's shared frame to every matching
//! subscriber's bounded queue, and only then answers each publisher. One
//! thread doing both keeps delivery in sequence order, and a publisher is
//! never told "done" before its update is in history.
//!
//! A queue that is full means that subscriber cannot keep up: it is cut off
//! at the first update it cannot take (its stream ends after what is already
//! queued, and nothing later is ever queued for it), and it resumes from
//! history by `Last-Event-ID`. A slow client therefore never slows the
//! others, never grows memory without bound, and never skips an update
//! without knowing.
//!
//! Faults are visible: a history write that fails answers its publishers
//! 503 and marks the hub not ready ([`Hub::readiness`]) until a write
//! succeeds again (the committer probes once a second); a panic while
//! committing fails that batch's publishers and is reported the same way,
//! and the committer carries on with the next batch.

mod queue;
mod registry;
mod status;
mod stream;

pub use crate::update::Update;
pub use registry::SubscriptionInfo;
pub use status::{HistoryStatus, HubStatus, STATUS_EVENT_TYPE, STATUS_TOPIC};
pub use stream::SubscriberStream;

use std::panic::AssertUnwindSafe;
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
use stream::ReplayCursor;

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
    /// selectors are already known to match (topics prepared once).
    pub fn may_read(&self, update: &Update, topics: &[crate::topic::PreparedTopic<'_>]) -> bool {
        may_see(&self.private_access, update, topics)
    }

    /// May this subscriber know of this update at all, whatever it asked
    /// for? An update it may not see behaves, in every answer, like one that
    /// does not exist.
    pub fn may_see(&self, update: &Update) -> bool {
        may_see(
            &self.private_access,
            update,
            &crate::topic::prepare(&update.topics),
        )
    }
}

/// The one rule of who may know of an update: it is public, or a grant of
/// these private-access selectors matches one of its topics.
fn may_see(
    private_access: &[TopicSelector],
    update: &Update,
    topics: &[crate::topic::PreparedTopic<'_>],
) -> bool {
    !update.private || crate::topic::any_matches_prepared(private_access, topics)
}

/// A registered subscriber, as [`Hub::subscribe`] hands it back.
pub struct Subscribed {
    /// Replay (if resuming), then live updates.
    pub stream: SubscriberStream,
    /// The newest update in history that this subscriber may see, at the
    /// moment it was registered (the deployed dialect's `Last-Event-ID`
    /// response header); `None` when there is none.
    pub head_id: Option<String>,
    /// Whether the requested resume point was found among the updates
    /// this subscriber may see (an unknown, discarded or invisible id is
    /// not: nothing is replayed, and the answer says `earliest`).
    pub resumed: bool,
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
    /// History cannot store updates right now (disk full, I/O error, a
    /// failed commit): nothing was published; retrying later is safe.
    #[error("{0}")]
    Unavailable(String),
    #[error("the hub is shutting down")]
    ShuttingDown,
}

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
    history: Arc<dyn HistoryStore>,
    /// Where publishes queue for the committer thread.
    commits: Mutex<Option<std_mpsc::Sender<CommitRequest>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Why the hub cannot store updates right now, if it cannot.
    fault: Mutex<Option<String>>,
    /// Bounds replay pages read at once (see `stream`).
    replay_reads: Arc<tokio::sync::Semaphore>,
    next_key: AtomicU64,
    closed: AtomicBool,
    /// Cluster mode: publishes go to the shared log, and the log's tail
    /// feeds the committer ([`Hub::apply`]).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    pub stats: HubStats,
}

/// Where live delivery stands.
#[derive(Debug, Default)]
struct Head {
    /// Sequence number of the newest update delivered live.
    seq: u64,
    /// That update.
    newest: Option<Arc<Update>>,
    /// The id of the newest public update, for subscribers that may not
    /// see `newest`.
    newest_public: Option<String>,
}

impl Head {
    /// The newest id a holder of these grants may know of.
    fn visible_id(&self, private_access: &[TopicSelector]) -> Option<String> {
        match &self.newest {
            Some(u) if may_see(private_access, u, &crate::topic::prepare(&u.topics)) => {
                Some(u.id.clone())
            }
            _ => self.newest_public.clone(),
        }
    }

    fn advance(&mut self, seq: u64, update: &Arc<Update>) {
        self.seq = seq;
        if !update.private {
            self.newest_public = Some(update.id.clone());
        }
        self.newest = Some(update.clone());
    }
}

/// Where the committer answers a publisher.
type Reply = oneshot::Sender<Result<(), HubError>>;

/// One update waiting for the committer.
struct Pending {
    update: Arc<Update>,
    /// None for the hub's own subscription events.
    reply: Option<Reply>,
    /// Stored in history (published updates) or delivered live only
    /// (subscription events: connection churn must never evict published
    /// updates from history, nor be replayed).
    durable: bool,
    /// Part of an all-or-nothing batch publish: the same number for every
    /// update of one request, whose reply rides on its last update.
    group: Option<u64>,
    /// The publisher chose the id, so it may already be in history: a
    /// batch group looks it up before anything is written. An id the hub
    /// generated (122 random bits) needs no look-up.
    chosen_id: bool,
}

/// Who chose an update's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdOrigin {
    /// The hub ([`Update::generate_id`]).
    Generated,
    /// The publisher: it may clash with one in history.
    Chosen,
}

enum CommitRequest {
    Publish(Pending),
    /// Every update of one batch publish, committed together or not at all.
    PublishAll(Vec<Pending>),
    /// Enforce the age limit of history, flush relaxed writes, and probe a
    /// faulty store.
    Maintain,
    /// Commit what came before, flush, and end the thread.
    Stop,
}

/// Most updates committed in one batch.
const MAX_BATCH: usize = 1024;

/// How far back startup looks for the newest public update.
const PUBLIC_HEAD_SCAN: u64 = 1024;

/// The prefix of the reserved topic namespace.
pub const RESERVED_PREFIX: &str = "/.well-known/mercure";

impl Hub {
    pub fn new(config: HubConfig, history: Arc<dyn HistoryStore>) -> Arc<Hub> {
        let head = initial_head(history.as_ref());
        let (tx, rx) = std_mpsc::channel();
        let hub = Arc::new(Hub {
            config,
            registry: RwLock::new(Registry::default()),
            order: Mutex::new(head),
            history,
            commits: Mutex::new(Some(tx)),
            committer: Mutex::new(None),
            fault: Mutex::new(None),
            replay_reads: Arc::new(tokio::sync::Semaphore::new(stream::CONCURRENT_REPLAY_READS)),
            next_key: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            cluster: std::sync::OnceLock::new(),
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

    pub fn history(&self) -> &Arc<dyn HistoryStore> {
        &self.history
    }

    /// Join a cluster: from now on publishes go to its log, and only its
    /// tail delivers. Set once, before serving.
    pub fn set_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Cluster mode: store and deliver updates read from the shared log,
    /// in log order (the cluster's merger calls this for each run it
    /// applies and waits for it, so runs never overtake each other).
    ///
    /// `durable: false` marks live-only events (subscription events from
    /// any node): delivered, never stored.
    pub async fn apply(&self, updates: Vec<Arc<Update>>, durable: bool) -> Result<(), HubError> {
        let updates = updates.into_iter().map(|u| (u, false));
        self.commit_together(updates, durable, None).await
    }

    /// Hand updates to the committer as one request, in order, and wait
    /// for its answer, which rides on the last of them. `(update,
    /// chosen_id)` pairs; `group` makes them all-or-nothing.
    async fn commit_together(
        &self,
        updates: impl ExactSizeIterator<Item = (Arc<Update>, bool)>,
        durable: bool,
        group: Option<u64>,
    ) -> Result<(), HubError> {
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
        self.enqueue(CommitRequest::PublishAll(pending))?;
        // A dropped reply means the committer stopped (or panicked) before
        // these updates were stored.
        answer.await.map_err(|_| self.stopped_error())??;
        Ok(())
    }

    /// Active subscriptions across the cluster (this node's alone on a
    /// single node). `Err` when other nodes' cannot be read (Redis down).
    pub async fn subscriptions_everywhere(&self) -> Result<Vec<SubscriptionInfo>, HubError> {
        let mut all = self.subscriptions();
        if let Some(cluster) = self.cluster.get() {
            let others = cluster.subscriptions_elsewhere().await.map_err(|e| {
                HubError::Unavailable(format!("cannot list the other nodes' subscriptions: {e}"))
            })?;
            all.extend(others);
            all.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Ok(all)
    }

    /// Cluster mode: the log was reset or this node missed part of it;
    /// drop history so no resume silently skips what is gone.
    pub fn forget_history(&self) {
        if let Err(e) = self.history.discard_all() {
            tracing::error!(error = %e, "could not drop history after a log reset");
        }
    }

    fn enqueue(&self, request: CommitRequest) -> Result<(), HubError> {
        match &*self.commits.lock() {
            Some(tx) => tx.send(request).map_err(|_| self.stopped_error()),
            None => Err(HubError::ShuttingDown),
        }
    }

    /// Why a publish got no answer from the committer.
    fn stopped_error(&self) -> HubError {
        if self.is_closed() {
            HubError::ShuttingDown
        } else {
            HubError::Unavailable(
                "the update was not stored: the hub's committer failed while handling it (see /readyz and the log); it is safe to retry".into(),
            )
        }
    }

    /// A fresh id for an update whose first topic is `topic` (in cluster
    /// mode, one kept on the same Redis as the update).
    pub fn generate_id(&self, topic: &str) -> String {
        match self.cluster.get() {
            Some(cluster) => cluster.generate_id(topic),
            None => Update::generate_id(),
        }
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
        if let Some(cluster) = self.cluster.get() {
            let chosen = origin == IdOrigin::Chosen;
            cluster
                .append(std::slice::from_ref(&update), &[chosen])
                .await?;
            return Ok(update);
        }
        let (reply, answer) = oneshot::channel();
        self.enqueue(CommitRequest::Publish(Pending {
            update: update.clone(),
            reply: Some(reply),
            durable: true,
            group: None,
            chosen_id: origin == IdOrigin::Chosen,
        }))?;
        // A dropped reply means the committer stopped (or panicked) before
        // this update was stored.
        answer.await.map_err(|_| self.stopped_error())??;
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
        if let Some(cluster) = self.cluster.get() {
            cluster.append(&updates, &chosen).await?;
            return Ok(updates);
        }
        let group = self.next_key.fetch_add(1, Ordering::Relaxed);
        let pairs = updates.iter().cloned().zip(chosen);
        self.commit_together(pairs, true, Some(group)).await?;
        Ok(updates)
    }

    /// Refuse, before anything is written, every batch group with an id
    /// that history already holds or that an earlier update of this commit
    /// uses: a group is all or nothing, so it must not reach the store's
    /// per-update duplicate check. The committer is the only writer, so
    /// what `lookup` says holds until the append.
    fn refuse_duplicate_groups(
        &self,
        batch: Vec<Pending>,
        replies: &mut Vec<Option<Reply>>,
    ) -> Vec<Pending> {
        use std::collections::{hash_map::Entry, HashMap, HashSet};
        let mut seen: HashSet<&str> = HashSet::new();
        // Refused groups, with the error their reply (on their last
        // update) is sent.
        let mut refused: HashMap<u64, Option<HubError>> = HashMap::new();
        for p in &batch {
            let id = p.update.id.as_str();
            if let Some(g) = p.group {
                if let Entry::Vacant(slot) = refused.entry(g) {
                    let why = if seen.contains(id) {
                        Some(HistoryError::DuplicateId(id.to_string()).into())
                    } else if !p.chosen_id {
                        None
                    } else {
                        match self.history.lookup(id) {
                            Ok(Some(_)) => Some(HistoryError::DuplicateId(id.to_string()).into()),
                            Ok(None) => None,
                            Err(e) => Some(HubError::Unavailable(format!(
                                "history cannot be read: {e}"
                            ))),
                        }
                    };
                    if let Some(why) = why {
                        slot.insert(Some(why));
                    }
                }
            }
            if p.durable {
                seen.insert(id);
            }
        }
        if refused.is_empty() {
            return batch;
        }
        let mut kept = Vec::with_capacity(batch.len());
        let mut kept_replies = Vec::with_capacity(batch.len());
        for (p, reply) in batch.into_iter().zip(replies.drain(..)) {
            match p.group.and_then(|g| refused.get_mut(&g)) {
                Some(why) => {
                    if let Some(reply) = reply {
                        if let Some(why) = why.take() {
                            let _ = reply.send(Err(why));
                        }
                    }
                }
                None => {
                    kept.push(p);
                    kept_replies.push(reply);
                }
            }
        }
        *replies = kept_replies;
        kept
    }

    /// Ask the committer to enforce history's age limit (called
    /// periodically by the server).
    pub fn maintain(&self) {
        let _ = self.enqueue(CommitRequest::Maintain);
    }

    /// Is the hub able to take publishes? `Err` says why not, for
    /// `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        if self.is_closed() {
            return Err("shutting down".into());
        }
        if let Some(cluster) = self.cluster.get() {
            cluster.readiness()?;
        }
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

    fn set_fault(&self, reason: String) {
        let mut fault = self.fault.lock();
        if fault.as_deref() != Some(reason.as_str()) {
            tracing::error!(%reason, "history cannot store updates; publishes answer 503 until it recovers");
        }
        *fault = Some(reason);
    }

    fn clear_fault(&self) {
        if self.fault.lock().take().is_some() {
            tracing::info!("history is writable again; the hub is ready");
        }
    }

    /// Commit one batch, deliver it in order, answer its publishers:
    /// `replies[i]` belongs to `batch[i]` and is taken when answered, so
    /// after a panic the caller still holds the unanswered ones.
    fn commit(&self, batch: Vec<Pending>, replies: &mut Vec<Option<Reply>>) {
        let batch = if batch.iter().any(|p| p.group.is_some()) {
            self.refuse_duplicate_groups(batch, replies)
        } else {
            batch
        };
        let durable: Vec<Arc<Update>> = batch
            .iter()
            .filter(|p| p.durable)
            .map(|p| p.update.clone())
            .collect();
        let mut results = if durable.is_empty() {
            Vec::new()
        } else {
            match self.history.append_batch(&durable) {
                Ok(r) => {
                    self.clear_fault();
                    r
                }
                Err(e) => {
                    self.stats.storage_errors.fetch_add(1, Ordering::Relaxed);
                    let reason = format!("history cannot store updates: {e}");
                    self.set_fault(reason.clone());
                    let message =
                        format!("{reason}; the update was not published (it may still be stored if the write reached the disk: retry with the same id, a 409 then means it was)");
                    for reply in replies.iter_mut().filter_map(Option::take) {
                        let _ = reply.send(Err(HubError::Unavailable(message.clone())));
                    }
                    return;
                }
            }
        }
        .into_iter();
        let mut cut_off = Vec::new();
        let mut published = 0;
        let mut answers = Vec::with_capacity(durable.len());
        // A group whose member failed answers with that failure.
        let mut group_error: Option<(u64, String)> = None;
        {
            let mut head = self.order.lock();
            for (p, reply) in batch.into_iter().zip(replies.iter_mut()) {
                if !p.durable {
                    if Hub::is_status_event(&p.update) {
                        self.deliver_status(&p.update, &mut cut_off);
                    } else {
                        self.fan_out(&p.update, &mut cut_off);
                    }
                    continue;
                }
                let mut result = results.next().unwrap_or_else(|| {
                    Err(HistoryError::Storage(
                        "the store returned fewer results than updates".into(),
                    ))
                });
                match &result {
                    Ok(seq) => {
                        self.fan_out(&p.update, &mut cut_off);
                        head.advance(*seq, &p.update);
                        published += 1;
                    }
                    Err(e) => {
                        if let Some(g) = p.group {
                            group_error.get_or_insert((g, e.to_string()));
                        }
                    }
                }
                if let (Some(g), Some((failed, why))) = (p.group, &group_error) {
                    if g == *failed && result.is_ok() {
                        result = Err(HistoryError::Storage(format!(
                            "part of the batch was not stored: {why}"
                        )));
                    }
                }
                answers.push((reply.take(), result));
            }
        }
        self.stats.published.fetch_add(published, Ordering::Relaxed);
        self.remove_many(&cut_off);
        for (reply, result) in answers {
            if let Some(reply) = reply {
                let _ = reply.send(result.map(|_| ()).map_err(HubError::from));
            }
        }
    }

    /// Offer the update to every matching subscriber; collects the keys of
    /// those cut off (queue full) or gone.
    fn fan_out(&self, update: &Update, cut_off: &mut Vec<u64>) {
        let registry = self.registry.read();
        let mut delivered = 0u64;
        // Each topic is prepared (its URL parsed) once for every pattern.
        let topics = crate::topic::prepare(&update.topics);
        registry.for_each_matching(&topics, |key, entry| {
            if !entry.subscription.may_read(update, &topics) {
                return;
            }
            match entry.tx.offer(update.frame.clone()) {
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

    /// Register a subscriber. With `resume`, its stream first replays what
    /// it missed (read page by page as it drains), then continues live;
    /// both halves are split at one sequence number taken under the order
    /// lock, so nothing is missed or repeated. History is read on the
    /// blocking pool, never on an async worker.
    pub async fn subscribe(
        self: &Arc<Self>,
        subscription: Subscription,
        resume: Option<ResumeFrom>,
    ) -> Result<Subscribed, HubError> {
        // The status page watches the node whatever its state.
        let status_only = subscription
            .selectors
            .iter()
            .all(|s| matches!(s, TopicSelector::Exact(t) if t == status::STATUS_TOPIC));
        if let (Some(cluster), false) = (self.cluster.get(), status_only) {
            if !cluster.is_caught_up() {
                return Err(HubError::Unavailable(format!(
                    "node {} is still reading the cluster log; retry in a moment",
                    cluster.node_id()
                )));
            }
        }
        if resume.is_none() {
            // Nothing to read from history: registering takes two short
            // locks, cheaper than a hop to the blocking pool (which halved
            // connects per second under churn).
            return self.subscribe_blocking(subscription, None);
        }
        if let (Some(cluster), Some(ResumeFrom::After(id))) = (self.cluster.get(), &resume) {
            // An id published through a faster node: wait (bounded) until
            // this node has applied it, then resume as usual. A node that
            // cannot tell, or is still behind after the wait, says so (503)
            // rather than resume from the wrong place.
            if self.history.lookup(id)?.is_none() {
                let position = cluster.position_of(id).await.map_err(|e| {
                    HubError::Unavailable(format!("cannot look up {id:?} in the cluster log: {e}"))
                })?;
                if let Some(position) = position {
                    if !cluster
                        .wait_applied(position, crate::cluster::RESUME_HOLD)
                        .await
                    {
                        return Err(HubError::Unavailable(format!(
                            "node {} has not yet received update {id:?} from the cluster log; retry in a moment",
                            cluster.node_id()
                        )));
                    }
                }
            }
        }
        let hub = self.clone();
        tokio::task::spawn_blocking(move || hub.subscribe_blocking(subscription, resume))
            .await
            .map_err(|e| HubError::Unavailable(format!("subscribing failed: {e}")))?
    }

    fn subscribe_blocking(
        self: &Arc<Self>,
        subscription: Subscription,
        resume: Option<ResumeFrom>,
    ) -> Result<Subscribed, HubError> {
        if self.is_closed() {
            return Err(HubError::ShuttingDown);
        }
        let subscription = Arc::new(subscription);
        // Where the replay starts. Looked up before registering: if
        // retention removes it meanwhile, the stream sees the gap and ends
        // rather than skip anything.
        let (start, resumed) = match &resume {
            None => (None, false),
            Some(ResumeFrom::Earliest) => (Some(self.history.first_seq()), false),
            Some(ResumeFrom::After(id)) => match self.history.lookup(id)? {
                Some(seq) => {
                    let anchor = self.history.read_range(seq, seq, 1)?;
                    match anchor.first() {
                        Some((_, u)) if subscription.may_see(u) => (Some(seq + 1), true),
                        _ => (None, false),
                    }
                }
                None => (None, false),
            },
        };
        let (tx, rx) = queue::queue(self.config.queue_capacity);
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let (cursor, head_id) = {
            let head = self.order.lock();
            self.registry.write().insert(key, subscription.clone(), tx);
            (head.seq, head.visible_id(&subscription.private_access))
        };
        let head_id = head_id.filter(|_| !self.history.is_empty());
        let replay = start.filter(|s| *s <= cursor).map(|next| ReplayCursor {
            next,
            upto: cursor,
            strict: resumed,
        });
        if self.config.subscription_events {
            self.publish_subscription_events(&subscription, true);
        }
        Ok(Subscribed {
            stream: SubscriberStream::new(self.clone(), key, subscription, replay, rx),
            head_id,
            resumed,
        })
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
        if self.config.subscription_events && !self.is_closed() {
            for sub in removed {
                self.publish_subscription_events(&sub, false);
            }
        }
    }

    /// Subscription events are delivered live, in order with published
    /// updates, but never stored: anonymous connection churn must not
    /// evict real updates from history.
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
            if let Some(cluster) = self.cluster.get() {
                // Through the log, so every node (this one too) delivers
                // it; and into this node's presence in Redis.
                cluster.subscription_changed(Some(Arc::new(update)), info);
                continue;
            }
            if let Err(e) = self.enqueue(CommitRequest::Publish(Pending {
                update: Arc::new(update),
                reply: None,
                durable: false,
                group: None,
                chosen_id: false,
            })) {
                tracing::warn!(error = %e, "could not publish subscription event");
            }
        }
    }

    /// The id of the newest update in history that a holder of these
    /// private-access grants may see (`None` when there is none): what the
    /// subscriptions API reports as `lastEventID`. The raw newest id may be
    /// a private update's, which must not leak.
    pub fn newest_visible_id(&self, private_access: &[TopicSelector]) -> Option<String> {
        let id = self.order.lock().visible_id(private_access);
        id.filter(|_| !self.history.is_empty())
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
                .filter_map(
                    |(key, entry)| match entry.tx.offer_keep_alive(KEEP_ALIVE.clone()) {
                        Err(PushError::Closed) => Some(key),
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

    /// Between batches, with a fault: try the store again, so the hub
    /// recovers by itself when the fault goes away (space freed, device
    /// back).
    fn probe_storage(&self) {
        if self.fault.lock().is_none() {
            return;
        }
        match self.history.probe() {
            Ok(()) => self.clear_fault(),
            Err(e) => self.set_fault(format!("history cannot store updates: {e}")),
        }
    }
}

/// Where live delivery stands when the hub starts: at the newest update in
/// history.
fn initial_head(history: &dyn HistoryStore) -> Head {
    let (seq, _) = history.head();
    let mut head = Head {
        seq,
        ..Head::default()
    };
    if seq == 0 || history.is_empty() {
        return head;
    }
    let from = seq
        .saturating_sub(PUBLIC_HEAD_SCAN - 1)
        .max(history.first_seq());
    match history.read_range(from, seq, PUBLIC_HEAD_SCAN as usize) {
        Ok(recent) => {
            head.newest = recent.last().map(|(_, u)| u.clone());
            head.newest_public = recent
                .iter()
                .rev()
                .find(|(_, u)| !u.private)
                .map(|(_, u)| u.id.clone());
        }
        Err(e) => tracing::warn!(error = %e, "could not read the newest updates from history"),
    }
    head
}

/// A panic's message, for the log and `/readyz`.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The committer thread: batch whatever is waiting, commit, deliver, repeat.
/// Supervised in place: a panic while committing fails that batch (its
/// publishers' replies are dropped, so they answer 503), is reported on
/// `/readyz` until a later batch commits, and the loop goes on.
fn run_committer(hub: Weak<Hub>, rx: std_mpsc::Receiver<CommitRequest>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut maintain = false;
        let mut stop = false;
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                CommitRequest::Publish(pending) => batch.push(pending),
                CommitRequest::PublishAll(group) => batch.extend(group),
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
            let mut replies: Vec<Option<Reply>> =
                batch.iter_mut().map(|p| p.reply.take()).collect();
            let committed =
                std::panic::catch_unwind(AssertUnwindSafe(|| hub.commit(batch, &mut replies)));
            if let Err(panic) = committed {
                hub.stats.committer_panics.fetch_add(1, Ordering::Relaxed);
                let reason = format!(
                    "the committer panicked ({}); that batch was refused with 503",
                    panic_message(panic.as_ref())
                );
                hub.set_fault(reason.clone());
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(HubError::Unavailable(format!(
                        "{reason}; the update may not have been stored: retry it"
                    ))));
                }
            }
        }
        if maintain || stop {
            let step = std::panic::catch_unwind(AssertUnwindSafe(|| {
                hub.probe_storage();
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
            }));
            if let Err(panic) = step {
                tracing::error!(
                    panic = panic_message(panic.as_ref()),
                    "history maintenance panicked"
                );
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

    /// A batch whose ids the publisher chose (so they are checked).
    fn chosen(updates: Vec<Update>) -> Vec<(Update, IdOrigin)> {
        updates.into_iter().map(|u| (u, IdOrigin::Chosen)).collect()
    }
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
        let mut s = hub
            .subscribe(sub(&["a", "b", "https://x/{id}"], &[]), None)
            .await
            .unwrap()
            .stream;
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
        let mut anon = hub
            .subscribe(sub(&["u/{id}"], &[]), None)
            .await
            .unwrap()
            .stream;
        let mut other = hub
            .subscribe(sub(&["u/{id}"], &["u/2"]), None)
            .await
            .unwrap()
            .stream;
        let mut owner = hub
            .subscribe(sub(&["u/{id}"], &["u/1"]), None)
            .await
            .unwrap()
            .stream;
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
        let mut slow = hub.subscribe(sub(&["t"], &[]), None).await.unwrap().stream;
        let mut fast = hub.subscribe(sub(&["t"], &[]), None).await.unwrap().stream;
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

    /// Drain a stream to its end on a task, parsing the ids received.
    fn read_ids(mut s: SubscriberStream) -> tokio::task::JoinHandle<Vec<String>> {
        tokio::spawn(async move {
            let mut parser = crate::sse::SseParser::new();
            let mut ids = Vec::new();
            while let Some(Ok(chunk)) = s.next().await {
                ids.extend(parser.feed(&chunk).into_iter().map(|e| e.id));
                tokio::task::yield_now().await;
            }
            ids
        })
    }

    /// The data-loss bug this guards against: within one committed batch,
    /// update k+1 was refused (queue full), the subscriber drained a
    /// little, update k+2 was accepted, and the client later resumed after
    /// k+2, never learning that k+1 existed. Now the first refusal ends the
    /// subscriber: what it receives is always a gap-free prefix.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_off_subscriber_receives_a_gap_free_prefix() {
        for round in 0..300 {
            let hub = hub(4);
            let reader = read_ids(hub.subscribe(sub(&["t"], &[]), None).await.unwrap().stream);
            let expected: Vec<String> = (0..64).map(|i| format!("{round}-{i}")).collect();
            let batch: Vec<Pending> = expected
                .iter()
                .map(|id| Pending {
                    update: Arc::new(update(id, &["t"], false)),
                    reply: None,
                    durable: true,
                    group: None,
                    chosen_id: true,
                })
                .collect();
            // Committed on another thread while the reader drains.
            let committer = hub.clone();
            tokio::task::spawn_blocking(move || {
                let mut replies: Vec<Option<Reply>> = batch.iter().map(|_| None).collect();
                committer.commit(batch, &mut replies)
            })
            .await
            .unwrap();
            hub.close();
            let got = reader.await.unwrap();
            assert_eq!(got, expected[..got.len()], "round {round}: a gap");
            assert!(hub.stats.cut_off_slow.load(Ordering::Relaxed) <= 1);
        }
    }

    #[tokio::test]
    async fn a_batch_is_stored_and_delivered_whole_or_not_at_all() {
        let hub = hub(64);
        let mut s = hub.subscribe(sub(&["t"], &[]), None).await.unwrap().stream;
        hub.publish(update("taken", &["t"], false)).await.unwrap();
        // One id already in history refuses the whole batch.
        let err = hub
            .publish_batch(chosen(vec![
                update("b1", &["t"], false),
                update("taken", &["t"], false),
            ]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, HubError::History(HistoryError::DuplicateId(ref id)) if id == "taken")
        );
        // So does an id repeated inside it.
        assert!(hub
            .publish_batch(chosen(vec![
                update("b1", &["t"], false),
                update("b1", &["t"], false)
            ]))
            .await
            .is_err());
        let stored = hub
            .publish_batch(chosen(vec![
                update("b1", &["t"], false),
                update("b2", &["t"], false),
                update("b3", &["t"], false),
            ]))
            .await
            .unwrap();
        assert_eq!(stored.len(), 3);
        let mut got = String::new();
        while !got.contains("id: b3") {
            got.push_str(&next_chunk(&mut s).await);
        }
        assert_eq!(
            got,
            "id: taken\ndata: taken\n\nid: b1\ndata: b1\n\nid: b2\ndata: b2\n\nid: b3\ndata: b3\n\n",
            "nothing of the refused batches, the accepted one in order"
        );
        let r = hub
            .history()
            .replay(&ResumeFrom::Earliest, u64::MAX)
            .unwrap();
        let ids: Vec<&str> = r.updates.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["taken", "b1", "b2", "b3"]);
    }

    /// A store whose appends panic: the committer must survive it.
    struct PanickingHistory(MemoryHistory, AtomicBool);

    impl HistoryStore for PanickingHistory {
        fn append_batch(
            &self,
            updates: &[Arc<Update>],
        ) -> Result<Vec<crate::history::AppendResult>, HistoryError> {
            if self.1.swap(false, Ordering::SeqCst) {
                panic!("injected fault");
            }
            self.0.append_batch(updates)
        }
        fn head(&self) -> (u64, Option<String>) {
            self.0.head()
        }
        fn lookup(&self, id: &str) -> Result<Option<u64>, HistoryError> {
            self.0.lookup(id)
        }
        fn first_seq(&self) -> u64 {
            self.0.first_seq()
        }
        fn read_range(
            &self,
            start: u64,
            upto: u64,
            max: usize,
        ) -> Result<Vec<(u64, Arc<Update>)>, HistoryError> {
            self.0.read_range(start, upto, max)
        }
        fn len(&self) -> usize {
            self.0.len()
        }
    }

    #[tokio::test]
    async fn a_panicking_commit_fails_its_batch_and_the_committer_goes_on() {
        let hub = Hub::new(
            HubConfig::default(),
            Arc::new(PanickingHistory(
                MemoryHistory::new(10),
                AtomicBool::new(true),
            )),
        );
        let err = hub.publish(update("1", &["t"], false)).await.unwrap_err();
        assert!(matches!(err, HubError::Unavailable(_)), "{err:?}");
        let reason = hub.readiness().unwrap_err();
        assert!(reason.contains("injected fault"), "{reason}");
        assert_eq!(hub.stats.committer_panics.load(Ordering::Relaxed), 1);
        // The next batch commits, and the hub is ready again.
        hub.publish(update("2", &["t"], false)).await.unwrap();
        assert_eq!(hub.readiness(), Ok(()));
    }

    #[tokio::test]
    async fn private_ids_are_invisible_to_those_who_may_not_see_them() {
        let hub = hub(8);
        hub.publish(update("pub", &["u/1"], false)).await.unwrap();
        hub.publish(update("secret", &["u/1"], true)).await.unwrap();
        // The newest id is private: an anonymous subscriber is told the
        // newest public one, the owner the private one.
        let anon = hub.subscribe(sub(&["u/{id}"], &[]), None).await.unwrap();
        assert_eq!(anon.head_id.as_deref(), Some("pub"));
        let owner = hub
            .subscribe(sub(&["u/{id}"], &["u/1"]), None)
            .await
            .unwrap();
        assert_eq!(owner.head_id.as_deref(), Some("secret"));
        // Resuming from a private id it may not see is the same as from an
        // unknown id: nothing replayed, not resumed.
        let from_secret = hub
            .subscribe(
                sub(&["u/{id}"], &[]),
                Some(ResumeFrom::After("secret".into())),
            )
            .await
            .unwrap();
        let from_unknown = hub
            .subscribe(
                sub(&["u/{id}"], &[]),
                Some(ResumeFrom::After("nope".into())),
            )
            .await
            .unwrap();
        assert!(!from_secret.resumed && !from_unknown.resumed);
        let from_pub = hub
            .subscribe(sub(&["u/{id}"], &[]), Some(ResumeFrom::After("pub".into())))
            .await
            .unwrap();
        assert!(from_pub.resumed);
        hub.publish(update("after", &["u/1"], false)).await.unwrap();
        let mut s = from_pub.stream;
        // "secret" is skipped in the replay; "after" arrives live.
        assert_eq!(next_chunk(&mut s).await, "id: after\ndata: after\n\n");
    }

    #[tokio::test]
    async fn subscription_events_never_enter_history() {
        let hub = Hub::new(
            HubConfig {
                queue_capacity: 8,
                subscription_events: true,
            },
            Arc::new(MemoryHistory::new(3)),
        );
        for id in ["a", "b", "c"] {
            hub.publish(update(id, &["t"], false)).await.unwrap();
        }
        for _ in 0..50 {
            drop(hub.subscribe(sub(&["t"], &[]), None).await.unwrap());
        }
        // Flush the committer: a publish after the churn.
        hub.publish(update("d", &["t"], false)).await.unwrap();
        let r = hub
            .history()
            .replay(&ResumeFrom::After("b".into()), u64::MAX)
            .unwrap();
        assert!(r.found, "connection churn evicted a published update");
        let ids: Vec<&str> = r.updates.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["c", "d"]);
    }

    #[tokio::test]
    async fn replay_reads_page_by_page_and_ends_at_a_gap() {
        let hub = hub(8);
        let n = stream::REPLAY_PAGE * 3 + 7;
        for i in 0..n {
            hub.publish(update(&format!("u{i}"), &["t"], false))
                .await
                .unwrap();
        }
        let s = hub
            .subscribe(sub(&["t"], &[]), Some(ResumeFrom::Earliest))
            .await
            .unwrap();
        let reader = read_ids(s.stream);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        hub.close();
        let got = reader.await.unwrap();
        // MemoryHistory(100) keeps the newest 100.
        let expected: Vec<String> = (n - 100..n).map(|i| format!("u{i}")).collect();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn resume_replays_then_goes_live() {
        let hub = hub(8);
        for id in ["1", "2", "3"] {
            hub.publish(update(id, &["t"], false)).await.unwrap();
        }
        let subscribed = hub
            .subscribe(sub(&["t"], &[]), Some(ResumeFrom::After("1".into())))
            .await
            .unwrap();
        assert_eq!(subscribed.head_id.as_deref(), Some("3"));
        assert!(subscribed.resumed);
        let mut s = subscribed.stream;
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
        let s = hub.subscribe(sub(&["t"], &[]), None).await.unwrap().stream;
        assert_eq!(hub.subscriber_count(), 1);
        drop(s);
        assert_eq!(hub.subscriber_count(), 0);
        assert!(hub.subscriptions().is_empty());
    }

    #[tokio::test]
    async fn close_ends_streams_and_refuses_new_ones() {
        let hub = hub(8);
        let mut s = hub.subscribe(sub(&["t"], &[]), None).await.unwrap().stream;
        hub.close();
        assert!(s.next().await.is_none());
        assert!(matches!(
            hub.subscribe(sub(&["t"], &[]), None).await,
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
        let mut watcher = hub
            .subscribe(
                sub(
                    &["/.well-known/mercure/subscriptions{/topic}{/subscriber}"],
                    &["*"],
                ),
                None,
            )
            .await
            .unwrap()
            .stream;
        let _first = hub
            .subscribe(sub(&["https://ex.net/a"], &[]), None)
            .await
            .unwrap()
            .stream;
        let mut chunk = next_chunk(&mut watcher).await;
        if !chunk.contains("https%3A%2F%2Fex.net%2Fa") {
            chunk.push_str(&next_chunk(&mut watcher).await);
        }
        // The watcher sees its own connection event and the other one's.
        assert!(chunk.contains("https%3A%2F%2Fex.net%2Fa"), "{chunk}");
        assert!(
            chunk.contains("\\\"active\\\":true") || chunk.contains("\"active\":true"),
            "{chunk}"
        );
    }

    mod properties {
        //! The promises, checked on random schedules: whatever the batch
        //! sizes, queue capacities and drain schedules, a subscriber (that
        //! resumes from the last id it received whenever it is cut off)
        //! receives exactly the updates it may see that were published after
        //! it connected, in order, each once; and never a private update it
        //! may not read.
        use super::*;
        use futures_util::FutureExt;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// A batch: (topic index, private) per update.
            Publish(Vec<(usize, bool)>),
            /// Let subscriber `i` read up to `n` chunks.
            Drain(usize, usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                prop::collection::vec((0..2usize, any::<bool>()), 1..24).prop_map(Op::Publish),
                (0..3usize, 0..4usize).prop_map(|(i, n)| Op::Drain(i, n)),
            ]
        }

        const TOPICS: [&str; 2] = ["https://ex.net/a", "https://ex.net/b"];

        /// Three kinds of reader: anonymous, owner of topic a, reads all.
        fn reader(i: usize) -> Subscription {
            let private: &[&str] = match i {
                0 => &[],
                1 => &["https://ex.net/a"],
                _ => &["*"],
            };
            sub(&["https://ex.net/{x}"], private)
        }

        struct Reader {
            subscription: Subscription,
            stream: Option<SubscriberStream>,
            parser: crate::sse::SseParser,
            got: Vec<String>,
            expected: Vec<String>,
        }

        impl Reader {
            /// Read what is ready now; false when the stream has ended.
            fn read_ready(&mut self, chunks: usize) -> bool {
                let Some(stream) = self.stream.as_mut() else {
                    return false;
                };
                for _ in 0..chunks {
                    match stream.next().now_or_never() {
                        Some(Some(Ok(chunk))) => self
                            .got
                            .extend(self.parser.feed(&chunk).into_iter().map(|e| e.id)),
                        Some(None) => {
                            self.stream = None;
                            return false;
                        }
                        _ => break,
                    }
                }
                true
            }

            /// Read everything there is, waiting for replay pages still
            /// being read; false when the stream has ended.
            async fn catch_up(&mut self) -> bool {
                let Some(stream) = self.stream.as_mut() else {
                    return false;
                };
                loop {
                    match stream.next().now_or_never() {
                        Some(Some(Ok(chunk))) => self
                            .got
                            .extend(self.parser.feed(&chunk).into_iter().map(|e| e.id)),
                        Some(None) => {
                            self.stream = None;
                            return false;
                        }
                        None if stream.replaying() => {
                            tokio::time::sleep(std::time::Duration::from_millis(1)).await
                        }
                        None => return true,
                    }
                }
            }

            async fn resume(&mut self, hub: &Arc<Hub>) {
                let last = self.got.last().cloned().unwrap_or_else(|| "init".into());
                let resumed = hub
                    .subscribe(self.subscription.clone(), Some(ResumeFrom::After(last)))
                    .await
                    .unwrap();
                assert!(resumed.resumed, "the last id received is in history");
                self.stream = Some(resumed.stream);
                self.parser = crate::sse::SseParser::new();
            }
        }

        async fn run(capacity: usize, ops: Vec<Op>) {
            let hub = Hub::new(
                HubConfig {
                    queue_capacity: capacity,
                    subscription_events: false,
                },
                Arc::new(MemoryHistory::new(100_000)),
            );
            hub.publish(update("init", &TOPICS, false)).await.unwrap();
            let mut readers = Vec::new();
            for i in 0..3 {
                let subscription = reader(i);
                let stream = hub
                    .subscribe(subscription.clone(), None)
                    .await
                    .unwrap()
                    .stream;
                readers.push(Reader {
                    subscription,
                    stream: Some(stream),
                    parser: crate::sse::SseParser::new(),
                    got: Vec::new(),
                    expected: Vec::new(),
                });
            }
            let mut n = 0;
            for op in ops {
                match op {
                    Op::Publish(batch) => {
                        let pending: Vec<Pending> = batch
                            .into_iter()
                            .map(|(t, private)| {
                                n += 1;
                                let u = Arc::new(update(&format!("u{n}"), &[TOPICS[t]], private));
                                for r in readers.iter_mut() {
                                    if r.subscription.wants(&u) {
                                        r.expected.push(u.id.clone());
                                    }
                                }
                                Pending {
                                    update: u,
                                    reply: None,
                                    durable: true,
                                    group: None,
                                    chosen_id: true,
                                }
                            })
                            .collect();
                        let mut replies: Vec<Option<Reply>> =
                            pending.iter().map(|_| None).collect();
                        hub.commit(pending, &mut replies);
                    }
                    Op::Drain(i, chunks) => {
                        if !readers[i].read_ready(chunks) {
                            readers[i].resume(&hub).await;
                        }
                    }
                }
            }
            // Catch up: resume every reader that was cut off, then end the
            // hub and read each stream to its end.
            for r in readers.iter_mut() {
                while !r.catch_up().await {
                    r.resume(&hub).await;
                }
            }
            hub.close();
            for r in readers.iter_mut() {
                if let Some(stream) = r.stream.as_mut() {
                    while let Some(Ok(chunk)) = stream.next().await {
                        r.got
                            .extend(r.parser.feed(&chunk).into_iter().map(|e| e.id));
                    }
                }
                assert_eq!(
                    r.got, r.expected,
                    "reader {:?}",
                    r.subscription.private_access
                );
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            #[test]
            fn every_reader_gets_exactly_what_it_may_see(
                capacity in 1..6usize,
                ops in prop::collection::vec(op(), 1..40),
            ) {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(run(capacity, ops));
            }
        }
    }
}
