//! The SignalFlow websocket protocol served to clients (`GET /v2/signalflow/connect`, and the
//! bare `/connect`): every official client (Go, Python, Node, Java) can point at the gateway
//! unchanged and share its pooled, deduplicated, self-healing upstream.
//!
//! One socket is one actor: it reads requests strictly in order (pipelined requests right
//! behind `authenticate` work), keeps the socket's channels, and sends `KEEP_ALIVE` on a timer.
//! A writer task owns the write side. Each channel is a task ([`channel`]) that maps the
//! client's execute onto the hub (identical programs from any client share one upstream job)
//! and frames the hub's events for the client ([`frames`]).
//!
//! - `authenticate`: with API keys the token is an API key; with pass-through tenancy it is the
//!   client's SignalFx token (its tenant); otherwise any non-empty token. Close 4401 on failure
//!   or when no `authenticate` came within `websocket.auth_timeout`. (With both keys and
//!   pass-through, the key goes on the upgrade request, as for every other route.)
//! - `stop` by handle ends this client's channels of that job only, with `CHANNEL_ABORT`; the
//!   job stops when its last subscriber is gone, after the linger. `detach` ends a channel
//!   silently. `attach` streams a running computation of the same tenant on a new channel.
//! - Bad input (not JSON, unknown type, missing fields, binary frames) gets an `error` on the
//!   channel it names, or closes the socket with 4400 when it names none or names an open
//!   channel (an error there would end a channel that keeps streaming; so does an execute on a
//!   channel in use); a frame over `websocket.max_message_bytes` closes it with 1009. Nothing a
//!   client sends can panic.

mod channel;
pub mod frames;
mod settings;

use self::channel::{ChannelHandle, ChannelTask, Ending, Source};
use self::frames::Framer;
pub use self::settings::WebsocketSettings;
use super::AppState;
use crate::hub::Tenant;
use crate::protocol::messages::{Authenticated, ServerMessage};
use crate::protocol::{ChannelName, Request, WsFrame};
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Authentication failed or never came.
pub const CLOSE_AUTH_FAILED: u16 = 4401;
/// A request that names no channel could not be understood.
pub const CLOSE_INVALID_REQUEST: u16 = 4400;
/// The client did not keep up with its streams.
pub const CLOSE_TOO_SLOW: u16 = 1008;
/// A frame over `websocket.max_message_bytes`.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// The gateway is shutting down (after every channel got its `CHANNEL_ABORT`).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// How long a shutdown waits for the channels' last frames before closing the socket.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Every (method, path) served here, for the route table.
pub const ROUTES: [(&str, &str); 2] = [("GET", "/v2/signalflow/connect"), ("GET", "/connect")];

/// The websocket routes; merged outside the API-key layer (clients authenticate in-protocol).
pub fn router() -> Router<AppState> {
    Router::new().route(ROUTES[0].1, get(upgrade)).route(ROUTES[1].1, get(upgrade))
}

async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let keys = &state.settings.auth.api_keys;
    if state.hub.pools().is_pass_through() && !keys.is_empty() {
        // The authenticate token is the SignalFx token, so the API key rides on the upgrade.
        let presented = super::access::presented_key(&headers, query.as_deref());
        let valid = presented.is_some_and(|k| super::access::is_valid_key(keys, &k));
        if !valid {
            return super::error::ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "an API key is required",
            )
            .into_response();
        }
    }
    let max = state.settings.websocket.max_message_bytes;
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| serve(socket, state))
}

/// What the writer is told.
enum Control {
    /// A close frame; with `flush`, after the frames already queued (not for a client that
    /// does not read them).
    Close { code: u16, reason: String, flush: bool },
}

