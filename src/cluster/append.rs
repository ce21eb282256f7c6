//! Publishing to the log: one APPEND script call per Redis for the
//! updates whose partitions it holds, all or nothing where the request
//! lives on one Redis, with ids reserved first where they do not.
//!
//! What it promises: a publisher gets 200 only once Redis holds every
//! update of its request; a duplicate id anywhere refuses the whole request
//! (409) before anything is appended; over several Redis, only an outage
//! between calls can leave a request partly appended, and the 503 then names
//! what was published. An answer lost in flight is safe to retry: the id
//! keys make a second append of the same id a 409.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::instance::{local_us, redis_error, APPEND_FENCE};
use super::Cluster;
use crate::history::{record, HistoryError};
use crate::log::LogError;
use crate::update::Update;

/// An id reserved by a publish that spans two Redis instances stays
/// reserved this long if the publishing node dies half-way.
pub(super) const RESERVATION_HOLD: Duration = Duration::from_secs(30);

/// An update of a publish, on its way to the log.
pub(super) struct Outgoing<'a> {
    pub(super) update: &'a Update,
    pub(super) record: Vec<u8>,
    /// Its log's partition (of its first topic).
    pub(super) partition: usize,
    /// The partition whose id keys remember its id: the id's own (so that
    /// a reuse is found whatever the topic). Ids the hub generates are
    /// drawn so that it is the update's partition ([`Cluster::generate_id`]).
    pub(super) id_partition: usize,
    pub(super) chosen: bool,
}

/// How an APPEND call treats ids.
#[derive(Clone, Copy)]
pub(super) enum Mode {
    /// Stored; ids checked and recorded by the call.
    Stored,
    /// Stored; ids reserved and recorded by the caller, on another Redis.
    Reserved,
    /// Live-only (subscription events): delivered, never stored, ids not
    /// kept.
    Live,
}

impl Mode {
    pub(super) fn flag(self) -> &'static str {
        match self {
            Mode::Stored => "s",
            Mode::Reserved => "r",
            Mode::Live => "l",
        }
    }
}

/// An append Redis ran past its deadline: nothing appended.
pub(super) struct Late {
    /// Redis's clock when it ran the call.
    redis_us: i64,
    /// This node's clock when it sent it.
    sent_us: i64,
}

impl Late {
    fn into_error(self, url: &str) -> LogError {
        LogError::Unavailable(format!(
            "the cluster log (Redis at {url}) took the update more than {APPEND_FENCE:?} after \
             it was sent (stalled or cut off meanwhile): it was not published; retry it"
        ))
    }
}

