//! The committer: the one thread that stores and delivers, in order.
//!
//! It takes every request waiting in its inbox ([`crate::log::Applier`]) at
//! that moment as one batch (up to [`MAX_BATCH`] updates), stores the
//! batch's durable updates in history with one call (one durable write on
//! one node: group commit), then, holding the order lock, offers each stored
//! update to its subscribers and advances the head, and only then answers
//! each publisher. Live-only events (subscription and status events) are
//! delivered in the same order and never stored.
//!
//! A batch group (a batch publish) is all or nothing: an id history already
//! holds, or that an earlier update of the same commit uses, refuses the
//! whole group before anything is written.
//!
//! Supervised in place: a panic while committing fails that batch (its
//! publishers answer 503), is reported on `/readyz` until a later batch
//! commits, and the loop goes on. A store that fails marks the hub faulty;
//! between batches the committer probes it once a second (the `Maintain`
//! tick) and clears the fault when a write succeeds again.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Weak};
use std::time::Instant;

use super::{Hub, HubError};
use crate::history::HistoryError;
use crate::log::{ApplyRequest, Pending, Reply};
use crate::metrics;
use crate::update::Update;

/// Most updates committed in one batch.
pub(super) const MAX_BATCH: usize = 1024;

impl Hub {
    /// Refuse, before anything is written, every batch group with an id
    /// that history already holds or that an earlier update of this commit
    /// uses: a group is all or nothing, so it must not reach the store's
    /// per-update duplicate check. The committer is the only writer, so
    /// what `lookup` says holds until the append.
    fn refuse_duplicate_groups(
        &self,
        batch: Vec<Pending>,
        replies: &mut Vec<Option<Reply>>,
    ) -> Vec<Pending> {
        use std::collections::{hash_map::Entry, HashMap, HashSet};
        let mut seen: HashSet<&str> = HashSet::new();
        // Refused groups, with the error their reply (on their last
        // update) is sent.
        let mut refused: HashMap<u64, Option<HubError>> = HashMap::new();
        for p in &batch {
            let id = p.update.id.as_str();
            if let Some(g) = p.group {
                if let Entry::Vacant(slot) = refused.entry(g) {
                    let why = if seen.contains(id) {
                        Some(HistoryError::DuplicateId(id.to_string()).into())
                    } else if !p.chosen_id {
                        None
                    } else {
                        match self.history.lookup(id) {
                            Ok(Some(_)) => Some(HistoryError::DuplicateId(id.to_string()).into()),
                            Ok(None) => None,
                            Err(e) => Some(HubError::Unavailable(format!(
                                "history cannot be read: {e}"
                            ))),
                        }
                    };
                    if let Some(why) = why {
                        slot.insert(Some(why));
                    }
                }
            }
            if p.durable {
                seen.insert(id);
            }
        }
        if refused.is_empty() {
            return batch;
        }
        let mut kept = Vec::with_capacity(batch.len());
        let mut kept_replies = Vec::with_capacity(batch.len());
        for (p, reply) in batch.into_iter().zip(replies.drain(..)) {
            match p.group.and_then(|g| refused.get_mut(&g)) {
                Some(why) => {
                    if let Some(reply) = reply {
                        if let Some(why) = why.take() {
                            let _ = reply.send(Err(why));
                        }
                    }
                }
                None => {
                    kept.push(p);
                    kept_replies.push(reply);
                }
            }
        }
        *replies = kept_replies;
        kept
    }

    pub(super) fn set_fault(&self, reason: String) {
        let mut fault = self.fault.lock();
        if fault.as_deref() != Some(reason.as_str()) {
            tracing::error!(%reason, "history cannot store updates; publishes answer 503 until it recovers");
        }
        *fault = Some(reason);
    }

    fn clear_fault(&self) {
        if self.fault.lock().take().is_some() {
            tracing::info!("history is writable again; the hub is ready");
        }
    }

