//! Test harness: a simulator on port 0 and a raw websocket client that decodes frames with the
//! crate's own codec. Every wait on outside I/O has a timeout (a hang guard, not a timing
//! assertion).

#![allow(dead_code)]

use futures::{SinkExt, StreamExt};
use serde_json::Value as Json;
use signalflow_gateway::protocol::binary::{self, DecodeLimits};
use signalflow_gateway::protocol::messages::{ServerMessage, WsFrame, decode_server_frame};
use signalflow_gateway::simulator::{self, Faults, SimulatorConfig, SimulatorHandle};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Generous: these machines are shared and slow; only a hang should ever reach it.
pub const WAIT: Duration = Duration::from_secs(20);

pub async fn spawn_simulator(config: SimulatorConfig, faults: Faults) -> SimulatorHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    simulator::spawn(listener, config, faults, CancellationToken::new())
}

pub async fn spawn_default_simulator() -> SimulatorHandle {
    spawn_simulator(SimulatorConfig::default(), Faults::default()).await
}

/// What the client received.
#[derive(Debug)]
pub enum Received {
    /// A decoded message and whether it came in a binary frame (and that frame's flags).
    Message {
        message: Box<ServerMessage>,
        binary_flags: Option<u8>,
    },
    Closed {
        code: Option<u16>,
        reason: String,
    },
    /// The socket ended without a close frame (an abrupt drop).
    Dropped,
}

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timeout")
            .expect("connect");
        WsClient { ws }
    }

    /// Connects and authenticates, waiting for `authenticated`.
    pub async fn connect_authenticated(url: &str) -> Self {
        let mut c = Self::connect(url).await;
        c.send(serde_json::json!({"type": "authenticate", "token": "test-token"})).await;
        match c.next_message().await {
            ServerMessage::Authenticated(_) => c,
            other => panic!("expected authenticated, got {other:?}"),
        }
    }

    pub async fn send(&mut self, json: Json) {
        self.ws.send(Message::Text(json.to_string().into())).await.expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next frame, keep-alives included.
    pub async fn next(&mut self) -> Received {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next()).await.expect("timed out waiting for a frame");
            let (frame, flags) = match frame {
                None | Some(Err(_)) => return Received::Dropped,
                Some(Ok(Message::Close(close))) => {
                    return Received::Closed {
                        code: close.as_ref().map(|c| u16::from(c.code)),
                        reason: close.map(|c| c.reason.to_string()).unwrap_or_default(),
                    };
                }
                Some(Ok(Message::Text(t))) => (WsFrame::Text(t.to_string()), None),
                Some(Ok(Message::Binary(b))) => {
                    let flags = binary::FrameHeader::decode(&b).ok().map(|h| h.flags);
                    (WsFrame::Binary(b.to_vec()), flags)
                }
                Some(Ok(_)) => continue,
            };
            let message = decode_server_frame(&frame, &DecodeLimits::default()).expect("simulator frames decode");
            return Received::Message { message: Box::new(message), binary_flags: flags };
        }
    }

    /// The next message that is not a keep-alive; panics on close.
    pub async fn next_message(&mut self) -> ServerMessage {
        loop {
            match self.next().await {
                Received::Message { message, .. } if matches!(*message, ServerMessage::KeepAlive { .. }) => continue,
                Received::Message { message, .. } => return *message,
                other => panic!("connection ended: {other:?}"),
            }
        }
    }

    /// Messages on `channel` until (and including) its terminal message.
    pub async fn collect_channel(&mut self, channel: &str) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        loop {
            let message = self.next_message().await;
            if message.channel() != Some(channel) {
                continue;
            }
            let terminal = match &message {
                ServerMessage::Control(c) => c.is_terminal(),
                ServerMessage::Error(_) => true,
                _ => false,
            };
            out.push(message);
            if terminal {
                return out;
            }
        }
    }
}

/// A JSON client for the simulator's control API.
pub struct Control {
    base: String,
    http: reqwest::Client,
}

impl Control {
    pub fn new(sim: &SimulatorHandle) -> Self {
        Control { base: sim.control_url(), http: reqwest::Client::new() }
    }

    pub async fn get(&self, path: &str) -> Json {
        let r = self.http.get(format!("{}{path}", self.base)).timeout(WAIT).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Json) -> reqwest::StatusCode {
        let r =
            self.http.request(method, format!("{}{path}", self.base)).json(&body).timeout(WAIT).send().await.unwrap();
        r.status()
    }

    pub async fn post(&self, path: &str, body: Json) -> reqwest::StatusCode {
        self.send(reqwest::Method::POST, path, body).await
    }
}

/// Polls `check` until it is true (state that another task changes asynchronously), bounded by
/// [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never became true: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
