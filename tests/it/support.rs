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

/// The simulator over TLS (`wss://`), with its default configuration.
pub async fn spawn_tls_simulator(tls: signalflow_gateway::tls::Tls) -> SimulatorHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    simulator::spawn_tls(listener, SimulatorConfig::default(), Faults::default(), CancellationToken::new(), tls)
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

    /// Connects with a TLS client configuration of the caller's (`wss://` with a test CA).
    pub async fn connect_tls(url: &str, tls: std::sync::Arc<rustls::ClientConfig>) -> Self {
        let connector = tokio_tungstenite::Connector::Rustls(tls);
        let connecting = tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector));
        let (ws, _) = tokio::time::timeout(WAIT, connecting).await.expect("connect timeout").expect("connect");
        WsClient { ws }
    }

    /// Connects over a socket with a tiny receive buffer (a client that reads slowly fills the
    /// path quickly), to a plain `ws://127.0.0.1:PORT/…` URL.
    pub async fn connect_small_buffer(url: &str) -> Self {
        let authority = url.trim_start_matches("ws://").split('/').next().expect("ws://host:port/…");
        let addr: std::net::SocketAddr = authority.parse().expect("an IP:port authority");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = tokio::time::timeout(WAIT, socket.connect(addr)).await.expect("connect timeout").expect("connect");
        let connecting = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream));
        let (ws, _) = tokio::time::timeout(WAIT, connecting).await.expect("handshake timeout").expect("handshake");
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

/// A value percent-encoded for a URL query string.
pub fn query_value(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
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

/// A gateway on port 0 against its built-in simulator.
pub struct Gateway {
    pub base: String,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub fn test_settings() -> signalflow_gateway::config::Settings {
    let mut s = signalflow_gateway::config::Settings { listen: "127.0.0.1:0".into(), ..Default::default() };
    s.stream.heartbeat = Duration::from_secs(2);
    s.stream.linger = Duration::from_millis(500);
    s.upstream.compress = false;
    s
}

pub async fn spawn_gateway(settings: signalflow_gateway::config::Settings) -> Gateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = signalflow_gateway::app::Application::build_with_listener(settings, listener).await.unwrap();
    wait_ready(&app).await;
    Gateway::serve(app)
}

/// Waits for the upstream socket to authenticate (signalled by the pool; no polling). In
/// pass-through tenancy, pools open on demand, so there is nothing to wait for.
async fn wait_ready(app: &signalflow_gateway::app::Application) {
    if let Ok(pool) = app.hub().pools().for_tenant(&signalflow_gateway::hub::Tenant::single()) {
        assert!(pool.wait_ready(WAIT).await, "the gateway's upstream is ready");
    }
}

/// The gateway's router called in process (`tower::ServiceExt::oneshot`), with no HTTP socket:
/// for plain request/answer behaviour (status codes, problem bodies, validation, routing,
/// middleware). The upstream and the simulator behind it are real.
pub struct InProcess {
    router: axum::Router,
    app: signalflow_gateway::app::Application,
}

/// An answer read in full.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: axum::http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn in_process_gateway(settings: signalflow_gateway::config::Settings) -> InProcess {
    // Bound but never served: the router is called directly.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = signalflow_gateway::app::Application::build_with_listener(settings, listener).await.unwrap();
    wait_ready(&app).await;
    InProcess { router: app.router(), app }
}

impl InProcess {
    /// The response, with its head only (streams stay open until it is dropped).
    pub async fn respond(&self, request: axum::http::Request<axum::body::Body>) -> axum::response::Response {
        use tower::ServiceExt;
        let response = self.router.clone().oneshot(request);
        tokio::time::timeout(WAIT, response).await.expect("answered in time").unwrap()
    }

    /// The answer read in full (for requests whose bodies end).
    pub async fn call(&self, request: axum::http::Request<axum::body::Body>) -> Answer {
        let response = self.respond(request).await;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(WAIT, axum::body::to_bytes(body, usize::MAX))
            .await
            .expect("body read in time")
            .unwrap();
        Answer { status: parts.status.as_u16(), headers: parts.headers, body }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(request("GET", path).body(axum::body::Body::empty()).unwrap()).await
    }

