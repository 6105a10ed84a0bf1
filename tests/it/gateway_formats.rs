//! Formats: NDJSON streams (line by line, no heartbeat lines), execute-and-stream on POST, and
//! whole results of bounded queries as JSON and CSV, with their limits.

use crate::support::*;
use futures::StreamExt;
use serde_json::{Value as Json, json};

const PROGRAM: &str = "data('cpu.utilization').mean(by=['region']).publish('A')";

/// Reads NDJSON lines until `n` data lines have arrived (or the stream ends).
async fn ndjson_lines(response: reqwest::Response, n: usize) -> Vec<Json> {
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut body = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut lines = Vec::new();
    let mut data = 0;
    while data < n {
        let Some(chunk) = tokio::time::timeout(WAIT, body.next()).await.expect("hang guard") else { break };
        buffer.extend_from_slice(&chunk.unwrap());
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let value: Json = serde_json::from_slice(&line)
                .unwrap_or_else(|e| panic!("every line is JSON ({e}): {:?}", String::from_utf8_lossy(&line)));
            data += usize::from(value["type"] == "data");
            lines.push(value);
        }
    }
    lines
}

#[tokio::test]
async fn ndjson_streams_one_json_object_per_line_with_type_and_id() {
    let mut settings = test_settings();
    settings.stream.heartbeat = std::time::Duration::from_millis(200);
    let gw = spawn_gateway(settings).await;
    let url =
        reqwest::Url::parse_with_params(&gw.url("/computations/stream"), &[("program", PROGRAM), ("start", "-3s")])
            .unwrap();
    let response = gw.http.get(url).header("accept", "application/x-ndjson").send().await.unwrap();
    let lines = ndjson_lines(response, 5).await;
    assert_eq!(lines[0]["type"], "control-message");
    assert_eq!(lines[0]["data"]["event"], "JOB_START");
    let ids: Vec<u64> = lines.iter().filter_map(|l| l["id"].as_u64()).collect();
    assert_eq!(ids.len(), lines.len(), "every live line has an id");
    assert!(ids.windows(2).all(|w| w[1] > w[0]));
    let data: Vec<&Json> = lines.iter().filter(|l| l["type"] == "data").collect();
    assert!(data.iter().all(|l| l["data"]["data"].as_array().unwrap().len() == 2));
    gw.stop().await;
}

