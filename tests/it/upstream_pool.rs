//! The upstream pool against the simulator, over real sockets: streaming and merging, reconnect
//! and resume without duplicates, auth rejection with backoff, retried refusals, stop (also
//! before the handle), detach, multiplexing beyond a socket's channel limit, hostile frames,
//! the read watchdog, a stalled consumer, and an HTTP CONNECT proxy.

use crate::support::*;
use secrecy::SecretString;
use serde_json::json;
use signalflow_gateway::simulator::{Faults, SimulatorConfig, SimulatorHandle};
use signalflow_gateway::upstream::{Computation, ExecuteSpec, Pool, Status, Terminal, UpstreamConfig, UpstreamEvent};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const PROGRAM: &str = "fixture.program()";
const START: i64 = 1_700_000_000_000;
const A: &str = "AAAAAAAAAAE";
const B: &str = "AAAAAAAAAAI";

async fn fixture_simulator(config: SimulatorConfig) -> (SimulatorHandle, Control) {
    fixture_simulator_with(config, Faults::default()).await
}

async fn fixture_simulator_with(config: SimulatorConfig, faults: Faults) -> (SimulatorHandle, Control) {
    let sim = spawn_simulator(config, faults).await;
    let control = Control::new(&sim);
    control.post("/programs", json!({"program": PROGRAM, "tsids": [A, B]})).await;
    for (tsid, value) in [(A, 1.0), (B, 2.0)] {
        control.send(reqwest::Method::PUT, &format!("/series/{tsid}/metadata"), json!({"sf_resolutionMs": 1000})).await;
        control.send(reqwest::Method::PUT, &format!("/series/{tsid}/value"), json!({"value": value})).await;
    }
    (sim, control)
}

fn config_for(sim: &SimulatorHandle) -> UpstreamConfig {
    let mut config = UpstreamConfig::new(sim.ws_url(), SecretString::from("test-token"));
    config.settings.backoff_initial = Duration::from_millis(50);
    config.settings.backoff_max = Duration::from_millis(400);
    config.settings.compress = false;
    config
}

fn pool(config: UpstreamConfig) -> Pool {
    Pool::new(config, CancellationToken::new())
}

fn spec(start: Option<i64>, stop: Option<i64>) -> ExecuteSpec {
    ExecuteSpec { program: PROGRAM.into(), start, stop, ..Default::default() }
}

async fn next_event(c: &mut Computation) -> UpstreamEvent {
    tokio::time::timeout(WAIT, c.recv()).await.expect("timed out waiting for an event").expect("event stream ended")
}

/// Every event up to and including `Ended`.
async fn until_end(c: &mut Computation) -> Vec<UpstreamEvent> {
    let mut events = Vec::new();
    loop {
        let event = next_event(c).await;
        let end = matches!(event, UpstreamEvent::Ended(_));
        events.push(event);
        if end {
            return events;
        }
    }
}

fn timestamps(events: &[UpstreamEvent]) -> Vec<i64> {
    events
        .iter()
        .filter_map(|e| if let UpstreamEvent::Data(b) = e { Some(b.logical_timestamp_ms) } else { None })
        .collect()
}

#[tokio::test]
async fn bounded_query_streams_metadata_batches_info_and_the_end() {
    for compress in [false, true] {
        let (sim, _control) = fixture_simulator(SimulatorConfig::default()).await;
        let mut config = config_for(&sim);
        config.settings.compress = compress;
        let pool = pool(config);
        let mut c = pool.execute(spec(Some(START), Some(START + 5_000))).await.unwrap();
        let events = until_end(&mut c).await;
        assert!(matches!(&events[0], UpstreamEvent::JobStarted { handle } if handle.len() == 11), "{:?}", events[0]);
        let metadata = events.iter().filter(|e| matches!(e, UpstreamEvent::Metadata(_))).count();
        assert_eq!(metadata, 2);
        let first_data = events.iter().position(|e| matches!(e, UpstreamEvent::Data(_))).unwrap();
        let last_metadata = events.iter().rposition(|e| matches!(e, UpstreamEvent::Metadata(_))).unwrap();
        assert!(last_metadata < first_data, "metadata before data");
        assert_eq!(timestamps(&events), (0..5).map(|i| START + i * 1000).collect::<Vec<_>>());
        let UpstreamEvent::Data(batch) = &events[first_data] else { unreachable!() };
        assert_eq!(batch.points.len(), 2);
        assert_eq!(events.last(), Some(&UpstreamEvent::Ended(Terminal::EndOfChannel)));
        let state = c.state();
        assert_eq!((state.resolution_ms, state.max_delay_ms, state.series_count), (Some(1000), Some(0), 2));
        assert_eq!(state.last_complete_ms, Some(START + 4000));
        assert_eq!(state.status, Status::Ended(Terminal::EndOfChannel));
    }
}

