//! The embedded engine: one node, no external service (the default of
//! `herald serve`).
//!
//! Here the log *is* the node's history (`crate::history`: the journal and
//! redb under `--data-dir`, or the memory ring), and appending is applying:
//! a publish goes to the committer, which writes it with everything else
//! waiting at that moment in one durable write (group commit), delivers it,
//! and only then answers. So when [`Log::append`] resolves, the update is
//! stored and offered to every matching subscriber of the hub, which is why
//! a resume never has to wait for anything here.
//!
//! Ids are checked by history itself (the store refuses a duplicate; a
//! batch group is looked up before anything of it is written: see
//! `hub::committer`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Applier, Log, LogError};
use crate::subscription::SubscriptionInfo;
use crate::update::Update;

pub struct EmbeddedLog {
    applier: Applier,
    /// Numbers the all-or-nothing groups (batch publishes).
    next_group: AtomicU64,
}

impl EmbeddedLog {
    /// The engine that appends through `applier`, the hub's committer.
    pub fn new(applier: Applier) -> EmbeddedLog {
        EmbeddedLog {
            applier,
            next_group: AtomicU64::new(1),
        }
    }
}

impl Log for EmbeddedLog {
    fn append<'a>(
        &'a self,
        updates: &'a [Arc<Update>],
        chosen: &'a [bool],
    ) -> BoxFuture<'a, Result<(), LogError>> {
        async move {
            match updates {
                [] => Ok(()),
                // One update is one request: the store's own duplicate
                // check answers for it.
                [update] => {
                    let chosen = chosen.first().copied().unwrap_or(true);
                    self.applier.commit_one(update.clone(), chosen).await
                }
                _ => {
                    let group = self.next_group.fetch_add(1, Ordering::Relaxed);
                    let pairs = updates
                        .iter()
                        .enumerate()
                        .map(|(i, u)| (u.clone(), chosen.get(i).copied().unwrap_or(true)));
                    self.applier.commit(pairs, true, Some(group)).await
                }
            }
        }
        .boxed()
    }

    fn generate_id(&self, _first_topic: &str) -> String {
        Update::generate_id()
    }

    fn wait_until_applied<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<(), LogError>> {
        // A publisher hears back only once its update is applied here.
        futures_util::future::ready(Ok(())).boxed()
    }

    fn ready_to_subscribe(&self) -> Result<(), LogError> {
        Ok(())
    }

    fn readiness(&self) -> Result<(), String> {
        // The store's faults are the committer's to report (it is the one
        // that writes): see `Hub::readiness`.
        Ok(())
    }

    fn announce(&self, event: Arc<Update>, _info: SubscriptionInfo) {
        // This node's registry is the only one: the subscriptions API
        // reads it directly.
        if let Err(e) = self.applier.deliver_live(event) {
            tracing::warn!(error = %e, "could not publish subscription event");
        }
    }

    fn subscriptions_elsewhere(&self) -> BoxFuture<'_, Result<Vec<SubscriptionInfo>, String>> {
        futures_util::future::ready(Ok(Vec::new())).boxed()
    }
}
