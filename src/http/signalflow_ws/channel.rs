//! One client channel: starts (or joins) its computation on the hub, then forwards the hub's
//! events as frames until the channel ends, the client stops or detaches it, or the socket goes.
//!
//! Frames go to the socket's bounded outbound queue. A client that does not read fills it; the
//! forwarder then stops reading its hub subscription, whose own bounded queue fills, and the
//! computation's pump drops this subscriber with `SUBSCRIBER_TOO_SLOW` (never waiting for it):
//! the socket is then closed. No other subscriber of the computation is delayed.

use super::frames::{Current, Framer, Step};
use crate::clock::now_ms;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::hub::stream::Framing;
use crate::hub::{ComputationSpec, Entry, Phase, RawSpec, SubscribeOutcome, Tenant};
use crate::protocol::WsFrame;
use crate::protocol::requests::ExecuteRequest;
use crate::upstream::Terminal;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a channel was ended from the socket's side.
#[derive(Debug, Clone)]
pub enum Ending {
    /// `stop` by handle: `CHANNEL_ABORT` with the reason, this client only.
    Stopped(String),
    /// `detach`: silence.
    Detached,
}

/// What the socket keeps per channel.
pub struct ChannelHandle {
    /// Tells this channel from a later one of the same name.
    pub serial: u64,
    pub cancel: CancellationToken,
    pub ending: Arc<Mutex<Option<Ending>>>,
    /// The job's handles as this channel saw them (for `stop`).
    pub handles: Arc<Mutex<Vec<String>>>,
}

impl ChannelHandle {
    pub fn end(&self, ending: Ending) {
        // Short critical section, no await.
        *self.ending.lock() = Some(ending);
        self.cancel.cancel();
    }

    pub fn has_handle(&self, handle: &str) -> bool {
        self.handles.lock().iter().any(|h| h == handle)
    }
}

/// What a channel runs: a new program, or an existing computation by handle.
pub enum Source {
    Execute(Box<ExecuteRequest>),
    Attach(Arc<Entry>),
}

/// Everything a channel task needs.
pub struct ChannelTask {
    pub state: AppState,
    pub tenant: Tenant,
    pub framer: Framer,
    pub out: mpsc::Sender<WsFrame>,
    pub socket: CancellationToken,
    pub cancel: CancellationToken,
    pub ending: Arc<Mutex<Option<Ending>>>,
    pub handles: Arc<Mutex<Vec<String>>>,
    /// How many of the framer's handles `handles` holds.
    pub handles_synced: usize,
    /// Told the channel's name when it ends, so the socket forgets it.
    pub done: mpsc::UnboundedSender<(String, u64)>,
    pub channel: String,
    pub serial: u64,
}

impl ChannelTask {
    pub async fn run(mut self, source: Source) {
        self.run_inner(source).await;
        let _ = self.done.send((self.channel.clone(), self.serial));
    }