    /// Commit one batch, deliver it in order, answer its publishers:
    /// `replies[i]` belongs to `batch[i]` and is taken when answered, so
    /// after a panic the caller still holds the unanswered ones.
    pub(super) fn commit(&self, batch: Vec<Pending>, replies: &mut Vec<Option<Reply>>) {
        let batch = if batch.iter().any(|p| p.group.is_some()) {
            self.refuse_duplicate_groups(batch, replies)
        } else {
            batch
        };
        let durable: Vec<Arc<Update>> = batch
            .iter()
            .filter(|p| p.durable)
            .map(|p| p.update.clone())
            .collect();
        let mut results = if durable.is_empty() {
            Vec::new()
        } else {
            match self.history.append_batch(&durable) {
                Ok(r) => {
                    self.clear_fault();
                    metrics::METRICS.commit_group.observe(durable.len() as f64);
                    r
                }
                Err(e) => {
                    self.stats.storage_errors.fetch_add(1, Ordering::Relaxed);
                    let reason = format!("history cannot store updates: {e}");
                    self.set_fault(reason.clone());
                    let message =
                        format!("{reason}; the update was not published (it may still be stored if the write reached the disk: retry with the same id, a 409 then means it was)");
                    for reply in replies.iter_mut().filter_map(Option::take) {
                        let _ = reply.send(Err(HubError::Unavailable(message.clone())));
                    }
                    return;
                }
            }
        }
        .into_iter();
        let stored_at = Instant::now();
        let mut cut_off = Vec::new();
        let mut published = 0;
        let mut answers = Vec::with_capacity(durable.len());
        // A group whose member failed answers with that failure.
        let mut group_error: Option<(u64, String)> = None;
        {
            let mut head = self.order.lock();
            for (p, reply) in batch.into_iter().zip(replies.iter_mut()) {
                if !p.durable {
                    if Hub::is_status_event(&p.update) {
                        self.deliver_status(&p.update, &mut cut_off);
                    } else {
                        self.fan_out(&p.update, None, &mut cut_off);
                    }
                    continue;
                }
                let mut result = results.next().unwrap_or_else(|| {
                    Err(HistoryError::Storage(
                        "the store returned fewer results than updates".into(),
                    ))
                });
                match &result {
                    Ok(seq) => {
                        self.fan_out(&p.update, Some(*seq), &mut cut_off);
                        head.advance(*seq, &p.update);
                        published += 1;
                    }
                    Err(e) => {
                        if let Some(g) = p.group {
                            group_error.get_or_insert((g, e.to_string()));
                        }
                    }
                }
                if let (Some(g), Some((failed, why))) = (p.group, &group_error) {
                    if g == *failed && result.is_ok() {
                        result = Err(HistoryError::Storage(format!(
                            "part of the batch was not stored: {why}"
                        )));
                    }
                }
                answers.push((reply.take(), result));
            }
        }
        if published > 0 {
            metrics::observe(&metrics::METRICS.delivery_seconds, stored_at.elapsed());
        }
        self.stats.published.fetch_add(published, Ordering::Relaxed);
        self.remove_many(&cut_off);
        for (reply, result) in answers {
            if let Some(reply) = reply {
                let _ = reply.send(result.map(|_| ()).map_err(HubError::from));
            }
        }
    }

    /// Between batches, with a fault: try the store again, so the hub
    /// recovers by itself when the fault goes away (space freed, device
    /// back).
    fn probe_storage(&self) {
        if self.fault.lock().is_none() {
            return;
        }
        match self.history.probe() {
            Ok(()) => self.clear_fault(),
            Err(e) => self.set_fault(format!("history cannot store updates: {e}")),
        }
    }
}

/// A panic's message, for the log and `/readyz`.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The committer thread: batch whatever is waiting, commit, deliver, repeat.
/// Supervised in place: a panic while committing fails that batch (its
/// publishers' replies are dropped, so they answer 503), is reported on
/// `/readyz` until a later batch commits, and the loop goes on.
pub(super) fn run(hub: Weak<Hub>, rx: std_mpsc::Receiver<ApplyRequest>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut maintain = false;
        let mut stop = false;
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                ApplyRequest::Publish(pending) => batch.push(pending),
                ApplyRequest::PublishAll(group) => batch.extend(group),
                ApplyRequest::Maintain => maintain = true,
                ApplyRequest::Stop => {
                    stop = true;
                    break;
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let Some(hub) = hub.upgrade() else { return };
        if !batch.is_empty() {
            let mut replies: Vec<Option<Reply>> =
                batch.iter_mut().map(|p| p.reply.take()).collect();
            let committed =
                std::panic::catch_unwind(AssertUnwindSafe(|| hub.commit(batch, &mut replies)));
            if let Err(panic) = committed {
                hub.stats.committer_panics.fetch_add(1, Ordering::Relaxed);
                let reason = format!(
                    "the committer panicked ({}); that batch was refused with 503",
                    panic_message(panic.as_ref())
                );
                hub.set_fault(reason.clone());
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(HubError::Unavailable(format!(
                        "{reason}; the update may not have been stored: retry it"
                    ))));
                }
            }
        }
        if maintain || stop {
            let step = std::panic::catch_unwind(AssertUnwindSafe(|| {
                hub.probe_storage();
                // Age retention in bounded steps; publishes that arrive
                // meanwhile wait at most one step.
                match hub.history.trim() {
                    Ok(true) => hub.maintain(),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "history trim failed"),
                }
                if let Err(e) = hub.history.flush() {
                    tracing::error!(error = %e, "history flush failed");
                }
            }));
            if let Err(panic) = step {
                tracing::error!(
                    panic = panic_message(panic.as_ref()),
                    "history maintenance panicked"
                );
            }
        }
        if stop {
            return;
        }
    }
}