    pub async fn post_json(&self, path: &str, body: Json) -> Answer {
        let request = request("POST", path).header("content-type", "application/json");
        self.call(request.body(axum::body::Body::from(body.to_string())).unwrap()).await
    }

    /// Drains the hub (stops the upstream jobs) and shuts the gateway down.
    pub async fn stop(self) {
        let stopped = self.app.run_until_stopped(async {});
        tokio::time::timeout(WAIT, stopped).await.expect("gateway stops").unwrap();
    }
}

/// A request builder for [`InProcess`].
pub fn request(method: &str, path: &str) -> axum::http::request::Builder {
    axum::http::Request::builder().method(method).uri(path)
}

impl Gateway {
    /// Serves a built application (not waiting for readiness).
    pub fn serve(app: signalflow_gateway::app::Application) -> Gateway {
        let addr = app.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Gateway { base: format!("http://{addr}"), http: reqwest::Client::new(), stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: Json) -> reqwest::Response {
        self.http.post(self.url(path)).json(&body).timeout(WAIT).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Json {
        let r = self.http.get(self.url(path)).timeout(WAIT).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// Opens an SSE stream (as a browser's `EventSource` would: GET, `Accept: text/event-stream`,
    /// optional `Last-Event-ID`).
    pub async fn sse(&self, path: &str, last_event_id: Option<u64>) -> SseClient {
        let mut request = self.http.get(self.url(path)).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = tokio::time::timeout(WAIT, request.send()).await.expect("connect timeout").unwrap();
        SseClient::new(response)
    }

    /// Stops the gateway and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.expect("gateway stops").unwrap().unwrap();
        }
    }
}

/// One parsed SSE event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<u64>,
    pub event: String,
    pub data: Json,
}

pub struct SseClient {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    events: std::pin::Pin<Box<dyn futures::Stream<Item = Result<eventsource_stream::Event, String>> + Send>>,
}

impl SseClient {
    pub fn from_response(response: reqwest::Response) -> Self {
        Self::new(response)
    }

    fn new(response: reqwest::Response) -> Self {
        use eventsource_stream::Eventsource;
        let status = response.status();
        let headers = response.headers().clone();
        let events = response.bytes_stream().eventsource().map(|r| r.map_err(|e| e.to_string()));
        SseClient { status, headers, events: Box::pin(events) }
    }

    /// The next event, or `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Sse> {
        let event =
            tokio::time::timeout(WAIT, self.events.next()).await.expect("timed out waiting for an SSE event")?;
        let event = event.ok()?;
        Some(Sse {
            id: if event.id.is_empty() { None } else { event.id.parse().ok() },
            event: event.event,
            data: serde_json::from_str(&event.data)
                .unwrap_or_else(|e| panic!("event data is JSON: {e}: {}", event.data)),
        })
    }

    /// Events until (and including) the first one matching `stop`.
    pub async fn until(&mut self, stop: impl Fn(&Sse) -> bool) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            let done = stop(&e);
            out.push(e);
            if done {
                return out;
            }
        }
        panic!("stream ended before the expected event; got {out:?}");
    }

    /// Every event until the server closes the stream.
    pub async fn rest(&mut self) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(e) = self.next().await {
            out.push(e);
        }
        out
    }
}

pub fn is_terminal(e: &Sse) -> bool {
    e.event == "error"
        || (e.event == "control-message"
            && matches!(e.data["event"].as_str(), Some("END_OF_CHANNEL" | "CHANNEL_ABORT")))
}

pub fn data_timestamps(events: &[Sse]) -> Vec<i64> {
    events.iter().filter(|e| e.event == "data").map(|e| e.data["logicalTimestampMs"].as_i64().unwrap()).collect()
}

