//! One subscriber's bounded queue of encoded events: the hub pushes, the
//! subscriber's connection drains.
//!
//! Why not `tokio::sync::mpsc`: an idle subscriber is the common case (a
//! million of them is the goal), and a bounded tokio channel allocates its
//! first block of 32 slots (~1.2 KB with its header) up front, and keeps
//! grown blocks after a burst. This queue costs one small allocation while
//! empty, grows only while events are waiting, and gives the memory back
//! once drained. It needs no more than this: one producer at a time (the
//! committer, or the heartbeat, under the registry lock), one consumer,
//! `offer` that reports full or closed, and a drain that takes a whole
//! batch at once for a coalesced write.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

/// Capacity kept after draining; more is released.
const KEEP_CAPACITY: usize = 8;

struct Shared {
    state: Mutex<State>,
    waker: AtomicWaker,
}

struct State {
    items: VecDeque<Bytes>,
    capacity: usize,
    /// Bytes of the events in `items`.
    bytes: usize,
    /// Most bytes queued at once (one event alone may be larger).
    max_bytes: usize,
    /// No more pushes will come (the hub dropped the subscriber).
    closed: bool,
    /// The consumer is gone (the connection ended).
    receiver_gone: bool,
}

/// Take the front events as one chunk for one write: a single event as is
/// (no copy), several concatenated up to `max_bytes` (always at least one).
/// `None` when there is nothing.
pub(super) fn coalesce(items: &mut VecDeque<Bytes>, max_bytes: usize) -> Option<Bytes> {
    let first = items.pop_front()?;
    match items.front() {
        None => return Some(first),
        Some(second) if first.len() + second.len() > max_bytes => return Some(first),
        Some(_) => {}
    }
    let waiting = items.iter().map(Bytes::len).sum::<usize>() + first.len();
    let mut buf = BytesMut::with_capacity(max_bytes.min(waiting));
    buf.extend_from_slice(&first);
    while let Some(next) = items.front() {
        if buf.len() + next.len() > max_bytes {
            break;
        }
        buf.extend_from_slice(next);
        items.pop_front();
    }
    Some(buf.freeze())
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds `capacity` events, or the event would take it past
    /// its byte limit: the subscriber is too slow. The
    /// queue is now closed to further events (see [`QueueSender::offer`]).
    Full,
    /// The subscriber's connection is gone, or it was already cut off.
    Closed,
}

/// The hub's end. Dropping it ends the subscriber's stream once what is
/// queued has been drained.
pub struct QueueSender(Arc<Shared>);

/// The connection's end.
pub struct QueueReceiver(Arc<Shared>);

/// A queue holding at most `capacity` events and `max_bytes` bytes of
/// them (an event larger than that on its own still gets into an empty
/// queue: the publish limits bound it).
pub fn queue(capacity: usize, max_bytes: usize) -> (QueueSender, QueueReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            bytes: 0,
            max_bytes,
            closed: false,
            receiver_gone: false,
        }),
        waker: AtomicWaker::new(),
    });
    (QueueSender(shared.clone()), QueueReceiver(shared))
}

impl QueueSender {
    /// Queue an update's frame. The first one that does not fit closes the
    /// queue for good: every later offer is refused as `Closed`, and the
    /// stream ends once what is queued has been written. This is what
    /// makes a cut-off exact: if a later update could still slip in after
    /// a refused one (the subscriber drained a little meanwhile), the
    /// client would resume after the later one and never learn that the
    /// refused one existed. Ending at the first refusal means resuming from
    /// the last id it received replays exactly what it missed.
    pub fn offer(&self, event: Bytes) -> Result<(), PushError> {
        self.push(event, true)
    }

    /// Queue a keep-alive comment. A full queue is left as it is (the
    /// subscriber has data coming anyway) and is not closed: a comment
    /// carries nothing a client could miss.
    pub fn offer_keep_alive(&self, event: Bytes) -> Result<(), PushError> {
        self.push(event, false)
    }

    fn push(&self, event: Bytes, close_when_full: bool) -> Result<(), PushError> {
        {
            let mut state = self.0.state.lock();
            if state.receiver_gone || state.closed {
                return Err(PushError::Closed);
            }
            let over_bytes = !state.items.is_empty() && state.bytes + event.len() > state.max_bytes;
            if state.items.len() >= state.capacity || over_bytes {
                if close_when_full {
                    state.closed = true;
                    drop(state);
                    self.0.waker.wake();
                }
                return Err(PushError::Full);
            }
            state.bytes += event.len();
            state.items.push_back(event);
        }
        self.0.waker.wake();
        Ok(())
    }
}

impl Drop for QueueSender {
    fn drop(&mut self) {
        self.0.state.lock().closed = true;
        self.0.waker.wake();
    }
}

