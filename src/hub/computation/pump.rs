//! The pump: the one task per computation that owns its event sequence, replay ring and
//! subscribers. It turns upstream events into gateway events (rendered once), answers subscribes
//! and unsubscribes in order with them, stops the job when nobody listens, and never waits on a
//! subscriber.

use super::{Entry, Phase, PumpCommand, RelayInput, RelayTag, RelayedEvent, Source, SubscribeOutcome};
use crate::hub::render::{self, EventKind, GatewayEvent, Notice, Relayed};
use crate::hub::stream::{
    self, Delivery, DropReason, Framing, Item, Replay, ReplayRing, RingLimits, Subscriber, Subscription, Unsubscribe,
};
use crate::hub::{HubInner, HubStats};
use crate::protocol::Tsid;
use crate::protocol::metadata::MetadataMessage;
use crate::upstream::{Terminal, UpstreamEvent};
use bytes::Bytes;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub(super) struct Pump {
    entry: Arc<Entry>,
    hub: Arc<HubInner>,
    ring: ReplayRing,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
    /// Reused render buffer.
    buf: Vec<u8>,
    had_subscribers: bool,
    empty_since: Option<Instant>,
    ended_at: Option<Instant>,
    stop_sent: bool,
    /// Each known series' metadata as an id-less event, rendered once when it arrives and
    /// shared by every snapshot.
    snapshot: BTreeMap<Tsid, Arc<GatewayEvent>>,
}

/// A global event id is its epoch × this plus its sequence number within the epoch.
pub const EPOCH_FACTOR: u64 = 1_000_000_000_000;

enum Input {
    Upstream(UpstreamEvent),
    Relay(RelayInput),
}