/// A duplicate or reserved id in a script's answer.
pub(super) fn refusal(items: &[Value]) -> Result<(), LogError> {
    if let (Some(Value::BulkString(tag)), Some(id)) = (items.first(), items.get(1)) {
        let id: String = redis::from_redis_value(id).unwrap_or_default();
        match tag.as_slice() {
            b"dup" => return Err(LogError::History(HistoryError::DuplicateId(id))),
            b"busy" => {
                return Err(LogError::Unavailable(format!(
                    "update id {id:?} is being published by another request right now; \
                     retry in a moment (it answers 409 if that one stored it)"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

impl Cluster {
    /// Append updates to the log, all or nothing; returns once Redis has
    /// them. `chosen` says, per update, whether the publisher chose its id
    /// (else the hub generated it, unique by construction). A duplicate id
    /// is [`LogError::History`] `DuplicateId` (409); Redis unreachable or
    /// slow is [`LogError::Unavailable`] (503).
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
    pub async fn append(&self, updates: &[Arc<Update>], chosen: &[bool]) -> Result<(), LogError> {
        self.append_as(updates, chosen, false).await
    }

    pub(super) async fn append_as(
        &self,
        updates: &[Arc<Update>],
        chosen: &[bool],
        live: bool,
    ) -> Result<(), LogError> {
        self.append_entries(updates, chosen, live).await?;
        if self.config.replicas == 0 {
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
            // Live-only events are delivered once a round marks them, and
            // their sender does not wait for the answer.
            if !live {
                confirmed?;
            }
        }
        Ok(())
    }

    pub(super) async fn append_entries(
        &self,
        updates: &[Arc<Update>],
        chosen: &[bool],
        live: bool,
    ) -> Result<(), LogError> {
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
    pub(super) fn group_by<'a, 'b>(
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
    pub(super) fn partly<T>(
        &self,
        groups: &[Vec<&Outgoing>],
        done: &[usize],
        tried: &[usize],
        results: Vec<Result<T, LogError>>,
    ) -> Result<(), LogError> {
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
            Some(e) => Err(LogError::Unavailable(format!(
                "{e}; of this request, {published:?} were published and the others may not have \
                 been: retry those (with their own ids, a retry of a stored one answers 409)"
            ))),
        }
    }

    /// One APPEND call on Redis `instance` for `group` (updates whose
    /// partitions it holds).
    pub(super) async fn append_group(
        &self,
        instance: usize,
        group: &[&Outgoing<'_>],
        mode: Mode,
    ) -> Result<Vec<u64>, LogError> {
        if group.is_empty() {
            return Ok(Vec::new());
        }
        // Refused by Redis as late only if this node's idea of Redis's
        // clock was off (the call answered before the fence): measured
        // again from the answer, and tried once more (nothing was
        // appended).
        match self.append_group_once(instance, group, mode).await {
            Err(Late { redis_us, sent_us })
                if local_us() - sent_us < APPEND_FENCE.as_micros() as i64 =>
            {
                self.instances[instance].calibrate(redis_us, local_us());
                self.append_group_once(instance, group, mode)
                    .await
                    .map_err(|late| late.into_error(&self.instances[instance].url))?
            }
            Err(late) => Err(late.into_error(&self.instances[instance].url)),
            Ok(result) => result,
        }
    }

    /// One APPEND call; `Err(Late)` when Redis ran it past its deadline
    /// (nothing appended).
    async fn append_group_once(
        &self,
        instance: usize,
        group: &[&Outgoing<'_>],
        mode: Mode,
    ) -> Result<Result<Vec<u64>, LogError>, Late> {
        let instance = &self.instances[instance];
        let mut invocation = self.scripts.append.prepare_invoke();
        let sent_us = local_us();
        invocation
            .arg(self.config.max_len.max(1))
            .arg(self.id_ttl_ms())
            .arg(mode.flag())
            .arg(if self.config.partitions > 1 { "1" } else { "0" })
            .arg(instance.deadline());
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
        let mut conn = match instance.connection().await {
            Ok(conn) => conn,
            Err(e) => {
                return Ok(Err(LogError::Unavailable(format!(
                    "{e}; the update was not published"
                ))))
            }
        };
        let started = std::time::Instant::now();
        let answer: redis::RedisResult<Value> = invocation.invoke_async(&mut conn).await;
        crate::metrics::observe(&crate::metrics::METRICS.redis_seconds, started.elapsed());
        Ok(match answer {
            Ok(Value::Array(items)) => {
                if let (Some(Value::BulkString(tag)), Some(now)) = (items.first(), items.get(1)) {
                    if tag.as_slice() == b"late" {
                        let redis_us: i64 = redis::from_redis_value(now).unwrap_or(0);
                        return Err(Late { redis_us, sent_us });
                    }
                }
                if let Err(e) = refusal(&items) {
                    return Ok(Err(e));
                }
                let ns: Vec<u64> = items
                    .iter()
                    .filter_map(|v| redis::from_redis_value(v).ok())
                    .collect();
                if ns.len() != group.len() {
                    return Ok(Err(LogError::Unavailable(format!(
                        "the cluster log (Redis at {}) answered an append with {} positions for {} updates",
                        instance.url,
                        ns.len(),
                        group.len()
                    ))));
                }
                Ok(ns)
            }
            Ok(other) => Err(LogError::Unavailable(format!(
                "the cluster log answered {other:?} to an append; the update may not have been published"
            ))),
            Err(e) => {
                instance.drop_connection().await;
                Err(LogError::Unavailable(format!(
                    "{}; the update may not have been published (if it was, it comes before \
                     anything published after this answer): retry it (with its own id, a retry \
                     of a stored update answers 409)",
                    redis_error(&instance.url, &e)
                )))
            }
        })
    }

    /// A publish with a chosen id kept on another Redis than its update:
    /// reserve every id where it is kept, append, record the ids.
    pub(super) async fn append_reserved(
        &self,
        out: &[Outgoing<'_>],
        groups: &[Vec<&Outgoing<'_>>],
        touched: &[usize],
    ) -> Result<(), LogError> {
        // 1. Reserve, on every Redis at once; all or none.
        let id_groups = self.group_by(out, |o| o.id_partition);
        let keepers: Vec<usize> = (0..id_groups.len())
            .filter(|&i| !id_groups[i].is_empty())
            .collect();
        let token = format!("{:016x}", rand::random::<u64>());
        let reservations = keepers.iter().map(|&i| {
            let mut invocation = self.scripts.reserve.prepare_invoke();
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
                    Err(e) => Err(LogError::Unavailable(format!(
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
            let mut errors: Vec<LogError> = results.into_iter().filter_map(Result::err).collect();
            let dup = errors
                .iter()
                .position(|e| matches!(e, LogError::History(_)));
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
            let mut invocation = self.scripts.record.prepare_invoke();
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
            return Err(LogError::Unavailable(format!(
                "{e}; the update was published but its id could not be recorded: it is delivered, \
                 but a retry within {RESERVATION_HOLD:?} answers 503 and one after that may publish it twice"
            )));
        }
        Ok(())
    }

    /// Drop reservations that were not used. Best effort: an unreleased
    /// one expires by itself.
    pub(super) async fn release(&self, outs: &[&Outgoing<'_>], token: &str) {
        let mut by_instance: Vec<Vec<String>> = vec![Vec::new(); self.instances.len()];
        for o in outs {
            by_instance[self.instance_of(o.id_partition)]
                .push(self.id_key(o.id_partition, &o.update.id));
        }
        for (i, keys) in by_instance.into_iter().enumerate() {
            if keys.is_empty() {
                continue;
            }
            let mut invocation = self.scripts.release.prepare_invoke();
            invocation.arg(token);
            for key in &keys {
                invocation.key(key);
            }
            if let Err(e) = self.invoke(i, &invocation).await {
                tracing::warn!(error = %e, "could not release id reservations; they expire by themselves");
            }
        }
    }
}
