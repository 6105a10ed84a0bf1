//! The simulator's websocket endpoint: one actor per connection that owns the socket's read
//! side, handles requests strictly in order (pipelined requests right behind `authenticate`
//! work), and a writer task that owns the write side.
//!
//! Every frame a job produces goes through one bounded outbound queue per connection, so a client
//! that reads slowly slows its own jobs and nothing else. A writer that cannot make progress for
//! [`WRITE_TIMEOUT`] drops the connection, as a real server would.

use super::job::Ending;
use super::requests::RequestHandler;
use super::state::{ConnectionCommand, ConnectionEntry, SimState};
use crate::protocol::messages::ServerMessage;
use crate::protocol::{Request, WsFrame};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest a single frame write may take before the client is presumed gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Close code for authentication failures (the SignalFx Ruby fake's choice, protocol doc §1.2).
pub const CLOSE_AUTH_FAILED: u16 = 4401;
/// Close code for a request the simulator refuses under [`InvalidRequestPolicy::Close`].
///
/// [`InvalidRequestPolicy::Close`]: super::state::InvalidRequestPolicy::Close
pub const CLOSE_INVALID_REQUEST: u16 = 4400;

/// The websocket routes: `/v2/signalflow/connect` and the bare `/connect`.
pub fn routes(state: Arc<SimState>) -> Router {
    Router::new().route("/v2/signalflow/connect", get(upgrade)).route("/connect", get(upgrade)).with_state(state)
}

async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<Arc<SimState>>,
    remote: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Response {
    let remote = remote.map_or_else(|| "unknown".to_owned(), |Extension(ConnectInfo(addr))| addr.to_string());
    let max = state.config.max_message_bytes;
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| serve_connection(socket, state, remote))
}

/// What the writer task is told to do.
enum WriterControl {
    Frame(WsFrame),
    Close { code: u16, reason: String },
}

/// Runs one connection to its end.
pub async fn serve_connection(socket: WebSocket, state: Arc<SimState>, remote: String) {
    let (sink, stream) = socket.split();
    let (frames_tx, frames_rx) = mpsc::channel(state.config.outbound_queue.max(1));
    let (control_tx, control_rx) = mpsc::channel(16);
    let (commands_tx, commands_rx) = mpsc::channel(16);
    let kill = CancellationToken::new();
    let id = state.register_connection(ConnectionEntry {
        remote: remote.clone(),
        opened: Instant::now(),
        authenticated: false,
        channels: 0,
        kill: kill.clone(),
        commands: commands_tx,
    });
    tracing::debug!(connection = id, %remote, "simulator connection opened");
    let writer = tokio::spawn(write_frames(sink, frames_rx, control_rx, kill.clone()));
    let handler = RequestHandler::new(id, state.clone(), frames_tx.clone());
    let mut actor = ConnectionActor { id, state: state.clone(), frames: frames_tx, control: control_tx, handler, kill };
    actor.run(stream, commands_rx, writer).await;
    state.remove_connection(id);
    tracing::debug!(connection = id, "simulator connection closed");
}

struct ConnectionActor {
    id: u64,
    state: Arc<SimState>,
    frames: mpsc::Sender<WsFrame>,
    control: mpsc::Sender<WriterControl>,
    handler: RequestHandler,
    kill: CancellationToken,
}

/// What the read loop does next.
enum Exit {
    Continue,
    /// End now, abruptly if need be.
    Stop,
    /// End after the writer has sent the close frame queued for it.
    Closing,
}

