//! HTTP/2 subscribers: several event streams share one connection (ALPN h2
//! over https://, prior-knowledge h2c over http://). Each stream is checked
//! and counted exactly like an HTTP/1.1 subscriber.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::sync::watch;
use tokio::time::{sleep, timeout};

use crate::conn::{connect, Alpn};
use crate::sse::SseParser;
use crate::stats::now_ns;
use crate::sub::{take_events, Checker, Ctx};

/// One subscriber on a shared connection.
pub struct Member {
    pub local: usize,
    pub topic: u64,
}

/// Open one HTTP/2 connection (with retries) and run `members` as streams on
/// it until `stop`. `idx` spreads connections over the source addresses.
pub async fn connection(
    ctx: Arc<Ctx>,
    idx: u64,
    members: Vec<Member>,
    expected_updates: u64,
    mut stop: watch::Receiver<bool>,
) {
    let Some(send) = open(&ctx, idx, &mut stop).await else {
        ctx.stats
            .connect_failed
            .fetch_add(members.len() as u64, Relaxed);
        return;
    };
    let mut tasks = Vec::with_capacity(members.len());
    for m in members {
        let (ctx, send, stop) = (ctx.clone(), send.clone(), stop.clone());
        tasks.push(tokio::spawn(stream(ctx, send, m, expected_updates, stop)));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn open(ctx: &Ctx, idx: u64, stop: &mut watch::Receiver<bool>) -> Option<SendRequest<Bytes>> {
    let n_ips = ctx.src_ips.len() as u64;
    for attempt in 0..=ctx.retries {
        if *stop.borrow() {
            return None;
        }
        let src = ctx.src_ips[((idx + attempt as u64) % n_ips) as usize];
        let res = {
            let _permit = ctx.connect_sem.acquire().await.ok()?;
            ctx.stats.connect_attempts.fetch_add(1, Relaxed);
            timeout(ctx.connect_timeout, async {
                let conn = connect(&ctx.target.sub, src, ctx.rcvbuf, ctx.mss, Alpn::H2).await?;
                let (send, driver) = h2::client::Builder::new()
                    .initial_window_size(1 << 20)
                    // Like a browser (Chromium: 15 MiB): 64 KiB for the whole
                    // connection would throttle its 50 streams.
                    .initial_connection_window_size(16 << 20)
                    .handshake::<_, Bytes>(conn)
                    .await
                    .map_err(std::io::Error::other)?;
                tokio::spawn(async move {
                    let _ = driver.await;
                });
                Ok::<_, std::io::Error>(send)
            })
            .await
        };
        match res {
            Ok(Ok(send)) => return Some(send),
            Ok(Err(_)) => ctx.stats.connect_errors.fetch_add(1, Relaxed),
            Err(_) => ctx.stats.connect_timeouts.fetch_add(1, Relaxed),
        };
        if attempt < ctx.retries {
            let backoff = Duration::from_millis((100u64 << attempt.min(6)) + idx % 50);
            tokio::select! {
                _ = sleep(backoff) => {}
                _ = stop.changed() => return None,
            }
        }
    }
    None
}

async fn stream(
    ctx: Arc<Ctx>,
    send: SendRequest<Bytes>,
    m: Member,
    expected_updates: u64,
    mut stop: watch::Receiver<bool>,
) {
    let stats = &ctx.stats;
    let (path, token) = ctx.target.subscribe_path(&[m.topic]);
    let scheme = if ctx.target.sub.tls { "https" } else { "http" };
    let mut req = http::Request::get(format!("{scheme}://{}{path}", ctx.target.sub.host))
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("user-agent", "herald-loadgen");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(()).expect("a valid request");
    let opened = timeout(ctx.connect_timeout, async {
        let mut send = send.ready().await?;
        let (resp, _) = send.send_request(req, true)?;
        resp.await
    })
    .await;
    let resp = match opened {
        Ok(Ok(r)) if r.status() == 200 => r,
        Ok(Ok(r)) => {
            stats
                .last_bad_status
                .store(r.status().as_u16() as u64, Relaxed);
            stats.status_errors.fetch_add(1, Relaxed);
            stats.connect_failed.fetch_add(1, Relaxed);
            return;
        }
        Ok(Err(_)) => {
            stats.protocol_errors.fetch_add(1, Relaxed);
            stats.connect_failed.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            stats.connect_timeouts.fetch_add(1, Relaxed);
            stats.connect_failed.fetch_add(1, Relaxed);
            return;
        }
    };
    stats.connected.fetch_add(1, Relaxed);
    let slot = &ctx.slots[m.local];
    slot.connected_at.store(now_ns(), Relaxed);
    let mut checker = Checker::new(m.topic, expected_updates);
    let mut parser = SseParser::new();
    let mut body = resp.into_body();
    let dropped = loop {
        if *stop.borrow() {
            break false;
        }
        tokio::select! {
            d = body.data() => match d {
                Some(Ok(data)) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    stats.reads.fetch_add(1, Relaxed);
                    take_events(&mut parser, &mut checker, stats, Some(slot), |out| {
                        out(&data);
                        true
                    });
                }
                _ => break true,
            },
            _ = stop.changed() => break false,
        }
    };
    if dropped {
        stats.dropped.fetch_add(1, Relaxed);
    }
    stats.disconnects.fetch_add(1, Relaxed);
}
