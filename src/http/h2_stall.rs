//! The write timeout for one HTTP/2 stream.
//!
//! Over HTTP/1.1 a client that stops reading blocks the socket, and the
//! socket's write deadline closes it. Over HTTP/2 the socket keeps moving
//! for the other streams of the connection: a stream whose client stops
//! reading it runs out of flow-control window instead, and hyper then
//! stops taking data from its body. Nothing in the body is polled any
//! more, so nothing inside it can notice.
//!
//! So each HTTP/2 stream runs in a task of its own (hyper hands them to
//! [`StreamExecutor`]) with a watchdog beside it: the response body is
//! wrapped in [`Pulled`], which notes the time whenever hyper asks it for
//! data. A live event stream is asked at least once per keep-alive
//! (`--heartbeat`): the keep-alive comment wakes it. A stream not asked for
//! `--write-timeout` plus one heartbeat has had data (at least that
//! comment) waiting for the whole write timeout: the watchdog drops the
//! stream's task, and h2 resets the stream (RST_STREAM CANCEL). The
//! client's other streams go on; an EventSource reconnects and resumes.
//! One timer per stream, re-armed once per period, never per event.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

tokio::task_local! {
    /// The watchdog's record of the stream this task serves.
    static STREAM: Arc<Pulls>;
}

/// When hyper last asked the stream's body for data, in ms since
/// [`epoch`] (0: no response body yet, nothing to watch).
#[derive(Default)]
pub struct Pulls(AtomicU64);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1: never 0, which means "not armed".
    epoch().elapsed().as_millis() as u64 + 1
}

impl Pulls {
    fn pulled(&self) {
        self.0.store(now_ms(), Relaxed);
    }

    /// How long until the stream counts as stalled, or `None` if it is.
    fn left(&self, limit: Duration) -> Option<Duration> {
        let last = self.0.load(Relaxed);
        if last == 0 {
            return Some(limit);
        }
        let idle = Duration::from_millis(now_ms().saturating_sub(last));
        limit.checked_sub(idle).filter(|left| !left.is_zero())
    }
}

/// Runs each HTTP/2 stream hyper spawns under a watchdog (see the module
/// docs). `stall_after` zero: no watchdog.
#[derive(Clone, Copy)]
pub struct StreamExecutor {
    pub stall_after: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let limit = self.stall_after;
        if limit.is_zero() {
            tokio::spawn(fut);
            return;
        }
        let pulls = Arc::new(Pulls::default());
        // A future of its own rather than an async block: an async block
        // would hold `fut` twice (captured, then pinned), doubling what
        // each stream's task costs.
        let watched = Watched {
            fut,
            timer: tokio::time::sleep(limit),
            pulls: pulls.clone(),
            limit,
        };
        tokio::spawn(STREAM.scope(pulls, watched));
    }
}

pin_project_lite::pin_project! {
    /// A stream's task under its watchdog: done when the stream is, or
    /// when it stalled (then dropping the stream resets it).
    struct Watched<F> {
        #[pin]
        fut: F,
        #[pin]
        timer: tokio::time::Sleep,
        pulls: Arc<Pulls>,
        limit: Duration,
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        if this.fut.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            match this.pulls.left(*this.limit) {
                Some(left) => this
                    .timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + left),
                None => {
                    super::conn::STATS.write_timeouts.fetch_add(1, Relaxed);
                    return Poll::Ready(());
                }
            }
        }
        Poll::Pending
    }
}

/// Wrap a response body so that the watchdog of the stream it is sent on
/// (if any: HTTP/2 with a write timeout) sees each time hyper asks for data.
pub fn watch(body: Body) -> Body {
    match STREAM.try_with(Arc::clone) {
        Ok(pulls) => {
            pulls.pulled();
            Body::new(Pulled { inner: body, pulls })
        }
        Err(_) => body,
    }
}

/// A response body that notes each time it is asked for data.
pub struct Pulled {
    inner: Body,
    pulls: Arc<Pulls>,
}

impl HttpBody for Pulled {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        this.pulls.pulled();
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_counts_as_stalled_only_once_armed_and_idle_for_the_limit() {
        let p = Pulls::default();
        let limit = Duration::from_millis(50);
        assert_eq!(p.left(limit), Some(limit), "no body yet: nothing to watch");
        p.pulled();
        assert!(p.left(limit).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(p.left(limit), None, "idle past the limit");
        p.pulled();
        assert!(p.left(limit).is_some(), "asked again: alive");
    }
}
