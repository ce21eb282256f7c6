//! `/metrics` against a real server: what it counts follows what happened,
//! and every metric the Grafana dashboard (`deploy/grafana/herald.json`)
//! queries is exported by a running Herald (one node on its own, one on
//! Redis).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::redis::Redis;
use common::*;

async fn scrape(base: &str) -> String {
    let resp = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    resp.text().await.expect("body")
}

/// The value of the sample `series` (name and labels as written), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("{series} missing in\n{text}"))
}

/// The names of every sample exported.
fn names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn metrics_follow_what_happens() {
    let server = Server::start(&[]);
    let hub = server.hub();
    let mut exact = Sub::ok(&hub, "topic=https%3A%2F%2Fexample.com%2Fa").await;
    let _template = Sub::ok(&hub, "topic=https%3A%2F%2Fexample.com%2F%7Bx%7D").await;
    let text = scrape(&server.base).await;
    assert_eq!(value(&text, r#"herald_subscriptions{kind="exact"}"#), 1.0);
    assert_eq!(
        value(&text, r#"herald_subscriptions{kind="uri_template"}"#),
        1.0
    );
    assert_eq!(value(&text, r#"herald_subscriptions{kind="any"}"#), 0.0);
    assert_eq!(value(&text, "herald_subscribers"), 2.0);

    let first = publish(&hub, &[("topic", "https://example.com/a"), ("data", "one")]).await;
    let second = publish(&hub, &[("topic", "https://example.com/a"), ("data", "two")]).await;
    assert_eq!(exact.next().await.id, first);
    assert_eq!(exact.next().await.id, second);
    let (status, _) = publish_raw(&hub, None, "topic=https://example.com/a&data=x").await;
    assert_eq!(status, 401);
    let text = scrape(&server.base).await;
    assert_eq!(
        value(&text, r#"herald_publish_requests_total{status="200"}"#),
        2.0
    );
    assert_eq!(
        value(&text, r#"herald_publish_requests_total{status="401"}"#),
        1.0
    );
    assert_eq!(value(&text, "herald_publish_duration_seconds_count"), 3.0);
    assert!(value(&text, "herald_publish_duration_seconds_sum") > 0.0);
    assert_eq!(value(&text, "herald_published_total"), 2.0);
    assert!(value(&text, "herald_commit_group_updates_sum") >= 2.0);
    assert!(value(&text, "herald_delivery_duration_seconds_count") >= 1.0);
    assert!(value(&text, "herald_history_sync_duration_seconds_count") >= 1.0);
    assert_eq!(value(&text, "herald_history_updates"), 2.0);
    assert!(value(&text, "herald_history_bytes") > 0.0);
    assert_eq!(value(&text, "herald_replays_total"), 0.0);

    // A resume from the first update replays the second.
    let mut resumed = Sub::open(
        &hub,
        "topic=https%3A%2F%2Fexample.com%2Fa",
        SubOpts {
            last_event_id: Some(&first),
            ..SubOpts::default()
        },
    )
    .await;
    assert_eq!(resumed.next().await.id, second);
    let text = scrape(&server.base).await;
    assert_eq!(value(&text, "herald_replays_total"), 1.0);
    assert_eq!(value(&text, "herald_replayed_events_total"), 1.0);

    // An HTTP/2 connection (h2c) is counted as one while it is open.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let text = scrape(&server.base).await;
    assert_eq!(
        value(&text, r#"herald_connections_by_protocol{protocol="h2"}"#),
        1.0
    );
    assert_eq!(value(&text, "herald_http2_connections_total"), 1.0);
    drop(resp);
    drop(h2);
    drop(exact);
    // Subscribers that leave are no longer counted.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&server.base).await;
        if sample(&text, r#"herald_subscriptions{kind="exact"}"#) == Some(1.0)
            && sample(&text, r#"herald_connections_by_protocol{protocol="h2"}"#) == Some(0.0)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/herald.json"
        ))
        .unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut queried = BTreeSet::new();
    let re = regex::Regex::new(r"herald_[a-z0-9_]+").unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queried.extend(re.find_iter(expr).map(|m| m.as_str().to_string()));
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");

    // One node on its own and one on Redis, each having published once.
    let alone = Server::start(&[]);
    let redis = Redis::start(&[]);
    let url = redis.url();
    let clustered = Server::start(&["--transport", &url]);
    let mut exported = BTreeSet::new();
    for node in [&alone, &clustered] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while reqwest::get(format!("{}/readyz", node.base))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
            != 200
        {
            assert!(std::time::Instant::now() < deadline, "ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        publish(&node.hub(), &[("topic", "t"), ("data", "x")]).await;
        exported.extend(names(&scrape(&node.base).await));
    }
    let missing: Vec<&String> = queried.iter().filter(|q| !exported.contains(*q)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics Herald does not export: {missing:?}"
    );
}