#[tokio::test]
async fn post_with_an_event_stream_accept_executes_and_streams_at_once() {
    let gw = spawn_gateway(test_settings()).await;
    for accept in ["text/event-stream", "application/x-ndjson"] {
        let response = gw
            .http
            .post(gw.url("/computations"))
            .header("accept", accept)
            .json(&json!({"program": PROGRAM, "start": "-20s", "stop": "-10s"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let types: Vec<String> = if accept == "text/event-stream" {
            let mut client = SseClientFrom::from(response).0;
            client.rest().await.iter().map(|e| e.event.clone()).collect()
        } else {
            ndjson_lines(response, usize::MAX).await.iter().map(|l| l["type"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(types.iter().filter(|t| *t == "data").count(), 10, "{accept}: {types:?}");
        assert_eq!(types.last().map(String::as_str), Some("control-message"), "{accept}");
    }
    gw.stop().await;
}

/// Adapts a response to the SSE reader of the harness.
struct SseClientFrom(SseClient);

impl From<reqwest::Response> for SseClientFrom {
    fn from(r: reqwest::Response) -> Self {
        SseClientFrom(SseClient::from_response(r))
    }
}

#[tokio::test]
async fn wait_true_answers_the_whole_result_as_json_and_csv() {
    let gw = spawn_gateway(test_settings()).await;
    let now = signalflow_gateway::clock::now_ms() / 1000 * 1000;
    let body = json!({"program": PROGRAM, "start": now - 30_000, "stop": now - 20_000});
    let json_result: Json = gw.post_json("/computations?wait=true", body.clone()).await.json().await.unwrap();
    let series = json_result["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    for s in series {
        assert_eq!(s["properties"]["sf_streamLabel"], "A");
        let points = s["points"].as_array().unwrap();
        let ts: Vec<i64> = points.iter().map(|p| p[0].as_i64().unwrap()).collect();
        assert_eq!(ts, (0..10).map(|i| now - 30_000 + i * 1000).collect::<Vec<_>>());
        assert!(points.iter().all(|p| p[1].is_f64()));
    }
    assert_eq!(json_result["resolutionMs"], 1000);

    let csv =
        gw.http.post(gw.url("/computations?wait=true")).header("accept", "text/csv").json(&body).send().await.unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 11, "a header and one row per timestamp:\n{text}");
    let header: Vec<&str> = rows[0].split(',').collect();
    assert_eq!(header[0], "timestamp");
    let mut columns: Vec<&str> = header[1..].to_vec();
    columns.sort();
    assert_eq!(columns, ["A cpu.utilization region=us-east-1", "A cpu.utilization region=us-west-2"]);
    assert_eq!(rows[1].split(',').next(), Some((now - 30_000).to_string().as_str()));
    // The same numbers as the JSON form (series are deterministic).
    let first_json = &series[0]["points"][0][1];
    assert!(rows[1].split(',').skip(1).any(|cell| cell.parse::<f64>().ok() == first_json.as_f64()));
    gw.stop().await;
}

#[tokio::test]
async fn whole_results_have_limits_and_need_a_bounded_query() {
    let mut settings = test_settings();
    settings.limits.max_result_points = 15;
    let gw = spawn_gateway(settings).await;
    let live = gw.post_json("/computations?wait=true", json!({"program": PROGRAM})).await;
    assert_eq!(live.status(), 422);
    let problem: Json = live.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/not-bounded");
    let far = gw.post_json("/computations?wait=true", json!({"program": PROGRAM, "stop": "+2h"})).await;
    assert_eq!(far.status(), 422);
    let big =
        gw.post_json("/computations?wait=true", json!({"program": PROGRAM, "start": "-60s", "stop": "-10s"})).await;
    assert_eq!(big.status(), 413);
    let problem: Json = big.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/result-too-large");
    let bad = gw.post_json("/computations?wait=maybe", json!({"program": PROGRAM})).await;
    assert_eq!(bad.status(), 400);
    let invalid = gw
        .post_json("/computations?wait=true", json!({"program": "dta('x').publish()", "start": "-60s", "stop": "-10s"}))
        .await;
    assert_eq!(invalid.status(), 400);
    assert_eq!(invalid.json::<Json>().await.unwrap()["type"], "/problems/program-error");
    gw.stop().await;
}

#[tokio::test]
async fn whole_results_keep_integers_above_two_to_the_53_exact_in_json_and_csv() {
    let gw = spawn_gateway(test_settings()).await;
    // 2^53 + 1 and i64::MAX: neither survives a trip through an f64.
    let (big, max) = (9_007_199_254_740_993_i64, i64::MAX);
    let program = "data('exact.counter').publish('A')";
    let fixtures = [("AAAAAAAAAAE", big), ("AAAAAAAAAAI", max)];
    let tsids: Vec<&str> = fixtures.iter().map(|(t, _)| *t).collect();
    let r = gw.http.post(gw.url("/_sim/programs")).json(&json!({"program": program, "tsids": tsids})).send().await;
    assert!(r.unwrap().status().is_success());
    for (tsid, value) in fixtures {
        let metadata = json!({"sf_resolutionMs": 1000, "sf_streamLabel": "A", "host": tsid});
        let r = gw.http.put(gw.url(&format!("/_sim/series/{tsid}/metadata"))).json(&metadata).send().await;
        assert!(r.unwrap().status().is_success());
        let r = gw.http.put(gw.url(&format!("/_sim/series/{tsid}/value"))).json(&json!({"value": value})).send().await;
        assert!(r.unwrap().status().is_success());
    }
    let now = signalflow_gateway::clock::now_ms() / 1000 * 1000;
    let body = json!({"program": program, "start": now - 10_000, "stop": now - 7_000, "resolution": 1000});
    let text = gw.post_json("/computations?wait=true", body.clone()).await.text().await.unwrap();
    let result: Json = serde_json::from_str(&text).unwrap();
    let series = result["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{text}");
    for s in series {
        let expected = if s["tsId"] == "AAAAAAAAAAE" { big } else { max };
        let values: Vec<i64> = s["points"].as_array().unwrap().iter().map(|p| p[1].as_i64().unwrap()).collect();
        assert_eq!(values, [expected; 3], "{text}");
    }
    let csv = gw.http.post(gw.url("/computations?wait=true")).header("accept", "text/csv").json(&body).send().await;
    let csv = csv.unwrap().text().await.unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 4, "{csv}");
    for row in &rows[1..] {
        let mut cells: Vec<&str> = row.split(',').skip(1).collect();
        cells.sort_unstable();
        let mut expected = [big.to_string(), max.to_string()];
        expected.sort_unstable();
        assert_eq!(cells, expected, "{csv}");
    }
    gw.stop().await;
}