/// Runs one client socket to its end.
pub async fn serve(socket: WebSocket, state: AppState) {
    let settings = state.settings.websocket.clone();
    let (sink, stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(settings.outbound_queue.max(2));
    let (control_tx, control_rx) = mpsc::channel(1);
    let kill = CancellationToken::new();
    let writer = tokio::spawn(write_frames(sink, out_rx, control_rx, kill.clone(), settings.clone()));
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut session = Session {
        state,
        settings,
        tenant: None,
        out: out_tx,
        control: control_tx,
        kill: kill.clone(),
        channels: HashMap::new(),
        done: done_tx,
        next_serial: 0,
    };
    session.run(stream, done_rx, writer).await;
    // Every channel task ends on the socket's token; their subscriptions drop and the hub's
    // linger decides about the jobs.
    kill.cancel();
}

struct Session {
    state: AppState,
    settings: WebsocketSettings,
    tenant: Option<Tenant>,
    out: mpsc::Sender<WsFrame>,
    control: mpsc::Sender<Control>,
    kill: CancellationToken,
    channels: HashMap<String, ChannelHandle>,
    /// Channel tasks report their end here (name, serial): at most one message per channel.
    done: mpsc::UnboundedSender<(String, u64)>,
    next_serial: u64,
}

/// What the read loop does next.
enum Next {
    Continue,
    Close(u16, String),
    Stop,
}

impl Session {
    async fn run(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        mut done: mpsc::UnboundedReceiver<(String, u64)>,
        mut writer: tokio::task::JoinHandle<()>,
    ) {
        let auth_deadline = tokio::time::sleep(self.settings.auth_timeout);
        tokio::pin!(auth_deadline);
        let mut keepalive = tokio::time::interval(self.settings.keepalive_interval);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.tick().await;
        let hub = self.state.hub.clone();
        let shutting_down = hub.shutting_down();
        tokio::pin!(shutting_down);
        let mut closing_at: Option<tokio::time::Instant> = None;
        loop {
            let next = tokio::select! {
                _ = self.kill.cancelled() => Next::Close(CLOSE_TOO_SLOW, "the client did not keep up with its streams".into()),
                // Each channel ends with CHANNEL_ABORT (its hub subscription says so); the socket
                // closes once they are all done, or after the grace.
                _ = &mut shutting_down, if closing_at.is_none() => {
                    closing_at = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                    if self.channels.is_empty() { Next::Close(CLOSE_GOING_AWAY, "the gateway is shutting down".into()) } else { Next::Continue }
                }
                _ = tokio::time::sleep_until(closing_at.unwrap_or_else(tokio::time::Instant::now)), if closing_at.is_some() => {
                    Next::Close(CLOSE_GOING_AWAY, "the gateway is shutting down".into())
                }
                _ = &mut writer => Next::Stop,
                _ = &mut auth_deadline, if self.tenant.is_none() => {
                    Next::Close(CLOSE_AUTH_FAILED, "Authentication timed out".into())
                }
                _ = keepalive.tick() => self.keepalive(),
                Some((name, serial)) = done.recv() => {
                    if self.channels.get(&name).is_some_and(|c| c.serial == serial) {
                        self.channels.remove(&name);
                    }
                    if closing_at.is_some() && self.channels.is_empty() {
                        Next::Close(CLOSE_GOING_AWAY, "the gateway is shutting down".into())
                    } else {
                        Next::Continue
                    }
                }
                message = stream.next() => match message {
                    Some(Ok(message)) => self.message(message).await,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket client read failed");
                        // A frame over `max_message_bytes` is a capacity error of the reader.
                        let inner = e.into_inner();
                        let capacity = inner.downcast_ref::<tokio_tungstenite::tungstenite::Error>();
                        if matches!(capacity, Some(tokio_tungstenite::tungstenite::Error::Capacity(_))) {
                            Next::Close(CLOSE_TOO_BIG, "message too big".into())
                        } else {
                            Next::Stop
                        }
                    }
                    None => Next::Stop,
                },
            };
            match next {
                Next::Continue => continue,
                Next::Stop => break,
                Next::Close(code, reason) => {
                    // A client that does not read gets it ahead of anything still queued; every
                    // other after what is queued. Bounded like any write.
                    let flush = code != CLOSE_TOO_SLOW;
                    let _ = self.control.try_send(Control::Close { code, reason, flush });
                    let _ = tokio::time::timeout(self.settings.write_timeout, &mut writer).await;
                    break;
                }
            }
        }
        writer.abort();
    }

    fn keepalive(&self) -> Next {
        let frame = WsFrame::Text(ServerMessage::KeepAlive { timestamp_ms: Some(crate::clock::now_ms()) }.to_json());
        // A full queue already proves liveness to the client; skipping is harmless.
        let _ = self.out.try_send(frame);
        Next::Continue
    }

    async fn message(&mut self, message: Message) -> Next {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => return Next::Stop,
            Message::Ping(_) | Message::Pong(_) => return Next::Continue,
            Message::Binary(_) => {
                return Next::Close(CLOSE_INVALID_REQUEST, "Invalid request: requests must be JSON text frames".into());
            }
        };
        match Request::parse(text.as_str()) {
            Ok(request) => self.request(request).await,
            Err(error) => {
                let value = serde_json::from_str::<Value>(text.as_str()).unwrap_or(Value::Null);
                if value.get("type").and_then(Value::as_str) == Some("authenticate") {
                    // No usable token (missing, empty, not a string).
                    return Next::Close(CLOSE_AUTH_FAILED, "Invalid authentication token".into());
                }
                let channel = value.get("channel").and_then(Value::as_str).map(str::to_owned);
                if channel.as_ref().is_some_and(|c| self.channels.contains_key(c)) {
                    // An error there would end a channel that keeps streaming.
                    return Next::Close(CLOSE_INVALID_REQUEST, format!("Invalid request on an open channel: {error}"));
                }
                match channel {
                    Some(channel) => {
                        self.refuse(&channel, 400, "INVALID_REQUEST", &error.to_string()).await;
                        Next::Continue
                    }
                    None => Next::Close(CLOSE_INVALID_REQUEST, format!("Invalid request: {error}")),
                }
            }
        }
    }

    async fn request(&mut self, request: Request) -> Next {
        if let Request::Authenticate(auth) = &request {
            return self.authenticate(&auth.token).await;
        }
        if self.tenant.is_none() {
            return Next::Close(CLOSE_AUTH_FAILED, "Not authenticated".into());
        }
        match request {
            Request::Authenticate(_) => Next::Continue,
            Request::Execute(execute) => {
                let (channel, compress) = (execute.channel.clone(), execute.compress.unwrap_or(false));
                self.open(&channel, compress, Source::Execute(Box::new(execute))).await
            }
            Request::Attach(attach) => {
                let tenant = self.tenant.as_ref().map(|t| t.id.clone()).unwrap_or_default();
                match self.state.hub.find_by_handle(&attach.handle, &tenant) {
                    Some(entry) => {
                        self.open(&attach.channel, attach.compress.unwrap_or(false), Source::Attach(entry)).await
                    }
                    None => {
                        let detail = format!("no computation has the handle {:?}", attach.handle);
                        self.refuse(&attach.channel, 404, "NOT_FOUND", &detail).await;
                        Next::Continue
                    }
                }
            }
            Request::Preflight(p) => {
                self.refuse(&p.channel, 400, "NOT_SUPPORTED", "the gateway does not run preflight").await;
                Next::Continue
            }
            Request::Start(s) => {
                if let Some(channel) = s.channel {
                    self.refuse(&channel, 400, "NOT_SUPPORTED", "the gateway does not start background jobs").await;
                }
                Next::Continue
            }
            Request::Detach(detach) => {
                if let Some(channel) = self.channels.remove(&detach.channel) {
                    channel.end(Ending::Detached);
                }
                Next::Continue
            }
            Request::Stop(stop) => {
                let reason =
                    stop.reason.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| "Stopped by user request".into());
                let reason: String = reason.chars().take(1024).collect();
                let names: Vec<String> =
                    self.channels.iter().filter(|(_, c)| c.has_handle(&stop.handle)).map(|(n, _)| n.clone()).collect();
                for name in names {
                    if let Some(channel) = self.channels.remove(&name) {
                        channel.end(Ending::Stopped(reason.clone()));
                    }
                }
                Next::Continue
            }
            // Computations here live while a client streams them: nothing to extend.
            Request::Keepalive(_) => Next::Continue,
        }
    }

    async fn authenticate(&mut self, token: &str) -> Next {
        let token = token.trim();
        let settings = &self.state.settings;
        let tenant = if token.is_empty() {
            None
        } else if self.state.hub.pools().is_pass_through() {
            Some(Tenant::for_token(token))
        } else if !settings.auth.api_keys.is_empty() {
            super::access::is_valid_key(&settings.auth.api_keys, token).then(Tenant::single)
        } else {
            Some(Tenant::single())
        };
        let Some(tenant) = tenant else {
            return Next::Close(CLOSE_AUTH_FAILED, "Invalid authentication token".into());
        };
        if self.tenant.as_ref().is_some_and(|t| t.id != tenant.id) && !self.channels.is_empty() {
            // Channels belong to the tenant that opened them; switching under them would leak.
            return Next::Close(CLOSE_AUTH_FAILED, "Re-authentication as another tenant with open channels".into());
        }
        let org = crate::protocol::Tsid(tenant_number(&tenant)).to_string();
        let reply = Authenticated { org_id: Some(org.clone()), user_id: Some(org), extra: Map::new() };
        self.tenant = Some(tenant);
        let frame = WsFrame::Text(ServerMessage::Authenticated(reply).to_json());
        match self.out.send(frame).await {
            Ok(()) => Next::Continue,
            Err(_) => Next::Stop,
        }
    }

    /// An `error` on a channel the client named (the channel itself is not opened).
    async fn refuse(&self, channel: &str, code: u16, error_type: &str, message: &str) {
        let header = ChannelName::new(channel).unwrap_or_default();
        let frame = Framer::new(channel, header, false).error(code, error_type, message, Value::Null);
        let _ = self.out.send(frame).await;
    }

    /// Opens a channel running `source`.
    async fn open(&mut self, channel: &str, compress: bool, source: Source) -> Next {
        let header = match ChannelName::new(channel) {
            Ok(header) => header,
            Err(e) => {
                self.refuse(channel, 400, "INVALID_REQUEST", &format!("channel: {e}")).await;
                return Next::Continue;
            }
        };
        if self.channels.contains_key(channel) {
            // An error on it would end, for the client, a channel that keeps streaming.
            return Next::Close(
                CLOSE_INVALID_REQUEST,
                format!("Invalid request: channel {channel:?} is already in use"),
            );
        }
        let max = self.settings.max_channels_per_socket;
        if self.channels.len() >= max {
            let detail = format!("this connection already has its limit of {max} channels");
            self.refuse(channel, 429, "TOO_MANY_CHANNELS", &detail).await;
            return Next::Continue;
        }
        let Some(tenant) = self.tenant.clone() else { return Next::Continue };
        let cancel = self.kill.child_token();
        let ending = Arc::new(Mutex::new(None));
        let handles = Arc::new(Mutex::new(Vec::new()));
        self.next_serial += 1;
        let serial = self.next_serial;
        let task = ChannelTask {
            state: self.state.clone(),
            tenant,
            framer: Framer::new(channel, header, compress),
            out: self.out.clone(),
            socket: self.kill.clone(),
            cancel: cancel.clone(),
            ending: ending.clone(),
            handles: handles.clone(),
            handles_synced: 0,
            done: self.done.clone(),
            channel: channel.to_owned(),
            serial,
        };
        self.channels.insert(channel.to_owned(), ChannelHandle { serial, cancel, ending, handles });
        tokio::spawn(task.run(source));
        Next::Continue
    }
}

