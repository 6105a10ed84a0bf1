//! One upstream computation as its consumer sees it: a typed event stream over a bounded queue,
//! state readable at any time, and stop/detach.
//!
//! The connection actor is the only producer. It never waits on the consumer: events go out with
//! `try_send`, and a full queue ends this computation alone with
//! [`Terminal::Failed`]`(`[`CONSUMER_OVERFLOW`]`)`. The terminal also travels on a `watch`
//! channel, so the consumer learns of the end even when its queue had no room for `Ended`.

use super::connection::SlotCommand;
use crate::protocol::info::InfoMessage;
use crate::protocol::metadata::{EventMessage, MetadataMessage};
use crate::protocol::{DataPoint, Tsid};
use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// The reason given when a consumer's queue overflowed.
pub const CONSUMER_OVERFLOW: &str = "the consumer did not keep up with the computation's events";

/// What to execute; the same spec is re-executed after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ExecuteSpec {
    pub program: String,
    /// Epoch ms; `None` = now.
    pub start: Option<i64>,
    /// Epoch ms; `None` = until stopped.
    pub stop: Option<i64>,
    pub resolution_ms: Option<i64>,
    pub max_delay_ms: Option<i64>,
    pub immediate: bool,
    pub timezone: Option<String>,
}

/// All data of one logical timestamp: every publish block merged (protocol doc G21).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    pub logical_timestamp_ms: i64,
    pub max_delay_ms: Option<i64>,
    pub points: Vec<DataPoint>,
    /// Points per data message merged, in order (empty blocks included): `points` split at these
    /// sizes gives back the service's one-message-per-block stream, which the SignalFlow
    /// REST/SSE clients count to find a timestamp's end (protocol doc §3.10).
    pub block_sizes: Vec<u32>,
}

/// A program error or another error the service reported for the computation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ComputationError {
    pub code: Option<i64>,
    pub error_type: Option<String>,
    pub message: Option<String>,
    pub line: Option<i64>,
    pub column: Option<i64>,
}

/// How a computation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Terminal {
    /// `END_OF_CHANNEL`: the job reached its stop time.
    EndOfChannel,
    /// `CHANNEL_ABORT` (or a stop the gateway completed locally when the socket was gone).
    Aborted { state: String, reason: String },
    /// An `error` message.
    Error(ComputationError),
    /// The gateway gave up on it (consumer overflow, shutdown, pool closed).
    Failed(String),
}

/// One event for the consumer, in the order the service sent it (batches merged).
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamEvent {
    /// `JOB_START`: the job's handle (again after each re-execute).
    JobStarted {
        handle: String,
    },
    Progress {
        percent: i64,
    },
    /// A series' metadata; never repeated for a series the consumer already has.
    Metadata(Arc<MetadataMessage>),
    Data(Batch),
    /// An information message; typed view with [`InfoMessage::kind`].
    Info(Arc<InfoMessage>),
    Event(Arc<EventMessage>),
    /// The series left the computation.
    Expired(Tsid),
    /// The socket carrying the job was lost; it will be re-executed.
    Disconnected {
        reason: String,
    },
    /// The job was re-executed; `gap_ms` of logical time were not delivered (0: none missing).
    Resumed {
        gap_ms: i64,
        outage_ms: i64,
    },
    /// The service sent data stamped at or after the job's `stop` (it ignored it): that data
    /// was not forwarded, and the computation ends here with `END_OF_CHANNEL`.
    StopEnforced {
        stop_ms: i64,
        logical_timestamp_ms: i64,
    },
    /// The last event.
    Ended(Terminal),
}

/// Lifecycle of a computation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Status {
    #[default]
    Starting,
    Running,
    Reconnecting,
    Ended(Terminal),
}

/// State readable at any time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ComputationState {
    pub handle: Option<String>,
    pub resolution_ms: Option<i64>,
    pub max_delay_ms: Option<i64>,
    pub lag_ms: Option<i64>,
    /// Series with metadata and not expired.
    pub series_count: usize,
    /// The last logical timestamp delivered whole.
    pub last_complete_ms: Option<i64>,
    /// `FIND_LIMITED_RESULT_SET`: (matched, limit).
    pub limited_result_set: Option<(i64, i64)>,
    pub reconnects: u32,
    pub status: Status,
}

/// What the actor and the consumer share.
#[derive(Debug)]
pub(crate) struct ComputationShared {
    pub id: u64,
    pub spec: ExecuteSpec,
    state: Mutex<ComputationState>,
    events: mpsc::Sender<UpstreamEvent>,
    terminal: watch::Sender<Option<Terminal>>,
}

/// Why an event could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmitError {
    Overflow,
    ConsumerGone,
}

impl ComputationShared {
    pub fn new(id: u64, spec: ExecuteSpec, queue: usize) -> (Arc<Self>, EventReceiver) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let (terminal, terminal_rx) = watch::channel(None);
        let shared =
            ComputationShared { id, spec, state: Mutex::new(ComputationState::default()), events: tx, terminal };
        (Arc::new(shared), EventReceiver { events: rx, terminal: terminal_rx, ended: false })
    }

    /// Short critical sections only, never across an `.await`.
    pub fn state(&self) -> MutexGuard<'_, ComputationState> {
        self.state.lock()
    }

    pub fn emit(&self, event: UpstreamEvent) -> Result<(), EmitError> {
        self.events.try_send(event).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EmitError::Overflow,
            mpsc::error::TrySendError::Closed(_) => EmitError::ConsumerGone,
        })
    }

    /// Records the end and tells the consumer: in its queue if there is room, and in any case
    /// through the terminal watch (every event emitted before this precedes it).
    pub fn finish(&self, terminal: Terminal) {
        self.state().status = Status::Ended(terminal.clone());
        self.terminal.send_replace(Some(terminal.clone()));
        let _ = self.events.try_send(UpstreamEvent::Ended(terminal));
    }

    pub fn is_ended(&self) -> bool {
        matches!(self.state().status, Status::Ended(_))
    }
}

