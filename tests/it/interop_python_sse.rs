//! Interop: the official SignalFlow Python client (`signalfx` 1.1.16 from PyPI) with its SSE
//! transport against the gateway's SignalFlow REST/SSE API (`/v2/signalflow/…`).
//! `tests/interop/python_sse_client.py` drives the client and prints what it observed as one
//! JSON document; these tests assert on it.
//!
//! The interpreter is the interop virtualenv's (see `support::interop_venv_python`); if it cannot
//! be prepared these tests fail rather than skip, like the WebSocket interop tests.
//!
//! Expected values are cross-checked with the gateway's own SSE stream of the same query: both
//! must carry the very same TSIDs and IEEE-754 bits.

use crate::support::*;
use serde::Deserialize;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

use crate::support::interop::*;

/// One SSE event as the transport decoded it.
#[derive(Debug, Deserialize, PartialEq)]
struct Event {
    event: String,
    control: Option<String>,
    t: Option<i64>,
    n: Option<usize>,
}

/// What `python_sse_client.py` reports besides the members both scripts report.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SseObserved {
    events: Vec<Event>,
    chunk_shapes: Vec<String>,
    data_lines: Vec<String>,
    client_stop_error: Option<String>,
    stop_status: Option<u16>,
    stop_body: Option<String>,
}

/// What `python_sse_client.py` reports.
type Report = ScriptReport<SseObserved>;

impl SseObserved {
    fn controls(&self) -> Vec<&str> {
        self.events.iter().filter_map(|e| e.control.as_deref()).collect()
    }

    /// Points per data event, grouped by timestamp in arrival order.
    fn blocks_per_timestamp(&self) -> BTreeMap<i64, Vec<usize>> {
        let mut out: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for e in self.events.iter().filter(|e| e.event == "data") {
            out.entry(e.t.expect("data events have a timestamp")).or_default().push(e.n.unwrap_or(0));
        }
        out
    }
}

/// Runs one scenario of the script against the gateway and parses its report.
async fn run_client(gw: &Gateway, scenario: &str, args: &[&str]) -> Report {
    run_script("python_sse_client.py", scenario, &gw.base, args).await
}

/// The same query through the gateway's own SSE stream, merged per timestamp.
async fn gateway_values(gw: &Gateway, start: i64, count: i64) -> Values {
    let stop = start + count * RESOLUTION_MS;
    let url = reqwest::Url::parse_with_params(
        &gw.url("/computations/stream"),
        &[
            ("program", TWO_BLOCKS),
            ("start", &start.to_string()),
            ("stop", &stop.to_string()),
            ("resolution", &RESOLUTION_MS.to_string()),
        ],
    )
    .unwrap();
    let mut stream = gw.sse(&format!("{}?{}", url.path(), url.query().unwrap_or("")), None).await;
    let mut values = Values::new();
    for e in stream.rest().await.iter().filter(|e| e.event == "data") {
        let batch = values.entry(e.data["logicalTimestampMs"].as_i64().unwrap()).or_default();
        for p in e.data["data"].as_array().unwrap() {
            let v = p["value"].as_f64().unwrap_or_else(|| panic!("simulator values are doubles: {p}"));
            batch.insert(p["tsId"].as_str().unwrap().to_owned(), format!("{:016x}", v.to_bits()));
        }
    }
    values
}

/// (label, originating metric, region) per series, with the per-job properties checked.
fn series(report: &Report) -> BTreeSet<Series> {
    two_blocks_series(report, |_, _, _| {})
}

/// What travelled: `event:` plus exactly one `data: ` line per event, comments, nothing else.
fn check_framing(report: &Report) {
    assert!(report.chunk_shapes.contains(&"event,data".to_owned()), "{:?}", report.chunk_shapes);
    assert!(report.chunk_shapes.iter().all(|s| s == "event,data" || s == ":"), "{:?}", report.chunk_shapes);
    assert_eq!(report.data_lines, ["data: "]);
    assert!(report.events.iter().all(|e| e.event != "gateway"), "no gateway notices: {:?}", report.events);
}

