//! Subscriber connections: open an SSE stream (raw HTTP/1.1), then decode the
//! body (chunked or plain) into SSE events and account every delivery.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, timeout, Instant};

use crate::conn::{connect, Alpn, Conn};
use crate::http::{read_head, BodyKind, HeadError};
use crate::sse::{SseEvent, SseParser};
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
    /// SO_RCVBUF for subscriber sockets (0: the kernel default).
    pub rcvbuf: u32,
    /// TCP_MAXSEG for subscriber sockets (0: the kernel default).
    pub mss: u32,
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
    stream: Conn,
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
        let mut stream = connect(&ctx.target.sub, src, ctx.rcvbuf, ctx.mss, Alpn::Http1)
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
            crate::sys::set_linger_zero(stream.tcp());
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

/// The outcome of one counted connection attempt in a reconnecting loop.
enum Reconnect {
    Open(SubStream),
    /// Failed (counted); waited `backoff`: try again.
    Retry,
    /// Asked to stop (or the pool closed).
    Stop,
}

/// One connection attempt through the connect pool, counted in the stats;
/// on failure wait `backoff` (or until stopped) before the caller retries.
async fn reconnect(
    ctx: &Ctx,
    req: &[u8],
    src: Ipv4Addr,
    backoff: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Reconnect {
    let res = {
        let Ok(_permit) = ctx.connect_sem.acquire().await else {
            return Reconnect::Stop;
        };
        ctx.stats.connect_attempts.fetch_add(1, Relaxed);
        open_stream(ctx, req, src).await
    };
    match res {
        Ok(s) => Reconnect::Open(s),
        Err(e) => {
            count_error(&ctx.stats, &e);
            tokio::select! {
                _ = sleep(backoff) => Reconnect::Retry,
                _ = stop.changed() => Reconnect::Stop,
            }
        }
    }
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

    fn on_event(&mut self, ev: &SseEvent, now: u64, stats: &Stats, b: &mut Batch) {
        let Some((seq, topic, sent)) = parse_payload(ev.data.as_bytes()) else {
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

/// Feed one piece of an SSE body to herald's parser. Empty pieces are
/// skipped: `herald::sse::SseParser::feed(&[])` forgets a CR that ended the
/// previous piece, so a CRLF split around an empty piece would count twice.
fn feed_sse(parser: &mut SseParser, piece: &[u8]) -> Vec<SseEvent> {
    if piece.is_empty() {
        return Vec::new();
    }
    parser.feed(piece)
}

/// Decode raw bytes of a response body (chunked, fixed length or until EOF)
/// and hand the payload pieces to `out`. False on a chunked-encoding error.
fn feed_body(body: &mut BodyKind, raw: &[u8], out: &mut dyn FnMut(&[u8])) -> bool {
    match body {
        BodyKind::Chunked(dec) => dec.feed(raw, out).is_ok(),
        BodyKind::Length(rem) => {
            let take = (*rem as usize).min(raw.len());
            out(&raw[..take]);
            *rem -= take as u64;
            true
        }
        BodyKind::Eof => {
            out(raw);
            true
        }
    }
}

/// The body is complete (the server ended the response).
fn body_finished(body: &BodyKind) -> bool {
    match body {
        BodyKind::Chunked(dec) => dec.is_done(),
        BodyKind::Length(rem) => *rem == 0,
        BodyKind::Eof => false,
    }
}

/// Hand the body bytes `feed` produces to the SSE parser, check and count
/// each event, and update the subscriber's slot. Returns what `feed` did.
pub fn take_events(
    parser: &mut SseParser,
    checker: &mut Checker,
    stats: &Stats,
    slot: Option<&Slot>,
    feed: impl FnOnce(&mut dyn FnMut(&[u8])) -> bool,
) -> bool {
    let now = now_ns();
    let mut batch = Batch::default();
    let comments_before = parser.comments();
    let ok = feed(&mut |c: &[u8]| {
        for ev in feed_sse(parser, c) {
            checker.on_event(&ev, now, stats, &mut batch);
        }
    });
    batch.comments = parser.comments() - comments_before;
    stats.add_batch(&batch, now);
    if let Some(slot) = slot {
        slot.distinct.store(checker.seqs.distinct, Relaxed);
        slot.order_hash.store(checker.order_hash, Relaxed);
    }
    ok
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
            let ok = take_events(&mut parser, checker, stats, slot, |out| {
                feed_body(&mut sub.body, &pending, out)
            });
            pending.clear();
            if !ok {
                stats.protocol_errors.fetch_add(1, Relaxed);
                return End::Dropped;
            }
            if body_finished(&sub.body) {
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
        let mut sub = match reconnect(&ctx, &req, src, Duration::from_millis(20), &mut stop).await {
            Reconnect::Open(s) => s,
            Reconnect::Retry => continue,
            Reconnect::Stop => return,
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

/// How a slow reader misbehaves. Either way it drains afterwards, to learn
/// whether the server ended the stream meanwhile.
#[derive(Clone, Copy, Debug)]
pub enum Slowness {
    /// Read at most `bytes` every `every` (for `max_life`).
    Trickle { bytes: usize, every: Duration },
    /// Read nothing for `stall`.
    Stall { stall: Duration },
}

/// Bounds of one slow-reader task.
#[derive(Clone, Copy, Debug)]
pub struct SlowPlan {
    pub mode: Slowness,
    /// A trickling reader trickles for this long, then drains.
    pub max_life: Duration,
    /// How long a reader drains (after its stall or trickle) before concluding
    /// that the server is still serving it.
    pub drain: Duration,
    /// End of the run.
    pub deadline: Instant,
}

/// What the slow readers saw, summed over all of them.
#[derive(Default)]
pub struct SlowCounters {
    /// Streams opened (200 head received).
    pub sessions: AtomicU64,
    /// The server ended the response cleanly (chunked terminator): cut off.
    pub cut_off_clean: AtomicU64,
    /// The server closed or reset the connection mid-response (e.g. a write deadline).
    pub cut_off_abort: AtomicU64,
    /// Still being served when we gave up on it (max life, or drained after a stall).
    pub survived: AtomicU64,
    /// Open when the run ended.
    pub at_deadline: AtomicU64,
    /// Sum of session lifetimes of cut-off sessions, ms.
    pub cut_off_life_ms: AtomicU64,
    pub bytes: AtomicU64,
    pub events: AtomicU64,
}

enum SlowEnd {
    CutOffClean,
    CutOffAbort,
    Survived,
    Deadline,
}

/// Feed raw bytes through the body decoder and the SSE parser, counting
/// events. `Err` on a malformed body; `Ok(true)` once the body is complete.
fn absorb(
    body: &mut BodyKind,
    parser: &mut SseParser,
    raw: &[u8],
    counters: &SlowCounters,
) -> Result<bool, ()> {
    let mut events = 0u64;
    let ok = feed_body(body, raw, &mut |c| {
        events += feed_sse(parser, c).len() as u64
    });
    counters.bytes.fetch_add(raw.len() as u64, Relaxed);
    counters.events.fetch_add(events, Relaxed);
    if !ok {
        return Err(());
    }
    Ok(body_finished(body))
}

/// One slow session on an open stream.
async fn slow_session(
    sub: &mut SubStream,
    plan: &SlowPlan,
    counters: &SlowCounters,
    stop: &mut watch::Receiver<bool>,
) -> SlowEnd {
    let mut parser = SseParser::new();
    let leftover = std::mem::take(&mut sub.leftover);
    match absorb(&mut sub.body, &mut parser, &leftover, counters) {
        Ok(true) => return SlowEnd::CutOffClean,
        Ok(false) => {}
        Err(()) => return SlowEnd::CutOffAbort,
    }
    let began = Instant::now();
    // Slow phase until `slow_until`, then drain as fast as possible until
    // `give_up`: the server's end of the stream (after whatever it still had
    // buffered) can only be seen by reading everything before it.
    let (slow_until, trickle) = match plan.mode {
        Slowness::Trickle { bytes, every } => (began + plan.max_life, Some((bytes.max(1), every))),
        Slowness::Stall { stall } => (began + stall, None),
    };
    let give_up = slow_until + plan.drain;
    let mut buf = vec![0u8; 64 * 1024];
    let mut next = match trickle {
        Some((_, every)) => began + every,
        None => slow_until,
    };
    loop {
        if next > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(next.min(plan.deadline)) => {}
                _ = stop.changed() => return SlowEnd::Deadline,
            }
        }
        let now = Instant::now();
        if now >= plan.deadline || stopped(stop) {
            return SlowEnd::Deadline;
        }
        if now >= give_up {
            return SlowEnd::Survived;
        }
        let draining = now >= slow_until;
        let want = match trickle {
            Some((bytes, _)) if !draining => bytes.min(buf.len()),
            _ => buf.len(),
        };
        let read = tokio::select! {
            r = sub.stream.read(&mut buf[..want]) => r,
            _ = tokio::time::sleep_until(give_up.min(plan.deadline)) => continue,
            _ = stop.changed() => return SlowEnd::Deadline,
        };
        match read {
            Ok(0) | Err(_) => return SlowEnd::CutOffAbort,
            Ok(n) => match absorb(&mut sub.body, &mut parser, &buf[..n], counters) {
                Ok(true) => return SlowEnd::CutOffClean,
                Ok(false) => {}
                Err(()) => return SlowEnd::CutOffAbort,
            },
        }
        next = match trickle {
            Some((_, every)) if !draining => (Instant::now() + every).min(slow_until),
            _ => Instant::now(),
        };
    }
}

/// A slow reader: subscribe, read too slowly (or not at all) until the
/// server ends the stream or we give up, then reconnect; until the deadline.
pub async fn slow_reader(
    ctx: Arc<Ctx>,
    idx: u64,
    topics: Vec<u64>,
    plan: SlowPlan,
    counters: Arc<SlowCounters>,
    mut stop: watch::Receiver<bool>,
) {
    let req = ctx.target.subscribe_request_many(&topics);
    let n_ips = ctx.src_ips.len() as u64;
    let mut iter = 0u64;
    while Instant::now() < plan.deadline && !stopped(&stop) {
        let src = ctx.src_ips[((idx + iter) % n_ips) as usize];
        iter += 1;
        let mut sub = match reconnect(&ctx, &req, src, Duration::from_millis(200), &mut stop).await
        {
            Reconnect::Open(s) => s,
            Reconnect::Retry => continue,
            Reconnect::Stop => return,
        };
        ctx.stats.connected.fetch_add(1, Relaxed);
        counters.sessions.fetch_add(1, Relaxed);
        let began = Instant::now();
        let end = slow_session(&mut sub, &plan, &counters, &mut stop).await;
        let life_ms = began.elapsed().as_millis() as u64;
        let c = match end {
            SlowEnd::CutOffClean => &counters.cut_off_clean,
            SlowEnd::CutOffAbort => &counters.cut_off_abort,
            SlowEnd::Survived => &counters.survived,
            SlowEnd::Deadline => &counters.at_deadline,
        };
        c.fetch_add(1, Relaxed);
        if matches!(end, SlowEnd::CutOffClean | SlowEnd::CutOffAbort) {
            counters.cut_off_life_ms.fetch_add(life_ms, Relaxed);
        }
        drop(sub);
        ctx.stats.disconnects.fetch_add(1, Relaxed);
        // Spread reconnections out a little.
        tokio::select! {
            _ = sleep(Duration::from_millis(100 + idx % 200)) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ChunkedDecoder;

    /// Every way of splitting a body into three reads (empty reads included)
    /// gives the same events: what the subscribers rely on.
    #[test]
    fn events_independent_of_read_boundaries() {
        let sse: &[u8] = b"id: a\r\ndata: 1 2 3\r\n\r\n:c\rdata: x\r\rdata: y\r\n\r\n";
        let mut body = Vec::new();
        for piece in sse.chunks(5) {
            body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            body.extend_from_slice(piece);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let run = |reads: &[&[u8]]| {
            let mut kind = BodyKind::Chunked(ChunkedDecoder::new());
            let mut parser = SseParser::new();
            let mut got = Vec::new();
            for r in reads {
                assert!(feed_body(&mut kind, r, &mut |c| {
                    got.extend(feed_sse(&mut parser, c).into_iter().map(|e| (e.id, e.data)));
                }));
            }
            assert!(body_finished(&kind));
            (got, parser.comments())
        };
        let want = run(&[&body]);
        assert_eq!(
            want.0,
            [
                ("a".into(), "1 2 3".into()),
                ("a".into(), "x".into()),
                ("a".into(), "y".into())
            ]
        );
        assert_eq!(want.1, 1);
        for i in 0..=body.len() {
            for j in (i..=body.len()).step_by(3) {
                assert_eq!(run(&[&body[..i], &body[i..j], &body[j..]]), want, "{i},{j}");
            }
        }
    }

    #[test]
    fn payload_checks() {
        let stats = Stats::new();
        let mut c = Checker::new(3, 4);
        let mut b = Batch::default();
        let ev = |data: &str| SseEvent {
            data: data.into(),
            ..Default::default()
        };
        for d in ["0 3 1", "2 3 1", "1 3 1", "1 3 1", "0 4 1", "hello"] {
            c.on_event(&ev(d), 10, &stats, &mut b);
        }
        assert_eq!((b.received, b.unique, b.duplicates), (5, 3, 1));
        assert_eq!((b.out_of_order, b.wrong_topic, b.foreign), (2, 1, 1));
    }
}