    async fn run_inner(&mut self, source: Source) {
        if !self.send(vec![self.framer.stream_start(now_ms())]).await {
            return;
        }
        let entry = match source {
            Source::Attach(entry) => entry,
            Source::Execute(request) => {
                let started = tokio::select! {
                    _ = self.cancel.cancelled() => return self.cancelled().await,
                    _ = self.socket.cancelled() => return,
                    started = self.start(*request) => started,
                };
                match started {
                    Ok(entry) => entry,
                    Err(frame) => {
                        self.send(vec![frame]).await;
                        return;
                    }
                }
            }
        };
        let mut subscription = match entry.subscribe(None, Framing::SignalFlow).await {
            Some(SubscribeOutcome::Stream(s)) => s,
            Some(SubscribeOutcome::TooManySubscribers) => {
                let frame = self.framer.error(429, "LIMIT_REACHED", "the subscriber limit is reached", Value::Null);
                self.send(vec![frame]).await;
                return;
            }
            Some(SubscribeOutcome::Finished) | None => {
                let frame = self.framer.abort("FAILED", "the computation has ended", now_ms());
                self.send(vec![frame]).await;
                return;
            }
        };
        loop {
            let event = tokio::select! {
                biased;
                _ = self.socket.cancelled() => return,
                _ = self.cancel.cancelled() => return self.cancelled().await,
                event = subscription.next_event() => event,
            };
            let Some(event) = event else {
                // The hub ended the subscription without a last event: it dropped this client.
                self.socket.cancel();
                return;
            };
            let current = || {
                let state = entry.control.state();
                Current {
                    handle: state.handle.clone(),
                    resolution_ms: state.resolution_ms,
                    last_complete_ms: state.last_complete_ms,
                }
            };
            let step = self.framer.step(&event, current, now_ms());
            self.sync_handles();
            match step {
                Step::Send(frames) => {
                    if !self.send(frames).await {
                        return;
                    }
                }
                Step::End(frames) => {
                    self.send(frames).await;
                    return;
                }
                Step::TooSlow => {
                    tracing::info!(channel = %self.channel, "disconnecting a websocket client that did not keep up");
                    self.socket.cancel();
                    return;
                }
            }
        }
    }

    /// Publishes the framer's handles for `stop`, locking only when a job start added one
    /// (handles only ever grow), not on every event.
    fn sync_handles(&mut self) {
        if self.framer.handles.len() != self.handles_synced {
            self.handles.lock().clone_from(&self.framer.handles);
            self.handles_synced = self.framer.handles.len();
        }
    }

    /// Ended by the client: a stop gets its `CHANNEL_ABORT`, a detach nothing.
    async fn cancelled(&mut self) {
        let ending = self.ending.lock().clone();
        if let Some(Ending::Stopped(reason)) = ending {
            let frame = self.framer.abort("STOPPED", &reason, now_ms());
            self.send(vec![frame]).await;
        }
    }

    /// Queues frames for the socket; false when the socket is gone.
    async fn send(&self, frames: Vec<WsFrame>) -> bool {
        for frame in frames {
            let sent = tokio::select! {
                _ = self.socket.cancelled() => false,
                sent = self.out.send(frame) => sent.is_ok(),
            };
            if !sent {
                return false;
            }
        }
        true
    }

    /// Creates or joins the computation; a refusal is the `error` frame for the channel.
    async fn start(&self, request: ExecuteRequest) -> Result<Arc<Entry>, WsFrame> {
        let program = request.program.clone();
        let raw = RawSpec {
            program: Some(request.program),
            start: request.start.map(Value::from),
            stop: request.stop.map(Value::from),
            resolution: request.resolution.map(Value::from),
            max_delay: request.max_delay.map(Value::from),
            immediate: request.immediate,
            timezone: request.timezone,
        };
        let limit = self.state.hub.settings().limits.max_program_bytes;
        let spec = ComputationSpec::from_raw(raw, limit, now_ms()).map_err(|e| self.refusal(ApiError::from(e)))?;
        let hub = &self.state.hub;
        let created = hub.create(spec, &self.tenant, true).await.map_err(|e| self.refusal(ApiError::from(e)))?;
        if let Phase::Ended(Terminal::Error(error)) = hub.wait_started(&created.entry).await {
            if created.new {
                hub.discard(&created.entry);
            }
            let context = json!({ "line": error.line, "column": error.column, "programText": program });
            let error_type = error.error_type.as_deref().unwrap_or("ANALYTICS_PROGRAM_ERROR");
            let message = error.message.as_deref().unwrap_or("the program failed");
            let code = error.code.and_then(|c| u16::try_from(c).ok()).unwrap_or(400);
            return Err(self.framer.error(code, error_type, message, context));
        }
        Ok(created.entry)
    }

    fn refusal(&self, error: ApiError) -> WsFrame {
        let p = error.problem();
        let error_type = p.slug.replace('-', "_").to_ascii_uppercase();
        self.framer.error(p.status.as_u16(), &error_type, &p.detail, Value::Null)
    }
}
