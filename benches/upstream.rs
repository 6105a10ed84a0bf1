//! Upstream throughput: points per second from the socket to the consumer through one pooled
//! connection — websocket read, binary frame decode (and gunzip), routing, batch merging and the
//! consumer queue — drained with `Computation::recv()` until `Ended`.
//!
//! The simulator is slower than the client, so a minimal fake server stands in for it: a
//! tokio-tungstenite server on 127.0.0.1 that answers `authenticate`, and on `execute` sends
//! `STREAM_START`, `JOB_START`, then `FRAMES` pre-encoded v1 data frames of 1,000 points each with
//! increasing logical timestamps (a `JOB_RUNNING_RESOLUTION` info message after the first), then
//! `END_OF_CHANNEL`. Control and info messages are JSON text frames. Data frames are encoded
//! once, before any measurement (gzip variant: compressed with `Compression::Gzip`).
//!
//! Runtimes: the fake server runs on its own OS thread (current-thread runtime); the client —
//! the pool's connection actor and the consumer — runs on a current-thread runtime on the bench
//! thread, i.e. on one core. Each iteration uses a fresh `Pool` whose socket is connected and
//! authenticated before the clock starts; the time measured is `execute` → `Ended`.
//!
//! Run: `cargo bench --bench upstream`. Throughput is reported in points (elements) per second.

use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use futures::{SinkExt, StreamExt};
use secrecy::SecretString;
use signalflow_gateway::protocol::binary::{self, ChannelName, Compression, HeaderVersion, MAX_CHANNEL_LEN};
use signalflow_gateway::protocol::control::{self, ControlMessage};
use signalflow_gateway::protocol::info::{self, InfoMessage};
use signalflow_gateway::protocol::requests::ExecuteRequest;
use signalflow_gateway::protocol::{DataBody, DataPoint, Request, ServerMessage, Tsid, Value};
use signalflow_gateway::upstream::{ExecuteSpec, Pool, Terminal, UpstreamConfig, UpstreamEvent};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const POINTS: usize = 1_000;
const FRAMES: usize = 2_000;
const START_MS: i64 = 1_700_000_000_000;
const RESOLUTION_MS: i64 = 1_000;
/// The channel of the first job on a fresh pool's first socket; frames are pre-encoded for it
/// (any other channel is patched into a copy of each frame).
const CHANNEL: &str = "gw-1";
const HANDLE: &str = "AAAAAAAAAAE";
const AUTHENTICATED: &str = r#"{"type":"authenticated","orgId":"AAAAAAAAAAA","userId":"AAAAAAAAAAA"}"#;

/// The data frames of one job, encoded once.
struct Frames {
    uncompressed: Vec<Bytes>,
    gzip: Vec<Bytes>,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Frames {
    fn build() -> Self {
        let channel = ChannelName::new(CHANNEL).unwrap();
        // Random-looking TSIDs (as the service's are) and full-precision doubles shaped like the
        // simulator's sine series with noise: a realistic case for gzip, not a flattering one.
        let tsids: Vec<Tsid> = (0..POINTS as u64).map(|i| Tsid(splitmix(i))).collect();
        let (mut uncompressed, mut gzip) = (Vec::with_capacity(FRAMES), Vec::with_capacity(FRAMES));
        for f in 0..FRAMES {
            let t = START_MS + f as i64 * RESOLUTION_MS;
            let points = tsids
                .iter()
                .enumerate()
                .map(|(i, &tsid)| {
                    let phase = i as f64 * 0.37;
                    let noise = (splitmix(tsid.0 ^ t as u64) % 10_000) as f64 / 10_000.0 - 0.5;
                    let v = 50.0 + 20.0 * (t as f64 / 600_000.0 * std::f64::consts::TAU + phase).sin() + 2.0 * noise;
                    DataPoint { tsid, value: Value::Double(v) }
                })
                .collect();
            let body = DataBody { logical_timestamp_ms: t, max_delay_ms: None, points };
            uncompressed.push(Bytes::from(binary::encode_data_frame(channel, HeaderVersion::V1, &body, None)));
            gzip.push(Bytes::from(binary::encode_data_frame(
                channel,
                HeaderVersion::V1,
                &body,
                Some(Compression::Gzip),
            )));
        }
        Frames { uncompressed, gzip }
    }
}

/// Starts the fake server on its own thread; returns its address.
fn spawn_server(frames: Arc<Frames>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("local addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("server runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, frames.clone()));
            }
        });
    });
    addr
}

