//! Interop: the official SignalFlow Python client (`signalfx` 1.1.16 from PyPI, WebSocket
//! transport) against the simulator. `tests/interop/python_ws_client.py` drives the client and
//! prints what it observed as one JSON document; these tests assert on it.
//!
//! The interpreter is the interop virtualenv's (`target/interop-venv`, prepared by the first test
//! that needs it; `SIGNALFLOW_INTEROP_PYTHON` overrides it). If it cannot be prepared these tests
//! fail (they are not skipped): an interop suite that silently does nothing proves nothing.
//!
//! Expected values are cross-checked with the crate's own websocket client (`support::WsClient`)
//! running the same query against the same simulator: the simulator's values are a pure function
//! of (program, series, timestamp), so both clients must decode the very same TSIDs and IEEE-754
//! bits.

use crate::support::*;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use signalflow_gateway::protocol::Value;
use signalflow_gateway::protocol::messages::ServerMessage;
use signalflow_gateway::simulator::SimulatorHandle;
use std::collections::BTreeSet;

use crate::support::interop::*;

/// What `python_ws_client.py` reports besides the members both scripts report.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WsObserved {
    compress: bool,
    frames: Vec<Frame>,
    error_payloads: Vec<serde_json::Map<String, Json>>,
}

/// What `python_ws_client.py` reports.
type Report = ScriptReport<WsObserved>;

/// One websocket frame the client's transport received.
#[derive(Debug, Deserialize)]
struct Frame {
    binary: bool,
    #[serde(rename = "type")]
    kind: Option<String>,
    event: Option<String>,
    version: Option<u8>,
    mtype: Option<u8>,
    flags: Option<u8>,
}

impl WsObserved {
    /// Text frames other than server keep-alives.
    fn text_frames(&self) -> Vec<(Option<&str>, Option<&str>)> {
        self.frames
            .iter()
            .filter(|f| !f.binary && f.event.as_deref() != Some("KEEP_ALIVE"))
            .map(|f| (f.kind.as_deref(), f.event.as_deref()))
            .collect()
    }

    fn binary_frames(&self) -> impl Iterator<Item = &Frame> {
        self.frames.iter().filter(|f| f.binary)
    }
}

/// Runs one scenario of the script against `sim` and parses its report.
async fn run_client(sim: &SimulatorHandle, scenario: &str, args: &[&str]) -> Report {
    run_script("python_ws_client.py", scenario, &format!("http://{}", sim.addr), args).await
}

/// Where the client connects: the simulator itself, or a gateway (against its built-in
/// simulator) serving the websocket protocol.
enum Target {
    Simulator,
    Gateway,
}

/// Runs `program` over `[start, stop)` with the crate's own client and merges the data messages
/// per timestamp, as the reference for what the Python client must have decoded.
async fn reference_values(sim: &SimulatorHandle, program: &str, start: i64, stop: i64) -> Values {
    let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
    let execute = json!({
        "type": "execute", "channel": "reference", "program": program,
        "start": start, "stop": stop, "resolution": RESOLUTION_MS,
    });
    client.send(execute).await;
    let mut values = Values::new();
    for message in client.collect_channel("reference").await {
        match message {
            ServerMessage::Data(d) => {
                let batch = values.entry(d.body.logical_timestamp_ms).or_default();
                for p in d.body.points {
                    let Value::Double(v) = p.value else { panic!("simulator values are doubles: {p:?}") };
                    batch.insert(p.tsid.to_string(), format!("{:016x}", v.to_bits()));
                }
            }
            ServerMessage::Error(e) => panic!("reference query failed: {e:?}"),
            _ => {}
        }
    }
    values
}

