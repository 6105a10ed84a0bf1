//! One computation as its connection sees it: the channel it currently runs on, batch merging,
//! the series the consumer already has, and what a reconnect must not repeat.
//!
//! Resume invariants: `resume_floor` is the last logical timestamp delivered before the socket
//! was lost; after re-executing from just past it, any batch at or below it is dropped, so the
//! consumer never sees a timestamp twice. Metadata for a series the consumer already has is
//! not repeated.

use super::computation::{
    Batch, CONSUMER_OVERFLOW, ComputationError, ComputationShared, EmitError, Status, Terminal, UpstreamEvent,
};
use super::merge::BatchMerger;
use crate::protocol::control::ControlEvent;
use crate::protocol::error_message::ErrorMessage;
use crate::protocol::info::InfoKind;
use crate::protocol::messages::ServerMessage;
use crate::protocol::requests::ExecuteRequest;
use crate::protocol::{ChannelName, Tsid};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

/// Most series whose metadata a computation remembers for de-duplication; past it, metadata is
/// forwarded as it comes (bounded memory beats perfect de-duplication).
pub const MAX_KNOWN_SERIES: usize = 1_000_000;

/// Why the service refused to start a job in a way that is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// 429: the job-start rate limit.
    RateLimited,
    /// "Too many channels" on this socket.
    ChannelLimit,
}

/// What the connection must do after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// Send `stop` for this handle now (a stop was waiting for the handle).
    SendStop {
        handle: String,
        reason: String,
    },
    /// The computation ended; forget it. If `stop` is set, stop the job upstream first.
    Finished {
        stop: Option<(Option<String>, String)>,
    },
    /// The start was refused; try again later.
    Retry(RetryKind),
}

/// A stop that waits for the job's handle.
#[derive(Debug, Clone)]
pub struct PendingStop {
    pub reason: String,
    pub deadline: Instant,
}

pub struct Record {
    pub shared: Arc<ComputationShared>,
    /// The channel of the current execution; `None` while not running on this socket.
    pub channel: Option<ChannelName>,
    pub handle: Option<String>,
    merger: BatchMerger,
    known: HashSet<Tsid>,
    resume_floor: Option<i64>,
    last_delivered: Option<i64>,
    pub stop: Option<PendingStop>,
    /// Consecutive refused starts (for the retry backoff).
    pub refusals: u32,
    outage_started: Option<Instant>,
    resumed_pending: bool,
    batches: Vec<Batch>,
    /// The gateway ended this computation at its stop time (see [`Record::enforce_stop`]).
    pub stop_enforced: bool,
}

impl Record {
    pub fn new(shared: Arc<ComputationShared>) -> Self {
        Record {
            shared,
            channel: None,
            handle: None,
            merger: BatchMerger::default(),
            known: HashSet::new(),
            resume_floor: None,
            last_delivered: None,
            stop: None,
            refusals: 0,
            outage_started: None,
            resumed_pending: false,
            batches: Vec::new(),
            stop_enforced: false,
        }
    }

    /// The execute request for (re)starting on `channel`: the original spec, resumed just past
    /// the last timestamp delivered.
    pub fn execute_request(&mut self, channel: ChannelName, compress: bool) -> ExecuteRequest {
        self.channel = Some(channel);
        self.handle = None;
        self.merger = BatchMerger::default();
        let spec = &self.shared.spec;
        let start = match self.last_delivered {
            Some(last) => Some(last + 1),
            None => spec.start,
        };
        ExecuteRequest {
            channel: channel.as_str().to_owned(),
            program: spec.program.clone(),
            start,
            stop: spec.stop,
            resolution: spec.resolution_ms,
            max_delay: spec.max_delay_ms,
            immediate: spec.immediate.then_some(true),
            timezone: spec.timezone.clone(),
            compress: Some(compress),
            ..Default::default()
        }
    }