/// A stable 64-bit number for the tenant (its id's leading hex digits), shown as the org id.
fn tenant_number(tenant: &Tenant) -> u64 {
    let hex: String = tenant.id.chars().take(16).collect();
    u64::from_str_radix(&hex, 16).unwrap_or(1)
}

/// Writes what is queued now (a bounded number: the queue's); false when a write fails.
async fn flush_queued(
    sink: &mut SplitSink<WebSocket, Message>,
    frames: &mut mpsc::Receiver<WsFrame>,
    settings: &WebsocketSettings,
) -> bool {
    while let Ok(frame) = frames.try_recv() {
        let message = match frame {
            WsFrame::Text(t) => Message::Text(t.into()),
            WsFrame::Binary(b) => Message::Binary(b.into()),
        };
        if !matches!(tokio::time::timeout(settings.write_timeout, sink.send(message)).await, Ok(Ok(()))) {
            return false;
        }
    }
    true
}

/// Owns the write side: frames from the bounded queue, a close frame ahead of them. A write
/// that cannot complete within `write_timeout` ends the socket.
async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut frames: mpsc::Receiver<WsFrame>,
    mut control: mpsc::Receiver<Control>,
    kill: CancellationToken,
    settings: WebsocketSettings,
) {
    loop {
        let (message, last) = tokio::select! {
            biased;
            Some(Control::Close { code, reason, flush }) = control.recv() => {
                if flush && !flush_queued(&mut sink, &mut frames, &settings).await {
                    return;
                }
                (Message::Close(Some(CloseFrame { code, reason: reason.into() })), true)
            }
            _ = kill.cancelled(), if control.is_empty() => {
                // The session sends a close frame next; wait for it.
                match control.recv().await {
                    Some(Control::Close { code, reason, .. }) => (Message::Close(Some(CloseFrame { code, reason: reason.into() })), true),
                    None => return,
                }
            }
            Some(frame) = frames.recv() => match frame {
                WsFrame::Text(t) => (Message::Text(t.into()), false),
                WsFrame::Binary(b) => (Message::Binary(b.into()), false),
            },
            else => return,
        };
        let sent = tokio::time::timeout(settings.write_timeout, sink.send(message)).await;
        if !matches!(sent, Ok(Ok(()))) || last {
            if !last {
                kill.cancel();
            }
            return;
        }
    }
}
