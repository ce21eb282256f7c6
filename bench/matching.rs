//! Matching benchmark: prints figures, asserts nothing about speed.
//!
//! `cargo bench --bench matching` (add `-- --quick` for a short run). It
//! drives the hub core in-process (no HTTP, in-memory history) so the
//! figures are the cost of deciding who gets an update, plus delivery to
//! those who do. Each scenario registers N subscribers with K selectors,
//! then publishes with 256 publishes in flight and reports publishes/s and
//! ns per publish:
//! - `miss`: topics no selector matches (pure matching cost);
//! - `hit`: topics every pattern subscriber matches (matching + delivery;
//!   every subscriber's stream is drained by a task of its own).
//!
//! Only the hub's public API is used, so the same file measures older
//! builds too.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use herald::history::MemoryHistory;
use herald::hub::{Hub, HubConfig, Subscription, Update};
use herald::topic::TopicSelector;

struct Scenario {
    name: &'static str,
    subscribers: usize,
    /// Selectors of subscriber `i`.
    selectors: fn(usize) -> Vec<TopicSelector>,
    /// Topic of publish `n`.
    topic: fn(usize) -> String,
    publishes: usize,
}

fn url_pattern(s: &str) -> TopicSelector {
    TopicSelector::url_pattern(s, None).expect("valid pattern")
}

fn scenarios(quick: bool) -> Vec<Scenario> {
    let scale = |n: usize| if quick { (n / 10).max(10) } else { n };
    vec![
        Scenario {
            name: "100 subs x 10 distinct URL patterns, miss",
            subscribers: 100,
            selectors: |i| {
                (0..10)
                    .map(|k| url_pattern(&format!("https://ex.net/s{i}/k{k}/:id")))
                    .collect()
            },
            topic: |n| format!("https://ex.net/none/{n}"),
            publishes: scale(5_000),
        },
        Scenario {
            name: "100 subs x 10 distinct URL patterns, hit 1 sub",
            subscribers: 100,
            selectors: |i| {
                (0..10)
                    .map(|k| url_pattern(&format!("https://ex.net/s{i}/k{k}/:id")))
                    .collect()
            },
            topic: |n| format!("https://ex.net/s{}/k{}/{n}", n % 100, n % 10),
            publishes: scale(5_000),
        },
        Scenario {
            name: "10000 subs x same URL pattern, miss",
            subscribers: 10_000,
            selectors: |_| vec![url_pattern("https://ex.net/users/:id")],
            topic: |n| format!("https://ex.net/books/{n}"),
            publishes: scale(5_000),
        },
        Scenario {
            name: "10000 subs x same URL pattern, hit all",
            subscribers: 10_000,
            selectors: |_| vec![url_pattern("https://ex.net/users/:id")],
            topic: |n| format!("https://ex.net/users/{n}"),
            publishes: scale(200),
        },
        Scenario {
            name: "10000 subs x 1 exact topic each, hit 1 sub",
            subscribers: 10_000,
            selectors: |i| vec![TopicSelector::exact(&format!("https://ex.net/u/{i}"))],
            topic: |n| format!("https://ex.net/u/{}", n % 10_000),
            publishes: scale(20_000),
        },
        Scenario {
            name: "10000 subs x (1 exact + same template), miss",
            subscribers: 10_000,
            selectors: |i| {
                vec![
                    TopicSelector::exact(&format!("https://ex.net/u/{i}")),
                    TopicSelector::uri_template("https://ex.net/feeds/{id}").expect("template"),
                ]
            },
            topic: |n| format!("https://ex.net/other/{n}"),
            publishes: scale(5_000),
        },
    ]
}

async fn run(s: &Scenario) {
    let hub = Hub::new(
        HubConfig {
            queue_capacity: 4096,
            subscription_events: false,
            ..HubConfig::default()
        },
        Arc::new(MemoryHistory::new(10_000)),
    );
    let mut drains = Vec::with_capacity(s.subscribers);
    for i in 0..s.subscribers {
        let sub = Subscription {
            subscriber_id: Update::generate_id(),
            selectors: (s.selectors)(i),
            private_access: Vec::new(),
            payload: None,
        };
        let mut stream = hub.subscribe(sub, None).await.expect("subscribe").stream;
        drains.push(tokio::spawn(async move {
            let mut events = 0usize;
            while let Some(Ok(chunk)) = stream.next().await {
                events += chunk.windows(4).filter(|w| w == b"id: ").count();
            }
            events
        }));
    }
    let start = Instant::now();
    let mut n = 0;
    while n < s.publishes {
        let batch: Vec<_> = (n..(n + 256).min(s.publishes))
            .map(|k| {
                let update = Update::new(
                    format!("u{k}"),
                    vec![(s.topic)(k)],
                    false,
                    None,
                    None,
                    "x".to_string(),
                );
                let hub = hub.clone();
                async move { hub.publish(update).await.map(|_| ()) }
            })
            .collect();
        for r in futures_util::future::join_all(batch).await {
            r.expect("publish");
        }
        n += 256;
    }
    let elapsed = start.elapsed();
    hub.close();
    let mut delivered = 0;
    for d in drains {
        delivered += d.await.unwrap_or(0);
    }
    let per = elapsed.as_nanos() as f64 / s.publishes as f64;
    println!(
        "{:<48} {:>7} publishes {:>10.0} publishes/s {:>12.0} ns/publish {:>9} delivered",
        s.name,
        s.publishes,
        s.publishes as f64 / elapsed.as_secs_f64(),
        per,
        delivered
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for s in scenarios(quick) {
            run(&s).await;
        }
    });
}
