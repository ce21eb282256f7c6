//! Subscriber connections: open an SSE stream (raw HTTP/1.1), then decode the
//! body (chunked or plain) into SSE events and account every delivery.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, timeout, Instant};

use crate::http::{read_head, BodyKind, HeadError};
use crate::sse::{Event, SseParser};
use crate::stats::{now_ns, parse_payload, Batch, SeqTracker, Stats};
use crate::target::Target;

pub struct Ctx {
    pub target: Target,
    pub stats: Stats,
    pub src_ips: Vec<Ipv4Addr>,
    pub connect_sem: Semaphore,
    pub connect_timeout: Duration,
    pub retries: u32,
    pub read_buf: usize,
    /// Close streams with RST (SO_LINGER 0) instead of FIN.
    pub linger0: bool,
    /// One slot per subscriber of this process (long-lived workloads).
    pub slots: Vec<Slot>,
}

/// What main needs to know about one subscriber after the run.
#[derive(Default)]
pub struct Slot {
    /// Unix ns when the 200 head arrived (0: never connected).
    pub connected_at: AtomicU64,
    /// Distinct updates of its own topic received.
    pub distinct: AtomicU64,
    /// Rolling hash of the order in which sequence numbers arrived.
    pub order_hash: AtomicU64,
}

pub struct SubStream {
    stream: TcpStream,
    body: BodyKind,
    leftover: Vec<u8>,
}

pub enum OpenError {
    Connect,
    Timeout,
    Status(u16),
    Protocol,
}

/// Connect from `src`, send the subscribe request and wait for a 200 head.
pub async fn open_stream(ctx: &Ctx, req: &[u8], src: Ipv4Addr) -> Result<SubStream, OpenError> {
    let fut = async {
        let mut stream = crate::sys::connect_from(src, ctx.target.sub.addr)
            .await
            .map_err(|_| OpenError::Connect)?;
        stream
            .write_all(req)
            .await
            .map_err(|_| OpenError::Connect)?;
        let mut buf = Vec::with_capacity(1024);
        let head = read_head(&mut stream, &mut buf)
            .await
            .map_err(|e| match e {
                HeadError::Io(_) | HeadError::Closed => OpenError::Connect,
                HeadError::Malformed(_) => OpenError::Protocol,
            })?;
        if head.status != 200 {
            return Err(OpenError::Status(head.status));
        }
        if ctx.linger0 {
            crate::sys::set_linger_zero(&stream);
        }
        Ok(SubStream {
            stream,
            body: head.body,
            leftover: head.leftover,
        })
    };
    match timeout(ctx.connect_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(OpenError::Timeout),
    }
}

fn count_error(stats: &Stats, e: &OpenError) {
    match e {
        OpenError::Connect => stats.connect_errors.fetch_add(1, Relaxed),
        OpenError::Timeout => stats.connect_timeouts.fetch_add(1, Relaxed),
        OpenError::Status(code) => {
            stats.last_bad_status.store(*code as u64, Relaxed);
            stats.status_errors.fetch_add(1, Relaxed)
        }
        OpenError::Protocol => stats.protocol_errors.fetch_add(1, Relaxed),
    };
}

fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Open with bounded retries (exponential backoff). Counts `connected` or
/// `connect_failed` in the stats.
pub async fn open_with_retries(
    ctx: &Ctx,
    req: &[u8],
    idx: u64,
    stop: &mut watch::Receiver<bool>,
) -> Option<SubStream> {
    let n_ips = ctx.src_ips.len() as u64;
    for attempt in 0..=ctx.retries {
        if stopped(stop) {
            return None;
        }
        let src = ctx.src_ips[((idx + attempt as u64) % n_ips) as usize];
        let res = {
            let _permit = ctx.connect_sem.acquire().await.ok()?;
            ctx.stats.connect_attempts.fetch_add(1, Relaxed);
            open_stream(ctx, req, src).await
        };
        match res {
            Ok(s) => {
                ctx.stats.connected.fetch_add(1, Relaxed);
                return Some(s);
            }
            Err(e) => count_error(&ctx.stats, &e),
        }
        if attempt < ctx.retries {
            let backoff = Duration::from_millis((100u64 << attempt.min(6)) + idx % 50);
            tokio::select! {
                _ = sleep(backoff) => {}
                _ = stop.changed() => return None,
            }
        }
    }
    ctx.stats.connect_failed.fetch_add(1, Relaxed);
    None
}

/// What a subscriber checks on each delivery.
pub struct Checker {
    pub topic: u64,
    pub seqs: SeqTracker,
    pub order_hash: u64,
}

impl Checker {
    pub fn new(topic: u64, expected_updates: u64) -> Self {
        Checker {
            topic,
            seqs: SeqTracker::new(expected_updates.max(1)),
            order_hash: 0xcbf2_9ce4_8422_2325,
        }
    }

    fn on_event(&mut self, ev: &Event<'_>, now: u64, stats: &Stats, b: &mut Batch) {
        let Some((seq, topic, sent)) = parse_payload(ev.data) else {
            b.foreign += 1;
            return;
        };
        b.received += 1;
        if topic != self.topic {
            b.wrong_topic += 1;
            return;
        }
        let (fresh, ooo) = self.seqs.see(seq);
        if ooo {
            b.out_of_order += 1;
        }
        if fresh {
            self.order_hash = (self.order_hash ^ seq).wrapping_mul(0x0100_0000_01b3);
            b.unique += 1;
            stats.latency.record(now.saturating_sub(sent) / 1000);
        } else {
            b.duplicates += 1;
        }
    }
}

