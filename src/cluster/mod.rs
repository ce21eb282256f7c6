//! The Redis engine: many Herald nodes act as one hub, on Redis.
//!
//! The log is a Redis stream (or `P` of them, "partitions", on one Redis
//! or spread over several); every node tails every partition and applies
//! what it reads in one merged order, so every node applies the same
//! sequence. See docs/cluster.md for the design and what each setting
//! promises, and docs/architecture.md for where this sits.
//!
//! - **Publish** (any node, [`append`]): an update goes to the partition of
//!   its first (canonical) topic ([`partitions`]), so each topic lives in one
//!   partition. One Lua script per Redis ([`scripts`]) checks that the ids
//!   are new, takes the next numbers of the partition's counter, stamps each
//!   entry with the Redis clock (`t`, microseconds, strictly increasing per
//!   partition), `XADD`s it and records `id -> partition:number`; only then
//!   does the publisher get 200. A request whose ids and partitions all live
//!   on one Redis is one script call: all of it or nothing. Otherwise its
//!   ids are first reserved on the Redis that owns them. With
//!   `--redis-replicas`, the answer also waits for Redis replicas
//!   ([`replicas`]).
//! - **Tail** (every node): one reader per Redis ([`reader`]: `XREAD BLOCK`
//!   over its partitions, on its own connection) hands entries to one
//!   merger ([`merger`]), which applies them in `(t, partition)` order up to
//!   the low watermark ([`merge`]): an entry goes out once no partition can
//!   still produce an earlier one (the next unread entry of a partition is
//!   later than the last one read; an idle partition is asked, in one atomic
//!   script, whether anything is unread, and if not its clock is raised past
//!   everything queued). What the merger applies goes to the hub's committer
//!   through the [`crate::log::Applier`]: this engine never imports the hub.
//! - **Counter**: each entry carries its partition's counter value (`n`). A
//!   node that sees anything but `last + 1` missed entries (it fell behind
//!   the log's cap) or the log was reset (Redis flushed or restored from an
//!   old snapshot): it says so in the log, drops its replica (so a resume
//!   from before answers `earliest` instead of silently skipping) and goes
//!   on.
//! - **Resume on another node** ([`positions`]): an id this node has not
//!   applied yet (it came from a faster node) is looked up in Redis, and the
//!   subscriber is held (at most [`positions::RESUME_HOLD`]) until the
//!   merger has applied it.
//! - **Presence** ([`presence`]): subscription events go through the log to
//!   every node; each node keeps its subscriptions in Redis for the others'
//!   subscriptions APIs, and says it is alive for the status page.
//! - **Connections** ([`instance`]): one Redis, its shared connection,
//!   dialled again after an error, and its faults for `/readyz`.

mod append;
mod config;
mod instance;
mod merge;
mod merger;
mod partitions;
mod positions;
mod presence;
mod reader;
mod replicas;
mod scripts;
mod sentinel;

pub use config::{ClusterConfig, MAX_PARTITIONS};
pub use positions::{LogPosition, RESUME_HOLD};
pub use presence::PRESENCE_TTL;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::history::HistoryStore;
use crate::log::{Log, LogError};
use crate::subscription::SubscriptionInfo;
use crate::update::Update;
use instance::Instance;
use partitions::{PartKeys, SharedKeys};
use presence::Change;
use scripts::Scripts;

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

