//! Publisher pool: a few keep-alive HTTP/1.1 connections, each a task pulling
//! the next update number (or, for Herald batches, the next run of
//! `--batch-size` update numbers) from a shared counter (optionally paced).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::conn::{connect, Alpn, Conn};
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::http::roundtrip;
use crate::stats::{make_payload, now_ns, HistSnapshot, Histogram};
use crate::sub::Ctx;

/// Which (topic, seq) the i-th update goes to.
#[derive(Clone, Copy)]
pub enum Plan {
    /// All updates to topic 0, seq = i.
    OneTopic,
    /// Update i to topic i, seq 0.
    TopicPerUpdate,
    /// Round-robin over `n` topics; seq counts per topic.
    RoundRobin(u64),
}

impl Plan {
    fn job(self, i: u64) -> (u64, u64) {
        match self {
            Plan::OneTopic => (0, i),
            Plan::TopicPerUpdate => (i, 0),
            Plan::RoundRobin(n) => (i % n, i / n),
        }
    }

    /// How many of the first `total` updates go to `topic`.
    pub fn updates_for(self, topic: u64, total: u64) -> u64 {
        match self {
            Plan::OneTopic => total,
            Plan::TopicPerUpdate => (topic < total) as u64,
            Plan::RoundRobin(n) => total / n + (topic < total % n) as u64,
        }
    }
}

pub struct PubConfig {
    pub plan: Plan,
    pub total: u64,
    pub rate: Option<f64>,
    pub concurrency: usize,
    pub pad_to: usize,
    /// `Some(b)`: Herald batch requests of up to `b` updates each; `None`:
    /// one publish request per update.
    pub batch: Option<u64>,
    /// Stop starting new publishes after this instant.
    pub deadline: Instant,
    pub request_timeout: Duration,
}

#[derive(Default)]
pub struct PubCounters {
    /// Updates sent (in single or batch requests).
    pub issued: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    /// Batch requests answered 200.
    pub batches: AtomicU64,
    pub first_ns: AtomicU64,
    pub last_ns: AtomicU64,
}

/// Counts are in updates (a refused batch counts all its records); the
/// latency is per request.
pub struct PubResult {
    pub accepted: u64,
    pub rejected: u64,
    pub errors: u64,
    /// Batch requests answered 200 (`None` when publishing one by one).
    pub batches: Option<u64>,
    pub first_ns: u64,
    pub last_ns: u64,
    pub latency: HistSnapshot,
    pub first_failure: Option<String>,
    /// Which updates (by index) were accepted: for exact expected counts.
    pub accepted_per_topic: Vec<u64>,
}