    /// The socket was lost. Returns the terminal to report if the computation cannot go on
    /// (a stop was under way), else records the outage and tells the consumer.
    pub fn disconnected(&mut self, reason: &str) -> Option<Terminal> {
        self.channel = None;
        self.handle = None;
        // A partial batch may lack blocks; the re-execute delivers its timestamp whole.
        self.merger = BatchMerger::default();
        if let Some(stop) = self.stop.take() {
            return Some(Terminal::Aborted { state: "STOPPED".into(), reason: stop.reason });
        }
        self.resume_floor = self.last_delivered;
        if self.outage_started.is_none() {
            self.outage_started = Some(Instant::now());
        }
        self.resumed_pending = true;
        {
            let mut state = self.shared.state();
            state.status = Status::Reconnecting;
            state.reconnects += 1;
        }
        let _ = self.shared.emit(UpstreamEvent::Disconnected { reason: reason.to_owned() });
        None
    }

    fn emit(&self, event: UpstreamEvent) -> Result<(), Outcome> {
        match self.shared.emit(event) {
            Ok(()) => Ok(()),
            Err(EmitError::Overflow) => {
                self.shared.finish(Terminal::Failed(CONSUMER_OVERFLOW.into()));
                Err(Outcome::Finished { stop: Some((self.handle.clone(), CONSUMER_OVERFLOW.into())) })
            }
            Err(EmitError::ConsumerGone) => {
                self.shared.finish(Terminal::Failed("the consumer went away".into()));
                Err(Outcome::Finished { stop: Some((self.handle.clone(), "consumer went away".into())) })
            }
        }
    }

    /// Processes one message for this computation's channel.
    pub fn on_message(&mut self, message: ServerMessage) -> Outcome {
        self.process(message).unwrap_or_else(|outcome| outcome)
    }

    fn process(&mut self, message: ServerMessage) -> Result<Outcome, Outcome> {
        match message {
            ServerMessage::Data(data) => {
                let mut batches = std::mem::take(&mut self.batches);
                self.merger.push(data.body, &mut batches);
                let result = self.deliver(&mut batches);
                self.batches = batches;
                result?;
            }
            ServerMessage::Control(control) => return self.on_control(control.kind()),
            ServerMessage::Info(info) => {
                self.flush()?;
                self.apply_info(&info.kind());
                self.emit(UpstreamEvent::Info(Arc::new(info)))?;
            }
            ServerMessage::Metadata(metadata) => {
                if self.known.contains(&metadata.tsid) {
                    return Ok(Outcome::Continue);
                }
                if self.known.len() < MAX_KNOWN_SERIES {
                    self.known.insert(metadata.tsid);
                }
                self.shared.state().series_count += 1;
                self.emit(UpstreamEvent::Metadata(Arc::new(metadata)))?;
            }
            ServerMessage::Event(event) => self.emit(UpstreamEvent::Event(Arc::new(event)))?,
            ServerMessage::ExpiredTsid(expired) => {
                if self.known.remove(&expired.tsid) {
                    let mut state = self.shared.state();
                    state.series_count = state.series_count.saturating_sub(1);
                }
                self.emit(UpstreamEvent::Expired(expired.tsid))?;
            }
            ServerMessage::Error(error) => return self.on_error(&error),
            _ => {}
        }
        Ok(Outcome::Continue)
    }

    fn on_control(&mut self, event: ControlEvent<'_>) -> Result<Outcome, Outcome> {
        match event {
            ControlEvent::JobStart { handle } => {
                self.handle = Some(handle.to_owned());
                self.refusals = 0;
                {
                    let mut state = self.shared.state();
                    state.handle = Some(handle.to_owned());
                    state.status = Status::Running;
                }
                self.emit(UpstreamEvent::JobStarted { handle: handle.to_owned() })?;
                if let Some(stop) = &self.stop {
                    return Ok(Outcome::SendStop { handle: handle.to_owned(), reason: stop.reason.clone() });
                }
            }
            ControlEvent::JobProgress { progress } => self.emit(UpstreamEvent::Progress { percent: progress })?,
            ControlEvent::EndOfChannel => return Ok(self.finish(Terminal::EndOfChannel)),
            ControlEvent::ChannelAbort { state, reason } => {
                let terminal = Terminal::Aborted { state: state.to_owned(), reason: reason.to_owned() };
                return Ok(self.finish(terminal));
            }
            _ => {}
        }
        Ok(Outcome::Continue)
    }