#[tokio::test]
async fn killed_sockets_resume_every_job_without_duplicates() {
    let (sim, _control) = fixture_simulator(SimulatorConfig::default()).await;
    let pool = pool(config_for(&sim));
    // Live jobs starting a little in the past: history first, then real time.
    let now = signalflow_gateway::clock::now_ms();
    let mut computations = Vec::new();
    for _ in 0..3 {
        computations.push(pool.execute(spec(Some(now - 5_000), None)).await.unwrap());
    }
    let mut seen: Vec<Vec<i64>> = vec![Vec::new(); computations.len()];
    let mut notices = vec![(0, 0); computations.len()];
    // Round r: every job has resumed from the r previous kills and delivered a batch since; then
    // kill again. The last round only checks.
    for round in 0..=3 {
        for (i, c) in computations.iter_mut().enumerate() {
            let mut since_resume = 0;
            while notices[i].1 < round || since_resume < 1 {
                match next_event(c).await {
                    UpstreamEvent::Data(b) => {
                        seen[i].push(b.logical_timestamp_ms);
                        since_resume += usize::from(notices[i].1 == round);
                    }
                    UpstreamEvent::Disconnected { .. } => notices[i].0 += 1,
                    UpstreamEvent::Resumed { gap_ms, .. } => {
                        assert_eq!(gap_ms, 0, "the simulator backfills: nothing is missing");
                        notices[i].1 += 1;
                    }
                    UpstreamEvent::Ended(t) => panic!("ended in round {round}: {t:?}"),
                    _ => {}
                }
            }
        }
        if round < 3 {
            assert!(sim.kill_connections() >= 1);
        }
    }
    for (i, c) in computations.iter().enumerate() {
        let ts = &seen[i];
        assert!(ts.windows(2).all(|w| w[1] == w[0] + 1000), "job {i}: no duplicate and no hole: {ts:?}");
        assert_eq!(notices[i], (3, 3), "job {i}: a disconnected and a resumed notice per kill");
        assert_eq!(c.state().reconnects, 3);
    }
}

#[tokio::test]
async fn rejected_token_is_a_typed_error_retried_with_backoff() {
    let config = SimulatorConfig { token: Some("right".into()), ..Default::default() };
    let (sim, _control) = fixture_simulator(config).await;
    let mut upstream = config_for(&sim);
    upstream.token = SecretString::from("wrong");
    upstream.settings.backoff_initial = Duration::from_millis(200);
    upstream.settings.backoff_max = Duration::from_secs(2);
    let pool = pool(upstream);
    eventually("an auth failure is recorded", || async { pool.stats().auth_failures.load(Ordering::Relaxed) >= 1 })
        .await;
    let status = pool.status();
    assert!(!pool.is_ready());
    assert!(
        matches!(status.last_error.as_deref(), Some(signalflow_gateway::upstream::ConnectError::AuthRejected(_))),
        "{status:?}"
    );
    // Three more attempts wait at least 100 + 200 + 400 ms between them (each backoff is
    // jittered within [d/2, d], d doubling from 200 ms), less what the first wait had run when
    // the clock starts here; a tight loop would take milliseconds.
    let first = std::time::Instant::now();
    let failures = pool.stats().auth_failures.load(Ordering::Relaxed);
    eventually("three more auth failures", || async {
        pool.stats().auth_failures.load(Ordering::Relaxed) >= failures + 3
    })
    .await;
    let elapsed = first.elapsed();
    assert!(elapsed >= Duration::from_millis(500), "three retries within {elapsed:?}");
}

