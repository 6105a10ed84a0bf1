//! The simulator over real sockets: authentication, ordering, the per-job message sequence,
//! stop/detach, errors, compression, and the faults of the control API. These tests use
//! FakeBackend-style fixtures so that every value is known exactly.

use crate::support::*;
use serde_json::json;
use signalflow_gateway::protocol::control::ControlEvent;
use signalflow_gateway::protocol::info::InfoKind;
use signalflow_gateway::protocol::messages::ServerMessage;
use signalflow_gateway::protocol::{Tsid, Value};
use signalflow_gateway::simulator::{Faults, SimulatorConfig};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const A: &str = "AAAAAAAAAAE";
const B: &str = "AAAAAAAAAAI";
const PROGRAM: &str = "fixture.program()";
/// A past, resolution-aligned start: the whole range is historical and sent at once.
const START: i64 = 1_700_000_000_000;

async fn with_fixture() -> (signalflow_gateway::simulator::SimulatorHandle, Control) {
    let sim = spawn_default_simulator().await;
    let control = Control::new(&sim);
    assert!(control.post("/programs", json!({"program": PROGRAM, "tsids": [A, B]})).await.is_success());
    for (tsid, host, value) in [(A, "web-1", 1.5), (B, "web-2", 2.0)] {
        let meta = json!({"sf_metric": "cpu", "sf_resolutionMs": 1000, "host": host});
        assert!(control.send(reqwest::Method::PUT, &format!("/series/{tsid}/metadata"), meta).await.is_success());
        assert!(
            control
                .send(reqwest::Method::PUT, &format!("/series/{tsid}/value"), json!({"value": value}))
                .await
                .is_success()
        );
    }
    (sim, control)
}

fn execute(channel: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut e = json!({"type": "execute", "channel": channel, "program": PROGRAM});
    e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    e
}

fn data_timestamps(messages: &[ServerMessage]) -> Vec<i64> {
    messages
        .iter()
        .filter_map(|m| if let ServerMessage::Data(d) = m { Some(d.body.logical_timestamp_ms) } else { None })
        .collect()
}

