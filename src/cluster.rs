//! Cluster mode: many Herald nodes act as one hub, on Redis.
//!
//! One ordered log (a Redis stream) holds every update; every node tails it
//! and delivers what it reads in log order, so every node applies the same
//! sequence. See docs/cluster.md for the design and what each setting
//! promises.
//!
//! - **Publish** (any node): one Lua script checks that the ids are new,
//!   takes the next numbers of the log's counter, `XADD`s each update and
//!   records `id -> number`; only then does the publisher get 200. A batch
//!   is one script call: all of it or nothing.
//! - **Tail** (every node): `XREAD BLOCK` on its own connection from the
//!   last entry applied; each page is applied to the node's history (an
//!   in-memory replica of the log) and delivered, through the hub's
//!   committer, in order.
//! - **Counter**: each entry carries the log's counter value (`n`). A node
//!   that sees anything but `last + 1` missed entries (it fell behind the
//!   log's cap) or the log was reset (Redis flushed or restored from an old
//!   snapshot): it says so in the log, drops its replica (so a resume from
//!   before answers `earliest` instead of silently skipping) and goes on.
//! - **Resume on another node**: an id this node has not applied yet (it
//!   came from a faster node) is looked up in Redis, and the subscriber is
//!   held (at most [`RESUME_HOLD`]) until the tail has applied it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::watch;

use crate::history::record;
use crate::hub::{Hub, HubError, SubscriptionInfo};
use crate::update::Update;

/// How long a resuming subscriber waits for this node to apply the id it
/// resumes from (it was published through a faster node).
pub const RESUME_HOLD: Duration = Duration::from_secs(2);
/// Entries read from the log at once.
const PAGE: usize = 512;
/// `XREAD BLOCK` time; the tail's connection answers within it.
const BLOCK: Duration = Duration::from_secs(1);
/// A command to Redis gets an answer within this time or fails (503).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed dial, callers fail at once for this long.
const DIAL_RETRY: Duration = Duration::from_secs(1);
/// Reconnect back-off bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Ids are remembered in Redis (for duplicates and cross-node resume) this
/// long when `--history-max-age` is not set.
const DEFAULT_ID_TTL: Duration = Duration::from_secs(24 * 3600);

/// Checks every id, then appends every update: all or nothing.
/// KEYS: log, counter. ARGV: id key prefix, maxlen, id ttl ms, live ("1":
/// live-only entries such as subscription events, which are delivered but
/// never stored, and whose ids are not kept), then (id, record) pairs.
/// Returns the counter value of each update, or `{"dup", id}`.
const APPEND: &str = r#"
local prefix, maxlen, ttl, live = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
if not live then
  for i = 5, #ARGV, 2 do
    if redis.call('EXISTS', prefix .. ARGV[i]) == 1 then
      return {'dup', ARGV[i]}
    end
  end
end
local out = {}
for i = 5, #ARGV, 2 do
  local n = redis.call('INCR', KEYS[2])
  if live then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'n', n, 'r', ARGV[i + 1], 'l', '1')
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'n', n, 'r', ARGV[i + 1])
    redis.call('SET', prefix .. ARGV[i], n, 'PX', ttl)
  end
  out[#out + 1] = n
end
return out
"#;

/// A node's subscriptions are kept in Redis this long after its last
/// heartbeat: a node that dies vanishes from the subscriptions API within
/// this time.
pub const PRESENCE_TTL: Duration = Duration::from_secs(15);
const PRESENCE_HEARTBEAT: Duration = Duration::from_secs(5);

/// Cluster settings, from the command line.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// This node's name, in logs and `/readyz`.
    pub node_id: String,
    /// The log keeps about this many entries (`MAXLEN ~`).
    pub max_len: usize,
    /// Ids are remembered this long (for duplicates and cross-node resume).
    pub id_ttl: Option<Duration>,
}

/// Keys of the log in Redis (one partition: `{p0}`, a hash tag, so the
/// keys of one log live on one Redis Cluster slot).
struct Keys {
    log: String,
    counter: String,
    id_prefix: String,
    /// Followed by a node id: that node's subscriptions (a hash).
    presence_prefix: String,
    /// Nodes with subscriptions, scored by their last heartbeat (ms).
    nodes: String,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            log: "herald:{p0}:log".into(),
            counter: "herald:{p0}:n".into(),
            id_prefix: "herald:{p0}:id:".into(),
            presence_prefix: "herald:{p0}:subs:".into(),
            nodes: "herald:{p0}:nodes".into(),
        }
    }
}

