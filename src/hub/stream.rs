//! Event sequencing and fan-out for one computation: the replay ring (bounded by count, bytes and
//! age), the subscribers' bounded queues with the slow-consumer policy, and the stream each
//! subscriber's response body reads.
//!
//! Policy: a subscriber whose queue is full is disconnected; if one slot is left it first gets
//! `SUBSCRIBER_TOO_SLOW`. A subscriber whose queue has not drained at all for two heartbeats
//! (its socket is stuck; hyper stopped polling the body) is disconnected the same way. Neither
//! ever delays another subscriber or the upstream: every send is a `try_send`.

use super::render::GatewayEvent;
use bytes::Bytes;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What a subscriber's queue carries.
#[derive(Debug, Clone)]
pub enum Item {
    Event(Arc<GatewayEvent>),
    Heartbeat,
}

/// Bounds of the replay ring.
#[derive(Debug, Clone, Copy)]
pub struct RingLimits {
    pub events: usize,
    pub bytes: usize,
    pub age: Duration,
}

/// The last events of a computation, for `Last-Event-ID` replay.
#[derive(Debug)]
pub struct ReplayRing {
    events: VecDeque<(Instant, Arc<GatewayEvent>)>,
    bytes: usize,
    limits: RingLimits,
    /// Whether any event has been evicted (the ring no longer starts at id 1).
    evicted: bool,
}

/// What a resuming subscriber missed.
pub enum Replay<'a> {
    /// Every event after the given id (possibly none).
    Complete(Vec<&'a Arc<GatewayEvent>>),
    /// Some were evicted; the oldest id still held (if any).
    Incomplete { oldest: Option<u64> },
}

impl ReplayRing {
    pub fn new(limits: RingLimits) -> Self {
        ReplayRing { events: VecDeque::new(), bytes: 0, limits, evicted: false }
    }

    pub fn push(&mut self, event: Arc<GatewayEvent>, now: Instant) {
        self.bytes += event.size();
        self.events.push_back((now, event));
        while self.events.len() > self.limits.events || self.bytes > self.limits.bytes {
            self.pop_oldest();
        }
        self.evict_expired(now);
    }

    /// Drops events older than the age bound (always keeping the newest).
    pub fn evict_expired(&mut self, now: Instant) {
        while self.events.len() > 1
            && self.events.front().is_some_and(|(at, _)| now.duration_since(*at) > self.limits.age)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, e)) = self.events.pop_front() {
            self.bytes -= e.size();
            self.evicted = true;
        }
    }

    /// Records that the ring does not start at the computation's first event (a relay that
    /// joined late).
    pub fn mark_incomplete(&mut self) {
        self.evicted = true;
    }

    /// True while nothing has been evicted: the ring holds the computation from its first event.
    pub fn is_complete(&self) -> bool {
        !self.evicted
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn oldest(&self) -> Option<u64> {
        self.events.front().and_then(|(_, e)| e.seq)
    }

    /// Everything held, oldest first.
    pub fn all(&self) -> impl DoubleEndedIterator<Item = &Arc<GatewayEvent>> {
        self.events.iter().map(|(_, e)| e)
    }

    /// The events after `last_seen`, if the ring still holds all of them. `latest` is the id of
    /// the newest event ever produced.
    pub fn after(&self, last_seen: u64, latest: u64) -> Replay<'_> {
        if last_seen > latest {
            return Replay::Incomplete { oldest: self.oldest() };
        }
        if last_seen == latest {
            return Replay::Complete(Vec::new());
        }
        // Resumable from the ring's start, or from just after the event `last_seen` names. Ids
        // are consecutive within a run but jump at a cluster leader change: an id that is not
        // held (one a lost leader gave out) cannot be resumed exactly.
        let from = match self.oldest() == Some(last_seen + 1) {
            true => Some(0),
            false => self.all().position(|e| e.seq == Some(last_seen)).map(|at| at + 1),
        };
        let Some(from) = from else {
            return Replay::Incomplete { oldest: self.oldest() };
        };
        Replay::Complete(self.all().skip(from).filter(|e| e.seq.is_some_and(|s| s > last_seen)).collect())
    }
}

/// Why a subscriber was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its queue filled.
    QueueFull,
    /// Its queue did not drain for two heartbeats.
    Stalled,
}

/// One subscriber as the computation's pump sees it.
#[derive(Debug)]
pub struct Subscriber {
    pub id: u64,
    tx: mpsc::Sender<Item>,
    capacity: usize,
    progress: Arc<AtomicU64>,
    last_progress: u64,
    stalled_ticks: u32,
}

/// What a push did to a subscriber.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    Dropped(DropReason),
    /// Its response is gone.
    Closed,
}

impl Subscriber {
    /// Sends an event; a subscriber with one slot left gets `too_slow` there and is dropped.
    pub fn push(&mut self, item: Item, too_slow: &dyn Fn() -> Item) -> Delivery {
        if self.tx.is_closed() {
            return Delivery::Closed;
        }
        match self.tx.capacity() {
            0 => Delivery::Dropped(DropReason::QueueFull),
            1 => {
                let _ = self.tx.try_send(too_slow());
                Delivery::Dropped(DropReason::QueueFull)
            }
            _ => match self.tx.try_send(item) {
                Ok(()) => Delivery::Sent,
                Err(mpsc::error::TrySendError::Full(_)) => Delivery::Dropped(DropReason::QueueFull),
                Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Closed,
            },
        }
    }

