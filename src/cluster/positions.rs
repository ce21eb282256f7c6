//! Positions in the log, for resuming on another node than the one that
//! took the publish.
//!
//! Each id key holds `partition:counter`. A resume from an id this node has
//! not applied yet (it came through a faster node) looks the id up in
//! Redis and waits, at most [`RESUME_HOLD`], until the merger has applied
//! that position; then it resumes as usual. A node that cannot tell, or is
//! still behind after the wait, answers 503 rather than resume from the
//! wrong place.
//!
//! A counter value names one entry only while the log keeps everything it
//! was given. An entry lost in a Redis failover (appended, answered 503
//! because no replica acknowledged it, then gone with its primary) frees
//! its counter value, and the next update takes it. A node that read the
//! lost entry has "applied" that value before it has read the new update,
//! so the counter alone would let a resume from the new update go live
//! there, and the node would deliver the update again when it reads it.
//! Each node therefore remembers which update it applied at each of its
//! recent counter values ([`Recent`]): when that is another update, the
//! resume waits on until the node has read past the lost entry.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use parking_lot::Mutex;

use super::Cluster;
use crate::log::LogError;

/// How long a resuming subscriber waits for this node to apply the id it
/// resumes from (it was published through a faster node).
pub const RESUME_HOLD: Duration = Duration::from_secs(2);

/// Where an update is in the log: its partition and counter value.
pub type LogPosition = (usize, u64);

/// An id key's value: `partition:counter` (or a bare counter, partition 0,
/// as the first cluster version wrote it); `pending` is no position yet.
pub(super) fn parse_position(value: &str) -> Option<LogPosition> {
    match value.split_once(':') {
        Some((p, n)) => Some((p.parse().ok()?, n.parse().ok()?)),
        None => Some((0, value.parse().ok()?)),
    }
}

