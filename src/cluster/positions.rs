//! Positions in the log, for resuming on another node than the one that
//! took the publish.
//!
//! Each id key holds `partition:counter`. A resume from an id this node has
//! not applied yet (it came through a faster node) looks the id up in
//! Redis and waits, at most [`RESUME_HOLD`], until the merger has applied
//! that position; then it resumes as usual. A node that cannot tell, or is
//! still behind after the wait, answers 503 rather than resume from the
//! wrong place.

use std::time::Duration;

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
        if let Some(position) = position {
            if !self.wait_applied(position, RESUME_HOLD).await {
                return Err(LogError::Unavailable(format!(
                    "node {} has not yet received update {id:?} from the cluster log; retry in a moment",
                    self.node_id()
                )));
            }
        }
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_in_both_forms() {
        assert_eq!(parse_position("3:17"), Some((3, 17)));
        assert_eq!(parse_position("17"), Some((0, 17)));
        assert_eq!(parse_position("pending"), None);
    }
}