#[tokio::test]
async fn python_sse_client_reads_a_bounded_two_block_query_to_its_end() {
    let gw = spawn_gateway(test_settings()).await;
    let stop = START + 10 * RESOLUTION_MS;
    let (start_arg, stop_arg, resolution_arg) = (START.to_string(), stop.to_string(), RESOLUTION_MS.to_string());
    let args = ["--program", TWO_BLOCKS, "--start", &start_arg, "--stop", &stop_arg, "--resolution", &resolution_arg];
    let report = run_client(&gw, "bounded", &args).await;

    // The iterator ended by itself, on END_OF_CHANNEL (not by re-executing).
    assert_eq!((report.ended.as_deref(), &report.exception), (Some("normally"), &None), "{report:#?}");
    assert_eq!(report.state.as_deref(), Some("COMPLETED"));
    assert_eq!(report.resolution_ms, Some(RESOLUTION_MS), "from JOB_RUNNING_RESOLUTION");
    assert_eq!(report.num_input_timeseries, Some(TWO_BLOCKS_INPUTS), "from FETCH_NUM_TIMESERIES");
    assert_eq!(series(&report), expected_two_blocks_series());
    assert_eq!((report.yielded("JobStartMessage"), report.yielded("MetadataMessage")), (1, 3));
    // One computation of its own, ended; its handle is the one the client learnt.
    let list = gw.get_json("/computations").await;
    let computations = list["computations"].as_array().unwrap();
    assert_eq!(computations.len(), 1, "{list}");
    assert_eq!((&computations[0]["status"], &computations[0]["handle"]), (&json!("completed"), &json!(report.handle)));

    let observed: Vec<i64> = report.batches.iter().map(|b| b.t).collect();
    assert_eq!(observed, timestamps(START, 10), "one batch per timestamp, in order");
    check_batches_merge_both_blocks(&report);
    assert_eq!(python_values(&report), gateway_values(&gw, START, 10).await, "exact values");

    // One data event per publish block per timestamp: A's two series, then B's one.
    let blocks = report.blocks_per_timestamp();
    assert_eq!(blocks.keys().copied().collect::<Vec<_>>(), timestamps(START, 10));
    assert!(blocks.values().all(|sizes| sizes == &[2, 1]), "{blocks:?}");
    let controls = report.controls();
    assert_eq!(controls.first(), Some(&"JOB_START"), "{controls:?}");
    assert_eq!(controls.last(), Some(&"END_OF_CHANNEL"), "{controls:?}");
    assert_eq!(report.events.last().and_then(|e| e.control.as_deref()), Some("END_OF_CHANNEL"));
    check_framing(&report);
    gw.stop().await;
}

#[tokio::test]
async fn python_sse_client_raises_the_program_error_with_its_type() {
    let gw = spawn_gateway(test_settings()).await;
    let report = run_client(&gw, "invalid", &["--program", "dta('x').publish()"]).await;

    // The execute POST is answered 400 with an application/json body, which SSETransport turns
    // into its own SignalFlowException(code, message, errorType).
    assert_eq!(report.ended.as_deref(), Some("exception"), "{report:#?}");
    assert_eq!(report.exception_field("class"), "SignalFlowException");
    assert_eq!(report.exception_field("code"), 400);
    assert_eq!(report.exception_field("message"), "Unknown function 'dta'");
    assert_eq!(report.exception_field("errorType"), "ANALYTICS_PROGRAM_NAME_ERROR");
    assert_eq!(report.exception_field("str"), "400 (ANALYTICS_PROGRAM_NAME_ERROR): Unknown function 'dta'");
    assert!(report.events.is_empty() && report.batches.is_empty(), "{report:#?}");
    assert_eq!(gw.get_json("/computations").await["computations"], json!([]), "nothing was kept");
    gw.stop().await;
}

#[tokio::test]
async fn python_sse_client_is_stopped_by_handle_and_raises_the_abort() {
    let gw = spawn_gateway(test_settings()).await;
    let reason = "interop test stop";
    let args = ["--program", TWO_BLOCKS, "--batches", "3", "--stop-reason", reason];
    let report = run_client(&gw, "live", &args).await;

    // The client's own stop() is broken over SSE (protocol doc §7.3); the POST to
    // /v2/signalflow/{handle}/stop works, and the stream ends with CHANNEL_ABORT, which the
    // client raises as ComputationAborted with the state and our reason.
    assert_eq!(report.client_stop_error.as_deref(), Some("AttributeError"));
    assert_eq!((report.stop_status, report.stop_body.as_deref()), (Some(200), Some("{}")));
    check_stopped_live_run(&report, 3, reason);
    assert_eq!(series(&report), expected_two_blocks_series());

    // Consecutive live timestamps (a batch may slip in between the stop and its abort).
    let (first, count) = check_live_batches(&report, 3);
    assert_eq!(python_values(&report), gateway_values(&gw, first, count).await, "exact values");
    let blocks = report.blocks_per_timestamp();
    assert!(blocks.values().all(|sizes| sizes == &[2, 1]), "one data event per block: {blocks:?}");
    assert_eq!(report.events.last().and_then(|e| e.control.as_deref()), Some("CHANNEL_ABORT"));
    check_framing(&report);
    gw.stop().await;
}
