//! Interop: the official Node.js SignalFlow client (npm `signalfx` 8.0.1, WebSocket transport)
//! against the gateway's websocket protocol. `tests/node-signalfx/drive.js` runs it and prints
//! what the client delivered as one JSON document; the pinned package is installed once into
//! `target/node-signalfx` by `npm ci`. The Node client's `close()` sends `detach`.

use crate::support::interop::{START, TWO_BLOCKS};
use crate::support::*;
use crate::tools::{node_signalfx_dir, repo_path};
use serde_json::{Value as Json, json};
use signalflow_gateway::protocol::messages::ServerMessage;
use std::process::Stdio;
use std::time::Duration;

/// Runs `drive.js` against `gateway` and parses its report.
async fn drive(gateway: &Gateway, args: &[&str]) -> Json {
    let modules = node_signalfx_dir().join("node_modules");
    let ws = gateway.base.replacen("http://", "ws://", 1);
    let output = tokio::process::Command::new("node")
        .arg(repo_path("tests/node-signalfx/drive.js"))
        .arg(args[0])
        .arg(&ws)
        .args(&args[1..])
        .env("NODE_PATH", modules)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), output).await.expect("drive.js finishes").unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "drive.js failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn timestamps(report: &Json) -> Vec<i64> {
    report["batches"].as_array().unwrap().iter().map(|b| b["t"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn node_client_reads_a_bounded_query_to_its_end() {
    let gateway = spawn_gateway(test_settings()).await;
    let (start, stop) = (START.to_string(), (START + 10_000).to_string());
    let report = drive(&gateway, &["bounded", TWO_BLOCKS, &start, &stop]).await;
    assert_eq!(report["ended"], "END_OF_CHANNEL", "{report}");
    assert_eq!(report["controls"], json!(["STREAM_START", "JOB_START", "JOB_PROGRESS", "END_OF_CHANNEL"]));
    assert_eq!(report["metadata"], 3, "3 series");
    assert_eq!(timestamps(&report), (0..10).map(|i| START + i * 1000).collect::<Vec<_>>());
    assert!(report["batches"].as_array().unwrap().iter().all(|b| b["points"] == 3), "merged blocks: {report}");
    assert!(report["messages"].as_array().unwrap().contains(&json!("JOB_RUNNING_RESOLUTION")));
    gateway.stop().await;
}

#[tokio::test]
async fn node_client_gets_the_program_error() {
    let gateway = spawn_gateway(test_settings()).await;
    let report = drive(&gateway, &["invalid", "dta('x').publish()"]).await;
    assert_eq!(report["ended"], "error", "{report}");
    let error = &report["error"];
    assert_eq!((&error["error"], &error["errorType"]), (&json!(400), &json!("ANALYTICS_PROGRAM_NAME_ERROR")));
    assert_eq!((&error["context"]["line"], &error["context"]["column"]), (&json!(1), &json!(1)));
    assert!(report["batches"].as_array().unwrap().is_empty());
    gateway.stop().await;
}

/// A Node client and the crate's own client run one live program: one upstream job; the Node
/// client's `close()` (a detach) leaves the other streaming; the job stops after the last.
#[tokio::test]
async fn node_client_streams_live_shares_the_job_and_its_close_leaves_others_streaming() {
    let gateway = spawn_gateway(test_settings()).await;
    let ws = gateway.base.replacen("http://", "ws://", 1) + "/v2/signalflow/connect";
    let mut other = WsClient::connect_authenticated(&ws).await;
    other.send(json!({ "type": "execute", "channel": "mine", "program": TWO_BLOCKS, "resolution": 1000 })).await;
    let jobs = || async {
        let all = gateway.get_json("/_sim/jobs").await;
        all.as_array().unwrap().iter().filter(|j| j["program"] == TWO_BLOCKS).count()
    };
    eventually("the job runs", || async { jobs().await == 1 }).await;
    let report = drive(&gateway, &["live", TWO_BLOCKS, "--batches", "3"]).await;
    assert_eq!(report["ended"], "closed", "{report}");
    let stamps = timestamps(&report);
    assert!(stamps.len() >= 3 && stamps.windows(2).all(|w| w[1] - w[0] == 1000), "{report}");
    assert_eq!(jobs().await, 1, "still one job: the Node client shared it");
    // The crate's client still streams after the Node client left.
    let mut after = 0;
    while after < 2 {
        if let ServerMessage::Data(d) = other.next_message().await
            && d.body.logical_timestamp_ms > *stamps.last().unwrap()
        {
            after += 1;
        }
    }
    drop(other);
    eventually("the job stops after its last client", || async { jobs().await == 0 }).await;
    gateway.stop().await;
}
