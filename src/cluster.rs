//! Cluster mode: many Herald nodes act as one hub, on Redis.
//!
//! The log is a Redis stream (or `P` of them, "partitions", on one Redis
//! or spread over several); every node tails every partition and applies
//! what it reads in one merged order, so every node applies the same
//! sequence. See docs/cluster.md for the design and what each setting
//! promises.
//!
//! - **Publish** (any node): an update goes to the partition of its first
//!   (canonical) topic, so each topic lives in one partition. One Lua script
//!   per Redis checks that the ids are new, takes the next numbers of the
//!   partition's counter, stamps each entry with the Redis clock (`t`,
//!   microseconds, strictly increasing per partition), `XADD`s it and
//!   records `id -> partition:number`; only then does the publisher get
//!   200. A request whose ids and partitions all live on one Redis is one
//!   script call: all of it or nothing. Otherwise its ids are first
//!   reserved on the Redis that owns them (see [`Cluster::append`]).
//! - **Tail** (every node): one reader per Redis (`XREAD BLOCK` over its
//!   partitions, on its own connection) hands entries to one merger, which
//!   applies them in `(t, partition)` order up to the low watermark: an
//!   entry goes out once no partition can still produce an earlier one (the
//!   next unread entry of a partition is later than the last one read; an
//!   idle partition is asked, in one atomic `XREVRANGE` + `TIME`, whether
//!   anything is unread, and if not the Redis clock bounds it).
//! - **Counter**: each entry carries its partition's counter value (`n`). A
//!   node that sees anything but `last + 1` missed entries (it fell behind
//!   the log's cap) or the log was reset (Redis flushed or restored from an
//!   old snapshot): it says so in the log, drops its replica (so a resume
//!   from before answers `earliest` instead of silently skipping) and goes
//!   on.
//! - **Resume on another node**: an id this node has not applied yet (it
//!   came from a faster node) is looked up in Redis, and the subscriber is
//!   held (at most [`RESUME_HOLD`]) until the merger has applied it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::{mpsc, watch};

use crate::history::record;
use crate::hub::{Hub, HubError, SubscriptionInfo};
use crate::update::Update;

/// How long a resuming subscriber waits for this node to apply the id it
/// resumes from (it was published through a faster node).
pub const RESUME_HOLD: Duration = Duration::from_secs(2);
/// Most partitions (`--redis-partitions`).
pub const MAX_PARTITIONS: usize = 256;
/// Entries read from a partition at once.
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
/// An id reserved by a publish that spans two Redis instances stays
/// reserved this long if the publishing node dies half-way.
const RESERVATION_HOLD: Duration = Duration::from_secs(30);
/// How long the merger waits for other partitions' entries before it asks
/// the idle ones (under load they come first, and no question is asked):
/// at most this much latency, at most this many questions per second.
const PROBE_DELAY: Duration = Duration::from_millis(1);
/// A partition with no entry read for this long is asked without waiting.
const QUIET: Duration = Duration::from_millis(20);
/// How often the merger asks again about a partition whose entries are on
/// their way to it.
const PROBE_AGAIN: Duration = Duration::from_millis(2);
/// A reader waits at most this long for the merger to apply what it read
/// before it reads on.
const READ_AHEAD_WAIT: Duration = Duration::from_millis(5);
/// A reader whose entries the merger holds back this many of stops reading
/// until it applies some.
const MAX_UNAPPLIED: u64 = 50_000;
/// Under load, partitions' counters are compared with what was read this
/// often (a reset of a partition that gets no entries).
const COUNTER_CHECK: Duration = Duration::from_secs(1);
/// After a probe that failed (a Redis down), the merger waits this long.
const PROBE_BACKOFF: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A merge held back this long (a Redis down, say) shows on `/readyz`.
const STALL: Duration = Duration::from_secs(5);

/// Checks every id, then appends every update: all or nothing.
/// KEYS, four per update: its id key, its partition's log, counter and
/// clock keys. ARGV: maxlen, id ttl ms, mode, stamp ("1": give entries a
/// clock, needed to merge partitions; one partition is merged by stream
/// order alone), then per update: id, record, partition.
///
/// Mode `s`: stored, ids checked and recorded here; `r`: stored, ids
/// reserved and recorded by the caller on another Redis (the id key given
/// is the update's own partition's: checked too, so an append whose answer
/// was lost is not made twice by a retry, and its position recorded there
/// at once); `l`: live-only entries (subscription events: delivered, never
/// stored, ids not kept).
/// Each entry's `t` is the Redis clock in microseconds, strictly increasing
/// within a partition and within one call. Returns the counter value of
/// each update, or `{"dup", id}`, or `{"busy", id}` (reserved by a publish
/// in flight).
const APPEND: &str = r#"
local maxlen, ttl, mode = ARGV[1], ARGV[2], ARGV[3]
local count = #KEYS / 4
if mode ~= 'l' then
  local seen = {}
  for i = 0, count - 1 do
    local key, id = KEYS[i * 4 + 1], ARGV[5 + i * 3]
    local v = redis.call('GET', key)
    if v and string.sub(v, 1, 7) == 'pending' then return {'busy', id} end
    if v or seen[key] then return {'dup', id} end
    seen[key] = true
  end
end
local stamp = ARGV[4] == '1'
local prev, clocks = 0, {}
if stamp then
  local now = redis.call('TIME')
  prev = tonumber(now[1]) * 1000000 + tonumber(now[2]) - 1
