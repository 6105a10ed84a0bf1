//! Interop: `signalflow-client-python` 1.3.10 (PyPI) over TLS, as it insists (it refuses ws://
//! and verifies certificates). `tests/interop/signalflow_client_python.py` drives it with
//! `ca_certs` = a throwaway CA; it runs against the simulator (`spawn_tls`, the same as
//! `simulate --tls-self-signed`) and against the gateway serving the websocket protocol over
//! TLS, with no relay in between. Its interpreter is `target/interop-venv-sfc`, prepared by the
//! first test that needs it.

use crate::gateway_tls::{TestCa, tls_gateway};
use crate::support::interop::*;
use crate::support::spawn_tls_simulator;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Observed {
    compress: bool,
}

type Report = ScriptReport<Observed>;

enum Target {
    Simulator,
    Gateway,
}

/// Runs `scenario` against a fresh TLS target and returns the report.
async fn run(target: Target, scenario: &str, args: &[&str]) -> Report {
    let ca = TestCa::new();
    let ca_file = ca.file("ca.pem");
    let mut all: Vec<&str> = vec!["--ca-certs", &ca_file];
    all.extend_from_slice(args);
    match target {
        Target::Simulator => {
            let tls = signalflow_gateway::tls::Tls::load(ca.file("cert.pem"), ca.file("key.pem")).unwrap();
            let sim = spawn_tls_simulator(tls).await;
            let base = format!("https://127.0.0.1:{}", sim.addr.port());
            let report = run_script("signalflow_client_python.py", scenario, &base, &all).await;
            sim.shutdown().await.unwrap();
            report
        }
        Target::Gateway => {
            let (gateway, base) = tls_gateway(&ca).await;
            let report = run_script("signalflow_client_python.py", scenario, &base, &all).await;
            gateway.stop().await;
            report
        }
    }
}

async fn bounded_query_is_read_to_its_end(target: Target) {
    let stop = START + 10 * RESOLUTION_MS;
    let (start_arg, stop_arg, resolution_arg) = (START.to_string(), stop.to_string(), RESOLUTION_MS.to_string());
    let args = ["--program", TWO_BLOCKS, "--start", &start_arg, "--stop", &stop_arg, "--resolution", &resolution_arg];
    let report = run(target, "bounded", &args).await;
    assert_eq!((report.ended.as_deref(), &report.exception), (Some("normally"), &None), "{report:#?}");
    assert!(report.compress);
    assert_eq!(report.state.as_deref(), Some("COMPLETED"));
    assert_eq!(report.resolution_ms, Some(RESOLUTION_MS));
    assert_eq!(report.num_input_timeseries, Some(TWO_BLOCKS_INPUTS));
    assert_eq!(two_blocks_series(&report, |_, _, _| {}), expected_two_blocks_series());
    assert_eq!(report.batches.iter().map(|b| b.t).collect::<Vec<_>>(), timestamps(START, 10));
    check_batches_merge_both_blocks(&report);
}

#[tokio::test]
async fn signalflow_client_python_reads_a_bounded_query_from_the_tls_simulator() {
    bounded_query_is_read_to_its_end(Target::Simulator).await;
}

#[tokio::test]
async fn signalflow_client_python_reads_a_bounded_query_from_the_tls_gateway() {
    bounded_query_is_read_to_its_end(Target::Gateway).await;
}

async fn invalid_program_raises(target: Target) {
    let report = run(target, "invalid", &["--program", "dta('x').publish()"]).await;
    assert_eq!(report.ended.as_deref(), Some("exception"), "{report:#?}");
    assert_eq!(report.exception_field("class"), "SignalFlowException");
    assert_eq!(report.exception_field("code"), 400);
    assert_eq!(report.exception_field("message"), "Unknown function 'dta'");
    assert!(report.batches.is_empty(), "{report:#?}");
}

#[tokio::test]
async fn signalflow_client_python_raises_the_program_error_of_the_tls_simulator() {
    invalid_program_raises(Target::Simulator).await;
}

#[tokio::test]
async fn signalflow_client_python_raises_the_program_error_of_the_tls_gateway() {
    invalid_program_raises(Target::Gateway).await;
}

async fn live_query_streams_until_stopped(target: Target) {
    let reason = "signalflow-client-python stop";
    let report = run(target, "live", &["--program", TWO_BLOCKS, "--batches", "3", "--stop-reason", reason]).await;
    check_stopped_live_run(&report, 3, reason);
    check_live_batches(&report, 3);
}

#[tokio::test]
async fn signalflow_client_python_streams_live_and_stops_on_the_tls_simulator() {
    live_query_streams_until_stopped(Target::Simulator).await;
}

#[tokio::test]
async fn signalflow_client_python_streams_live_and_stops_on_the_tls_gateway() {
    live_query_streams_until_stopped(Target::Gateway).await;
}
