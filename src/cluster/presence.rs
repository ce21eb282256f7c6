//! Presence: what the other nodes know of this one.
//!
//! - Subscription events (`--subscriptions`) go through the log as
//!   live-only entries, so every node delivers them in order.
//! - This node's subscriptions are kept in a Redis hash for the others'
//!   subscriptions APIs, written as they change and rewritten whole only
//!   after a failed write; they expire [`PRESENCE_TTL`] after the node's
//!   last heartbeat, so a node that dies vanishes within that time.
//! - Every node says it is alive every 5 s and reads who else is: the node
//!   list of the status page.
//!
//! All of it is written by background tasks: a subscriber's connect or
//! disconnect never waits for Redis.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::instance::redis_error;
use super::Cluster;
use crate::subscription::SubscriptionInfo;
use crate::update::Update;

/// A node's subscriptions are kept in Redis this long after its last
/// heartbeat: a node that dies vanishes from the subscriptions API within
/// this time.
pub const PRESENCE_TTL: Duration = Duration::from_secs(15);

pub(super) const PRESENCE_HEARTBEAT: Duration = Duration::from_secs(5);

/// One subscription as other nodes see it (the subscriptions API).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Presence {
    pub(super) id: String,
    pub(super) legacy_id: String,
    pub(super) match_type: String,
    pub(super) selector: String,
    pub(super) subscriber: String,
    pub(super) payload: Option<serde_json::Value>,
}

impl Presence {
    pub(super) fn of(info: &SubscriptionInfo) -> Presence {
        Presence {
            id: info.id.clone(),
            legacy_id: info.legacy_id.clone(),
            match_type: info.match_type.to_string(),
            selector: info.selector.clone(),
            subscriber: info.subscriber.clone(),
            payload: info.payload.clone(),
        }
    }

    pub(super) fn into_info(self) -> Option<SubscriptionInfo> {
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
pub(super) enum Change {
    /// A subscription event to deliver on every node (live only).
    Event(Arc<Update>),
    Active(SubscriptionInfo),
    Gone(String),
}

impl Cluster {
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

    pub(super) fn presence_key(&self) -> String {
        format!("{}{}", self.shared.presence_prefix, self.config.node_id)
    }

    pub(super) async fn presence(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Change>) {
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

    pub(super) async fn run_pipe(&self, pipe: redis::Pipeline) -> Result<(), ()> {
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
}
