//! Where things live: which partition an update and an id belong to,
//! which Redis holds a partition, and the keys of each.
//!
//! Every node must route a topic to the same partition on the same Redis,
//! so the hash is a stable one (FNV-1a) and the layout ("P partitions over
//! N Redis") is recorded in Redis by the first node to start; a node given
//! another layout refuses to start ([`Cluster::check_layout`]). Partition
//! `p` lives on Redis `p mod N`. A partition's keys share the hash tag
//! `{pP}`, so they would sit on one Redis Cluster slot.

use std::time::Duration;

use super::Cluster;
use crate::update::Update;

/// Ids are remembered in Redis (for duplicates and cross-node resume) this
/// long when `--history-max-age` is not set.
pub(super) const DEFAULT_ID_TTL: Duration = Duration::from_secs(24 * 3600);

/// Keys of one partition (`{pN}` is a hash tag: a partition's keys live
/// on one Redis Cluster slot).
pub(super) struct PartKeys {
    pub(super) log: String,
    pub(super) counter: String,
    /// The clock of the partition's last entry (`t`).
    pub(super) clock: String,
    pub(super) id_prefix: String,
    /// Written by replica rounds (`--redis-replicas`).
    pub(super) sync: String,
}

impl PartKeys {
    pub(super) fn new(p: usize) -> PartKeys {
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
pub(super) struct SharedKeys {
    /// Followed by a node id: that node's subscriptions (a hash).
    pub(super) presence_prefix: String,
    /// Nodes with subscriptions, scored by their last heartbeat (ms).
    pub(super) nodes: String,
    /// The partition layout every node must share.
    pub(super) layout: String,
}

impl SharedKeys {
    pub(super) fn new() -> SharedKeys {
        SharedKeys {
            presence_prefix: "herald:{p0}:subs:".into(),
            nodes: "herald:{p0}:nodes".into(),
            layout: "herald:{p0}:layout".into(),
        }
    }
}

/// A stable hash (FNV-1a): every node must route a topic to the same
/// partition.
pub(super) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Cluster {
    pub(super) fn instance_of(&self, partition: usize) -> usize {
        partition % self.instances.len()
    }

    /// The partition of an update: that of its first (canonical) topic.
    pub fn partition_of(&self, update: &Update) -> usize {
        let topic = update.topics.first().map(String::as_str).unwrap_or("");
        (fnv(topic) % self.config.partitions as u64) as usize
    }

    /// The partition that remembers an id the publisher chose.
    pub(super) fn id_home(&self, id: &str) -> usize {
        (fnv(id) % self.config.partitions as u64) as usize
    }

    pub(super) fn id_key(&self, partition: usize, id: &str) -> String {
        format!("{}{id}", self.parts[partition].id_prefix)
    }

    pub(super) fn id_ttl_ms(&self) -> u64 {
        (self.config.id_ttl.unwrap_or(DEFAULT_ID_TTL).as_millis() as u64).max(1)
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

    /// Every node must route a topic to the same partition on the same
    /// Redis: the first node to start records the layout, and a node given
    /// another one refuses to start, naming both.
    pub(super) async fn check_layout(&self) -> anyhow::Result<()> {
        let layout = format!(
            "{} partitions over {} Redis",
            self.config.partitions,
            self.config.urls.len()
        );
        let mut set = redis::cmd("SET");
        set.arg(&self.shared.layout)
            .arg(&layout)
            .arg("NX")
            .arg("GET");
        let before: Option<String> = self
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
                self.shared.layout,
                self.home().url
            );
        }
        Ok(())
    }
}
