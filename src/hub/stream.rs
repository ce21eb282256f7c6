//! One subscriber's outgoing stream: replayed history first, then its live
//! queue, with writes coalesced.
//!
//! Coalescing: when the connection task wakes up it takes everything already
//! waiting in the queue (up to [`MAX_CHUNK`] bytes) and hands it to hyper as
//! one chunk, so a burst of N events costs one write syscall, not N. A single
//! waiting event is passed through as is, without a copy.
//!
//! Dropping the stream (hyper drops the body when the client goes away)
//! unregisters the subscriber at once: no task, queue or index entry is left
//! behind.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use super::queue::{coalesce, QueueReceiver};
use super::Hub;

/// Upper bound of one coalesced write.
pub const MAX_CHUNK: usize = 64 * 1024;

pub struct SubscriberStream {
    hub: Arc<Hub>,
    key: u64,
    backlog: VecDeque<Bytes>,
    rx: QueueReceiver,
}

impl SubscriberStream {
    pub(super) fn new(
        hub: Arc<Hub>,
        key: u64,
        backlog: Vec<Bytes>,
        rx: QueueReceiver,
    ) -> SubscriberStream {
        SubscriberStream {
            hub,
            key,
            backlog: backlog.into(),
            rx,
        }
    }

    /// Events replayed from history still waiting to be written.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }
}

impl Stream for SubscriberStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(chunk) = coalesce(&mut this.backlog, MAX_CHUNK) {
            return Poll::Ready(Some(Ok(chunk)));
        }
        this.rx.poll_chunk(cx, MAX_CHUNK).map(|chunk| chunk.map(Ok))
    }
}

impl Drop for SubscriberStream {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.key);
    }
}