/// One subscription as other nodes see it (the subscriptions API).
#[derive(serde::Serialize, serde::Deserialize)]
struct Presence {
    id: String,
    legacy_id: String,
    match_type: String,
    selector: String,
    subscriber: String,
    payload: Option<serde_json::Value>,
}

impl Presence {
    fn of(info: &SubscriptionInfo) -> Presence {
        Presence {
            id: info.id.clone(),
            legacy_id: info.legacy_id.clone(),
            match_type: info.match_type.to_string(),
            selector: info.selector.clone(),
            subscriber: info.subscriber.clone(),
            payload: info.payload.clone(),
        }
    }

    fn into_info(self) -> Option<SubscriptionInfo> {
        let match_type = match self.match_type.as_str() {
            "exact" => "exact",
            "urlpattern" => "urlpattern",
            "uritemplate" => "uritemplate",
            _ => return None,
        };
        Some(SubscriptionInfo {
            id: self.id,
            legacy_id: self.legacy_id,
            match_type,
            selector: self.selector,
            subscriber: self.subscriber,
            active: true,
            payload: self.payload,
        })
    }
}

/// What the presence task writes to Redis.
enum Change {
    /// A subscription event to deliver on every node (live only).
    Event(Arc<Update>),
    Active(SubscriptionInfo),
    Gone(String),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub applied: AtomicU64,
    pub bad_entries: AtomicU64,
    pub resets: AtomicU64,
    pub reconnects: AtomicU64,
}

pub struct Cluster {
    config: ClusterConfig,
    client: redis::Client,
    keys: Keys,
    script: redis::Script,
    /// The publish connection, reconnected on demand after an error.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// When and why the last dial failed.
    dial_failure: Mutex<Option<(std::time::Instant, String)>>,
    /// Counter value of the last entry this node applied.
    applied: watch::Sender<u64>,
    /// Why the tail is not following the log right now, if it is not.
    fault: Mutex<Option<String>>,
    /// Set once the startup back-fill is done.
    caught_up: AtomicBool,
    /// To the presence task (subscription events and this node's
    /// subscriptions); set by [`Cluster::start_presence`].
    changes: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Change>>,
    /// The nodes heard from within [`PRESENCE_TTL`] and how long ago (ms),
    /// as of the last heartbeat: for the status page.
    known_nodes: Mutex<Vec<(String, u64)>>,
    pub stats: ClusterStats,
}

fn redis_error(url: &str, e: &redis::RedisError) -> String {
    format!("the cluster log (Redis at {url}) is unreachable: {e}")
}

