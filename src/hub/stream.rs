//! One subscriber's outgoing stream: replayed history first, then its live
//! queue, with writes coalesced.
//!
//! Replay is read page by page ([`REPLAY_PAGE`] updates at a time) on
//! tokio's blocking pool, as the connection drains: a resume from deep
//! history never blocks an async worker on the disk, and a subscriber never
//! holds more than one page of it in memory, so ten thousand clients
//! resuming from `earliest` at once cost ten thousand pages, not ten
//! thousand copies of the history.
//!
//! Coalescing: when the connection task wakes up it takes everything already
//! waiting (up to [`MAX_CHUNK`] bytes) and hands it over as one chunk, so a
//! burst of N events costs one write syscall, not N. A single waiting event
//! is passed through as is, without a copy.
//!
//! Dropping the stream (the connection ends) unregisters the subscriber at
//! once: no task, queue or index entry is left behind.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use super::queue::{coalesce, QueueReceiver};
use super::{Hub, Subscription};
use crate::history::HistoryError;
use crate::update::Update;

/// Upper bound of one coalesced write.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Updates read from history per page of a replay.
pub const REPLAY_PAGE: usize = 64;

/// Replay pages read from history at the same time, hub-wide. A storm of
/// resuming clients (every browser of a site reconnecting after a deploy)
/// then costs at most this many blocking threads decoding history, and
/// leaves the cores to live delivery; each waiting client holds no page.
pub const CONCURRENT_REPLAY_READS: usize = 4;

/// What is left to replay: sequence numbers `next..=upto`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplayCursor {
    pub next: u64,
    pub upto: u64,
    /// When true, the next page must start exactly at `next`: anything
    /// else means retention removed updates this subscriber has not seen,
    /// and the stream ends instead of skipping them silently. Only the
    /// first page of a resume from `earliest` may start later.
    pub strict: bool,
}

type Page = Result<Vec<(u64, Arc<Update>)>, HistoryError>;

/// A page being read: a permit, then the read on the blocking pool.
type Fetch = Pin<Box<dyn Future<Output = Result<Page, tokio::task::JoinError>> + Send>>;

pub struct SubscriberStream {
    hub: Arc<Hub>,
    key: u64,
    subscription: Arc<Subscription>,
    backlog: VecDeque<Bytes>,
    replay: Option<ReplayCursor>,
    fetching: Option<Fetch>,
    rx: QueueReceiver,
    ended: bool,
}

impl SubscriberStream {
    pub(super) fn new(
        hub: Arc<Hub>,
        key: u64,
        subscription: Arc<Subscription>,
        replay: Option<ReplayCursor>,
        rx: QueueReceiver,
    ) -> SubscriberStream {
        SubscriberStream {
            hub,
            key,
            subscription,
            backlog: VecDeque::new(),
            replay,
            fetching: None,
            rx,
            ended: false,
        }
    }

    /// Is part of the replay still to be read from history?
    #[cfg(test)]
    pub(super) fn replaying(&self) -> bool {
        self.replay.is_some()
    }

    /// Take a fetched page into the backlog; false when the stream must
    /// end (a gap, or history failed).
    fn accept_page(&mut self, page: Result<Page, tokio::task::JoinError>) -> bool {
        let Some(cursor) = self.replay.as_mut() else {
            return true;
        };
        let page = match page {
            Ok(Ok(page)) => page,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "replay failed; ending the stream so the client resumes");
                return false;
            }
            Err(e) => {
                tracing::error!(error = %e, "replay task failed; ending the stream");
                return false;
            }
        };
        let Some((first, _)) = page.first() else {
            // Nothing left up to `upto`: retention removed it all. Anything
            // else (history still holds some of it) is not a reason to go
            // live without it: end, and let the client resume.
            let skipped_nothing = !cursor.strict && self.hub.history().first_seq() > cursor.upto;
            self.replay = None;
            return skipped_nothing;
        };
        if *first != cursor.next && cursor.strict {
            tracing::info!(
                expected = cursor.next,
                found = first,
                "history was trimmed during a replay; ending the stream so the client resumes"
            );
            return false;
        }
        cursor.strict = true;
        let mut last = cursor.next;
        let before = self.backlog.len();
        for (seq, update) in page {
            last = seq;
            if self.subscription.wants(&update) {
                self.backlog.push_back(update.frame.clone());
            }
        }
        crate::metrics::METRICS
            .replayed
            .inc_by((self.backlog.len() - before) as u64);
        cursor.next = last + 1;
        if cursor.next > cursor.upto {
            self.replay = None;
        }
        true
    }
}

impl Stream for SubscriberStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(chunk) = coalesce(&mut this.backlog, MAX_CHUNK) {
                return Poll::Ready(Some(Ok(chunk)));
            }
            let Some(cursor) = this.replay else { break };
            let fetch = this.fetching.get_or_insert_with(|| {
                let history = this.hub.history().clone();
                let reads = this.hub.replay_reads.clone();
                Box::pin(async move {
                    // The semaphore is never closed, so this never fails.
                    let permit = reads.acquire_owned().await.ok();
                    let page = tokio::task::spawn_blocking(move || {
                        history.read_range(cursor.next, cursor.upto, REPLAY_PAGE)
                    })
                    .await;
                    drop(permit);
                    page
                })
            });
            let page = ready!(fetch.as_mut().poll(cx));
            this.fetching = None;
            if !this.accept_page(page) {
                this.ended = true;
            }
        }
        this.rx.poll_chunk(cx, MAX_CHUNK).map(|chunk| chunk.map(Ok))
    }
}

impl Drop for SubscriberStream {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.key);
    }
}