    /// The heartbeat: checks write progress, then queues a heartbeat if there is room.
    pub fn heartbeat(&mut self, too_slow: &dyn Fn() -> Item) -> Delivery {
        if self.tx.is_closed() {
            return Delivery::Closed;
        }
        let progress = self.progress.load(Ordering::Relaxed);
        let queued = self.tx.capacity() < self.capacity;
        if queued && progress == self.last_progress {
            self.stalled_ticks += 1;
            if self.stalled_ticks >= 2 {
                let _ = self.tx.try_send(too_slow());
                return Delivery::Dropped(DropReason::Stalled);
            }
        } else {
            self.stalled_ticks = 0;
        }
        self.last_progress = progress;
        // A full queue skips the heartbeat: the client is receiving events anyway.
        if self.tx.capacity() > 1 {
            let _ = self.tx.try_send(Item::Heartbeat);
        }
        Delivery::Sent
    }
}

/// How a subscriber's bytes are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Sse,
    Ndjson,
}

/// What a subscriber reads: one of the gateway's own [`Format`]s, or the SignalFlow REST/SSE
/// flavour of the compat API ([`GatewayEvent::signalflow`]). A type of its own rather than a
/// third `Format`, which the gateway's endpoints negotiate by `Accept` and match exhaustively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Sse,
    Ndjson,
    SignalFlow,
}

impl From<Format> for Framing {
    fn from(format: Format) -> Self {
        match format {
            Format::Sse => Framing::Sse,
            Format::Ndjson => Framing::Ndjson,
        }
    }
}

/// Runs when a subscription's body is dropped (the client went away or the stream ended).
pub struct Unsubscribe(pub Option<Box<dyn FnOnce() + Send + Sync>>);

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// The byte stream of one subscriber: a prelude (the SSE `retry:`), its initial events
/// (snapshot or replay), then its queue. Events are framed for the subscriber's format as they
/// are read, from bytes rendered once per event.
pub struct Subscription {
    prelude: Option<Bytes>,
    initial: std::vec::IntoIter<Arc<GatewayEvent>>,
    rx: mpsc::Receiver<Item>,
    progress: Arc<AtomicU64>,
    format: Framing,
    _unsubscribe: Unsubscribe,
}

/// Creates a subscriber and its stream. `capacity` is at least 2 (one slot is kept for the
/// too-slow notice).
pub fn subscriber(
    id: u64,
    capacity: usize,
    initial: Vec<Arc<GatewayEvent>>,
    prelude: Option<Bytes>,
    format: impl Into<Framing>,
    unsubscribe: Unsubscribe,
) -> (Subscriber, Subscription) {
    let format = format.into();
    let capacity = capacity.max(2);
    let (tx, rx) = mpsc::channel(capacity);
    let progress = Arc::new(AtomicU64::new(0));
    let subscriber = Subscriber { id, tx, capacity, progress: progress.clone(), last_progress: 0, stalled_ticks: 0 };
    let subscription =
        Subscription { prelude, initial: initial.into_iter(), rx, progress, format, _unsubscribe: unsubscribe };
    (subscriber, subscription)
}

/// The event's bytes for `format`; empty when the format has nothing to send for it.
fn frame(event: &GatewayEvent, format: Framing) -> Bytes {
    match format {
        Framing::Sse => event.sse.clone(),
        Framing::Ndjson => event.ndjson(),
        Framing::SignalFlow => event.signalflow(),
    }
}

impl Subscription {
    /// A subscription with only fixed content (e.g. the replay of an ended computation).
    pub fn finished(initial: Vec<Arc<GatewayEvent>>, prelude: Option<Bytes>, format: impl Into<Framing>) -> Self {
        let format = format.into();
        let (_, rx) = mpsc::channel(1);
        Subscription {
            prelude,
            initial: initial.into_iter(),
            rx,
            progress: Arc::new(AtomicU64::new(0)),
            format,
            _unsubscribe: Unsubscribe(None),
        }
    }

    /// The next event for an in-process consumer (heartbeats skipped); `None` at the end.
    pub async fn next_event(&mut self) -> Option<Arc<GatewayEvent>> {
        if let Some(event) = self.initial.next() {
            return Some(event);
        }
        loop {
            match self.rx.recv().await? {
                Item::Event(event) => {
                    self.progress.fetch_add(1, Ordering::Relaxed);
                    return Some(event);
                }
                Item::Heartbeat => self.progress.fetch_add(1, Ordering::Relaxed),
            };
        }
    }
}

/// An SSE comment: a heartbeat that is never a data event.
const SSE_HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// What a subscription yields next, before framing.
pub enum Piece {
    /// The SSE `retry:` prelude.
    Prelude(Bytes),
    Event(Arc<GatewayEvent>),
    Heartbeat,
}

