//! One gateway computation: its shared state ([`Entry`]) and the pump task (`pump`) that owns
//! its event sequence, replay ring and subscribers.
//!
//! The pump is the only writer of ids, the ring and the subscriber list, so subscribing is
//! ordered with events by construction: a new subscriber's snapshot or replay and its first live
//! event can neither overlap nor leave a gap. It never waits on a subscriber.

use super::HubInner;
use super::spec::{ComputationSpec, SpecKey};
use super::stream::{Framing, Subscription};
use crate::protocol::metadata::MetadataMessage;
use crate::protocol::{Tsid, Value};
use crate::upstream::{ComputationControl, EventReceiver, Terminal};
use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

mod pump;

pub use pump::EPOCH_FACTOR;
pub use pump::retry_prelude;

/// Where a computation is in its life, as the gateway reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    Reconnecting,
    Ended(Terminal),
}

/// What the pump is asked to do.
pub enum PumpCommand {
    Subscribe { last_event_id: Option<u64>, format: Framing, reply: oneshot::Sender<SubscribeOutcome> },
    Unsubscribe(u64),
}

/// The answer to a subscribe.
pub enum SubscribeOutcome {
    Stream(Subscription),
    /// The computation has ended and the subscriber has seen its end: nothing more will come.
    Finished,
    TooManySubscribers,
}

/// A computation's state shared with the HTTP side.
pub struct Entry {
    pub id: String,
    pub spec: ComputationSpec,
    pub key: SpecKey,
    /// Whose computation this is; others never see it.
    pub tenant: String,
    pub created_at_ms: i64,
    pub control: ComputationControl,
    commands: mpsc::Sender<PumpCommand>,
    phase: watch::Sender<Phase>,
    pub subscribers: AtomicUsize,
    /// A stop was asked for (by a client); the end follows when the upstream confirms.
    pub stop_requested: AtomicBool,
    /// Requests that joined this computation instead of starting their own.
    pub shared_by: AtomicU64,
    pub last_seq: AtomicU64,
    /// Nothing evicted from the replay ring yet: a joiner can see everything from the start.
    pub ring_complete: AtomicBool,
    metadata: Mutex<HashMap<Tsid, Arc<MetadataMessage>>>,
    /// Each series' last value and its logical timestamp (bounded as the metadata is).
    latest: Mutex<HashMap<Tsid, (i64, Value)>>,
    /// The newest logical timestamp with data (`None` before the first).
    latest_ms: watch::Sender<Option<i64>>,
    /// The last read of the latest values: it keeps a computation nobody streams from alive
    /// as a subscriber would (until the idle timeout after the last read).
    polled_at: Mutex<Option<Instant>>,
    /// False until a relayed computation has taken in what the cluster already holds (always
    /// true for a computation run here).
    synced: watch::Sender<bool>,
    /// The node id of the replica running the job, for a relayed computation.
    leader: Mutex<Option<Arc<str>>>,
}

/// Where a computation's events come from.
pub enum Source {
    /// The upstream job, run here.
    Upstream(EventReceiver),
    /// Events another replica rendered and published (cluster mode).
    Relay(mpsc::Receiver<RelayInput>),
}

/// What a relay feeds a relayed computation's pump.
pub enum RelayInput {
    Event(RelayedEvent),
    /// A series' metadata from the cluster's snapshot (no id: never a stream event).
    Snapshot(Arc<MetadataMessage>),
    /// Everything the cluster held at attach time has been fed.
    CaughtUp,
    /// This replica no longer relays the computation: the pump ends without a terminal event.
    Detach,
}

/// One event rendered by the replica running the job.
pub struct RelayedEvent {
    /// Global id: epoch × 10¹² + sequence.
    pub id: u64,
    pub name: &'static str,
    pub json: bytes::Bytes,
    pub tag: RelayTag,
    pub leader: Option<Arc<str>>,
}

/// What a relayed event means to the pump (its JSON is never parsed for this).
pub enum RelayTag {
    Other,
    JobStarted(String),
    Metadata(Arc<MetadataMessage>),
    Expired(Tsid),
    /// A data batch, decoded again from the rendered JSON (and the block sizes the leader
    /// sent beside it), so the latest values, whole results and the SignalFlow flavour's
    /// per-block split work on every replica as on the leader.
    Data(crate::upstream::Batch),
    Disconnected,
    Resumed,
    End(crate::upstream::Terminal),
}

