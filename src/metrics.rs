//! What `/metrics` measures beyond the counters each part keeps: latency
//! and size histograms, and counters with labels. One set per process,
//! like the edge's counters ([`crate::http::conn::STATS`]); the scrape
//! ([`crate::http::metrics`]) writes them with everything else in the
//! Prometheus text format. docs/operations.md lists every metric.
//!
//! Recording costs one short lock per observation: each histogram is
//! observed once per publish request, per commit group, per durable write
//! or per Redis append, never per delivery.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// A publish request's answer, by status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub status: u16,
}

pub struct Metrics {
    /// Publish requests (single and batch), by status.
    pub publishes: Family<Outcome, Counter>,
    /// A publish request, from its head read to its answer made.
    pub publish_seconds: Histogram,
    /// A commit group, from stored (durable) to queued to every matching
    /// subscriber.
    pub delivery_seconds: Histogram,
    /// Updates per commit group.
    pub commit_group: Histogram,
    /// The durable write (journal write and `fdatasync`) of a group.
    pub sync_seconds: Histogram,
    /// Subscribers that resumed with a replay of history, and the events
    /// replayed to them.
    pub replays: Counter,
    pub replayed: Counter,
    /// Cluster: an append script call to Redis, sent to answered.
    pub redis_seconds: Histogram,
    /// Cluster: a reader found another primary than the one it read (a
    /// failover followed).
    pub primary_changes: Counter,
}

/// 50 µs to about 13 s, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 2.0, 19))
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    publishes: Family::default(),
    publish_seconds: seconds(),
    delivery_seconds: seconds(),
    commit_group: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
    sync_seconds: seconds(),
    replays: Counter::default(),
    replayed: Counter::default(),
    redis_seconds: seconds(),
    primary_changes: Counter::default(),
});

pub fn observe(histogram: &Histogram, took: Duration) {
    histogram.observe(took.as_secs_f64());
}
