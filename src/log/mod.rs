//! The log: the seam between the hub and whatever orders and keeps
//! updates.
//!
//! The hub publishes to a [`Log`] and delivers what the log hands back,
//! the same way whichever engine runs:
//! - [`EmbeddedLog`] (one node, the default): appending *is* applying.
//!   The hub's committer writes the group to the local history (journal +
//!   redb, `crate::history`) in one durable write, then delivers it.
//! - the Redis engine (`crate::cluster`, `--transport`): appending is a Lua
//!   script on Redis; every node tails the log and hands each committed
//!   entry, in one order, to its own committer, which stores it in the
//!   node's replica of history and delivers it.
//!
//! Either way entries reach the hub through an [`Applier`], the committer's
//! inbox, which is defined here, below the hub: an engine never imports the
//! hub, and the hub never asks which engine runs.
//!
//! Why a trait object and not an enum of the two engines: the hub is then
//! compiled against this seam alone (the imports point one way, and a new
//! engine touches no hub code), and the cost is one boxed future per
//! publish, far below what a publish costs anyway (`bench/ab.sh`).

mod apply;
mod embedded;

pub use apply::{Applier, ApplyRequest, Pending, Reply};
pub use embedded::EmbeddedLog;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::history::HistoryError;
use crate::subscription::SubscriptionInfo;
use crate::update::Update;

/// Why an append (or a read that depends on the log) failed. The HTTP edge
/// maps it to a status: a duplicate id is 409, everything else 503.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// History refused it or failed: a duplicate id, or storage that cannot
    /// be read or written.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The log cannot take or hand back updates right now (disk full, an
    /// I/O error, Redis unreachable): nothing was published unless the
    /// message says otherwise; retrying later is safe.
    #[error("{0}")]
    Unavailable(String),
    #[error("the hub is shutting down")]
    ShuttingDown,
}

/// An ordered, replayable log of updates, as the hub sees it.
///
/// Every method that can wait returns a boxed future (the trait is used as
/// `Arc<dyn Log>`).
pub trait Log: Send + Sync + 'static {
    /// Append a group of updates, in order, all or nothing, and resolve once
    /// the log holds them as durably as the engine promises. `chosen[i]`
    /// says whether the publisher chose `updates[i]`'s id (it may clash
    /// with one already kept) or the hub generated it (unique by
    /// construction). A duplicate id refuses the whole group
    /// ([`HistoryError::DuplicateId`]).
    ///
    /// The embedded engine has also delivered the group on this node when
    /// it resolves; a distributed engine delivers it when its tail reaches
    /// it, on every node.
    fn append<'a>(
        &'a self,
        updates: &'a [Arc<Update>],
        chosen: &'a [bool],
    ) -> BoxFuture<'a, Result<(), LogError>>;

    /// A fresh id for an update whose first topic is `first_topic`. An
    /// engine that keeps ids per partition draws one kept with the update,
    /// so that publishing it touches one place.
    fn generate_id(&self, first_topic: &str) -> String;

    /// Resolves once this node has applied the update `id`, if the log
    /// knows it (at most a bounded wait; then an error that says so). A
    /// resume from an id published through a faster node waits here, so it
    /// neither skips nor repeats anything. Resolves at once where every
    /// acknowledged update is applied before its publisher hears back.
    fn wait_until_applied<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), LogError>>;

    /// May this node register subscribers now? A node still reading the
    /// log it joined would serve them a past that is not yet complete.
    fn ready_to_subscribe(&self) -> Result<(), LogError>;

    /// Why the log cannot take publishes right now, for `/readyz`.
    fn readiness(&self) -> Result<(), String>;

    /// A subscription of this node started or ended: deliver `event` (a
    /// live-only subscription event) to the subscribers of every node, and
    /// remember `info` where the other nodes' subscriptions APIs find it.
    /// Never blocks.
    fn announce(&self, event: Arc<Update>, info: SubscriptionInfo);

    /// The subscriptions held by the other nodes sharing this log (none on
    /// one node).
    fn subscriptions_elsewhere(&self) -> BoxFuture<'_, Result<Vec<SubscriptionInfo>, String>>;
}