/// The next input, whatever the source (cancel-safe: both receivers are).
async fn next_input(source: &mut Source) -> Option<Input> {
    match source {
        Source::Upstream(events) => events.recv().await.map(Input::Upstream),
        Source::Relay(inputs) => inputs.recv().await.map(Input::Relay),
    }
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

impl Pump {
    pub(super) fn new(entry: Arc<Entry>, hub: Arc<HubInner>) -> Self {
        let settings = &hub.settings;
        let limits = RingLimits {
            events: settings.limits.replay_events,
            bytes: settings.limits.replay_bytes,
            age: settings.limits.replay_age,
        };
        Pump {
            entry,
            hub,
            ring: ReplayRing::new(limits),
            subscribers: Vec::new(),
            next_subscriber: 1,
            buf: Vec::with_capacity(64 * 1024),
            had_subscribers: false,
            empty_since: Some(Instant::now()),
            ended_at: None,
            stop_sent: false,
            snapshot: BTreeMap::new(),
        }
    }

    pub(super) async fn run(mut self, mut source: Source, mut commands: mpsc::Receiver<PumpCommand>) {
        let settings = self.hub.settings.clone();
        let mut heartbeat = tokio::time::interval(settings.stream.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let shutdown = self.hub.shutdown.clone();
        let mut upstream_open = true;
        loop {
            let deadline = self.deadline();
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if self.ended_at.is_none() => self.shut_down().await,
                Some(command) = commands.recv() => self.command(command),
                input = next_input(&mut source), if upstream_open => match input {
                    Some(Input::Upstream(event)) => self.upstream(event),
                    Some(Input::Relay(RelayInput::Detach)) | None => {
                        upstream_open = false;
                        if matches!(source, Source::Relay(_)) && self.ended_at.is_none() {
                            // A relay ends without an event: the computation goes on elsewhere.
                            self.subscribers.clear();
                            self.set_subscriber_count();
                            break;
                        }
                    }
                    Some(Input::Relay(input)) => self.relay(input),
                },
                _ = heartbeat.tick() => self.heartbeat(),
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if self.ended_at.is_some() {
                        break;
                    }
                    // A read of the latest values since the sleep began moves the deadline.
                    if self.deadline() <= Instant::now() {
                        self.idle_stop().await;
                    }
                }
            }
            if shutdown.is_cancelled() && self.ended_at.is_some() {
                break;
            }
        }
        self.hub.remove(&self.entry);
    }

    /// An event or snapshot relayed from the replica that runs the job.
    fn relay(&mut self, input: RelayInput) {
        let event = match input {
            RelayInput::Event(event) => event,
            RelayInput::Snapshot(m) => {
                self.remember_metadata(&m);
                return;
            }
            RelayInput::CaughtUp => {
                if self.entry.last_seq.load(Ordering::Relaxed) > 0 {
                    self.set_phase(Phase::Running);
                }
                self.entry.synced.send_replace(true);
                return;
            }
            RelayInput::Detach => return,
        };
        let RelayedEvent { id, name, json, tag, leader } = event;
        let last = self.entry.last_seq.load(Ordering::Relaxed);
        if id <= last {
            return; // Already relayed (the leader's own replica gets each event twice).
        }
        if let Some(leader) = leader {
            let mut current = self.entry.leader.lock();
            if current.as_deref() != Some(&*leader) {
                *current = Some(leader);
            }
        }
        if last == 0 && id % EPOCH_FACTOR != 1 {
            // Joined after the cluster trimmed the stream's start.
            self.ring.mark_incomplete();
        } else if last != 0 && id / EPOCH_FACTOR == last / EPOCH_FACTOR && id != last + 1 {
            // Events of this epoch never reached this replica (the stream was trimmed past them,
            // or the leader could not publish them): said, never skipped silently.
            let extra = json!({
                "reason": "events were lost between replicas",
                "fromId": last + 1,
                "toId": id - 1,
            });
            self.hub.stats.replay_misses.fetch_add(1, Ordering::Relaxed);
            self.publish(GatewayEvent::notice(None, Notice::ReplayIncomplete, now_ms(), extra));
        }
        let mut terminal = None;
        let kind = match tag {
            RelayTag::Metadata(m) => {
                self.remember_metadata(&m);
                self.set_phase_if_starting();
                EventKind::Upstream(UpstreamEvent::Metadata(m))
            }
            RelayTag::Data(batch) => {
                self.set_phase_if_starting();
                self.keep_latest(&batch);
                EventKind::Upstream(UpstreamEvent::Data(batch))
            }
            tag => {
                match &tag {
                    RelayTag::JobStarted(_) | RelayTag::Resumed => self.set_phase(Phase::Running),
                    RelayTag::Disconnected => self.set_phase(Phase::Reconnecting),
                    RelayTag::Expired(tsid) => {
                        self.entry.metadata().remove(tsid);
                        self.snapshot.remove(tsid);
                    }
                    RelayTag::End(t) => terminal = Some(t.clone()),
                    RelayTag::Other | RelayTag::Metadata(_) | RelayTag::Data(_) => {}
                }
                EventKind::Relayed(Relayed { name, terminal: terminal.clone() })
            }
        };
        self.entry.last_seq.store(id, Ordering::Relaxed);
        self.publish(GatewayEvent::new(Some(id), kind, &json));
        if let Some(terminal) = terminal {
            self.end(terminal);
        }
    }

    fn set_phase_if_starting(&self) {
        if self.entry.phase() == Phase::Starting {
            self.set_phase(Phase::Running);
        }
    }

    /// A relayed series' metadata, for the snapshot and the metadata endpoints.
    fn remember_metadata(&mut self, m: &Arc<MetadataMessage>) {
        let mut cache = self.entry.metadata();
        if cache.len() < self.hub.settings.limits.max_series_per_computation || cache.contains_key(&m.tsid) {
            cache.insert(m.tsid, m.clone());
            render::render(&UpstreamEvent::Metadata(m.clone()), 0, &mut self.buf);
            let snapshot = GatewayEvent::new(None, EventKind::Upstream(UpstreamEvent::Metadata(m.clone())), &self.buf);
            self.snapshot.insert(m.tsid, Arc::new(snapshot));
        }
    }

    /// When something must happen without an event: the linger or idle stop while nobody
    /// listens, or the end of retention once ended.
    fn deadline(&self) -> Instant {
        let settings = &self.hub.settings;
        if let Some(ended) = self.ended_at {
            return ended + settings.stream.ended_retention;
        }
        match (self.empty_since, self.stop_sent) {
            (Some(since), false) => {
                let wait = if self.had_subscribers { settings.stream.linger } else { settings.stream.idle_timeout };
                // A read of the latest values holds it like a subscriber, for the idle timeout.
                match self.entry.polled_at() {
                    Some(polled) if polled + settings.stream.idle_timeout > since + wait => {
                        polled + settings.stream.idle_timeout
                    }
                    _ => since + wait,
                }
            }
            _ => Instant::now() + Duration::from_secs(86_400),
        }
    }

    async fn idle_stop(&mut self) {
        self.stop_sent = true;
        let reason =
            if self.had_subscribers { "no subscribers left" } else { "no subscriber came before the idle timeout" };
        tracing::info!(computation = %self.entry.id, reason, "stopping computation");
        self.entry.control.stop(reason).await;
    }

    async fn shut_down(&mut self) {
        let seq = self.next_seq();
        self.publish(GatewayEvent::notice(Some(seq), Notice::ShuttingDown, now_ms(), json!({})));
        // Subscribers' queues close: their responses end once drained.
        self.subscribers.clear();
        self.set_subscriber_count();
        if !self.stop_sent {
            self.stop_sent = true;
            self.entry.control.stop("the gateway is shutting down").await;
        }
        self.ended_at = Some(Instant::now());
    }

    fn next_seq(&self) -> u64 {
        self.entry.last_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn set_subscriber_count(&mut self) {
        let before = self.entry.subscribers.swap(self.subscribers.len(), Ordering::Relaxed);
        let now = self.subscribers.len();
        if now > before {
            self.hub.total_subscribers.fetch_add(now - before, Ordering::Relaxed);
        } else {
            self.hub.total_subscribers.fetch_sub(before - now, Ordering::Relaxed);
        }
        if now == 0 {
            self.empty_since.get_or_insert_with(Instant::now);
        } else {
            self.empty_since = None;
            self.had_subscribers = true;
        }
    }

    fn upstream(&mut self, event: UpstreamEvent) {
        let started = Instant::now();
        // Rendered once: a new series' metadata bytes serve its sequenced event and, copied
        // without a second render, its snapshot entry.
        render::render(&event, now_ms(), &mut self.buf);
        match &event {
            UpstreamEvent::JobStarted { .. } => self.set_phase(Phase::Running),
            UpstreamEvent::Disconnected { .. } => self.set_phase(Phase::Reconnecting),
            UpstreamEvent::Resumed { .. } => self.set_phase(Phase::Running),
            UpstreamEvent::Metadata(m) => {
                let mut cache = self.entry.metadata();
                if cache.len() < self.hub.settings.limits.max_series_per_computation {
                    cache.insert(m.tsid, m.clone());
                    let snapshot = GatewayEvent::new(None, EventKind::Upstream(event.clone()), &self.buf);
                    self.snapshot.insert(m.tsid, Arc::new(snapshot));
                }
            }
            UpstreamEvent::Expired(tsid) => {
                self.entry.metadata().remove(tsid);
                self.entry.latest.lock().remove(tsid);
                self.snapshot.remove(tsid);
            }
            UpstreamEvent::Data(batch) => self.keep_latest(batch),
            _ => {}
        }
        let seq = self.next_seq();
        let terminal = match &event {
            UpstreamEvent::Ended(terminal) => Some(terminal.clone()),
            _ => None,
        };
        self.publish(GatewayEvent::new(Some(seq), EventKind::Upstream(event), &self.buf));
        if let Some(terminal) = terminal {
            self.end(terminal);
        }
        self.hub.stats.record_latency(started.elapsed());
    }

    /// Keeps each series' last value (for `/latest`), bounded by the series limit.
    fn keep_latest(&self, batch: &crate::upstream::Batch) {
        let t = batch.logical_timestamp_ms;
        {
            let max = self.hub.settings.limits.max_series_per_computation;
            let mut latest = self.entry.latest.lock();
            for p in &batch.points {
                if latest.len() < max || latest.contains_key(&p.tsid) {
                    latest.insert(p.tsid, (t, p.value));
                }
            }
        }
        self.entry.latest_ms.send_if_modified(|newest| {
            let newer = newest.is_none_or(|n| t > n);
            if newer {
                *newest = Some(t);
            }
            newer
        });
    }

    fn set_phase(&self, phase: Phase) {
        if !self.entry.is_ended() {
            self.entry.phase.send_replace(phase);
        }
    }

    fn end(&mut self, terminal: Terminal) {
        tracing::info!(computation = %self.entry.id, ?terminal, "computation ended");
        self.entry.phase.send_replace(Phase::Ended(terminal));
        self.hub.forget_key(&self.entry);
        self.subscribers.clear();
        self.set_subscriber_count();
        self.ended_at = Some(Instant::now());
    }

    /// Appends to the ring and hands the event to every subscriber.
    fn publish(&mut self, event: GatewayEvent) {
        let event = Arc::new(event);
        self.ring.push(event.clone(), Instant::now());
        self.entry.ring_complete.store(self.ring.is_complete(), Ordering::Relaxed);
        self.hub.stats.events_sent.fetch_add(self.subscribers.len() as u64, Ordering::Relaxed);
        let too_slow = self.too_slow_notice();
        let hub_stats = &self.hub.stats;
        let id = &self.entry.id;
        let before = self.subscribers.len();
        self.subscribers.retain_mut(|s| match s.push(Item::Event(event.clone()), &too_slow) {
            Delivery::Sent => true,
            Delivery::Closed => false,
            Delivery::Dropped(reason) => {
                hub_stats.count_drop(reason);
                tracing::info!(computation = %id, subscriber = s.id, ?reason, "disconnected a slow subscriber");
                false
            }
        });
        if self.subscribers.len() != before {
            self.set_subscriber_count();
        }
    }

    /// The notice for a subscriber being dropped. Rendered only when one is: building it for
    /// every published event would put a JSON render and an allocation on the hot path.
    fn too_slow_notice(&self) -> impl Fn() -> Item + use<> {
        || Item::Event(Arc::new(GatewayEvent::notice(None, Notice::SubscriberTooSlow, now_ms(), json!({}))))
    }

    fn heartbeat(&mut self) {
        self.ring.evict_expired(Instant::now());
        self.entry.ring_complete.store(self.ring.is_complete(), Ordering::Relaxed);
        let too_slow = self.too_slow_notice();
        let stats = &self.hub.stats;
        let before = self.subscribers.len();
        self.subscribers.retain_mut(|s| match s.heartbeat(&too_slow) {
            Delivery::Sent => true,
            Delivery::Closed => false,
            Delivery::Dropped(reason) => {
                stats.count_drop(reason);
                false
            }
        });
        if self.subscribers.len() != before {
            self.set_subscriber_count();
        }
    }

    fn command(&mut self, command: PumpCommand) {
        match command {
            PumpCommand::Unsubscribe(id) => {
                self.subscribers.retain(|s| s.id != id);
                self.set_subscriber_count();
            }
            PumpCommand::Subscribe { last_event_id, format, reply } => {
                let outcome = self.subscribe(last_event_id, format);
                let _ = reply.send(outcome);
            }
        }
    }

    /// A new subscriber: without an id, a computation that asked for history (a `start`) is
    /// replayed whole while the ring still holds it from the start; otherwise the subscriber
    /// gets the metadata snapshot and then live events. With an id: the metadata snapshot and
    /// exactly the events it missed (or `REPLAY_INCOMPLETE` and the current state). The
    /// SignalFlow flavour is replayed whole whenever the ring allows: its clients take the
    /// handle from `JOB_START` and count a timestamp's data messages up to the first
    /// information message, so they need the stream as it began.
    fn subscribe(&mut self, last_event_id: Option<u64>, format: Framing) -> SubscribeOutcome {
        let latest = self.entry.last_seq.load(Ordering::Relaxed);
        let settings = &self.hub.settings;
        let ended = self.ended_at.is_some();
        if !ended
            && (self.subscribers.len() >= settings.limits.max_subscribers_per_computation
                || self.hub.total_subscribers.load(Ordering::Relaxed) >= settings.limits.max_subscribers_total)
        {
            return SubscribeOutcome::TooManySubscribers;
        }
        let mut initial: Vec<Arc<GatewayEvent>> = Vec::new();
        match last_event_id {
            None if self.ring.is_complete()
                && (self.entry.spec.start.is_some() || ended || format == Framing::SignalFlow) =>
            {
                initial.extend(self.ring.all().cloned())
            }
            None => initial.extend(self.snapshot()),
            Some(seen) => {
                if ended && seen >= latest {
                    return SubscribeOutcome::Finished;
                }
                initial.extend(self.snapshot());
                match self.ring.after(seen, latest) {
                    Replay::Complete(missed) => initial.extend(missed.into_iter().cloned()),
                    Replay::Incomplete { oldest } => {
                        self.hub.stats.replay_misses.fetch_add(1, Ordering::Relaxed);
                        initial.push(Arc::new(self.replay_incomplete(oldest)));
                    }
                }
            }
        }
        if last_event_id.is_some() {
            self.hub.stats.replays.fetch_add(1, Ordering::Relaxed);
        }
        if ended && !initial.iter().any(|e| e.is_terminal()) {
            initial.extend(self.ring.all().rev().find(|e| e.is_terminal()).cloned());
        }
        let prelude = (format == Framing::Sse).then(|| retry_prelude(settings.stream.heartbeat));
        if ended {
            return SubscribeOutcome::Stream(Subscription::finished(initial, prelude, format));
        }
        let id = self.next_subscriber;
        self.next_subscriber += 1;
        let commands = self.entry.commands.clone();
        let unsubscribe = Unsubscribe(Some(Box::new(move || {
            // The pump also notices a closed queue at its next send; this is only quicker.
            let _ = commands.try_send(PumpCommand::Unsubscribe(id));
        })));
        let (subscriber, subscription) =
            stream::subscriber(id, settings.limits.subscriber_queue, initial, prelude, format, unsubscribe);
        self.subscribers.push(subscriber);
        self.set_subscriber_count();
        SubscribeOutcome::Stream(subscription)
    }

    /// Metadata of every series currently known, without ids.
    fn snapshot(&self) -> Vec<Arc<GatewayEvent>> {
        self.snapshot.values().cloned().collect()
    }

    fn replay_incomplete(&self, oldest: Option<u64>) -> GatewayEvent {
        let state = self.entry.control.state();
        let status = self.entry.phase().name().to_ascii_uppercase();
        let extra = json!({
            "oldestId": oldest,
            "status": status,
            "handle": state.handle,
            "resolutionMs": state.resolution_ms,
            "lastLogicalTimestampMs": state.last_complete_ms,
        });
        GatewayEvent::notice(None, Notice::ReplayIncomplete, now_ms(), extra)
    }
}

/// `retry:` with jitter, so browsers do not reconnect in lockstep after a restart.
pub fn retry_prelude(heartbeat: Duration) -> Bytes {
    let base = heartbeat.as_millis().clamp(1000, 5000) as u64;
    let retry = base / 2 + fastrand::u64(0..=base / 2);
    Bytes::from(format!("retry: {retry}\n\n"))
}

impl HubStats {
    fn count_drop(&self, reason: DropReason) {
        match reason {
            DropReason::QueueFull => self.dropped_slow.fetch_add(1, Ordering::Relaxed),
            DropReason::Stalled => self.dropped_stalled.fetch_add(1, Ordering::Relaxed),
        };
    }
}