pub async fn run(ctx: Arc<Ctx>, cfg: PubConfig, counters: Arc<PubCounters>) -> PubResult {
    let next = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Histogram::new());
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let topics = match cfg.plan {
        Plan::OneTopic => 1,
        Plan::TopicPerUpdate => cfg.total as usize,
        Plan::RoundRobin(n) => n as usize,
    };
    let per_topic: Arc<Vec<AtomicU64>> = Arc::new((0..topics).map(|_| AtomicU64::new(0)).collect());
    counters.first_ns.store(u64::MAX, Relaxed);
    let t0 = Instant::now();
    let cfg = Arc::new(cfg);
    let mut workers = Vec::new();
    for w in 0..cfg.concurrency.max(1) {
        let (ctx, cfg, next, hist, failure, counters, per_topic) = (
            ctx.clone(),
            cfg.clone(),
            next.clone(),
            hist.clone(),
            failure.clone(),
            counters.clone(),
            per_topic.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            let mut buf = Vec::with_capacity(1024);
            let step = cfg.batch.unwrap_or(1).max(1);
            loop {
                let i = next.fetch_add(step, Relaxed);
                if i >= cfg.total {
                    break;
                }
                // This request's updates: i..end.
                let end = (i + step).min(cfg.total);
                let n = end - i;
                if let Some(r) = cfg.rate {
                    let at = t0 + Duration::from_secs_f64(i as f64 / r);
                    if at >= cfg.deadline {
                        break;
                    }
                    sleep_until(at).await;
                }
                if Instant::now() >= cfg.deadline {
                    break;
                }
                if conn.is_none() {
                    let src = Ipv4Addr::new(127, 0, 0, 1);
                    match timeout(
                        cfg.request_timeout,
                        connect(&ctx.target.publ, src, 0, 0, Alpn::Http1),
                    )
                    .await
                    {
                        Ok(Ok(s)) => conn = Some(s),
                        _ => {
                            counters.errors.fetch_add(n, Relaxed);
                            failure.lock().unwrap().get_or_insert_with(|| {
                                "cannot connect to the publish endpoint".into()
                            });
                            sleep(Duration::from_millis(20 + w as u64)).await;
                            continue;
                        }
                    }
                }
                let stream = conn.as_mut().unwrap();
                // Each update's data carries its own send timestamp.
                let req = match cfg.batch {
                    None => {
                        let (topic, seq) = cfg.plan.job(i);
                        ctx.target
                            .publish_request(topic, &make_payload(seq, topic, cfg.pad_to))
                    }
                    Some(_) => {
                        let records: Vec<(u64, String)> = (i..end)
                            .map(|k| {
                                let (topic, seq) = cfg.plan.job(k);
                                (topic, make_payload(seq, topic, cfg.pad_to))
                            })
                            .collect();
                        ctx.target.batch_request(&records)
                    }
                };
                let start = Instant::now();
                counters.first_ns.fetch_min(now_ns(), Relaxed);
                counters.issued.fetch_add(n, Relaxed);
                match timeout(cfg.request_timeout, roundtrip(stream, &req, &mut buf)).await {
                    Ok(Ok((status, body, close))) => {
                        hist.record(start.elapsed().as_micros() as u64);
                        counters.last_ns.fetch_max(now_ns(), Relaxed);
                        let batched = cfg.batch.is_some();
                        match ctx.target.accepted_updates(batched, status, &body) {
                            Some(ok) => {
                                // Ids come in request order: the first `ok` records.
                                let ok = ok.min(n);
                                counters.accepted.fetch_add(ok, Relaxed);
                                counters.batches.fetch_add(batched as u64, Relaxed);
                                for k in i..i + ok {
                                    per_topic[cfg.plan.job(k).0 as usize].fetch_add(1, Relaxed);
                                }
                                if ok < n {
                                    counters.rejected.fetch_add(n - ok, Relaxed);
                                    failure.lock().unwrap().get_or_insert_with(|| {
                                        format!("a batch of {n} updates answered {ok} ids")
                                    });
                                }
                            }
                            None => {
                                counters.rejected.fetch_add(n, Relaxed);
                                failure.lock().unwrap().get_or_insert_with(|| {
                                    format!(
                                        "publish answered {status}: {}",
                                        String::from_utf8_lossy(&body[..body.len().min(200)])
                                            .trim()
                                    )
                                });
                            }
                        }
                        if close {
                            conn = None;
                        }
                    }
                    Ok(Err(e)) => {
                        counters.errors.fetch_add(n, Relaxed);
                        failure
                            .lock()
                            .unwrap()
                            .get_or_insert_with(|| format!("publish failed: {e}"));
                        conn = None;
                    }
                    Err(_) => {
                        counters.errors.fetch_add(n, Relaxed);
                        failure
                            .lock()
                            .unwrap()
                            .get_or_insert_with(|| "publish timed out".into());
                        conn = None;
                    }
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let first = counters.first_ns.load(Relaxed);
    let failure = failure.lock().unwrap().take();
    PubResult {
        accepted: counters.accepted.load(Relaxed),
        rejected: counters.rejected.load(Relaxed),
        errors: counters.errors.load(Relaxed),
        batches: cfg.batch.map(|_| counters.batches.load(Relaxed)),
        first_ns: if first == u64::MAX { 0 } else { first },
        last_ns: counters.last_ns.load(Relaxed),
        latency: hist.snapshot(),
        first_failure: failure,
        accepted_per_topic: per_topic.iter().map(|a| a.load(Relaxed)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_per_topic_add_up() {
        for (plan, topics) in [
            (Plan::OneTopic, 1),
            (Plan::TopicPerUpdate, 12),
            (Plan::RoundRobin(7), 7),
        ] {
            for total in [0, 1, 6, 7, 8, 12, 50] {
                let mut counted = vec![0u64; topics];
                for i in 0..total {
                    let (t, _) = plan.job(i);
                    if (t as usize) < topics {
                        counted[t as usize] += 1;
                    }
                }
                for (t, &c) in counted.iter().enumerate() {
                    assert_eq!(plan.updates_for(t as u64, total), c, "topic {t} of {total}");
                }
            }
        }
        // Round-robin seqs count per topic: update i is topic i % n, seq i / n.
        assert_eq!(Plan::RoundRobin(3).job(7), (1, 2));
    }
}