impl ConnectionActor {
    async fn run(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        mut commands: mpsc::Receiver<ConnectionCommand>,
        mut writer: tokio::task::JoinHandle<()>,
    ) {
        let auth_deadline = tokio::time::sleep(self.state.config.auth_timeout);
        tokio::pin!(auth_deadline);
        let mut keepalive = tokio::time::interval(self.state.config.keepalive_interval);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.tick().await;
        loop {
            let reading = !(self.handler.is_authenticated() && self.state.faults().stop_reading);
            let exit = tokio::select! {
                _ = self.kill.cancelled() => Exit::Stop,
                _ = &mut writer => Exit::Stop,
                _ = &mut auth_deadline, if !self.handler.is_authenticated() => {
                    self.close(CLOSE_AUTH_FAILED, "Authentication timed out").await
                }
                _ = keepalive.tick() => self.keepalive(),
                Some(command) = commands.recv() => self.command(command).await,
                message = stream.next(), if reading => match message {
                    Some(Ok(message)) => self.message(message).await,
                    Some(Err(_)) | None => Exit::Stop,
                },
            };
            match exit {
                Exit::Continue => continue,
                Exit::Stop => {}
                Exit::Closing => {
                    // The close frame goes out before anything else still queued (the writer
                    // reads its control queue first); bounded like any write.
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, &mut writer).await;
                }
            }
            break;
        }
        self.handler.end_all(Ending::ConnectionClosed);
        self.kill.cancel();
        writer.abort();
    }

    fn keepalive(&self) -> Exit {
        if !self.state.faults().pause_keepalive {
            let frame =
                WsFrame::Text(ServerMessage::KeepAlive { timestamp_ms: Some(crate::clock::now_ms()) }.to_json());
            // A full queue already proves liveness to the client; skipping is harmless.
            let _ = self.frames.try_send(frame);
        }
        Exit::Continue
    }

    async fn command(&self, command: ConnectionCommand) -> Exit {
        match command {
            ConnectionCommand::Close { code, reason } => self.close(code, &reason).await,
            ConnectionCommand::Inject(frame) => {
                let _ = self.control.send(WriterControl::Frame(frame)).await;
                Exit::Continue
            }
        }
    }

    /// Sends a close frame (ahead of anything still queued) and ends the connection.
    async fn close(&self, code: u16, reason: &str) -> Exit {
        let _ = self.control.send(WriterControl::Close { code, reason: reason.to_owned() }).await;
        Exit::Closing
    }

    async fn message(&mut self, message: Message) -> Exit {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => return Exit::Stop,
            Message::Ping(_) | Message::Pong(_) => return Exit::Continue,
            Message::Binary(_) => return self.invalid(None, "requests must be JSON text frames").await,
        };
        match Request::parse(text.as_str()) {
            Ok(request) => match self.handler.handle(request).await {
                Ok(()) => {
                    let channels = self.handler.live_channels();
                    let authenticated = self.handler.is_authenticated();
                    self.state.update_connection(self.id, |c| {
                        c.channels = channels;
                        c.authenticated = authenticated;
                    });
                    Exit::Continue
                }
                Err(refusal) => self.close(refusal.code, &refusal.reason).await,
            },
            Err(error) => {
                let channel = serde_json::from_str::<serde_json::Value>(text.as_str())
                    .ok()
                    .and_then(|v| v.get("channel").and_then(|c| c.as_str()).map(str::to_owned));
                self.invalid(channel, &error.to_string()).await
            }
        }
    }

    async fn invalid(&mut self, channel: Option<String>, reason: &str) -> Exit {
        use super::state::InvalidRequestPolicy;
        tracing::debug!(connection = self.id, reason, "simulator refused a request");
        match self.state.config.invalid_requests {
            InvalidRequestPolicy::Close => {
                self.close(CLOSE_INVALID_REQUEST, &format!("Invalid request: {reason}")).await
            }
            InvalidRequestPolicy::Error => {
                if let Some(channel) = channel {
                    self.handler.send_error(&channel, 400, "INVALID_REQUEST", reason).await;
                }
                Exit::Continue
            }
        }
    }
}

async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut frames: mpsc::Receiver<WsFrame>,
    mut control: mpsc::Receiver<WriterControl>,
    kill: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = kill.cancelled() => return,
            Some(c) = control.recv() => c,
            Some(f) = frames.recv() => WriterControl::Frame(f),
            else => return,
        };
        let (message, last) = match next {
            WriterControl::Frame(WsFrame::Text(t)) => (Message::Text(t.into()), false),
            WriterControl::Frame(WsFrame::Binary(b)) => (Message::Binary(b.into()), false),
            WriterControl::Close { code, reason } => {
                (Message::Close(Some(CloseFrame { code, reason: reason.into() })), true)
            }
        };
        let sent = tokio::select! {
            _ = kill.cancelled() => return,
            sent = tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)) => sent,
        };
        if !matches!(sent, Ok(Ok(()))) || last {
            // Ends the connection: the actor sees the writer finish.
            return;
        }
    }
}