impl Cluster {
    /// Resolves once this node has applied `id` (see the module's doc):
    /// at once when its replica already holds it or Redis does not know
    /// it (the resume then answers `earliest`, as on one node).
    pub(super) async fn hold_resume(&self, id: &str) -> Result<(), LogError> {
        if self.replica.lookup(id)?.is_some() {
            return Ok(());
        }
        let position = self.position_of(id).await.map_err(|e| {
            LogError::Unavailable(format!("cannot look up {id:?} in the cluster log: {e}"))
        })?;
        let Some((partition, n)) = position else {
            return Ok(());
        };
        if partition >= self.config.partitions {
            return Err(LogError::Unavailable(format!(
                "update {id:?} is in partition {partition}, which node {} does not have",
                self.node_id()
            )));
        }
        let deadline = tokio::time::Instant::now() + RESUME_HOLD;
        let mut rx = self.applied.subscribe();
        let mut another = false;
        loop {
            if rx.borrow_and_update()[partition] >= n {
                if self.replica.lookup(id)?.is_some() {
                    return Ok(());
                }
                another = self
                    .recent
                    .at(partition, n)
                    .is_some_and(|h| h != self.recent.hash(id));
                if !another {
                    // Applied, and let go since (retention, a reset):
                    // resumed as on one node.
                    return Ok(());
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        Err(LogError::Unavailable(if another {
            format!(
                "node {} read another update at the place of {id:?} in the cluster log (an \
                 entry lost in a Redis failover) and has not yet read {id:?}; retry in a moment",
                self.node_id()
            )
        } else {
            format!(
                "node {} has not yet received update {id:?} from the cluster log; retry in a moment",
                self.node_id()
            )
        }))
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
        if let Some(e) = failure {
            return Err(e);
        }
        self.unknown_is_final(id).await?;
        Ok(None)
    }

    /// Redis does not know `id`: that is an answer only if each Redis asked
    /// is the primary of now, with the replicas `--redis-replicas` asks for.
    /// Just after a failover a node may still be reading the old primary
    /// (it is told by the sentinels within about a second): an update
    /// published through the new one is unknown there, but this node will
    /// read it once it moves, and a resume from it answered "unknown" here
    /// would get it again. The old primary shows it: it lost its replica to
    /// the promotion (or, demoted, is no primary at all), and the sentinels
    /// already name another. Then the resume answers 503 and is retried.
    async fn unknown_is_final(&self, id: &str) -> Result<(), String> {
        let asks = self.instances.iter().map(|instance| async move {
            if instance.primary_moved(&instance.dialled_addr()) {
                return Err(format!(
                    "cannot tell whether update {id:?} is in the cluster log: the sentinels \
                     name another primary than {} (a failover); retry in a moment",
                    instance.dialled_addr()
                ));
            }
            if self.config.replicas == 0 && !instance.has_sentinels() {
                return Ok(());
            }
            let role: redis::Value = instance.query(&redis::cmd("ROLE")).await?;
            match super::sentinel::primary_with_replicas(&role) {
                Some(n) if n >= self.config.replicas => Ok(()),
                found => Err(format!(
                    "cannot tell whether update {id:?} is in the cluster log: {} is {} (a \
                     failover may be under way); retry in a moment",
                    instance.dialled_addr(),
                    match found {
                        None => "not a primary".to_string(),
                        Some(n) => format!(
                            "a primary with {n} of the {} replicas --redis-replicas asks for",
                            self.config.replicas
                        ),
                    }
                )),
            }
        });
        for answer in futures_util::future::join_all(asks).await {
            answer?;
        }
        Ok(())
    }
}

/// How many recent counter values each partition remembers the update
/// of: a lost entry is noticed as long as the node has applied fewer than
/// this many entries of its partition since (16 bytes each).
pub(super) const RECENT: usize = 4096;

/// Per partition, the updates this node applied at its last [`RECENT`]
/// counter values (as a keyed hash of the update's id), in counter order.
pub(super) struct Recent {
    hasher: RandomState,
    parts: Mutex<Vec<VecDeque<(u64, u64)>>>,
}

impl Recent {
    pub(super) fn new(partitions: usize) -> Recent {
        Recent {
            hasher: RandomState::new(),
            parts: Mutex::new(vec![VecDeque::new(); partitions]),
        }
    }

    pub(super) fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The update with `id` was applied at `n`. Counter values only grow
    /// between two [`Recent::forget`]s (a gap or a reset calls it).
    pub(super) fn record(&self, partition: usize, n: u64, id: &str) {
        let hash = self.hash(id);
        let mut parts = self.parts.lock();
        let Some(part) = parts.get_mut(partition) else {
            return;
        };
        if part.back().is_some_and(|&(last, _)| last >= n) {
            part.clear();
        }
        if part.len() == RECENT {
            part.pop_front();
        }
        part.push_back((n, hash));
    }

    /// The partition's counter values no longer name what they did.
    pub(super) fn forget(&self, partition: usize) {
        if let Some(part) = self.parts.lock().get_mut(partition) {
            part.clear();
        }
    }

    /// The hash of the update applied at `n`, if remembered.
    pub(super) fn at(&self, partition: usize, n: u64) -> Option<u64> {
        let parts = self.parts.lock();
        let part = parts.get(partition)?;
        let i = part.binary_search_by_key(&n, |&(k, _)| k).ok()?;
        Some(part[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_remembers_the_last_values_and_forgets_on_a_reset() {
        let recent = Recent::new(2);
        for n in 1..=(RECENT as u64 + 10) {
            recent.record(1, n, &format!("u{n}"));
        }
        assert_eq!(recent.at(1, 5), None, "the oldest are let go");
        let last = RECENT as u64 + 10;
        assert_eq!(recent.at(1, last), Some(recent.hash(&format!("u{last}"))));
        assert_eq!(recent.at(1, 11), Some(recent.hash("u11")));
        assert_eq!(recent.at(0, 11), None, "per partition");
        // A counter that goes back starts afresh.
        recent.record(1, 3, "again");
        assert_eq!(recent.at(1, 3), Some(recent.hash("again")));
        assert_eq!(recent.at(1, 11), None);
        recent.forget(1);
        assert_eq!(recent.at(1, 3), None);
        assert_eq!(recent.at(7, 3), None, "no such partition");
    }

    #[test]
    fn positions_parse_in_both_forms() {
        assert_eq!(parse_position("3:17"), Some((3, 17)));
        assert_eq!(parse_position("17"), Some((0, 17)));
        assert_eq!(parse_position("pending"), None);
    }
}