end
local out = {}
for i = 0, count - 1 do
  local idk, log, ctr, tk = KEYS[i * 4 + 1], KEYS[i * 4 + 2], KEYS[i * 4 + 3], KEYS[i * 4 + 4]
  local rec, part = ARGV[6 + i * 3], ARGV[7 + i * 3]
  local n = redis.call('INCR', ctr)
  local fields = {'n', n}
  if stamp then
    local last = clocks[tk] or tonumber(redis.call('GET', tk) or '0')
    local t = prev + 1
    if t <= last then t = last + 1 end
    prev, clocks[tk] = t, t
    fields[3], fields[4] = 't', string.format('%d', t)
  end
  fields[#fields + 1] = 'r'
  fields[#fields + 1] = rec
  if mode == 'l' then
    fields[#fields + 1] = 'l'
    fields[#fields + 1] = '1'
  end
  redis.call('XADD', log, 'MAXLEN', '~', maxlen, '*', unpack(fields))
  if mode ~= 'l' then
    redis.call('SET', idk, part .. ':' .. n, 'PX', ttl)
  end
  out[#out + 1] = n
end
for tk, t in pairs(clocks) do
  redis.call('SET', tk, string.format('%d', t))
end
return out
"#;

/// Reserves ids for a publish whose ids live on another Redis than its
/// log entries. KEYS: id keys. ARGV: hold ms, the request's token, then the
/// ids. Returns `ok`, `{"dup", id}` or `{"busy", id}`, having reserved all
/// or none.
const RESERVE: &str = r#"
local seen = {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v and string.sub(v, 1, 7) == 'pending' then return {'busy', ARGV[i + 2]} end
  if v or seen[KEYS[i]] then return {'dup', ARGV[i + 2]} end
  seen[KEYS[i]] = true
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], 'pending:' .. ARGV[2], 'PX', ARGV[1])
end
return 'ok'
"#;

/// Records where reserved ids went, unless their reservation was taken
/// over (it expired and another request reserved them). KEYS: id keys.
/// ARGV: ttl ms, the request's token, then per key its position.
const RECORD: &str = r#"
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v or v == 'pending:' .. ARGV[2] then
    redis.call('SET', KEYS[i], ARGV[i + 2], 'PX', ARGV[1])
  end
end
return 'ok'
"#;

/// Drops the reservations of one request that were not used. KEYS: id
/// keys. ARGV: the request's token.
const RELEASE: &str = r#"
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == 'pending:' .. ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 'ok'
"#;

/// The merger's question to an idle partition: is anything unread past the
/// last entry this node read (does the partition's counter say more)? If
/// not, the partition's clock is raised to the `t` of the last entry the
/// node has queued (so its next entry sorts after all of them, whatever the
/// Redis clocks say: a clock that steps back or runs behind another Redis's
/// cannot reorder what nodes already applied). KEYS: per partition, its
/// counter and clock keys. ARGV: that `t`, then per
/// partition the counter of the last entry read. Returns per partition its
/// clock, or 0 when something is unread (or the log was reset: the reader
/// sees to that).
const PROBE: &str = r#"
local target = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  local counter = tonumber(redis.call('GET', KEYS[i * 2 - 1]) or '0')
  if counter ~= tonumber(ARGV[i + 1]) then
    out[i] = 0
  else
    local clock = tonumber(redis.call('GET', KEYS[i * 2]) or '0')
    if clock < target then
      clock = target
      redis.call('SET', KEYS[i * 2], string.format('%d', clock))
    end
    out[i] = string.format('%d', clock)
  end
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
    /// `redis://[user:password@]host:port[/db]`, one per Redis instance;
    /// partition `p` lives on `urls[p % urls.len()]`.
    pub urls: Vec<String>,
    /// How many logs the updates are spread over, by topic.
    pub partitions: usize,
    /// This node's name, in logs and `/readyz`.
    pub node_id: String,
    /// Each partition's log keeps about this many entries (`MAXLEN ~`).
    pub max_len: usize,
    /// Ids are remembered this long (for duplicates and cross-node resume).
    pub id_ttl: Option<Duration>,
    /// A publish answers 200 only once this many replicas of each Redis it
    /// wrote to have it (Redis `WAIT`); 0: not asked.
    pub replicas: usize,
    /// How long a publish waits for those replicas (then 503).
    pub replica_timeout: Duration,
    /// PEM certificates that `rediss://` servers must chain to (none: the
    /// system's trust store).
    pub tls_ca: Option<std::path::PathBuf>,
}

impl ClusterConfig {
    /// Split `--transport` (comma-separated URLs).
    pub fn urls_of(transport: &str) -> Vec<String> {
        transport
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect()
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.urls.is_empty() {
            anyhow::bail!("--transport names no Redis");
        }
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            anyhow::bail!(
                "--redis-partitions {} is out of range: 1 to {MAX_PARTITIONS}",
                self.partitions
            );
        }
        if self.partitions < self.urls.len() {
            anyhow::bail!(
                "--redis-partitions {} is fewer than the {} Redis instances in --transport: \
                 each instance holds at least one partition",
                self.partitions,
                self.urls.len()
            );
        }
        Ok(())
    }
}

/// Keys of one partition (`{pN}` is a hash tag: a partition's keys live
/// on one Redis Cluster slot).
struct PartKeys {
    log: String,
    counter: String,
    /// The clock of the partition's last entry (`t`).
    clock: String,
    id_prefix: String,
    /// Written by replica rounds (`--redis-replicas`).
    sync: String,
}

impl PartKeys {
    fn new(p: usize) -> PartKeys {
        PartKeys {
            log: format!("herald:{{p{p}}}:log"),
            counter: format!("herald:{{p{p}}}:n"),
            clock: format!("herald:{{p{p}}}:t"),
            id_prefix: format!("herald:{{p{p}}}:id:"),
            sync: format!("herald:{{p{p}}}:sync"),
        }
    }
}

/// Keys kept once for the cluster, on the first Redis.
struct SharedKeys {
    /// Followed by a node id: that node's subscriptions (a hash).
    presence_prefix: String,
    /// Nodes with subscriptions, scored by their last heartbeat (ms).
    nodes: String,
    /// The partition layout every node must share.
    layout: String,
}

/// One Redis instance and the partitions it holds.
struct Instance {
    url: String,
    client: redis::Client,
    /// The shared connection (publishes, look-ups, presence), dialled on
    /// demand after an error.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// When and why the last dial failed.
    dial_failure: Mutex<Option<(Instant, String)>>,
    partitions: Vec<usize>,
    /// Set once its reader has read everything there was at start.
    caught_up: AtomicBool,
    /// Why its reader is not following its partitions right now.
    fault: Mutex<Option<String>>,
    /// Entries its reader handed to the merger that are not applied yet.
    unapplied: AtomicU64,
    /// Signalled when the merger applied some of them, or wants a read.
    drained: tokio::sync::Notify,
    /// The merger waits for one of this Redis's partitions.
    wanted: AtomicBool,
    /// Appends that answered, counted: replica acknowledgement covers all
    /// of them up to a point (`--redis-replicas`).
    appended: AtomicU64,
    /// One replica round at a time, on its own connection: how many appends
    /// the last round covered and whether it was acknowledged.
    replication: tokio::sync::Mutex<Replication>,
}

#[derive(Default)]
struct Replication {
    conn: Option<MultiplexedConnection>,
    /// Appends up to here were in a round (acknowledged or not).
    covered: u64,
    /// Appends up to here are acknowledged by the replicas.
    confirmed: u64,
    /// Why the last round that failed did.
    error: String,
}

fn redis_error(url: &str, e: &redis::RedisError) -> String {
    format!("the cluster log (Redis at {url}) is unreachable: {e}")
}

impl Instance {
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
                let error = redis_error(&self.url, &e);
                *self.dial_failure.lock() = Some((Instant::now(), error.clone()));
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

    /// Forget the shared connection after an error: the next call dials
    /// again.
    async fn drop_connection(&self) {
        *self.conn.lock().await = None;
    }

    /// Run a command or script on the shared connection; an error drops
    /// the connection and is described.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        let mut conn = self.connection().await?;
        match cmd.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.drop_connection().await;
                Err(redis_error(&self.url, &e))
            }
        }
    }

    fn set_fault(&self, node: &str, reason: String) {
        let mut fault = self.fault.lock();
        if fault.as_deref() != Some(reason.as_str()) {
            tracing::error!(node = %node, redis = %self.url, %reason, "cluster log");
        }
        *fault = Some(reason);
    }

    fn clear_fault(&self, node: &str) {
        if self.fault.lock().take().is_some() {
            tracing::info!(node = %node, redis = %self.url, "following the cluster log");
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
    /// Idle partitions asked whether anything is unread (the watermark).
    pub probes: AtomicU64,
}

/// Where an update is in the log: its partition and counter value.
pub type LogPosition = (usize, u64);

/// An update of a publish, on its way to the log.
struct Outgoing<'a> {
    update: &'a Update,
    record: Vec<u8>,
    /// Its log's partition (of its first topic).
    partition: usize,
    /// The partition whose id keys remember its id: the id's own (so that
    /// a reuse is found whatever the topic). Ids the hub generates are
    /// drawn so that it is the update's partition ([`Cluster::generate_id`]).
    id_partition: usize,
    chosen: bool,
}

/// How an APPEND call treats ids.
#[derive(Clone, Copy)]
enum Mode {
    /// Stored; ids checked and recorded by the call.
    Stored,
    /// Stored; ids reserved and recorded by the caller, on another Redis.
    Reserved,
    /// Live-only (subscription events): delivered, never stored, ids not
    /// kept.
    Live,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Stored => "s",
            Mode::Reserved => "r",
            Mode::Live => "l",
        }
    }
}

/// A log entry read by a reader, for the merger.
struct Entry {
    partition: usize,
    /// The partition's counter (0: a reset marker, not an entry).
    n: u64,
    /// Its clock: entries are applied in `(t, partition)` order.
    t: u64,
    /// None: not a Herald update (counted and skipped).
    update: Option<(Arc<Update>, bool)>,
    /// `(last, n)`: the partition's counter did not continue before this
    /// entry (history is dropped here).
    gap: Option<(u64, u64)>,
}

/// From the readers to the merger.
enum Read {
    /// Entries read, and per partition the counter of the last entry
    /// read (also when it was skipped).
    Entries {
        entries: Vec<Entry>,
        seen: Vec<(usize, u64)>,
    },
    /// The partition's counter went backwards while idle: the log was
    /// flushed or restored.
    Reset {
        partition: usize,
        last: u64,
        got: u64,
    },
    /// That Redis's reader has read everything there was at start.
    CaughtUp(usize),
}

/// A stable hash (FNV-1a): every node must route a topic to the same
/// partition.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

pub struct Cluster {
    config: ClusterConfig,
    instances: Vec<Instance>,
    parts: Vec<PartKeys>,
    shared: SharedKeys,
    script: redis::Script,
    reserve: redis::Script,
    release: redis::Script,
    record: redis::Script,
    probe: redis::Script,
    /// Why delivery is held back, if it has been for [`STALL`].
    merge_fault: Mutex<Option<String>>,
    /// Per partition, the counter value of the last entry this node
    /// applied.
    applied: watch::Sender<Vec<u64>>,
    /// To the presence task (subscription events and this node's
    /// subscriptions); set by [`Cluster::start_presence`].
    changes: std::sync::OnceLock<mpsc::UnboundedSender<Change>>,
    /// The nodes heard from within [`PRESENCE_TTL`] and how long ago (ms),
    /// as of the last heartbeat: for the status page.
    known_nodes: Mutex<Vec<(String, u64)>>,
    pub stats: ClusterStats,
}