impl SseClient {
    /// Events until `n` data events have arrived.
    pub async fn until_data(&mut self, n: usize) -> Vec<Sse> {
        let mut out = Vec::new();
        let mut seen = 0;
        while seen < n {
            let e = self.next().await.unwrap_or_else(|| panic!("stream ended after {seen} data events: {out:?}"));
            seen += usize::from(e.event == "data");
            out.push(e);
        }
        out
    }
}

impl Gateway {
    /// Reads a stream to its terminal event the way a browser's `EventSource` does: when the
    /// server closes it early (e.g. after `SUBSCRIBER_TOO_SLOW`), reconnect with the last id
    /// seen. Returns the events with ids (de-duplicated by the protocol, not here) and the
    /// number of reconnects.
    pub async fn sse_following(&self, path: &str) -> (Vec<Sse>, usize) {
        let mut events: Vec<Sse> = Vec::new();
        let mut last = None;
        for reconnects in 0..1000 {
            let mut stream = self.sse(path, last).await;
            assert_eq!(stream.status, 200, "reconnect {reconnects}");
            while let Some(e) = stream.next().await {
                if e.id.is_some() {
                    last = e.id;
                }
                let terminal = is_terminal(&e);
                events.push(e);
                if terminal {
                    return (events, reconnects);
                }
            }
        }
        panic!("never reached the end");
    }
}

/// Shared by the interop tests that drive the official Python client.
pub mod interop {
    use serde::Deserialize;
    use serde_json::{Map, Value as Json, json};
    use std::collections::{BTreeMap, BTreeSet};
    use std::fmt::Debug;
    use std::process::Stdio;
    use std::time::Duration;
    use tokio::process::Command;

    /// Two publish blocks: `A` has one series per region (2), `B` a single series.
    pub const TWO_BLOCKS: &str = "A = data('cpu.utilization').mean(by=['region']).publish('A')\n\
                                  B = data('memory.utilization').max().publish('B')";
    /// A past, resolution-aligned start: the whole range is historical.
    pub const START: i64 = 1_700_000_000_000;
    pub const RESOLUTION_MS: i64 = 1_000;
    /// Input series of `TWO_BLOCKS` in the demo inventory: 48 of each metric.
    pub const TWO_BLOCKS_INPUTS: i64 = 96;
    /// The scripts' own watchdog (they then print what they saw); a hang guard, not a timing
    /// assertion.
    const SCRIPT_WATCHDOG_S: &str = "45";
    /// Outer hang guard, beyond the scripts' watchdog.
    const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

    fn python() -> String {
        match std::env::var("SIGNALFLOW_INTEROP_PYTHON") {
            Ok(python) if !python.is_empty() => python,
            _ => super::interop_venv_python(),
        }
    }

    /// Runs `tests/interop/<script> <scenario> <base_url> <args…>` and parses the one JSON report
    /// it prints; the report's `scenario` must be the one asked for.
    pub async fn run_script<R: serde::de::DeserializeOwned>(
        script: &str,
        scenario: &str,
        base_url: &str,
        args: &[&str],
    ) -> R {
        let path = format!("{}/tests/interop/{script}", env!("CARGO_MANIFEST_DIR"));
        // signalflow-client-python lives in a virtualenv of its own (see
        // `signalflow_client_venv_python`).
        let python =
            if script.starts_with("signalflow_client") { super::signalflow_client_venv_python() } else { python() };
        let mut command = Command::new(&python);
        command
            .arg(&path)
            .arg(scenario)
            .arg(base_url)
            .args(args)
            .args(["--timeout", SCRIPT_WATCHDOG_S])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("{script} {scenario} did not finish within {SCRIPT_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("cannot run {python} (SIGNALFLOW_INTEROP_PYTHON): {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{script} {scenario} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        let report: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("unreadable report ({e}):\nstdout: {stdout}\nstderr: {stderr}"));
        assert_eq!(report["scenario"], scenario);
        serde_json::from_value(report).unwrap_or_else(|e| panic!("report of an unexpected shape ({e}):\n{stdout}"))
    }

    /// One data batch as the Python client yielded it (merged across publish blocks).
    #[derive(Debug, Deserialize)]
    pub struct Batch {
        pub t: i64,
        pub points: BTreeMap<String, Json>,
        /// IEEE-754 bits of each float value, 16 hex digits.
        pub bits: BTreeMap<String, Json>,
    }

    /// What both scripts report (`sfclient_common.Report`), with `T`, the members a script adds
    /// about its own transport, flattened in; the report derefs to them.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ScriptReport<T> {
        pub handle: Option<String>,
        pub resolution_ms: Option<i64>,
        pub num_input_timeseries: Option<i64>,
        pub state: Option<String>,
        pub metadata: BTreeMap<String, Map<String, Json>>,
        pub batches: Vec<Batch>,
        pub batches_before_stop: Option<usize>,
        pub yielded: Vec<String>,
        pub ended: Option<String>,
        pub exception: Option<Map<String, Json>>,
        #[serde(flatten)]
        pub transport: T,
    }