    fn on_error(&mut self, error: &ErrorMessage) -> Result<Outcome, Outcome> {
        if self.handle.is_none()
            && self.stop.is_none()
            && let Some(kind) = retry_kind(error)
        {
            self.channel = None;
            self.refusals += 1;
            return Ok(Outcome::Retry(kind));
        }
        let terminal = Terminal::Error(ComputationError {
            code: error.code(),
            error_type: error.error_type().map(str::to_owned),
            message: error.message_text().map(str::to_owned),
            line: error.line(),
            column: error.column(),
        });
        Ok(self.finish(terminal))
    }

    /// Releases what is pending and ends the computation with `terminal`.
    fn finish(&mut self, terminal: Terminal) -> Outcome {
        if let Err(outcome) = self.flush() {
            return outcome;
        }
        self.shared.finish(terminal);
        Outcome::Finished { stop: None }
    }

    fn flush(&mut self) -> Result<(), Outcome> {
        let mut batches = std::mem::take(&mut self.batches);
        self.merger.boundary(&mut batches);
        let result = self.deliver(&mut batches);
        self.batches = batches;
        result
    }

    /// Sends merged batches, dropping timestamps delivered before a reconnect.
    fn deliver(&mut self, batches: &mut Vec<Batch>) -> Result<(), Outcome> {
        for batch in batches.drain(..) {
            let ts = batch.logical_timestamp_ms;
            if self.resume_floor.is_some_and(|floor| ts <= floor) {
                continue;
            }
            // Timestamps only move forward on a channel; one the consumer already has (a
            // service repeating itself) is never delivered twice.
            if self.last_delivered.is_some_and(|last| ts <= last) {
                continue;
            }
            if let Some(stop) = self.shared.spec.stop
                && ts >= stop
            {
                return Err(self.enforce_stop(stop, ts));
            }
            if self.resumed_pending {
                self.resumed_pending = false;
                let expected = self.last_delivered.map(|last| last + self.resolution());
                let gap_ms = expected.map_or(0, |e| (ts - e).max(0));
                let outage_ms = self.outage_started.take().map_or(0, |t| t.elapsed().as_millis() as i64);
                self.emit(UpstreamEvent::Resumed { gap_ms, outage_ms })?;
            }
            self.last_delivered = Some(ts);
            self.shared.state().last_complete_ms = Some(ts);
            self.emit(UpstreamEvent::Data(batch))?;
        }
        Ok(())
    }

    /// The service streamed past the job's stop time (it ignored it): end the computation as
    /// the service should have, say why, and stop the job upstream.
    fn enforce_stop(&mut self, stop_ms: i64, logical_timestamp_ms: i64) -> Outcome {
        let reason = "the service streamed past the job's stop time";
        tracing::warn!(computation = self.shared.id, stop_ms, logical_timestamp_ms, "{reason}; ending it here");
        self.stop_enforced = true;
        if let Err(outcome) = self.emit(UpstreamEvent::StopEnforced { stop_ms, logical_timestamp_ms }) {
            return outcome;
        }
        self.shared.finish(Terminal::EndOfChannel);
        Outcome::Finished { stop: Some((self.handle.clone(), reason.into())) }
    }

    fn resolution(&self) -> i64 {
        self.shared.state().resolution_ms.unwrap_or(0)
    }

    fn apply_info(&self, kind: &InfoKind<'_>) {
        let mut state = self.shared.state();
        match *kind {
            InfoKind::RunningResolution { resolution_ms } => state.resolution_ms = Some(resolution_ms),
            InfoKind::InitialMaxDelay { max_delay_ms } => state.max_delay_ms = Some(max_delay_ms),
            InfoKind::DetectedLag { lag_ms } => state.lag_ms = Some(lag_ms),
            InfoKind::LimitedResultSet { matched_size, limit_size } => {
                state.limited_result_set = Some((matched_size, limit_size))
            }
            _ => {}
        }
    }
}

/// 429-style and "Too many channels" refusals are retried, not reported.
pub fn retry_kind(error: &ErrorMessage) -> Option<RetryKind> {
    let text = error.message_text().unwrap_or("").to_ascii_lowercase();
    let kind = error.error_type().unwrap_or("").to_ascii_lowercase();
    if text.contains("too many channels") || kind.contains("too_many_channels") {
        Some(RetryKind::ChannelLimit)
    } else if error.code() == Some(429) || text.contains("too many requests") || text.contains("rate limit") {
        Some(RetryKind::RateLimited)
    } else {
        None
    }
}