#[tokio::test]
async fn refused_starts_are_retried_not_reported() {
    let (sim, control) = fixture_simulator(SimulatorConfig::default()).await;
    let pool = pool(config_for(&sim));
    assert!(control.post("/faults", json!({"jobStartsPerMinute": 1})).await.is_success());
    let mut first = pool.execute(spec(Some(START), Some(START + 2_000))).await.unwrap();
    assert!(matches!(until_end(&mut first).await.last(), Some(UpstreamEvent::Ended(Terminal::EndOfChannel))));
    let mut second = pool.execute(spec(Some(START), Some(START + 2_000))).await.unwrap();
    eventually("a 429 was received", || async { pool.stats().start_refusals.load(Ordering::Relaxed) >= 1 }).await;
    assert!(control.post("/faults", json!({"jobStartsPerMinute": null})).await.is_success());
    let events = until_end(&mut second).await;
    assert_eq!(events.last(), Some(&UpstreamEvent::Ended(Terminal::EndOfChannel)));
    assert_eq!(timestamps(&events), [START, START + 1000]);

    // "Too many channels": the refused job waits for room on the socket.
    assert!(control.post("/faults", json!({"channelLimit": 1})).await.is_success());
    let live = pool.execute(spec(None, None)).await.unwrap();
    let mut waiting = pool.execute(spec(Some(START), Some(START + 1_000))).await.unwrap();
    let refusals = pool.stats().start_refusals.load(Ordering::Relaxed);
    eventually("too many channels", || async { pool.stats().start_refusals.load(Ordering::Relaxed) > refusals }).await;
    live.control().stop("make room").await;
    let events = until_end(&mut waiting).await;
    assert_eq!(events.last(), Some(&UpstreamEvent::Ended(Terminal::EndOfChannel)));
}

#[tokio::test]
async fn stop_ends_with_the_abort_and_its_reason_even_before_the_handle() {
    let (sim, control) = fixture_simulator(SimulatorConfig::default()).await;
    let pool = pool(config_for(&sim));
    let mut c = pool.execute(spec(None, None)).await.unwrap();
    assert!(matches!(next_event(&mut c).await, UpstreamEvent::JobStarted { .. }));
    c.control().stop("done here").await;
    let events = until_end(&mut c).await;
    let expected = Terminal::Aborted { state: "STOPPED".into(), reason: "done here".into() };
    assert_eq!(events.last(), Some(&UpstreamEvent::Ended(expected)));

    assert!(control.post("/faults", json!({"responseDelayMs": 300})).await.is_success());
    let mut early = pool.execute(spec(None, None)).await.unwrap();
    early.control().stop("too early").await;
    let events = until_end(&mut early).await;
    let expected = Terminal::Aborted { state: "STOPPED".into(), reason: "too early".into() };
    assert_eq!(events.last(), Some(&UpstreamEvent::Ended(expected)));
    assert!(events.iter().any(|e| matches!(e, UpstreamEvent::JobStarted { .. })), "the stop waited for the handle");
    eventually("no job left", || async { control.get("/jobs").await.as_array().unwrap().is_empty() }).await;
}

#[tokio::test]
async fn detach_ends_the_stream_and_the_simulator_job() {
    let (sim, control) = fixture_simulator(SimulatorConfig::default()).await;
    let pool = pool(config_for(&sim));
    let mut c = pool.execute(spec(None, None)).await.unwrap();
    assert!(matches!(next_event(&mut c).await, UpstreamEvent::JobStarted { .. }));
    c.control().detach().await;
    let events = until_end(&mut c).await;
    assert!(
        matches!(events.last(), Some(UpstreamEvent::Ended(Terminal::Aborted { state, .. })) if state == "DETACHED")
    );
    eventually("simulator job gone", || async { control.get("/jobs").await.as_array().unwrap().is_empty() }).await;
}

#[tokio::test]
async fn jobs_beyond_one_sockets_limit_open_more_sockets() {
    let (sim, control) = fixture_simulator(SimulatorConfig::default()).await;
    let mut config = config_for(&sim);
    config.settings.max_channels_per_connection = 3;
    config.settings.max_connections = 4;
    let pool = pool(config);
    let mut computations = Vec::new();
    for _ in 0..10 {
        computations.push(pool.execute(spec(None, None)).await.unwrap());
    }
    for c in &mut computations {
        assert!(matches!(next_event(c).await, UpstreamEvent::JobStarted { .. }));
    }
    let connections = control.get("/connections").await;
    let channels: Vec<u64> = connections.as_array().unwrap().iter().map(|c| c["channels"].as_u64().unwrap()).collect();
    assert_eq!(channels.len(), 4, "{connections}");
    assert!(channels.iter().all(|n| *n <= 3), "{channels:?}");
    assert_eq!(channels.iter().sum::<u64>(), 10);
    // Beyond every socket's limit: a typed refusal, not a hang.
    for _ in 0..2 {
        computations.push(pool.execute(spec(None, None)).await.unwrap());
    }
    assert!(pool.execute(spec(None, None)).await.is_err());
}

