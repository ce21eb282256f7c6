//! The client side of `herald publish` and `herald subscribe`.

use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;

use crate::sse::{SseEvent, SseParser};

/// Publish one update; returns the id the hub assigned.
pub async fn publish(
    hub_url: &str,
    token: &str,
    fields: &[(&str, &str)],
) -> anyhow::Result<String> {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let resp = reqwest::Client::new()
        .post(hub_url)
        .bearer_auth(token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot reach the hub at {hub_url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("the hub answered {status}: {}", text.trim());
    }
    Ok(text.trim().to_string())
}

/// Options of a subscription.
pub struct SubscribeOptions {
    pub hub_url: String,
    pub token: Option<String>,
    /// Query pairs: `match`, `match_urlpattern`, `topic`.
    pub selectors: Vec<(String, String)>,
    pub last_event_id: Option<String>,
    /// Stop after this many events (None: run until interrupted).
    pub max_events: Option<u64>,
    /// Give up after this many failed connection attempts in a row.
    pub max_retries: u32,
}

/// Subscribe and call `on_event` for every event; after a drop, reconnect
/// with `Last-Event-ID` so nothing is missed (the hub replays from history).
pub async fn subscribe(
    opts: SubscribeOptions,
    mut on_event: impl FnMut(&SseEvent),
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let mut url = reqwest::Url::parse(&opts.hub_url)
        .with_context(|| format!("invalid hub URL {}", opts.hub_url))?;
    url.query_pairs_mut().extend_pairs(&opts.selectors);
    let mut last_id = opts.last_event_id.clone();
    let mut retry = Duration::from_secs(1);
    let mut failures = 0u32;
    let mut seen = 0u64;
    loop {
        let mut req = client
            .get(url.clone())
            .header("accept", "text/event-stream");
        if let Some(t) = &opts.token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = &last_id {
            req = req.header("last-event-id", id);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                failures = 0;
                let mut parser = SseParser::new();
                let mut body = resp.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let Ok(chunk) = chunk else { break };
                    for ev in parser.feed(&chunk) {
                        if let Some(ms) = ev.retry {
                            retry = Duration::from_millis(ms);
                        }
                        on_event(&ev);
                        seen += 1;
                        if opts.max_events.is_some_and(|m| seen >= m) {
                            return Ok(());
                        }
                    }
                }
                if !parser.last_event_id().is_empty() {
                    last_id = Some(parser.last_event_id().to_string());
                }
                eprintln!("connection closed; reconnecting in {retry:?}");
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if status.is_client_error() {
                    bail!(
                        "the hub refused the subscription: {status}: {}",
                        text.trim()
                    );
                }
                failures += 1;
                eprintln!("the hub answered {status}; retrying in {retry:?}");
            }
            Err(e) => {
                failures += 1;
                eprintln!("cannot reach the hub ({e}); retrying in {retry:?}");
            }
        }
        if failures > opts.max_retries {
            bail!("giving up after {failures} failed attempts");
        }
        tokio::time::sleep(retry).await;
    }
}