    impl<T> std::ops::Deref for ScriptReport<T> {
        type Target = T;

        fn deref(&self) -> &T {
            &self.transport
        }
    }

    impl<T: Debug> ScriptReport<T> {
        pub fn yielded(&self, class: &str) -> usize {
            self.yielded.iter().filter(|y| *y == class).count()
        }

        pub fn exception_field(&self, key: &str) -> &Json {
            self.exception.as_ref().and_then(|e| e.get(key)).unwrap_or_else(|| panic!("no exception.{key}: {self:#?}"))
        }
    }

    /// Exact values per timestamp: TSID → IEEE-754 bits, 16 hex digits.
    pub type Values = BTreeMap<i64, BTreeMap<String, String>>;

    /// The bits of every float the Python client yielded, per batch timestamp.
    pub fn python_values<T>(report: &ScriptReport<T>) -> Values {
        report
            .batches
            .iter()
            .map(|b| {
                let bits =
                    b.bits.iter().map(|(tsid, v)| (tsid.clone(), v.as_str().unwrap_or("not a float").to_owned()));
                (b.t, bits.collect())
            })
            .collect()
    }

    pub fn timestamps(from: i64, count: i64) -> Vec<i64> {
        (0..count).map(|i| from + i * RESOLUTION_MS).collect()
    }

    /// (label, originating metric, region) of a series.
    pub type Series = (String, String, Option<String>);

    /// The series of `TWO_BLOCKS` in the report's metadata, with the per-job properties every
    /// series carries checked against the handle; `check(properties, label, handle)` adds the
    /// caller's own checks.
    pub fn two_blocks_series<T: Debug>(
        report: &ScriptReport<T>,
        check: impl Fn(&Map<String, Json>, &str, &str),
    ) -> BTreeSet<Series> {
        let handle = report.handle.as_deref().unwrap_or_else(|| panic!("no handle: {report:#?}"));
        assert_eq!(handle.len(), 11, "handles are 11-character ids: {handle}");
        report
            .metadata
            .values()
            .map(|p| {
                let text = |key: &str| p.get(key).and_then(Json::as_str).map(str::to_owned);
                let label = text("sf_streamLabel").expect("sf_streamLabel");
                assert_eq!(text("computationId").as_deref(), Some(handle));
                assert_eq!(p.get("sf_resolutionMs"), Some(&json!(RESOLUTION_MS)));
                check(p, &label, handle);
                (label, text("sf_originatingMetric").expect("sf_originatingMetric"), text("region"))
            })
            .collect()
    }

    pub fn expected_two_blocks_series() -> BTreeSet<Series> {
        [
            ("A", "cpu.utilization", Some("us-east-1")),
            ("A", "cpu.utilization", Some("us-west-2")),
            ("B", "memory.utilization", None),
        ]
        .into_iter()
        .map(|(l, m, r)| (l.to_owned(), m.to_owned(), r.map(str::to_owned)))
        .collect()
    }