impl QueueReceiver {
    /// Take what is waiting as one chunk (see [`coalesce`]).
    /// `Ready(None)` means closed and drained.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>, max_bytes: usize) -> Poll<Option<Bytes>> {
        // Register first, then look: a push between the two still wakes us.
        self.0.waker.register(cx.waker());
        let mut state = self.0.state.lock();
        let Some(chunk) = coalesce(&mut state.items, max_bytes) else {
            return if state.closed {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        };
        // A chunk is the events it took, end to end.
        state.bytes = state.bytes.saturating_sub(chunk.len());
        if state.items.is_empty() && state.items.capacity() > KEEP_CAPACITY {
            state.items = VecDeque::new();
        }
        Poll::Ready(Some(chunk))
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.receiver_gone = true;
        state.items = VecDeque::new();
        state.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::task::noop_waker_ref;

    fn drain(rx: &mut QueueReceiver, max: usize) -> Poll<Option<Bytes>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        rx.poll_chunk(&mut cx, max)
    }

    fn chunk(s: &str) -> Poll<Option<Bytes>> {
        Poll::Ready(Some(Bytes::from(s.to_string())))
    }

    #[test]
    fn bounded_batches_and_close() {
        let (tx, mut rx) = queue(3, usize::MAX);
        assert!(drain(&mut rx, 100).is_pending());
        for e in ["a", "bb", "ccc"] {
            tx.offer(Bytes::from(e)).unwrap();
        }
        // Batches stop at max_bytes, but always take one event.
        assert_eq!(drain(&mut rx, 3), chunk("abb"));
        tx.offer(Bytes::from("d")).unwrap();
        drop(tx);
        // What was queued is still delivered, then the end.
        assert_eq!(drain(&mut rx, 1), chunk("ccc"));
        assert_eq!(drain(&mut rx, 100), chunk("d"));
        assert_eq!(drain(&mut rx, 100), Poll::Ready(None));
    }

    #[test]
    fn the_first_refused_event_closes_the_queue() {
        let (tx, mut rx) = queue(2, usize::MAX);
        tx.offer(Bytes::from("1")).unwrap();
        tx.offer(Bytes::from("2")).unwrap();
        // A keep-alive that does not fit closes nothing.
        assert_eq!(tx.offer_keep_alive(Bytes::from(":")), Err(PushError::Full));
        assert_eq!(tx.offer(Bytes::from("3")), Err(PushError::Full));
        // The subscriber drains: there is room again, yet nothing after
        // the refused "3" may get in, or "3" would be a silent gap.
        assert_eq!(drain(&mut rx, 100), chunk("12"));
        assert_eq!(tx.offer(Bytes::from("4")), Err(PushError::Closed));
        assert_eq!(
            tx.offer_keep_alive(Bytes::from(":")),
            Err(PushError::Closed)
        );
        assert_eq!(drain(&mut rx, 100), Poll::Ready(None));
    }

    #[test]
    fn push_to_a_gone_receiver_is_closed() {
        let (tx, rx) = queue(3, usize::MAX);
        drop(rx);
        assert_eq!(tx.offer(Bytes::from("a")), Err(PushError::Closed));
    }

    #[test]
    fn memory_is_released_after_a_burst() {
        let (tx, mut rx) = queue(1000, usize::MAX);
        for _ in 0..500 {
            tx.offer(Bytes::from_static(b"x")).unwrap();
        }
        assert!(matches!(drain(&mut rx, usize::MAX), Poll::Ready(Some(c)) if c.len() == 500));
        assert_eq!(rx.0.state.lock().items.capacity(), 0);
    }

    #[test]
    fn a_queue_is_bounded_in_bytes_too() {
        let (tx, mut rx) = queue(100, 10);
        tx.offer(Bytes::from("0123")).unwrap();
        tx.offer(Bytes::from("4567")).unwrap();
        // 8 bytes queued: 4 more would make 12.
        assert_eq!(tx.offer(Bytes::from("89ab")), Err(PushError::Full));
        assert_eq!(drain(&mut rx, 100), chunk("01234567"));
        assert_eq!(drain(&mut rx, 100), Poll::Ready(None), "cut off");
        // Drained, the count goes back down; one event larger than the
        // limit still gets into an empty queue.
        let (tx, mut rx) = queue(100, 10);
        tx.offer(Bytes::from("0123456789")).unwrap();
        assert_eq!(drain(&mut rx, 100), chunk("0123456789"));
        tx.offer(Bytes::from("a much longer event")).unwrap();
        assert_eq!(tx.offer_keep_alive(Bytes::from(":")), Err(PushError::Full));
        assert_eq!(drain(&mut rx, 100), chunk("a much longer event"));
        tx.offer(Bytes::from("0123456789")).unwrap();
        assert_eq!(rx.0.state.lock().bytes, 10);
    }
}