#[tokio::test]
async fn hostile_and_unknown_frames_are_counted_and_dropped() {
    let (sim, control) = fixture_simulator(SimulatorConfig::default()).await;
    let pool = pool(config_for(&sim));
    let mut c = pool.execute(spec(None, None)).await.unwrap();
    assert!(matches!(next_event(&mut c).await, UpstreamEvent::JobStarted { .. }));
    let garbage = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [1u8, 5, 1, 0, 0, 0, 9, 9]);
    control.post("/inject", json!({"binaryBase64": garbage})).await;
    control.post("/inject", json!({"text": "{not json"})).await;
    control
        .post("/inject", json!({"text": "{\"type\":\"metadata\",\"channel\":\"nobody\",\"tsId\":\"AAAAAAAAAAE\"}"}))
        .await;
    eventually("frames counted", || async {
        pool.stats().undecodable_frames.load(Ordering::Relaxed) >= 2
            && pool.stats().unknown_channel_frames.load(Ordering::Relaxed) >= 1
    })
    .await;
    // The computation is unaffected.
    loop {
        if let UpstreamEvent::Data(_) = next_event(&mut c).await {
            break;
        }
    }
    assert_eq!(pool.stats().disconnects.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_silent_socket_is_replaced_by_the_read_watchdog() {
    // Silent and deaf: no KEEP_ALIVE, and the gateway's pings go unanswered.
    let config = SimulatorConfig { keepalive_interval: Duration::from_secs(3600), ..Default::default() };
    let (sim, _control) = fixture_simulator_with(config, Faults { stop_reading: true, ..Faults::default() }).await;
    let mut upstream = config_for(&sim);
    upstream.settings.read_timeout = Duration::from_millis(300);
    let pool = pool(upstream);
    eventually("the watchdog fired", || async { pool.stats().disconnects.load(Ordering::Relaxed) >= 1 }).await;
    eventually("a new socket is authenticated", || async { pool.is_ready() }).await;
}

#[tokio::test]
async fn a_stalled_consumer_does_not_delay_another_computation() {
    let (sim, _control) = fixture_simulator(SimulatorConfig::default()).await;
    let mut config = config_for(&sim);
    // The reader's whole output (~410 events) fits its queue even if this test task lags; the
    // stalled one's (~2,010) cannot.
    config.settings.consumer_queue = 512;
    let pool = pool(config);
    let mut stalled = pool.execute(spec(Some(START), Some(START + 2_000_000))).await.unwrap();
    let mut reader = pool.execute(spec(Some(START), Some(START + 400_000))).await.unwrap();
    let events = until_end(&mut reader).await;
    assert_eq!(timestamps(&events).len(), 400);
    assert_eq!(events.last(), Some(&UpstreamEvent::Ended(Terminal::EndOfChannel)));
    eventually("the stalled one overflowed", || async {
        matches!(stalled.state().status, Status::Ended(Terminal::Failed(_)))
    })
    .await;
    // Its consumer still gets what fit, then the end, although its queue had no room for it.
    let events = until_end(&mut stalled).await;
    assert_eq!(events.len(), 513);
    assert!(
        matches!(events.last(), Some(UpstreamEvent::Ended(Terminal::Failed(reason))) if reason.contains("keep up"))
    );
}

/// A minimal HTTP CONNECT proxy that counts tunnels.
async fn connect_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tunnels = Arc::new(AtomicUsize::new(0));
    let count = tunnels.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { return };
                count.fetch_add(1, Ordering::Relaxed);
                client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (format!("http://{addr}"), tunnels)
}

#[tokio::test]
async fn connects_through_an_http_connect_proxy() {
    let (sim, _control) = fixture_simulator(SimulatorConfig::default()).await;
    let (proxy, tunnels) = connect_proxy().await;
    let mut config = config_for(&sim);
    config.settings.proxy = Some(proxy);
    let pool = pool(config);
    let mut c = pool.execute(spec(Some(START), Some(START + 1_000))).await.unwrap();
    let events = until_end(&mut c).await;
    assert_eq!(timestamps(&events), [START]);
    assert!(tunnels.load(Ordering::Relaxed) >= 1);
}