impl Cluster {
    /// Connect and check the Redis at `config.url`: a Redis that may evict
    /// keys would lose updates silently, so it is refused by name.
    pub async fn connect(config: ClusterConfig) -> anyhow::Result<Arc<Cluster>> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| anyhow::anyhow!("--transport {}: {e}", config.url))?;
        let cluster = Arc::new(Cluster {
            client,
            keys: Keys::new(),
            script: redis::Script::new(APPEND),
            conn: tokio::sync::Mutex::new(None),
            dial_failure: Mutex::new(None),
            applied: watch::channel(0).0,
            fault: Mutex::new(Some("catching up with the cluster log".into())),
            caught_up: AtomicBool::new(false),
            changes: std::sync::OnceLock::new(),
            known_nodes: Mutex::new(Vec::new()),
            stats: ClusterStats::default(),
            config,
        });
        let mut conn = cluster
            .connection()
            .await
            .map_err(|e| anyhow::anyhow!("{e}; is redis-server running there?"))?;
        let policy: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await;
        match policy {
            Ok(pair) => {
                let value = pair.get(1).map(String::as_str).unwrap_or("noeviction");
                if value != "noeviction" {
                    anyhow::bail!(
                        "Redis at {} has maxmemory-policy {value}: it may evict the log or its \
                         ids and lose updates silently. Set maxmemory-policy noeviction \
                         (redis-cli CONFIG SET maxmemory-policy noeviction, and in redis.conf)",
                        cluster.config.url
                    );
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot read Redis's maxmemory-policy (CONFIG disabled?); make sure it is noeviction"
            ),
        }
        Ok(cluster)
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The shared connection, dialled when there is none. Dialling happens
    /// outside the lock, and for a second after a failed dial every caller
    /// fails at once with that error: during an outage publishes answer 503
    /// immediately instead of queueing behind each other's connect timeouts.
    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        {
            let slot = self.conn.lock().await;
            if let Some(conn) = slot.as_ref() {
                return Ok(conn.clone());
            }
        }
        if let Some((at, error)) = &*self.dial_failure.lock() {
            if at.elapsed() < DIAL_RETRY {
                return Err(error.clone());
            }
        }
        match self.dial(RESPONSE_TIMEOUT).await {
            Ok(conn) => {
                *self.dial_failure.lock() = None;
                let mut slot = self.conn.lock().await;
                Ok(slot.get_or_insert(conn).clone())
            }
            Err(e) => {
                let error = redis_error(&self.config.url, &e);
                *self.dial_failure.lock() = Some((std::time::Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// A new connection whose commands fail after `response_timeout`.
    async fn dial(&self, response_timeout: Duration) -> redis::RedisResult<MultiplexedConnection> {
        self.client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(response_timeout),
            )
            .await
    }

    /// Forget the publish connection after an error: the next call dials
    /// again.
    async fn drop_connection(&self) {
        *self.conn.lock().await = None;
    }

    /// Append updates to the log, all or nothing; returns once Redis has
    /// them. A duplicate id is [`HubError::History`] `DuplicateId` (409);
    /// Redis unreachable or slow is [`HubError::Unavailable`] (503).
    pub async fn append(&self, updates: &[Arc<Update>]) -> Result<(), HubError> {
        self.append_as(updates, false).await
    }

    async fn append_as(&self, updates: &[Arc<Update>], live: bool) -> Result<(), HubError> {
        let now = crate::history::now_ms();
        let ttl = self.config.id_ttl.unwrap_or(DEFAULT_ID_TTL).as_millis() as u64;
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&self.keys.log)
            .key(&self.keys.counter)
            .arg(&self.keys.id_prefix)
            .arg(self.config.max_len.max(1))
            .arg(ttl.max(1))
            .arg(if live { "1" } else { "0" });
        for update in updates {
            invocation
                .arg(update.id.as_str())
                .arg(record::encode(update, now));
        }
        let mut conn = self
            .connection()
            .await
            .map_err(|e| HubError::Unavailable(format!("{e}; the update was not published")))?;
        let answer: redis::RedisResult<Value> = invocation.invoke_async(&mut conn).await;
        match answer {
            Ok(Value::Array(items)) => {
                if let (Some(Value::BulkString(tag)), Some(id)) = (items.first(), items.get(1)) {
                    if tag.as_slice() == b"dup" {
                        let id: String = redis::from_redis_value(id).unwrap_or_default();
                        return Err(HubError::History(
                            crate::history::HistoryError::DuplicateId(id),
                        ));
                    }
                }
                Ok(())
            }
            Ok(other) => Err(HubError::Unavailable(format!(
                "the cluster log answered {other:?} to an append; the update may not have been published"
            ))),
            Err(e) => {
                self.drop_connection().await;
                Err(HubError::Unavailable(format!(
                    "{}; the update may not have been published: retry it (with its own id, a retry of a stored update answers 409)",
                    redis_error(&self.config.url, &e)
                )))
            }
        }
    }

    /// The counter value under which `id` was appended, if Redis still
    /// remembers it.
    pub async fn position_of(&self, id: &str) -> Result<Option<u64>, String> {
        let mut conn = self.connection().await?;
        let key = format!("{}{id}", self.keys.id_prefix);
        let found = redis::cmd("GET")
            .arg(key)
            .query_async::<Option<u64>>(&mut conn)
            .await;
        if found.is_err() {
            self.drop_connection().await;
        }
        found.map_err(|e| redis_error(&self.config.url, &e))
    }

    /// Wait (at most `limit`) until this node has applied the entry
    /// numbered `n`; true when it has.
    pub async fn wait_applied(&self, n: u64, limit: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|applied| *applied >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Why this node cannot serve as part of the cluster right now.
    pub fn readiness(&self) -> Result<(), String> {
        match &*self.fault.lock() {
            Some(reason) => Err(format!("node {}: {reason}", self.config.node_id)),
            None => Ok(()),
        }
    }

    fn set_fault(&self, reason: String) {
        let mut fault = self.fault.lock();
        if fault.as_deref() != Some(reason.as_str()) {
            tracing::error!(node = %self.config.node_id, %reason, "cluster log");
        }
        *fault = Some(reason);
    }

    fn clear_fault(&self) {
        if self.fault.lock().take().is_some() {
            tracing::info!(node = %self.config.node_id, "following the cluster log");
        }
    }

    /// Cluster-wide subscription events: `update` (live only) goes to
    /// every node through the log; `info` is this node's subscription that
    /// started (`active`) or ended, kept in Redis for the subscriptions API
    /// of every node. Never blocks: a background task writes.
    pub fn subscription_changed(&self, update: Option<Arc<Update>>, info: SubscriptionInfo) {
        let Some(tx) = self.changes.get() else { return };
        if let Some(update) = update {
            let _ = tx.send(Change::Event(update));
        }
        let _ = tx.send(if info.active {
            Change::Active(info)
        } else {
            Change::Gone(info.id)
        });
    }

    /// Start the task that writes subscription events and this node's
    /// subscriptions to Redis, and keeps the latter alive (a heartbeat
    /// every 5 s; they expire [`PRESENCE_TTL`] after the last one).
    pub fn start_presence(self: &Arc<Self>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        if self.changes.set(tx).is_err() {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move { cluster.presence(rx).await });
    }

    fn presence_key(&self) -> String {
        format!("{}{}", self.keys.presence_prefix, self.config.node_id)
    }

    async fn presence(self: Arc<Self>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Change>) {
        let key = self.presence_key();
        let mut tick = tokio::time::interval(PRESENCE_HEARTBEAT);
        // What this node holds. Written as it changes; rewritten whole only
        // after a write failed (an outage), so a heartbeat is two small
        // commands whatever the number of subscriptions.
        let mut mine: std::collections::HashMap<String, String> = Default::default();
        let mut stale = true;
        loop {
            let mut touched = std::collections::HashSet::new();
            tokio::select! {
                change = rx.recv() => {
                    let Some(first) = change else { return };
                    let mut events = Vec::new();
                    let mut next = Some(first);
                    while let Some(change) = next.take() {
                        match change {
                            Change::Event(u) => events.push(u),
                            Change::Active(info) => {
                                if let Ok(json) = serde_json::to_string(&Presence::of(&info)) {
                                    touched.insert(info.id.clone());
                                    mine.insert(info.id, json);
                                }
                            }
                            Change::Gone(id) => {
                                mine.remove(&id);
                                touched.insert(id);
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                    if !events.is_empty() {
                        if let Err(e) = self.append_as(&events, true).await {
                            tracing::warn!(error = %e, count = events.len(), "subscription events not sent to the cluster");
                        }
                    }
                }
                _ = tick.tick() => {}
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            if stale {
                pipe.del(&key).ignore();
                touched = mine.keys().cloned().collect();
            }
            // The net effect of the changes: present ones set, others gone.
            let (set, gone): (Vec<_>, Vec<_>) =
                touched.into_iter().partition(|id| mine.contains_key(id));
            if !gone.is_empty() {
                pipe.hdel(&key, &gone).ignore();
            }
            if !set.is_empty() {
                let fields: Vec<(&str, &str)> = set
                    .iter()
                    .map(|id| (id.as_str(), mine[id].as_str()))
                    .collect();
                pipe.hset_multiple(&key, &fields).ignore();
            }
            let now_ms = crate::history::now_ms();
            pipe.pexpire(&key, PRESENCE_TTL.as_millis() as i64).ignore();
            pipe.zadd(&self.keys.nodes, &self.config.node_id, now_ms)
                .ignore();
            // Nodes silent for four expiries are forgotten.
            let forgotten = now_ms.saturating_sub(4 * PRESENCE_TTL.as_millis() as u64);
            pipe.zrembyscore(&self.keys.nodes, 0, forgotten).ignore();
            stale = self.run_pipe(pipe).await.is_err();
        }
    }

    async fn run_pipe(&self, pipe: redis::Pipeline) -> Result<(), ()> {
        let mut conn = self.connection().await.map_err(|_| ())?;
        let done: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
        if done.is_err() {
            self.drop_connection().await;
        }
        done.map_err(|_| ())
    }

    /// The subscriptions held by the other nodes (each node's own are in
    /// its registry): the nodes heard from within the presence expiry.
    pub async fn subscriptions_elsewhere(&self) -> Result<Vec<SubscriptionInfo>, String> {
        let mut conn = self.connection().await?;
        let since = crate::history::now_ms().saturating_sub(PRESENCE_TTL.as_millis() as u64);
        let nodes: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&self.keys.nodes)
            .arg(since)
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(&self.config.url, &e))?;
        let mut out = Vec::new();
        for node in nodes.iter().filter(|n| **n != self.config.node_id) {
            let values: Vec<String> = redis::cmd("HVALS")
                .arg(format!("{}{node}", self.keys.presence_prefix))
                .query_async(&mut conn)
                .await
                .map_err(|e| redis_error(&self.config.url, &e))?;
            out.extend(
                values
                    .iter()
                    .filter_map(|v| serde_json::from_str::<Presence>(v).ok())
                    .filter_map(Presence::into_info),
            );
        }
        Ok(out)
    }

    /// The log does not continue where this node left it (`expected` was
    /// the last counter applied, `got` what the log says now): Redis was
    /// flushed or restored, or this node fell behind the log's cap. History
    /// is dropped, so resumes from before answer `earliest` instead of
    /// silently skipping what is gone.
    fn log_reset(&self, hub: &Hub, last: u64, got: u64) {
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            node = %self.config.node_id,
            last_applied = last,
            log_says = got,
            "the cluster log does not continue where this node left it (Redis flushed or \
             restored, or this node fell behind its cap): history before this point is \
             dropped, so resumes from before answer earliest"
        );
        hub.forget_history();
        // Counters of the old log mean nothing in the new one.
        self.applied.send_replace(0);
    }

    /// Entries read could not be stored and delivered (a committer panic,
    /// say): this node now has a gap, so it is treated like a reset rather
    /// than serving a history with a hole.
    fn apply_failed(&self, hub: &Hub) {
        tracing::error!(
            node = %self.config.node_id,
            "log entries could not be applied; dropping history so no resume skips them"
        );
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        hub.forget_history();
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
    }

    /// Every node says it is alive (`herald:{p0}:nodes`, scored by time)
    /// every 5 s and reads who else is: the node list of the status page.
    pub fn start_heartbeat(self: &Arc<Self>) {
        let cluster = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRESENCE_HEARTBEAT);
            loop {
                tick.tick().await;
                let Some(c) = cluster.upgrade() else { return };
                let now = crate::history::now_ms();
                let since = now.saturating_sub(PRESENCE_TTL.as_millis() as u64);
                let Ok(mut conn) = c.connection().await else {
                    continue;
                };
                let mut pipe = redis::pipe();
                pipe.zadd(&c.keys.nodes, &c.config.node_id, now).ignore();
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(&c.keys.nodes)
                    .arg(since)
                    .arg("+inf")
                    .arg("WITHSCORES");
                let seen: redis::RedisResult<(Vec<(String, u64)>,)> =
                    pipe.query_async(&mut conn).await;
                match seen {
                    Ok((nodes,)) => {
                        *c.known_nodes.lock() = nodes
                            .into_iter()
                            .map(|(id, at)| (id, now.saturating_sub(at)))
                            .collect();
                    }
                    Err(_) => c.drop_connection().await,
                }
            }
        });
    }

    /// The nodes heard from lately, with how long ago (ms), as of the last
    /// heartbeat.
    pub fn nodes(&self) -> Vec<(String, u64)> {
        self.known_nodes.lock().clone()
    }

    /// Start the tail: back-fill from the start of the log, then follow
    /// it, applying every page to `hub` in order, until the hub closes.
    pub fn start_tail(self: &Arc<Self>, hub: &Arc<Hub>) {
        let cluster = self.clone();
        let hub = Arc::downgrade(hub);
        tokio::spawn(async move { cluster.tail(hub).await });
    }

    async fn tail(self: Arc<Self>, hub: Weak<Hub>) {
        let mut conn: Option<MultiplexedConnection> = None;
        // Last entry id read ("0" = from the start) and counter applied.
        let mut position = String::from("0");
        let mut last_n: Option<u64> = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            let Some(hub_ref) = hub.upgrade() else { return };
            if hub_ref.is_closed() {
                return;
            }
            drop(hub_ref);
            if conn.is_none() {
                // Its reads block up to BLOCK before they answer.
                match self.dial(BLOCK + RESPONSE_TIMEOUT).await {
                    Ok(c) => {
                        if self.stats.reconnects.fetch_add(1, Ordering::Relaxed) > 0 {
                            tracing::info!(node = %self.config.node_id, "reconnected to the cluster log");
                        }
                        conn = Some(c);
                        backoff = BACKOFF_MIN;
                    }
                    Err(e) => {
                        self.set_fault(format!(
                            "{}; retrying in {backoff:?}",
                            redis_error(&self.config.url, &e)
                        ));
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            // Until caught up, read without blocking: an empty answer
            // means the back-fill is done.
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(PAGE);
            if self.is_caught_up() {
                cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
            }
            cmd.arg("STREAMS").arg(&self.keys.log).arg(&position);
            let read: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                cmd.query_async(c).await;
            let entries = match read {
                Ok(reply) => reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>())
                    .unwrap_or_default(),
                Err(e) => {
                    conn = None;
                    // The publish connection is as dead as this one: dial
                    // afresh on the next publish rather than fail it.
                    self.drop_connection().await;
                    self.set_fault(format!(
                        "{}; reconnecting in {backoff:?}",
                        redis_error(&self.config.url, &e)
                    ));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            if entries.is_empty() {
                // Idle: a log that was flushed or restored while its stream
                // ids went backwards (another clock) would never show up in
                // XREAD from our position; its counter does.
                if let Some(last) = last_n {
                    let counter: redis::RedisResult<Option<u64>> = redis::cmd("GET")
                        .arg(&self.keys.counter)
                        .query_async(c)
                        .await;
                    if let Ok(counter) = counter {
                        if counter.unwrap_or(0) < last {
                            if let Some(hub_ref) = hub.upgrade() {
                                self.log_reset(&hub_ref, last, counter.unwrap_or(0));
                            }
                            position = "0".into();
                            last_n = None;
                            continue;
                        }
                    }
                }
                if !self.is_caught_up() {
                    self.caught_up.store(true, Ordering::Relaxed);
                    tracing::info!(
                        node = %self.config.node_id,
                        applied = self.stats.applied.load(Ordering::Relaxed),
                        "caught up with the cluster log"
                    );
                }
                self.clear_fault();
                continue;
            }
            if let Some(delay) = apply_delay() {
                tokio::time::sleep(delay).await;
            }
            let Some(hub_ref) = hub.upgrade() else { return };
            let mut page = Vec::with_capacity(entries.len());
            for entry in &entries {
                position.clone_from(&entry.id);
                let n: Option<u64> = entry
                    .map
                    .get("n")
                    .and_then(|v| redis::from_redis_value(v).ok());
                let decoded = entry
                    .map
                    .get("r")
                    .and_then(|v| redis::from_redis_value::<Vec<u8>>(v).ok())
                    .ok_or_else(|| "no record field".to_string())
                    .and_then(|bytes| record::decode(&bytes));
                if let (Some(n), Some(last)) = (n, last_n) {
                    if n != last + 1 {
                        // Store what came before, then drop the replica.
                        if !apply_page(&hub_ref, std::mem::take(&mut page)).await {
                            self.apply_failed(&hub_ref);
                        }
                        self.log_reset(&hub_ref, last, n);
                    }
                }
                // A counted entry counts even when its record is bad (a
                // newer record version, say): the next one follows it.
                if n.is_some() {
                    last_n = n;
                }
                let (Some(_), Ok((update, _))) = (n, decoded) else {
                    self.stats.bad_entries.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        node = %self.config.node_id,
                        entry = %entry.id,
                        "skipped a log entry that is not a Herald update"
                    );
                    continue;
                };
                let live = entry.map.contains_key("l");
                page.push((Arc::new(update), !live));
            }
            if !apply_page(&hub_ref, page).await {
                self.apply_failed(&hub_ref);
            }
            if let Some(n) = last_n {
                self.applied.send_replace(n);
            }
            self.stats
                .applied
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            if self.is_caught_up() {
                self.clear_fault();
            }
        }
    }
}

/// Tests only: `HERALD_CLUSTER_APPLY_DELAY_MS` makes this node apply each
/// page of the log that much later, to stand for a node that lags behind
/// (so a test can prove that a resume waits for it). Unset in production.
fn apply_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("HERALD_CLUSTER_APPLY_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    })
}

/// Apply a page of the log in order: stored updates and live-only events
/// (subscription events) in runs of one kind.
/// False when some of it could not be applied.
async fn apply_page(hub: &Hub, page: Vec<(Arc<Update>, bool)>) -> bool {
    let mut ok = true;
    let mut run: Vec<Arc<Update>> = Vec::new();
    let mut run_durable = true;
    for (update, durable) in page {
        if durable != run_durable && !run.is_empty() {
            ok &= apply_run(hub, std::mem::take(&mut run), run_durable).await;
        }
        run_durable = durable;
        run.push(update);
    }
    if !run.is_empty() {
        ok &= apply_run(hub, run, run_durable).await;
    }
    ok
}

async fn apply_run(hub: &Hub, run: Vec<Arc<Update>>, durable: bool) -> bool {
    match hub.apply(run, durable).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "applying log entries failed");
            false
        }
    }
}