    /// Every batch carries a value for every series of both blocks: the client merged the two
    /// per-block data messages of each timestamp.
    pub fn check_batches_merge_both_blocks<T>(report: &ScriptReport<T>) {
        let all: BTreeSet<&String> = report.metadata.keys().collect();
        for batch in &report.batches {
            let tsids: BTreeSet<&String> = batch.points.keys().collect();
            assert_eq!(tsids, all, "batch {} has a point from every series of both blocks", batch.t);
            assert!(batch.points.values().all(Json::is_f64), "batch {}: {:?}", batch.t, batch.points);
        }
    }

    /// A `live` run stopped after `batches` batches: the stream ended with CHANNEL_ABORT, which
    /// the client raises as ComputationAborted carrying the abort state and `reason`, after it
    /// learnt what the job announced.
    pub fn check_stopped_live_run<T: Debug>(report: &ScriptReport<T>, batches: usize, reason: &str) {
        assert_eq!(report.ended.as_deref(), Some("exception"), "{report:#?}");
        assert_eq!(report.exception_field("class"), "ComputationAborted");
        assert_eq!(report.exception_field("state"), "STOPPED");
        assert_eq!(report.exception_field("reason"), reason);
        assert_eq!(report.state.as_deref(), Some("ABORTED"));
        assert_eq!(report.batches_before_stop, Some(batches));
        assert_eq!(report.resolution_ms, Some(RESOLUTION_MS));
        assert_eq!(report.num_input_timeseries, Some(TWO_BLOCKS_INPUTS));
    }

    /// The batches of a live run stopped after `batches`: at least that many, at consecutive
    /// timestamps (a batch may slip in between the stop and its abort), each merging both
    /// blocks. Returns the first timestamp and the number of batches.
    pub fn check_live_batches<T: Debug>(report: &ScriptReport<T>, batches: usize) -> (i64, i64) {
        let first = report.batches.first().map(|b| b.t).unwrap_or_else(|| panic!("no batches: {report:#?}"));
        let count = report.batches.len() as i64;
        assert!(count >= batches as i64, "{report:#?}");
        assert_eq!(report.batches.iter().map(|b| b.t).collect::<Vec<_>>(), timestamps(first, count));
        check_batches_merge_both_blocks(report);
        (first, count)
    }
}

/// The interop virtualenv's python: `target/interop-venv`, created and filled from
/// `tests/interop/requirements.txt` by the first test that needs it (once per machine, and again
/// when the requirements change). Test threads and concurrent `cargo test` runs that race to
/// create it wait on a file lock; only one builds it.
pub fn interop_venv_python() -> String {
    static PYTHON: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| prepare_venv("interop-venv", "requirements.txt")).clone().unwrap_or_else(|e| panic!("{e}"))
}

/// The python of a second virtualenv, `target/interop-venv-sfc`, for `signalflow-client-python`
/// (from `tests/interop/requirements-signalflow-client.txt`): it installs the same `signalfx`
/// package directory as PyPI `signalfx`, so the two cannot share one environment.
pub fn signalflow_client_venv_python() -> String {
    static PYTHON: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| prepare_venv("interop-venv-sfc", "requirements-signalflow-client.txt"))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn prepare_venv(name: &str, requirements_file: &str) -> Result<String, String> {
    use std::process::Command;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join(name);
    let python = venv.join("bin/python");
    let requirements_path = root.join("tests/interop").join(requirements_file);
    let requirements =
        std::fs::read_to_string(&requirements_path).map_err(|e| format!("{requirements_path:?}: {e}"))?;
    let stamp = venv.join(".requirements.txt");
    std::fs::create_dir_all(root.join("target")).map_err(|e| format!("creating target/: {e}"))?;
    let lock_path = root.join(format!("target/{name}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(|e| format!("{lock_path:?}: {e}"))?;
    lock.lock().map_err(|e| format!("locking {lock_path:?}: {e}"))?;
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == requirements) {
        return Ok(python.display().to_string());
    }
    let venv_available = Command::new("python3").args(["-m", "venv", "--help"]).output();
    if !venv_available.is_ok_and(|o| o.status.success()) {
        return Err("the interop tests need `python3 -m venv` to prepare target/interop-venv: install Python 3 \
                    with its venv module (Debian: apt-get install python3-venv)"
            .into());
    }
    eprintln!("preparing the interop virtualenv in {} (once)", venv.display());
    let run = |command: &mut Command, what: &str| -> Result<(), String> {
        let output = command.output().map_err(|e| format!("{what}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr)))
        }
    };
    run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv), "python3 -m venv")?;
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements_path),
        &format!("pip install -r tests/interop/{requirements_file}"),
    )?;
    std::fs::write(&stamp, &requirements).map_err(|e| format!("{stamp:?}: {e}"))?;
    Ok(python.display().to_string())
}