/// The metadata of `TWO_BLOCKS`, as (label, originating metric, region) per TSID, with the
/// per-job properties checked against the handle.
fn check_two_blocks_metadata(report: &Report) -> BTreeSet<Series> {
    two_blocks_series(report, |p, label, handle| {
        let text = |key: &str| p.get(key).and_then(Json::as_str).map(str::to_owned);
        let block = match label {
            "A" => 1,
            "B" => 2,
            other => panic!("unexpected label {other}"),
        };
        assert_eq!(text("sf_metric"), Some(format!("_SF_COMP_{handle}_{block:02}-PUBLISH_METRIC")));
        assert_eq!(text("sf_type").as_deref(), Some("MetricTimeSeries"));
    })
}

async fn bounded_query_yields_everything_then_ends(compress: bool, target: Target) {
    // With a gateway, this simulator only computes the reference values (a pure function of
    // program, series and timestamp, so the gateway's built-in one has the same).
    let sim = spawn_default_simulator().await;
    let gateway = match target {
        Target::Simulator => None,
        Target::Gateway => Some(spawn_gateway(test_settings()).await),
    };
    let base = gateway.as_ref().map_or_else(|| format!("http://{}", sim.addr), |g| g.base.clone());
    let stop = START + 10 * RESOLUTION_MS;
    let (start_arg, stop_arg, resolution_arg) = (START.to_string(), stop.to_string(), RESOLUTION_MS.to_string());
    let args = [
        "--program",
        TWO_BLOCKS,
        "--start",
        &start_arg,
        "--stop",
        &stop_arg,
        "--resolution",
        &resolution_arg,
        "--compress",
        if compress { "on" } else { "off" },
    ];
    let report: Report = run_script("python_ws_client.py", "bounded", &base, &args).await;

    // The iterator ended by itself, on END_OF_CHANNEL.
    assert_eq!((report.ended.as_deref(), &report.exception), (Some("normally"), &None), "{report:#?}");
    assert_eq!(report.compress, compress);
    assert_eq!(report.state.as_deref(), Some("COMPLETED"));
    assert_eq!(report.resolution_ms, Some(RESOLUTION_MS), "from JOB_RUNNING_RESOLUTION");
    assert_eq!(report.num_input_timeseries, Some(TWO_BLOCKS_INPUTS), "from FETCH_NUM_TIMESERIES");

    assert_eq!(check_two_blocks_metadata(&report), expected_two_blocks_series());
    assert_eq!((report.yielded("JobStartMessage"), report.yielded("MetadataMessage")), (1, 3));

    let observed: Vec<i64> = report.batches.iter().map(|b| b.t).collect();
    assert_eq!(observed, timestamps(START, 10), "one batch per timestamp, in order");
    assert_eq!(report.yielded("DataMessage"), 10);
    check_batches_merge_both_blocks(&report);
    assert_eq!(python_values(&report), reference_values(&sim, TWO_BLOCKS, START, stop).await, "exact values");

    // What travelled: one binary data frame per block per timestamp, v1 headers; under
    // `compress` every JSON message but `authenticated` is gzip JSON-in-binary (flags 0x03),
    // without it JSON messages are text frames and data frames are uncompressed.
    let data_frames: Vec<&Frame> = report.binary_frames().filter(|f| f.mtype == Some(5)).collect();
    assert_eq!(data_frames.len(), 20, "{:?}", report.frames);
    assert!(report.binary_frames().all(|f| f.version == Some(1)), "{:?}", report.frames);
    if compress {
        assert_eq!(report.text_frames(), [(Some("authenticated"), None)]);
        let json_frames: BTreeSet<u8> = report.binary_frames().filter_map(|f| f.mtype).filter(|m| *m != 5).collect();
        assert_eq!(json_frames, BTreeSet::from([1, 2, 4]), "control, info and metadata messages");
        assert!(
            report.binary_frames().filter(|f| f.mtype != Some(5)).all(|f| f.flags == Some(0x03)),
            "{:?}",
            report.frames
        );
        assert!(data_frames.iter().all(|f| f.flags.is_some_and(|flags| flags & 0x02 == 0)));
    } else {
        assert!(data_frames.iter().all(|f| f.flags == Some(0)), "{:?}", report.frames);
        assert_eq!(report.binary_frames().count(), 20, "only data is binary: {:?}", report.frames);
        let text: BTreeSet<(Option<&str>, Option<&str>)> = report.text_frames().into_iter().collect();
        let expected = BTreeSet::from([
            (Some("authenticated"), None),
            (Some("control-message"), Some("STREAM_START")),
            (Some("control-message"), Some("JOB_START")),
            (Some("control-message"), Some("JOB_PROGRESS")),
            (Some("control-message"), Some("END_OF_CHANNEL")),
            (Some("metadata"), None),
            (Some("message"), None),
        ]);
        assert_eq!(text, expected);
    }
    if let Some(gateway) = gateway {
        gateway.stop().await;
    }
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn python_client_reads_a_compressed_bounded_query_to_its_end() {
    bounded_query_yields_everything_then_ends(true, Target::Simulator).await;
}

#[tokio::test]
async fn python_client_reads_an_uncompressed_bounded_query_to_its_end() {
    bounded_query_yields_everything_then_ends(false, Target::Simulator).await;
}

#[tokio::test]
async fn python_client_raises_the_simulators_program_error() {
    let sim = spawn_default_simulator().await;
    let program = "dta('x').publish()";
    let report = run_client(&sim, "invalid", &["--program", program]).await;

    assert_eq!(report.ended.as_deref(), Some("exception"), "{report:#?}");
    assert_eq!(report.exception_field("class"), "SignalFlowException");
    assert_eq!(report.exception_field("code"), 400);
    assert_eq!(report.exception_field("message"), "Unknown function 'dta'");
    assert_eq!(report.exception_field("str"), "400: Unknown function 'dta'");
    // The WS transport builds the exception from `error` and `message` only; the type and
    // context are in the message it received.
    assert_eq!(report.exception_field("errorType"), &Json::Null);
    assert_eq!(report.error_payloads.len(), 1, "{report:#?}");
    let payload = &report.error_payloads[0];
    assert_eq!(payload.get("errorType"), Some(&json!("ANALYTICS_PROGRAM_NAME_ERROR")));
    let context = payload.get("context").unwrap_or_else(|| panic!("no context: {payload:?}"));
    assert_eq!(
        (&context["line"], &context["column"], &context["reference"], &context["programText"]),
        (&json!(1), &json!(1), &json!("dta"), &json!(program))
    );
    assert!(report.batches.is_empty() && report.metadata.is_empty() && report.handle.is_none(), "{report:#?}");
    assert!(Control::new(&sim).get("/jobs").await.as_array().is_some_and(Vec::is_empty), "no job was started");
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn python_client_stops_a_live_computation_and_its_stream_ends() {
    let sim = spawn_default_simulator().await;
    let reason = "interop test stop";
    let args = ["--program", TWO_BLOCKS, "--batches", "3", "--stop-reason", reason];
    let report = run_client(&sim, "live", &args).await;

    // After `SignalFlowClient.stop(handle, reason)` the channel ends with CHANNEL_ABORT, which
    // the client raises as ComputationAborted carrying the abort state and our reason.
    check_stopped_live_run(&report, 3, reason);
    assert_eq!(check_two_blocks_metadata(&report), expected_two_blocks_series());

    // Consecutive live timestamps (a batch may slip in between the stop and its abort).
    let (first, count) = check_live_batches(&report, 3);
    assert_eq!(first % RESOLUTION_MS, 0);
    let end = first + count * RESOLUTION_MS;
    assert_eq!(python_values(&report), reference_values(&sim, TWO_BLOCKS, first, end).await, "exact values");
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn python_client_reads_a_compressed_bounded_query_from_the_gateway_to_its_end() {
    bounded_query_yields_everything_then_ends(true, Target::Gateway).await;
}

#[tokio::test]
async fn python_client_reads_an_uncompressed_bounded_query_from_the_gateway_to_its_end() {
    bounded_query_yields_everything_then_ends(false, Target::Gateway).await;
}

#[tokio::test]
async fn python_client_raises_the_gateways_program_error() {
    let gateway = spawn_gateway(test_settings()).await;
    let program = "dta('x').publish()";
    let report: Report = run_script("python_ws_client.py", "invalid", &gateway.base, &["--program", program]).await;

    assert_eq!(report.ended.as_deref(), Some("exception"), "{report:#?}");
    assert_eq!(report.exception_field("class"), "SignalFlowException");
    assert_eq!(report.exception_field("code"), 400);
    assert_eq!(report.exception_field("message"), "Unknown function 'dta'");
    assert_eq!(report.error_payloads.len(), 1, "{report:#?}");
    let payload = &report.error_payloads[0];
    assert_eq!(payload.get("errorType"), Some(&json!("ANALYTICS_PROGRAM_NAME_ERROR")));
    let context = payload.get("context").unwrap_or_else(|| panic!("no context: {payload:?}"));
    assert_eq!((&context["line"], &context["column"]), (&json!(1), &json!(1)));
    assert!(report.batches.is_empty() && report.handle.is_none(), "{report:#?}");
    gateway.stop().await;
}

#[tokio::test]
async fn python_client_stops_its_live_computation_on_the_gateway() {
    let gateway = spawn_gateway(test_settings()).await;
    let reason = "interop test stop";
    let args = ["--program", TWO_BLOCKS, "--batches", "3", "--stop-reason", reason];
    let report: Report = run_script("python_ws_client.py", "live", &gateway.base, &args).await;
    check_stopped_live_run(&report, 3, reason);
    assert_eq!(check_two_blocks_metadata(&report), expected_two_blocks_series());
    let (first, count) = check_live_batches(&report, 3);
    let sim = spawn_default_simulator().await;
    let end = first + count * RESOLUTION_MS;
    assert_eq!(python_values(&report), reference_values(&sim, TWO_BLOCKS, first, end).await, "exact values");
    sim.shutdown().await.unwrap();
    gateway.stop().await;
}

/// Three Python clients run the same live program through the gateway: one upstream job; the
/// first stops after 2 batches, the others keep streaming to 6; an upstream connection kill in
/// the middle ends no client's computation.
#[tokio::test]
async fn three_python_clients_share_one_job_and_one_stop_leaves_the_others_streaming() {
    let gateway = spawn_gateway(test_settings()).await;
    let program = TWO_BLOCKS;
    let run = |batches: &'static str| {
        let base = gateway.base.clone();
        async move {
            let args = ["--program", program, "--batches", batches, "--stop-reason", "done"];
            run_script::<Report>("python_ws_client.py", "live", &base, &args).await
        }
    };
    let watch = async {
        let mut most = 0;
        let mut killed = false;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            let jobs = gateway.get_json("/_sim/jobs").await;
            let running = jobs.as_array().map_or(0, |a| a.iter().filter(|j| j["program"] == program).count());
            most = most.max(running);
            if running == 1 && !killed {
                // Once the job runs, every upstream socket dies once.
                tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
                let r = gateway.http.post(gateway.url("/_sim/connections/kill")).send().await.unwrap();
                assert!(r.status().is_success());
                killed = true;
            }
            if killed && running == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        (most, killed)
    };
    let (a, b, c, (most, killed)) = tokio::join!(run("2"), run("6"), run("6"), watch);
    assert!(killed, "the kill happened while the job ran");
    assert_eq!(most, 1, "never more than one upstream job for the three clients");
    for (report, batches) in [(&a, 2), (&b, 6), (&c, 6)] {
        check_stopped_live_run(report, batches, "done");
        check_live_batches(report, batches);
    }
    assert!(
        a.handle.is_some() && a.handle == b.handle && b.handle == c.handle,
        "one job: {:?}",
        (a.handle, b.handle, c.handle)
    );
    gateway.stop().await;
}