impl Phase {
    /// The phase's name (`starting`, `running`, `reconnecting`, `ended`).
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Reconnecting => "reconnecting",
            Phase::Ended(_) => "ended",
        }
    }
}

impl Entry {
    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    pub fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// Short critical section, no await.
    fn metadata(&self) -> MutexGuard<'_, HashMap<Tsid, Arc<MetadataMessage>>> {
        self.metadata.lock()
    }

    /// Every known series' metadata, ordered by TSID. The lock is held only to copy the
    /// pointers out: rendering (perhaps 100k series) happens after, and the pump never waits
    /// for a reader.
    pub fn metadata_snapshot(&self) -> Vec<Arc<MetadataMessage>> {
        let mut all: Vec<Arc<MetadataMessage>> = self.metadata().values().cloned().collect();
        all.sort_unstable_by_key(|m| m.tsid);
        all
    }

    /// One series' metadata.
    pub fn series_metadata(&self, tsid: Tsid) -> Option<Arc<MetadataMessage>> {
        self.metadata().get(&tsid).cloned()
    }

    /// Every series' last value and logical timestamp, by series id.
    pub fn latest_values(&self) -> Vec<(Tsid, i64, Value)> {
        let mut all: Vec<(Tsid, i64, Value)> = self.latest.lock().iter().map(|(k, (t, v))| (*k, *t, *v)).collect();
        all.sort_unstable_by_key(|(tsid, _, _)| *tsid);
        all
    }

    /// Watches the newest logical timestamp with data.
    pub fn watch_latest(&self) -> watch::Receiver<Option<i64>> {
        self.latest_ms.subscribe()
    }

    /// Records a read of the latest values: the idle timeout counts from the last one.
    pub fn touch(&self) {
        *self.polled_at.lock() = Some(Instant::now());
    }

    fn polled_at(&self) -> Option<Instant> {
        *self.polled_at.lock()
    }

    /// Asks the pump for a subscription.
    pub async fn subscribe(&self, last_event_id: Option<u64>, format: impl Into<Framing>) -> Option<SubscribeOutcome> {
        let format = format.into();
        let (reply, answer) = oneshot::channel();
        self.commands.send(PumpCommand::Subscribe { last_event_id, format, reply }).await.ok()?;
        answer.await.ok()
    }

    pub fn is_ended(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Ended(_))
    }

    /// Waits (at most `limit`) until a relayed computation has taken in what the cluster
    /// holds; true if it has.
    pub async fn wait_synced(&self, limit: std::time::Duration) -> bool {
        let mut synced = self.synced.subscribe();
        matches!(tokio::time::timeout(limit, synced.wait_for(|s| *s)).await, Ok(Ok(_)))
    }

    /// The node id of the replica running the job, when another replica may run it.
    pub fn leader(&self) -> Option<Arc<str>> {
        self.leader.lock().clone()
    }
}

/// What a new computation starts from.
pub struct NewComputation {
    pub id: String,
    pub spec: ComputationSpec,
    pub key: SpecKey,
    pub tenant: String,
    pub control: ComputationControl,
    pub events: Source,
    pub now_ms: i64,
}

/// Creates the entry and spawns its pump on the hub's tracker.
pub fn start(hub: &Arc<HubInner>, new: NewComputation) -> Arc<Entry> {
    let NewComputation { id, spec, key, tenant, control, events, now_ms } = new;
    let settings = &hub.settings;
    let (commands_tx, commands) =
        mpsc::channel(settings.limits.max_subscribers_per_computation.saturating_mul(2).clamp(16, 65_536));
    let entry = Arc::new(Entry {
        id,
        spec,
        key,
        tenant,
        created_at_ms: now_ms,
        control,
        commands: commands_tx,
        phase: watch::Sender::new(Phase::Starting),
        subscribers: AtomicUsize::new(0),
        stop_requested: AtomicBool::new(false),
        shared_by: AtomicU64::new(0),
        last_seq: AtomicU64::new(0),
        ring_complete: AtomicBool::new(true),
        metadata: Mutex::new(HashMap::new()),
        latest: Mutex::new(HashMap::new()),
        latest_ms: watch::Sender::new(None),
        polled_at: Mutex::new(None),
        synced: watch::Sender::new(matches!(events, Source::Upstream(_))),
        leader: Mutex::new(None),
    });
    let pump = pump::Pump::new(entry.clone(), hub.clone());
    hub.tracker.spawn(pump.run(events, commands));
    entry
}
