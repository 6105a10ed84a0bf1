//! One pool slot: an actor that owns one websocket at a time and the computations assigned to
//! it, across reconnects.
//!
//! Phases: idle (no computations, no socket) → connecting (dial + `authenticate`, with
//! jittered backoff between attempts) → connected (the `select!` loop below) → back to
//! connecting when the socket is lost, re-executing every live computation from just past its
//! last delivered timestamp. Commands (execute, stop, detach) are accepted in every phase.
//!
//! Invariants: a channel is registered before its `execute` is written, so an instant reply is
//! never lost; the reader never waits on a consumer (see [`super::computation`]); a frame for an
//! unknown channel or one that does not decode is counted and dropped, never fatal.

use super::computation::{ComputationShared, Status, Terminal};
use super::dial::{self, WsStream};
use super::limits::Backoff;
use super::pool::PoolContext;
use super::record::{PendingStop, Record};
use crate::protocol::messages::ServerMessage;
use crate::protocol::requests::{AuthenticateRequest, DetachRequest, Request, StopRequest};
use crate::protocol::{ChannelName, DecodeLimits};
use futures::{SinkExt, StreamExt};
use secrecy::ExposeSecret;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::time::DelayQueue;

mod routing;

/// Commands from the pool and from computation controls.
#[derive(Debug)]
pub(crate) enum SlotCommand {
    Execute(Arc<ComputationShared>),
    Stop { id: u64, reason: String },
    Detach { id: u64 },
}

/// What the pool reads about a slot.
#[derive(Debug)]
pub(crate) struct SlotShared {
    pub id: usize,
    /// Computations assigned and not ended.
    pub load: AtomicUsize,
    /// Channels this socket may carry; lowered after a "Too many channels" refusal.
    pub capacity: AtomicUsize,
    pub authenticated: AtomicBool,
    pub commands: mpsc::Sender<SlotCommand>,
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Dial(#[from] dial::DialError),
    #[error("the service rejected the token: {0}")]
    AuthRejected(String),
    #[error("no `authenticated` reply within {0:?}")]
    AuthTimeout(Duration),
    #[error("connection closed during authentication: {0}")]
    Closed(String),
}

/// Dials and authenticates; returns the socket once `authenticated` has arrived.
pub(crate) async fn connect(ctx: &PoolContext) -> Result<WsStream, ConnectError> {
    let mut ws = dial::dial(&ctx.dial_options()).await?;
    let auth = Request::Authenticate(AuthenticateRequest {
        token: ctx.config.token.expose_secret().to_owned(),
        user_agent: Some(ctx.user_agent()),
    });
    let timeout = ctx.config.settings.auth_timeout;
    let reply = tokio::time::timeout(timeout, async {
        ws.send(Message::Text(auth.to_json().into())).await.map_err(|e| ConnectError::Closed(e.to_string()))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => match ServerMessage::from_json(&text) {
                    Ok(ServerMessage::Authenticated(_)) => return Ok(()),
                    Ok(ServerMessage::Error(e)) => {
                        return Err(ConnectError::AuthRejected(e.message_text().unwrap_or("error").to_owned()));
                    }
                    _ => continue,
                },
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) =
                        frame.map_or((0, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                    return Err(if code == 4401 {
                        ConnectError::AuthRejected(reason)
                    } else {
                        ConnectError::Closed(format!("close code {code} {reason}"))
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ConnectError::Closed(e.to_string())),
                None => return Err(ConnectError::Closed("end of stream".into())),
            }
        }
    })
    .await
    .map_err(|_| ConnectError::AuthTimeout(timeout))?;
    reply.map(|()| ws)
}

/// Why a connected socket was left.
#[derive(Debug)]
enum Left {
    Lost(String),
    Idle,
    Shutdown,
}

pub(crate) struct SlotTask {
    shared: Arc<SlotShared>,
    ctx: Arc<PoolContext>,
    commands: mpsc::Receiver<SlotCommand>,
    records: HashMap<u64, Record>,
    channels: HashMap<ChannelName, u64>,
    pending: VecDeque<u64>,
    retries: DelayQueue<u64>,
    /// Handles of jobs from a lost socket, stopped on the next one in case the service kept
    /// them running (its docs say a dropped connection does not stop programs).
    stale_handles: Vec<String>,
    next_channel: u64,
    /// Slot 0 stays connected so readiness reflects the upstream even with no computations.
    keep_open: bool,
    limits: DecodeLimits,
}

impl SlotTask {
    pub fn new(shared: Arc<SlotShared>, ctx: Arc<PoolContext>, commands: mpsc::Receiver<SlotCommand>) -> Self {
        let keep_open = shared.id == 0;
        let limits = DecodeLimits { max_decompressed_bytes: ctx.config.settings.max_message_bytes };
        SlotTask {
            shared,
            ctx,
            commands,
            records: HashMap::new(),
            channels: HashMap::new(),
            pending: VecDeque::new(),
            retries: DelayQueue::new(),
            stale_handles: Vec::new(),
            next_channel: 0,
            keep_open,
            limits,
        }
    }