pub struct Cluster {
    config: ClusterConfig,
    instances: Vec<Instance>,
    parts: Vec<PartKeys>,
    shared: SharedKeys,
    scripts: Scripts,
    /// This node's history: a replica of the log, which the committer
    /// fills (through the applier) and which a reset of the log drops.
    replica: Arc<dyn HistoryStore>,
    /// Why delivery is held back, if it has been for `merger::STALL`.
    merge_fault: Mutex<Option<String>>,
    /// Per partition, the counter value of the last entry this node
    /// applied.
    applied: watch::Sender<Vec<u64>>,
    /// Per partition, the newest counter this node knows the log has (read,
    /// or asked): with `applied`, how far behind it is.
    heads: Vec<AtomicU64>,
    /// Per partition, which update this node applied at its recent counter
    /// values (a lost entry's value can be taken by the next update).
    recent: positions::Recent,
    /// To the presence task (subscription events and this node's
    /// subscriptions); set by [`Cluster::start_presence`].
    changes: std::sync::OnceLock<mpsc::UnboundedSender<Change>>,
    /// The nodes heard from within [`presence::PRESENCE_TTL`] and how long ago (ms),
    /// as of the last heartbeat: for the status page.
    known_nodes: Mutex<Vec<(String, u64)>>,
    pub stats: ClusterStats,
}

impl Cluster {
    /// Connect to and check every Redis: a Redis that may evict keys would
    /// lose updates silently, so it is refused by name; so is a layout of
    /// partitions other than the one the cluster already uses.
    pub async fn connect(
        config: ClusterConfig,
        replica: Arc<dyn HistoryStore>,
    ) -> anyhow::Result<Arc<Cluster>> {
        config.check()?;
        let ca = match &config.tls_ca {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("--redis-tls-ca {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let instances = (0..config.urls.len())
            .map(|i| Instance::open(i, &config, ca.as_deref()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster = Arc::new(Cluster {
            instances,
            parts: (0..config.partitions).map(PartKeys::new).collect(),
            shared: SharedKeys::new(),
            scripts: Scripts::load(),
            replica,
            merge_fault: Mutex::new(None),
            applied: watch::channel(vec![0; config.partitions]).0,
            heads: (0..config.partitions).map(|_| AtomicU64::new(0)).collect(),
            recent: positions::Recent::new(config.partitions),
            changes: std::sync::OnceLock::new(),
            known_nodes: Mutex::new(Vec::new()),
            stats: ClusterStats::default(),
            config,
        });
        for instance in &cluster.instances {
            instance.check_eviction_policy().await?;
        }
        cluster.check_layout().await?;
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

    /// Per partition, entries this node knows the log has and has not
    /// applied yet (read and held or queued, or counted in Redis).
    pub fn lag(&self) -> Vec<u64> {
        let applied = self.applied.borrow();
        self.heads
            .iter()
            .zip(applied.iter())
            .map(|(head, applied)| head.load(Ordering::Relaxed).saturating_sub(*applied))
            .collect()
    }

    /// Every Redis's partitions have been read as far as they went at
    /// start.
    pub fn is_caught_up(&self) -> bool {
        self.instances
            .iter()
            .all(|i| i.caught_up.load(Ordering::Relaxed))
    }
}

/// The seam: what the hub asks of its log, answered by Redis.
impl Log for Cluster {
    fn append<'a>(
        &'a self,
        updates: &'a [Arc<Update>],
        chosen: &'a [bool],
    ) -> BoxFuture<'a, Result<(), LogError>> {
        Cluster::append(self, updates, chosen).boxed()
    }

    fn generate_id(&self, first_topic: &str) -> String {
        Cluster::generate_id(self, first_topic)
    }

    fn wait_until_applied<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), LogError>> {
        self.hold_resume(id).boxed()
    }

    fn ready_to_subscribe(&self) -> Result<(), LogError> {
        if self.is_caught_up() {
            return Ok(());
        }
        Err(LogError::Unavailable(format!(
            "node {} is still reading the cluster log; retry in a moment",
            self.node_id()
        )))
    }

    fn readiness(&self) -> Result<(), String> {
        Cluster::readiness(self)
    }

    fn announce(&self, event: Arc<Update>, info: SubscriptionInfo) {
        // Through the log, so every node (this one too) delivers it; and
        // into this node's presence in Redis.
        self.subscription_changed(Some(event), info);
    }

    fn subscriptions_elsewhere(&self) -> BoxFuture<'_, Result<Vec<SubscriptionInfo>, String>> {
        Cluster::subscriptions_elsewhere(self).boxed()
    }
}