type ServerWs = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn serve(stream: TcpStream, frames: Arc<Frames>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else { continue };
        let sent = match Request::parse(&text) {
            Ok(Request::Authenticate(_)) => ws.send(Message::Text(AUTHENTICATED.into())).await,
            Ok(Request::Execute(execute)) => stream_job(&mut ws, &frames, &execute).await,
            _ => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn text(message: ServerMessage) -> Message {
    Message::Text(message.to_json().into())
}

async fn stream_job(
    ws: &mut ServerWs,
    frames: &Frames,
    execute: &ExecuteRequest,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let channel = execute.channel.as_str();
    let control = |event: &str| ControlMessage::new(channel, event, now_ms());
    ws.feed(text(ServerMessage::Control(control(control::STREAM_START)))).await?;
    let mut job_start = control(control::JOB_START);
    job_start.handle = Some(HANDLE.into());
    ws.feed(text(ServerMessage::Control(job_start))).await?;
    let set = if execute.compress == Some(true) { &frames.gzip } else { &frames.uncompressed };
    // Header bytes 4..20 hold the channel name, NUL-padded.
    let patch = (channel != CHANNEL).then(|| {
        let mut name = [0u8; MAX_CHANNEL_LEN];
        let len = channel.len().min(MAX_CHANNEL_LEN);
        name[..len].copy_from_slice(&channel.as_bytes()[..len]);
        name
    });
    for (i, frame) in set.iter().enumerate() {
        let frame = match patch {
            None => frame.clone(),
            Some(name) => {
                let mut copy = frame.to_vec();
                copy[4..binary::HEADER_LEN].copy_from_slice(&name);
                Bytes::from(copy)
            }
        };
        ws.feed(Message::Binary(frame)).await?;
        if i == 0 {
            let contents = serde_json::json!({ "resolutionMs": RESOLUTION_MS }).as_object().cloned();
            let info = InfoMessage::new(channel, START_MS, info::JOB_RUNNING_RESOLUTION, now_ms(), contents);
            ws.feed(text(ServerMessage::Info(info))).await?;
        }
    }
    ws.feed(text(ServerMessage::Control(control(control::END_OF_CHANNEL)))).await?;
    ws.flush().await
}

/// One job through a fresh pool; returns the time from `execute` to `Ended`.
async fn one_job(url: &str, compress: bool) -> Duration {
    let mut config = UpstreamConfig::new(url.to_owned(), SecretString::from("t"));
    config.settings.compress = compress;
    config.settings.proxy = Some("none".into());
    config.settings.max_connections = 1;
    // Room for every event of the job, so a consumer that falls behind never overflows.
    config.settings.consumer_queue = FRAMES + 64;
    let pool = Pool::new(config, CancellationToken::new());
    while !pool.is_ready() {
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    let spec = ExecuteSpec {
        program: "data('m').publish()".into(),
        start: Some(START_MS),
        stop: Some(START_MS + FRAMES as i64 * RESOLUTION_MS),
        resolution_ms: Some(RESOLUTION_MS),
        ..Default::default()
    };
    let started = Instant::now();
    let mut computation = pool.execute(spec).await.expect("execute");
    let (mut points, mut batches) = (0, 0);
    loop {
        match computation.recv().await {
            Some(UpstreamEvent::Data(batch)) => {
                points += batch.points.len();
                batches += 1;
            }
            Some(UpstreamEvent::Ended(terminal)) => {
                assert_eq!(terminal, Terminal::EndOfChannel);
                break;
            }
            Some(_) => {}
            None => panic!("event stream ended without Ended"),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!((points, batches), (FRAMES * POINTS, FRAMES));
    pool.shutdown(Duration::from_secs(1)).await;
    elapsed
}

fn upstream(c: &mut Criterion) {
    let addr = spawn_server(Arc::new(Frames::build()));
    let url = format!("ws://{addr}/v2/signalflow/connect");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("client runtime");
    let mut group = c.benchmark_group("upstream_one_connection");
    group.throughput(Throughput::Elements((FRAMES * POINTS) as u64));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(15));
    for (name, compress) in [("uncompressed", false), ("gzip", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += one_job(&url, compress).await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, upstream);
criterion_main!(benches);