    pub async fn run(mut self) {
        let config = &self.ctx.config;
        let mut backoff = Backoff::new(config.settings.backoff_initial, config.settings.backoff_max);
        let cancel = self.ctx.cancel.clone();
        loop {
            if cancel.is_cancelled() {
                self.finish_all("the gateway is shutting down");
                return;
            }
            if self.records.is_empty() && !self.keep_open {
                tokio::select! {
                    _ = cancel.cancelled() => continue,
                    command = self.commands.recv() => match command {
                        Some(command) => self.offline_command(command),
                        None => return,
                    },
                }
                continue;
            }
            match self.connect_accepting_commands().await {
                Some(Ok(ws)) => {
                    backoff.reset();
                    let left = self.connected(ws).await;
                    if let Left::Lost(reason) = left {
                        tracing::warn!(slot = self.shared.id, %reason, computations = self.records.len(), "upstream socket lost");
                        self.ctx.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                        self.lost(&reason);
                    }
                }
                Some(Err(error)) => {
                    let delay = backoff.next_delay();
                    let error = Arc::new(error);
                    self.ctx.connect_failed(error.clone());
                    tracing::warn!(slot = self.shared.id, error = %error, delay_ms = delay.as_millis() as u64, "upstream connect failed");
                    self.wait_accepting_commands(delay).await;
                }
                None => {}
            }
        }
    }

