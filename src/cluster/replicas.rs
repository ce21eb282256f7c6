//! `--redis-replicas N`: a publish answers 200 only once N replicas of
//! every Redis it wrote to have it (Redis `WAIT`), so a failover of that
//! Redis cannot lose it.
//!
//! Group commit, as for the embedded journal's fsync: one round (a marker
//! write, then `WAIT`, on a connection of its own) covers every append
//! that answered before it started, and callers whose append a finished
//! round covered return at once.

use std::sync::atomic::Ordering;

use redis::aio::MultiplexedConnection;

use super::instance::{redis_error, Instance, RESPONSE_TIMEOUT};
use super::Cluster;
use crate::log::LogError;

impl Cluster {
    /// Wait until `--redis-replicas` replicas of `instance` have its append
    /// number `mine`. Group commit: one round (a marker write, then `WAIT`,
    /// on a connection of its own) covers every append that answered
    /// before it started, and callers whose append a finished round
    /// covered return at once.
    pub(super) async fn replicated(&self, instance: &Instance, mine: u64) -> Result<(), LogError> {
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
        Err(LogError::Unavailable(format!(
            "{}: the request is in the log of Redis at {} and is being delivered, but may be lost \
             if that Redis fails over now (retrying with its own ids answers 409 for what was kept)",
            round.error, instance.url
        )))
    }

    pub(super) async fn replica_round(
        &self,
        instance: &Instance,
        conn: &mut Option<(MultiplexedConnection, String)>,
    ) -> Result<(), String> {
        // After a failover the old primary may still answer (until the
        // sentinels convert it): its WAIT would count its own replicas,
        // not those of the primary the appends now go to.
        if conn
            .as_ref()
            .is_some_and(|(_, addr)| instance.primary_moved(addr))
        {
            *conn = None;
        }
        if conn.is_none() {
            let timeout = self.config.replica_timeout + RESPONSE_TIMEOUT;
            *conn = Some(
                instance
                    .dial_at(timeout)
                    .await
                    .map_err(|e| redis_error(&instance.url, &e))?,
            );
        }
        let (c, _) = conn.as_mut().expect("dialled above");
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
}
