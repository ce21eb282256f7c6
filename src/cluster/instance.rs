//! One Redis instance: its client, the shared connection dialled on
//! demand, and the faults its reader reports.
//!
//! Every publish, look-up and presence write of a node to one Redis goes
//! through one multiplexed connection ([`Instance::connection`]); an error
//! drops it and the next call dials again. During an outage, calls fail at
//! once for [`DIAL_RETRY`] after a failed dial rather than queue behind each
//! other's connect timeouts, so publishes answer 503 immediately. The
//! reader and the replica rounds dial connections of their own (their
//! commands block).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use super::config::ClusterConfig;
use super::sentinel::{self, Sentinels};
use super::Cluster;

/// A command to Redis gets an answer within this time or fails (503).
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// After a failed dial, callers fail at once for this long.
pub(super) const DIAL_RETRY: Duration = Duration::from_secs(1);

/// Reconnect back-off bounds.
pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(100);

pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One Redis instance and the partitions it holds.
pub(super) struct Instance {
    /// As given in `--transport` (a `redis+sentinel://` URL names the
    /// sentinels).
    pub(super) url: String,
    /// The client of the Redis to dial: the one in the URL, or the primary
    /// the sentinels named last.
    pub(super) client: Mutex<redis::Client>,
    /// Through Redis Sentinel: asked for the primary at every dial.
    sentinels: Option<Sentinels>,
    /// PEM roots for `rediss://` (kept for clients made later).
    ca: Option<Vec<u8>>,
    /// The shared connection (publishes, look-ups, presence), dialled on
    /// demand after an error.
    pub(super) conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// When and why the last dial failed.
    pub(super) dial_failure: Mutex<Option<(Instant, String)>>,
    pub(super) partitions: Vec<usize>,
    /// Set once its reader has read everything there was at start.
    pub(super) caught_up: AtomicBool,
    /// Why its reader is not following its partitions right now.
    pub(super) fault: Mutex<Option<String>>,
    /// Entries its reader handed to the merger that are not applied yet.
    pub(super) unapplied: AtomicU64,
    /// Signalled when the merger applied some of them, or wants a read.
    pub(super) drained: tokio::sync::Notify,
    /// The merger waits for one of this Redis's partitions.
    pub(super) wanted: AtomicBool,
    /// Appends that answered, counted: replica acknowledgement covers all
    /// of them up to a point (`--redis-replicas`).
    pub(super) appended: AtomicU64,
    /// One replica round at a time, on its own connection: how many appends
    /// the last round covered and whether it was acknowledged.
    pub(super) replication: tokio::sync::Mutex<Replication>,
    /// A reader asked for a replica round (entries wait for a commit
    /// marker that no publish is about to write).
    pub(super) nudging: AtomicBool,
    /// This Redis's clock less this node's, in microseconds, as measured
    /// at the last dial (`TIME`): an append's deadline is given in
    /// Redis's clock ([`Instance::deadline`]).
    pub(super) clock_offset_us: AtomicI64,
    /// Through sentinels: the primary they named last (`host:port`).
    named: Mutex<Option<String>>,
}

/// How often a node asks the sentinels which Redis is the primary, to
/// follow a failover its connections did not notice.
pub(super) const SENTINEL_WATCH: Duration = Duration::from_secs(1);

/// An append that Redis runs later than this after it was sent is refused
/// by the script, unapplied: by then Herald may have answered 503 and its
/// publisher gone on to the next update, which must not be overtaken (a
/// command held in a stalled link or a stopped Redis runs when it thaws).
/// Half the response timeout, so Redis refuses before Herald gives up.
pub(super) const APPEND_FENCE: Duration = Duration::from_millis(1500);

