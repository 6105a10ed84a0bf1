//! One-shot streams whose range is settled (`stop` before the fresh edge) through the results
//! cache (`cache::streams`): a repeat replays the same events — ids, names, data — without a
//! job, over `GET /computations/stream` and `POST /computations` with an event-stream Accept.

use crate::support::*;
use serde_json::{Value as Json, json};
use std::time::Duration;

const PROGRAM: &str = "data('cpu.utilization').mean(by=['region']).publish('A')";

async fn jobs_started(gw: &Gateway) -> i64 {
    gw.get_json("/_sim/stats").await["jobsStarted"].as_i64().unwrap()
}

/// (id, event name, data) of every event of a stream, until it ends.
async fn events(mut client: SseClient) -> Vec<(Option<u64>, String, Json)> {
    assert_eq!(client.status, 200);
    let all = tokio::time::timeout(WAIT, client.rest()).await.expect("the stream ends");
    all.into_iter().map(|e| (e.id, e.event, e.data)).collect()
}

#[tokio::test]
async fn a_settled_one_shot_stream_is_replayed_identically_without_a_job() {
    let mut settings = test_settings();
    settings.cache.fresh_margin = Duration::from_secs(5);
    let gw = spawn_gateway(settings).await;
    let now = signalflow_gateway::clock::now_ms() / 1000 * 1000;
    let (start, stop) = (now - 60_000, now - 30_000);
    let path =
        format!("/computations/stream?program={}&start={start}&stop={stop}&resolution=1000", query_value(PROGRAM));
    let before = jobs_started(&gw).await;
    let first = events(gw.sse(&path, None).await).await;
    assert_eq!(jobs_started(&gw).await, before + 1);
    assert!(first.iter().filter(|(_, name, _)| name == "data").count() >= 30, "{first:?}");
    let last = first.last().unwrap();
    assert_eq!((last.1.as_str(), &last.2["event"]), ("control-message", &json!("END_OF_CHANNEL")));
    // Ids as a fresh stream numbers them: 1, 2, 3…
    let ids: Vec<u64> = first.iter().filter_map(|e| e.0).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());

    let repeat = events(gw.sse(&path, None).await).await;
    assert_eq!(repeat, first, "the same ids, event names and data");
    // The same request as a POST with an event-stream Accept: the same recording.
    let body = json!({"program": PROGRAM, "start": start, "stop": stop, "resolution": 1000});
    let response =
        gw.http.post(gw.url("/computations")).header("accept", "text/event-stream").json(&body).send().await.unwrap();
    let posted = events(SseClient::from_response(response)).await;
    assert_eq!(posted, first);
    assert_eq!(jobs_started(&gw).await, before + 1, "a repeat runs no job");

    // Bypassed: a fresh job with the same ids, names and data points.
    let response = gw
        .http
        .get(gw.url(&path))
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache")
        .send()
        .await
        .unwrap();
    let fresh = events(SseClient::from_response(response)).await;
    assert_eq!(jobs_started(&gw).await, before + 2);
    let shape = |all: &[(Option<u64>, String, Json)]| all.iter().map(|e| (e.0, e.1.clone())).collect::<Vec<_>>();
    assert_eq!(shape(&fresh), shape(&first));
    let data = |all: &[(Option<u64>, String, Json)]| {
        all.iter().filter(|e| e.1 == "data").map(|e| e.2.clone()).collect::<Vec<_>>()
    };
    assert_eq!(data(&fresh), data(&first));

    let metrics = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("sfgw_cache_stream_hits_total 2\n"), "{metrics}");
    assert!(metrics.contains("sfgw_cache_streams_stored_total 1\n"), "{metrics}");
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_reaching_past_the_fresh_edge_is_not_cached() {
    let mut settings = test_settings();
    settings.cache.fresh_margin = Duration::from_secs(60);
    let gw = spawn_gateway(settings).await;
    let now = signalflow_gateway::clock::now_ms() / 1000 * 1000;
    let path = format!(
        "/computations/stream?program={}&start={}&stop={}&resolution=1000&share=false",
        query_value(PROGRAM),
        now - 40_000,
        now - 30_000
    );
    let before = jobs_started(&gw).await;
    let a = events(gw.sse(&path, None).await).await;
    let b = events(gw.sse(&path, None).await).await;
    assert_eq!(jobs_started(&gw).await, before + 2, "inside the last minute: a job each time");
    assert_eq!(a.len(), b.len());
    gw.stop().await;
}
