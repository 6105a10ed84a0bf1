//! The simulator running real SignalFlow programs over the wire: constant data-message counts per
//! timestamp (empty blocks included), the find info messages, detector events, and program
//! errors with their position — also as the upstream pool reports them.

use crate::support::*;
use serde_json::json;
use signalflow_gateway::protocol::info::InfoKind;
use signalflow_gateway::protocol::messages::ServerMessage;
use signalflow_gateway::simulator::{Faults, SimulatorConfig};
use std::collections::BTreeMap;

const START: i64 = 1_700_000_000_000;

async fn run(sim_config: SimulatorConfig, program: &str, seconds: i64) -> Vec<ServerMessage> {
    let sim = spawn_simulator(sim_config, Faults::default()).await;
    let mut client = WsClient::connect_authenticated(&sim.ws_url()).await;
    client
        .send(json!({"type": "execute", "channel": "ch-1", "program": program, "start": START, "stop": START + seconds * 1000}))
        .await;
    client.collect_channel("ch-1").await
}

fn data_per_timestamp(messages: &[ServerMessage]) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for m in messages {
        if let ServerMessage::Data(d) = m {
            *counts.entry(d.body.logical_timestamp_ms).or_insert(0) += 1;
        }
    }
    counts
}

fn infos(messages: &[ServerMessage]) -> Vec<InfoKind<'_>> {
    messages.iter().filter_map(|m| if let ServerMessage::Info(i) = m { Some(i.kind()) } else { None }).collect()
}

#[tokio::test]
async fn every_timestamp_has_one_data_message_per_publish_block_even_when_empty() {
    // The second block matches nothing: its data messages are empty but still sent.
    let program = "data('cpu.utilization').max().publish('A')\ndata('no.such.metric').publish('B')";
    let messages = run(SimulatorConfig::default(), program, 5).await;
    let counts = data_per_timestamp(&messages);
    assert_eq!(counts.len(), 5);
    assert!(counts.values().all(|n| *n == 2), "{counts:?}");
    let empty = messages.iter().filter(|m| matches!(m, ServerMessage::Data(d) if d.body.points.is_empty())).count();
    assert_eq!(empty, 5);
    assert!(
        infos(&messages)
            .iter()
            .any(|k| matches!(k, InfoKind::MatchedNoTimeseries { query } if query.contains("no.such.metric")))
    );
}

#[tokio::test]
async fn a_find_over_the_series_cap_reports_a_limited_result_set() {
    let config = SimulatorConfig { max_series_per_find: 10, ..Default::default() };
    let messages = run(config, "data('cpu.utilization').publish()", 2).await;
    let kinds = infos(&messages);
    assert!(kinds.contains(&InfoKind::LimitedResultSet { matched_size: 48, limit_size: 10 }), "{kinds:?}");
    assert!(kinds.contains(&InfoKind::FetchNumTimeseries { count: 10 }), "{kinds:?}");
    let points: usize = messages
        .iter()
        .filter_map(|m| if let ServerMessage::Data(d) = m { Some(d.body.points.len()) } else { None })
        .sum();
    assert_eq!(points, 20, "10 series × 2 timestamps");
}

#[tokio::test]
async fn detectors_emit_events_with_is_and_was_after_their_metadata() {
    // A constant that is always above the threshold: the detector fires once and stays.
    let program = "detect(on=when(const(5) > 1, lasting='2s')).publish('high')";
    let messages = run(SimulatorConfig::default(), program, 10).await;
    let events: Vec<_> =
        messages.iter().filter_map(|m| if let ServerMessage::Event(e) = m { Some(e) } else { None }).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].is(), events[0].was()), (Some("anomalous"), Some("ok")));
    let tsid = events[0].tsid.expect("the event series");
    let metadata_at = messages
        .iter()
        .position(|m| matches!(m, ServerMessage::Metadata(md) if md.tsid == tsid))
        .expect("its metadata");
    let event_at = messages.iter().position(|m| matches!(m, ServerMessage::Event(_))).unwrap();
    assert!(metadata_at < event_at);
    let ServerMessage::Metadata(md) = &messages[metadata_at] else { unreachable!() };
    assert_eq!(md.series_type(), Some("EventTimeSeries"));
}

#[tokio::test]
async fn program_errors_carry_type_line_and_column() {
    let messages = run(SimulatorConfig::default(), "A = data('x')\nB = dta('y')", 2).await;
    let [ServerMessage::Error(e)] = messages.as_slice() else { panic!("only the error: {messages:?}") };
    assert_eq!(e.error_type(), Some("ANALYTICS_PROGRAM_NAME_ERROR"));
    assert_eq!((e.line(), e.column()), (Some(2), Some(5)));
    assert!(e.message_text().unwrap().contains("dta"));
}

#[tokio::test]
async fn the_upstream_pool_reports_a_program_error_as_a_typed_error() {
    use secrecy::SecretString;
    use signalflow_gateway::upstream::{ExecuteSpec, Pool, Terminal, UpstreamConfig, UpstreamEvent};
    let sim = spawn_default_simulator().await;
    let pool = Pool::new(
        UpstreamConfig::new(sim.ws_url(), SecretString::from("t")),
        tokio_util::sync::CancellationToken::new(),
    );
    let spec = ExecuteSpec { program: "data('x').mean(by=['host']\n".into(), ..Default::default() };
    let mut c = pool.execute(spec).await.unwrap();
    let end = loop {
        match tokio::time::timeout(WAIT, c.recv()).await.unwrap().unwrap() {
            UpstreamEvent::Ended(t) => break t,
            _ => continue,
        }
    };
    let Terminal::Error(e) = end else { panic!("{end:?}") };
    assert_eq!(e.error_type.as_deref(), Some("ANALYTICS_PROGRAM_SYNTAX_ERROR"));
    assert_eq!(e.code, Some(400));
    assert!(e.line.is_some() && e.column.is_some(), "{e:?}");
}