/// This machine's clock, in microseconds since the epoch.
pub(super) fn local_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The replica rounds of one Redis (`--redis-replicas`, see
/// [`super::replicas`]).
#[derive(Default)]
pub(super) struct Replication {
    /// The rounds' connection, and the address it reached.
    pub(super) conn: Option<(MultiplexedConnection, String)>,
    /// Appends up to here were in a round (acknowledged or not).
    pub(super) covered: u64,
    /// Appends up to here are acknowledged by the replicas.
    pub(super) confirmed: u64,
    /// Why the last round that failed did.
    pub(super) error: String,
    /// Per partition of this Redis, the counter the last commit marker
    /// this node wrote says the replicas hold.
    pub(super) marked: Vec<u64>,
}

pub(super) fn redis_error(url: &str, e: &redis::RedisError) -> String {
    format!("the cluster log (Redis at {url}) is unreachable: {e}")
}

impl Instance {
    /// Instance `i` of `--transport`, holding partitions i, i + N, ...
    /// (`ca`: the PEM roots a `rediss://` server must chain to).
    pub(super) fn open(
        i: usize,
        config: &ClusterConfig,
        ca: Option<&[u8]>,
    ) -> anyhow::Result<Instance> {
        let url = &config.urls[i];
        let sentinels = Sentinels::parse(url)
            .transpose()?
            .map(|s| s.with_nat_map(&config.nat_map));
        // Through sentinels, the client is replaced at the first dial; until
        // then it names nothing that answers.
        let first = if sentinels.is_some() {
            "redis://127.0.0.1:0/"
        } else {
            url.as_str()
        };
        let client =
            Self::client(first, ca).map_err(|e| anyhow::anyhow!("--transport {url}: {e}"))?;
        Ok(Instance {
            url: url.clone(),
            client: Mutex::new(client),
            sentinels,
            ca: ca.map(<[u8]>::to_vec),
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
            nudging: AtomicBool::new(false),
            clock_offset_us: AtomicI64::new(0),
            named: Mutex::new(None),
        })
    }

    /// A Redis that may evict keys would lose updates silently: refused
    /// by name at startup.
    pub(super) async fn check_eviction_policy(&self) -> anyhow::Result<()> {
        let mut conn = self
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
                        self.url
                    );
                }
            }
            Err(e) => tracing::warn!(
                redis = %self.url,
                error = %e,
                "cannot read Redis's maxmemory-policy (CONFIG disabled?); make sure it is noeviction"
            ),
        }
        Ok(())
    }

    /// The shared connection, dialled when there is none. Dialling happens
    /// outside the lock, and for a second after a failed dial every caller
    /// fails at once with that error: during an outage publishes answer 503
    /// immediately instead of queueing behind each other's connect timeouts.
    pub(super) async fn connection(&self) -> Result<MultiplexedConnection, String> {
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

    fn client(url: &str, ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
        match (ca, url.starts_with("rediss://")) {
            (Some(ca), true) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.to_vec()),
                },
            ),
            _ => redis::Client::open(url),
        }
    }

    /// A new connection whose commands fail after `response_timeout`.
    /// Through sentinels: to the primary they name now, checked to be one.
    pub(super) async fn dial(
        &self,
        response_timeout: Duration,
    ) -> redis::RedisResult<MultiplexedConnection> {
        self.dial_at(response_timeout).await.map(|(conn, _)| conn)
    }

    /// [`Instance::dial`], and the address this connection reached (not
    /// [`Instance::dialled_addr`], which another dial may change meanwhile).
    pub(super) async fn dial_at(
        &self,
        response_timeout: Duration,
    ) -> redis::RedisResult<(MultiplexedConnection, String)> {
        let failed = |detail: String| {
            redis::RedisError::from((redis::ErrorKind::IoError, "Redis Sentinel", detail))
        };
        if let Some(sentinels) = &self.sentinels {
            let primary = sentinels.primary().await.map_err(failed)?;
            let client = Self::client(&primary, self.ca.as_deref())?;
            *self.client.lock() = client;
        }
        let client = self.client.lock().clone();
        let addr = client.get_connection_info().addr.to_string();
        let mut conn = client
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(response_timeout),
            )
            .await?;
        if self.sentinels.is_some() && !sentinel::is_primary(&mut conn).await? {
            return Err(failed(format!(
                "{} is not a primary (yet): a failover is under way",
                client.get_connection_info().addr
            )));
        }
        // Redis's clock against ours, for append deadlines: the middle of
        // the round trip (off by at most half of it).
        let before = local_us();
        let (s, us): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let after = local_us();
        self.calibrate(s * 1_000_000 + us, before + (after - before) / 2);
        Ok((conn, addr))
    }

    /// Whether the primary is found through sentinels.
    pub(super) fn has_sentinels(&self) -> bool {
        self.sentinels.is_some()
    }

    /// The address the last dial reached.
    pub(super) fn dialled_addr(&self) -> String {
        self.client.lock().get_connection_info().addr.to_string()
    }

    /// Through sentinels: whether they last named another primary than
    /// `dialled` (a failover this node's connection did not notice: reads
    /// still work on a demoted primary, and a restarted old primary may
    /// answer as one). Never waits: [`Instance::watch_sentinels`] asks.
    pub(super) fn primary_moved(&self, dialled: &str) -> bool {
        self.named
            .lock()
            .as_deref()
            .is_some_and(|named| !dialled.is_empty() && named != dialled)
    }

    /// Through sentinels: ask them for the primary every
    /// [`SENTINEL_WATCH`] until `done` says stop, for
    /// [`Instance::primary_moved`]. A round no sentinel answers changes
    /// nothing.
    pub(super) async fn watch_sentinels(&self, done: impl Fn() -> bool) {
        let Some(sentinels) = &self.sentinels else {
            return;
        };
        while !done() {
            if let Ok(url) = sentinels.primary().await {
                if let Ok(client) = redis::Client::open(url.as_str()) {
                    *self.named.lock() = Some(client.get_connection_info().addr.to_string());
                }
            }
            tokio::time::sleep(SENTINEL_WATCH).await;
        }
    }

    /// Redis said `redis_us` when this node's clock said `local_us`.
    pub(super) fn calibrate(&self, redis_us: i64, local_us: i64) {
        self.clock_offset_us
            .store(redis_us - local_us, Ordering::Relaxed);
    }

    /// The latest Redis time (its clock) at which an append sent now may
    /// still run: [`APPEND_FENCE`] from now.
    pub(super) fn deadline(&self) -> i64 {
        local_us() + self.clock_offset_us.load(Ordering::Relaxed) + APPEND_FENCE.as_micros() as i64
    }

    /// Forget the shared connection after an error: the next call dials
    /// again.
    pub(super) async fn drop_connection(&self) {
        *self.conn.lock().await = None;
    }

    /// Run a command or script on the shared connection; an error drops
    /// the connection and is described.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, String> {
        let mut conn = self.connection().await?;
        match cmd.query_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.drop_connection().await;
                Err(redis_error(&self.url, &e))
            }
        }
    }

    pub(super) fn set_fault(&self, node: &str, reason: String) {
        let mut fault = self.fault.lock();
        if fault.as_deref() != Some(reason.as_str()) {
            tracing::error!(node = %node, redis = %self.url, %reason, "cluster log");
        }
        *fault = Some(reason);
    }

    pub(super) fn clear_fault(&self, node: &str) {
        if self.fault.lock().take().is_some() {
            tracing::info!(node = %node, redis = %self.url, "following the cluster log");
        }
    }
}

impl Cluster {
    pub(super) async fn invoke(
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
}