pub enum End {
    /// We were asked to stop (or the deadline passed).
    Stopped,
    /// The server ended the stream or an error occurred.
    Dropped,
}

/// Read events until `stop` fires, `until` passes, or the stream ends.
pub async fn read_events(
    ctx: &Ctx,
    sub: &mut SubStream,
    checker: &mut Checker,
    stop: &mut watch::Receiver<bool>,
    until: Option<Instant>,
    slot: Option<&Slot>,
) -> End {
    let stats = &ctx.stats;
    let mut parser = SseParser::new();
    let mut buf = vec![0u8; ctx.read_buf];
    let mut pending = std::mem::take(&mut sub.leftover);
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let deadline = until.unwrap_or(far);
    loop {
        if !pending.is_empty() {
            let now = now_ns();
            let mut batch = Batch::default();
            let comments_before = parser.comments;
            let mut on_ev = |ev: Event<'_>| checker.on_event(&ev, now, stats, &mut batch);
            let ok = match &mut sub.body {
                BodyKind::Chunked(dec) => dec
                    .feed(&pending, &mut |c| parser.feed(c, &mut on_ev))
                    .is_ok(),
                BodyKind::Length(rem) => {
                    let take = (*rem as usize).min(pending.len());
                    parser.feed(&pending[..take], &mut on_ev);
                    *rem -= take as u64;
                    true
                }
                BodyKind::Eof => {
                    parser.feed(&pending, &mut on_ev);
                    true
                }
            };
            batch.comments = parser.comments - comments_before;
            stats.add_batch(&batch, now);
            if let Some(slot) = slot {
                slot.distinct.store(checker.seqs.distinct, Relaxed);
                slot.order_hash.store(checker.order_hash, Relaxed);
            }
            pending.clear();
            if !ok {
                stats.protocol_errors.fetch_add(1, Relaxed);
                return End::Dropped;
            }
            let finished = match &sub.body {
                BodyKind::Chunked(dec) => dec.is_done(),
                BodyKind::Length(rem) => *rem == 0,
                BodyKind::Eof => false,
            };
            if finished {
                return End::Dropped;
            }
        }
        if stopped(stop) {
            return End::Stopped;
        }
        tokio::select! {
            r = sub.stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return End::Dropped,
                Ok(n) => {
                    stats.reads.fetch_add(1, Relaxed);
                    pending.extend_from_slice(&buf[..n]);
                }
            },
            _ = stop.changed() => return End::Stopped,
            _ = tokio::time::sleep_until(deadline) => return End::Stopped,
        }
    }
}

/// A long-lived subscriber (fanout, many-topics, idle); `local` is its slot.
pub async fn subscriber(
    ctx: Arc<Ctx>,
    idx: u64,
    local: usize,
    topic: u64,
    expected_updates: u64,
    mut stop: watch::Receiver<bool>,
) {
    let req = ctx.target.subscribe_request(topic);
    let Some(mut sub) = open_with_retries(&ctx, &req, idx, &mut stop).await else {
        return;
    };
    let slot = &ctx.slots[local];
    slot.connected_at.store(now_ns(), Relaxed);
    let mut checker = Checker::new(topic, expected_updates);
    if let End::Dropped =
        read_events(&ctx, &mut sub, &mut checker, &mut stop, None, Some(slot)).await
    {
        ctx.stats.dropped.fetch_add(1, Relaxed);
    }
    ctx.stats.disconnects.fetch_add(1, Relaxed);
}

/// A churning subscriber: connect, hold for `hold`, close, repeat until `deadline`.
pub async fn churner(
    ctx: Arc<Ctx>,
    idx: u64,
    topic: u64,
    hold: Duration,
    deadline: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let req = ctx.target.subscribe_request(topic);
    let n_ips = ctx.src_ips.len() as u64;
    let mut iter = 0u64;
    let mut checker = Checker::new(topic, 1024);
    while Instant::now() < deadline && !stopped(&stop) {
        let src = ctx.src_ips[((idx + iter) % n_ips) as usize];
        iter += 1;
        let res = {
            let Ok(_permit) = ctx.connect_sem.acquire().await else {
                return;
            };
            ctx.stats.connect_attempts.fetch_add(1, Relaxed);
            open_stream(&ctx, &req, src).await
        };
        let mut sub = match res {
            Ok(s) => s,
            Err(e) => {
                count_error(&ctx.stats, &e);
                tokio::select! {
                    _ = sleep(Duration::from_millis(20)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
        };
        ctx.stats.connected.fetch_add(1, Relaxed);
        if !hold.is_zero() {
            let until = (Instant::now() + hold).min(deadline);
            if let End::Dropped =
                read_events(&ctx, &mut sub, &mut checker, &mut stop, Some(until), None).await
            {
                ctx.stats.dropped.fetch_add(1, Relaxed);
            }
        }
        drop(sub);
        ctx.stats.disconnects.fetch_add(1, Relaxed);
    }
}