/// Stop and detach, usable from anywhere (cheap to clone).
#[derive(Debug, Clone)]
pub struct ComputationControl {
    shared: Arc<ComputationShared>,
    slot: mpsc::Sender<SlotCommand>,
}

impl ComputationControl {
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    pub fn state(&self) -> ComputationState {
        self.shared.state().clone()
    }

    pub fn spec(&self) -> &ExecuteSpec {
        &self.shared.spec
    }

    /// Stops the job with a reason. If its handle has not come yet, the stop is sent when it
    /// does (bounded by the pool's stop wait); the consumer then sees
    /// `Ended(Aborted { state: "STOPPED", reason })`.
    pub async fn stop(&self, reason: &str) {
        let command = SlotCommand::Stop { id: self.shared.id, reason: reason.to_owned() };
        if self.slot.send(command).await.is_err() && !self.shared.is_ended() {
            // The connection task is gone: nothing runs upstream any more.
            self.shared.finish(Terminal::Aborted { state: "STOPPED".into(), reason: reason.to_owned() });
        }
    }

    /// Stops streaming the job to this gateway without stopping it upstream.
    pub async fn detach(&self) {
        if self.slot.send(SlotCommand::Detach { id: self.shared.id }).await.is_err() && !self.shared.is_ended() {
            self.shared.finish(Terminal::Failed("detached".into()));
        }
    }
}

/// The receiving end of a computation's events: the queue, then `Ended` exactly once.
#[derive(Debug)]
pub struct EventReceiver {
    events: mpsc::Receiver<UpstreamEvent>,
    terminal: watch::Receiver<Option<Terminal>>,
    ended: bool,
}

impl EventReceiver {
    /// The next event; `Ended` is always the last one, even if the queue had no room for it;
    /// `None` after it. Cancel-safe.
    pub async fn recv(&mut self) -> Option<UpstreamEvent> {
        loop {
            if self.ended {
                return None;
            }
            match self.events.try_recv() {
                Ok(event) => return Some(self.note(event)),
                Err(mpsc::error::TryRecvError::Empty | mpsc::error::TryRecvError::Disconnected) => {}
            }
            // The queue is drained: every event emitted before the end has been taken.
            if let Some(terminal) = self.terminal.borrow_and_update().clone() {
                self.ended = true;
                return Some(UpstreamEvent::Ended(terminal));
            }
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => return Some(self.note(event)),
                    None => {
                        self.ended = true;
                        let terminal = self.terminal.borrow().clone();
                        return terminal.map(UpstreamEvent::Ended);
                    }
                },
                changed = self.terminal.changed() => {
                    if changed.is_err() {
                        self.ended = true;
                        return None;
                    }
                }
            }
        }
    }

    /// The next event if one is ready, without waiting (same order and end as [`Self::recv`]).
    pub(crate) fn try_next(&mut self) -> Option<UpstreamEvent> {
        if self.ended {
            return None;
        }
        if let Ok(event) = self.events.try_recv() {
            return Some(self.note(event));
        }
        let terminal = self.terminal.borrow_and_update().clone()?;
        self.ended = true;
        Some(UpstreamEvent::Ended(terminal))
    }

    fn note(&mut self, event: UpstreamEvent) -> UpstreamEvent {
        if matches!(event, UpstreamEvent::Ended(_)) {
            self.ended = true;
        }
        event
    }
}

/// The consumer's end: events, state, control.
#[derive(Debug)]
pub struct Computation {
    control: ComputationControl,
    events: EventReceiver,
}

impl Computation {
    pub(crate) fn new(shared: Arc<ComputationShared>, events: EventReceiver, slot: mpsc::Sender<SlotCommand>) -> Self {
        Computation { control: ComputationControl { shared, slot }, events }
    }

    /// The next event; `Ended` is the last one, then `None`.
    pub async fn recv(&mut self) -> Option<UpstreamEvent> {
        self.events.recv().await
    }

    pub fn control(&self) -> ComputationControl {
        self.control.clone()
    }

    pub fn state(&self) -> ComputationState {
        self.control.state()
    }

    /// Splits into the event receiver and the control.
    pub fn into_parts(self) -> (EventReceiver, ComputationControl) {
        (self.events, self.control)
    }
}

/// A computation whose job runs elsewhere (on a cluster peer): the control's stops and
/// detaches come here instead of going to a socket.
#[derive(Debug)]
pub struct RemoteComputation {
    slot: mpsc::Receiver<SlotCommand>,
}

/// What the control of a remote computation was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteRequest {
    Stop(String),
    Detach,
}

impl RemoteComputation {
    /// A control and its remote end.
    pub fn new(spec: ExecuteSpec) -> (ComputationControl, RemoteComputation) {
        let (shared, _events) = ComputationShared::new(0, spec, 1);
        let (tx, rx) = mpsc::channel(4);
        (ComputationControl { shared, slot: tx }, RemoteComputation { slot: rx })
    }

    /// The next stop or detach asked of the control; `None` once every control is gone.
    pub async fn request(&mut self) -> Option<RemoteRequest> {
        match self.slot.recv().await? {
            SlotCommand::Stop { reason, .. } => Some(RemoteRequest::Stop(reason)),
            SlotCommand::Detach { .. } => Some(RemoteRequest::Detach),
            SlotCommand::Execute(_) => Some(RemoteRequest::Detach),
        }
    }
}