#[tokio::test]
async fn bounded_query_sends_the_documented_sequence() {
    let (sim, _control) = with_fixture().await;
    let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
    client.send(execute("ch-1", json!({"start": START, "stop": START + 5_000}))).await;
    let messages = client.collect_channel("ch-1").await;

    let kinds: Vec<String> = messages
        .iter()
        .map(|m| match m {
            ServerMessage::Control(c) => c.event.clone(),
            ServerMessage::Info(i) => i.code().to_owned(),
            other => other.type_name().unwrap_or("?").to_owned(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "STREAM_START",
            "JOB_START",
            "JOB_PROGRESS",
            "metadata",
            "metadata",
            "data",
            "JOB_RUNNING_RESOLUTION",
            "JOB_INITIAL_MAX_DELAY",
            "FETCH_NUM_TIMESERIES",
            "data",
            "data",
            "data",
            "data",
            "END_OF_CHANNEL"
        ]
    );
    assert_eq!(data_timestamps(&messages), [START, START + 1000, START + 2000, START + 3000, START + 4000]);
    let ServerMessage::Control(job) = &messages[1] else { panic!() };
    let ControlEvent::JobStart { handle } = job.kind() else { panic!("{job:?}") };
    assert!(Tsid::parse(handle).is_ok(), "handle {handle} is an 11-character id");
    for m in &messages {
        if let ServerMessage::Control(c) = m {
            assert!(c.timestamp_ms.is_some(), "every control message has timestampMs: {c:?}");
        }
        if let ServerMessage::Info(i) = m {
            assert_eq!(i.logical_timestamp_ms, Some(START), "info after the first interval");
        }
    }
    let ServerMessage::Data(first) = &messages[5] else { panic!() };
    let values: Vec<(String, Value)> = first.body.points.iter().map(|p| (p.tsid.to_string(), p.value)).collect();
    assert_eq!(values, [(A.to_owned(), Value::Double(1.5)), (B.to_owned(), Value::Double(2.0))]);
    let ServerMessage::Info(fetch) = &messages[8] else { panic!() };
    assert_eq!(fetch.kind(), InfoKind::FetchNumTimeseries { count: 2 });
}

#[tokio::test]
async fn requests_pipelined_behind_authenticate_are_served_in_order() {
    let (sim, _control) = with_fixture().await;
    let mut client = WsClient::connect(&sim.ws_url()).await;
    // Like the Go client: no wait for `authenticated`.
    client.send(json!({"type": "authenticate", "token": "t"})).await;
    client.send(execute("ch-1", json!({"start": START, "stop": START + 2_000}))).await;
    client.send(execute("ch-2", json!({"start": START, "stop": START + 1_000}))).await;
    assert!(matches!(client.next_message().await, ServerMessage::Authenticated(_)));
    let mut ends = Vec::new();
    while ends.len() < 2 {
        if let ServerMessage::Control(c) = client.next_message().await
            && c.is_terminal()
        {
            ends.push(c.channel.clone());
        }
    }
    ends.sort();
    assert_eq!(ends, ["ch-1", "ch-2"]);
}

#[tokio::test]
async fn bad_token_closes_with_4401_and_a_missing_one_times_out() {
    let config =
        SimulatorConfig { token: Some("right".into()), auth_timeout: Duration::from_millis(300), ..Default::default() };
    let sim = spawn_simulator(config, Faults::default()).await;
    let mut client = WsClient::connect(&sim.ws_url()).await;
    client.send(json!({"type": "authenticate", "token": "wrong"})).await;
    assert!(matches!(client.next().await, Received::Closed { code: Some(4401), .. }));

    let mut silent = WsClient::connect(&sim.ws_url()).await;
    match silent.next().await {
        Received::Closed { code: Some(4401), reason } => assert!(reason.contains("timed out"), "{reason}"),
        other => panic!("{other:?}"),
    }

    let mut good = WsClient::connect(&sim.ws_url()).await;
    good.send(json!({"type": "authenticate", "token": "right"})).await;
    let ServerMessage::Authenticated(auth) = good.next_message().await else { panic!() };
    assert_eq!(auth.org_id.as_deref().map(str::len), Some(11));
}

#[tokio::test]
async fn stop_aborts_with_the_reason_and_then_silence() {
    let (sim, control) = with_fixture().await;
    let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
    client.send(execute("ch-1", json!({}))).await; // live: runs until stopped
    let handle = loop {
        if let ServerMessage::Control(c) = client.next_message().await
            && let ControlEvent::JobStart { handle } = c.kind()
        {
            break handle.to_owned();
        }
    };
    assert_eq!(control.get(&format!("/jobs?program={PROGRAM}")).await.as_array().unwrap().len(), 1);
    client.send(json!({"type": "stop", "handle": handle, "reason": "enough"})).await;
    let messages = client.collect_channel("ch-1").await;
    let ServerMessage::Control(last) = messages.last().unwrap() else { panic!() };
    assert_eq!(last.kind(), ControlEvent::ChannelAbort { state: "STOPPED", reason: "enough" });
    eventually("job unregistered", || async { control.get("/jobs").await.as_array().unwrap().is_empty() }).await;
    // A keep-alive-free probe: a second job still works on the same socket, and nothing more
    // arrives for ch-1 before its messages.
    client.send(execute("ch-2", json!({"start": START, "stop": START + 1000}))).await;
    for m in client.collect_channel("ch-2").await {
        assert_eq!(m.channel(), Some("ch-2"));
    }
}

#[tokio::test]
async fn registered_program_errors_use_both_error_shapes() {
    let (sim, control) = with_fixture().await;
    assert!(control.post("/program-errors", json!({"program": "bad()", "message": "Nope"})).await.is_success());
    let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
    client.send(json!({"type": "execute", "channel": "ch-9", "program": "bad()"})).await;
    let ServerMessage::Error(e) = client.next_message().await else { panic!() };
    assert_eq!((e.channel.as_str(), e.code(), e.message_text()), ("ch-9", Some(400), Some("Nope")));
    assert!(e.error_type.is_some() && e.errors.as_ref().is_some_and(|l| !l.is_empty()));
}

#[tokio::test]
async fn compress_sends_gzip_json_in_binary_unless_json_as_text() {
    for json_as_text in [false, true] {
        let config = SimulatorConfig { json_as_text, ..Default::default() };
        let sim = spawn_simulator(config, Faults::default()).await;
        let control = Control::new(&sim);
        control.post("/programs", json!({"program": PROGRAM, "tsids": [A]})).await;
        control.send(reqwest::Method::PUT, &format!("/series/{A}/value"), json!({"value": 1.0})).await;
        let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
        client.send(execute("ch-1", json!({"start": START, "stop": START + 1000, "compress": true}))).await;
        match client.next().await {
            Received::Message { message, binary_flags } if matches!(&*message, ServerMessage::Control(c) if c.event == "STREAM_START") =>
            {
                assert_eq!(binary_flags, if json_as_text { None } else { Some(0x03) }, "json_as_text={json_as_text}");
            }
            other => panic!("{other:?}"),
        }
        let mut saw_data = false;
        while let Received::Message { message, binary_flags } = client.next().await {
            if let ServerMessage::Data(_) = *message {
                // One point is below the compression threshold: flags 0x00, as the service mixes.
                assert_eq!(binary_flags, Some(0x00));
                saw_data = true;
            }
            if matches!(&*message, ServerMessage::Control(c) if c.is_terminal()) {
                break;
            }
        }
        assert!(saw_data);
    }
}

#[tokio::test]
async fn killed_connections_drop_without_a_close_frame_and_end_their_jobs() {
    let (sim, control) = with_fixture().await;
    let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
    client.send(execute("ch-1", json!({}))).await;
    eventually("job running", || async { control.get("/jobs").await.as_array().unwrap().len() == 1 }).await;
    assert_eq!(control.get("/connections").await.as_array().unwrap().len(), 1);
    assert!(control.post("/connections/kill", json!({})).await.is_success());
    loop {
        match client.next().await {
            Received::Message { .. } => continue,
            Received::Dropped => break,
            other => panic!("expected an abrupt drop, got {other:?}"),
        }
    }
    eventually("jobs and connections gone", || async {
        control.get("/jobs").await.as_array().unwrap().is_empty()
            && control.get("/connections").await.as_array().unwrap().is_empty()
    })
    .await;
}

#[tokio::test]
async fn channel_limit_and_job_start_rate_are_enforced_with_errors() {
    let (sim, control) = with_fixture().await;
    assert!(control.post("/faults", json!({"channelLimit": 2})).await.is_success());
    let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
    for ch in ["ch-1", "ch-2", "ch-3"] {
        client.send(execute(ch, json!({}))).await;
    }
    let error = loop {
        if let ServerMessage::Error(e) = client.next_message().await {
            break e;
        }
    };
    assert_eq!((error.channel.as_str(), error.message_text()), ("ch-3", Some("Too many channels")));

    assert!(control.post("/faults", json!({"channelLimit": 300, "jobStartsPerMinute": 1})).await.is_success());
    let mut other = WsClient::connect(&sim.ws_url()).await;
    other.send(json!({"type": "authenticate", "token": "another-token"})).await;
    other.next_message().await;
    other.send(execute("x-1", json!({"start": START, "stop": START + 1000}))).await;
    other.send(execute("x-2", json!({"start": START, "stop": START + 1000}))).await;
    let error = loop {
        if let ServerMessage::Error(e) = other.next_message().await {
            break e;
        }
    };
    assert_eq!((error.channel.as_str(), error.code()), ("x-2", Some(429)));
    // Unknown faults are refused.
    assert_eq!(control.post("/faults", json!({"nope": 1})).await, reqwest::StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn keep_alives_have_no_type_and_no_channel() {
    let config = SimulatorConfig { keepalive_interval: Duration::from_millis(50), ..Default::default() };
    let sim = spawn_simulator(config, Faults::default()).await;
    let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
    let mut seen = 0;
    while seen < 2 {
        if let Received::Message { message, binary_flags: None } = client.next().await
            && let ServerMessage::KeepAlive { timestamp_ms } = *message
        {
            assert!(timestamp_ms.is_some());
            seen += 1;
        }
    }
}

#[tokio::test]
async fn invalid_requests_close_the_socket_by_default() {
    let sim = spawn_default_simulator().await;
    let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
    client.send(json!({"type": "stop"})).await;
    match client.next().await {
        Received::Closed { code: Some(4400), reason } => assert!(reason.contains("handle"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut binary = WsClient::connect_authenticated(&sim.ws_url()).await;
    binary.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert!(matches!(binary.next().await, Received::Closed { code: Some(4400), .. }));
}

#[tokio::test]
async fn injected_and_closing_faults_reach_the_client() {
    let sim = spawn_default_simulator().await;
    let control = Control::new(&sim);
    let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
    eventually("connection listed", || async { control.get("/connections").await.as_array().unwrap().len() == 1 })
        .await;
    assert!(control.post("/inject", json!({"text": "{\"type\":\"weird\",\"x\":1}"})).await.is_success());
    let ServerMessage::Unknown(map) = client.next_message().await else { panic!() };
    assert_eq!(map["x"], 1);
    assert!(control.post("/connections/close", json!({"code": 4000, "reason": "bye"})).await.is_success());
    match client.next().await {
        Received::Closed { code: Some(4000), reason } => assert_eq!(reason, "bye"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn removed_values_leave_the_data_and_expire_the_series() {
    let (sim, control) = with_fixture().await;
    let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
    client.send(execute("ch-1", json!({}))).await;
    // Wait for the first live data message with both series, then remove one.
    loop {
        if let ServerMessage::Data(d) = client.next_message().await {
            assert_eq!(d.body.points.len(), 2);
            break;
        }
    }
    assert!(control.send(reqwest::Method::DELETE, &format!("/series/{B}/value"), json!({})).await.is_success());
    loop {
        match client.next_message().await {
            ServerMessage::ExpiredTsid(e) => {
                assert_eq!(e.tsid.to_string(), B);
                break;
            }
            ServerMessage::Data(d) => assert!(!d.body.points.is_empty()),
            _ => {}
        }
    }
    let ServerMessage::Data(d) = client.next_message().await else { panic!("data follows") };
    assert_eq!(d.body.points.iter().map(|p| p.tsid.to_string()).collect::<Vec<_>>(), [A]);
}

#[tokio::test]
async fn history_records_each_job_run_with_its_range_and_is_bounded() {
    let config = SimulatorConfig { history_limit: 2, ..Default::default() };
    let sim = spawn_simulator(config, Faults::default()).await;
    let control = Control::new(&sim);
    let program = "data('cpu.utilization').publish()";
    let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
    for (i, offset) in [0_i64, 10_000, 20_000].into_iter().enumerate() {
        let channel = format!("h-{i}");
        let start = START + offset;
        client
            .send(json!({"type": "execute", "channel": channel, "program": program, "start": start,
                         "stop": start + 3_000, "resolution": 1000}))
            .await;
        client.collect_channel(&channel).await;
    }
    let history = control.get("/history").await;
    assert_eq!(history["limit"], 2);
    let jobs = history["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "bounded to the newest two: {history}");
    let ranges: Vec<(i64, i64, i64)> = jobs
        .iter()
        .map(|j| (j["start"].as_i64().unwrap(), j["stop"].as_i64().unwrap(), j["seq"].as_i64().unwrap()))
        .collect();
    assert_eq!(ranges, [(START + 10_000, START + 13_000, 2), (START + 20_000, START + 23_000, 3)]);
    assert!(jobs.iter().all(|j| j["program"] == program && j["resolution"] == 1000 && j["kind"] == "execute"));
    assert_eq!(jobs[1]["firstTimestampMs"], START + 20_000);
    assert_eq!(jobs[1]["resolutionMs"], 1000);
    // Filtered by program and limited to the newest.
    let url = format!("/history?program={}&limit=1", query_value(program));
    assert_eq!(control.get(&url).await["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(control.get("/history?program=other").await["jobs"], json!([]));
    assert_eq!(control.send(reqwest::Method::DELETE, "/history", json!(null)).await, 204);
    assert_eq!(control.get("/history").await["jobs"], json!([]));
}