/// Cluster mode's parts as processes: a `redis-server` and gateway replicas (the built binary),
/// each killed when dropped.
pub mod cluster {
    use super::WAIT;
    use std::process::Stdio;
    use std::time::Duration;
    use tokio::io::AsyncBufReadExt;
    use tokio::process::{Child, Command};

    /// A free TCP port on loopback (bound, read, released).
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// `redis-server --port P --save '' --appendonly no`: nothing survives a restart.
    pub struct RedisServer {
        pub port: u16,
        child: Option<Child>,
    }

    impl RedisServer {
        pub async fn start() -> Self {
            let mut server = RedisServer { port: free_port(), child: None };
            server.restart().await;
            server
        }

        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/0", self.port)
        }

        /// Starts it (again, on the same port, empty) and waits until it answers. The server
        /// binary is `redis-server`, or `TEST_REDIS_SERVER` when set (e.g. a
        /// `valkey-server`, which takes the same flags).
        pub async fn restart(&mut self) {
            let binary = std::env::var("TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
            let child = Command::new(&binary)
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("{binary} is installed (.ci/run installs redis-server): {e}"));
            self.child = Some(child);
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 7];
                    if s.write_all(b"PING\r\n").await.is_ok()
                        && s.read_exact(&mut buf).await.is_ok()
                        && &buf == b"+PONG\r\n"
                    {
                        return;
                    }
                }
                assert!(tokio::time::Instant::now() < deadline, "redis-server did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// SIGKILL, and waits for the exit.
        pub async fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill().await;
            }
        }
    }

    /// A gateway process in cluster mode.
    pub struct Replica {
        pub node: String,
        pub base: String,
        pub http: reqwest::Client,
        child: Child,
    }

    impl Replica {
        /// `serve` on port 0 against `upstream`, in cluster mode on `redis`; `env` adds settings.
        pub async fn start(node: &str, upstream: &str, redis: &str, env: &[(&str, &str)]) -> Self {
            let log = std::env::temp_dir().join(format!(
                "sfgw-cluster-{}-{node}-{}.log",
                redis.rsplit(':').next().unwrap_or("").replace('/', "-"),
                std::process::id()
            ));
            let mut command = Command::new(env!("CARGO_BIN_EXE_signalflow-gateway"));
            command
                .args(["serve", "--listen", "127.0.0.1:0"])
                .env("SFGW_UPSTREAM__URL", upstream)
                .env("SFGW_CLUSTER__REDIS_URL", redis)
                .env("SFGW_CLUSTER__NODE_ID", node)
                .env("SFGW_CLUSTER__LEASE", "2s")
                .env("SFGW_CLUSTER__TICK", "200ms")
                .env("RUST_LOG", "info")
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
                .kill_on_drop(true);
            for (k, v) in env {
                command.env(k, v);
            }
            let mut child = command.spawn().unwrap();
            let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let base = loop {
                let line = tokio::time::timeout(WAIT, lines.next_line())
                    .await
                    .expect("the replica starts")
                    .unwrap()
                    .unwrap_or_else(|| panic!("{node} exited; see {}", log.display()));
                if let Some(rest) = line.strip_prefix("signalflow-gateway listening on ") {
                    break rest.to_owned();
                }
            };
            // Keep reading stdout so the process never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            let replica = Replica { node: node.to_owned(), base, http: reqwest::Client::new(), child };
            super::eventually(&format!("{node} is ready"), || async {
                replica.http.get(replica.url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
            })
            .await;
            replica
        }

        pub fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        /// SIGKILL.
        pub async fn kill(&mut self) {
            let _ = self.child.kill().await;
        }
    }

    /// An SSE stream read as raw frames (`id: …\nevent: …\ndata: …`), so replicas can be
    /// compared byte for byte.
    pub struct RawSse {
        body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
        buf: Vec<u8>,
    }

    /// One SSE frame: its id (if any), name, data and exact bytes.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Frame {
        pub id: Option<u64>,
        pub event: String,
        pub data: serde_json::Value,
        pub bytes: Vec<u8>,
    }

    impl RawSse {
        pub async fn open(replica: &Replica, path: &str, last_event_id: Option<u64>, token: Option<&str>) -> Self {
            let mut request = replica.http.get(replica.url(path)).header("accept", "text/event-stream");
            if let Some(id) = last_event_id {
                request = request.header("last-event-id", id.to_string());
            }
            if let Some(token) = token {
                request = request.header("x-sf-token", token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "GET {path} on {}", replica.node);
            RawSse { body: Box::pin(response.bytes_stream()), buf: Vec::new() }
        }

        /// The next event frame (comments and `retry:` skipped); `None` when the stream ends.
        /// Bounded by [`WAIT`] as a whole: heartbeats do not extend it.
        pub async fn next(&mut self) -> Option<Frame> {
            tokio::time::timeout(WAIT, self.next_frame()).await.expect("timed out waiting for an SSE event frame")
        }

        async fn next_frame(&mut self) -> Option<Frame> {
            use futures::StreamExt;
            loop {
                if let Some(at) = self.buf.windows(2).position(|w| w == b"\n\n") {
                    let raw: Vec<u8> = self.buf.drain(..at + 2).collect();
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    let mut frame = Frame { id: None, event: String::new(), data: serde_json::Value::Null, bytes: raw };
                    for line in text.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            frame.id = v.parse().ok();
                        } else if let Some(v) = line.strip_prefix("event: ") {
                            frame.event = v.to_owned();
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            frame.data = serde_json::from_str(v).unwrap_or_else(|e| panic!("{e}: {v}"));
                        }
                    }
                    if frame.event.is_empty() {
                        continue;
                    }
                    return Some(frame);
                }
                match self.body.next().await {
                    Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                    _ => return None,
                }
            }
        }

        /// Frames until (and including) the first that matches.
        pub async fn until(&mut self, stop: impl Fn(&Frame) -> bool) -> Vec<Frame> {
            let mut out = Vec::new();
            while let Some(f) = self.next().await {
                let done = stop(&f);
                out.push(f);
                if done {
                    return out;
                }
            }
            panic!("the stream ended before the expected frame: {out:?}");
        }

        /// Frames until `n` data frames have come.
        pub async fn data(&mut self, n: usize) -> Vec<Frame> {
            let mut seen = 0;
            let mut out = Vec::new();
            while seen < n {
                let f = self.next().await.unwrap_or_else(|| panic!("the stream ended after {seen} data frames"));
                seen += usize::from(f.event == "data");
                out.push(f);
            }
            out
        }
    }

    pub fn is_terminal(f: &Frame) -> bool {
        f.event == "error"
            || (f.event == "control-message"
                && matches!(f.data["event"].as_str(), Some("END_OF_CHANNEL" | "CHANNEL_ABORT")))
    }

    pub fn gateway_notice(f: &Frame, name: &str) -> bool {
        f.event == "gateway" && f.data["event"] == name
    }
}