impl Cluster {
    /// Connect to and check every Redis: a Redis that may evict keys would
    /// lose updates silently, so it is refused by name; so is a layout of
    /// partitions other than the one the cluster already uses.
    pub async fn connect(config: ClusterConfig) -> anyhow::Result<Arc<Cluster>> {
        config.check()?;
        let ca = match &config.tls_ca {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("--redis-tls-ca {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let mut instances = Vec::new();
        for (i, url) in config.urls.iter().enumerate() {
            let client = match (&ca, url.starts_with("rediss://")) {
                (Some(ca), true) => redis::Client::build_with_tls(
                    url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.clone()),
                    },
                ),
                _ => redis::Client::open(url.as_str()),
            }
            .map_err(|e| anyhow::anyhow!("--transport {url}: {e}"))?;
            instances.push(Instance {
                url: url.clone(),
                client,
                conn: tokio::sync::Mutex::new(None),
                dial_failure: Mutex::new(None),
                partitions: (i..config.partitions).step_by(config.urls.len()).collect(),
                caught_up: AtomicBool::new(false),
                fault: Mutex::new(Some("catching up with the cluster log".into())),
                appended: AtomicU64::new(0),
                unapplied: AtomicU64::new(0),
                drained: tokio::sync::Notify::new(),
                wanted: AtomicBool::new(false),
                replication: tokio::sync::Mutex::new(Replication::default()),
            });
        }
        let cluster = Arc::new(Cluster {
            instances,
            parts: (0..config.partitions).map(PartKeys::new).collect(),
            shared: SharedKeys {
                presence_prefix: "herald:{p0}:subs:".into(),
                nodes: "herald:{p0}:nodes".into(),
                layout: "herald:{p0}:layout".into(),
            },
            script: redis::Script::new(APPEND),
            reserve: redis::Script::new(RESERVE),
            release: redis::Script::new(RELEASE),
            record: redis::Script::new(RECORD),
            probe: redis::Script::new(PROBE),
            merge_fault: Mutex::new(None),
            applied: watch::channel(vec![0; config.partitions]).0,
            changes: std::sync::OnceLock::new(),
            known_nodes: Mutex::new(Vec::new()),
            stats: ClusterStats::default(),
            config,
        });
        for instance in &cluster.instances {
            let mut conn = instance
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
                            instance.url
                        );
                    }
                }
                Err(e) => tracing::warn!(
                    redis = %instance.url,
                    error = %e,
                    "cannot read Redis's maxmemory-policy (CONFIG disabled?); make sure it is noeviction"
                ),
            }
        }
        // Every node must route a topic to the same partition on the same
        // Redis: the first node to start records the layout.
        let layout = format!(
            "{} partitions over {} Redis",
            cluster.config.partitions,
            cluster.config.urls.len()
        );
        let mut set = redis::cmd("SET");
        set.arg(&cluster.shared.layout)
            .arg(&layout)
            .arg("NX")
            .arg("GET");
        let before: Option<String> = cluster
            .home()
            .query(&set)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(before) = before.filter(|b| *b != layout) {
            anyhow::bail!(
                "this cluster's log is laid out as {before} (key {} on {}), but this node was \
                 given {layout}: every node needs the same --redis-partitions and the same \
                 number of --transport URLs, in the same order. To change the layout, stop \
                 every node and empty the Redis instances first",
                cluster.shared.layout,
                cluster.home().url
            );
        }
        Ok(cluster)
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The first Redis: it holds the cluster's shared keys (presence, the
    /// node list, the layout).
    fn home(&self) -> &Instance {
        &self.instances[0]
    }

    fn instance_of(&self, partition: usize) -> usize {
        partition % self.instances.len()
    }

    /// The partition of an update: that of its first (canonical) topic.
    pub fn partition_of(&self, update: &Update) -> usize {
        let topic = update.topics.first().map(String::as_str).unwrap_or("");
        (fnv(topic) % self.config.partitions as u64) as usize
    }

    /// The partition that remembers an id the publisher chose.
    fn id_home(&self, id: &str) -> usize {
        (fnv(id) % self.config.partitions as u64) as usize
    }

    fn id_key(&self, partition: usize, id: &str) -> String {
        format!("{}{id}", self.parts[partition].id_prefix)
    }

    fn id_ttl_ms(&self) -> u64 {
        (self.config.id_ttl.unwrap_or(DEFAULT_ID_TTL).as_millis() as u64).max(1)
    }

    /// Append updates to the log, all or nothing; returns once Redis has
    /// them. `chosen` says, per update, whether the publisher chose its id
    /// (else the hub generated it, unique by construction). A duplicate id
    /// is [`HubError::History`] `DuplicateId` (409); Redis unreachable or
    /// slow is [`HubError::Unavailable`] (503).
    ///
    /// Each Redis gets one script call for the updates whose partitions it
    /// holds; within a call, updates keep request order (increasing `t`).
    /// - All on one Redis (always so with one Redis): one call, all or
    ///   nothing.
    /// - Over several Redis, every id kept where its update goes and the
    ///   chosen ones on one Redis: that Redis's call first (a duplicate
    ///   refuses the request before anything is appended), then the others
    ///   at once (their generated ids cannot collide).
    /// - Otherwise (a chosen id kept on another Redis than its update): the
    ///   ids are first reserved where they are kept, on every Redis at once
    ///   (a duplicate anywhere refuses the whole request, reserving
    ///   nothing), then the entries are appended, then the ids recorded.
    ///
    /// Over several Redis, only an outage between those calls can leave a
    /// batch partly appended; the publisher then gets 503 naming what was
    /// published.
    pub async fn append(&self, updates: &[Arc<Update>], chosen: &[bool]) -> Result<(), HubError> {
        self.append_as(updates, chosen, false).await
    }

    async fn append_as(
        &self,
        updates: &[Arc<Update>],
        chosen: &[bool],
        live: bool,
    ) -> Result<(), HubError> {
        self.append_entries(updates, chosen, live).await?;
        if self.config.replicas == 0 || live {
            return Ok(());
        }
        // Every Redis written to confirms that its replicas have it; the
        // tickets are taken once all the appends answered.
        let mut touched: Vec<usize> = updates
            .iter()
            .map(|u| self.instance_of(self.partition_of(u)))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let waits = touched.iter().map(|&i| {
            let instance = &self.instances[i];
            let mine = instance.appended.fetch_add(1, Ordering::SeqCst) + 1;
            self.replicated(instance, mine)
        });
        for confirmed in futures_util::future::join_all(waits).await {
            confirmed?;
        }
        Ok(())
    }

    async fn append_entries(
        &self,
        updates: &[Arc<Update>],
        chosen: &[bool],
        live: bool,
    ) -> Result<(), HubError> {
        let now = crate::history::now_ms();
        let out: Vec<Outgoing> = updates
            .iter()
            .enumerate()
            .map(|(i, update)| {
                let partition = self.partition_of(update);
                Outgoing {
                    update,
                    record: record::encode(update, now),
                    partition,
                    id_partition: if live {
                        partition
                    } else {
                        self.id_home(&update.id)
                    },
                    chosen: chosen.get(i).copied().unwrap_or(true) && !live,
                }
            })
            .collect();
        let groups = self.group_by(&out, |o| o.partition);
        let touched: Vec<usize> = (0..groups.len())
            .filter(|&i| !groups[i].is_empty())
            .collect();
        if live {
            let mode = Mode::Live;
            let calls = touched
                .iter()
                .map(|&i| self.append_group(i, &groups[i], mode));
            for result in futures_util::future::join_all(calls).await {
                result?;
            }
            return Ok(());
        }
        let colocated = out
            .iter()
            .all(|o| self.instance_of(o.id_partition) == self.instance_of(o.partition));
        let mut with_chosen = touched
            .iter()
            .copied()
            .filter(|&i| groups[i].iter().any(|o| o.chosen));
        let first = with_chosen.next();
        if colocated && with_chosen.next().is_none() {
            // Ids are checked by the call that appends them.
            let mode = Mode::Stored;
            if let [only] = touched[..] {
                return self
                    .append_group(only, &groups[only], mode)
                    .await
                    .map(|_| ());
            }
            let mut done: Vec<usize> = Vec::new();
            if let Some(first) = first.filter(|_| touched.len() > 1) {
                self.append_group(first, &groups[first], mode).await?;
                done.push(first);
            }
            let rest: Vec<usize> = touched
                .iter()
                .copied()
                .filter(|i| !done.contains(i))
                .collect();
            let calls = rest.iter().map(|&i| self.append_group(i, &groups[i], mode));
            let results = futures_util::future::join_all(calls).await;
            return self.partly(&groups, &done, &rest, results);
        }
        self.append_reserved(&out, &groups, &touched).await
    }

    /// Updates by the Redis that holds `partition(update)`, in request
    /// order.
    fn group_by<'a, 'b>(
        &self,
        out: &'a [Outgoing<'b>],
        partition: impl Fn(&Outgoing) -> usize,
    ) -> Vec<Vec<&'a Outgoing<'b>>> {
        let mut groups = vec![Vec::new(); self.instances.len()];
        for o in out {
            groups[self.instance_of(partition(o))].push(o);
        }
        groups
    }

    /// The outcome of appends to several Redis (`done` went in before
    /// `tried`, whose results are `results`): Ok if all went in, else the
    /// error, naming what was published if anything was.
    fn partly<T>(
        &self,
        groups: &[Vec<&Outgoing>],
        done: &[usize],
        tried: &[usize],
        results: Vec<Result<T, HubError>>,
    ) -> Result<(), HubError> {
        let mut published: Vec<&str> = done
            .iter()
            .flat_map(|&i| groups[i].iter().map(|o| o.update.id.as_str()))
            .collect();
        let mut failure = None;
        for (&i, result) in tried.iter().zip(results) {
            match result {
                Ok(_) => published.extend(groups[i].iter().map(|o| o.update.id.as_str())),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        match failure {
            None => Ok(()),
            Some(e) if published.is_empty() => Err(e),
            Some(e) => Err(HubError::Unavailable(format!(
                "{e}; of this request, {published:?} were published and the others may not have \
                 been: retry those (with their own ids, a retry of a stored one answers 409)"
            ))),
        }
    }

    /// One APPEND call on Redis `instance` for `group` (updates whose
    /// partitions it holds).
    async fn append_group(
        &self,
        instance: usize,
        group: &[&Outgoing<'_>],
        mode: Mode,
    ) -> Result<Vec<u64>, HubError> {
        if group.is_empty() {
            return Ok(Vec::new());
        }
        let instance = &self.instances[instance];
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(self.config.max_len.max(1))
            .arg(self.id_ttl_ms())
            .arg(mode.flag())
            .arg(if self.config.partitions > 1 { "1" } else { "0" });
        for o in group {
            let keys = &self.parts[o.partition];
            // Reserved ids are recorded where they are kept by the caller;
            // the call records the position under the update's own
            // partition at once (found by `position_of`).
            let id_partition = match mode {
                Mode::Reserved => o.partition,
                _ => o.id_partition,
            };
            invocation
                .key(self.id_key(id_partition, &o.update.id))
                .key(&keys.log)
                .key(&keys.counter)
                .key(&keys.clock)
                .arg(o.update.id.as_str())
                .arg(o.record.as_slice())
                .arg(o.partition);
        }
        let mut conn = instance
            .connection()
            .await
            .map_err(|e| HubError::Unavailable(format!("{e}; the update was not published")))?;
        let answer: redis::RedisResult<Value> = invocation.invoke_async(&mut conn).await;
        match answer {
            Ok(Value::Array(items)) => {
                refusal(&items)?;
                let ns: Vec<u64> = items
                    .iter()
                    .filter_map(|v| redis::from_redis_value(v).ok())
                    .collect();
                if ns.len() != group.len() {
                    return Err(HubError::Unavailable(format!(
                        "the cluster log (Redis at {}) answered an append with {} positions for {} updates",
                        instance.url,
                        ns.len(),
                        group.len()
                    )));
                }
                Ok(ns)
            }
            Ok(other) => Err(HubError::Unavailable(format!(
                "the cluster log answered {other:?} to an append; the update may not have been published"
            ))),
            Err(e) => {
                instance.drop_connection().await;
                Err(HubError::Unavailable(format!(
                    "{}; the update may not have been published: retry it (with its own id, a retry of a stored update answers 409)",
                    redis_error(&instance.url, &e)
                )))
            }
        }
    }

    /// Wait until `--redis-replicas` replicas of `instance` have its append
    /// number `mine`. Group commit: one round (a marker write, then `WAIT`,
    /// on a connection of its own) covers every append that answered
    /// before it started, and callers whose append a finished round
    /// covered return at once.
    async fn replicated(&self, instance: &Instance, mine: u64) -> Result<(), HubError> {
        let mut round = instance.replication.lock().await;
        if round.confirmed < mine && round.covered < mine {
            let upto = instance.appended.load(Ordering::SeqCst);
            match self.replica_round(instance, &mut round.conn).await {
                Ok(()) => round.confirmed = upto,
                Err(e) => round.error = e,
            }
            round.covered = upto;
        }
        if round.confirmed >= mine {
            return Ok(());
        }
        Err(HubError::Unavailable(format!(
            "{}: the request is in the log of Redis at {} and is being delivered, but may be lost \
             if that Redis fails over now (retrying with its own ids answers 409 for what was kept)",
            round.error, instance.url
        )))
    }

    async fn replica_round(
        &self,
        instance: &Instance,
        conn: &mut Option<MultiplexedConnection>,
    ) -> Result<(), String> {
        if conn.is_none() {
            let timeout = self.config.replica_timeout + RESPONSE_TIMEOUT;
            *conn = Some(
                instance
                    .dial(timeout)
                    .await
                    .map_err(|e| redis_error(&instance.url, &e))?,
            );
        }
        let c = conn.as_mut().expect("dialled above");
        // Replication is in order: once the replicas have this write, they
        // have every append that answered before it was sent.
        let marker = &self.parts[instance.partitions[0]].sync;
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(marker).arg(1).ignore();
        pipe.cmd("WAIT")
            .arg(self.config.replicas)
            .arg(self.config.replica_timeout.as_millis() as u64);
        let acked: redis::RedisResult<(u64,)> = pipe.query_async(c).await;
        match acked {
            Ok((n,)) if n as usize >= self.config.replicas => Ok(()),
            Ok((n,)) => Err(format!(
                "only {n} of the {} replicas asked for (--redis-replicas) acknowledged it within {:?}",
                self.config.replicas, self.config.replica_timeout
            )),
            Err(e) => {
                *conn = None;
                Err(redis_error(&instance.url, &e))
            }
        }
    }

    /// A publish with a chosen id kept on another Redis than its update:
    /// reserve every id where it is kept, append, record the ids.
    async fn append_reserved(
        &self,
        out: &[Outgoing<'_>],
        groups: &[Vec<&Outgoing<'_>>],
        touched: &[usize],
    ) -> Result<(), HubError> {
        // 1. Reserve, on every Redis at once; all or none.
        let id_groups = self.group_by(out, |o| o.id_partition);
        let keepers: Vec<usize> = (0..id_groups.len())
            .filter(|&i| !id_groups[i].is_empty())
            .collect();
        let token = format!("{:016x}", rand::random::<u64>());
        let reservations = keepers.iter().map(|&i| {
            let mut invocation = self.reserve.prepare_invoke();
            invocation
                .arg(RESERVATION_HOLD.as_millis() as u64)
                .arg(&token);
            for o in &id_groups[i] {
                invocation
                    .key(self.id_key(o.id_partition, &o.update.id))
                    .arg(o.update.id.as_str());
            }
            async move {
                match self.invoke(i, &invocation).await {
                    Ok(Value::Array(items)) => refusal(&items),
                    Ok(_) => Ok(()),
                    Err(e) => Err(HubError::Unavailable(format!(
                        "{e}; the update was not published"
                    ))),
                }
            }
        });
        let results = futures_util::future::join_all(reservations).await;
        if results.iter().any(Result::is_err) {
            let reserved: Vec<&Outgoing> = keepers
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .flat_map(|(&i, _)| id_groups[i].iter().copied())
                .collect();
            self.release(&reserved, &token).await;
            // A duplicate says more than an outage.
            let mut errors: Vec<HubError> = results.into_iter().filter_map(Result::err).collect();
            let dup = errors
                .iter()
                .position(|e| matches!(e, HubError::History(_)));
            return Err(errors.swap_remove(dup.unwrap_or(0)));
        }
        // 2. Append, on every Redis at once.
        let calls = touched
            .iter()
            .map(|&i| self.append_group(i, &groups[i], Mode::Reserved));
        let results = futures_util::future::join_all(calls).await;
        let mut positions: Vec<(&Outgoing, u64)> = Vec::new();
        let mut failed: Vec<&Outgoing> = Vec::new();
        for (&i, result) in touched.iter().zip(&results) {
            match result {
                Ok(ns) => positions.extend(groups[i].iter().copied().zip(ns.iter().copied())),
                Err(_) => failed.extend(groups[i].iter().copied()),
            }
        }
        // 3. Record where each id is, replacing its reservation.
        let ttl = self.id_ttl_ms();
        let records = keepers.iter().map(|&i| {
            let mut invocation = self.record.prepare_invoke();
            invocation.arg(ttl).arg(&token);
            for (o, n) in positions
                .iter()
                .filter(|(o, _)| self.instance_of(o.id_partition) == i)
            {
                invocation
                    .key(self.id_key(o.id_partition, &o.update.id))
                    .arg(format!("{}:{n}", o.partition));
            }
            async move { self.invoke(i, &invocation).await.map(|_| ()) }
        });
        let recorded = futures_util::future::join_all(records).await;
        if !failed.is_empty() {
            // Whether a failed call's entries went in is unknown: their
            // reservations stay until they expire, so a retry within the
            // hold answers 503 rather than publish twice.
            return self.partly(groups, &[], touched, results);
        }
        if let Some(Err(e)) = recorded.into_iter().find(Result::is_err) {
            return Err(HubError::Unavailable(format!(
                "{e}; the update was published but its id could not be recorded: it is delivered, \
                 but a retry within {RESERVATION_HOLD:?} answers 503 and one after that may publish it twice"
            )));
        }
        Ok(())
    }

    async fn invoke(
        &self,
        instance: usize,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Value, String> {
        let instance = &self.instances[instance];
        let mut conn = instance.connection().await?;
        match invocation.invoke_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                instance.drop_connection().await;
                Err(redis_error(&instance.url, &e))
            }
        }
    }

    /// Drop reservations that were not used. Best effort: an unreleased
    /// one expires by itself.
    async fn release(&self, outs: &[&Outgoing<'_>], token: &str) {
        let mut by_instance: Vec<Vec<String>> = vec![Vec::new(); self.instances.len()];
        for o in outs {
            by_instance[self.instance_of(o.id_partition)]
                .push(self.id_key(o.id_partition, &o.update.id));
        }
        for (i, keys) in by_instance.into_iter().enumerate() {
            if keys.is_empty() {
                continue;
            }
            let mut invocation = self.release.prepare_invoke();
            invocation.arg(token);
            for key in &keys {
                invocation.key(key);
            }
            if let Err(e) = self.invoke(i, &invocation).await {
                tracing::warn!(error = %e, "could not release id reservations; they expire by themselves");
            }
        }
    }

    /// Where `id` is in the log, if Redis still remembers it.
    pub async fn position_of(&self, id: &str) -> Result<Option<LogPosition>, String> {
        // An id is kept in its own partition, and one published over two
        // Redis also in its update's: ask every partition, one MGET per
        // Redis, all at once.
        let asks = self.instances.iter().map(|instance| {
            let mut cmd = redis::cmd("MGET");
            for &p in &instance.partitions {
                cmd.arg(self.id_key(p, id));
            }
            async move { instance.query::<Vec<Option<String>>>(&cmd).await }
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut pending = false;
        let mut failure = None;
        for answer in answers {
            match answer {
                Ok(values) => {
                    for value in values.iter().flatten() {
                        match parse_position(value) {
                            Some(position) => return Ok(Some(position)),
                            None => pending |= value.starts_with("pending"),
                        }
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        if pending {
            return Err(format!("update {id:?} is being published right now"));
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// A fresh id for an update whose first topic is `topic`: one kept in
    /// the update's own partition, so that publishing it needs one Redis.
    pub fn generate_id(&self, topic: &str) -> String {
        let partition = (fnv(topic) % self.config.partitions as u64) as usize;
        loop {
            let id = Update::generate_id();
            if self.id_home(&id) == partition {
                return id;
            }
        }
    }

    /// Wait (at most `limit`) until this node has applied the entry at
    /// `position`; true when it has.
    pub async fn wait_applied(&self, position: LogPosition, limit: Duration) -> bool {
        let (partition, n) = position;
        if partition >= self.config.partitions {
            return false;
        }
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|applied| applied[partition] >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Why this node cannot serve as part of the cluster right now.
    pub fn readiness(&self) -> Result<(), String> {
        for instance in &self.instances {
            if let Some(reason) = &*instance.fault.lock() {
                return Err(format!("node {}: {reason}", self.config.node_id));
            }
            if !instance.caught_up.load(Ordering::Relaxed) {
                return Err(format!(
                    "node {}: catching up with the cluster log (Redis at {})",
                    self.config.node_id, instance.url
                ));
            }
        }
        if let Some(reason) = &*self.merge_fault.lock() {
            return Err(format!("node {}: {reason}", self.config.node_id));
        }
        Ok(())
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
        let (tx, rx) = mpsc::unbounded_channel();
        if self.changes.set(tx).is_err() {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move { cluster.presence(rx).await });
    }

    fn presence_key(&self) -> String {
        format!("{}{}", self.shared.presence_prefix, self.config.node_id)
    }

    async fn presence(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Change>) {
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
                        if let Err(e) = self.append_as(&events, &[], true).await {
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
            pipe.zadd(&self.shared.nodes, &self.config.node_id, now_ms)
                .ignore();
            // Nodes silent for four expiries are forgotten.
            let forgotten = now_ms.saturating_sub(4 * PRESENCE_TTL.as_millis() as u64);
            pipe.zrembyscore(&self.shared.nodes, 0, forgotten).ignore();
            stale = self.run_pipe(pipe).await.is_err();
        }
    }

    async fn run_pipe(&self, pipe: redis::Pipeline) -> Result<(), ()> {
        let mut conn = self.home().connection().await.map_err(|_| ())?;
        let done: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
        if done.is_err() {
            self.home().drop_connection().await;
        }
        done.map_err(|_| ())
    }

    /// The subscriptions held by the other nodes (each node's own are in
    /// its registry): the nodes heard from within the presence expiry.
    pub async fn subscriptions_elsewhere(&self) -> Result<Vec<SubscriptionInfo>, String> {
        let mut conn = self.home().connection().await?;
        let since = crate::history::now_ms().saturating_sub(PRESENCE_TTL.as_millis() as u64);
        let nodes: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&self.shared.nodes)
            .arg(since)
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(&self.home().url, &e))?;
        let mut out = Vec::new();
        for node in nodes.iter().filter(|n| **n != self.config.node_id) {
            let values: Vec<String> = redis::cmd("HVALS")
                .arg(format!("{}{node}", self.shared.presence_prefix))
                .query_async(&mut conn)
                .await
                .map_err(|e| redis_error(&self.home().url, &e))?;
            out.extend(
                values
                    .iter()
                    .filter_map(|v| serde_json::from_str::<Presence>(v).ok())
                    .filter_map(Presence::into_info),
            );
        }
        Ok(out)
    }

    /// The log does not continue where this node left it (`last` was
    /// the last counter read from a partition, `got` what the log says now): Redis was
    /// flushed or restored, or this node fell behind the log's cap. History
    /// is dropped, so resumes from before answer `earliest` instead of
    /// silently skipping what is gone.
    fn log_reset(&self, hub: &Hub, partition: usize, last: u64, got: u64) {
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            node = %self.config.node_id,
            partition,
            last_applied = last,
            log_says = got,
            "the cluster log does not continue where this node left it (Redis flushed or \
             restored, or this node fell behind its cap): history before this point is \
             dropped, so resumes from before answer earliest"
        );
        hub.forget_history();
        // Counters of the old log mean nothing in the new one.
        self.applied.send_modify(|applied| applied[partition] = 0);
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

    /// Every Redis's partitions have been read as far as they went at
    /// start.
    pub fn is_caught_up(&self) -> bool {
        self.instances
            .iter()
            .all(|i| i.caught_up.load(Ordering::Relaxed))
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
                let Ok(mut conn) = c.home().connection().await else {
                    continue;
                };
                let mut pipe = redis::pipe();
                pipe.zadd(&c.shared.nodes, &c.config.node_id, now).ignore();
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(&c.shared.nodes)
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
                    Err(_) => c.home().drop_connection().await,
                }
            }
        });
    }

    /// The nodes heard from lately, with how long ago (ms), as of the last
    /// heartbeat.
    pub fn nodes(&self) -> Vec<(String, u64)> {
        self.known_nodes.lock().clone()
    }

    /// Start the tail: one reader per Redis (back-fill from the start of
    /// its partitions, then follow them) and the merger that applies what
    /// they read to `hub` in one order, until the hub closes.
    pub fn start_tail(self: &Arc<Self>, hub: &Arc<Hub>) {
        // Bounded: a merger that falls behind holds the readers back
        // rather than buffer without limit.
        let (tx, rx) = mpsc::channel(4 * self.instances.len());
        for i in 0..self.instances.len() {
            let cluster = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move { cluster.read(i, tx).await });
        }
        let cluster = self.clone();
        let hub = Arc::downgrade(hub);
        tokio::spawn(async move { cluster.merge(hub, rx).await });
    }

    /// The reader of one Redis: its partitions' entries, in order per
    /// partition, to the merger.
    async fn read(self: Arc<Self>, i: usize, tx: mpsc::Sender<Read>) {
        let instance = &self.instances[i];
        let node = self.config.node_id.as_str();
        let parts = &instance.partitions;
        let mut conn: Option<MultiplexedConnection> = None;
        // Per partition of this Redis: the last entry id read ("0" = from
        // the start), its counter and its clock.
        let mut position: Vec<String> = vec!["0".into(); parts.len()];
        let mut last_n: Vec<Option<u64>> = vec![None; parts.len()];
        let mut last_t: Vec<u64> = vec![0; parts.len()];
        // After a reset: entries stamped up to here were read before it (a
        // log restored from an older copy), not delivered again.
        // (t, n): entries of a restored log that this node read before.
        let mut read_before: Vec<(u64, u64)> = vec![(0, 0); parts.len()];
        let mut last_check = Instant::now();
        // The last entry of each partition when the reader started: caught
        // up once read that far (even while publishes go on).
        let mut start_ends: Option<Vec<Option<StreamId>>> = None;
        let mut caught_up = false;
        let mut backoff = BACKOFF_MIN;
        loop {
            if tx.is_closed() {
                return;
            }
            if conn.is_none() {
                // Its reads block up to BLOCK before they answer.
                match instance.dial(BLOCK + RESPONSE_TIMEOUT).await {
                    Ok(c) => {
                        if self.stats.reconnects.fetch_add(1, Ordering::Relaxed)
                            >= self.instances.len() as u64
                        {
                            tracing::info!(node, redis = %instance.url, "reconnected to the cluster log");
                        }
                        conn = Some(c);
                        backoff = BACKOFF_MIN;
                    }
                    Err(e) => {
                        instance.set_fault(
                            node,
                            format!(
                                "{}; retrying in {backoff:?}",
                                redis_error(&instance.url, &e)
                            ),
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
            // Let the merger apply what was read before reading on: pages
            // then grow with the load instead of being read (and applied)
            // a few entries at a time. Not while the merger waits for one
            // of this Redis's partitions (it needs this read), and at most
            // READ_AHEAD_WAIT, unless the merger holds MAX_UNAPPLIED of
            // this Redis's entries back (another Redis is down, say): then
            // until it applies some, so the backlog stays in Redis.
            loop {
                let unapplied = instance.unapplied.load(Ordering::Acquire);
                if unapplied == 0 || instance.wanted.load(Ordering::Acquire) {
                    break;
                }
                let drained = instance.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if instance.unapplied.load(Ordering::Acquire) == 0
                    || instance.wanted.load(Ordering::Acquire)
                {
                    break;
                }
                let full = unapplied >= MAX_UNAPPLIED;
                let wait = if full { BLOCK } else { READ_AHEAD_WAIT };
                if tokio::time::timeout(wait, drained).await.is_err() && !full {
                    break;
                }
                if tx.is_closed() {
                    return;
                }
            }
            let c = conn.as_mut().expect("connected above");
            if start_ends.is_none() {
                let mut pipe = redis::pipe();
                for &p in parts {
                    pipe.cmd("XREVRANGE")
                        .arg(&self.parts[p].log)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1);
                }
                let ends: redis::RedisResult<Vec<redis::streams::StreamRangeReply>> =
                    pipe.query_async(c).await;
                match ends {
                    Ok(ends) => {
                        start_ends = Some(
                            ends.iter()
                                .map(|r| r.ids.first().and_then(|e| StreamId::parse(&e.id)))
                                .collect(),
                        )
                    }
                    Err(_) => {
                        conn = None;
                        continue;
                    }
                }
            }
            // Until caught up, read without blocking.
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT").arg(PAGE);
            if caught_up {
                cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
            }
            cmd.arg("STREAMS");
            for &p in parts {
                cmd.arg(&self.parts[p].log);
            }
            cmd.arg(&position);
            let read: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                cmd.query_async(c).await;
            let streams = match read {
                Ok(reply) => reply.map(|r| r.keys).unwrap_or_default(),
                Err(e) => {
                    conn = None;
                    // The shared connection is as dead as this one: dial
                    // afresh on the next publish rather than fail it.
                    instance.drop_connection().await;
                    instance.set_fault(
                        node,
                        format!(
                            "{}; reconnecting in {backoff:?}",
                            redis_error(&instance.url, &e)
                        ),
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let mut entries = Vec::new();
            let mut seen = Vec::new();
            for stream in streams {
                let Some(k) = parts.iter().position(|&p| self.parts[p].log == stream.key) else {
                    continue;
                };
                if stream.ids.is_empty() {
                    continue;
                }
                for entry in stream.ids {
                    position[k].clone_from(&entry.id);
                    let n: Option<u64> = entry
                        .map
                        .get("n")
                        .and_then(|v| redis::from_redis_value(v).ok());
                    // An entry written without a clock (by a Herald of
                    // before partitions) sorts by its stream id's time.
                    let t: u64 = entry
                        .map
                        .get("t")
                        .and_then(|v| redis::from_redis_value(v).ok())
                        .or_else(|| StreamId::parse(&entry.id).map(|s| s.ms * 1000))
                        .unwrap_or(0);
                    let decoded = entry
                        .map
                        .get("r")
                        .and_then(|v| redis::from_redis_value::<Vec<u8>>(v).ok())
                        .ok_or_else(|| "no record field".to_string())
                        .and_then(|bytes| record::decode(&bytes));
                    let update = match decoded {
                        Ok((update, _)) => Some((Arc::new(update), !entry.map.contains_key("l"))),
                        Err(_) => None,
                    };
                    if n.is_none() || update.is_none() {
                        self.stats.bad_entries.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            node,
                            entry = %entry.id,
                            log = %stream.key,
                            "skipped a log entry that is not a Herald update"
                        );
                    }
                    // An entry without a counter cannot be placed: skipped
                    // (its id is still reported as read). A counted one
                    // counts even when its record is bad (a newer record
                    // version, say): the next one follows it.
                    let Some(n) = n else { continue };
                    // Entries of the restored log up to where it was
                    // restored (counter `got`) that this node had read (a
                    // flush restores nothing: got = 0, nothing skipped).
                    if n <= read_before[k].1 && t <= read_before[k].0 {
                        last_n[k] = Some(n);
                        continue;
                    }
                    let gap = last_n[k].filter(|last| n != last + 1).map(|last| (last, n));
                    last_n[k] = Some(n);
                    last_t[k] = last_t[k].max(t);
                    entries.push(Entry {
                        partition: parts[k],
                        n,
                        t,
                        update,
                        gap,
                    });
                }
                seen.push((parts[k], last_n[k].unwrap_or(0)));
            }
            let idle = seen.is_empty();
            if !seen.is_empty() {
                instance
                    .unapplied
                    .fetch_add(entries.len() as u64, Ordering::AcqRel);
                if tx.send(Read::Entries { entries, seen }).await.is_err() {
                    return;
                }
            }
            if idle || last_check.elapsed() >= COUNTER_CHECK {
                // A log that was flushed or restored while its stream ids
                // went backwards (another clock) would never show up in
                // XREAD from our position; its counter does. Checked when
                // idle, and once a second under load (a partition that
                // gets nothing while its neighbours are busy).
                last_check = Instant::now();
                let mut mget = redis::cmd("MGET");
                for &p in parts {
                    mget.arg(&self.parts[p].counter);
                }
                let counters: redis::RedisResult<Vec<Option<u64>>> = mget.query_async(c).await;
                if let Ok(counters) = counters {
                    for (k, counter) in counters.into_iter().enumerate() {
                        let got = counter.unwrap_or(0);
                        if let Some(last) = last_n[k].filter(|last| got < *last) {
                            let reset = Read::Reset {
                                partition: parts[k],
                                last,
                                got,
                            };
                            if tx.send(reset).await.is_err() {
                                return;
                            }
                            position[k] = "0".into();
                            last_n[k] = None;
                            read_before[k] = (last_t[k], got);
                        }
                    }
                }
            }
            let reached = start_ends.as_ref().is_some_and(|ends| {
                ends.iter().zip(&position).all(|(end, at)| {
                    end.is_none_or(|end| StreamId::parse(at).is_some_and(|at| at >= end))
                })
            });
            if !caught_up && (idle || reached) {
                caught_up = true;
                // The merger says so once it has applied what came before.
                if tx.send(Read::CaughtUp(i)).await.is_err() {
                    return;
                }
            }
            if caught_up {
                instance.clear_fault(node);
            }
        }
    }

    /// The merger: applies the readers' entries in `(t, partition)` order,
    /// each once no partition can still produce an earlier one.
    async fn merge(self: Arc<Self>, hub: Weak<Hub>, mut rx: mpsc::Receiver<Read>) {
        let mut merge = Merge::new(self.config.partitions);
        // The partitions holding the head back, and the last queued clock.
        let mut stuck: Option<(Vec<usize>, u64)> = None;
        let mut stuck_since: Option<Instant> = None;
        // When to ask the partitions that hold the head back.
        let mut probe_due: Option<Instant> = None;
        // Readers that read all there was at start, with the counters then
        // read per partition.
        let mut pending_caught_up: Vec<(usize, Vec<(usize, u64)>)> = Vec::new();
        loop {
            let read = match &stuck {
                None => {
                    probe_due = None;
                    match rx.recv().await {
                        Some(read) => Some(read),
                        None => return,
                    }
                }
                Some((blocked, target)) => {
                    // Under load the held-back partitions' entries arrive
                    // within a moment and bound the head without a
                    // question. Past PROBE_DELAY since the hold began (not
                    // since the last read: a steady trickle must not put
                    // the question off for ever), ask them whether they
                    // have anything unread; if not, their next entries are
                    // made to sort after everything queued.
                    // Partitions that have been quiet a while are asked at
                    // once: waiting for them would only add latency.
                    let quiet = blocked.iter().all(|&p| merge.quiet(p, QUIET));
                    let due = *probe_due.get_or_insert_with(|| {
                        Instant::now() + if quiet { Duration::ZERO } else { PROBE_DELAY }
                    });
                    if Instant::now() < due {
                        match tokio::time::timeout_at(due.into(), rx.recv()).await {
                            Ok(Some(read)) => Some(read),
                            Ok(None) => return,
                            Err(_) => None,
                        }
                    } else {
                        let probed = self.probe(blocked, *target, &mut merge).await;
                        probe_due = Some(
                            Instant::now()
                                + match probed {
                                    Probed::Bounded => Duration::ZERO,
                                    Probed::Unread => PROBE_AGAIN,
                                    Probed::Failed => PROBE_BACKOFF,
                                },
                        );
                        match rx.try_recv() {
                            Ok(read) => Some(read),
                            Err(mpsc::error::TryRecvError::Disconnected) => return,
                            Err(mpsc::error::TryRecvError::Empty) => None,
                        }
                    }
                }
            };
            let Some(hub) = hub.upgrade() else { return };
            if hub.is_closed() {
                return;
            }
            let mut next = read;
            let mut caught_up = Vec::new();
            while let Some(read) = next.take() {
                match read {
                    Read::Entries { entries, seen } => {
                        for entry in entries {
                            merge.push(entry);
                        }
                        for (p, n) in seen {
                            merge.seen(p, n);
                        }
                    }
                    Read::Reset {
                        partition,
                        last,
                        got,
                    } => {
                        merge.reset(partition, last, got);
                        // Counters of the old log mean nothing now.
                        for (_, targets) in &mut pending_caught_up {
                            for (p, n) in targets.iter_mut() {
                                if *p == partition {
                                    *n = 0;
                                }
                            }
                        }
                    }
                    Read::CaughtUp(i) => caught_up.push(i),
                }
                next = rx.try_recv().ok();
            }
            let (ready, blocked) = merge.ready();
            if !ready.is_empty() {
                // Progress: a new hold waits PROBE_DELAY afresh.
                probe_due = None;
            }
            self.apply(&hub, ready).await;
            // The readers of the Redis it waits for read on at once.
            for (i, instance) in self.instances.iter().enumerate() {
                let wanted = blocked.as_ref().is_some_and(|(partitions, _)| {
                    partitions.iter().any(|&p| self.instance_of(p) == i)
                });
                if instance.wanted.swap(wanted, Ordering::AcqRel) != wanted && wanted {
                    instance.drained.notify_waiters();
                }
            }
            match blocked {
                Some((partitions, target)) => {
                    let since = *stuck_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > STALL {
                        let on: Vec<String> = partitions
                            .iter()
                            .map(|&p| {
                                format!(
                                    "{p} (Redis at {})",
                                    self.instances[self.instance_of(p)].url
                                )
                            })
                            .collect();
                        self.set_merge_fault(format!(
                            "delivery has waited {:?} for partitions {} to answer",
                            since.elapsed(),
                            on.join(", ")
                        ));
                    }
                    stuck = Some((partitions, target));
                }
                None => {
                    stuck = None;
                    stuck_since = None;
                    self.set_merge_fault(String::new());
                }
            }
            // Caught up once what was read before is applied.
            for i in caught_up {
                let targets = self.instances[i]
                    .partitions
                    .iter()
                    .map(|&p| (p, merge.pushed(p)))
                    .collect::<Vec<_>>();
                pending_caught_up.push((i, targets));
            }
            let applied = self.applied.borrow().clone();
            let (done, waiting): (Vec<_>, Vec<_>) = pending_caught_up
                .drain(..)
                .partition(|(_, targets)| targets.iter().all(|&(p, n)| applied[p] >= n));
            pending_caught_up = waiting;
            for (i, _) in done {
                let instance = &self.instances[i];
                instance.caught_up.store(true, Ordering::Relaxed);
                tracing::info!(
                    node = %self.config.node_id,
                    redis = %instance.url,
                    applied = self.stats.applied.load(Ordering::Relaxed),
                    "caught up with the cluster log"
                );
            }
        }
    }

    /// A stalled merge shows on `/readyz` (empty: not stalled).
    fn set_merge_fault(&self, reason: String) {
        let mut fault = self.merge_fault.lock();
        if reason.is_empty() {
            if fault.take().is_some() {
                tracing::info!(node = %self.config.node_id, "delivery goes on");
            }
            return;
        }
        if fault.is_none() {
            tracing::error!(node = %self.config.node_id, %reason, "cluster log");
        }
        *fault = Some(reason);
    }

    /// Ask each Redis (all at once) whether the partitions in `stuck` have
    /// anything unread; those that have not get their clock raised to
    /// `target` (the last queued entry's), so their next entries sort after
    /// everything queued whatever the Redis clocks say, and are bounded in
    /// `merge`.
    async fn probe(&self, stuck: &[usize], target: u64, merge: &mut Merge) -> Probed {
        let asks = (0..self.instances.len()).filter_map(|i| {
            let asked: Vec<usize> = stuck
                .iter()
                .copied()
                .filter(|&p| self.instance_of(p) == i)
                .collect();
            if asked.is_empty() {
                return None;
            }
            let mut invocation = self.probe.prepare_invoke();
            invocation.arg(target);
            for &p in &asked {
                invocation
                    .key(&self.parts[p].counter)
                    .key(&self.parts[p].clock)
                    .arg(merge.last_read(p));
            }
            Some(async move {
                self.stats.probes.fetch_add(1, Ordering::Relaxed);
                let answer = tokio::time::timeout(PROBE_TIMEOUT, self.invoke(i, &invocation)).await;
                (asked, answer)
            })
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut probed = Probed::Unread;
        let mut failed = false;
        for (asked, answer) in answers {
            let Ok(Ok(value)) = answer else {
                failed = true;
                continue;
            };
            let clocks: Vec<u64> = redis::from_redis_value(&value).unwrap_or_default();
            for (&p, &clock) in asked.iter().zip(&clocks) {
                if clock > 0 {
                    merge.bound(p, clock + 1);
                    probed = Probed::Bounded;
                }
            }
        }
        if failed && matches!(probed, Probed::Unread) {
            Probed::Failed
        } else {
            probed
        }
    }

    async fn apply(&self, hub: &Hub, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        if let Some(delay) = apply_delay() {
            tokio::time::sleep(delay).await;
        }
        let mut tops: Vec<(usize, u64)> = Vec::new();
        let mut page = Vec::with_capacity(entries.len());
        let mut count = 0;
        let mut per_instance = vec![0u64; self.instances.len()];
        for entry in entries {
            if let Some((last, got)) = entry.gap {
                // Store what came before, then drop the replica: the reset
                // takes its place in the order.
                self.apply_page(hub, std::mem::take(&mut page), &mut tops, &mut count)
                    .await;
                self.log_reset(hub, entry.partition, last, got);
            }
            if entry.n > 0 {
                tops.push((entry.partition, entry.n));
                count += 1;
                per_instance[self.instance_of(entry.partition)] += 1;
            }
            if let Some(update) = entry.update {
                page.push(update);
            }
        }
        self.apply_page(hub, page, &mut tops, &mut count).await;
        for (instance, applied) in self.instances.iter().zip(per_instance) {
            if applied > 0 {
                instance.unapplied.fetch_sub(applied, Ordering::AcqRel);
                instance.drained.notify_waiters();
            }
        }
    }

    async fn apply_page(
        &self,
        hub: &Hub,
        page: Vec<(Arc<Update>, bool)>,
        tops: &mut Vec<(usize, u64)>,
        count: &mut u64,
    ) {
        if !page.is_empty() && !apply_page(hub, page).await {
            self.apply_failed(hub);
        }
        if !tops.is_empty() {
            self.applied.send_modify(|applied| {
                for (p, n) in tops.drain(..) {
                    applied[p] = n;
                }
            });
        }
        self.stats
            .applied
            .fetch_add(std::mem::take(count), Ordering::Relaxed);
    }
}

/// What a probe found.
enum Probed {
    /// At least one partition has nothing unread: the head may go.
    Bounded,
    /// Entries are on their way to the merger.
    Unread,
    /// A Redis did not answer.
    Failed,
}

/// A stream entry id, `ms-seq`, ordered.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    fn parse(id: &str) -> Option<StreamId> {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// The merger's state: per partition, the entries read and not yet
/// applied, and the least `t` its next unread entry can have.
struct Merge {
    queues: Vec<VecDeque<Entry>>,
    /// The next unread entry of the partition has `t >= low`.
    low: Vec<u64>,
    /// Counter of the last entry read from the partition (0: none).
    last_read: Vec<u64>,
    /// Counter of the last entry queued for the partition (0: none).
    pushed: Vec<u64>,
    /// When the partition's last entry was queued.
    arrived: Vec<Option<Instant>>,
    /// `t` of the last entry applied: an entry that arrives below it (only
    /// after a reset) is applied next rather than out of place.
    floor: u64,
}

impl Merge {
    fn new(parts: usize) -> Merge {
        Merge {
            queues: (0..parts).map(|_| VecDeque::new()).collect(),
            low: vec![0; parts],
            last_read: vec![0; parts],
            pushed: vec![0; parts],
            arrived: vec![None; parts],
            floor: 0,
        }
    }

    fn push(&mut self, mut entry: Entry) {
        let p = entry.partition;
        let back = self.queues[p].back().map_or(0, |e| e.t);
        entry.t = entry.t.max(back).max(self.floor);
        self.low[p] = self.low[p].max(entry.t + 1);
        self.pushed[p] = entry.n;
        self.arrived[p] = Some(Instant::now());
        self.queues[p].push_back(entry);
    }

    /// The reader has read partition `p` up to the entry counted `n`.
    fn seen(&mut self, p: usize, n: u64) {
        self.last_read[p] = n;
    }

    fn last_read(&self, p: usize) -> u64 {
        self.last_read[p]
    }

    fn pushed(&self, p: usize) -> u64 {
        self.pushed[p]
    }

    /// No entry of partition `p` was queued within `window`.
    fn quiet(&self, p: usize, window: Duration) -> bool {
        self.arrived[p].is_none_or(|at| at.elapsed() >= window)
    }

    /// Partition `p` was flushed or restored (its counter went from `last`
    /// back to `got`): the reset takes its place after what was read of it,
    /// and reading starts again from the start of the new log.
    fn reset(&mut self, p: usize, last: u64, got: u64) {
        let back = self.queues[p].back().map_or(0, |e| e.t);
        self.queues[p].push_back(Entry {
            partition: p,
            n: 0,
            t: back.max(self.floor),
            update: None,
            gap: Some((last, got)),
        });
        self.last_read[p] = 0;
        self.pushed[p] = 0;
    }

    /// Nothing unread in `p` can sort before `low`.
    fn bound(&mut self, p: usize, low: u64) {
        self.low[p] = self.low[p].max(low);
    }

    fn head(&self) -> Option<usize> {
        (0..self.queues.len())
            .filter_map(|p| self.queues[p].front().map(|e| (e.t, p)))
            .min()
            .map(|(_, p)| p)
    }

    /// The entries that can be applied now, in order; then, if one is held
    /// back, the idle partitions that hold it and the last queued `t` (the
    /// clock they are asked to move past).
    fn ready(&mut self) -> (Vec<Entry>, Option<(Vec<usize>, u64)>) {
        let mut out = Vec::new();
        while let Some(p) = self.head() {
            let t = self.queues[p].front().map_or(0, |e| e.t);
            // Another partition with nothing read could still produce an
            // entry that sorts before this one.
            let blocking: Vec<usize> = (0..self.queues.len())
                .filter(|&q| q != p && self.queues[q].is_empty() && (self.low[q], q) <= (t, p))
                .collect();
            if !blocking.is_empty() {
                // Ask them to sort after everything queued, not only after
                // the head: one question then lets the whole backlog go.
                let last = self
                    .queues
                    .iter()
                    .filter_map(|q| q.back().map(|e| e.t))
                    .max()
                    .unwrap_or(t);
                return (out, Some((blocking, last)));
            }
            let entry = self.queues[p].pop_front().expect("head has an entry");
            self.floor = entry.t;
            out.push(entry);
        }
        (out, None)
    }
}

/// A duplicate or reserved id in a script's answer.
fn refusal(items: &[Value]) -> Result<(), HubError> {
    if let (Some(Value::BulkString(tag)), Some(id)) = (items.first(), items.get(1)) {
        let id: String = redis::from_redis_value(id).unwrap_or_default();
        match tag.as_slice() {
            b"dup" => {
                return Err(HubError::History(
                    crate::history::HistoryError::DuplicateId(id),
                ))
            }
            b"busy" => {
                return Err(HubError::Unavailable(format!(
                    "update id {id:?} is being published by another request right now; \
                     retry in a moment (it answers 409 if that one stored it)"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// An id key's value: `partition:counter` (or a bare counter, partition 0,
/// as the first cluster version wrote it); `pending` is no position yet.
fn parse_position(value: &str) -> Option<LogPosition> {
    match value.split_once(':') {
        Some((p, n)) => Some((p.parse().ok()?, n.parse().ok()?)),
        None => Some((0, value.parse().ok()?)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(partition: usize, n: u64, t: u64) -> Entry {
        Entry {
            partition,
            n,
            t,
            update: None,
            gap: None,
        }
    }

    fn order(entries: &[Entry]) -> Vec<(usize, u64)> {
        entries.iter().map(|e| (e.partition, e.n)).collect()
    }

    fn blocked(ready: &Option<(Vec<usize>, u64)>) -> Vec<usize> {
        ready.as_ref().map(|(b, _)| b.clone()).unwrap_or_default()
    }

    #[test]
    fn the_merge_waits_for_idle_partitions_then_orders_by_clock() {
        let mut m = Merge::new(3);
        m.push(entry(1, 1, 20));
        m.push(entry(0, 1, 10));
        // Partition 2 has said nothing: it could still hold an earlier one.
        let (ready, held) = m.ready();
        assert!(ready.is_empty());
        assert_eq!(
            held,
            Some((vec![2], 20)),
            "held back by 2, asked to move past all that is queued"
        );
        // Nothing before 15 can come from it.
        m.bound(2, 15);
        let (ready, held) = m.ready();
        assert_eq!(order(&ready), vec![(0, 1)]);
        assert_eq!(blocked(&held), vec![0, 2]);
        m.push(entry(2, 1, 18));
        m.bound(0, 30);
        // Partition 2 could still produce one at 19, before 20.
        let (ready, held) = m.ready();
        assert_eq!(order(&ready), vec![(2, 1)]);
        assert_eq!(blocked(&held), vec![2]);
        m.bound(2, 25);
        let (ready, held) = m.ready();
        assert_eq!(order(&ready), vec![(1, 1)]);
        assert!(held.is_none());
    }

    #[test]
    fn equal_clocks_order_by_partition_and_late_entries_are_not_lost() {
        let mut m = Merge::new(2);
        m.push(entry(1, 1, 10));
        m.push(entry(0, 1, 10));
        m.bound(0, 11);
        m.bound(1, 11);
        assert_eq!(order(&m.ready().0), vec![(0, 1), (1, 1)]);
        // Below what was applied (only after a reset): applied next, not
        // dropped.
        m.push(entry(0, 2, 5));
        m.bound(1, 20);
        let (ready, _) = m.ready();
        assert_eq!(order(&ready), vec![(0, 2)]);
    }

    #[test]
    fn a_reset_takes_its_place_after_what_was_read_of_its_partition() {
        let mut m = Merge::new(2);
        m.push(entry(0, 7, 10));
        m.reset(0, 7, 0);
        m.push(entry(1, 1, 12));
        m.push(entry(0, 1, 11));
        m.bound(0, 20);
        m.bound(1, 20);
        let (ready, held) = m.ready();
        let marks: Vec<(usize, u64, bool)> = ready
            .iter()
            .map(|e| (e.partition, e.n, e.gap.is_some()))
            .collect();
        assert_eq!(
            marks,
            vec![(0, 7, false), (0, 0, true), (0, 1, false), (1, 1, false)]
        );
        assert!(held.is_none());
    }

    #[test]
    fn one_question_lets_the_whole_backlog_go() {
        let mut m = Merge::new(2);
        for n in 1..=100 {
            m.push(entry(0, n, 10 + n));
        }
        let (ready, held) = m.ready();
        assert!(ready.is_empty());
        let (blocked, target) = held.expect("held back by the idle partition");
        assert_eq!(blocked, vec![1]);
        // What a probe that found nothing unread in partition 1 does.
        m.bound(1, target + 1);
        let (ready, held) = m.ready();
        assert_eq!(ready.len(), 100, "not one entry per question");
        assert!(held.is_none());
    }

    #[test]
    fn one_partition_never_waits() {
        let mut m = Merge::new(1);
        m.push(entry(0, 1, 10));
        m.push(entry(0, 2, 11));
        let (ready, held) = m.ready();
        assert_eq!(order(&ready), vec![(0, 1), (0, 2)]);
        assert!(held.is_none());
    }

    #[test]
    fn stream_ids_order_numerically() {
        let a = StreamId::parse("1700000000000-9").unwrap();
        let b = StreamId::parse("1700000000000-10").unwrap();
        assert!(a < b);
        assert!(StreamId::parse("99-0").unwrap() < StreamId::parse("100-0").unwrap());
        assert_eq!(StreamId::parse("x-1"), None);
    }

    #[test]
    fn positions_parse_in_both_forms() {
        assert_eq!(parse_position("3:17"), Some((3, 17)));
        assert_eq!(parse_position("17"), Some((0, 17)));
        assert_eq!(parse_position("pending"), None);
    }

    #[test]
    fn the_layout_is_checked() {
        let c = |urls: &[&str], partitions| ClusterConfig {
            urls: urls.iter().map(|s| s.to_string()).collect(),
            partitions,
            node_id: "n".into(),
            max_len: 10,
            id_ttl: None,
            replicas: 0,
            replica_timeout: Duration::from_secs(1),
            tls_ca: None,
        };
        assert!(c(&["redis://a"], 1).check().is_ok());
        assert!(c(&["redis://a", "redis://b"], 4).check().is_ok());
        let e = c(&["redis://a", "redis://b"], 1).check().unwrap_err();
        assert!(e.to_string().contains("fewer than the 2 Redis"), "{e}");
        assert!(c(&["redis://a"], 0).check().is_err());
        assert!(c(&["redis://a"], MAX_PARTITIONS + 1).check().is_err());
        assert_eq!(
            ClusterConfig::urls_of(" redis://a:1 ,redis://b:2,"),
            vec!["redis://a:1", "redis://b:2"]
        );
    }
}
