//! `/metrics`: everything Herald counts, in the Prometheus text format
//! (OpenMetrics 1.0, written by the `prometheus-client` crate). The
//! counters each part keeps as plain atomics are read at scrape time;
//! histograms and labelled counters live in [`crate::metrics`].
//! docs/operations.md lists every metric; `deploy/grafana/herald.json`
//! uses them, and `tests/metrics.rs` checks that each one it queries is
//! here.

use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use super::conn;
use super::AppState;
use crate::metrics::METRICS;

/// The media type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn gauge(r: &mut Registry, name: &str, help: &str, v: u64) {
    r.register(name, help, ConstGauge::new(v as i64));
}

/// `name` without `_total`: the format adds it to counters.
fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    r.register(name, help, ConstCounter::new(v));
}

/// One gauge per label value.
fn by(r: &mut Registry, name: &str, help: &str, label: &'static str, values: &[(String, u64)]) {
    let family: Family<Vec<(&'static str, String)>, Gauge> = Family::default();
    for (value, v) in values {
        family
            .get_or_create(&vec![(label, value.clone())])
            .set(*v as i64);
    }
    r.register(name, help, family);
}

pub async fn metrics(State(s): State<AppState>) -> Response {
    let st = &s.hub.stats;
    let edge = &conn::STATS;
    let mut r = Registry::default();
    gauge(
        &mut r,
        "herald_subscribers",
        "Connected subscribers",
        s.hub.subscriber_count() as u64,
    );
    let kinds: Vec<(String, u64)> = s
        .hub
        .subscription_kinds()
        .into_iter()
        .map(|(k, n)| (k.to_string(), n as u64))
        .collect();
    by(
        &mut r,
        "herald_subscriptions",
        "Subscriptions (one per subscriber and topic selector) by kind of selector",
        "kind",
        &kinds,
    );
    counter(
        &mut r,
        "herald_published",
        "Updates published (stored and queued to subscribers)",
        st.published.load(Relaxed),
    );
    r.register(
        "herald_publish_requests",
        "Publish requests (single and batch) by the status of their answer",
        METRICS.publishes.clone(),
    );
    r.register(
        "herald_publish_duration_seconds",
        "A publish request, from its head read to its answer",
        METRICS.publish_seconds.clone(),
    );
    counter(
        &mut r,
        "herald_delivered",
        "Events queued to subscribers",
        st.delivered.load(Relaxed),
    );
    r.register(
        "herald_delivery_duration_seconds",
        "A commit group, from stored to queued to every matching subscriber",
        METRICS.delivery_seconds.clone(),
    );
    r.register(
        "herald_commit_group_updates",
        "Updates per commit group (stored with one durable write)",
        METRICS.commit_group.clone(),
    );
    counter(
        &mut r,
        "herald_slow_cut_off",
        "Subscribers cut off for falling behind (--max-queue)",
        st.cut_off_slow.load(Relaxed),
    );
    counter(
        &mut r,
        "herald_replays",
        "Subscribers that resumed with a replay of history",
        METRICS.replays.get(),
    );
    counter(
        &mut r,
        "herald_replayed_events",
        "Events replayed from history to resuming subscribers",
        METRICS.replayed.get(),
    );
    gauge(
        &mut r,
        "herald_history_updates",
        "Updates held in history",
        s.hub.history().len() as u64,
    );
    gauge(
        &mut r,
        "herald_history_bytes",
        "Bytes history takes: its file on disk, or its events in memory",
        s.hub.history().bytes(),
    );
    counter(
        &mut r,
        "herald_history_syncs",
        "Durable writes (fsyncs) of history: one per commit group, shared by its publishers",
        s.hub.history().syncs(),
    );
    r.register(
        "herald_history_sync_duration_seconds",
        "A commit group's durable write (journal write and fdatasync)",
        METRICS.sync_seconds.clone(),
    );
    counter(
        &mut r,
        "herald_storage_errors",
        "Commit groups history failed to store",
        st.storage_errors.load(Relaxed),
    );
    counter(
        &mut r,
        "herald_committer_panics",
        "Commit groups that panicked (the committer carried on)",
        st.committer_panics.load(Relaxed),
    );
    gauge(
        &mut r,
        "herald_ready",
        "Whether the hub can take publishes (see /readyz)",
        u64::from(s.hub.readiness().is_ok()),
    );
    gauge(
        &mut r,
        "herald_distinct_patterns",
        "Distinct compiled topic patterns alive (--max-distinct-patterns)",
        crate::topic::live_patterns() as u64,
    );
    let open = edge.connections.load(Relaxed) as u64;
    let h2 = edge.h2_open.load(Relaxed) as u64;
    gauge(
        &mut r,
        "herald_connections",
        "Open client connections",
        open,
    );
    by(
        &mut r,
        "herald_connections_by_protocol",
        "Open client connections by protocol",
        "protocol",
        &[
            ("http/1.1".into(), open.saturating_sub(h2)),
            ("h2".into(), h2),
        ],
    );
    counter(
        &mut r,
        "herald_connections_refused",
        "Connections refused over --max-connections (503)",
        edge.refused_total.load(Relaxed),
    );
    counter(
        &mut r,
        "herald_connections_refused_per_ip",
        "Connections refused over --max-connections-per-ip (429)",
        edge.refused_per_ip.load(Relaxed),
    );
    counter(&mut r, "herald_write_timeouts", "Connections (or HTTP/2 streams) closed because a write made no progress for --write-timeout", edge.write_timeouts.load(Relaxed));
    counter(
        &mut r,
        "herald_header_timeouts",
        "Connections closed because a request head did not arrive within --header-timeout",
        edge.header_timeouts.load(Relaxed),
    );
    counter(
        &mut r,
        "herald_body_timeouts",
        "Requests answered 408 because their body did not arrive within --body-timeout",
        edge.body_timeouts.load(Relaxed),
    );
    counter(
        &mut r,
        "herald_accept_errors",
        "Failed accepts (e.g. out of file descriptors)",
        edge.accept_errors.load(Relaxed),
    );
    counter(
        &mut r,
        "herald_tls_handshake_failures",
        "TLS handshakes that failed or did not finish within --header-timeout",
        edge.tls_failures.load(Relaxed),
    );
    counter(
        &mut r,
        "herald_http2_connections",
        "Connections served as HTTP/2 (TLS with ALPN h2, or h2c)",
        edge.h2_connections.load(Relaxed),
    );
    if let Some(c) = &s.cluster {
        let cs = &c.stats;
        counter(
            &mut r,
            "herald_cluster_applied",
            "Entries of the cluster log applied by this node",
            cs.applied.load(Relaxed),
        );
        counter(
            &mut r,
            "herald_cluster_bad_entries",
            "Log entries skipped because they are not Herald updates",
            cs.bad_entries.load(Relaxed),
        );
        counter(
            &mut r,
            "herald_cluster_resets",
            "Times the log did not continue where this node left it (history dropped)",
            cs.resets.load(Relaxed),
        );
        counter(
            &mut r,
            "herald_cluster_probes",
            "Idle partitions asked whether they hold anything unread (the merge's watermark)",
            cs.probes.load(Relaxed),
        );
        let lag: Vec<(String, u64)> = c
            .lag()
            .into_iter()
            .enumerate()
            .map(|(p, n)| (p.to_string(), n))
            .collect();
        by(
            &mut r,
            "herald_cluster_lag_entries",
            "Entries of a partition this node knows the log has and has not applied yet",
            "partition",
            &lag,
        );
        r.register(
            "herald_cluster_redis_duration_seconds",
            "An append to Redis (one script call), sent to answered",
            METRICS.redis_seconds.clone(),
        );
        counter(
            &mut r,
            "herald_cluster_primary_changes",
            "Times this node's reader followed Redis to another primary (a failover)",
            METRICS.primary_changes.get(),
        );
    }
    let mut body = String::with_capacity(16 * 1024);
    if encode(&mut body, &r).is_err() {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "could not write the metrics",
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}
