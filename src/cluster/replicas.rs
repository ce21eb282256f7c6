//! `--redis-replicas N`: a publish answers 200 only once N replicas of
//! every Redis it wrote to have it (Redis `WAIT`), so a failover of that
//! Redis cannot lose it.
//!
//! Group commit, as for the embedded journal's fsync: one round (a sync
//! write, then `WAIT`, on a connection of its own) covers every append
//! that answered before it started, and callers whose append a finished
//! round covered return at once.
//!
//! Delivery waits for the replicas too: a round that the replicas
//! acknowledged writes a commit marker to each partition's log (the
//! counter they hold), and readers deliver entries only up to the last
//! marker ([`super::reader`]). An entry a failover loses was never
//! delivered, so no subscriber holds its id.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::instance::{redis_error, Instance, Replication, RESPONSE_TIMEOUT};
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
            match self.replica_round(instance, &mut round).await {
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
        round: &mut Replication,
    ) -> Result<(), String> {
        let conn = &mut round.conn;
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
        // Replication is in order: once the replicas have the sync write,
        // they have every append that answered before it was sent, and
        // every entry up to the counters read with it.
        let parts = &instance.partitions;
        let mut sync = self.scripts.sync.prepare_invoke();
        sync.key(&self.parts[parts[0]].sync);
        for &p in parts {
            sync.key(&self.parts[p].counter);
        }
        let counters: Vec<u64> = match sync.invoke_async(c).await {
            Ok(counters) => counters,
            Err(e) => {
                *conn = None;
                return Err(redis_error(&instance.url, &e));
            }
        };
        let acked: redis::RedisResult<u64> = redis::cmd("WAIT")
            .arg(self.config.replicas)
            .arg(self.config.replica_timeout.as_millis() as u64)
            .query_async(c)
            .await;
        match acked {
            Ok(n) if n as usize >= self.config.replicas => {}
            Ok(n) => {
                return Err(format!(
                    "only {n} of the {} replicas asked for (--redis-replicas) acknowledged it within {:?}",
                    self.config.replicas, self.config.replica_timeout
                ))
            }
            Err(e) => {
                *conn = None;
                return Err(redis_error(&instance.url, &e));
            }
        }
        // The commit markers: nodes deliver entries up to them. A counter
        // below the last marked one is a new log (a failover that lost
        // entries, a flush): marked as well. Not written, the entries are
        // still replicated (the publish is answered 200) and a later round
        // marks them (a reader holding them asks for one).
        round.marked.resize(parts.len(), 0);
        let mut markers = redis::pipe();
        for (k, &counter) in counters.iter().enumerate() {
            if counter != round.marked[k] && counter > 0 {
                markers
                    .cmd("XADD")
                    .arg(&self.parts[parts[k]].log)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.config.max_len.max(1))
                    .arg("*")
                    .arg("c")
                    .arg(counter)
                    .ignore();
            }
        }
        let written: redis::RedisResult<()> = markers.query_async(c).await;
        match written {
            Ok(()) => {
                for (k, &counter) in counters.iter().enumerate() {
                    round.marked[k] = counter;
                }
            }
            Err(e) => {
                *conn = None;
                tracing::warn!(redis = %instance.url, error = %e, "could not write a commit marker; a later round writes it");
            }
        }
        Ok(())
    }

    /// A reader holds entries that no commit marker covers yet (their
    /// publisher died before its round, or the round failed, or they are
    /// subscription events): run a round for them, one at a time per Redis.
    pub(super) fn nudge(self: &Arc<Self>, i: usize) {
        if self.instances[i].nudging.swap(true, Ordering::AcqRel) {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            let instance = &cluster.instances[i];
            let mine = instance.appended.fetch_add(1, Ordering::SeqCst) + 1;
            if let Err(e) = cluster.replicated(instance, mine).await {
                tracing::debug!(redis = %instance.url, error = %e, "a replica round for held entries failed");
            }
            instance.nudging.store(false, Ordering::Release);
        });
    }
}