    /// Connects while still handling commands; `None` if cancelled.
    async fn connect_accepting_commands(&mut self) -> Option<Result<WsStream, ConnectError>> {
        let ctx = self.ctx.clone();
        let attempt = connect(&ctx);
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return None,
                result = &mut attempt => return Some(result),
                Some(command) = self.commands.recv() => self.offline_command(command),
            }
        }
    }

    async fn wait_accepting_commands(&mut self, delay: Duration) {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        let cancel = self.ctx.cancel.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = &mut sleep => return,
                Some(command) = self.commands.recv() => self.offline_command(command),
            }
        }
    }

    fn offline_command(&mut self, command: SlotCommand) {
        match command {
            SlotCommand::Execute(shared) => {
                self.records.insert(shared.id, Record::new(shared));
            }
            SlotCommand::Stop { id, reason } => {
                self.end_locally(id, Terminal::Aborted { state: "STOPPED".into(), reason })
            }
            SlotCommand::Detach { id } => {
                self.end_locally(id, Terminal::Aborted { state: "DETACHED".into(), reason: "detached".into() })
            }
        }
    }

    /// Ends a computation without the service's help (nothing runs for it on a live socket).
    fn end_locally(&mut self, id: u64, terminal: Terminal) {
        if let Some(record) = self.remove(id) {
            if let Some(handle) = record.handle.clone() {
                self.stale_handles.push(handle);
            }
            record.shared.finish(terminal);
        }
    }

    fn remove(&mut self, id: u64) -> Option<Record> {
        let record = self.records.remove(&id)?;
        if let Some(channel) = record.channel {
            self.channels.remove(&channel);
        }
        self.pending.retain(|p| *p != id);
        self.shared.load.fetch_sub(1, Ordering::Relaxed);
        Some(record)
    }

    fn finish_all(&mut self, reason: &str) {
        let ids: Vec<u64> = self.records.keys().copied().collect();
        for id in ids {
            self.end_locally(id, Terminal::Failed(reason.to_owned()));
        }
    }

    /// The socket was lost: every computation is told, and all but those being stopped wait to
    /// be re-executed on the next socket.
    fn lost(&mut self, reason: &str) {
        self.channels.clear();
        self.retries.clear();
        let mut ended = Vec::new();
        for (id, record) in &mut self.records {
            if let Some(handle) = record.handle.clone() {
                self.stale_handles.push(handle);
            }
            if let Some(terminal) = record.disconnected(reason) {
                ended.push((*id, terminal));
            }
        }
        for (id, terminal) in ended {
            if let Some(record) = self.remove(id) {
                record.shared.finish(terminal);
            }
        }
    }

    async fn connected(&mut self, mut ws: WsStream) -> Left {
        self.shared.authenticated.store(true, Ordering::Relaxed);
        self.ctx.readiness_changed();
        self.shared.capacity.store(self.ctx.config.settings.max_channels_per_connection, Ordering::Relaxed);
        self.ctx.stats.sockets_open.fetch_add(1, Ordering::Relaxed);
        let left = self.connected_loop(&mut ws).await;
        self.ctx.stats.sockets_open.fetch_sub(1, Ordering::Relaxed);
        self.shared.authenticated.store(false, Ordering::Relaxed);
        self.ctx.readiness_changed();
        if matches!(left, Left::Idle | Left::Shutdown) {
            let close = CloseFrame { code: CloseCode::Normal, reason: "".into() };
            let _ = tokio::time::timeout(self.ctx.config.settings.write_timeout, ws.close(Some(close))).await;
        }
        left
    }

    async fn connected_loop(&mut self, ws: &mut WsStream) -> Left {
        let mut ids: Vec<u64> = self.records.values().filter(|r| r.channel.is_none()).map(|r| r.shared.id).collect();
        ids.sort_unstable();
        self.pending = ids.into();
        for handle in std::mem::take(&mut self.stale_handles) {
            let stop = Request::Stop(StopRequest { handle, reason: Some("superseded after a reconnect".into()) });
            if let Err(left) = self.write(ws, &stop).await {
                return left;
            }
        }
        let read_timeout = self.ctx.config.settings.read_timeout;
        // A socket silent for half the read timeout is pinged: a service that sends no
        // `KEEP_ALIVE` still answers pings, and the pong counts as a frame.
        let ping_after = read_timeout / 2;
        let read_deadline = tokio::time::sleep(read_timeout);
        let ping_timer = tokio::time::sleep(ping_after);
        let start_timer = tokio::time::sleep(Duration::ZERO);
        let stop_timer = tokio::time::sleep(Duration::from_secs(3600));
        let idle_timer = tokio::time::sleep(self.ctx.config.settings.idle_timeout);
        tokio::pin!(read_deadline, ping_timer, start_timer, stop_timer, idle_timer);
        let cancel = self.ctx.cancel.clone();
        loop {
            if let Err(left) = self.start_pending(ws, start_timer.as_mut()).await {
                return left;
            }
            let earliest_stop = self.records.values().filter_map(|r| r.stop.as_ref().map(|s| s.deadline)).min();
            stop_timer
                .as_mut()
                .reset(earliest_stop.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)).into());
            let idle = self.records.is_empty() && !self.keep_open;
            let step = tokio::select! {
                biased;
                _ = cancel.cancelled() => return self.shut_down(ws).await,
                frame = ws.next() => {
                    read_deadline.as_mut().reset((Instant::now() + read_timeout).into());
                    ping_timer.as_mut().reset((Instant::now() + ping_after).into());
                    self.frame(ws, frame).await
                }
                _ = &mut read_deadline => Err(Left::Lost(format!("no frame for {read_timeout:?}"))),
                _ = &mut ping_timer => {
                    ping_timer.as_mut().reset((Instant::now() + ping_after).into());
                    self.ctx.stats.pings_sent.fetch_add(1, Ordering::Relaxed);
                    self.send_message(ws, Message::Ping(Default::default())).await
                }
                Some(command) = self.commands.recv() => {
                    idle_timer.as_mut().reset((Instant::now() + self.ctx.config.settings.idle_timeout).into());
                    self.command(ws, command).await
                }
                Some(expired) = futures::StreamExt::next(&mut self.retries) => {
                    let id = expired.into_inner();
                    if self.records.contains_key(&id) {
                        self.pending.push_back(id);
                    }
                    Ok(())
                }
                _ = &mut start_timer, if !self.pending.is_empty() => Ok(()),
                _ = &mut stop_timer, if earliest_stop.is_some() => self.expire_stops(ws).await,
                _ = &mut idle_timer, if idle => return Left::Idle,
            };
            if let Err(left) = step {
                return left;
            }
        }
    }

    async fn write(&self, ws: &mut WsStream, request: &Request) -> Result<(), Left> {
        self.send_message(ws, Message::Text(request.to_json().into())).await
    }

    async fn send_message(&self, ws: &mut WsStream, message: Message) -> Result<(), Left> {
        match tokio::time::timeout(self.ctx.config.settings.write_timeout, ws.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Left::Lost(format!("write failed: {e}"))),
            Err(_) => Err(Left::Lost(format!("write timed out after {:?}", self.ctx.config.settings.write_timeout))),
        }
    }

    /// Starts as many pending computations as the rate limiter allows now; arms `timer` for
    /// the next token otherwise.
    async fn start_pending(
        &mut self,
        ws: &mut WsStream,
        timer: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Result<(), Left> {
        while let Some(&id) = self.pending.front() {
            if let Err(wait) = self.ctx.limiter.try_take() {
                timer.reset((Instant::now() + wait).into());
                return Ok(());
            }
            self.pending.pop_front();
            let channel = self.new_channel();
            let compress = self.ctx.config.settings.compress;
            let Some(record) = self.records.get_mut(&id) else { continue };
            let request = Request::Execute(record.execute_request(channel, compress));
            // Registered before the write: an instant reply finds its channel.
            self.channels.insert(channel, id);
            self.ctx.stats.job_starts.fetch_add(1, Ordering::Relaxed);
            self.write(ws, &request).await?;
        }
        Ok(())
    }

    fn new_channel(&mut self) -> ChannelName {
        self.next_channel += 1;
        // "gw-" + at most 13 digits stays within the 16-byte header field.
        ChannelName::new(&format!("gw-{}", self.next_channel % 10_000_000_000_000)).unwrap_or_default()
    }

    async fn command(&mut self, ws: &mut WsStream, command: SlotCommand) -> Result<(), Left> {
        match command {
            SlotCommand::Execute(shared) => {
                let id = shared.id;
                self.records.insert(id, Record::new(shared));
                self.pending.push_back(id);
                Ok(())
            }
            SlotCommand::Stop { id, reason } => {
                let Some(record) = self.records.get_mut(&id) else { return Ok(()) };
                if record.channel.is_none() {
                    self.end_locally(id, Terminal::Aborted { state: "STOPPED".into(), reason });
                    return Ok(());
                }
                record.stop = Some(PendingStop {
                    reason: reason.clone(),
                    deadline: Instant::now() + self.ctx.config.settings.stop_wait,
                });
                match record.handle.clone() {
                    Some(handle) => self.write(ws, &Request::Stop(StopRequest { handle, reason: Some(reason) })).await,
                    // Sent when JOB_START arrives (see `Record::on_control`).
                    None => Ok(()),
                }
            }
            SlotCommand::Detach { id } => {
                let channel = self.records.get(&id).and_then(|r| r.channel);
                self.end_locally(id, Terminal::Aborted { state: "DETACHED".into(), reason: "detached".into() });
                match channel {
                    Some(channel) => self.write(ws, &detach(channel, "detached".into())).await,
                    None => Ok(()),
                }
            }
        }
    }

    /// Stops whose handle or abort never came: detach the channel and end them here.
    async fn expire_stops(&mut self, ws: &mut WsStream) -> Result<(), Left> {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .records
            .values()
            .filter(|r| r.stop.as_ref().is_some_and(|s| s.deadline <= now))
            .map(|r| r.shared.id)
            .collect();
        for id in expired {
            let Some(record) = self.records.get(&id) else { continue };
            let channel = record.channel;
            let reason = record.stop.as_ref().map(|s| s.reason.clone()).unwrap_or_default();
            self.end_locally(id, Terminal::Aborted { state: "STOPPED".into(), reason: reason.clone() });
            if let Some(channel) = channel {
                self.write(ws, &detach(channel, reason)).await?;
            }
        }
        Ok(())
    }

    /// Stops every job with the shutdown reason and ends the computations.
    async fn shut_down(&mut self, ws: &mut WsStream) -> Left {
        let reason = "the gateway is shutting down";
        let handles: Vec<String> = self.records.values().filter_map(|r| r.handle.clone()).collect();
        for handle in handles {
            if self.write(ws, &Request::Stop(StopRequest { handle, reason: Some(reason.into()) })).await.is_err() {
                break;
            }
        }
        let ids: Vec<u64> = self.records.keys().copied().collect();
        for id in ids {
            if let Some(record) = self.remove(id) {
                record.shared.finish(Terminal::Aborted { state: "STOPPED".into(), reason: reason.into() });
            }
        }
        Left::Shutdown
    }
}

fn detach(channel: ChannelName, reason: String) -> Request {
    Request::Detach(DetachRequest { channel: channel.as_str().to_owned(), reason: Some(reason) })
}

impl Drop for SlotTask {
    fn drop(&mut self) {
        // A slot never outlives its computations silently.
        for record in self.records.values() {
            if !matches!(record.shared.state().status, Status::Ended(_)) {
                record.shared.finish(Terminal::Failed("the upstream connection task ended".into()));
            }
        }
    }
}