impl Subscription {
    /// The next piece, unframed: for consumers that look at what an event is (the compat
    /// stream) before sending its bytes.
    pub fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<Option<Piece>> {
        if let Some(prelude) = self.prelude.take() {
            return Poll::Ready(Some(Piece::Prelude(prelude)));
        }
        if let Some(event) = self.initial.next() {
            if self.initial.len() == 0 {
                // Replays can be long; a drained one keeps no memory per subscriber.
                self.initial = Vec::new().into_iter();
            }
            return Poll::Ready(Some(Piece::Event(event)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                self.progress.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Some(match item {
                    Item::Event(event) => Piece::Event(event),
                    Item::Heartbeat => Piece::Heartbeat,
                }))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A piece's bytes in this subscription's format; empty when the format leaves it out.
    pub fn frame(&self, piece: &Piece) -> Bytes {
        match piece {
            Piece::Prelude(bytes) => bytes.clone(),
            Piece::Event(event) => frame(event, self.format),
            // NDJSON has no comment syntax; a blank line would be a line that is not JSON.
            Piece::Heartbeat if self.format == Framing::Ndjson => Bytes::new(),
            Piece::Heartbeat => Bytes::from_static(SSE_HEARTBEAT),
        }
    }
}

impl futures::Stream for Subscription {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let Some(piece) = std::task::ready!(self.poll_piece(cx)) else { return Poll::Ready(None) };
            let bytes = self.frame(&piece);
            // An empty chunk is nothing to send (an event this format leaves out).
            if !bytes.is_empty() {
                return Poll::Ready(Some(Ok(bytes)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::render::{EventKind, Notice};

    fn event(seq: u64, size: usize) -> Arc<GatewayEvent> {
        let kind = EventKind::Upstream(crate::upstream::UpstreamEvent::Progress { percent: 100 });
        Arc::new(GatewayEvent::new(Some(seq), kind, &vec![b'1'; size]))
    }

    #[test]
    fn ring_replays_exactly_the_missed_events_or_says_it_cannot() {
        let limits = RingLimits { events: 3, bytes: 1 << 20, age: Duration::from_secs(60) };
        let mut ring = ReplayRing::new(limits);
        let now = Instant::now();
        for seq in 1..=5 {
            ring.push(event(seq, 10), now);
        }
        assert_eq!(ring.oldest(), Some(3));
        assert!(!ring.is_complete());
        let Replay::Complete(missed) = ring.after(3, 5) else { panic!() };
        assert_eq!(missed.iter().map(|e| e.seq.unwrap()).collect::<Vec<_>>(), [4, 5]);
        let Replay::Complete(missed) = ring.after(2, 5) else { panic!() };
        assert_eq!(missed.len(), 3);
        assert!(matches!(ring.after(5, 5), Replay::Complete(v) if v.is_empty()));
        assert!(matches!(ring.after(1, 5), Replay::Incomplete { oldest: Some(3) }));
        assert!(matches!(ring.after(9, 5), Replay::Incomplete { .. }));
    }

    #[test]
    fn ring_is_bounded_by_bytes_and_age() {
        let limits = RingLimits { events: 100, bytes: 200, age: Duration::from_secs(10) };
        let mut ring = ReplayRing::new(limits);
        let t0 = Instant::now();
        for seq in 1..=10 {
            ring.push(event(seq, 40), t0);
        }
        assert!(ring.len() < 10);
        ring.evict_expired(t0 + Duration::from_secs(11));
        assert_eq!(ring.len(), 1, "the newest is always kept");
    }

    #[test]
    fn a_full_queue_gets_the_notice_in_its_last_slot_then_is_dropped() {
        let (mut sub, mut stream) = subscriber(1, 3, vec![], None, Format::Sse, Unsubscribe(None));
        let notice =
            || Item::Event(Arc::new(GatewayEvent::notice(None, Notice::SubscriberTooSlow, 0, serde_json::json!({}))));
        assert_eq!(sub.push(Item::Event(event(1, 1)), &notice), Delivery::Sent);
        assert_eq!(sub.push(Item::Event(event(2, 1)), &notice), Delivery::Sent);
        assert_eq!(sub.push(Item::Event(event(3, 1)), &notice), Delivery::Dropped(DropReason::QueueFull));
        drop(sub);
        let got: Vec<Bytes> = futures::executor::block_on(futures::StreamExt::collect::<Vec<_>>(&mut stream))
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(got.len(), 3);
        assert!(String::from_utf8_lossy(&got[2]).contains("SUBSCRIBER_TOO_SLOW"));
    }

    #[test]
    fn a_queue_that_never_drains_is_dropped_after_two_heartbeats() {
        let (mut sub, _stream) = subscriber(1, 8, vec![], None, Format::Sse, Unsubscribe(None));
        let notice = || Item::Heartbeat;
        sub.push(Item::Event(event(1, 1)), &notice);
        assert_eq!(sub.heartbeat(&notice), Delivery::Sent);
        assert_eq!(sub.heartbeat(&notice), Delivery::Dropped(DropReason::Stalled));
    }
}
